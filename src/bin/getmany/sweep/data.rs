//! The sweep's data set: where each object of a cell lives (alone, packed in shards, as a tar
//! member, as a zip member), what each strategy asks for, and the writer that puts it there.

use std::io::{Cursor, Write};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use getmany::Request;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::{Error, Strategy};

/// Shards (packed, tar, zip) hold about this many bytes of objects each.
pub const SHARD_BYTES: u64 = 64 << 20;

/// The keys of one cell's data set: `count` objects of `size` bytes below `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Bytes per object.
    pub size: u64,
    /// `base/o/NNNNNN`: each object alone (loop, default, bundle).
    pub objects: Vec<String>,
    /// Per object: its packed shard and its offset there (coalesce).
    pub packed: Vec<(String, u64)>,
    /// Per object: its key as a tar member, `base/tar/SSSS.tar/NNNNNN` (ArchiveStore).
    pub tar_members: Vec<String>,
    /// Per object: its key as a zip member, `base/zip/SSSS.zip/NNNNNN` (ArchiveStore).
    pub zip_members: Vec<String>,
    /// The objects of each shard (the same grouping for packed, tar and zip shards).
    pub shards: Vec<std::ops::Range<usize>>,
}

impl Layout {
    /// Lays out `count` objects of `size` bytes below `base`, in shards of about
    /// [`SHARD_BYTES`] (at least one object each).
    pub fn new(base: &str, size: u64, count: usize) -> Layout {
        let per_shard = (SHARD_BYTES / size.max(1)).clamp(1, count.max(1) as u64) as usize;
        let shards: Vec<std::ops::Range<usize>> = (0..count)
            .step_by(per_shard)
            .map(|start| start..(start + per_shard).min(count))
            .collect();
        let mut packed = Vec::with_capacity(count);
        let mut tar_members = Vec::with_capacity(count);
        let mut zip_members = Vec::with_capacity(count);
        for (s, shard) in shards.iter().enumerate() {
            for i in shard.clone() {
                packed.push((
                    format!("{base}/packed/{s:04}"),
                    (i - shard.start) as u64 * size,
                ));
                tar_members.push(format!("{base}/tar/{s:04}.tar/{}", member_name(i)));
                zip_members.push(format!("{base}/zip/{s:04}.zip/{}", member_name(i)));
            }
        }
        Layout {
            size,
            objects: (0..count).map(|i| format!("{base}/o/{i:06}")).collect(),
            packed,
            tar_members,
            zip_members,
            shards,
        }
    }

    /// Where the data set of the cell (`size`, `batch`) lives below `prefix`.
    pub fn base_of(prefix: &str, size: u64, batch: usize) -> String {
        format!("{prefix}/{size}/{batch}")
    }

    /// The key of each tar shard.
    pub fn tar_shards(&self) -> Vec<String> {
        self.shard_keys(&self.tar_members)
    }

    /// The key of each zip shard.
    pub fn zip_shards(&self) -> Vec<String> {
        self.shard_keys(&self.zip_members)
    }

    /// The archive key of each shard: the member key of its first object, less the member.
    fn shard_keys(&self, members: &[String]) -> Vec<String> {
        self.shards
            .iter()
            .map(|s| {
                let key = &members[s.start];
                key[..key.len() - member_name(s.start).len() - 1].to_string()
            })
            .collect()
    }

    /// What `strategy` asks for to read the objects `picks`, in that order.
    pub fn requests(&self, strategy: Strategy, picks: &[usize]) -> Vec<Request> {
        picks
            .iter()
            .map(|&i| match strategy {
                Strategy::Loop
                | Strategy::Default
                | Strategy::Bundle
                | Strategy::BundleTigris
                | Strategy::BundleAistore => Request::whole(self.objects[i].clone()),
                Strategy::Coalesce => {
                    let (key, at) = &self.packed[i];
                    Request::range(key.clone(), *at..*at + self.size)
                }
                Strategy::Tar => Request::whole(self.tar_members[i].clone()),
                Strategy::Zip => Request::whole(self.zip_members[i].clone()),
            })
            .collect()
    }
}

