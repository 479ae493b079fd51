//! Reads 1,000 ranges from 10 objects on an S3 server, coalesced, and prints what reached
//! the backend.
//!
//! ```sh
//! cargo run --release --features cli --example coalesced_ranges
//! ```
//!
//! It starts the crate's own S3 server (over object_store's InMemory) on loopback so it runs
//! anywhere; point `AmazonS3Builder` at your own endpoint to try real storage.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use getmany::s3_server::S3Server;
use getmany::wrap::Metrics;
use getmany::{ObjectStoreStore, Request, Store, WritableStore};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::memory::InMemory;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys = ("example", "example-secret");
    let server = S3Server::start(
        Arc::new(InMemory::new()),
        "data",
        "127.0.0.1:0".parse()?,
        Some((keys.0.into(), keys.1.into())),
    )
    .await?;
    let s3: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(server.url())
            .with_allow_http(true)
            .with_bucket_name("data")
            .with_region("us-east-1")
            .with_access_key_id(keys.0)
            .with_secret_access_key(keys.1)
            .build()?,
    );
    // Count what reaches the backend, under the coalescing store.
    let backend = Arc::new(Metrics::new(s3));
    let store = ObjectStoreStore::new(backend.clone());

    const SLOT: u64 = 16 * 1024;
    for o in 0..10 {
        store
            .set(
                &format!("packed/{o}"),
                vec![o as u8; 100 * SLOT as usize].into(),
            )
            .await?;
    }
    let requests: Vec<Request> = (0..1000u64)
        .map(|i| {
            Request::range(
                format!("packed/{}", i % 10),
                (i / 10) * SLOT..(i / 10 + 1) * SLOT,
            )
        })
        .collect();
    let plan = store.plan(&requests);
    println!(
        "planned: {} requests -> {} GETs, {} bytes asked, {} bytes to fetch",
        plan.stats.requests,
        plan.stats.backend_requests,
        plan.stats.bytes_requested,
        plan.stats.bytes_planned
    );

    backend.reset();
    let started = Instant::now();
    let mut results = store.get_many(requests);
    let mut bytes = 0;
    while let Some((index, result)) = results.next().await {
        let value = result?.ok_or_else(|| format!("request {index}: missing"))?;
        bytes += value.len();
    }
    let m = backend.snapshot();
    println!(
        "read {bytes} bytes in {:?}: {} GETs, {} HEADs, {} bytes fetched",
        started.elapsed(),
        m.reads,
        m.heads,
        m.bytes
    );
    Ok(())
}
