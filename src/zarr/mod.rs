//! A zarr v3 array reader on the chunk-read [`pipeline`](crate::pipeline) (feature `zarr`).
//!
//! [`Array::open`] reads `zarr.json` (regular chunk grid; chunk key encodings `default` and
//! `v2`; data types `bool`, `int8`..`int64`, `uint8`..`uint64`, `float32`, `float64`;
//! codecs `bytes`, `transpose`, `gzip`, `zstd`, `crc32c` and `sharding_indexed`).
//! [`Array::read`] reads any hyper-rectangular selection into a `Vec<T>` in C order:
//!
//! * unsharded: ONE `get_many` of every chunk the selection touches;
//! * sharded: ONE `get_many` of the indexes of every shard the selection touches (suffix
//!   ranges, or prefix ranges when the index is at the start), then ONE `get_many` of the
//!   byte ranges of every inner chunk needed, from all those shards (a coalescing store such
//!   as [`ObjectStoreStore`](crate::ObjectStoreStore) merges them into about one read per
//!   shard). Two round trips, whatever the selection.
//!
//! Chunks are decoded on a bounded pool as they arrive. A missing chunk (or shard, or empty
//! inner chunk) reads as the fill value. A chunk that cannot be read or decoded (a crc32c
//! mismatch, a corrupt stream, a shard index pointing past the shard) fails its own region
//! only: the read completes and reports it in [`ArrayRead::failures`].
//!
//! ```
//! use getmany::{MemoryStore, zarr::Array};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! store.insert("a/zarr.json", r#"{"zarr_format": 3, "node_type": "array", "shape": [4],
//!     "data_type": "uint16", "fill_value": 9,
//!     "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2]}},
//!     "chunk_key_encoding": {"name": "default"},
//!     "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}]}"#);
//! store.insert("a/c/0", vec![1, 0, 2, 0]); // chunk 1 is missing
//! let array = Array::open(&store, "a").await?;
//! let read = array.read::<u16>(&[1..4]).await?;
//! assert_eq!(read.data, [2, 9, 9]);
//! assert!(read.failures.is_empty());
//! # Ok(()) }
//! ```

mod codec;
mod dtype;
mod metadata;
mod region;

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

pub use codec::{MAX_CHUNK_BYTES, MAX_INNER_CHUNKS};

/// The largest shard (by the most bytes its encoding can take) that
/// [`Array::with_whole_shard_reads`] reads whole; larger shards are read in ranges.
pub const MAX_WHOLE_SHARD_BYTES: u64 = 16 << 20;
pub use dtype::{DataType, Element};
pub use metadata::{ArrayMetadata, ChunkKeyEncoding};

use crate::pipeline::{ChunkDecoder, ChunkPipeline, ChunkRequest, ChunkStatus};
use crate::{ByteRange, Error, Request, Store};
use codec::{CodecChain, IndexEntry, Serializer, Sharding};
use region::{copy_box, fill_box, indices, intersect};

/// Why an array could not be opened or a selection could not be read at all.
///
/// Failures of single chunks are not this: they are reported in [`ArrayRead::failures`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ZarrError {
    /// `zarr.json` is invalid or asks for something this reader does not support.
    #[error("{key}: field `{field}` = {value}: {reason}")]
    Metadata {
        /// The metadata document's key.
        key: String,
        /// The field, as a path (`codecs[1].configuration.endian`).
        field: String,
        /// The field's value as found (JSON, shortened).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// There is no `zarr.json` at the array's path.
    #[error("no zarr array at {key:?}")]
    NotFound {
        /// The key that was read.
        key: String,
    },
    /// The selection does not fit the array.
    #[error("invalid selection {selection:?} of an array of shape {shape:?}: {reason}")]
    Selection {
        /// The selection asked for.
        selection: Vec<Range<u64>>,
        /// The array's shape.
        shape: Vec<u64>,
        /// What is wrong.
        reason: String,
    },
    /// The element type asked for is not the array's data type.
    #[error("cannot read a {data_type} array as {requested} elements")]
    TypeMismatch {
        /// The array's data type.
        data_type: DataType,
        /// The data type of the element type asked for.
        requested: DataType,
    },
    /// Reading the metadata failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// One chunk (or inner chunk) that could not be read: its region holds the fill value.
#[derive(Debug, Clone)]
pub struct ChunkFailure {
    /// The key of the chunk (the shard, for an inner chunk).
    pub key: String,
    /// The region of the array the chunk covers (clipped to the array).
    pub region: Vec<Range<u64>>,
    /// What went wrong.
    pub error: Error,
}

/// What one [`Array::read`] cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// `get_many` calls made (round trips): 1 unsharded, 2 sharded, 0 for an empty
    /// selection.
    pub rounds: usize,
    /// Requests handed to `get_many`, all rounds together.
    pub requests: usize,
    /// Chunks (inner chunks when sharded) read and decoded.
    pub chunks_present: usize,
    /// Chunks that were missing or known empty (filled).
    pub chunks_missing: usize,
}

