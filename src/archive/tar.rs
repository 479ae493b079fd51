//! The tar index builder: a header walker that needs no I/O of its own.
//!
//! [`TarScanner`] is fed byte windows of the archive and says which bytes it needs next,
//! so the same code indexes an archive through ranged reads of a store (skipping member
//! data), a byte buffer ([`index_tar`]), or a forward-only stream ([`scan_stream`], for
//! `.tar.gz`).
//!
//! Formats: v7, ustar (name + prefix), GNU (`L` long names, `K` long link names, base-256
//! sizes) and PAX (`x` per-member and `g` global headers, and Solaris `X`: `path` and
//! `size` are used; a `size` record overrides the header's). Regular members (`0`, `\0`, `7`) are indexed;
//! directories, links, devices, FIFOs and GNU sparse members are skipped. The walk stops at
//! the first zero block, as Python's `tarfile` and GNU tar (without `--ignore-zeros`) do.

use std::collections::HashMap;
use std::io::Read;

use super::index::{ArchiveIndex, ArchiveKind, ArchiveLimits, Compression, Member};

const BLOCK: u64 = 512;

/// What the scanner needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TarStep {
    /// At least `len` bytes starting at `offset` of the archive.
    Need {
        /// Absolute offset in the archive.
        offset: u64,
        /// The least number of bytes that lets the scan progress.
        len: u64,
    },
    /// The scan is over (end of archive, or damage).
    Done,
}

/// A tar header walker fed with windows of the archive.
#[derive(Debug)]
pub struct TarScanner {
    limits: ArchiveLimits,
    archive_size: Option<u64>,
    /// The offset of the next header.
    pos: u64,
    long_name: Option<Vec<u8>>,
    pax: HashMap<String, Vec<u8>>,
    global_pax: HashMap<String, Vec<u8>>,
    members: Vec<(String, Member)>,
    damage: Option<String>,
    done: bool,
}

impl TarScanner {
    /// A scanner for an archive of `archive_size` bytes (`None` when streaming and unknown).
    pub fn new(limits: ArchiveLimits, archive_size: Option<u64>) -> Self {
        TarScanner {
            limits,
            archive_size,
            pos: 0,
            long_name: None,
            pax: HashMap::new(),
            global_pax: HashMap::new(),
            members: Vec::new(),
            damage: None,
            done: false,
        }
    }

    /// The members found so far, in archive order.
    pub fn members(&self) -> &[(String, Member)] {
        &self.members
    }

