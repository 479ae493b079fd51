//! The codec chains of zarr v3 this reader decodes: `transpose`, `bytes`, `gzip`, `zstd`,
//! `crc32c` and `sharding_indexed`.

use std::io::Read;

use bytes::Bytes;

use super::dtype::{Element, decode_elements};

/// The most bytes one decoded chunk (or inner chunk) may hold: larger declared chunks are
/// refused when the metadata is read, before anything is allocated.
pub const MAX_CHUNK_BYTES: u64 = 1 << 30;

/// The most inner chunks one shard may declare (its index is 16 bytes per inner chunk).
pub const MAX_INNER_CHUNKS: u64 = 1 << 22;

/// A bytes-to-bytes codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BytesCodec {
    Gzip,
    Zstd,
    Crc32c,
}

impl BytesCodec {
    pub(crate) fn name(self) -> &'static str {
        match self {
            BytesCodec::Gzip => "gzip",
            BytesCodec::Zstd => "zstd",
            BytesCodec::Crc32c => "crc32c",
        }
    }

    /// The most bytes encoding `len` bytes can produce (compressors' worst case, with room).
    fn encoded_bound(self, len: u64) -> u64 {
        match self {
            BytesCodec::Crc32c => len + 4,
            BytesCodec::Gzip | BytesCodec::Zstd => len + len / 64 + 1024,
        }
    }

    /// Decodes `data`, producing at most `cap` bytes.
    fn decode(self, data: Bytes, cap: u64) -> Result<Bytes, String> {
        match self {
            BytesCodec::Crc32c => {
                if data.len() < 4 {
                    return Err(format!(
                        "crc32c: {} bytes, too short to hold a checksum",
                        data.len()
                    ));
                }
                let split = data.len() - 4;
                let mut stored = [0u8; 4];
                stored.copy_from_slice(&data[split..]);
                let stored = u32::from_le_bytes(stored);
                let computed = crc32c::crc32c(&data[..split]);
                if stored != computed {
                    return Err(format!(
                        "crc32c mismatch: stored {stored:#010x}, computed {computed:#010x} over {split} bytes"
                    ));
                }
                Ok(data.slice(..split))
            }
            BytesCodec::Gzip => {
                let reader = flate2::read::MultiGzDecoder::new(&data[..]);
                read_capped(reader, cap, "gzip")
            }
            BytesCodec::Zstd => {
                let reader = zstd::stream::read::Decoder::new(&data[..])
                    .map_err(|e| format!("zstd: {e}"))?;
                read_capped(reader, cap, "zstd")
            }
        }
    }
}

/// Reads a decompressor to the end, failing past `cap` bytes (a decompression bomb or a
/// corrupt stream cannot allocate more than the chunk can hold).
fn read_capped(reader: impl Read, cap: u64, codec: &str) -> Result<Bytes, String> {
    let mut out = Vec::new();
    let read = reader
        .take(cap.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| format!("{codec}: {e}"))?;
    if read as u64 > cap {
        return Err(format!(
            "{codec}: decompresses to more than {cap} bytes, the most this chunk can hold"
        ));
    }
    Ok(out.into())
}

/// How a shard is laid out (`sharding_indexed`).
#[derive(Debug, Clone)]
pub(crate) struct Sharding {
    /// The inner chunk shape.
    pub inner_shape: Vec<u64>,
    /// Inner chunks per shard, per dimension.
    pub chunks_per_shard: Vec<u64>,
    /// The codecs of each inner chunk.
    pub inner: CodecChain,
    /// Whether the index's `bytes` codec is big endian.
    pub index_big_endian: bool,
    /// How many `crc32c` codecs wrap the index (0 or 1 in practice).
    pub index_checksums: usize,
    /// Whether the index is at the start of the shard (else at the end).
    pub index_at_start: bool,
}

impl Sharding {
    /// Inner chunks per shard.
    pub fn inner_count(&self) -> u64 {
        self.chunks_per_shard.iter().product()
    }