fn member_name(i: usize) -> String {
    format!("{i:06}")
}

/// Object `i`'s bytes: `i % 251` throughout, its index in the first 8 bytes, so an answer
/// for the wrong object or of the wrong length shows in [`check`].
pub fn content(i: usize, size: u64) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; size as usize];
    let n = v.len().min(8);
    v[..n].copy_from_slice(&(i as u64).to_le_bytes()[..n]);
    v
}

/// Checks an answer against object `i` cheaply: its length and its first 8 bytes.
pub fn check(i: usize, size: u64, bytes: &[u8]) -> Result<(), String> {
    if bytes.len() as u64 != size {
        return Err(format!(
            "object {i}: {} bytes, expected {size}",
            bytes.len()
        ));
    }
    let n = bytes.len().min(8);
    if bytes[..n] != (i as u64).to_le_bytes()[..n] {
        return Err(format!("object {i}: the bytes of another object"));
    }
    Ok(())
}

/// A ustar archive of the objects `range`, members named by [`member_name`].
fn tar_shard(range: std::ops::Range<usize>, size: u64) -> Result<Vec<u8>, Error> {
    let mut builder = tar::Builder::new(Vec::with_capacity(
        range.len() * (size as usize + 1024) + 1024,
    ));
    for i in range {
        let mut header = tar::Header::new_ustar();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, member_name(i), content(i, size).as_slice())?;
    }
    Ok(builder.into_inner()?)
}

/// A zip of the objects `range`, stored (as image shards are), written by the `zip` crate.
fn zip_shard(range: std::ops::Range<usize>, size: u64) -> Result<Vec<u8>, Error> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::with_capacity(
        range.len() * (size as usize + 128),
    )));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in range {
        w.start_file(member_name(i), options)?;
        w.write_all(&content(i, size))?;
    }
    Ok(w.finish()?.into_inner())
}

/// Bytes of a tar stream carrying `members` members of `size` bytes: a 512-byte header per
/// member, data padded to 512 bytes, two zero blocks at the end (per `bundles`).
pub fn tar_stream_bytes(members: u64, size: u64, bundles: u64) -> u64 {
    members * (512 + size.div_ceil(512) * 512) + bundles * 1024
}

/// Which copies of the objects a sweep needs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Copies {
    /// Each object alone.
    pub objects: bool,
    /// Packed back to back in shards.
    pub packed: bool,
    /// Members of tar shards.
    pub tar: bool,
    /// Members of stored zip shards.
    pub zip: bool,
}

impl Copies {
    /// The copies `strategies` read.
    pub fn for_strategies(strategies: &[Strategy]) -> Copies {
        let mut c = Copies::default();
        for s in strategies {
            match s {
                Strategy::Loop
                | Strategy::Default
                | Strategy::Bundle
                | Strategy::BundleTigris
                | Strategy::BundleAistore => c.objects = true,
                Strategy::Coalesce => c.packed = true,
                Strategy::Tar => c.tar = true,
                Strategy::Zip => c.zip = true,
            }
        }
        c
    }
}

