//! Wrappers forward `get_many` to the inner store's override, so coalescing survives them;
//! and the object_store-level wrappers see every backend request a merged read makes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use getmany::wrap::{Latency, LatencyModel, Metrics, Prefix};
use getmany::{ObjectStoreStore, Request, Store, WritableStore};
use object_store::memory::InMemory;

fn ranges(key: &str) -> Vec<Request> {
    (0..100u64)
        .map(|i| Request::range(key, i * 1000..i * 1000 + 500))
        .collect()
}

async fn backend() -> (Arc<Metrics<InMemory>>, ObjectStoreStore) {
    let counted = Arc::new(Metrics::new(InMemory::new()));
    let store = ObjectStoreStore::new(counted.clone());
    store.set("p/obj", vec![3u8; 100_000].into()).await.unwrap();
    counted.reset();
    (counted, store)
}

async fn drain<S: Store>(store: &S, requests: Vec<Request>) -> usize {
    let answers: Vec<_> = store.get_many(requests).collect().await;
    assert!(
        answers
            .iter()
            .all(|(_, r)| matches!(r, Ok(Some(b)) if b.len() == 500))
    );
    answers.len()
}

#[tokio::test]
async fn metrics_forwards_get_many_and_counts_answers() {
    let (counted, store) = backend().await;
    let wrapped = Metrics::new(store);
    assert_eq!(drain(&wrapped, ranges("p/obj")).await, 100);
    assert_eq!(
        counted.snapshot().reads,
        1,
        "one merged GET reached the backend"
    );
    let m = wrapped.snapshot();
    assert_eq!(
        (m.get_many_calls, m.reads, m.found, m.bytes),
        (1, 100, 100, 50_000)
    );
    // Over-read: the merged read fetched 99,500 bytes to deliver 50,000.
    let over = counted.snapshot().over_read(&m);
    assert!((over - 1.99).abs() < 0.01, "{over}");
}

#[tokio::test]
async fn latency_forwards_get_many() {
    let (counted, store) = backend().await;
    let wrapped = Latency::new(store, LatencyModel::round_trip(Duration::ZERO));
    assert_eq!(drain(&wrapped, ranges("p/obj")).await, 100);
    assert_eq!(counted.snapshot().reads, 1);
}

#[tokio::test]
async fn prefix_forwards_get_many() {
    let (counted, store) = backend().await;
    let wrapped = Prefix::new(store, "p");
    assert_eq!(drain(&wrapped, ranges("obj")).await, 100);
    assert_eq!(counted.snapshot().reads, 1);
}

#[tokio::test]
async fn object_store_level_latency_sees_every_merged_read() {
    // Under the coalescing store, the latency model (here with no delay) and the counter see
    // each backend GET: 3 objects -> 3 GETs for 300 requests.
    let counted = Arc::new(Metrics::new(Latency::new(
        InMemory::new(),
        LatencyModel::round_trip(Duration::ZERO),
    )));
    let store = ObjectStoreStore::new(counted.clone());
    let mut requests = Vec::new();
    for k in ["a", "b", "c"] {
        store.set(k, vec![1u8; 100_000].into()).await.unwrap();
        requests.extend(ranges(k));
    }
    counted.reset();
    assert_eq!(drain(&store, requests).await, 300);
    let m = counted.snapshot();
    assert_eq!((m.reads, m.heads), (3, 0));
}

/// A `Latency` over a store charges a `get_many` call one round trip, and paces answers
/// only against a set bandwidth: never a timer tick per answer. Measured on tokio's paused
/// clock, which advances only by the sleeps taken, so the figures are exact.
#[tokio::test(start_paused = true)]
async fn latency_charges_one_round_trip_per_get_many_call() {
    use getmany::MemoryStore;
    let inner = || {
        let store = MemoryStore::new();
        for i in 0..1000 {
            store.insert(format!("k{i}"), vec![0u8; 1000]);
        }
        store
    };
    let batch = || -> Vec<Request> { (0..1000).map(|i| Request::whole(format!("k{i}"))).collect() };
    let round_trip = Duration::from_millis(10);

    let unlimited = Latency::new(inner(), LatencyModel::round_trip(round_trip));
    let started = tokio::time::Instant::now();
    assert_eq!(unlimited.get_many(batch()).count().await, 1000);
    let took = started.elapsed();
    assert!(
        took >= round_trip && took < round_trip + Duration::from_millis(2),
        "1,000 answers on an unlimited link took {took:?}, not one round trip"
    );

    // 1 MB at 100 MB/s: 10 ms on the link after the round trip.
    let paced = Latency::new(
        inner(),
        LatencyModel::round_trip(round_trip).with_bandwidth(100e6),
    );
    let started = tokio::time::Instant::now();
    assert_eq!(paced.get_many(batch()).count().await, 1000);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(19) && took < Duration::from_millis(22),
        "1 MB at 100 MB/s after a 10 ms round trip took {took:?}"
    );
}
