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
                    let past_end = match self.archive_size {
                        Some(archive_size) if data + size > archive_size => Some(format!(
                            "member {name:?} declares {size} bytes at byte {data}, past the end of the archive ({archive_size} bytes)"
                        )),
                        _ => None,
                    };
                    self.members.push((name, member));
                    if let Some(damage) = past_end {
                        return self.stop(damage);
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
    let field = &header[148..156];
    let stored = parse_number(field).ok_or("the checksum field is not a number")?;
    // The checksum counts its own field as eight spaces. Each sum runs over the whole block
    // in one branch-free pass (which the compiler vectorizes), then drops the field's bytes;
    // the signed sum only when the unsigned one does not match.
    let unsigned = u64::from(unsigned_sum(header) - unsigned_sum(field)) + 8 * u64::from(b' ');
    let signed = || i64::from(signed_sum(header) - signed_sum(field)) + 8 * i64::from(b' ');
    if stored == unsigned || stored as i64 == signed() {
        Ok(())
    } else {
        Err(format!(
            "checksum mismatch (stored {stored:o}, computed {unsigned:o})"
        ))
    }
}

/// The sum of `bytes` read as unsigned (a header block's sum fits: 512 x 255).
fn unsigned_sum(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |sum, &b| sum + u32::from(b))
}

