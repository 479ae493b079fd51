//! The archive index (member path -> where its bytes are) and its persisted sidecar form.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Caps on what a (possibly hostile) archive can make the reader allocate or do.
///
/// Every size an archive declares is checked against these before anything is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// The largest member content that is inflated into memory (a deflated member whose
    /// declared size is larger is refused before inflating; one that inflates past its
    /// declared size is stopped there). Default 1 GiB.
    pub max_member_size: u64,
    /// The largest tar metadata record (PAX header, GNU long name) read into memory.
    /// Default 1 MiB.
    pub max_metadata: u64,
    /// The largest zip central directory or sidecar index read into memory. Default 256 MiB.
    pub max_index_bytes: u64,
    /// The most members indexed per archive; scanning stops there and the index records the
    /// damage. Default 10,000,000.
    pub max_members: usize,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_member_size: 1 << 30,
            max_metadata: 1 << 20,
            max_index_bytes: 256 << 20,
            max_members: 10_000_000,
        }
    }
}

/// How a member's bytes are stored in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    /// Stored as is: a byte range of the member is a byte range of the archive.
    Stored,
    /// Deflate (zip method 8): inflated on read, then sliced.
    Deflate,
    /// A zip compression method this crate does not read (bzip2, lzma, zstd, ...); reading
    /// the member is an error naming the method.
    Unsupported(u16),
}

/// The container format of an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ArchiveKind {
    /// A tar archive (ustar, GNU or PAX), read by byte ranges.
    Tar,
    /// A zip archive (zip64 included), read by byte ranges.
    Zip,
    /// A gzip-compressed tar (`.tar.gz`, `.tgz`): no random access, every batch that touches
    /// it reads and inflates the whole object once.
    TarGz,
}

/// Where one member's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Tar: the offset of the member's data. Zip: the offset of its local file header
    /// (the data follows the header, whose length is only known once it is read).
    pub offset: u64,
    /// Bytes the member occupies in the archive after its header (the compressed size).
    pub stored_size: u64,
    /// The size of the member's content.
    pub size: u64,
    /// How the content is stored.
    pub compression: Compression,
    /// The CRC-32 of the content, where the format has one (zip).
    pub crc32: Option<u32>,
    /// Zip: the length in bytes of the name in the central directory (the local header must
    /// carry the same name). 0 for tar.
    pub name_len: u32,
    /// Zip: the length of the central directory's extra field, the best guess of the local
    /// header's. 0 for tar.
    pub extra_len: u32,
    /// Zip: the member is encrypted (reading it is an error).
    pub encrypted: bool,
}

impl Member {
    /// The length of the zip local file header if its extra field is as long as the central
    /// directory's (30 fixed bytes, the name, the extra field).
    pub fn zip_header_estimate(&self) -> u64 {
        30 + self.name_len as u64 + self.extra_len as u64
    }
}

/// An archive's index: every regular member by path, and where the bytes of each are.
///
/// # Duplicate names
///
/// When several members have the same path the **last one in the archive wins**, as when the
/// archive is extracted to a directory (and as Python's `tarfile.getmember` and
/// `zipfile.getinfo` answer). Earlier ones cannot be read through the index.
///
/// # Names are only keys
///
/// Member paths are used exactly as stored (after the format's own decoding: PAX and GNU
/// long names, the ustar prefix, UTF-8 or CP437 zip names). A name with `..` segments or a
/// leading `/` is just a key (`shard.tar//etc/passwd` reads member `/etc/passwd`); nothing
/// is ever written to a file system. Directories, links, devices and other non-regular
/// members are not indexed.
///
/// # Damage
///
/// An archive that is damaged part-way (a tar header with a bad checksum, a truncated
/// archive) keeps the members indexed before the damage readable; the damage is recorded in
/// [`ArchiveIndex::damage`], and a lookup of a path the index does not have is then an error
/// naming the damage rather than "not found", since the member may have been lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveIndex {
    /// The container format.
    pub kind: ArchiveKind,
    /// The size of the archive object this index describes.
    pub archive_size: u64,
    /// The archive object's version (ETag or version id) when the store reported one.
    pub archive_version: Option<String>,
    /// What is wrong with the archive, when scanning stopped early or found a member past
    /// its end.
    pub damage: Option<String>,
    members: HashMap<String, Member>,
}

impl ArchiveIndex {
    /// An index of `members` in scan order; a later member with the same path replaces an
    /// earlier one.
    pub fn new(
        kind: ArchiveKind,
        archive_size: u64,
        archive_version: Option<String>,
        members: Vec<(String, Member)>,
        damage: Option<String>,
    ) -> Self {
        let mut map = HashMap::with_capacity(members.len());
        for (name, member) in members {
            map.insert(name, member);
        }
        ArchiveIndex {
            kind,
            archive_size,
            archive_version,
            damage,
            members: map,
        }
    }

    /// The member at `path`, if the index has it.
    pub fn get(&self, path: &str) -> Option<&Member> {
        self.members.get(path)
    }

