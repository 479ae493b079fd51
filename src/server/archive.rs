//! Writing a bundle's response body: tar or zip members, then optional gzip, zstd or LZ4
//! compression of the whole body, produced chunk by chunk as members arrive.

use std::collections::VecDeque;
use std::io::Write;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::stream::Stream;

// The server's own PAX records (vendor records, ignored by other readers).

/// The group-name field of a completion-order member holds `getmany:<request index>`: no
/// extra header block per member (a PAX record would cost 1 KiB each).
pub const INDEX_PREFIX: &str = "getmany:";
/// PAX record: the HTTP status of a failed entry's placeholder (404, 416, 500, ...).
pub const PAX_STATUS: &str = "GETMANY.status";
/// PAX record: why an entry failed.
pub const PAX_ERROR: &str = "GETMANY.error";

const BLOCK: usize = 512;

/// A member to write: its name, its bytes, extra PAX records, and the request index it
/// answers (completion-order bundles only).
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub data: Bytes,
    pub pax: Vec<(&'static str, String)>,
    pub index: Option<usize>,
}

/// How members are laid out in the body.
pub enum ArchiveWriter {
    /// POSIX tar (ustar headers, PAX records for long names and metadata).
    Tar,
    /// A zip archive with stored (uncompressed) members.
    Zip(Box<ZipState>),
}

impl ArchiveWriter {
    /// A tar writer.
    pub fn tar() -> Self {
        ArchiveWriter::Tar
    }

    /// A zip writer.
    pub fn zip() -> Self {
        ArchiveWriter::Zip(Box::default())
    }

    /// Writes `member` into `out`.
    pub fn member(&mut self, member: Member, out: &mut Frames) -> std::io::Result<()> {
        match self {
            ArchiveWriter::Tar => {
                tar_member(member, out);
                Ok(())
            }
            ArchiveWriter::Zip(state) => state.member(member, out),
        }
    }

    /// Writes the end of the archive into `out`.
    pub fn finish(&mut self, out: &mut Frames) -> std::io::Result<()> {
        match self {
            ArchiveWriter::Tar => {
                out.push_slice(&ZEROS[..2 * BLOCK]);
                Ok(())
            }
            ArchiveWriter::Zip(state) => {
                state.finish(out);
                Ok(())
            }
        }
    }
}

// Zip records (APPNOTE.TXT 6.3.x): signatures, versions and the fixed fields this writer uses.
const ZIP_LOCAL_HEADER: u32 = 0x0403_4b50;
const ZIP_CENTRAL_HEADER: u32 = 0x0201_4b50;
const ZIP64_END: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const ZIP_END: u32 = 0x0605_4b50;
/// Version needed to extract: 2.0 (stored members), 4.5 (zip64 records).
const ZIP_VERSION: u16 = 20;
const ZIP64_VERSION: u16 = 45;
/// Version made by: Unix (3), spec 4.5, so readers take the Unix mode of the external
/// attributes.
const ZIP_MADE_BY: u16 = (3 << 8) | ZIP64_VERSION;
/// General purpose flag bit 11: names are UTF-8.
const ZIP_UTF8: u16 = 1 << 11;
/// 1980-01-01 00:00, the earliest MS-DOS date (the tar members' mtime is 0 too).
const ZIP_DOS_TIME: u16 = 0;
const ZIP_DOS_DATE: u16 = (1 << 5) | 1;
/// A regular file, mode 0644, in the high half of the external attributes.
const ZIP_EXTERNAL_ATTRIBUTES: u32 = 0o100_644 << 16;
/// The zip64 extended information extra field's id.
const ZIP64_EXTRA: u16 = 0x0001;
/// A 32-bit size or offset at or above this is in a zip64 record instead (the field holds
/// this value as a marker).
const ZIP64_MARK_32: u64 = u32::MAX as u64;
/// An entry count at or above this is in a zip64 record instead.
const ZIP64_MARK_16: u64 = u16::MAX as u64;

