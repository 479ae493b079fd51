//! BundleStore against the crate's own bundle server, over HTTP: the conformance suite for
//! both protocols, and the server's behaviour on its own (streaming, limits, bad input).

#![cfg(all(feature = "server", feature = "bundle"))]

use std::sync::Arc;

use getmany::server::{BundleServer, Limits};
use getmany::testing::{Conformance, FaultInjector, FaultObjectStore, populate};
use getmany::{BundleStore, ObjectStoreStore, Store};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::memory::InMemory;

const ACCESS: &str = "bundle-access";
const SECRET: &str = "bundle-secret";

/// A server over an `ObjectStoreStore` whose backend injects `faults`, holding the fixture.
async fn fixture_server(faults: &FaultInjector, limits: Limits) -> BundleServer {
    let backend: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    populate(&ObjectStoreStore::new(backend.clone()))
        .await
        .unwrap();
    let store = ObjectStoreStore::new(Arc::new(FaultObjectStore::new(backend, faults.clone())));
    BundleServer::builder()
        .bucket("data", Arc::new(store))
        .credentials(ACCESS, SECRET)
        .limits(limits)
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// object_store's S3 client on the same endpoint, for ranged reads (no retries: a failure
/// must show at once).
fn s3_ranged_store(url: &str) -> Arc<dyn Store> {
    let s3 = AmazonS3Builder::new()
        .with_endpoint(url)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region("auto")
        .with_bucket_name("data")
        .with_access_key_id(ACCESS)
        .with_secret_access_key(SECRET)
        .with_retry(object_store::RetryConfig {
            max_retries: 0,
            ..Default::default()
        })
        .build()
        .unwrap();
    Arc::new(ObjectStoreStore::new(Arc::new(s3)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_tigris_over_http() {
    let faults = FaultInjector::new();
    let server = fixture_server(&faults, Limits::default()).await;
    let store = BundleStore::tigris(server.url(), "data")
        .credentials(ACCESS, SECRET)
        .ranged_store(s3_ranged_store(&server.url()))
        .build()
        .unwrap();
    let report = Conformance::new(&store).with_faults(&faults).run().await;
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    report.assert_passed();
    assert!(server.stats().bundles() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_aistore_over_http() {
    let faults = FaultInjector::new();
    let server = fixture_server(&faults, Limits::default()).await;
    let store = BundleStore::aistore(server.url(), "data")
        .credentials(ACCESS, SECRET)
        .build()
        .unwrap();
    let report = Conformance::new(&store).with_faults(&faults).run().await;
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    report.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_aistore_gzip_in_request_order() {
    // Request order (as a real server sends) and a compressed body; no fault checks, since
    // strict order cannot let fast reads pass a held one.
    let faults = FaultInjector::new();
    let server = fixture_server(&faults, Limits::default()).await;
    let store = BundleStore::aistore(server.url(), "data")
        .credentials(ACCESS, SECRET)
        .compression(getmany::BundleCompression::Gzip)
        .completion_order(false)
        .max_keys(700)
        .build()
        .unwrap();
    Conformance::new(&store).run().await.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_tigris_zstd_in_request_order() {
    let faults = FaultInjector::new();
    let server = fixture_server(&faults, Limits::default()).await;
    let store = BundleStore::tigris(server.url(), "data")
        .credentials(ACCESS, SECRET)
        .compression(getmany::BundleCompression::Zstd)
        .completion_order(false)
        .ranged_store(s3_ranged_store(&server.url()))
        .build()
        .unwrap();
    Conformance::new(&store).run().await.assert_passed();
}