/// The result of [`Array::read`]: the selected elements in C order, and what failed.
#[derive(Debug, Clone)]
pub struct ArrayRead<T> {
    /// The elements of the selection, C order.
    pub data: Vec<T>,
    /// The selection's shape.
    pub shape: Vec<u64>,
    /// Chunks that could not be read or decoded; their regions hold the fill value.
    pub failures: Vec<ChunkFailure>,
    /// Round trips, requests and chunk counts.
    pub stats: ReadStats,
}

impl<T> ArrayRead<T> {
    /// The data if every chunk was read, else the first failure's error.
    pub fn into_complete(self) -> Result<Vec<T>, Error> {
        match self.failures.into_iter().next() {
            None => Ok(self.data),
            Some(f) => Err(f.error),
        }
    }
}

/// Shard indexes by shard key; `None` for a shard found missing.
type IndexCache = HashMap<String, Option<Arc<Vec<IndexEntry>>>>;

/// A zarr v3 array in a [`Store`].
pub struct Array<S> {
    store: S,
    path: String,
    metadata: ArrayMetadata,
    decode_window: Option<usize>,
    /// Shard indexes already read, by shard key (when enabled).
    /// `None` for a shard that was missing.
    index_cache: Option<Mutex<IndexCache>>,
    whole_shards: bool,
}