/// A zip being written, member by member.
///
/// Every member is stored (no compression) and whole before its header is written, so its
/// CRC-32 and sizes go in its local header: no data descriptors, and a reader that walks the
/// local headers (a streaming reader) finds every member. The central directory is written at
/// the end. Zip64 records are used where a size, an offset or the entry count does not fit the
/// 32-bit (16-bit for the count) fields.
///
/// Names are written as given, duplicates included: a GetBatch answers every entry, in
/// order, as AIStore does (the `zip` crate's writer refuses a duplicate name; readers that
/// list the central directory, such as Python's `zipfile`, see every entry).
#[derive(Debug, Default)]
pub struct ZipState {
    /// Bytes written so far: the offset of the next local header.
    offset: u64,
    /// The central directory so far.
    central: Vec<u8>,
    /// Members written.
    count: u64,
    finished: bool,
    /// Zip64 records for every member and at the end, whatever the sizes (tests only: the
    /// zip64 paths without 4 GiB of data).
    force_zip64: bool,
}

fn put16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// `value` in a 32-bit field: itself, or the zip64 marker.
fn field32(value: u64, zip64: bool) -> u32 {
    if zip64 { u32::MAX } else { value as u32 }
}

impl ZipState {
    /// A writer that uses zip64 records everywhere (tests).
    #[cfg(test)]
    fn forcing_zip64() -> Self {
        ZipState {
            force_zip64: true,
            ..ZipState::default()
        }
    }

    fn member(&mut self, member: Member, out: &mut Frames) -> std::io::Result<()> {
        if self.finished {
            return Err(std::io::Error::other("zip archive already finished"));
        }
        let name = member.name.as_bytes();
        let Ok(name_len) = u16::try_from(name.len()) else {
            return Err(std::io::Error::other(format!(
                "the member name {:?} is {} bytes, more than a zip entry holds (65535)",
                member.name,
                name.len()
            )));
        };
        let size = member.data.len() as u64;
        let crc = crc32fast::hash(&member.data);
        let offset = self.offset;
        let big = self.force_zip64 || size >= ZIP64_MARK_32;
        let far = self.force_zip64 || offset >= ZIP64_MARK_32;

        // The local header: the zip64 extra field holds both sizes, when used.
        let mut local = Vec::with_capacity(30 + name.len() + 20);
        put32(&mut local, ZIP_LOCAL_HEADER);
        put16(&mut local, if big { ZIP64_VERSION } else { ZIP_VERSION });
        put16(&mut local, ZIP_UTF8);
        put16(&mut local, 0); // stored
        put16(&mut local, ZIP_DOS_TIME);
        put16(&mut local, ZIP_DOS_DATE);
        put32(&mut local, crc);
        put32(&mut local, field32(size, big)); // compressed size
        put32(&mut local, field32(size, big)); // uncompressed size
        put16(&mut local, name_len);
        put16(&mut local, if big { 20 } else { 0 });
        local.extend_from_slice(name);
        if big {
            put16(&mut local, ZIP64_EXTRA);
            put16(&mut local, 16);
            put64(&mut local, size);
            put64(&mut local, size);
        }
        self.offset += local.len() as u64 + size;
        out.push_slice(&local);
        out.push_bytes(member.data);

        // The central directory entry: the zip64 extra field holds only the fields marked
        // in the entry, in the order of APPNOTE 4.5.3.
        let extra_len: u16 = if big { 16 } else { 0 } + if far { 8 } else { 0 };
        let central = &mut self.central;
        put32(central, ZIP_CENTRAL_HEADER);
        put16(central, ZIP_MADE_BY);
        put16(
            central,
            if big || far {
                ZIP64_VERSION
            } else {
                ZIP_VERSION
            },
        );
        put16(central, ZIP_UTF8);
        put16(central, 0); // stored
        put16(central, ZIP_DOS_TIME);
        put16(central, ZIP_DOS_DATE);
        put32(central, crc);
        put32(central, field32(size, big));
        put32(central, field32(size, big));
        put16(central, name_len);
        put16(central, if extra_len > 0 { 4 + extra_len } else { 0 });
        put16(central, 0); // comment
        put16(central, 0); // disk
        put16(central, 0); // internal attributes
        put32(central, ZIP_EXTERNAL_ATTRIBUTES);
        put32(central, field32(offset, far));
        central.extend_from_slice(name);
        if extra_len > 0 {
            put16(central, ZIP64_EXTRA);
            put16(central, extra_len);
            if big {
                put64(central, size); // uncompressed
                put64(central, size); // compressed
            }
            if far {
                put64(central, offset);
            }
        }
        self.count += 1;
        Ok(())
    }

