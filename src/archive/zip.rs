//! The zip index builder and member decoding, over byte buffers (no I/O of their own).
//!
//! Indexing needs the end of central directory record (EOCD), found in a suffix read of the
//! archive ([`parse_tail`]), and the central directory it points to
//! ([`parse_central_directory`]), which is often inside the same suffix: one or two reads.
//! Zip64 (the zip64 EOCD record and locator, zip64 extra fields) is read; archives with
//! bytes prepended (self-extracting stubs) are handled as Python's `zipfile` does.
//!
//! A member is read from its local header offset: the local header is parsed from the same
//! read as the data ([`locate_data`]), then stored data is sliced and deflated data is
//! inflated under a cap ([`decode`]).

use std::io::Read;
use std::ops::Range;

use bytes::Bytes;

use super::index::{ArchiveIndex, ArchiveKind, ArchiveLimits, Compression, Member};
use crate::ByteRange;

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
const EOCD_LEN: usize = 22;
const ZIP64_LOCATOR_LEN: usize = 20;
const ZIP64_EOCD_LEN: usize = 56;
const CENTRAL_LEN: usize = 46;
/// The fixed part of a local file header.
pub const LOCAL_LEN: u64 = 30;
/// The largest EOCD record: 22 bytes and a 65,535-byte comment.
pub const MAX_EOCD_LEN: u64 = EOCD_LEN as u64 + 65_535;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Where the central directory is, from the end records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZipTail {
    /// Absolute offset of the central directory (prepended bytes accounted for).
    pub cd_offset: u64,
    /// Its size in bytes.
    pub cd_size: u64,
    /// Bytes prepended to the archive (added to every offset the archive records).
    pub concat: u64,
}

impl ZipTail {
    /// The absolute byte range of the central directory.
    pub fn cd_range(&self) -> Range<u64> {
        self.cd_offset..self.cd_offset + self.cd_size
    }
}

/// Finds the end records in `tail`, the last `tail.len()` bytes of an archive of
/// `archive_size` bytes.
pub fn parse_tail(
    tail: &[u8],
    archive_size: u64,
    limits: &ArchiveLimits,
) -> Result<ZipTail, String> {
    if tail.len() as u64 > archive_size {
        return Err("the tail is longer than the archive".into());
    }
    let tail_start = archive_size - tail.len() as u64;
    if tail.len() < EOCD_LEN {
        return Err(format!(
            "not a zip archive: {archive_size} bytes is too short for an end of central directory record"
        ));
    }
    // The last EOCD signature whose comment ends exactly at the end of the archive; failing
    // that, the last one (some writers pad after the comment), as zipfile does.
    let candidates = (0..=tail.len() - EOCD_LEN)
        .rev()
        .filter(|&i| u32_at(tail, i) == Some(EOCD_SIG));
    let mut found = None;
    for i in candidates {
        let comment = u16_at(tail, i + 20).unwrap_or(0) as usize;
        if i + EOCD_LEN + comment == tail.len() {
            found = Some(i);
            break;
        }
        if found.is_none() {
            found = Some(i);
        }
    }
    let eocd = found.ok_or_else(|| {
        format!(
            "not a zip archive: no end of central directory record in its last {} bytes",
            tail.len()
        )
    })?;
    let mut cd_size = u32_at(tail, eocd + 12).unwrap_or(0) as u64;
    let mut cd_offset = u32_at(tail, eocd + 16).unwrap_or(0) as u64;
    let eocd_abs = tail_start + eocd as u64;
    let mut end_records = eocd_abs;
    // Zip64: the locator sits right before the EOCD; the zip64 EOCD record right before the
    // locator (where zipfile looks for it).
    if eocd >= ZIP64_LOCATOR_LEN
        && u32_at(tail, eocd - ZIP64_LOCATOR_LEN) == Some(ZIP64_LOCATOR_SIG)
    {
        let locator = eocd - ZIP64_LOCATOR_LEN;
        let disks = u32_at(tail, locator + 16).unwrap_or(0);
        if disks > 1 {
            return Err("zip archives that span several disks are not supported".into());
        }
        let record = locator.checked_sub(ZIP64_EOCD_LEN).ok_or(
            "truncated zip64 end of central directory record (before the start of the read)",
        )?;
        if u32_at(tail, record) != Some(ZIP64_EOCD_SIG) {
            return Err("bad zip64 end of central directory record".into());
        }
        cd_size = u64_at(tail, record + 40).unwrap_or(0);
        cd_offset = u64_at(tail, record + 48).unwrap_or(0);
        end_records = tail_start + record as u64;
    }
    let concat = end_records
        .checked_sub(cd_size)
        .and_then(|x| x.checked_sub(cd_offset))
        .ok_or_else(|| {
            format!(
                "bad central directory: {cd_size} bytes at offset {cd_offset} do not end before the end records at byte {end_records}"
            )
        })?;
    if cd_size > limits.max_index_bytes {
        return Err(format!(
            "the central directory declares {cd_size} bytes, over the limit of {}",
            limits.max_index_bytes
        ));
    }
    Ok(ZipTail {
        cd_offset: cd_offset + concat,
        cd_size,
        concat,
    })
}