/// Writes the copies of `layout`'s objects that `copies` asks for through `writer`.
pub async fn write(
    writer: &Arc<dyn ObjectStore>,
    layout: &Layout,
    copies: Copies,
) -> Result<(), Error> {
    let size = layout.size;
    let put = |key: String, bytes: Vec<u8>| async move {
        writer
            .put(&Path::from(key), PutPayload::from_bytes(Bytes::from(bytes)))
            .await
            .map(|_| ())
    };
    if copies.objects {
        futures::stream::iter(layout.objects.iter().enumerate())
            .map(|(i, key)| put(key.clone(), content(i, size)))
            .buffer_unordered(64)
            .try_collect::<Vec<()>>()
            .await?;
    }
    let tar_keys = layout.tar_shards();
    let zip_keys = layout.zip_shards();
    for (s, shard) in layout.shards.iter().enumerate() {
        if copies.packed {
            let mut bytes = Vec::with_capacity(shard.len() * size as usize);
            for i in shard.clone() {
                bytes.extend_from_slice(&content(i, size));
            }
            put(layout.packed[shard.start].0.clone(), bytes).await?;
        }
        if copies.tar {
            put(tar_keys[s].clone(), tar_shard(shard.clone(), size)?).await?;
        }
        if copies.zip {
            put(zip_keys[s].clone(), zip_shard(shard.clone(), size)?).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_groups_objects_in_shards_of_64_mib() {
        let l = Layout::new("p/16384/1000", 16 << 10, 10_000);
        // 4,096 objects of 16 KiB per 64 MiB shard.
        assert_eq!(l.shards, vec![0..4096, 4096..8192, 8192..10_000]);
        assert_eq!(
            l.packed[4095],
            ("p/16384/1000/packed/0000".into(), 4095 * 16384)
        );
        assert_eq!(l.packed[4096], ("p/16384/1000/packed/0001".into(), 0));
        assert_eq!(l.tar_members[4096], "p/16384/1000/tar/0001.tar/004096");
        assert_eq!(l.zip_members[9999], "p/16384/1000/zip/0002.zip/009999");
        assert_eq!(
            l.tar_shards(),
            [
                "p/16384/1000/tar/0000.tar",
                "p/16384/1000/tar/0001.tar",
                "p/16384/1000/tar/0002.tar"
            ]
        );
        assert_eq!(l.zip_shards()[0], "p/16384/1000/zip/0000.zip");
        // A 16 MiB object is 4 per shard; one larger than a shard is alone.
        assert_eq!(Layout::new("b", 16 << 20, 10).shards.len(), 3);
        assert_eq!(Layout::new("b", 128 << 20, 2).shards, vec![0..1, 1..2]);
    }

    #[test]
    fn every_strategy_asks_for_the_picked_objects_in_order() {
        let l = Layout::new("b", 1024, 100);
        let picks = [7, 3, 99];
        for s in Strategy::ALL {
            let r = l.requests(s, &picks);
            assert_eq!(r.len(), 3, "{s:?}");
            let expected = match s {
                Strategy::Coalesce => Request::range("b/packed/0000", 3072..4096),
                Strategy::Tar => Request::whole("b/tar/0000.tar/000003"),
                Strategy::Zip => Request::whole("b/zip/0000.zip/000003"),
                _ => Request::whole("b/o/000003"),
            };
            assert_eq!(r[1], expected, "{s:?}");
        }
    }

    #[test]
    fn shards_written_by_the_tools_hold_the_objects() {
        let size = 1000;
        let tar = tar_shard(10..13, size).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let i: usize = name.parse().unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            check(i, size, &data).unwrap();
            names.push(i);
        }
        assert_eq!(names, [10, 11, 12]);
        assert_eq!(tar.len() as u64, tar_stream_bytes(3, size, 1));

        let zip = zip_shard(0..3, size).unwrap();
        let mut archive = zip::ZipArchive::new(Cursor::new(zip)).unwrap();
        assert_eq!(archive.len(), 3);
        let mut member = archive.by_name("000002").unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut member, &mut data).unwrap();
        check(2, size, &data).unwrap();
    }

    #[test]
    fn the_check_catches_a_wrong_object_or_length() {
        let a = content(5, 100);
        assert!(check(5, 100, &a).is_ok());
        assert!(check(6, 100, &a).unwrap_err().contains("another object"));
        assert!(check(5, 100, &a[..99]).unwrap_err().contains("99 bytes"));
        // Objects shorter than the index still carry what fits.
        assert!(check(258, 1, &content(258, 1)).is_ok());
        assert!(check(259, 1, &content(258, 1)).is_err());
    }
}