    /// The offset of the next header to read.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn stop(&mut self, damage: String) -> TarStep {
        self.damage = Some(damage);
        self.done = true;
        TarStep::Done
    }

    /// Scans as far as `window` (the archive's bytes from `window_offset`) allows.
    ///
    /// `at_end` says the archive ends where the window ends. Returns what to feed next.
    pub fn scan(&mut self, window_offset: u64, window: &[u8], at_end: bool) -> TarStep {
        let window_end = window_offset.saturating_add(window.len() as u64);
        while !self.done {
            if self.members.len() >= self.limits.max_members {
                let damage = format!(
                    "more than {} members: indexing stopped at byte {}",
                    self.limits.max_members, self.pos
                );
                return self.stop(damage);
            }
            let pos = self.pos;
            if at_end && pos == window_end {
                // The archive ends on a header boundary without the zero blocks: accepted,
                // as tarfile and GNU tar accept it.
                self.done = true;
                break;
            }
            let Some(header) = slice_at(window_offset, window, pos, BLOCK) else {
                if at_end && pos >= window_end {
                    return self.stop(format!(
                        "archive truncated: it ends at byte {window_end}, inside the data before the header expected at byte {pos}"
                    ));
                }
                if at_end {
                    return self.stop(format!(
                        "archive truncated: it ends at byte {window_end}, inside the header at byte {pos}"
                    ));
                }
                return TarStep::Need {
                    offset: pos,
                    len: BLOCK,
                };
            };
            if header.iter().all(|&b| b == 0) {
                self.done = true;
                break;
            }
            if let Err(why) = check_checksum(header) {
                return self.stop(format!("bad tar header at byte {pos}: {why}"));
            }
            let typeflag = header[156];
            let header_size = match parse_number(&header[124..136]) {
                Some(n) => n,
                None => {
                    return self.stop(format!(
                        "bad tar header at byte {pos}: the size field is not a number"
                    ));
                }
            };
            let mut size = header_size;
            let is_regular = matches!(typeflag, b'0' | 0 | b'7');
            if is_regular
                && let Some(v) = self.pax.get("size").or_else(|| self.global_pax.get("size"))
            {
                match std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    Some(n) => size = n,
                    None => {
                        return self.stop(format!(
                            "bad PAX header before byte {pos}: size {:?} is not a number",
                            String::from_utf8_lossy(v)
                        ));
                    }
                }
            }
            let data = pos + BLOCK;
            let Some(next) = data
                .checked_add(size)
                .and_then(|end| end.checked_add((BLOCK - size % BLOCK) % BLOCK))
            else {
                return self.stop(format!(
                    "tar header at byte {pos} declares an impossible size {size}"
                ));
            };
            if typeflag == b'K' {
                // A GNU long link name: only links use it, and links are not indexed. It
                // precedes the 'L' and the header it belongs to, so pending names stay.
                self.pos = next;
                continue;
            }
            match typeflag {
                // 'X': the Solaris extended header, read like PAX 'x' (as tarfile does).
                b'x' | b'X' | b'g' | b'L' => {
                    if size > self.limits.max_metadata {
                        return self.stop(format!(
                            "tar metadata record at byte {pos} declares {size} bytes, over the limit of {}",
                            self.limits.max_metadata
                        ));
                    }
                    let Some(body) = slice_at(window_offset, window, data, size) else {
                        if at_end {
                            return self.stop(format!(
                                "archive truncated: it ends at byte {window_end}, inside the metadata record at byte {pos}"
                            ));
                        }
                        return TarStep::Need {
                            offset: pos,
                            len: BLOCK + size,
                        };
                    };
                    match typeflag {
                        b'L' => self.long_name = Some(cut_at_nul(body).to_vec()),
                        kind => match parse_pax(body) {
                            Ok(records) => {
                                let target = if kind == b'g' {
                                    &mut self.global_pax
                                } else {
                                    &mut self.pax
                                };
                                target.extend(records);
                            }
                            Err(why) => {
                                return self.stop(format!("bad PAX header at byte {pos}: {why}"));
                            }
                        },
                    }
                    self.pos = next;
                    continue;
                }
                _ => {}
            }
            if is_regular {
                let name = self.member_name(header);
                let sparse = self
                    .pax
                    .keys()
                    .chain(self.global_pax.keys())
                    .any(|k| k.starts_with("GNU.sparse."));
                // v7 archives mark directories as regular files ('\0') with a trailing
                // slash.
                let v7_directory = typeflag == 0 && name.ends_with('/');
                if !sparse && !v7_directory {
                    let member = Member {
                        offset: data,
                        stored_size: size,
                        size,
                        compression: Compression::Stored,
                        crc32: None,
                        name_len: 0,
                        extra_len: 0,
                        encrypted: false,
                    };
                    self.members.push((name.clone(), member));
                    if let Some(archive_size) = self.archive_size
                        && data + size > archive_size
                    {
                        return self.stop(format!(
                                "member {name:?} declares {size} bytes at byte {data}, past the end of the archive ({archive_size} bytes)"
                            ));
                    }
                }
            }
            self.long_name = None;
            self.pax.clear();
            self.pos = next;
        }
        TarStep::Done
    }

    fn member_name(&self, header: &[u8]) -> String {
        let bytes: Vec<u8> = if let Some(path) = self.pax.get("path") {
            path.clone()
        } else if let Some(long) = &self.long_name {
            long.clone()
        } else if let Some(path) = self.global_pax.get("path") {
            path.clone()
        } else {
            let name = cut_at_nul(&header[0..100]);
            let prefix = cut_at_nul(&header[345..500]);
            // The prefix field is ustar's (magic "ustar\0"); GNU's "ustar  \0" headers keep
            // other fields there.
            if &header[257..263] == b"ustar\0" && !prefix.is_empty() {
                let mut full = prefix.to_vec();
                full.push(b'/');
                full.extend_from_slice(name);
                full
            } else {
                name.to_vec()
            }
        };
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// Ends the scan and returns the index of an archive of `archive_size` bytes.
    ///
    /// A scan that did not reach the end (it was still waiting for bytes) is recorded as
    /// damage.
    pub fn finish(mut self, archive_size: u64, archive_version: Option<String>) -> ArchiveIndex {
        if !self.done && self.damage.is_none() {
            self.damage = Some(format!(
                "archive truncated: it ends at byte {archive_size}, before the header at byte {}",
                self.pos
            ));
        }
        ArchiveIndex::new(
            ArchiveKind::Tar,
            archive_size,
            archive_version,
            self.members,
            self.damage,
        )
    }
}