/// Parses the central directory `cd` (the bytes of [`ZipTail::cd_range`]) into members in
/// directory order. Directory entries are skipped. Members are checked against nothing
/// here: a member past the end of the archive fails when it is read.
pub fn parse_central_directory(
    cd: &[u8],
    tail: &ZipTail,
    limits: &ArchiveLimits,
) -> Result<Vec<(String, Member)>, String> {
    let mut members = Vec::with_capacity((cd.len() / CENTRAL_LEN).min(1 << 16));
    let mut at = 0usize;
    while at < cd.len() {
        if members.len() >= limits.max_members {
            return Err(format!("more than {} members", limits.max_members));
        }
        let entry_offset = tail.cd_offset + at as u64;
        let fixed = cd.get(at..at + CENTRAL_LEN).ok_or_else(|| {
            format!("central directory entry at byte {entry_offset} is truncated")
        })?;
        if u32_at(fixed, 0) != Some(CENTRAL_SIG) {
            return Err(format!(
                "bad central directory entry at byte {entry_offset}: wrong signature"
            ));
        }
        let flags = u16_at(fixed, 8).unwrap_or(0);
        let method = u16_at(fixed, 10).unwrap_or(0);
        let crc = u32_at(fixed, 16).unwrap_or(0);
        let mut csize = u32_at(fixed, 20).unwrap_or(0) as u64;
        let mut usize_ = u32_at(fixed, 24).unwrap_or(0) as u64;
        let name_len = u16_at(fixed, 28).unwrap_or(0) as usize;
        let extra_len = u16_at(fixed, 30).unwrap_or(0) as usize;
        let comment_len = u16_at(fixed, 32).unwrap_or(0) as usize;
        let mut offset = u32_at(fixed, 42).unwrap_or(0) as u64;
        let var_end = at + CENTRAL_LEN + name_len + extra_len + comment_len;
        if var_end > cd.len() {
            return Err(format!(
                "central directory entry at byte {entry_offset} is truncated"
            ));
        }
        let name_bytes = &cd[at + CENTRAL_LEN..at + CENTRAL_LEN + name_len];
        let extra = &cd[at + CENTRAL_LEN + name_len..at + CENTRAL_LEN + name_len + extra_len];
        let name = if flags & 0x800 != 0 {
            String::from_utf8_lossy(name_bytes).into_owned()
        } else {
            decode_cp437(name_bytes)
        };
        // Zip64 extra field: the 64-bit values of the fields set to 0xFFFFFFFF, in order.
        let mut rest = extra;
        while rest.len() >= 4 {
            let id = u16_at(rest, 0).unwrap_or(0);
            let len = u16_at(rest, 2).unwrap_or(0) as usize;
            let Some(data) = rest.get(4..4 + len) else {
                return Err(format!("member {name:?}: corrupt extra field"));
            };
            if id == 1 {
                let mut fields = data
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
                for target in [&mut usize_, &mut csize, &mut offset] {
                    if *target == 0xFFFF_FFFF {
                        *target = fields
                            .next()
                            .ok_or_else(|| format!("member {name:?}: corrupt zip64 extra field"))?;
                    }
                }
            }
            rest = &rest[4 + len..];
        }
        at = var_end;
        if name.ends_with('/') {
            continue;
        }
        let compression = match method {
            0 => Compression::Stored,
            8 => Compression::Deflate,
            other => Compression::Unsupported(other),
        };
        let offset = offset
            .checked_add(tail.concat)
            .ok_or_else(|| format!("member {name:?}: impossible local header offset"))?;
        members.push((
            name,
            Member {
                offset,
                stored_size: csize,
                size: usize_,
                compression,
                crc32: Some(crc),
                name_len: name_len as u32,
                extra_len: extra_len as u32,
                encrypted: flags & 1 != 0,
            },
        ));
    }
    Ok(members)
}