    /// The size of the encoded index in bytes.
    pub fn index_len(&self) -> u64 {
        16 * self.inner_count() + 4 * self.index_checksums as u64
    }

    /// The most bytes one encoded inner chunk can take: larger index entries are corrupt.
    pub fn max_inner_len(&self) -> u64 {
        self.inner.encoded_bound()
    }

    /// Decodes a shard index into one entry per inner chunk (C order over the inner grid).
    pub fn decode_index(&self, data: Bytes) -> Result<Vec<IndexEntry>, String> {
        let expected = self.index_len();
        if data.len() as u64 != expected {
            return Err(format!(
                "shard index: {} bytes, expected {expected}",
                data.len()
            ));
        }
        let mut data = data;
        for _ in 0..self.index_checksums {
            data = BytesCodec::Crc32c
                .decode(data, expected)
                .map_err(|e| format!("shard index: {e}"))?;
        }
        let words: Vec<u64> = decode_elements(&data, self.index_big_endian);
        let max = self.max_inner_len();
        Ok(words
            .chunks_exact(2)
            .map(|pair| match (pair[0], pair[1]) {
                (u64::MAX, u64::MAX) => IndexEntry::Empty,
                (_, 0) => IndexEntry::Invalid("a zero-length entry".into()),
                (offset, len) if len > max => IndexEntry::Invalid(format!(
                    "entry of {len} bytes at offset {offset}, more than an inner chunk can take ({max})"
                )),
                (offset, len) => match offset.checked_add(len) {
                    Some(end) => IndexEntry::Range(offset..end),
                    None => IndexEntry::Invalid(format!(
                        "entry of {len} bytes at offset {offset} overflows"
                    )),
                },
            })
            .collect())
    }
}

/// One entry of a shard index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IndexEntry {
    /// The inner chunk is not stored: it is all fill value.
    Empty,
    /// The inner chunk's bytes within the shard.
    Range(std::ops::Range<u64>),
    /// The entry cannot be right.
    Invalid(String),
}

/// The array-to-bytes codec of a chain.
#[derive(Debug, Clone)]
pub(crate) enum Serializer {
    /// `bytes`: elements in C order, in this endianness.
    Bytes { big_endian: bool },
    /// `sharding_indexed`.
    Sharding(Box<Sharding>),
}

/// A validated codec chain for chunks of one shape and data type.
#[derive(Debug, Clone)]
pub(crate) struct CodecChain {
    /// The decoded chunk shape.
    pub chunk_shape: Vec<u64>,
    /// Bytes per element.
    pub element_size: u64,
    /// `transpose` orders, in encoding order, each with the shape it applies to.
    pub transposes: Vec<(Vec<usize>, Vec<u64>)>,
    /// The array-to-bytes codec.
    pub serializer: Serializer,
    /// Bytes-to-bytes codecs in encoding order, each with the most bytes its input can hold.
    pub compressors: Vec<(BytesCodec, u64)>,
}

impl CodecChain {
    /// Elements in one chunk.
    pub fn elements(&self) -> u64 {
        self.chunk_shape.iter().product()
    }

    /// The most bytes one encoded chunk can take.
    pub fn encoded_bound(&self) -> u64 {
        let mut len = match &self.serializer {
            Serializer::Bytes { .. } => self.elements() * self.element_size,
            Serializer::Sharding(s) => s.inner_count() * s.max_inner_len() + s.index_len(),
        };
        for (codec, _) in &self.compressors {
            len = codec.encoded_bound(len);
        }
        len
    }