    /// Every indexed member, in no particular order.
    pub fn members(&self) -> impl Iterator<Item = (&str, &Member)> {
        self.members.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The number of indexed members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the index has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether this index still describes an archive of `size` bytes and `version`.
    ///
    /// The size must match. The versions are compared when both are known; a store that
    /// reports no version (the default [`Store::get_with_meta`](crate::Store::get_with_meta))
    /// is checked by size alone, which misses a rewrite that keeps the size.
    pub fn matches(&self, size: u64, version: Option<&str>) -> bool {
        self.archive_size == size
            && match (self.archive_version.as_deref(), version) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// The persisted form: a JSON document (see [`ArchiveIndex::from_sidecar`]).
    pub fn to_sidecar(&self) -> Vec<u8> {
        let mut members: Vec<SidecarMember> = self
            .members
            .iter()
            .map(|(name, m)| SidecarMember(name.clone(), *m))
            .collect();
        // Deterministic output: the same index always serialises to the same bytes.
        members.sort_by_key(|m| m.1.offset);
        let doc = Sidecar {
            getmany_archive_index: SIDECAR_VERSION,
            kind: self.kind,
            archive_size: self.archive_size,
            archive_version: self.archive_version.clone(),
            damage: self.damage.clone(),
            members,
        };
        // Serialising plain structs of strings and integers cannot fail.
        serde_json::to_vec(&doc).unwrap_or_default()
    }

    /// Parses a sidecar written by [`to_sidecar`](ArchiveIndex::to_sidecar).
    ///
    /// Rejects a document of another format version, of another archive kind than
    /// `expected_kind`, or one whose members lie outside the archive it claims to describe,
    /// so a corrupt sidecar can never direct a read outside the archive.
    pub fn from_sidecar(bytes: &[u8], expected_kind: ArchiveKind) -> Result<Self, String> {
        let doc: Sidecar =
            serde_json::from_slice(bytes).map_err(|e| format!("not an archive index: {e}"))?;
        if doc.getmany_archive_index != SIDECAR_VERSION {
            return Err(format!(
                "index format version {} (this build reads {SIDECAR_VERSION})",
                doc.getmany_archive_index
            ));
        }
        if doc.kind != expected_kind {
            return Err(format!(
                "index of a {:?} archive, expected {expected_kind:?}",
                doc.kind
            ));
        }
        for SidecarMember(name, m) in &doc.members {
            let end = m
                .offset
                .checked_add(m.stored_size)
                .filter(|end| *end <= doc.archive_size);
            if end.is_none() {
                return Err(format!(
                    "member {name:?} lies outside the {}-byte archive",
                    doc.archive_size
                ));
            }
        }
        let members = doc
            .members
            .into_iter()
            .map(|SidecarMember(n, m)| (n, m))
            .collect();
        Ok(ArchiveIndex::new(
            doc.kind,
            doc.archive_size,
            doc.archive_version,
            members,
            doc.damage,
        ))
    }
}

const SIDECAR_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Sidecar {
    getmany_archive_index: u32,
    kind: ArchiveKind,
    archive_size: u64,
    archive_version: Option<String>,
    damage: Option<String>,
    members: Vec<SidecarMember>,
}

#[derive(Serialize, Deserialize)]
struct SidecarMember(String, Member);

#[cfg(test)]
mod tests {
    use super::*;

    fn member(offset: u64, size: u64) -> Member {
        Member {
            offset,
            stored_size: size,
            size,
            compression: Compression::Stored,
            crc32: None,
            name_len: 0,
            extra_len: 0,
            encrypted: false,
        }
    }

    #[test]
    fn sidecar_round_trips_and_rejects_what_does_not_fit() {
        let index = ArchiveIndex::new(
            ArchiveKind::Tar,
            4096,
            Some("\"etag\"".into()),
            vec![
                ("a".into(), member(512, 10)),
                ("b/c".into(), member(1536, 0)),
                ("a".into(), member(2048, 20)),
            ],
            None,
        );
        assert_eq!(index.get("a").map(|m| m.offset), Some(2048), "last wins");
        let bytes = index.to_sidecar();
        let back = ArchiveIndex::from_sidecar(&bytes, ArchiveKind::Tar).unwrap();
        assert_eq!(back, index);
        assert!(ArchiveIndex::from_sidecar(&bytes, ArchiveKind::Zip).is_err());
        assert!(ArchiveIndex::from_sidecar(b"{", ArchiveKind::Tar).is_err());

        let outside = ArchiveIndex::new(
            ArchiveKind::Tar,
            100,
            None,
            vec![("x".into(), member(50, u64::MAX))],
            None,
        );
        let err = ArchiveIndex::from_sidecar(&outside.to_sidecar(), ArchiveKind::Tar).unwrap_err();
        assert!(err.contains("\"x\""), "{err}");
    }

    #[test]
    fn matches_compares_size_and_known_versions() {
        let index = ArchiveIndex::new(ArchiveKind::Zip, 10, Some("v1".into()), vec![], None);
        assert!(index.matches(10, Some("v1")));
        assert!(index.matches(10, None));
        assert!(!index.matches(10, Some("v2")));
        assert!(!index.matches(11, Some("v1")));
    }
}