/// Indexes a zip archive held in memory.
pub fn index_zip(data: &[u8], limits: &ArchiveLimits) -> Result<ArchiveIndex, String> {
    let size = data.len() as u64;
    let tail_len = (MAX_EOCD_LEN + (ZIP64_EOCD_LEN + ZIP64_LOCATOR_LEN) as u64).min(size);
    let tail = &data[(size - tail_len) as usize..];
    let tail = parse_tail(tail, size, limits)?;
    let cd = data
        .get(tail.cd_offset as usize..(tail.cd_offset + tail.cd_size) as usize)
        .ok_or("the central directory lies outside the archive")?;
    let members = parse_central_directory(cd, &tail, limits)?;
    Ok(ArchiveIndex::new(
        ArchiveKind::Zip,
        size,
        None,
        members,
        None,
    ))
}

/// Checks that a member's declared extent fits an archive of `archive_size` bytes and the
/// limits, before any read.
pub fn check_member(
    name: &str,
    member: &Member,
    archive_size: u64,
    limits: &ArchiveLimits,
) -> Result<(), String> {
    if member.encrypted {
        return Err(format!(
            "member {name:?} is encrypted, which is not supported"
        ));
    }
    if let Compression::Unsupported(method) = member.compression {
        return Err(format!(
            "member {name:?} uses compression method {method}, which is not supported (only stored and deflate)"
        ));
    }
    let end = member
        .offset
        .checked_add(LOCAL_LEN)
        .and_then(|x| x.checked_add(member.stored_size));
    match end {
        Some(end) if end <= archive_size => {}
        _ => {
            return Err(format!(
                "member {name:?} declares {} bytes at byte {}, past the end of the archive ({archive_size} bytes)",
                member.stored_size, member.offset
            ));
        }
    }
    if member.compression == Compression::Deflate && member.size > limits.max_member_size {
        return Err(format!(
            "member {name:?} declares {} bytes inflated, over the limit of {}",
            member.size, limits.max_member_size
        ));
    }
    if member.compression == Compression::Stored && member.size != member.stored_size {
        return Err(format!(
            "member {name:?} is stored but declares {} bytes of content in {} bytes",
            member.size, member.stored_size
        ));
    }
    Ok(())
}

/// The archive range to read for `wanted` bytes of a member's stored data (`0..n` of the
/// data; `None` for all of it): from the local header to the end of the wanted data, plus
/// `slack` bytes for a local extra field longer than the central directory's, clipped to
/// the archive.
pub fn read_range(
    member: &Member,
    wanted_end: Option<u64>,
    slack: u64,
    archive_size: u64,
) -> Range<u64> {
    let data_end = wanted_end
        .unwrap_or(member.stored_size)
        .min(member.stored_size);
    let end = member
        .offset
        .saturating_add(member.zip_header_estimate())
        .saturating_add(slack)
        .saturating_add(data_end)
        .min(archive_size);
    member.offset..end
}

/// Where the data starts in a read that begins at the member's local header.
///
/// Returns the offset of the data relative to the start of `read`.
pub fn locate_data(name: &str, member: &Member, read: &[u8]) -> Result<u64, String> {
    if read.len() < LOCAL_LEN as usize {
        return Err(format!(
            "member {name:?}: the local header at byte {} is truncated",
            member.offset
        ));
    }
    if u32_at(read, 0) != Some(LOCAL_SIG) {
        return Err(format!(
            "member {name:?}: no local file header at byte {} (the archive changed since it was indexed, or is corrupt)",
            member.offset
        ));
    }
    let name_len = u16_at(read, 26).unwrap_or(0) as u64;
    let extra_len = u16_at(read, 28).unwrap_or(0) as u64;
    if name_len != member.name_len as u64 {
        return Err(format!(
            "member {name:?}: the local header's name has {name_len} bytes, the central directory's {}",
            member.name_len
        ));
    }
    Ok(LOCAL_LEN + name_len + extra_len)
}

