//! Criterion benchmarks of the scatter step of the chunk pipeline: decoded chunks copied
//! into their places in the caller's output array (no I/O: chunks come from a
//! `MemoryStore`, stored raw with the zarr `bytes` codec, so decoding is one conversion).
//!
//! The scatter (`copy_box` in the zarr reader) is not public, so it is measured through
//! `zarr::Array::read`, next to two references that bracket it: the same 1,024 chunks
//! through `ChunkPipeline` with a decoder that neither decodes nor writes (the pipeline's
//! own cost), and one memcpy of the whole output into a fresh buffer (the floor).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use getmany::pipeline::{ChunkDecoder, ChunkPipeline, ChunkRequest};
use getmany::zarr::Array;
use getmany::{MemoryStore, Request};

const CHUNK: u64 = 64;

/// A 2-D float32 array of `shape`, chunks of 64x64 stored raw (little-endian), every chunk
/// present; element (r, c) holds `r * 4096 + c`.
fn array_store(path: &str, shape: [u64; 2]) -> MemoryStore {
    let store = MemoryStore::new();
    let meta = serde_json::json!({
        "zarr_format": 3, "node_type": "array", "shape": shape,
        "data_type": "float32", "fill_value": 0.0,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [CHUNK, CHUNK]}},
        "chunk_key_encoding": {"name": "default"},
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}]
    });
    store.insert(format!("{path}/zarr.json"), meta.to_string());
    for i in 0..shape[0].div_ceil(CHUNK) {
        for j in 0..shape[1].div_ceil(CHUNK) {
            // Border chunks are stored whole, as zarr writes them.
            let mut chunk = Vec::with_capacity((CHUNK * CHUNK * 4) as usize);
            for r in i * CHUNK..(i + 1) * CHUNK {
                for c in j * CHUNK..(j + 1) * CHUNK {
                    chunk.extend_from_slice(&((r * 4096 + c) as f32).to_le_bytes());
                }
            }
            store.insert(format!("{path}/c/{i}/{j}"), chunk);
        }
    }
    store
}

/// Hands chunks through the pipeline untouched: counts their bytes, writes nothing.
struct PassThrough;

impl ChunkDecoder for PassThrough {
    type Region = ();
    type Decoded = usize;
    type Output = Arc<AtomicU64>;

    fn decode(&self, _: &Request, bytes: Bytes, _: &()) -> getmany::Result<usize> {
        Ok(bytes.len())
    }

    fn write(&self, decoded: usize, _: &(), output: &mut Arc<AtomicU64>) {
        output.fetch_add(decoded as u64, Ordering::Relaxed);
    }

    fn fill(&self, _: &(), _: &mut Arc<AtomicU64>) {}
}

fn scatter(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let aligned_store = array_store("a", [2048, 2048]);
    let edge_store = array_store("e", [2000, 2000]);
    let aligned = runtime
        .block_on(Array::open(&aligned_store, "a"))
        .expect("the array opens");
    let edge = runtime
        .block_on(Array::open(&edge_store, "e"))
        .expect("the array opens");
    let full = aligned.full_selection();
    // Unaligned on both sides, in an array whose last chunks stick out past its end: every
    // chunk on the selection's border is copied in part.
    let edge_selection = [7..1993, 7..1993];

    // The reads must be right before they are timed.
    let read = runtime.block_on(aligned.read::<f32>(&full)).expect("read");
    assert_eq!(read.stats.chunks_present, 1024);
    assert_eq!(read.data[2047 * 2048 + 5], (2047 * 4096 + 5) as f32);
    let read = runtime
        .block_on(edge.read::<f32>(&edge_selection))
        .expect("read");
    assert_eq!(read.stats.chunks_present, 1024);
    assert_eq!(read.data.len(), 1986 * 1986);
    assert_eq!(read.data[1985 * 1986 + 1985], (1992 * 4096 + 1992) as f32);

    let chunks = || -> Vec<ChunkRequest<()>> {
        (0..32)
            .flat_map(|i| {
                (0..32).map(move |j| ChunkRequest::new(Request::whole(format!("a/c/{i}/{j}")), ()))
            })
            .collect()
    };
    let pipeline = ChunkPipeline::new(PassThrough);
    let counted =
        runtime.block_on(pipeline.run(&aligned_store, chunks(), Arc::new(AtomicU64::new(0))));
    assert_eq!(counted.output.load(Ordering::Relaxed), 2048 * 2048 * 4);

    let array_bytes = 2048 * 2048 * 4;
    let mut group = c.benchmark_group("scatter");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(array_bytes));
    group.bench_function(
        "zarr read 2048x2048 f32, 1,024 chunks of 64x64 (aligned)",
        |b| b.iter(|| runtime.block_on(aligned.read::<f32>(&full))),
    );
    group.bench_function(
        "pipeline alone, same 1,024 chunks (no decode, no scatter)",
        |b| {
            b.iter(|| {
                runtime.block_on(pipeline.run(
                    &aligned_store,
                    chunks(),
                    Arc::new(AtomicU64::new(0)),
                ))
            })
        },
    );
    let source = vec![1.5f32; 2048 * 2048];
    group.bench_function("memcpy 16 MiB into a fresh buffer (floor)", |b| {
        b.iter(|| {
            let mut out = vec![0f32; source.len()];
            out.copy_from_slice(std::hint::black_box(&source));
            out
        })
    });
    group.throughput(Throughput::Bytes(1986 * 1986 * 4));
    group.bench_function(
        "zarr read (7..1993)^2 of 2000x2000 f32, 1,024 chunks, partial at the borders",
        |b| b.iter(|| runtime.block_on(edge.read::<f32>(&edge_selection))),
    );
    group.finish();
}

criterion_group!(benches, scatter);
criterion_main!(benches);
