//! Reading a bundle's tar stream member by member, with bounded allocations.
//!
//! The stream arrives as chunks of bytes (HTTP body chunks, or the decompressor's output).
//! Header fields and checksums are parsed by `astral-tokio-tar`'s [`Header`]; the framing
//! (512-byte blocks, data, padding) and the extension headers (PAX records, GNU long names)
//! are read here, straight from the chunks, so that every allocation is checked against a
//! cap before it is made and a member is copied once, into a buffer of its declared size
//! (for a member over [`MAX_UPFRONT_BYTES`], a buffer grown to it as its bytes arrive).
//!
//! Why not the crate's `Archive`: per entry it zeroes a 32 KiB buffer (to skip padding, even
//! when there is none), takes a mutex per read and copies the data through an `AsyncRead`;
//! for members of 1-16 KiB that was about a third of the client's time (measured with
//! `perf` on `getmany bench`).
//!
//! Desynchronisation (the 2025 PAX/ustar CVE class): the data length is always the header's
//! own size field; a PAX `size` record that disagrees, a ustar header with an ambiguous NUL
//! version, GNU sparse members and PAX sparse records are refused, so this reader and any
//! other cannot disagree on where a member ends.

use std::collections::HashMap;
use std::io;

use bytes::{Buf, Bytes};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio_tar::Header;

/// The most bytes of PAX records or of a GNU long name accepted for one member.
const MAX_EXTENSION_BYTES: u64 = 1 << 20;

/// The most bytes allocated for a member before they arrive. A header's size field comes
/// from the server (and is only checked against `max_member_bytes`, 1 GiB by default): a
/// larger member's buffer starts at this size and doubles as its bytes arrive, never past
/// the declared size, so a stream that declares 1 GiB and ends after a few bytes costs
/// 1 MiB, not 1 GiB. Members up to this size (the objects bundles are for) are still
/// allocated once, at their size.
const MAX_UPFRONT_BYTES: usize = 1 << 20;

/// A completion-order member's group name: `getmany:<request index>`.
const INDEX_PREFIX: &[u8] = b"getmany:";

const BLOCK: usize = 512;

/// A member of the stream: its name, bytes, PAX records, and the request index its group
/// name carries (`getmany:<index>`, completion-order bundles of a getmany server).
#[derive(Debug)]
pub(crate) struct TarMember {
    pub name: String,
    pub data: Bytes,
    pub pax: HashMap<String, String>,
    pub index: Option<usize>,
}

/// The chunks a tar stream arrives in.
pub(crate) type Chunks = BoxStream<'static, io::Result<Bytes>>;

/// Members of a tar stream, one at a time.
pub(crate) struct TarMembers {
    chunks: Chunks,
    /// The unread rest of the current chunk.
    current: Bytes,
    max_member_bytes: u64,
    /// The archive ended (at its end-of-archive block or where the stream stopped).
    ended: bool,
    /// The end-of-archive block was read: the archive is complete, not cut at a boundary.
    end_block: bool,
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn cut_short(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, message)
}

/// Parses PAX records: `"<len> <key>=<value>\n"`, repeated.
fn parse_pax(mut data: &[u8], out: &mut HashMap<String, String>) -> io::Result<()> {
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| invalid("a PAX record has no length"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("a PAX record's length is not a number"))?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(invalid("a PAX record's length does not match its contents"));
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| invalid("a PAX record has no '='"))?;
        let key = String::from_utf8_lossy(&record[..eq]).into_owned();
        let value = String::from_utf8_lossy(&record[eq + 1..]).into_owned();
        out.insert(key, value);
        data = &data[len..];
    }
    Ok(())
}

/// Checks a header block's checksum (computed with the checksum field as spaces) and the
/// ustar version.
fn check_header(block: &[u8; BLOCK], header: &Header) -> io::Result<()> {
    let sum: u32 = block[..148]
        .iter()
        .chain(&block[156..])
        .map(|&b| u32::from(b))
        .sum::<u32>()
        + 8 * u32::from(b' ');
    if header.cksum()? != sum {
        return Err(invalid("archive header checksum mismatch"));
    }
    // Readers disagree on whether such a header has a name prefix.
    if &block[257..263] == b"ustar\0" && &block[263..265] == b"\0\0" {
        return Err(invalid(
            "NUL-version USTAR header is ambiguous and not supported",
        ));
    }
    Ok(())
}