/// Turns a member's stored bytes into the bytes of `range` of its content.
///
/// `stored` is the member's data from its start: all of it, or (stored members only) at
/// least up to the end of the range. Deflated members are inflated (to the end of the range
/// only, when a range is asked for), never past their declared size nor the limit; a whole
/// read checks the CRC-32.
pub fn decode(
    name: &str,
    member: &Member,
    stored: Bytes,
    range: Option<&ByteRange>,
    limits: &ArchiveLimits,
) -> Result<Bytes, String> {
    let size = member.size;
    let wanted = match range {
        None => 0..size,
        Some(r) => match r.resolve(size) {
            Some(r) => r,
            None => {
                return Err(format!(
                    "the range starts past the end of the member ({size} bytes)"
                ));
            }
        },
    };
    match member.compression {
        Compression::Stored => {
            if (stored.len() as u64) < wanted.end {
                return Err(format!(
                    "member {name:?}: the archive ended {} bytes into its {} bytes of data",
                    stored.len(),
                    size
                ));
            }
            let out = stored.slice(wanted.start as usize..wanted.end as usize);
            if range.is_none() {
                check_crc(name, member, &out)?;
            }
            Ok(out)
        }
        Compression::Deflate => {
            if size > limits.max_member_size {
                return Err(format!(
                    "member {name:?} declares {size} bytes inflated, over the limit of {}",
                    limits.max_member_size
                ));
            }
            let stop = wanted.end;
            // Deflate expands at most ~1032:1, so the compressed length bounds what can
            // honestly come out; a declared size beyond it is not trusted for allocation.
            let bound = (stored.len() as u64)
                .saturating_mul(1032)
                .saturating_add(64);
            let mut out = Vec::with_capacity(stop.min(bound) as usize);
            let mut decoder = flate2::read::DeflateDecoder::new(&stored[..]);
            // One byte more than the declared size, to notice a member that inflates past it.
            let limit = if range.is_none() { size + 1 } else { stop };
            (&mut decoder)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| format!("member {name:?}: bad deflate data: {e}"))?;
            if out.len() as u64 > size {
                return Err(format!(
                    "member {name:?} inflates past its declared size of {size} bytes (a zip bomb?)"
                ));
            }
            if (out.len() as u64) < stop {
                return Err(format!(
                    "member {name:?} inflates to {} bytes, short of its declared {size}",
                    out.len()
                ));
            }
            let out = Bytes::from(out);
            if range.is_none() {
                check_crc(name, member, &out)?;
                Ok(out)
            } else {
                Ok(out.slice(wanted.start as usize..wanted.end as usize))
            }
        }
        Compression::Unsupported(method) => Err(format!(
            "member {name:?} uses compression method {method}, which is not supported"
        )),
    }
}

fn check_crc(name: &str, member: &Member, content: &[u8]) -> Result<(), String> {
    if let Some(want) = member.crc32 {
        let got = crc32fast::hash(content);
        if got != want {
            return Err(format!(
                "member {name:?}: CRC-32 mismatch (central directory {want:08x}, content {got:08x})"
            ));
        }
    }
    Ok(())
}

/// Each member of an archive: its name and its content, or why it cannot be read.
pub type Extracted = Vec<(String, Result<Bytes, String>)>;

/// Reads every member of an in-memory zip (for tests and fuzzing): name and content or
/// error, in no particular order.
pub fn extract_all(data: &Bytes, limits: &ArchiveLimits) -> Result<Extracted, String> {
    let index = index_zip(data, limits)?;
    let size = data.len() as u64;
    Ok(index
        .members()
        .map(|(name, m)| {
            let result = (|| {
                check_member(name, m, size, limits)?;
                let read = data.slice(m.offset as usize..);
                let start = locate_data(name, m, &read)?;
                let end = start.saturating_add(m.stored_size).min(read.len() as u64);
                let stored = read.slice(start.min(end) as usize..end as usize);
                decode(name, m, stored, None, limits)
            })();
            (name.to_string(), result)
        })
        .collect())
}

/// Code page 437, which zip names use unless their UTF-8 flag is set.
pub fn decode_cp437(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b < 0x80 {
                b as char
            } else {
                CP437_HIGH[(b - 0x80) as usize]
            }
        })
        .collect()
}

/// The characters of bytes 0x80..=0xFF in code page 437.
pub const CP437_HIGH: [char; 128] = [
    'Ç', 'ü', 'é', 'â', 'ä', 'à', 'å', 'ç', 'ê', 'ë', 'è', 'ï', 'î', 'ì', 'Ä', 'Å', //
    'É', 'æ', 'Æ', 'ô', 'ö', 'ò', 'û', 'ù', 'ÿ', 'Ö', 'Ü', '¢', '£', '¥', '₧', 'ƒ', //
    'á', 'í', 'ó', 'ú', 'ñ', 'Ñ', 'ª', 'º', '¿', '⌐', '¬', '½', '¼', '¡', '«', '»', //
    '░', '▒', '▓', '│', '┤', '╡', '╢', '╖', '╕', '╣', '║', '╗', '╝', '╜', '╛', '┐', //
    '└', '┴', '┬', '├', '─', '┼', '╞', '╟', '╚', '╔', '╩', '╦', '╠', '═', '╬', '╧', //
    '╨', '╤', '╥', '╙', '╘', '╒', '╓', '╫', '╪', '┘', '┌', '█', '▄', '▌', '▐', '▀', //
    'α', 'ß', 'Γ', 'π', 'Σ', 'σ', 'µ', 'τ', 'Φ', 'Θ', 'Ω', 'δ', '∞', 'φ', 'ε', '∩', //
    '≡', '±', '≥', '≤', '⌠', '⌡', '÷', '≈', '°', '∙', '·', '√', 'ⁿ', '²', '■', '\u{a0}',
];