/// `len` bytes at absolute `offset`, if the window holds them.
fn slice_at(window_offset: u64, window: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = offset.checked_sub(window_offset)?;
    let end = start.checked_add(len)?;
    if end > window.len() as u64 {
        return None;
    }
    Some(&window[start as usize..end as usize])
}

fn cut_at_nul(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|&b| b == 0) {
        Some(i) => &bytes[..i],
        None => bytes,
    }
}

/// A numeric header field: octal text (NUL/space padded) or GNU base-256.
fn parse_number(field: &[u8]) -> Option<u64> {
    match field.first() {
        Some(0x80) => {
            let mut n: u64 = 0;
            for &b in &field[1..] {
                n = n.checked_mul(256)?.checked_add(b as u64)?;
            }
            Some(n)
        }
        // Negative base-256 numbers are not sizes.
        Some(0xff) => None,
        _ => {
            let text = cut_at_nul(field);
            let trimmed = trim_ascii(text);
            if trimmed.is_empty() {
                return Some(0);
            }
            let mut n: u64 = 0;
            for &b in trimmed {
                if !(b'0'..=b'7').contains(&b) {
                    return None;
                }
                n = n.checked_mul(8)?.checked_add((b - b'0') as u64)?;
            }
            Some(n)
        }
    }
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace());
    match (start, end) {
        (Some(s), Some(e)) => &bytes[s..=e],
        _ => &[],
    }
}

/// Checks the header checksum (unsigned, or signed as some old tars wrote it).
fn check_checksum(header: &[u8]) -> Result<(), String> {
    let stored = parse_number(&header[148..156]).ok_or("the checksum field is not a number")?;
    let mut unsigned: u64 = 8 * b' ' as u64;
    let mut signed: i64 = 8 * b' ' as i64;
    for (i, &b) in header.iter().enumerate() {
        if (148..156).contains(&i) {
            continue;
        }
        unsigned += b as u64;
        signed += b as i8 as i64;
    }
    if stored == unsigned || stored as i64 == signed {
        Ok(())
    } else {
        Err(format!(
            "checksum mismatch (stored {stored:o}, computed {unsigned:o})"
        ))
    }
}