/// The size of a member's data padded to whole blocks.
fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

impl TarMembers {
    /// Reads the tar stream arriving as `chunks`, refusing members declared larger than
    /// `max_member_bytes`.
    pub fn new(chunks: Chunks, max_member_bytes: u64) -> Self {
        TarMembers {
            chunks,
            current: Bytes::new(),
            max_member_bytes,
            ended: false,
            end_block: false,
        }
    }

    /// Makes `current` non-empty; `false` at the end of the stream.
    async fn fill(&mut self) -> io::Result<bool> {
        while self.current.is_empty() {
            match self.chunks.next().await {
                Some(chunk) => self.current = chunk?,
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// The next block, or `None` if the stream ends right before it.
    async fn block(&mut self) -> io::Result<Option<[u8; BLOCK]>> {
        let mut block = [0u8; BLOCK];
        let mut filled = 0;
        while filled < BLOCK {
            if !self.fill().await? {
                if filled == 0 {
                    return Ok(None);
                }
                return Err(cut_short(format!(
                    "the archive ends inside a header ({filled} of {BLOCK} bytes)"
                )));
            }
            let n = (BLOCK - filled).min(self.current.len());
            block[filled..filled + n].copy_from_slice(&self.current[..n]);
            self.current.advance(n);
            filled += n;
        }
        Ok(Some(block))
    }

    /// Reads exactly `size` bytes into one buffer: allocated once at that size if it is at
    /// most [`MAX_UPFRONT_BYTES`], else grown to it (doubling) as the bytes arrive. The
    /// caller has checked `size` against its cap. `what` names the bytes in an error.
    async fn read_exactly(&mut self, size: u64, what: impl Fn() -> String) -> io::Result<Bytes> {
        let len = usize::try_from(size).map_err(|_| invalid(format!("{} is too large", what())))?;
        let mut buf: Vec<u8> = Vec::with_capacity(len.min(MAX_UPFRONT_BYTES));
        while buf.len() < len {
            if !self.fill().await? {
                return Err(cut_short(format!(
                    "{} ended after {} of {size} bytes",
                    what(),
                    buf.len()
                )));
            }
            let n = (len - buf.len()).min(self.current.len());
            if buf.capacity() - buf.len() < n {
                // Double, but never past the declared size (so the buffer ends exactly full
                // and becomes `Bytes` without a copy).
                let want = buf.capacity().saturating_mul(2).max(buf.len() + n).min(len);
                buf.reserve_exact(want - buf.len());
            }
            buf.extend_from_slice(&self.current[..n]);
            self.current.advance(n);
        }
        Ok(Bytes::from(buf))
    }

    /// Skips `size` bytes.
    async fn skip(&mut self, mut size: u64, what: impl Fn() -> String) -> io::Result<()> {
        while size > 0 {
            if !self.fill().await? {
                return Err(cut_short(format!("{} is cut short", what())));
            }
            let n = size.min(self.current.len() as u64);
            // `n` is at most `current.len()`, a usize.
            self.current.advance(n as usize);
            size -= n;
        }
        Ok(())
    }

    /// Whether the archive ended with its end-of-archive block (after [`next`](Self::next)
    /// returned `None`); a stream that stops at a member boundary without one was cut.
    pub fn end_block(&self) -> bool {
        self.end_block
    }

    /// The next file member, or `None` at the end of the archive.
    pub async fn next(&mut self) -> io::Result<Option<TarMember>> {
        if self.ended {
            return Ok(None);
        }
        let mut pax = HashMap::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut pending = false;
        loop {
            let block = match self.block().await? {
                Some(block) if block.iter().any(|&b| b != 0) => block,
                // A zero block ends the archive; so does the stream's end at a block
                // boundary (no end-of-archive blocks: tolerated, as by other readers;
                // `end_block` tells the two apart).
                end => {
                    self.ended = true;
                    self.end_block = end.is_some();
                    if pending {
                        return Err(invalid("the archive ends after an extension header"));
                    }
                    return Ok(None);
                }
            };
            let header = Header::from_byte_slice(&block);
            check_header(&block, header)?;
            let kind = header.entry_type();
            let size = header.raw_entry_size()?;
            let padding = padded(size) - size;
            if kind.is_pax_local_extensions()
                || kind.is_pax_global_extensions()
                || kind.is_gnu_longname()
                || kind.is_gnu_longlink()
            {
                if size > MAX_EXTENSION_BYTES {
                    return Err(invalid(format!(
                        "an extension header declares {size} bytes (at most {MAX_EXTENSION_BYTES})"
                    )));
                }
                let data = self
                    .read_exactly(size, || "an extension header".to_string())
                    .await?;
                self.skip(padding, || "an extension header".to_string())
                    .await?;
                if kind.is_pax_local_extensions() {
                    parse_pax(&data, &mut pax)?;
                    pending = true;
                } else if kind.is_gnu_longname() {
                    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                    long_name = Some(data[..end].to_vec());
                    pending = true;
                } else if kind.is_gnu_longlink() {
                    pending = true;
                }
                continue;
            }
            if kind.is_gnu_sparse() || pax.keys().any(|k| k.starts_with("GNU.sparse.")) {
                return Err(invalid("sparse members are not supported"));
            }
            if !kind.is_file() {
                // Directories, links and the like carry no object.
                self.skip(padded(size), || "a non-file member".to_string())
                    .await?;
                pax.clear();
                long_name = None;
                pending = false;
                continue;
            }
            if let Some(declared) = pax.get("size")
                && declared.parse::<u64>().ok() != Some(size)
            {
                return Err(invalid(
                    "a PAX size record that differs from the header's size is not supported",
                ));
            }
            let name = match (pax.get("path"), &long_name) {
                (Some(path), _) => path.clone(),
                (None, Some(long)) => String::from_utf8_lossy(long).into_owned(),
                (None, None) => String::from_utf8_lossy(&header.path_bytes()).into_owned(),
            };
            if size > self.max_member_bytes {
                return Err(invalid(format!(
                    "member {name:?} declares {size} bytes, more than the limit of {}",
                    self.max_member_bytes
                )));
            }
            let index = header
                .groupname_bytes()
                .and_then(|group| group.strip_prefix(INDEX_PREFIX))
                .and_then(|digits| std::str::from_utf8(digits).ok())
                .and_then(|digits| digits.parse().ok());
            let data = self
                .read_exactly(size, || format!("member {name:?}"))
                .await?;
            self.skip(padding, || format!("the padding of member {name:?}"))
                .await?;
            return Ok(Some(TarMember {
                name,
                data,
                pax,
                index,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bytes` as a stream of chunks of `size` bytes (the last one shorter).
    fn chunked(bytes: &[u8], size: usize) -> Chunks {
        let chunks: Vec<io::Result<Bytes>> = bytes
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(chunks).boxed()
    }

    fn members_of(bytes: &[u8], chunk: usize, cap: u64) -> io::Result<Vec<TarMember>> {
        futures::executor::block_on(async {
            let mut reader = TarMembers::new(chunked(bytes, chunk), cap);
            let mut out = Vec::new();
            while let Some(member) = reader.next().await? {
                out.push(member);
            }
            // The end stays the end.
            assert!(reader.next().await?.is_none());
            Ok(out)
        })
    }

    fn content(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i * 31 + j) as u8).collect()
    }

    /// An archive written by the `tar` crate: files of sizes around the block size, a GNU
    /// long name, PAX records, a directory and a symlink (skipped), a completion-order
    /// group name, and a file larger than any chunk below.
    fn archive() -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
        let mut builder = tar::Builder::new(Vec::new());
        let mut expected = Vec::new();
        let long = format!("{}/end", "d".repeat(150));
        let names = [
            "empty",
            "one",
            "block-1",
            "block",
            "block+1",
            long.as_str(),
            "big",
        ];
        let sizes = [0, 1, 511, 512, 513, 1000, 300_000];
        for (i, (name, size)) in names.iter().zip(sizes).enumerate() {
            let data = content(i, size);
            let mut header = tar::Header::new_gnu();
            header.set_size(size as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            if i == 1 {
                header.set_groupname("getmany:42").unwrap();
            }
            builder.append_data(&mut header, name, &data[..]).unwrap();
            expected.push((name.to_string(), data));
            if i == 2 {
                let mut dir = tar::Header::new_ustar();
                dir.set_entry_type(tar::EntryType::Directory);
                dir.set_size(0);
                builder.append_data(&mut dir, "a-dir/", &[][..]).unwrap();
                let mut link = tar::Header::new_ustar();
                link.set_entry_type(tar::EntryType::Symlink);
                link.set_size(0);
                builder.append_link(&mut link, "a-link", "one").unwrap();
            }
        }
        builder
            .append_pax_extensions([("GETMANY.status", &b"404"[..])])
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_size(3);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, "with-pax", &b"pax"[..])
            .unwrap();
        expected.push(("with-pax".to_string(), b"pax".to_vec()));
        (builder.into_inner().unwrap(), expected)
    }

    #[test]
    fn members_read_back_whatever_the_chunk_boundaries() {
        let (bytes, expected) = archive();
        // Boundaries inside headers, inside data, inside padding; a member spanning many
        // chunks; the whole archive in one chunk.
        for chunk in [1, 7, 100, 512, 513, 4096, 65_536, bytes.len()] {
            let members = members_of(&bytes, chunk, 1 << 20).unwrap();
            let got: Vec<(String, Vec<u8>)> = members
                .iter()
                .map(|m| (m.name.clone(), m.data.to_vec()))
                .collect();
            assert_eq!(got, expected, "chunks of {chunk}");
            assert_eq!(members[1].index, Some(42));
            assert_eq!(members[0].index, None);
            let last = members.last().unwrap();
            assert_eq!(
                last.pax.get("GETMANY.status").map(String::as_str),
                Some("404")
            );
        }
    }

    /// Rewrites the checksum of the header at `at`.
    fn fix_checksum(bytes: &mut [u8], at: usize) {
        let header = tar::Header::from_byte_slice(&bytes[at..at + BLOCK]);
        let mut header = header.clone();
        header.set_cksum();
        bytes[at..at + BLOCK].copy_from_slice(header.as_bytes());
    }

    fn one_file(size: usize) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(size as u64);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, "f", &content(0, size)[..])
            .unwrap();
        builder.into_inner().unwrap()
    }

    fn error_of(bytes: &[u8], cap: u64) -> String {
        let error = members_of(bytes, 100, cap).expect_err("must fail");
        error.to_string()
    }

    #[test]
    fn bad_archives_are_refused_with_a_reason() {
        let good = one_file(1000);
        let mut corrupt = good.clone();
        corrupt[0] = b'g';
        assert!(error_of(&corrupt, 1 << 20).contains("checksum mismatch"));
        // Cut inside the header, inside the data, inside the padding.
        assert!(error_of(&good[..300], 1 << 20).contains("ends inside a header"));
        assert!(error_of(&good[..900], 1 << 20).contains("ended after 388 of 1000 bytes"));
        assert!(error_of(&good[..1520], 1 << 20).contains("padding"));
        // A declared size over the cap fails before anything is read or allocated for it:
        // the archive holds only the header.
        let mut huge = good[..BLOCK].to_vec();
        let mut header = tar::Header::from_byte_slice(&huge).clone();
        header.set_size(1 << 62);
        header.set_cksum();
        huge.copy_from_slice(header.as_bytes());
        let message = error_of(&huge, 1 << 30);
        assert!(message.contains("more than the limit"), "{message}");
        // A NUL-version ustar header.
        let mut nul = good.clone();
        nul[263..265].copy_from_slice(b"\0\0");
        fix_checksum(&mut nul, 0);
        assert!(error_of(&nul, 1 << 20).contains("ambiguous"));
        // A sparse member.
        let mut sparse = good.clone();
        sparse[156] = b'S';
        fix_checksum(&mut sparse, 0);
        assert!(error_of(&sparse, 1 << 20).contains("sparse"));
    }

    #[test]
    fn large_members_grow_as_they_arrive() {
        // Over the up-front allocation: the buffer grows to exactly the member.
        let size = 3 * MAX_UPFRONT_BYTES + 123;
        let bytes = one_file(size);
        for chunk in [4096, 100_000, bytes.len()] {
            let members = members_of(&bytes, chunk, 1 << 30).unwrap();
            assert_eq!(members[0].data, content(0, size), "chunks of {chunk}");
        }
        // A header that declares 900 MiB (under the cap) and a stream that ends after a
        // few bytes: a cut-short error, after allocating at most `MAX_UPFRONT_BYTES` (a
        // buffer of the declared size is never made).
        let mut liar = bytes[..BLOCK + 1000].to_vec();
        let mut header = tar::Header::from_byte_slice(&liar[..BLOCK]).clone();
        header.set_size(900 << 20);
        header.set_cksum();
        liar[..BLOCK].copy_from_slice(header.as_bytes());
        let message = error_of(&liar, 1 << 30);
        assert!(
            message.contains("ended after 1000 of 943718400 bytes"),
            "{message}"
        );
    }

    #[test]
    fn pax_headers_that_could_desynchronise_are_refused() {
        let pax = |records: &[(&str, &[u8])], size: usize| {
            let mut builder = tar::Builder::new(Vec::new());
            builder
                .append_pax_extensions(records.iter().copied())
                .unwrap();
            let mut header = tar::Header::new_ustar();
            header.set_size(size as u64);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(&mut header, "f", &content(0, size)[..])
                .unwrap();
            builder.into_inner().unwrap()
        };
        assert!(error_of(&pax(&[("size", b"5")], 10), 1 << 20).contains("PAX size record"));
        assert!(error_of(&pax(&[("GNU.sparse.major", b"1")], 10), 1 << 20).contains("sparse"));
        // An agreeing size record is fine.
        let members = members_of(&pax(&[("size", b"10")], 10), 3, 1 << 20).unwrap();
        assert_eq!(members[0].data.len(), 10);
        // An extension header with nothing after it.
        let mut dangling = pax(&[("path", b"x")], 0);
        dangling.truncate(2 * BLOCK);
        assert!(error_of(&dangling, 1 << 20).contains("ends after an extension header"));
        // An extension header over its cap.
        let mut big = pax(&[("path", b"x")], 0);
        let mut header = tar::Header::from_byte_slice(&big[..BLOCK]).clone();
        header.set_size(MAX_EXTENSION_BYTES + 1);
        header.set_cksum();
        big[..BLOCK].copy_from_slice(header.as_bytes());
        assert!(error_of(&big, 1 << 20).contains("extension header declares"));
    }

    #[test]
    fn an_archive_cut_at_a_member_boundary_lacks_its_end_block() {
        let whole = one_file(1000);
        let read = |bytes: &[u8]| {
            futures::executor::block_on(async {
                let mut reader = TarMembers::new(chunked(bytes, 100), 1 << 20);
                while reader.next().await.unwrap().is_some() {}
                reader.end_block()
            })
        };
        assert!(read(&whole));
        // The member's header, data and padding, and nothing after.
        assert!(!read(&whole[..3 * BLOCK]));
    }

    #[test]
    fn pax_records_parse_and_reject_nonsense() {
        let mut out = HashMap::new();
        parse_pax(b"9 path=a\n16 GETMANY.x=yz\n", &mut out).unwrap();
        assert_eq!(out["path"], "a");
        assert_eq!(out["GETMANY.x"], "yz");
        for bad in [&b"99 path=a\n"[..], b"x path=a\n", b"10 patha\n", b"3 \n"] {
            assert!(parse_pax(bad, &mut HashMap::new()).is_err(), "{bad:?}");
        }
    }
}
