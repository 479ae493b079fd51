//! The zarr v3 reader against arrays written by zarr-python (tests/fixtures/zarr/, made by
//! make_fixtures.py), compared element by element with what zarr-python read back; and the
//! round trips of sharded and unsharded reads counted at a real S3 server.
#![cfg(feature = "zarr")]

mod common;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use getmany::wrap::Metrics;
use getmany::zarr::{Array, DataType, Element};
use getmany::{ObjectStoreStore, Store};
use object_store::local::LocalFileSystem;
use serde_json::Value;

use common::s3::S3TestServer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/zarr")
}

fn manifest() -> Value {
    let text = std::fs::read(fixtures().join("manifest.json")).expect("manifest.json");
    serde_json::from_slice(&text).expect("manifest is JSON")
}

fn selection(v: &Value) -> Vec<Range<u64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_u64().unwrap()..r[1].as_u64().unwrap())
        .collect()
}

/// Reads `sel` and compares it with zarr-python's read in `file`; returns elements compared.
async fn compare<T: Element, S: Store>(
    array: &Array<S>,
    name: &str,
    sel: &[Range<u64>],
    file: &str,
) -> usize {
    let expected_bytes = std::fs::read(fixtures().join("expected").join(file)).unwrap();
    let size = T::DATA_TYPE.size();
    let expected: Vec<T> = expected_bytes
        .chunks_exact(size)
        .map(|b| T::from_bytes(b, false))
        .collect();
    let read = array
        .read::<T>(sel)
        .await
        .unwrap_or_else(|e| panic!("{name} {sel:?}: {e}"));
    assert!(
        read.failures.is_empty(),
        "{name} {sel:?}: {:?}",
        read.failures
    );
    let shape: Vec<u64> = sel.iter().map(|r| r.end - r.start).collect();
    assert_eq!(read.shape, shape);
    assert_eq!(
        read.data.len(),
        expected.len(),
        "{name} {sel:?}: element count"
    );
    for (i, (got, want)) in read.data.iter().zip(&expected).enumerate() {
        assert!(
            got.same_bits(want),
            "{name} {sel:?}: element {i} is {got:?}, zarr-python read {want:?}"
        );
    }
    expected.len()
}

async fn compare_all<S: Store>(open: impl Fn(&str) -> S) -> usize {
    let manifest = manifest();
    let mut compared = 0;
    let mut arrays = 0;
    for entry in manifest["arrays"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let array = Array::open(open(name), "")
            .await
            .unwrap_or_else(|e| panic!("open {name}: {e}"));
        let dt = DataType::from_name(entry["data_type"].as_str().unwrap()).unwrap();
        assert_eq!(array.metadata().data_type, dt, "{name}");
        for r in entry["reads"].as_array().unwrap() {
            let sel = selection(&r["selection"]);
            let file = r["file"].as_str().unwrap();
            compared += match dt {
                DataType::Bool => compare::<bool, _>(&array, name, &sel, file).await,
                DataType::Int8 => compare::<i8, _>(&array, name, &sel, file).await,
                DataType::Int16 => compare::<i16, _>(&array, name, &sel, file).await,
                DataType::Int32 => compare::<i32, _>(&array, name, &sel, file).await,
                DataType::Int64 => compare::<i64, _>(&array, name, &sel, file).await,
                DataType::UInt8 => compare::<u8, _>(&array, name, &sel, file).await,
                DataType::UInt16 => compare::<u16, _>(&array, name, &sel, file).await,
                DataType::UInt32 => compare::<u32, _>(&array, name, &sel, file).await,
                DataType::UInt64 => compare::<u64, _>(&array, name, &sel, file).await,
                DataType::Float32 => compare::<f32, _>(&array, name, &sel, file).await,
                DataType::Float64 => compare::<f64, _>(&array, name, &sel, file).await,
            };
        }
        arrays += 1;
    }
    assert!(arrays >= 15, "the manifest lists every fixture ({arrays})");
    compared
}

/// Every fixture, every selection, through ObjectStoreStore over LocalFileSystem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_match_zarr_python_on_local_files() {
    let data = fixtures().join("data");
    let compared = compare_all(|name| {
        let fs = LocalFileSystem::new_with_prefix(data.join(name)).expect("fixture dir");
        ObjectStoreStore::new(Arc::new(fs))
    })
    .await;
    assert!(compared > 10_000, "{compared} elements compared");
}

