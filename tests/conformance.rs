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