/// The sum of `bytes` read as signed.
fn signed_sum(bytes: &[u8]) -> i32 {
    bytes.iter().fold(0i32, |sum, &b| sum + i32::from(b as i8))
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
/// Memory stays bounded: the wanted members (each at most `limits.max_member_size`), and a
/// 64 KiB read-ahead window (larger only while it holds one metadata record, at most
/// `limits.max_metadata`). Each kept byte is copied once from the reader into its member's
/// buffer, or twice when it arrived with a read-ahead (reader, window, member).
pub fn scan_stream<R: Read>(
    reader: R,
    wanted: &dyn Fn(&str) -> bool,
    limits: ArchiveLimits,
) -> Result<StreamScan, String> {
    let mut scanner = TarScanner::new(limits, None);
    let mut contents: HashMap<String, bytes::Bytes> = HashMap::new();
    let mut window = StreamWindow::new(reader);
    let mut at_end = false;
    let mut seen_members = 0;
    loop {
        let step = scanner.scan(window.offset, window.bytes(), at_end);
        // Collect the content of wanted members found by this scan step: their data lies
        // between the window and the next header, so it streams past before the next need.
        let members = scanner.members();
        for (name, member) in &members[seen_members..] {
            if !wanted(name) {
                continue;
            }
            if member.size > limits.max_member_size {
                return Err(format!(
                    "member {name:?} declares {} bytes, over the limit of {}",
                    member.size, limits.max_member_size
                ));
            }
            match window.read_span(member.offset, member.size)? {
                Some(data) => {
                    contents.insert(name.clone(), data.into());
                }
                None => {
                    // The stream ended inside the member: the scanner reports the damage.
                    contents.remove(name.as_str());
                }
            }
        }
        seen_members = members.len();
        let TarStep::Need { offset, len } = step else {
            break;
        };
        // Drop what lies before `offset`, then fill the window to `len` bytes.
        at_end = if window.skip_to(offset)? {
            window.fill(usize::try_from(len).unwrap_or(usize::MAX))?
        } else {
            // The stream ended before `offset`.
            true
        };
    }
    let size = window.end_offset();
    Ok(StreamScan {
        index: scanner.finish(size, None),
        contents,
    })
}

/// The read-ahead size of [`scan_stream`]'s window.
const READ_AHEAD: usize = 64 * 1024;

/// The read-ahead window of [`scan_stream`]: the stream's bytes from `offset` are
/// `buf[start..end]`.
///
/// Consuming bytes moves `start` (O(1), whatever the window holds); the unconsumed bytes
/// move to the front of `buf` only when a refill needs room, and there are fewer of them
/// than the refill asks for.
struct StreamWindow<R> {
    reader: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The stream offset of `buf[start]`.
    offset: u64,
}

impl<R: Read> StreamWindow<R> {
    fn new(reader: R) -> Self {
        StreamWindow {
            reader,
            buf: vec![0; READ_AHEAD],
            start: 0,
            end: 0,
            offset: 0,
        }
    }

    /// The bytes read and not yet consumed (from stream offset `self.offset`).
    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The stream offset just past the window: every byte before it has been read.
    fn end_offset(&self) -> u64 {
        self.offset + (self.end - self.start) as u64
    }

    /// Consumes up to `n` bytes of the window; returns how many.
    fn consume(&mut self, n: u64) -> usize {
        let n = n.min((self.end - self.start) as u64) as usize;
        self.start += n;
        self.offset += n as u64;
        n
    }

    /// Moves the window's start to `target` (at or after it), discarding the bytes before;
    /// returns false if the stream ends first.
    fn skip_to(&mut self, target: u64) -> Result<bool, String> {
        self.consume(target.saturating_sub(self.offset));
        if self.offset < target {
            // The window is empty: read what is skipped over its whole buffer, no further
            // than `target` (so that a member's data after it can be read in place).
            self.start = 0;
            self.end = 0;
        }
        while self.offset < target {
            let want = (target - self.offset).min(self.buf.len() as u64) as usize;
            let n = read_some(&mut self.reader, &mut self.buf[..want])?;
            if n == 0 {
                return Ok(false);
            }
            self.offset += n as u64;
        }
        Ok(true)
    }

    /// Reads until the window holds at least `len` bytes, reading ahead as far as the
    /// buffer allows; returns whether the stream ended first.
    ///
    /// The buffer grows past [`READ_AHEAD`] only for a `len` larger than that (one metadata
    /// record, whose declared size the scanner checked against its cap), and then by
    /// doubling as bytes arrive, so a short stream cannot make it allocate what it declares.
    fn fill(&mut self, len: usize) -> Result<bool, String> {
        if self.end - self.start >= len {
            return Ok(false);
        }
        if self.start > 0 {
            // Fewer than `len` bytes move.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end < len {
            if self.end == self.buf.len() {
                let grown = self.buf.len().saturating_mul(2).min(len);
                self.buf.resize(grown, 0);
            }
            let n = read_some(&mut self.reader, &mut self.buf[self.end..])?;
            if n == 0 {
                return Ok(true);
            }
            self.end += n;
        }
        Ok(false)
    }

    /// Reads the `len` bytes at `offset` (at or after the window's start) into a new
    /// buffer: those in the window are copied from it, the rest are read straight into the
    /// buffer. `None` if the stream ends first.
    fn read_span(&mut self, offset: u64, len: u64) -> Result<Option<Vec<u8>>, String> {
        // A stream that ends before `offset` leaves the window empty: the read below sees
        // the end.
        self.skip_to(offset)?;
        // Up to 1 MiB is allocated at once; beyond, the buffer grows as bytes arrive, so a
        // short stream cannot make it allocate the size it declares.
        let mut out = Vec::with_capacity(len.min(1 << 20) as usize);
        let from_window = len.min((self.end - self.start) as u64) as usize;
        out.extend_from_slice(&self.buf[self.start..self.start + from_window]);
        self.consume(from_window as u64);
        let rest = len - from_window as u64;
        if rest > 0 {
            // The window is empty now.
            self.start = 0;
            self.end = 0;
            let n = (&mut self.reader)
                .take(rest)
                .read_to_end(&mut out)
                .map_err(|e| e.to_string())?;
            self.offset += n as u64;
            if (n as u64) < rest {
                return Ok(None);
            }
        }
        Ok(Some(out))
    }
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

    /// A reader that hands out `data` in reads of at most the next of `sizes` (cycled), so
    /// that windows end inside headers, records and member data.
    struct Chunked<'a> {
        data: &'a [u8],
        sizes: &'a [usize],
        next: usize,
    }

    impl Read for Chunked<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let size = self.sizes[self.next % self.sizes.len()];
            self.next += 1;
            let n = size.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn pax_member(path: &str, data: &[u8]) -> Vec<u8> {
        let record = |len: usize| format!("{len} path={path}\n");
        // The length counts its own digits.
        let mut len = record(0).len();
        while record(len).len() != len {
            len = record(len).len();
        }
        let mut out = header("PaxHeaders/x", len as u64, b'x').to_vec();
        out.extend_from_slice(record(len).as_bytes());
        out.resize(out.len().div_ceil(512) * 512, 0);
        out.extend_from_slice(&header("short-name", data.len() as u64, b'0'));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    /// Streams `tar` through every reader shape, keeping the members `wanted` picks, and
    /// checks the walk against [`index_tar`] and the archive's own bytes.
    fn stream_matches_index(tar: &[u8], wanted: &dyn Fn(&str) -> bool) {
        let limits = ArchiveLimits::default();
        let index = index_tar(tar, limits);
        assert_eq!(index.damage, None);
        let whole = [usize::MAX];
        let shapes: [&[usize]; 5] = [&whole, &[1], &[511, 513], &[4097, 3], &[65535, 2, 70000]];
        for sizes in shapes {
            let reader = Chunked {
                data: tar,
                sizes,
                next: 0,
            };
            let scan = scan_stream(reader, wanted, limits).unwrap();
            let mut got: Vec<_> = scan.index.members().collect();
            let mut expected: Vec<_> = index.members().collect();
            got.sort_by_key(|(name, _)| name.to_string());
            expected.sort_by_key(|(name, _)| name.to_string());
            assert_eq!(got, expected, "reads of {sizes:?}");
            assert_eq!(scan.index.damage, None, "reads of {sizes:?}");
            let kept: Vec<_> = expected.iter().filter(|(name, _)| wanted(name)).collect();
            assert_eq!(scan.contents.len(), kept.len(), "reads of {sizes:?}");
            for (name, member) in kept {
                let start = member.offset as usize;
                assert_eq!(
                    scan.contents[*name],
                    &tar[start..start + member.size as usize],
                    "{name} in reads of {sizes:?}"
                );
            }
        }
    }

    #[test]
    fn stream_members_around_the_read_ahead_boundary() {
        let window = READ_AHEAD;
        // The first member's data ends just before, exactly on, and just after the end of
        // the first read-ahead window; its header is the window's last block; it is longer
        // than a window (read straight from the reader).
        for first in [
            window - 1024 - 1,
            window - 1024,
            window - 512 - 1,
            window - 512,
            window - 511,
            window,
            window + 1,
            2 * window + 700,
        ] {
            let tar = archive(&[
                ("a", &vec![1u8; first]),
                ("b", b"small"),
                ("c", &vec![3u8; window - 512]),
                ("d", b""),
                ("e", &vec![5u8; 1500]),
            ]);
            stream_matches_index(&tar, &|_| true);
            stream_matches_index(&tar, &|name| name == "b" || name == "d");
            stream_matches_index(&tar, &|name| name == "a" || name == "e");
            stream_matches_index(&tar, &|_| false);
        }
    }

    #[test]
    fn stream_metadata_records_longer_than_the_window() {
        // A PAX path longer than the read-ahead window: the window grows to hold it.
        let long = "p/".repeat(READ_AHEAD / 2 + 300);
        let mut tar = archive(&[("a", b"first")]);
        tar.truncate(tar.len() - 1024);
        tar.extend_from_slice(&pax_member(&long, b"content of the long name"));
        tar.extend_from_slice(&pax_member("short/again", &[9u8; 3000]));
        tar.extend_from_slice(&[0u8; 1024]);
        stream_matches_index(&tar, &|_| true);
        stream_matches_index(&tar, &|name| name == "short/again");
    }

    #[test]
    fn stream_cut_inside_a_member_keeps_those_before() {
        let tar = archive(&[
            ("a", b"hello"),
            ("b", &vec![2u8; 3 * READ_AHEAD]),
            ("c", b"after"),
        ]);
        let b_data = 1536;
        let b_end = b_data + 3 * READ_AHEAD;
        // Cut in b's data: inside the first window, after it (read straight from the
        // reader); in c's header; where b's data ends (a tar without its zero blocks).
        for cut in [
            b_data + 100,
            b_data + 2 * READ_AHEAD + 5,
            b_end + 100,
            b_end,
        ] {
            for sizes in [&[usize::MAX][..], &[777]] {
                let reader = Chunked {
                    data: &tar[..cut],
                    sizes,
                    next: 0,
                };
                let scan = scan_stream(reader, &|_| true, ArchiveLimits::default()).unwrap();
                assert_eq!(scan.index.archive_size, cut as u64);
                assert_eq!(&scan.contents["a"][..], b"hello");
                if cut == b_end {
                    assert_eq!(scan.index.damage, None);
                } else {
                    let damage = scan.index.damage.clone().unwrap();
                    assert!(
                        damage.contains("truncated")
                            && damage.contains(&format!("ends at byte {cut}")),
                        "{damage}"
                    );
                }
                assert_eq!(
                    scan.contents.get("b").map(|b| b.len()),
                    (cut >= b_end).then_some(3 * READ_AHEAD)
                );
                assert!(!scan.contents.contains_key("c"));
            }
        }
    }

    #[test]
    fn checksums_unsigned_or_signed() {
        // A name with bytes over 127: the unsigned and the signed sums differ.
        let mut h = header("caf\u{e9}/\u{fc}ber", 3, b'0');
        let unsigned: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    b as u64
                }
            })
            .sum();
        let signed: i64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    b as i8 as i64
                }
            })
            .sum();
        assert_ne!(unsigned as i64, signed);
        assert_eq!(check_checksum(&h), Ok(()));
        h[148..156].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
        assert_eq!(check_checksum(&h), Ok(()), "the signed sum of old tars");
        h[148..156].copy_from_slice(format!("{:06o}\0 ", unsigned + 1).as_bytes());
        let err = check_checksum(&h).unwrap_err();
        assert!(err.contains(&format!("computed {unsigned:o}")), "{err}");
        h[148..156].copy_from_slice(b"12x45\0  ");
        assert!(check_checksum(&h).is_err());
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