impl<S> fmt::Debug for Array<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array")
            .field("path", &self.path)
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Array<S> {
    /// Opens the array at `path` (`""` for the root) by reading its `zarr.json` (one `get`).
    pub async fn open(store: S, path: &str) -> Result<Self, ZarrError> {
        let path = path.trim_matches('/').to_string();
        let key = join(&path, "zarr.json");
        let json = store
            .get(&key, None)
            .await?
            .ok_or_else(|| ZarrError::NotFound { key: key.clone() })?;
        let metadata = ArrayMetadata::parse(&key, &json)?;
        Ok(Array {
            store,
            path,
            metadata,
            decode_window: None,
            index_cache: None,
            whole_shards: false,
        })
    }

    /// Chunks decoded at once (default: four per core).
    pub fn with_decode_window(mut self, window: usize) -> Self {
        self.decode_window = Some(window);
        self
    }

    /// Keeps the index of every shard read, so a later read of the same shards skips the
    /// index round: one round trip instead of two. Only for arrays whose shards do not
    /// change while this `Array` is open (a rewritten shard would be read with its old
    /// index, and a shard found missing stays missing).
    pub fn with_index_cache(mut self) -> Self {
        self.index_cache = Some(Mutex::new(HashMap::new()));
        self
    }

    /// Reads a shard that the selection covers entirely (and that can hold at most
    /// [`MAX_WHOLE_SHARD_BYTES`]) whole, in the index round: a selection made only of whole
    /// shards then costs ONE round trip, and mixed ones still two. Off by default, which
    /// keeps every sharded read at exactly two rounds.
    pub fn with_whole_shard_reads(mut self) -> Self {
        self.whole_shards = true;
        self
    }

    /// The array's metadata.
    pub fn metadata(&self) -> &ArrayMetadata {
        &self.metadata
    }

    /// The array's shape.
    pub fn shape(&self) -> &[u64] {
        &self.metadata.shape
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store key of the chunk (shard, for a sharded array) at grid position `coords`.
    pub fn chunk_key(&self, coords: &[u64]) -> String {
        join(&self.path, &self.metadata.chunk_key_encoding.key(coords))
    }

    /// The selection covering the whole array.
    pub fn full_selection(&self) -> Vec<Range<u64>> {
        self.metadata.shape.iter().map(|&n| 0..n).collect()
    }

    /// Reads `selection` (one range per dimension) into a `Vec<T>` in C order.
    ///
    /// `T` must match the array's data type. Chunks that fail are reported in
    /// [`ArrayRead::failures`]; the rest of the selection is read regardless.
    pub async fn read<T: Element>(
        &self,
        selection: &[Range<u64>],
    ) -> Result<ArrayRead<T>, ZarrError> {
        let m = &self.metadata;
        if T::DATA_TYPE != m.data_type {
            return Err(ZarrError::TypeMismatch {
                data_type: m.data_type,
                requested: T::DATA_TYPE,
            });
        }
        let bad = |reason: &str| ZarrError::Selection {
            selection: selection.to_vec(),
            shape: m.shape.clone(),
            reason: reason.to_string(),
        };
        if selection.len() != m.shape.len() {
            return Err(bad("one range per dimension is needed"));
        }
        if selection
            .iter()
            .zip(&m.shape)
            .any(|(r, &n)| r.start > r.end || r.end > n)
        {
            return Err(bad("a range is reversed or runs past the array"));
        }
        let start: Vec<u64> = selection.iter().map(|r| r.start).collect();
        let shape: Vec<u64> = selection.iter().map(|r| r.end - r.start).collect();
        let elements = shape
            .iter()
            .try_fold(1u64, |a, &n| a.checked_mul(n))
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| {
                n.checked_mul(T::DATA_TYPE.size())
                    .is_some_and(|b| b <= isize::MAX as usize)
            })
            .ok_or_else(|| bad("the selection is too large to hold in memory"))?;
        let fill = T::from_bytes(&m.fill_value, false);
        let target = Target {
            start,
            shape: shape.clone(),
            fill,
            fill_is_default: fill.same_bits(&T::default()),
        };
        let mut read = ArrayRead {
            data: Vec::new(),
            shape,
            failures: Vec::new(),
            stats: ReadStats::default(),
        };
        if elements == 0 {
            return Ok(read);
        }
        // Zeroed memory is free until written; the fill value goes in only where needed.
        let output = vec![T::default(); elements];
        read.data = match &m.codecs.serializer {
            Serializer::Bytes { .. } => self.read_chunks(&target, output, &mut read).await,
            Serializer::Sharding(sharding) => {
                self.read_sharded(sharding, &target, output, &mut read)
                    .await
            }
        };
        Ok(read)
    }

    fn pipeline<T: Element>(
        &self,
        decoder: ArrayChunkDecoder<T>,
    ) -> ChunkPipeline<ArrayChunkDecoder<T>> {
        let pipeline = ChunkPipeline::new(decoder);
        match self.decode_window {
            Some(w) => pipeline.with_decode_window(w),
            None => pipeline,
        }
    }

    /// The grid positions of the chunks of `chunk_shape` that the target touches.
    fn touched(target: &Target<impl Copy>, chunk_shape: &[u64]) -> Vec<Vec<u64>> {
        let lo: Vec<u64> = target
            .start
            .iter()
            .zip(chunk_shape)
            .map(|(s, c)| s / c)
            .collect();
        let hi: Vec<u64> = (0..lo.len())
            .map(|d| (target.start[d] + target.shape[d]).div_ceil(chunk_shape[d]))
            .collect();
        indices(&lo, &hi)
    }

    fn clipped(&self, origin: &[u64], shape: &[u64]) -> Vec<Range<u64>> {
        (0..origin.len())
            .map(|d| {
                origin[d]
                    ..origin[d]
                        .saturating_add(shape[d])
                        .min(self.metadata.shape[d])
            })
            .collect()
    }

    /// Unsharded: one `get_many` of every chunk touched.
    async fn read_chunks<T: Element>(
        &self,
        target: &Target<T>,
        output: Vec<T>,
        read: &mut ArrayRead<T>,
    ) -> Vec<T> {
        let m = &self.metadata;
        let coords = Self::touched(target, &m.chunk_shape);
        let chunks: Vec<ChunkRequest<ChunkRegion>> = coords
            .iter()
            .map(|c| {
                let origin: Vec<u64> = c.iter().zip(&m.chunk_shape).map(|(c, s)| c * s).collect();
                ChunkRequest::new(
                    Request::whole(self.chunk_key(c)),
                    ChunkRegion {
                        origin,
                        expected_len: None,
                    },
                )
            })
            .collect();
        let decoder = ArrayChunkDecoder {
            chain: Arc::new(m.codecs.clone()),
            target: target.clone(),
        };
        let outcome = self
            .pipeline(decoder)
            .run(&self.store, chunks, output)
            .await;
        read.stats.rounds += 1;
        read.stats.requests += outcome.reads;
        read.stats.chunks_present += outcome.present();
        read.stats.chunks_missing += outcome.missing();
        for (i, status) in outcome.statuses.iter().enumerate() {
            if let ChunkStatus::Failed(error) = status {
                let origin: Vec<u64> = coords[i]
                    .iter()
                    .zip(&m.chunk_shape)
                    .map(|(c, s)| c * s)
                    .collect();
                read.failures.push(ChunkFailure {
                    key: self.chunk_key(&coords[i]),
                    region: self.clipped(&origin, &m.chunk_shape),
                    error: error.clone(),
                });
            }
        }
        outcome.output
    }

    /// Sharded: one `get_many` of the indexes of every shard touched, then one of every
    /// inner chunk needed.
    async fn read_sharded<T: Element>(
        &self,
        sharding: &Sharding,
        target: &Target<T>,
        mut output: Vec<T>,
        read: &mut ArrayRead<T>,
    ) -> Vec<T> {
        let m = &self.metadata;
        let sharding = Arc::new(sharding.clone());
        let shards = Self::touched(target, &m.chunk_shape);
        let keys: Vec<String> = shards.iter().map(|c| self.chunk_key(c)).collect();
        let index_len = sharding.index_len();
        let index_range = if sharding.index_at_start {
            ByteRange::Bounded(0..index_len)
        } else {
            ByteRange::Suffix(index_len)
        };

        // Round 1: every index not already known.
        let mut known: Vec<Option<Arc<Vec<IndexEntry>>>> = vec![None; keys.len()];
        let mut statuses: Vec<ChunkStatus> = vec![ChunkStatus::Present; keys.len()];
        let mut uncached = Vec::new();
        let cache = self
            .index_cache
            .as_ref()
            .map(|c| c.lock().unwrap_or_else(|e| e.into_inner()));
        for (s, key) in keys.iter().enumerate() {
            match cache.as_ref().and_then(|c| c.get(key)) {
                Some(Some(index)) => known[s] = Some(index.clone()),
                Some(None) => statuses[s] = ChunkStatus::Missing,
                None => uncached.push(s),
            }
        }
        drop(cache);
        let whole_ok = self.whole_shards
            && sharding.inner_count() * sharding.max_inner_len() + index_len
                <= MAX_WHOLE_SHARD_BYTES;
        let array_shape = Arc::new(m.shape.clone());
        let index_chunks: Vec<ChunkRequest<ShardRegion>> = uncached
            .iter()
            .map(|&s| {
                let origin: Vec<u64> = shards[s]
                    .iter()
                    .zip(&m.chunk_shape)
                    .map(|(c, n)| c * n)
                    .collect();
                // Covered: the selection holds all of the shard that lies in the array.
                let covered = self
                    .clipped(&origin, &m.chunk_shape)
                    .iter()
                    .enumerate()
                    .all(|(d, r)| {
                        target.start[d] <= r.start && r.end <= target.start[d] + target.shape[d]
                    });
                let (request, inner) = if whole_ok && covered {
                    let inner = inner_chunks(&sharding, &m.chunk_shape, &origin, target);
                    (Request::whole(keys[s].clone()), inner)
                } else {
                    let range = index_range.clone();
                    (Request::range(keys[s].clone(), range), Vec::new())
                };
                ChunkRequest::new(request, ShardRegion { shard: s, inner })
            })
            .collect();
        let mut whole_done = vec![false; keys.len()];
        if !index_chunks.is_empty() {
            let decoder = ShardDecoder {
                sharding: sharding.clone(),
                chunks: ArrayChunkDecoder {
                    chain: Arc::new(sharding.inner.clone()),
                    target: target.clone(),
                },
                array_shape: array_shape.clone(),
            };
            let mut pipeline = ChunkPipeline::new(decoder);
            if let Some(w) = self.decode_window {
                pipeline = pipeline.with_decode_window(w);
            }
            let first = RoundOne {
                indexes: vec![None; keys.len()],
                whole_done: vec![false; keys.len()],
                data: output,
                failures: Vec::new(),
                present: 0,
                missing: 0,
            };
            let round = pipeline.run(&self.store, index_chunks, first).await;
            read.stats.rounds += 1;
            read.stats.requests += round.reads;
            for (status, &s) in round.statuses.into_iter().zip(&uncached) {
                statuses[s] = status;
            }
            let first = round.output;
            output = first.data;
            whole_done = first.whole_done;
            read.stats.chunks_present += first.present;
            read.stats.chunks_missing += first.missing;
            read.failures.extend(first.failures);
            for (s, index) in first.indexes.into_iter().enumerate() {
                if index.is_some() {
                    known[s] = index;
                }
            }
            if let Some(cache) = &self.index_cache {
                let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
                for &s in &uncached {
                    match (&statuses[s], &known[s]) {
                        (ChunkStatus::Present, Some(index)) => {
                            cache.insert(keys[s].clone(), Some(index.clone()));
                        }
                        (ChunkStatus::Missing, _) => {
                            cache.insert(keys[s].clone(), None);
                        }
                        _ => {}
                    }
                }
            }
        }

        // Round 2: the inner chunks of every shard, in one request list.
        let mut chunks = Vec::new();
        let mut labels = Vec::new();
        let mut local_failures = Vec::new();
        for (s, shard) in shards.iter().enumerate() {
            let shard_origin: Vec<u64> = shard
                .iter()
                .zip(&m.chunk_shape)
                .map(|(c, n)| c * n)
                .collect();
            let entries = match &statuses[s] {
                ChunkStatus::Failed(error) => {
                    local_failures.push(ChunkFailure {
                        key: keys[s].clone(),
                        region: self.clipped(&shard_origin, &m.chunk_shape),
                        error: error.clone(),
                    });
                    continue;
                }
                ChunkStatus::Missing => None,
                ChunkStatus::Present => known[s].as_deref(),
            };
            if whole_done[s] {
                continue; // read whole and decoded in round 1
            }
            let inner = &sharding.inner_shape;
            for (linear, origin) in inner_chunks(&sharding, &m.chunk_shape, &shard_origin, target) {
                let entry = entries.and_then(|e| e.get(linear));
                match entry {
                    None | Some(IndexEntry::Empty) => {
                        chunks.push(ChunkRequest::empty(ChunkRegion {
                            origin,
                            expected_len: None,
                        }));
                        labels.push(s);
                    }
                    Some(IndexEntry::Range(r)) => {
                        let request = Request::range(keys[s].clone(), r.clone());
                        let region = ChunkRegion {
                            origin,
                            expected_len: Some(r.end - r.start),
                        };
                        chunks.push(ChunkRequest::new(request, region));
                        labels.push(s);
                    }
                    Some(IndexEntry::Invalid(reason)) => {
                        local_failures.push(ChunkFailure {
                            key: keys[s].clone(),
                            region: self.clipped(&origin, inner),
                            error: Error::InvalidData {
                                key: keys[s].clone(),
                                reason: format!(
                                    "shard index entry of the inner chunk at {origin:?}: {reason}"
                                ),
                            },
                        });
                    }
                }
            }
        }
        let decoder = ArrayChunkDecoder {
            chain: Arc::new(sharding.inner.clone()),
            target: target.clone(),
        };
        let regions: Vec<Vec<u64>> = chunks.iter().map(|c| c.region.origin.clone()).collect();
        let has_reads = chunks.iter().any(|c| c.request.is_some());
        let outcome = self
            .pipeline(decoder)
            .run(&self.store, chunks, output)
            .await;
        if has_reads {
            read.stats.rounds += 1;
        }
        read.stats.requests += outcome.reads;
        read.stats.chunks_present += outcome.present();
        read.stats.chunks_missing += outcome.missing();
        for (i, status) in outcome.statuses.iter().enumerate() {
            if let ChunkStatus::Failed(error) = status {
                read.failures.push(ChunkFailure {
                    key: keys[labels[i]].clone(),
                    region: self.clipped(&regions[i], &sharding.inner_shape),
                    error: error.clone(),
                });
            }
        }
        output = outcome.output;
        // Regions with no read at all (an unreadable shard index, a bad index entry) still
        // get the fill value.
        if !target.fill_is_default && !local_failures.is_empty() {
            let failures = local_failures.clone();
            let target = target.clone();
            output = tokio::task::spawn_blocking(move || {
                for f in &failures {
                    let origin: Vec<u64> = f.region.iter().map(|r| r.start).collect();
                    let shape: Vec<u64> = f.region.iter().map(|r| r.end - r.start).collect();
                    fill_box(
                        &mut output,
                        &target.start,
                        &target.shape,
                        &origin,
                        &shape,
                        target.fill,
                    );
                }
                output
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        }
        read.failures.extend(local_failures);
        output
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}/{key}")
    }
}

/// Where a read's output sits in the array.
#[derive(Debug, Clone)]
struct Target<T> {
    start: Vec<u64>,
    shape: Vec<u64>,
    fill: T,
    /// The output starts zeroed: with a zero fill value, nothing needs filling.
    fill_is_default: bool,
}

/// A chunk's place in the array.
#[derive(Debug)]
struct ChunkRegion {
    origin: Vec<u64>,
    /// For an inner chunk: the bytes its index entry promised.
    expected_len: Option<u64>,
}

/// Decodes chunks of one codec chain into the selection's output.
struct ArrayChunkDecoder<T> {
    chain: Arc<CodecChain>,
    target: Target<T>,
}

impl<T: Element> ChunkDecoder for ArrayChunkDecoder<T> {
    type Region = ChunkRegion;
    type Decoded = Vec<T>;
    type Output = Vec<T>;

    fn decode(
        &self,
        request: &Request,
        bytes: Bytes,
        region: &ChunkRegion,
    ) -> crate::Result<Vec<T>> {
        let what = match &request.range {
            Some(range) => format!("inner chunk at {:?} ({range})", region.origin),
            None => format!("chunk at {:?}", region.origin),
        };
        if let Some(expected) = region.expected_len
            && bytes.len() as u64 != expected
        {
            return Err(Error::InvalidData {
                key: request.key.clone(),
                reason: format!(
                    "{what}: the shard index entry points past the end of the shard ({} of {expected} bytes there)",
                    bytes.len()
                ),
            });
        }
        self.chain
            .decode(bytes)
            .map_err(|reason| Error::InvalidData {
                key: request.key.clone(),
                reason: format!("{what}: {reason}"),
            })
    }

    fn write(&self, decoded: Vec<T>, region: &ChunkRegion, output: &mut Vec<T>) {
        copy_box(
            &decoded,
            &region.origin,
            &self.chain.chunk_shape,
            output,
            &self.target.start,
            &self.target.shape,
        );
    }

    fn fill(&self, region: &ChunkRegion, output: &mut Vec<T>) {
        if !self.target.fill_is_default {
            fill_box(
                output,
                &self.target.start,
                &self.target.shape,
                &region.origin,
                &self.chain.chunk_shape,
                self.target.fill,
            );
        }
    }
}

/// The touched inner chunks of the shard at `shard_origin`: (index in the shard's inner
/// grid, C order; origin in the array).
fn inner_chunks<T>(
    sharding: &Sharding,
    shard_shape: &[u64],
    shard_origin: &[u64],
    target: &Target<T>,
) -> Vec<(usize, Vec<u64>)> {
    let Some((lo, hi)) = intersect(shard_origin, shard_shape, &target.start, &target.shape) else {
        return Vec::new();
    };
    let inner = &sharding.inner_shape;
    let ilo: Vec<u64> = (0..lo.len())
        .map(|d| (lo[d] - shard_origin[d]) / inner[d])
        .collect();
    let ihi: Vec<u64> = (0..lo.len())
        .map(|d| (hi[d] - shard_origin[d]).div_ceil(inner[d]))
        .collect();
    indices(&ilo, &ihi)
        .into_iter()
        .map(|local| {
            let origin: Vec<u64> = (0..local.len())
                .map(|d| shard_origin[d] + local[d] * inner[d])
                .collect();
            let linear = local
                .iter()
                .zip(&sharding.chunks_per_shard)
                .fold(0u64, |acc, (i, n)| acc * n + i) as usize;
            (linear, origin)
        })
        .collect()
}

/// A shard in round 1: its place in the list of touched shards, and, when it is read whole,
/// its touched inner chunks.
struct ShardRegion {
    shard: usize,
    inner: Vec<(usize, Vec<u64>)>,
}

/// What round 1 produced: the indexes, and the data of the shards read whole.
struct RoundOne<T> {
    indexes: Vec<Option<Arc<Vec<IndexEntry>>>>,
    whole_done: Vec<bool>,
    data: Vec<T>,
    failures: Vec<ChunkFailure>,
    present: usize,
    missing: usize,
}

/// A decoded round-1 answer: the index and, for a whole shard, its inner chunks (`None`:
/// empty).
struct ShardDecoded<T> {
    entries: Arc<Vec<IndexEntry>>,
    whole: bool,
    chunks: Vec<(Vec<u64>, InnerResult<T>)>,
}

/// One inner chunk of a whole shard: its elements, `None` when empty, or why it failed.
type InnerResult<T> = Result<Option<Vec<T>>, Error>;

/// Decodes round-1 answers: a shard index, or a whole shard (index and inner chunks, so a
/// shard is decoded the moment it arrives, while other shards are still in flight).
struct ShardDecoder<T> {
    sharding: Arc<Sharding>,
    chunks: ArrayChunkDecoder<T>,
    array_shape: Arc<Vec<u64>>,
}

impl<T: Element> ChunkDecoder for ShardDecoder<T> {
    type Region = ShardRegion;
    type Decoded = ShardDecoded<T>;
    type Output = RoundOne<T>;

    fn decode(
        &self,
        request: &Request,
        bytes: Bytes,
        region: &ShardRegion,
    ) -> crate::Result<ShardDecoded<T>> {
        let error = |reason: String| Error::InvalidData {
            key: request.key.clone(),
            reason,
        };
        if request.range.is_some() {
            let entries = self.sharding.decode_index(bytes).map_err(error)?;
            return Ok(ShardDecoded {
                entries: Arc::new(entries),
                whole: false,
                chunks: Vec::new(),
            });
        }
        // The whole shard: its index, then every touched inner chunk from its bytes.
        let len = self.sharding.index_len() as usize;
        if bytes.len() < len {
            return Err(error(format!(
                "a shard of {} bytes cannot hold its {len}-byte index",
                bytes.len()
            )));
        }
        let index = if self.sharding.index_at_start {
            bytes.slice(..len)
        } else {
            bytes.slice(bytes.len() - len..)
        };
        let entries = self.sharding.decode_index(index).map_err(error)?;
        let size = bytes.len() as u64;
        let chunks = region
            .inner
            .iter()
            .map(|(linear, origin)| {
                let result = match entries.get(*linear) {
                    None | Some(IndexEntry::Empty) => Ok(None),
                    Some(IndexEntry::Invalid(reason)) => Err(error(format!(
                        "shard index entry of the inner chunk at {origin:?}: {reason}"
                    ))),
                    Some(IndexEntry::Range(r)) if r.start >= size => Err(Error::range_past_end(
                        &request.key,
                        ByteRange::Bounded(r.clone()),
                        size,
                    )),
                    Some(IndexEntry::Range(r)) => {
                        let slice = bytes.slice(r.start as usize..r.end.min(size) as usize);
                        let inner = Request::range(request.key.clone(), r.clone());
                        let chunk = ChunkRegion {
                            origin: origin.clone(),
                            expected_len: Some(r.end - r.start),
                        };
                        self.chunks.decode(&inner, slice, &chunk).map(Some)
                    }
                };
                (origin.clone(), result)
            })
            .collect();
        Ok(ShardDecoded {
            entries: Arc::new(entries),
            whole: true,
            chunks,
        })
    }

    fn write(&self, decoded: ShardDecoded<T>, region: &ShardRegion, out: &mut RoundOne<T>) {
        let s = region.shard;
        if let Some(slot) = out.indexes.get_mut(s) {
            *slot = Some(decoded.entries);
        }
        if let Some(done) = out.whole_done.get_mut(s) {
            *done = decoded.whole;
        }
        let inner_shape = &self.sharding.inner_shape;
        for (origin, result) in decoded.chunks {
            let chunk = ChunkRegion {
                origin,
                expected_len: None,
            };
            match result {
                Ok(Some(values)) => {
                    self.chunks.write(values, &chunk, &mut out.data);
                    out.present += 1;
                }
                Ok(None) => {
                    self.chunks.fill(&chunk, &mut out.data);
                    out.missing += 1;
                }
                Err(error) => {
                    self.chunks.fill(&chunk, &mut out.data);
                    let region = (0..chunk.origin.len())
                        .map(|d| {
                            let o = chunk.origin[d];
                            o..o.saturating_add(inner_shape[d]).min(self.array_shape[d])
                        })
                        .collect();
                    out.failures.push(ChunkFailure {
                        key: error.key().unwrap_or_default().to_string(),
                        region,
                        error,
                    });
                }
            }
        }
    }

    /// A missing or failed shard: round 2 fills its regions.
    fn fill(&self, _: &ShardRegion, _: &mut RoundOne<T>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    /// The last chunk of an array as long as u64 allows: no overflow, filled as missing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_end_of_a_huge_array_reads_as_fill() {
        let store = MemoryStore::new();
        store.insert(
            "zarr.json",
            format!(
                r#"{{"zarr_format": 3, "node_type": "array", "shape": [{}], "data_type": "int8",
                "fill_value": -3, "codecs": [{{"name": "bytes"}}],
                "chunk_grid": {{"name": "regular", "configuration": {{"chunk_shape": [1000000]}}}}}}"#,
                u64::MAX
            ),
        );
        let array = Array::open(&store, "").await.unwrap();
        let last_three: Vec<Range<u64>> = std::iter::once(u64::MAX - 3..u64::MAX).collect();
        let read = array.read::<i8>(&last_three).await.unwrap();
        assert_eq!(read.data, [-3, -3, -3]);
        assert_eq!((read.stats.requests, read.stats.chunks_missing), (1, 1));
        assert_eq!(
            array.chunk_key(&[u64::MAX / 1_000_000]),
            format!("c/{}", u64::MAX / 1_000_000)
        );
    }
}
