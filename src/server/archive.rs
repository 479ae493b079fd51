//! Writing a bundle's response body: tar or zip members, then optional gzip/zstd compression
//! of the whole body, produced chunk by chunk as members arrive.

use std::collections::VecDeque;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
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
    /// A zip archive with stored (uncompressed) members and data descriptors.
    Zip(Box<ZipState>),
}

/// The state of a streaming zip writer: the zip crate writes into a shared buffer that is
/// drained after every member.
pub struct ZipState {
    writer: Option<zip::ZipWriter<zip::write::StreamWriter<SharedBuf>>>,
    buf: SharedBuf,
}

#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ArchiveWriter {
    /// A tar writer.
    pub fn tar() -> Self {
        ArchiveWriter::Tar
    }

    /// A zip writer.
    pub fn zip() -> Self {
        let buf = SharedBuf::default();
        let writer = zip::ZipWriter::new_stream(buf.clone());
        ArchiveWriter::Zip(Box::new(ZipState {
            writer: Some(writer),
            buf,
        }))
    }

    /// Writes `member` into `out`.
    pub fn member(&mut self, member: Member, out: &mut Frames) -> std::io::Result<()> {
        match self {
            ArchiveWriter::Tar => {
                tar_member(member, out);
                Ok(())
            }
            ArchiveWriter::Zip(state) => {
                let Some(writer) = state.writer.as_mut() else {
                    return Err(std::io::Error::other("zip archive already finished"));
                };
                let options = zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Stored)
                    .large_file(member.data.len() as u64 >= u64::from(u32::MAX));
                writer
                    .start_file(member.name.as_str(), options)
                    .map_err(std::io::Error::other)?;
                writer.write_all(&member.data)?;
                out.push_bytes(Bytes::from(state.buf.take()));
                Ok(())
            }
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
                let Some(writer) = state.writer.take() else {
                    return Ok(());
                };
                writer.finish().map_err(std::io::Error::other)?;
                out.push_bytes(Bytes::from(state.buf.take()));
                Ok(())
            }
        }
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
}

enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }

    /// Compressed bytes produced and not yet taken.
    fn pending(&self) -> usize {
        match self {
            Encoder::Gzip(e) => e.get_ref().len(),
            Encoder::Zstd(e) => e.get_ref().len(),
        }
    }

    fn take(&mut self) -> Vec<u8> {
        match self {
            Encoder::Gzip(e) => std::mem::take(e.get_mut()),
            Encoder::Zstd(e) => std::mem::take(e.get_mut()),
        }
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
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
}
