//! ArchiveStore on bad input: every damaged archive gives a clear error naming what is
//! wrong, fails only the members it must, allocates nothing it was merely told about, and
//! leaves the other archives of the batch alone. Archives are written by the `tar` and `zip`
//! crates and then damaged.
#![cfg(feature = "archive")]

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use getmany::archive::{ArchiveConfig, ArchiveLimits, ArchiveStore};
use getmany::{Error, ObjectStoreStore, Request, Result, Store, WritableStore};

fn tar_of(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = ::tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = ::tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn zip_of(members: &[(&str, Vec<u8>)], deflate: bool) -> Vec<u8> {
    let mut w = ::zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate {
        ::zip::CompressionMethod::Deflated
    } else {
        ::zip::CompressionMethod::Stored
    };
    for (name, data) in members {
        let options = ::zip::write::SimpleFileOptions::default().compression_method(method);
        w.start_file(*name, options).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn members() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("a", vec![1u8; 3000]),
        ("b", vec![2u8; 700]),
        ("c", vec![3u8; 5000]),
        ("d", vec![4u8; 10]),
    ]
}

/// Rewrites a tar header's checksum after a field was changed.
fn fix_checksum(header: &mut [u8]) {
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header[..512].iter().map(|&b| b as u32).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// The offset of the tar header of the `n`th member (all members here are regular).
fn tar_header(tar: &[u8], n: usize) -> usize {
    let mut at = 0;
    for _ in 0..n {
        let size = usize::from_str_radix(
            std::str::from_utf8(&tar[at + 124..at + 135])
                .unwrap()
                .trim(),
            8,
        )
        .unwrap();
        at += 512 + size.div_ceil(512) * 512;
    }
    at
}

/// The offset of the central directory entry of `name`.
fn cd_entry(zip: &[u8], name: &str) -> usize {
    (0..zip.len() - 46)
        .find(|&i| {
            zip[i..i + 4] == [0x50, 0x4b, 1, 2] && {
                let n = u16::from_le_bytes([zip[i + 28], zip[i + 29]]) as usize;
                zip.get(i + 46..i + 46 + n) == Some(name.as_bytes())
            }
        })
        .unwrap()
}

struct Fixture {
    store: ArchiveStore<ObjectStoreStore>,
}

impl Fixture {
    async fn new(config: ArchiveConfig, objects: Vec<(&str, Vec<u8>)>) -> Fixture {
        let inner = ObjectStoreStore::new(Arc::new(object_store::memory::InMemory::new()));
        for (key, bytes) in objects {
            inner.set(key, Bytes::from(bytes)).await.unwrap();
        }
        // The good archive every batch also reads: it must never be affected.
        inner
            .set("good.tar", tar_of(&members()).into())
            .await
            .unwrap();
        Fixture {
            store: ArchiveStore::with_config(inner, config),
        }
    }

    /// Reads every member of `archive` plus every member of the good archive in one batch;
    /// returns the answers for `archive`'s members by name, after checking the good ones.
    async fn read(&self, archive: &str) -> Vec<(String, Result<Option<Bytes>>)> {
        let names = ["a", "b", "c", "d"];
        let mut requests: Vec<Request> = names
            .iter()
            .map(|n| Request::whole(format!("{archive}/{n}")))
            .collect();
        requests.extend(
            names
                .iter()
                .map(|n| Request::whole(format!("good.tar/{n}"))),
        );
        let mut out: Vec<(String, Result<Option<Bytes>>)> = Vec::new();
        let answers: Vec<_> = self.store.get_many(requests.clone()).collect().await;
        assert_eq!(answers.len(), 8, "every request answered");
        for (i, got) in answers {
            if i >= 4 {
                let want = &members()[i - 4].1;
                assert_eq!(&got.unwrap().unwrap()[..], &want[..], "good.tar untouched");
            } else {
                out.push((names[i].to_string(), got));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

fn ok(result: &Result<Option<Bytes>>, want: &[u8]) {
    match result {
        Ok(Some(b)) => assert_eq!(&b[..], want),
        other => panic!("expected {} bytes, got {other:?}", want.len()),
    }
}

fn invalid(result: &Result<Option<Bytes>>, needles: &[&str]) {
    match result {
        Err(e @ Error::InvalidData { .. }) => {
            let text = e.to_string();
            for needle in needles {
                assert!(text.contains(needle), "{text:?} should mention {needle:?}");
            }
        }
        other => panic!("expected InvalidData mentioning {needles:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn truncated_tar_keeps_the_members_before_the_cut() {
    let tar = tar_of(&members());
    let c = tar_header(&tar, 2);
    let in_data = tar[..c + 512 + 1000].to_vec(); // cut inside c's data
    let in_header = tar[..c + 100].to_vec(); // cut inside c's header
    let f = Fixture::new(
        ArchiveConfig::default(),
        vec![("cut-data.tar", in_data), ("cut-header.tar", in_header)],
    )
    .await;
    let got = f.read("cut-data.tar").await;
    ok(&got[0].1, &members()[0].1);
    ok(&got[1].1, &members()[1].1);
    invalid(&got[2].1, &["\"c\"", "past the end"]);
    invalid(&got[3].1, &["damaged", "may have been lost"]);

    let got = f.read("cut-header.tar").await;
    ok(&got[0].1, &members()[0].1);
    ok(&got[1].1, &members()[1].1);
    invalid(&got[2].1, &["truncated", "header"]);
    invalid(&got[3].1, &["truncated"]);
}

#[tokio::test]
async fn tar_checksum_mismatch_is_named() {
    let mut tar = tar_of(&members());
    let b = tar_header(&tar, 1);
    tar[b] = b'z'; // rename b to z without fixing the checksum
    let mut first = tar_of(&members());
    first[0] = b'z';
    let f = Fixture::new(
        ArchiveConfig::default(),
        vec![("bad.tar", tar), ("bad-first.tar", first)],
    )
    .await;
    let got = f.read("bad.tar").await;
    ok(&got[0].1, &members()[0].1);
    for (_, r) in &got[1..] {
        invalid(r, &["checksum mismatch", &format!("byte {b}")]);
    }
    let got = f.read("bad-first.tar").await;
    for (_, r) in &got {
        invalid(r, &["checksum mismatch", "byte 0"]);
    }
}

#[tokio::test]
async fn huge_declared_tar_sizes_allocate_nothing() {
    // b declares 2^62 bytes in base-256.
    let mut huge = tar_of(&members());
    let b = tar_header(&huge, 1);
    huge[b + 124] = 0x80;
    huge[b + 125..b + 136].copy_from_slice(&[0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0]);
    fix_checksum(&mut huge[b..b + 512]);
    // d declares 4 GiB in octal: past the end of the archive.
    let mut past = tar_of(&members());
    let d = tar_header(&past, 3);
    past[d + 124..d + 136].copy_from_slice(b"40000000000\0");
    fix_checksum(&mut past[d..d + 512]);
    // A PAX header that declares 1 GiB of records.
    let mut pax = tar_of(&[("x", vec![0u8; 10])]);
    pax[156] = b'x';
    pax[124..136].copy_from_slice(b"10000000000\0");
    fix_checksum(&mut pax[..512]);
    let f = Fixture::new(
        ArchiveConfig::default(),
        vec![("huge.tar", huge), ("past.tar", past), ("pax.tar", pax)],
    )
    .await;
    let got = f.read("huge.tar").await;
    ok(&got[0].1, &members()[0].1);
    invalid(&got[1].1, &["\"b\"", "past the end"]);
    let got = f.read("past.tar").await;
    ok(&got[2].1, &members()[2].1);
    invalid(&got[3].1, &["\"d\"", "4294967296", "past the end"]);
    let got = f.read("pax.tar").await;
    invalid(&got[0].1, &["1073741824", "over the limit"]);
}

#[tokio::test]
async fn truncated_and_damaged_zips() {
    let zip = zip_of(&members(), false);
    let cut = zip[..zip.len() - 10].to_vec(); // the end record is gone
    let mut bad_cd = zip.clone();
    let c = cd_entry(&bad_cd, "c");
    bad_cd[c] = b'Q'; // central directory entry signature broken
    // b's compressed size claims 1 GiB: past the end of the archive.
    let mut past = zip.clone();
    let b = cd_entry(&past, "b");
    past[b + 20..b + 24].copy_from_slice(&(1u32 << 30).to_le_bytes());
    past[b + 24..b + 28].copy_from_slice(&(1u32 << 30).to_le_bytes());
    // The end record claims a 4 GiB central directory.
    let mut huge_cd = zip.clone();
    let e = huge_cd.len() - 22;
    huge_cd[e + 12..e + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    let f = Fixture::new(
        ArchiveConfig::default(),
        vec![
            ("cut.zip", cut),
            ("bad-cd.zip", bad_cd),
            ("past.zip", past),
            ("huge-cd.zip", huge_cd),
        ],
    )
    .await;
    for (_, r) in f.read("cut.zip").await {
        invalid(&r, &["cut.zip", "no end of central directory"]);
    }
    for (_, r) in f.read("bad-cd.zip").await {
        invalid(&r, &["central directory entry", "wrong signature"]);
    }
    let got = f.read("past.zip").await;
    ok(&got[0].1, &members()[0].1);
    invalid(&got[1].1, &["\"b\"", "past the end"]);
    ok(&got[2].1, &members()[2].1);
    for (_, r) in f.read("huge-cd.zip").await {
        invalid(&r, &["central directory"]);
    }
}

#[tokio::test]
async fn zip_bombs_stop_at_the_declared_size_and_the_cap() {
    // 20 MB of zeros deflates to ~20 KB.
    let zeros = vec![0u8; 20 << 20];
    let honest = zip_of(&[("a", zeros.clone())], true);
    assert!(honest.len() < 100_000);
    // The same member declaring 1,000 bytes: inflating stops right past them.
    let mut lying = honest.clone();
    let a = cd_entry(&lying, "a");
    lying[a + 24..a + 28].copy_from_slice(&1000u32.to_le_bytes());
    let config = ArchiveConfig {
        limits: ArchiveLimits {
            max_member_size: 8 << 20,
            ..ArchiveLimits::default()
        },
        ..ArchiveConfig::default()
    };
    let f = Fixture::new(config, vec![("honest.zip", honest), ("lying.zip", lying)]).await;
    let got = f.read("honest.zip").await;
    invalid(
        &got[0].1,
        &["\"a\"", "20971520", "over the limit of 8388608"],
    );
    let got = f.read("lying.zip").await;
    invalid(
        &got[0].1,
        &["\"a\"", "inflates past its declared size of 1000"],
    );
    // Under a cap that allows it, the honest member reads in full.
    let f = Fixture::new(
        ArchiveConfig::default(),
        vec![("honest.zip", zip_of(&[("a", zeros.clone())], true))],
    )
    .await;
    let got = f.store.get("honest.zip/a", None).await.unwrap().unwrap();
    assert_eq!(got.len(), zeros.len());
    assert!(got.iter().all(|&b| b == 0));
}

#[tokio::test]
async fn crc_mismatch_and_unsupported_members_fail_alone() {
    let mut zip = zip_of(&members(), false);
    let b = cd_entry(&zip, "b");
    zip[b + 16] ^= 1; // b's CRC
    let c = cd_entry(&zip, "c");
    zip[c + 10] = 12; // c: bzip2
    let f = Fixture::new(ArchiveConfig::default(), vec![("x.zip", zip)]).await;
    let got = f.read("x.zip").await;
    ok(&got[0].1, &members()[0].1);
    invalid(&got[1].1, &["\"b\"", "CRC-32 mismatch"]);
    invalid(&got[2].1, &["\"c\"", "compression method 12"]);
    ok(&got[3].1, &members()[3].1);
    // A range of b does not read the whole member, so it is not CRC-checked.
    let part = f.store.get("x.zip/b", Some((0..5).into())).await.unwrap();
    assert_eq!(&part.unwrap()[..], &[2u8; 5]);
}

#[tokio::test]
async fn not_an_archive_at_all() {
    let f = Fixture::new(
        ArchiveConfig::default(),
        vec![
            ("text.zip", b"just some text, not a zip".to_vec()),
            ("text.tar", vec![b'x'; 2000]),
            ("empty.zip", Vec::new()),
        ],
    )
    .await;
    for (_, r) in f.read("text.zip").await {
        invalid(&r, &["not a zip archive"]);
    }
    for (_, r) in f.read("text.tar").await {
        invalid(&r, &["bad tar header at byte 0"]);
    }
    for (_, r) in f.read("empty.zip").await {
        invalid(&r, &["not a zip archive"]);
    }
    // A missing archive is not an error: its members do not exist.
    for (_, r) in f.read("nothing-here.zip").await {
        assert!(matches!(r, Ok(None)), "{r:?}");
    }
}
