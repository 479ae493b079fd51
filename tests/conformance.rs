//! The conformance suite against every backend of the crate (the S3 one is in
//! `conformance_s3.rs`, beside the in-process S3 server).

use std::sync::Arc;

use getmany::testing::{
    Conformance, FaultInjector, FaultObjectStore, FaultStore, populate, populate_memory,
};
use getmany::{MemoryStore, ObjectStoreStore};
use object_store::ObjectStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_only_store_with_the_default_get_many() {
    let faults = FaultInjector::new();
    let inner = MemoryStore::new();
    populate_memory(&inner);
    let store = FaultStore::new(inner, faults.clone());
    let report = Conformance::new(&store).with_faults(&faults).run().await;
    assert!(report.skipped.is_empty());
    report.assert_passed();
}

async fn object_store_suite(backend: Arc<dyn ObjectStore>) {
    let faults = FaultInjector::new();
    populate(&ObjectStoreStore::new(backend.clone()))
        .await
        .unwrap();
    let store = ObjectStoreStore::new(Arc::new(FaultObjectStore::new(backend, faults.clone())));
    let report = Conformance::new(&store).with_faults(&faults).run().await;
    assert!(report.skipped.is_empty());
    report.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_over_in_memory() {
    object_store_suite(Arc::new(object_store::memory::InMemory::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_over_local_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    object_store_suite(Arc::new(fs)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arc_dyn_store_works() {
    let inner = MemoryStore::new();
    populate_memory(&inner);
    let store: Arc<dyn getmany::Store> = Arc::new(inner);
    Conformance::new(&store).run().await.assert_passed();
}

/// The budget belongs to the store: two concurrent get_many calls together never have more
/// reads in flight than the store's limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_is_shared_by_concurrent_calls() {
    use futures::StreamExt;
    use getmany::{Request, Store};

    let faults = FaultInjector::new();
    let inner = MemoryStore::with_limit(4);
    populate_memory(&inner);
    let store = FaultStore::new(inner, faults.clone());
    let holds: Vec<_> = (0..20)
        .map(|i| faults.hold(&format!("conformance/many/{i}")))
        .collect();
    let requests: Vec<Request> = (0..20)
        .map(|i| Request::whole(format!("conformance/many/{i}")))
        .collect();
    let mut a = store.get_many(requests.clone());
    let mut b = store.get_many(requests);
    // Drive both streams until the budget is used up (no read can finish while held).
    while faults.waiting() < 4 {
        tokio::select! {
            _ = a.next() => unreachable!("a held read answered"),
            _ = b.next() => unreachable!("a held read answered"),
            _ = tokio::task::yield_now() => {}
        }
    }
    for _ in 0..100 {
        tokio::select! {
            _ = a.next() => unreachable!("a held read answered"),
            _ = b.next() => unreachable!("a held read answered"),
            _ = tokio::task::yield_now() => {}
        }
    }
    assert_eq!(faults.in_flight(), 4, "two calls share one budget of 4");
    drop(holds);
    let (x, y) = tokio::join!(a.collect::<Vec<_>>(), b.collect::<Vec<_>>());
    assert_eq!((x.len(), y.len()), (20, 20));
}