/// PAX records: `"<len> <key>=<value>\n"`, `len` counting the whole record.
fn parse_pax(mut body: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    // Trailing NUL padding is allowed.
    while !body.is_empty() && body[0] != 0 {
        let space = body
            .iter()
            .position(|&b| b == b' ')
            .ok_or("a record has no length")?;
        let len: usize = std::str::from_utf8(&body[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a record length is not a number")?;
        if len <= space + 1 || len > body.len() {
            return Err(format!(
                "a record of {len} bytes does not fit the {} left",
                body.len()
            ));
        }
        let record = &body[space + 1..len];
        let record = record
            .strip_suffix(b"\n")
            .ok_or("a record does not end with a newline")?;
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("a record has no '='")?;
        let key = String::from_utf8_lossy(&record[..eq]).into_owned();
        out.push((key, record[eq + 1..].to_vec()));
        body = &body[len..];
    }
    Ok(out)
}

/// Indexes a tar archive held in memory.
pub fn index_tar(data: &[u8], limits: ArchiveLimits) -> ArchiveIndex {
    let size = data.len() as u64;
    let mut scanner = TarScanner::new(limits, Some(size));
    let _ = scanner.scan(0, data, true);
    scanner.finish(size, None)
}

/// What [`scan_stream`] found: the index of the decompressed tar, and the content of the
/// members that were asked for (the last member of each wanted name).
#[derive(Debug)]
pub struct StreamScan {
    /// The index (offsets are in the decompressed stream).
    pub index: ArchiveIndex,
    /// The content of each wanted member found, by name.
    pub contents: HashMap<String, bytes::Bytes>,
}

/// Walks a tar read forward-only from `reader` (a gzip decoder over a `.tar.gz`, say),
/// keeping the content of the members named in `wanted` and skipping everything else.
///
/// Memory stays bounded: the wanted members (each at most `limits.max_member_size`), one
/// header or metadata record, and a 64 KiB copy buffer.
pub fn scan_stream<R: Read>(
    mut reader: R,
    wanted: &dyn Fn(&str) -> bool,
    limits: ArchiveLimits,
) -> Result<StreamScan, String> {
    let mut scanner = TarScanner::new(limits, None);
    let mut contents: HashMap<String, bytes::Bytes> = HashMap::new();
    let mut window: Vec<u8> = Vec::new();
    let mut window_offset: u64 = 0;
    let mut at_end = false;
    let mut seen_members = 0;
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        let step = scanner.scan(window_offset, &window, at_end);
        // Collect the content of wanted members found by this scan step: their data lies
        // between the window and the next header, so it streams past before the next need.
        let new_members: Vec<(String, Member)> = scanner.members()[seen_members..].to_vec();
        seen_members = scanner.members().len();
        for (name, member) in new_members {
            if !wanted(&name) {
                continue;
            }
            if member.size > limits.max_member_size {
                return Err(format!(
                    "member {name:?} declares {} bytes, over the limit of {}",
                    member.size, limits.max_member_size
                ));
            }
            let data = read_span(
                &mut reader,
                &mut window,
                &mut window_offset,
                &mut scratch,
                member.offset,
                member.size,
            )?;
            match data {
                Some(data) => {
                    contents.insert(name, data.into());
                }
                None => {
                    // The stream ended inside the member: the scanner reports the damage.
                    contents.remove(&name);
                }
            }
        }
        let TarStep::Need { offset, len } = step else {
            break;
        };
        // Drop what lies before `offset`, then fill the window to `len` bytes.
        skip_to(
            &mut reader,
            &mut window,
            &mut window_offset,
            &mut scratch,
            offset,
        )?;
        at_end = fill(&mut reader, &mut window, &mut scratch, len)?;
        if window_offset < offset {
            // The stream ended before `offset`.
            at_end = true;
        }
    }
    let size = window_offset + window.len() as u64;
    Ok(StreamScan {
        index: scanner.finish(size, None),
        contents,
    })
}

/// Reads `len` bytes at `offset` (at or after the window) into a new buffer; `None` if the
/// stream ends first.
fn read_span<R: Read>(
    reader: &mut R,
    window: &mut Vec<u8>,
    window_offset: &mut u64,
    scratch: &mut [u8],
    offset: u64,
    len: u64,
) -> Result<Option<Vec<u8>>, String> {
    skip_to(reader, window, window_offset, scratch, offset)?;
    let mut out = Vec::with_capacity(len.min(1 << 20) as usize);
    let from_window = (window.len() as u64).min(len) as usize;
    out.extend_from_slice(&window[..from_window]);
    window.drain(..from_window);
    *window_offset += from_window as u64;
    while (out.len() as u64) < len {
        let want = ((len - out.len() as u64) as usize).min(scratch.len());
        let n = read_some(reader, &mut scratch[..want])?;
        if n == 0 {
            return Ok(None);
        }
        out.extend_from_slice(&scratch[..n]);
        *window_offset += n as u64;
    }
    Ok(Some(out))
}

/// Advances the window's start to `offset`, discarding bytes.
fn skip_to<R: Read>(
    reader: &mut R,
    window: &mut Vec<u8>,
    window_offset: &mut u64,
    scratch: &mut [u8],
    offset: u64,
) -> Result<(), String> {
    let in_window = offset
        .saturating_sub(*window_offset)
        .min(window.len() as u64) as usize;
    window.drain(..in_window);
    *window_offset += in_window as u64;
    while *window_offset < offset {
        let want = ((offset - *window_offset) as usize).min(scratch.len());
        let n = read_some(reader, &mut scratch[..want])?;
        if n == 0 {
            return Ok(());
        }
        *window_offset += n as u64;
    }
    Ok(())
}

/// Fills the window to at least `len` bytes; returns whether the stream ended.
fn fill<R: Read>(
    reader: &mut R,
    window: &mut Vec<u8>,
    scratch: &mut [u8],
    len: u64,
) -> Result<bool, String> {
    while (window.len() as u64) < len {
        let n = read_some(reader, scratch)?;
        if n == 0 {
            return Ok(true);
        }
        window.extend_from_slice(&scratch[..n]);
    }
    Ok(false)
}

fn read_some<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize, String> {
    loop {
        match reader.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, size: u64, typeflag: u8) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let size_field = format!("{size:011o}\0");
        h[124..136].copy_from_slice(size_field.as_bytes());
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in members {
            out.extend_from_slice(&header(name, data.len() as u64, b'0'));
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn indexes_members_and_skips_data() {
        let tar = archive(&[("a", b"hello"), ("dir/b", &[7u8; 600]), ("a", b"again")]);
        let index = index_tar(&tar, ArchiveLimits::default());
        assert_eq!(index.damage, None);
        assert_eq!(index.len(), 2);
        let b = index.get("dir/b").unwrap();
        assert_eq!((b.offset, b.size), (1536, 600));
        assert_eq!(index.get("a").unwrap().offset, 3072, "the last 'a' wins");
    }

    #[test]
    fn the_scanner_asks_for_headers_only() {
        let tar = archive(&[("a", &[1u8; 5000]), ("b", &[2u8; 5000])]);
        let mut scanner = TarScanner::new(ArchiveLimits::default(), Some(tar.len() as u64));
        let step = scanner.scan(0, &tar[..512], false);
        assert_eq!(
            step,
            TarStep::Need {
                offset: 5632,
                len: 512
            }
        );
        let step = scanner.scan(5632, &tar[5632..6144], false);
        assert_eq!(
            step,
            TarStep::Need {
                offset: 11264,
                len: 512
            }
        );
        let step = scanner.scan(11264, &tar[11264..], true);
        assert_eq!(step, TarStep::Done);
        assert_eq!(scanner.finish(tar.len() as u64, None).len(), 2);
    }

    #[test]
    fn damage_keeps_what_came_before() {
        let mut tar = archive(&[("a", b"x"), ("b", b"y")]);
        tar[1024 + 10] ^= 1; // corrupt the name of b: checksum mismatch
        let index = index_tar(&tar, ArchiveLimits::default());
        assert!(index.get("a").is_some());
        let damage = index.damage.unwrap();
        assert!(
            damage.contains("byte 1024") && damage.contains("checksum"),
            "{damage}"
        );

        let tar = archive(&[("a", b"x"), ("b", &[1u8; 2000])]);
        let index = index_tar(&tar[..1700], ArchiveLimits::default());
        assert!(index.damage.unwrap().contains("past the end"));
    }

    #[test]
    fn long_link_then_long_name_then_member() {
        let mut tar = Vec::new();
        let long_name = "n".repeat(150);
        for (flag, body) in [(b'K', "t".repeat(200)), (b'L', long_name.clone())] {
            tar.extend_from_slice(&header("././@LongLink", body.len() as u64 + 1, flag));
            tar.extend_from_slice(body.as_bytes());
            tar.push(0);
            tar.resize(tar.len().div_ceil(512) * 512, 0);
        }
        tar.extend_from_slice(&header("short", 3, b'0'));
        tar.extend_from_slice(b"abc");
        tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
        let index = index_tar(&tar, ArchiveLimits::default());
        assert_eq!(index.damage, None);
        assert_eq!(index.get(&long_name).map(|m| m.size), Some(3));
        assert!(index.get("short").is_none());
    }

    #[test]
    fn numbers_octal_and_base256() {
        assert_eq!(parse_number(b"00000000012\0"), Some(10));
        assert_eq!(parse_number(b"     12 \0\0\0\0"), Some(10));
        assert_eq!(parse_number(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_number(b"0009"), None);
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[11] = 1;
        b256[10] = 2;
        assert_eq!(parse_number(&b256), Some(513));
        assert_eq!(
            parse_number(&[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }

    #[test]
    fn pax_records() {
        let recs = parse_pax(b"12 path=a/b\n12 size=100\n").unwrap();
        assert_eq!(recs[0], ("path".to_string(), b"a/b".to_vec()));
        assert_eq!(recs[1], ("size".to_string(), b"100".to_vec()));
        assert!(parse_pax(b"99 path=a\n").is_err());
        assert!(parse_pax(b"x").is_err());
    }
}