    /// The central directory and the end records.
    fn finish(&mut self, out: &mut Frames) {
        if self.finished {
            return;
        }
        self.finished = true;
        let directory_offset = self.offset;
        let directory_size = self.central.len() as u64;
        let count = self.count;
        out.push_bytes(Bytes::from(std::mem::take(&mut self.central)));

        let many = self.force_zip64 || count >= ZIP64_MARK_16;
        let long = self.force_zip64 || directory_size >= ZIP64_MARK_32;
        let far = self.force_zip64 || directory_offset >= ZIP64_MARK_32;
        let mut end = Vec::with_capacity(56 + 20 + 22);
        if many || long || far {
            let zip64_end_offset = directory_offset + directory_size;
            put32(&mut end, ZIP64_END);
            put64(&mut end, 44); // the size of the rest of this record
            put16(&mut end, ZIP_MADE_BY);
            put16(&mut end, ZIP64_VERSION);
            put32(&mut end, 0); // this disk
            put32(&mut end, 0); // the disk of the central directory
            put64(&mut end, count); // entries on this disk
            put64(&mut end, count); // entries
            put64(&mut end, directory_size);
            put64(&mut end, directory_offset);
            put32(&mut end, ZIP64_LOCATOR);
            put32(&mut end, 0); // the disk of the zip64 end record
            put64(&mut end, zip64_end_offset);
            put32(&mut end, 1); // disks
        }
        let count16 = if many { u16::MAX } else { count as u16 };
        put32(&mut end, ZIP_END);
        put16(&mut end, 0); // this disk
        put16(&mut end, 0); // the disk of the central directory
        put16(&mut end, count16);
        put16(&mut end, count16);
        put32(&mut end, field32(directory_size, long));
        put32(&mut end, field32(directory_offset, far));
        put16(&mut end, 0); // comment
        out.push_slice(&end);
    }
}

/// A body's frames as they are built: small pieces (headers, padding, small members) are
/// copied into one frame of up to [`Frames::FRAME_BYTES`]; a piece of at least
/// [`Frames::SHARE_BYTES`] goes out as a frame of its own, sharing the member's buffer.
///
/// Why: every frame costs the server a write (a system call once the body waits for the next
/// object) and the client a wake-up of its reader; three frames per member (header, data,
/// padding) made those the cost of a bundle of small objects. Copying a small member is
/// cheaper than a frame of its own; a large one is sent without a copy.
#[derive(Debug)]
pub struct Frames {
    current: BytesMut,
    ready: VecDeque<Bytes>,
}

impl Default for Frames {
    fn default() -> Self {
        Frames {
            current: BytesMut::new(),
            ready: VecDeque::new(),
        }
    }
}

impl Frames {
    /// A frame is cut once it holds this many bytes.
    pub const FRAME_BYTES: usize = 256 << 10;
    /// A piece this large is its own frame (no copy).
    pub const SHARE_BYTES: usize = 64 << 10;

