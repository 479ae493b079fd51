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

async fn compare_all<S: Store>(open: impl Fn(&str) -> S, whole_shards: bool) -> usize {
    let manifest = manifest();
    let mut compared = 0;
    let mut arrays = 0;
    for entry in manifest["arrays"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let mut array = Array::open(open(name), "")
            .await
            .unwrap_or_else(|e| panic!("open {name}: {e}"));
        if whole_shards {
            array = array.with_whole_shard_reads();
        }
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

/// Every fixture, every selection, through ObjectStoreStore over LocalFileSystem; and again
/// with sharded arrays' covered shards read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_match_zarr_python_on_local_files() {
    let data = fixtures().join("data");
    for whole_shards in [false, true] {
        let compared = compare_all(
            |name| {
                let fs = LocalFileSystem::new_with_prefix(data.join(name)).expect("fixture dir");
                ObjectStoreStore::new(Arc::new(fs))
            },
            whole_shards,
        )
        .await;
        assert!(compared > 10_000, "{compared} elements compared");
    }
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
    let compared = compare_all(
        |name| {
            ObjectStoreStore::new(client.clone())
                .with_prefix(name)
                .unwrap()
        },
        false,
    )
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

    // With the index cache, a second read of the same shards skips the index round.
    let array = Array::open(&store, "").await.unwrap().with_index_cache();
    let sel = [3..27, 8..44];
    let first = array.read::<i32>(&sel).await.unwrap();
    store.reset();
    server.reset_counts();
    let warm = array.read::<i32>(&sel).await.unwrap();
    assert_eq!(store.snapshot().get_many_calls, 1, "warm: one round");
    assert_eq!(warm.stats.rounds, 1);
    assert_eq!(server.counts().get, 5, "one merged GET per present shard");
    assert_eq!(warm.data, first.data);

    // Whole-shard reads: shards the selection covers entirely are read whole in round 1.
    let array = Array::open(&store, "")
        .await
        .unwrap()
        .with_whole_shard_reads();
    let expected = expected_full::<i32>("sharded_end_i32");
    for (sel, rounds, gets) in [
        (vec![0..40, 0..50], 1, 6), // every shard covered (the missing one still asked)
        (vec![0..20, 0..40], 1, 2), // two covered shards
        (vec![3..27, 8..44], 2, 11), // none covered: as without the option
        (vec![0..20, 0..45], 2, 4), // two covered (2 GETs), one partial (index + data)
    ] {
        store.reset();
        server.reset_counts();
        let read = array.read::<i32>(&sel).await.unwrap();
        assert!(read.failures.is_empty(), "{:?}", read.failures);
        assert_eq!(store.snapshot().get_many_calls, rounds, "{sel:?}: rounds");
        assert_eq!(server.counts().get, gets, "{sel:?}: GETs");
        let cols = sel[1].end - sel[1].start;
        for (i, got) in read.data.iter().enumerate() {
            let (r, c) = (
                sel[0].start + i as u64 / cols,
                sel[1].start + i as u64 % cols,
            );
            assert_eq!(*got, expected[(r * 50 + c) as usize], "{sel:?} ({r}, {c})");
        }
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

/// The full array zarr-python read back for fixture `name`.
fn expected_full<T: Element>(name: &str) -> Vec<T> {
    let bytes = std::fs::read(fixtures().join("expected").join(format!("{name}.0.bin"))).unwrap();
    bytes
        .chunks_exact(T::DATA_TYPE.size())
        .map(|b| T::from_bytes(b, false))
        .collect()
}

fn fixture_file(rel: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("data").join(rel)).unwrap()
}

/// Checks a full read of a 2-D array: elements inside `failed` regions hold `fill`, every
/// other element equals zarr-python's.
fn check_except<T: Element>(
    data: &[T],
    shape: &[u64],
    expected: &[T],
    failed: &[Vec<Range<u64>>],
    fill: T,
) {
    let cols = shape[1];
    for (i, (got, want)) in data.iter().zip(expected).enumerate() {
        let (r, c) = (i as u64 / cols, i as u64 % cols);
        let in_failed = failed
            .iter()
            .any(|reg| reg[0].contains(&r) && reg[1].contains(&c));
        let want = if in_failed { fill } else { *want };
        assert!(
            got.same_bits(&want),
            "({r}, {c}): {got:?}, expected {want:?}"
        );
    }
}

/// A crc32c mismatch and a corrupt gzip stream fail their own chunk only; the rest of the
/// read is complete and equal to zarr-python's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_chunks_fail_only_their_region() {
    let server = S3TestServer::start().await;
    upload_fixtures(&server).await;

    // crc32c_i64_v2key: 19 elements in chunks of 4, keys "0".."4"; flip one bit of chunk 2.
    let mut chunk = fixture_file("crc32c_i64_v2key/2");
    chunk[3] ^= 0x10;
    server.put("crc32c_i64_v2key/2", &chunk).await;
    let store = ObjectStoreStore::new(server.client())
        .with_prefix("crc32c_i64_v2key")
        .unwrap();
    let array = Array::open(&store, "").await.unwrap();
    let read = array.read::<i64>(&array.full_selection()).await.unwrap();
    assert_eq!(read.failures.len(), 1, "{:?}", read.failures);
    let f = &read.failures[0];
    assert_eq!(f.key, "2");
    assert_eq!(f.region, vec![8..12]);
    assert!(
        f.error.to_string().contains("crc32c mismatch"),
        "{}",
        f.error
    );
    let expected = expected_full::<i64>("crc32c_i64_v2key");
    for (i, (got, want)) in read.data.iter().zip(&expected).enumerate() {
        let want = if (8..12).contains(&i) { 0 } else { *want };
        assert_eq!(*got, want, "element {i}");
    }
    assert_eq!(read.stats.chunks_present, 4);

    // gzip_i16_be: chunk c/1/2 replaced by bytes that are not gzip.
    server
        .put("gzip_i16_be/c/1/2", b"this is not a gzip stream")
        .await;
    let store = ObjectStoreStore::new(server.client())
        .with_prefix("gzip_i16_be")
        .unwrap();
    let array = Array::open(&store, "").await.unwrap();
    let read = array.read::<i16>(&array.full_selection()).await.unwrap();
    assert_eq!(read.failures.len(), 1, "{:?}", read.failures);
    let f = &read.failures[0];
    assert_eq!(f.key, "c/1/2");
    assert_eq!(f.region, vec![7..14, 18..27]);
    assert!(f.error.to_string().contains("gzip"), "{}", f.error);
    check_except(
        &read.data,
        &read.shape,
        &expected_full::<i16>("gzip_i16_be"),
        std::slice::from_ref(&f.region),
        0,
    );
    assert!(read.into_complete().is_err());
}

/// Rewrites entry `i` of the index at the end of a shard and fixes the index's checksum.
fn patch_index(shard: &mut [u8], entries: u64, i: u64, offset: u64, len: u64) {
    let index_len = (16 * entries + 4) as usize;
    let start = shard.len() - index_len;
    let at = start + 16 * i as usize;
    shard[at..at + 8].copy_from_slice(&offset.to_le_bytes());
    shard[at + 8..at + 16].copy_from_slice(&len.to_le_bytes());
    let body_end = shard.len() - 4;
    let crc = crc32c::crc32c(&shard[start..body_end]);
    shard[body_end..].copy_from_slice(&crc.to_le_bytes());
}

/// A shard index pointing past the shard (its start, or its end), or declaring an absurd
/// length, fails those inner chunks only; a shard whose index fails its checksum fails that
/// shard only; the rest of the read is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_shard_indexes_fail_only_their_region() {
    let server = S3TestServer::start().await;
    upload_fixtures(&server).await;
    // sharded_end_i32: shards (20, 20), inner chunks (5, 10): 4x2 = 8 entries per shard.
    let mut shard = fixture_file("sharded_end_i32/c/0/1");
    let len = shard.len() as u64;
    patch_index(&mut shard, 8, 1, len + 100, 40); // inner (0, 1): starts past the end
    patch_index(&mut shard, 8, 2, len - 150, 1000); // inner (1, 0): runs past the end
    patch_index(&mut shard, 8, 3, 0, 1 << 40); // inner (1, 1): absurd length
    server.put("sharded_end_i32/c/0/1", &shard).await;
    let mut other = fixture_file("sharded_end_i32/c/1/0");
    let n = other.len();
    other[n - 10] ^= 1; // the index no longer matches its checksum
    server.put("sharded_end_i32/c/1/0", &other).await;

    let store = Metrics::new(
        ObjectStoreStore::new(server.client())
            .with_prefix("sharded_end_i32")
            .unwrap(),
    );
    let array = Array::open(&store, "").await.unwrap();
    store.reset();
    let read = array.read::<i32>(&array.full_selection()).await.unwrap();
    assert_eq!(store.snapshot().get_many_calls, 2, "still two rounds");
    let mut failed: Vec<(String, Vec<Range<u64>>, String)> = read
        .failures
        .iter()
        .map(|f| (f.key.clone(), f.region.clone(), f.error.to_string()))
        .collect();
    failed.sort_by_key(|f| (f.1[0].start, f.1[1].start));
    let regions: Vec<Vec<Range<u64>>> = failed.iter().map(|f| f.1.clone()).collect();
    assert_eq!(
        regions,
        vec![
            vec![0..5, 30..40],  // shard (0, 1), inner (0, 1)
            vec![5..10, 20..30], // inner (1, 0)
            vec![5..10, 30..40], // inner (1, 1)
            vec![20..40, 0..20], // shard (1, 0): its index
        ],
        "{failed:#?}"
    );
    assert!(failed[0].2.contains("past the end"), "{}", failed[0].2);
    assert!(
        failed[1].2.contains("points past the end of the shard"),
        "{}",
        failed[1].2
    );
    assert!(
        failed[2].2.contains("more than an inner chunk can take"),
        "{}",
        failed[2].2
    );
    assert!(failed[3].2.contains("crc32c mismatch"), "{}", failed[3].2);
    check_except(
        &read.data,
        &read.shape,
        &expected_full::<i32>("sharded_end_i32"),
        &regions,
        -1,
    );

    // The same with the shards read whole: the same regions fail, the rest is read.
    let array = Array::open(&store, "")
        .await
        .unwrap()
        .with_whole_shard_reads();
    store.reset();
    let read = array.read::<i32>(&array.full_selection()).await.unwrap();
    assert_eq!(
        store.snapshot().get_many_calls,
        1,
        "every shard covered: one round"
    );
    let mut whole_regions: Vec<Vec<Range<u64>>> =
        read.failures.iter().map(|f| f.region.clone()).collect();
    whole_regions.sort_by_key(|r| (r[0].start, r[1].start));
    assert_eq!(whole_regions, regions, "{:#?}", read.failures);
    check_except(
        &read.data,
        &read.shape,
        &expected_full::<i32>("sharded_end_i32"),
        &regions,
        -1,
    );
}

