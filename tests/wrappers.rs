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