    /// Copies `piece` into the current frame.
    pub fn push_slice(&mut self, piece: &[u8]) {
        if self.current.capacity() - self.current.len() < piece.len() {
            // One allocation per frame, sized for a full one plus the largest piece copied
            // (pieces below `SHARE_BYTES`, frame cut at `FRAME_BYTES`): no reallocation.
            let want =
                (self.current.len() + piece.len()).max(Self::FRAME_BYTES + Self::SHARE_BYTES);
            self.current.reserve(want - self.current.len());
        }
        self.current.extend_from_slice(piece);
        if self.current.len() >= Self::FRAME_BYTES {
            self.cut();
        }
    }

    /// Adds `piece`: copied if small, its own frame (shared, not copied) if large.
    pub fn push_bytes(&mut self, piece: Bytes) {
        if piece.len() >= Self::SHARE_BYTES {
            self.cut();
            self.ready.push_back(piece);
        } else if !piece.is_empty() {
            self.push_slice(&piece);
        }
    }

    /// Ends the current frame, if it holds anything.
    pub fn cut(&mut self) {
        if !self.current.is_empty() {
            // The frame takes its whole buffer: the next one gets a fresh buffer rather than
            // the tail of this one (which would be too short and copied on growth).
            let frame = std::mem::take(&mut self.current).freeze();
            self.ready.push_back(frame);
        }
    }

    /// The next complete frame.
    pub fn pop(&mut self) -> Option<Bytes> {
        self.ready.pop_front()
    }

    /// Whether a complete frame is waiting.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }
}

/// One PAX record, `"<len> <key>=<value>\n"`, where `<len>` counts the whole record.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    // The length counts its own digits.
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    format!("{len} {key}={value}\n").into_bytes()
}

/// The fields every header shares (ustar magic, mode 0644, mtime 0), built once: the tar
/// crate's setters format each number through a `String`, which cost more than the rest of
/// a small member's header.
static TEMPLATE: LazyLock<tar::Header> = LazyLock::new(|| {
    let mut header = tar::Header::new_ustar();
    header.set_mode(0o644);
    header.set_mtime(0);
    header
});

/// Writes `value` as the tar crate does: octal digits, zero-padded, then a NUL.
fn octal_into(field: &mut [u8], mut value: u64) {
    let Some((last, digits)) = field.split_last_mut() else {
        return;
    };
    *last = 0;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value & 7) as u8;
        value >>= 3;
    }
}

/// The largest size the 11 octal digits of the size field hold; above it the tar crate's
/// binary encoding is used.
const MAX_OCTAL_SIZE: u64 = (1 << 33) - 1;

fn header(name: &[u8], size: u64, kind: tar::EntryType, index: Option<usize>) -> tar::Header {
    let mut header = TEMPLATE.clone();
    header.set_entry_type(kind);
    if size <= MAX_OCTAL_SIZE {
        octal_into(&mut header.as_old_mut().size, size);
    } else {
        header.set_size(size);
    }
    if let Some(ustar) = header.as_ustar_mut() {
        let n = name.len().min(ustar.name.len());
        ustar.name[..n].copy_from_slice(&name[..n]);
        if let Some(index) = index {
            // `getmany:<index>` fits the 32-byte field for any usize; written in place.
            let mut field = &mut ustar.gname[..];
            let _ = write!(field, "{INDEX_PREFIX}{index}");
        }
    }
    // The checksum counts its own field as spaces.
    let old = header.as_old_mut();
    old.cksum = [b' '; 8];
    let sum: u64 = header.as_bytes().iter().map(|&b| u64::from(b)).sum();
    octal_into(&mut header.as_old_mut().cksum, sum);
    header
}

/// Zeros for padding and the end of a tar archive.
static ZEROS: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

fn padding(len: u64) -> &'static [u8] {
    let rem = (len % BLOCK as u64) as usize;
    if rem == 0 { &[] } else { &ZEROS[..BLOCK - rem] }
}