/// Invalid or unsupported metadata read from a store: an error naming the field and value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_metadata_names_the_field_and_value() {
    let server = S3TestServer::start().await;
    let store = ObjectStoreStore::new(server.client());
    let mut meta: Value = serde_json::from_slice(&fixture_file("zstd_u32_dot/zarr.json")).unwrap();
    meta["codecs"][1]["name"] = Value::from("lz4");
    server
        .put("bad/zarr.json", meta.to_string().as_bytes())
        .await;
    let err = Array::open(&store, "bad").await.unwrap_err().to_string();
    assert!(err.contains("bad/zarr.json"), "{err}");
    assert!(err.contains("`codecs[1].name` = \"lz4\""), "{err}");

    meta["codecs"][1]["name"] = Value::from("zstd");
    meta["data_type"] = Value::from("float16");
    server
        .put("bad/zarr.json", meta.to_string().as_bytes())
        .await;
    let err = Array::open(&store, "bad").await.unwrap_err().to_string();
    assert!(err.contains("`data_type` = \"float16\""), "{err}");

    let err = Array::open(&store, "nothing-here").await.unwrap_err();
    assert!(err.to_string().contains("nothing-here/zarr.json"), "{err}");

    // A good array read with the wrong element type, or a selection past its end.
    upload_fixtures(&server).await;
    let array = Array::open(&store, "zstd_u32_dot").await.unwrap();
    let err = array.read::<f32>(&[0..1, 0..1]).await.unwrap_err();
    assert!(err.to_string().contains("uint32"), "{err}");
    let err = array.read::<u32>(&[0..26, 0..1]).await.unwrap_err();
    assert!(err.to_string().contains("past the array"), "{err}");
}