    /// The names of the codecs, in encoding order.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = vec!["transpose"; self.transposes.len()];
        names.push(match self.serializer {
            Serializer::Bytes { .. } => "bytes",
            Serializer::Sharding(_) => "sharding_indexed",
        });
        names.extend(self.compressors.iter().map(|(c, _)| c.name()));
        names
    }

    /// Decodes one stored chunk into its elements, in C order of `chunk_shape`.
    pub fn decode<T: Element>(&self, data: Bytes) -> Result<Vec<T>, String> {
        let Serializer::Bytes { big_endian } = self.serializer else {
            return Err("internal: a sharded chain decoded as one chunk".into());
        };
        let mut data = data;
        for (codec, cap) in self.compressors.iter().rev() {
            data = codec.decode(data, *cap)?;
        }
        let expected = self.elements() * self.element_size;
        if data.len() as u64 != expected {
            return Err(format!(
                "decoded to {} bytes, expected {expected} ({} elements of {} bytes)",
                data.len(),
                self.elements(),
                self.element_size
            ));
        }
        let mut elements: Vec<T> = decode_elements(&data, big_endian);
        for (order, shape) in self.transposes.iter().rev() {
            elements = untranspose(&elements, shape, order);
        }
        Ok(elements)
    }
}

/// Inverts a `transpose` with `order`: `encoded` has shape `shape[order[i]]` in C order; the
/// result has `shape` (the shape before the transpose) in C order.
fn untranspose<T: Copy>(encoded: &[T], shape: &[u64], order: &[usize]) -> Vec<T> {
    let n = shape.len();
    if n == 0 {
        return encoded.to_vec();
    }
    let shape: Vec<usize> = shape.iter().map(|&s| s as usize).collect();
    let encoded_shape: Vec<usize> = order.iter().map(|&o| shape[o]).collect();
    let mut encoded_strides = vec![1usize; n];
    for i in (0..n - 1).rev() {
        encoded_strides[i] = encoded_strides[i + 1] * encoded_shape[i + 1];
    }
    // The stride in `encoded` of each decoded dimension.
    let mut strides = vec![0usize; n];
    for (i, &o) in order.iter().enumerate() {
        strides[o] = encoded_strides[i];
    }
    let total: usize = shape.iter().product();
    let mut out = Vec::with_capacity(total);
    if total == 0 {
        return out;
    }
    let last = n - 1;
    let mut index = vec![0usize; n];
    loop {
        let base: usize = (0..last).map(|d| index[d] * strides[d]).sum();
        out.extend((0..shape[last]).map(|k| encoded[base + k * strides[last]]));
        let mut d = last;
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untranspose_inverts_a_permutation() {
        // A 2x3 array [[0,1,2],[3,4,5]] transposed with order [1,0] is stored as
        // [[0,3],[1,4],[2,5]].
        let stored = [0, 3, 1, 4, 2, 5];
        assert_eq!(
            untranspose(&stored, &[2, 3], &[1, 0]),
            vec![0, 1, 2, 3, 4, 5]
        );
        // 3-D: shape (2,3,4), order (2,0,1): stored[k][i][j] = a[i][j][k].
        let shape = [2u64, 3, 4];
        let a: Vec<u32> = (0..24).collect();
        let mut stored = Vec::new();
        for k in 0..4 {
            for i in 0..2 {
                for j in 0..3 {
                    stored.push(a[i * 12 + j * 4 + k]);
                }
            }
        }
        assert_eq!(untranspose(&stored, &shape, &[2, 0, 1]), a);
    }

    #[test]
    fn crc32c_detects_corruption_and_decompressors_are_capped() {
        let mut data = b"hello".to_vec();
        data.extend(crc32c::crc32c(b"hello").to_le_bytes());
        let ok = BytesCodec::Crc32c.decode(data.clone().into(), 100).unwrap();
        assert_eq!(&ok[..], b"hello");
        data[0] ^= 1;
        let err = BytesCodec::Crc32c.decode(data.into(), 100).unwrap_err();
        assert!(err.contains("crc32c mismatch"), "{err}");

        let big = zstd::encode_all(&vec![0u8; 1 << 20][..], 1).unwrap();
        let err = BytesCodec::Zstd.decode(big.into(), 4096).unwrap_err();
        assert!(err.contains("more than 4096 bytes"), "{err}");
        let err = BytesCodec::Gzip
            .decode(Bytes::from_static(b"not gzip"), 4096)
            .unwrap_err();
        assert!(err.starts_with("gzip:"), "{err}");
    }
}