/// Writes one tar member: a PAX header when the name does not fit the 100-byte name field or
/// there are records to carry, the ustar header, the data, the padding.
fn tar_member(member: Member, out: &mut Frames) {
    let name = member.name.as_bytes();
    let long = name.len() > 100;
    if long || !member.pax.is_empty() {
        let mut records = Vec::new();
        if long {
            records.extend(pax_record("path", &member.name));
        }
        for (key, value) in &member.pax {
            records.extend(pax_record(key, value));
        }
        let pax_name = b"././@PaxHeader";
        let len = records.len() as u64;
        out.push_slice(header(pax_name, len, tar::EntryType::XHeader, None).as_bytes());
        out.push_slice(&records);
        out.push_slice(padding(len));
    }
    // A long name is cut to fit; readers take the PAX path instead. Cut on a character
    // boundary so the field stays valid UTF-8.
    let mut cut = name.len().min(100);
    while !member.name.is_char_boundary(cut) {
        cut -= 1;
    }
    let size = member.data.len() as u64;
    out.push_slice(header(&name[..cut], size, tar::EntryType::Regular, member.index).as_bytes());
    out.push_bytes(member.data);
    out.push_slice(padding(size));
}

/// Body compression (applied to the whole body, without a `Content-Encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// None.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
    /// The LZ4 frame format (`.tar.lz4`).
    Lz4,
}

enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Lz4(Box<lz4_flex::frame::FrameEncoder<Vec<u8>>>),
}

impl Encoder {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
            Encoder::Lz4(e) => e.write_all(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            // Ends the current block: what was written so far can be decoded.
            Encoder::Lz4(e) => e.flush(),
        }
    }

    /// Compressed bytes produced and not yet taken.
    fn pending(&self) -> usize {
        match self {
            Encoder::Gzip(e) => e.get_ref().len(),
            Encoder::Zstd(e) => e.get_ref().len(),
            Encoder::Lz4(e) => e.get_ref().len(),
        }
    }

    fn take(&mut self) -> Vec<u8> {
        match self {
            Encoder::Gzip(e) => std::mem::take(e.get_mut()),
            Encoder::Zstd(e) => std::mem::take(e.get_mut()),
            Encoder::Lz4(e) => std::mem::take(e.get_mut()),
        }
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Lz4(e) => e.finish().map_err(std::io::Error::from),
        }
    }
}

/// Emit compressed output once this much has accumulated.
const COMPRESSED_CHUNK: usize = 64 * 1024;

/// Compresses a body stream. Whenever the source has nothing ready (it waits for an object),
/// what was written so far is flushed (a sync flush), so a compressed member never waits in
/// the encoder for the next one.
pub struct Compress<S> {
    source: S,
    encoder: Option<Encoder>,
    unflushed: bool,
}

impl<S> Compress<S> {
    /// Compresses `source` with `compression` (which must not be `None`).
    pub fn new(source: S, compression: Compression) -> std::io::Result<Self> {
        let encoder = match compression {
            Compression::Gzip => Some(Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::fast(),
            ))),
            Compression::Zstd => Some(Encoder::Zstd(zstd::stream::write::Encoder::new(
                Vec::new(),
                3,
            )?)),
            Compression::Lz4 => {
                // Blocks of up to 256 KiB (a flush ends one early), linked so that a short
                // block still finds matches in the ones before it, and a content checksum.
                let info = lz4_flex::frame::FrameInfo::new()
                    .block_size(lz4_flex::frame::BlockSize::Max256KB)
                    .block_mode(lz4_flex::frame::BlockMode::Linked)
                    .content_checksum(true);
                Some(Encoder::Lz4(Box::new(
                    lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new()),
                )))
            }
            Compression::None => None,
        };
        Ok(Compress {
            source,
            encoder,
            unflushed: false,
        })
    }
}