/// Uploads every fixture file to the S3 test server under `<array name>/...`.
async fn upload_fixtures(server: &S3TestServer) -> Vec<String> {
    let data = fixtures().join("data");
    let mut keys = Vec::new();
    let mut stack = vec![data.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let key = path
                    .strip_prefix(&data)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                server.put(&key, &std::fs::read(&path).unwrap()).await;
                keys.push(key);
            }
        }
    }
    keys
}

/// The same comparisons over HTTP, against a real S3 server (s3s + s3s-fs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_match_zarr_python_over_s3() {
    let server = S3TestServer::start().await;
    upload_fixtures(&server).await;
    let client = server.client();
    let compared = compare_all(|name| {
        ObjectStoreStore::new(client.clone())
            .with_prefix(name)
            .unwrap()
    })
    .await;
    assert!(compared > 10_000);
}

/// Counted at the S3 server: a selection of a sharded array costs exactly two `get_many`
/// rounds, one GET per shard for the indexes, then one merged GET per shard for the inner
/// chunks; an unsharded read is one round of one GET per chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_reads_are_two_rounds_unsharded_one() {
    let server = S3TestServer::start().await;
    upload_fixtures(&server).await;

    // sharded_end_i32: shape (40, 50), shards (20, 20) -> a 2x3 shard grid, the shard (1, 2)
    // never written; inner chunks (5, 10).
    let store = Metrics::new(
        ObjectStoreStore::new(server.client())
            .with_prefix("sharded_end_i32")
            .unwrap(),
    );
    let array = Array::open(&store, "").await.unwrap();
    let cases: [(Vec<Range<u64>>, u64, u64); 4] = [
        // (selection, shards touched, shards present among them)
        (vec![3..27, 8..44], 6, 5),
        (vec![0..20, 0..20], 1, 1),
        (vec![0..40, 0..50], 6, 5),
        (vec![21..22, 41..42], 1, 0),
    ];
    for (sel, touched, present) in cases {
        store.reset();
        server.reset_counts();
        let read = array.read::<i32>(&sel).await.unwrap();
        assert!(read.failures.is_empty(), "{:?}", read.failures);
        let m = store.snapshot();
        let counts = server.counts();
        let rounds = if present > 0 { 2 } else { 1 };
        assert_eq!(m.get_many_calls, rounds, "{sel:?}: get_many rounds");
        assert_eq!(read.stats.rounds as u64, rounds, "{sel:?}");
        // Round 1: one suffix GET per shard touched (a missing shard still costs its GET).
        // Round 2: the inner chunks of one shard are contiguous enough to merge into one GET.
        assert_eq!(counts.get, touched + present, "{sel:?}: GETs at the server");
        assert_eq!(counts.head, 0, "{sel:?}: no HEAD");
        assert!(
            read.stats.requests as u64 > touched + present || present == 0,
            "{sel:?}: several inner chunks per shard were requested and merged ({} requests)",
            read.stats.requests
        );
    }

    // Index at the start: prefix ranges in round 1, still two rounds.
    let store = Metrics::new(
        ObjectStoreStore::new(server.client())
            .with_prefix("sharded_start_u16")
            .unwrap(),
    );
    let array = Array::open(&store, "").await.unwrap();
    assert_eq!(array.metadata().index_at_start(), Some(true));
    store.reset();
    server.reset_counts();
    // Shape (33, 30), shards (16, 15): rows 1..32 x cols 2..29 touch 2x2 shards... and the
    // third shard row (32..33) is not touched.
    let read = array.read::<u16>(&[1..32, 2..29]).await.unwrap();
    assert!(read.failures.is_empty());
    assert_eq!(store.snapshot().get_many_calls, 2);
    assert_eq!(server.counts().get, 4 + 4);

    // Unsharded: one round, one GET per chunk touched.
    let store = Metrics::new(
        ObjectStoreStore::new(server.client())
            .with_prefix("gzip_i16_be")
            .unwrap(),
    );
    let array = Array::open(&store, "").await.unwrap();
    store.reset();
    server.reset_counts();
    // Chunks (7, 9): rows 6..8 touch chunk rows 0 and 1, all 5 chunk columns.
    let read = array.read::<i16>(&[6..8, 0..40]).await.unwrap();
    assert!(read.failures.is_empty());
    assert_eq!(store.snapshot().get_many_calls, 1);
    assert_eq!(read.stats.rounds, 1);
    assert_eq!(server.counts().get, 10);
    assert_eq!(read.stats.requests, 10);
}