impl<S, E> Stream for Compress<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: From<std::io::Error>,
{
    type Item = Result<Bytes, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(&mut this.source).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    if let Err(e) = encoder.write(&chunk) {
                        this.encoder = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    this.unflushed = true;
                    if encoder.pending() >= COMPRESSED_CHUNK {
                        return Poll::Ready(Some(Ok(Bytes::from(encoder.take()))));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.encoder = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    let Some(encoder) = this.encoder.take() else {
                        return Poll::Ready(None);
                    };
                    return match encoder.finish() {
                        Ok(out) => Poll::Ready(Some(Ok(Bytes::from(out)))),
                        Err(e) => Poll::Ready(Some(Err(e.into()))),
                    };
                }
                Poll::Pending => {
                    if this.unflushed {
                        this.unflushed = false;
                        if let Err(e) = encoder.flush() {
                            this.encoder = None;
                            return Poll::Ready(Some(Err(e.into())));
                        }
                        let out = encoder.take();
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Bytes::from(out))));
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_record("path", "a");
        assert_eq!(r, b"9 path=a\n");
        let long = "x".repeat(95);
        let r = String::from_utf8(pax_record("path", &long)).unwrap();
        assert_eq!(r.len().to_string(), r.split(' ').next().unwrap());
    }

    #[test]
    fn frames_copy_small_pieces_and_share_large_ones() {
        let mut frames = Frames::default();
        let small = Bytes::from(vec![1u8; 1000]);
        let large = Bytes::from(vec![2u8; Frames::SHARE_BYTES]);
        let mut expected = Vec::new();
        // Enough small pieces to fill more than one frame, a large one in between.
        for i in 0..600 {
            if i == 100 {
                frames.push_bytes(large.clone());
                expected.extend_from_slice(&large);
            }
            frames.push_slice(b"header");
            frames.push_bytes(small.clone());
            expected.extend_from_slice(b"header");
            expected.extend_from_slice(&small);
        }
        frames.cut();
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        let mut shared = false;
        while let Some(frame) = frames.pop() {
            shared |= frame.as_ptr() == large.as_ptr();
            sizes.push(frame.len());
            got.extend_from_slice(&frame);
        }
        assert_eq!(got, expected, "the bytes, in order");
        assert!(shared, "the large piece is its own frame, not copied");
        // Frames before and after the large piece, then full frames, then the rest:
        // 100 small pieces, the large one, then 500 x 1006 bytes in frames of 256 KiB.
        assert_eq!(sizes[0], 100 * 1006);
        assert_eq!(sizes[1], Frames::SHARE_BYTES);
        for &size in &sizes[2..sizes.len() - 1] {
            assert!(
                (Frames::FRAME_BYTES..Frames::FRAME_BYTES + 1006).contains(&size),
                "{sizes:?}"
            );
        }
        assert_eq!(sizes.iter().sum::<usize>(), expected.len());
    }

    #[test]
    fn headers_match_the_tar_crate_byte_for_byte() {
        for (size, index) in [
            (0, None),
            (5, Some(0)),
            (16 << 10, Some(123_456)),
            (MAX_OCTAL_SIZE, Some(usize::MAX)),
            (MAX_OCTAL_SIZE + 1, None),
            (u64::MAX, None),
        ] {
            for kind in [tar::EntryType::Regular, tar::EntryType::XHeader] {
                let mut expected = tar::Header::new_ustar();
                expected.set_size(size);
                expected.set_mode(0o644);
                expected.set_mtime(0);
                expected.set_entry_type(kind);
                expected.as_ustar_mut().unwrap().name[..3].copy_from_slice(b"a/b");
                if let Some(index) = index {
                    let group = format!("{INDEX_PREFIX}{index}");
                    expected.as_ustar_mut().unwrap().gname[..group.len()]
                        .copy_from_slice(group.as_bytes());
                }
                expected.set_cksum();
                let ours = header(b"a/b", size, kind, index);
                assert_eq!(ours.as_bytes(), expected.as_bytes(), "{size} {kind:?}");
            }
        }
    }

    #[test]
    fn tar_members_read_back_with_the_tar_crate() {
        let mut w = ArchiveWriter::tar();
        let long_name = format!("{}/end", "d".repeat(150));
        let mut frames = Frames::default();
        for (name, data, pax) in [
            ("a/b", Bytes::from_static(b"hello"), vec![]),
            (long_name.as_str(), Bytes::from(vec![7u8; 1000]), vec![]),
            (
                "__404__/b/x",
                Bytes::new(),
                vec![(PAX_STATUS, "404".to_string())],
            ),
        ] {
            w.member(
                Member {
                    name: name.to_string(),
                    data,
                    pax,
                    index: None,
                },
                &mut frames,
            )
            .unwrap();
        }
        w.finish(&mut frames).unwrap();
        frames.cut();
        let mut body = Vec::new();
        while let Some(frame) = frames.pop() {
            body.extend_from_slice(&frame);
        }
        let mut archive = tar::Archive::new(&body[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let status = entry
                .pax_extensions()
                .unwrap()
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .find(|e| e.key() == Ok(PAX_STATUS))
                .map(|e| e.value().unwrap().to_string());
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            seen.push((name, data.len(), status));
        }
        assert_eq!(
            seen,
            vec![
                ("a/b".to_string(), 5, None),
                (long_name, 1000, None),
                ("__404__/b/x".to_string(), 0, Some("404".to_string())),
            ]
        );
    }

    /// The body `writer` makes of `members` (name, bytes).
    fn written(mut writer: ArchiveWriter, members: &[(String, Bytes)]) -> Vec<u8> {
        let mut frames = Frames::default();
        for (name, data) in members {
            let member = Member {
                name: name.clone(),
                data: data.clone(),
                pax: Vec::new(),
                index: None,
            };
            writer.member(member, &mut frames).unwrap();
        }
        writer.finish(&mut frames).unwrap();
        frames.cut();
        let mut body = Vec::new();
        while let Some(frame) = frames.pop() {
            body.extend_from_slice(&frame);
        }
        body
    }

    /// Every entry of a zip as the `zip` crate reads it, twice: through the central directory
    /// (`ZipIterable`, which keeps duplicate names) and through the local headers
    /// (`read_zipfile_from_stream`), which must agree. `ZipArchive` opens it too (it keys
    /// entries by name, so duplicates collapse there).
    fn zip_crate_entries(body: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut central = Vec::new();
        let mut iterable = zip::unstable::read::ZipIterable::try_new(
            std::io::Cursor::new(body),
            zip::read::Config::default(),
        )
        .unwrap();
        let mut files = iterable
            .files_with_cloned_reader(zip::ZipReadOptions::default())
            .unwrap();
        while let Some(file) = files.next() {
            let mut file = file.unwrap();
            let name = file.name().unwrap().to_string();
            let mut data = Vec::new();
            file.read_to_end(&mut data).unwrap();
            central.push((name, data));
        }
        let mut local = Vec::new();
        let mut reader = body;
        while let Some(mut file) = zip::read::read_zipfile_from_stream(&mut reader).unwrap() {
            let name = file.name().unwrap().to_string();
            let mut data = Vec::new();
            file.read_to_end(&mut data).unwrap();
            local.push((name, data));
        }
        assert_eq!(central, local, "central directory and local headers differ");
        let archive = zip::ZipArchive::new(std::io::Cursor::new(body)).unwrap();
        let mut unique: Vec<&str> = central.iter().map(|(n, _)| n.as_str()).collect();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(archive.len(), unique.len());
        assert_eq!(archive.has_duplicate_names(), unique.len() < central.len());
        central
    }

    /// Every entry of a zip as Python's `zipfile` reads it (CRCs checked), or `None` when no
    /// `python3` runs here.
    fn python_zip_entries(body: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), body).unwrap();
        let script = "import json, sys, zipfile\n\
            z = zipfile.ZipFile(sys.argv[1])\n\
            assert z.testzip() is None\n\
            print(json.dumps([[i.filename, z.read(i).hex()] for i in z.infolist()]))";
        let Ok(output) = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(file.path())
            .output()
        else {
            eprintln!("python3 not found: the zip is not checked with Python's zipfile");
            return None;
        };
        assert!(
            output.status.success(),
            "Python's zipfile: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let entries: Vec<(String, String)> = serde_json::from_slice(&output.stdout).unwrap();
        let hex = |h: &str| {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect()
        };
        Some(entries.into_iter().map(|(n, h)| (n, hex(&h))).collect())
    }

    fn zip_fixture() -> Vec<(String, Bytes)> {
        vec![
            ("data/a".into(), Bytes::from_static(b"alpha")),
            ("data/b/c".into(), Bytes::from(vec![7u8; 100_000])),
            ("data/a".into(), Bytes::from_static(b"alpha")),
            ("__404__/data/gone".into(), Bytes::new()),
            ("data/b/c".into(), Bytes::from_static(b"c-range")),
            (
                "data/d\u{e9}j\u{e0}/\u{540d}".into(),
                Bytes::from_static(b"utf-8"),
            ),
            ("data/a".into(), Bytes::new()),
        ]
    }

    /// Duplicate names are written as given, every entry in order, readable by the `zip`
    /// crate (central directory and local headers) and by Python's zipfile.
    #[test]
    fn zip_keeps_duplicates_in_order() {
        let members = zip_fixture();
        let expected: Vec<(String, Vec<u8>)> = members
            .iter()
            .map(|(n, d)| (n.clone(), d.to_vec()))
            .collect();
        for writer in [
            ArchiveWriter::zip(),
            ArchiveWriter::Zip(Box::new(ZipState::forcing_zip64())),
        ] {
            let body = written(writer, &members);
            assert_eq!(zip_crate_entries(&body), expected);
            if let Some(python) = python_zip_entries(&body) {
                assert_eq!(python, expected);
            }
        }
    }

    /// More entries than the 16-bit count holds: the zip64 end records carry the count.
    #[test]
    fn zip64_end_records_for_more_than_65534_entries() {
        let members: Vec<(String, Bytes)> = (0..70_000)
            .map(|i| (format!("m/{}", i % 1000), Bytes::from(i.to_string())))
            .collect();
        let body = written(ArchiveWriter::zip(), &members);
        let expected: Vec<(String, Vec<u8>)> = members
            .iter()
            .map(|(n, d)| (n.clone(), d.to_vec()))
            .collect();
        // The end of central directory record says "see the zip64 record".
        let end = &body[body.len() - 22..];
        assert_eq!(&end[..4], &ZIP_END.to_le_bytes());
        assert_eq!(&end[8..12], &[0xff; 4]);
        assert_eq!(zip_crate_entries(&body), expected);
        if let Some(python) = python_zip_entries(&body) {
            assert_eq!(python, expected);
        }
    }

    /// Small zips have no zip64 records at all (version 2.0 readers).
    #[test]
    fn small_zips_have_no_zip64_records() {
        let body = written(ArchiveWriter::zip(), &zip_fixture());
        assert!(!body.windows(4).any(|w| w == ZIP64_END.to_le_bytes()));
        assert_eq!(u16::from_le_bytes([body[4], body[5]]), ZIP_VERSION);
    }

    /// An LZ4 body is one LZ4 frame of the tar, readable by lz4_flex's frame decoder.
    #[tokio::test(flavor = "current_thread")]
    async fn lz4_compression_round_trips() {
        use futures::StreamExt;
        let members: Vec<(String, Bytes)> = (0..300)
            .map(|i| (format!("o/{i}"), Bytes::from(vec![(i % 7) as u8; 1000 * i])))
            .collect();
        let tar = written(ArchiveWriter::tar(), &members);
        let chunks: Vec<std::io::Result<Bytes>> = tar
            .chunks(100_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let compressed: Vec<u8> = Compress::new(futures::stream::iter(chunks), Compression::Lz4)
            .unwrap()
            .map(|chunk| chunk.unwrap())
            .collect::<Vec<_>>()
            .await
            .concat();
        assert!(compressed.len() < tar.len() / 10);
        let mut decoded = Vec::new();
        lz4_flex::frame::FrameDecoder::new(&compressed[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, tar);
    }
}
