//! Opens a zarr v3 array on S3 and reads a selection, printing the reads issued and the time.
//!
//! With no arguments it starts the crate's embedded S3 server (`getmany::s3_server`), loads a
//! sharded array written by zarr-python (tests/fixtures/zarr/data/sharded_end_i32) into it,
//! and reads a selection:
//!
//! ```sh
//! cargo run --example read_zarr --features zarr,s3-server,aws
//! ```
//!
//! Against a real bucket (credentials and region from the usual `AWS_*` variables), give the
//! bucket, the array's path and a selection `start..end,start..end,...`; the element type is
//! taken from the array's `data_type`:
//!
//! ```sh
//! cargo run --example read_zarr --features zarr,s3-server,aws -- my-bucket path/to/array 0..256,0..2048
//! ```

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use getmany::ObjectStoreStore;
use getmany::s3_server::S3Server;
use getmany::wrap::Metrics;
use getmany::zarr::{Array, DataType, Element};
use object_store::aws::AmazonS3Builder;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

type Error = Box<dyn std::error::Error>;

fn parse_selection(s: &str) -> Result<Vec<Range<u64>>, Error> {
    s.split(',')
        .map(|r| {
            let (a, b) = r
                .split_once("..")
                .ok_or_else(|| format!("{r:?} is not start..end"))?;
            Ok(a.trim().parse()?..b.trim().parse()?)
        })
        .collect()
}

/// Copies every file under `dir` into `store` under `prefix/`.
async fn load_dir(store: &dyn ObjectStore, dir: &Path, prefix: &str) -> Result<usize, Error> {
    let mut stack = vec![dir.to_path_buf()];
    let mut n = 0;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(dir)?.to_string_lossy().replace('\\', "/");
            let key = format!("{prefix}/{rel}");
            store
                .put(
                    &key.as_str().into(),
                    PutPayload::from(std::fs::read(&path)?),
                )
                .await?;
            n += 1;
        }
    }
    Ok(n)
}

async fn read_and_report<T: Element, S: getmany::Store>(
    array: &Array<&Metrics<S>>,
    store: &Metrics<S>,
    backend: &Metrics<Arc<dyn ObjectStore>>,
    selection: &[Range<u64>],
) -> Result<(), Error> {
    store.reset();
    backend.reset();
    let started = Instant::now();
    let read = array.read::<T>(selection).await?;
    let took = started.elapsed();
    let (s, b) = (store.snapshot(), backend.snapshot());
    println!("selection {selection:?} -> shape {:?}", read.shape);
    println!(
        "  {} get_many rounds, {} chunk requests, {} GETs reaching S3 ({} bytes), {:.1} ms",
        s.get_many_calls,
        read.stats.requests,
        b.reads,
        b.bytes,
        took.as_secs_f64() * 1e3
    );
    println!(
        "  chunks read {}, missing {}, failed {}",
        read.stats.chunks_present,
        read.stats.chunks_missing,
        read.failures.len()
    );
    for f in &read.failures {
        println!("  failed {} {:?}: {}", f.key, f.region, f.error);
    }
    let preview: Vec<String> = read.data.iter().take(8).map(|v| format!("{v:?}")).collect();
    println!("  first elements: [{}]", preview.join(", "));
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let _server; // keeps the embedded server alive
    let (client, path, selection): (Arc<dyn ObjectStore>, String, Option<Vec<Range<u64>>>) =
        match args.as_slice() {
            [bucket, path, rest @ ..] => {
                let client = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()?;
                let selection = rest.first().map(|s| parse_selection(s)).transpose()?;
                (Arc::new(client), path.clone(), selection)
            }
            _ => {
                let backend = Arc::new(InMemory::new());
                let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/zarr/data/sharded_end_i32");
                let files = load_dir(backend.as_ref(), &dir, "sharded_end_i32").await?;
                let keys = ("example".to_string(), "example-secret".to_string());
                let server =
                    S3Server::start(backend, "zarr", "127.0.0.1:0".parse()?, Some(keys.clone()))
                        .await?;
                println!(
                    "embedded S3 server at {} with {files} files of a zarr-python array",
                    server.url()
                );
                let client = AmazonS3Builder::new()
                    .with_endpoint(server.url())
                    .with_bucket_name("zarr")
                    .with_region("us-east-1")
                    .with_access_key_id(keys.0)
                    .with_secret_access_key(keys.1)
                    .with_allow_http(true)
                    .with_virtual_hosted_style_request(false)
                    .build()?;
                _server = server;
                (
                    Arc::new(client),
                    "sharded_end_i32".to_string(),
                    Some(vec![3..27, 8..44]),
                )
            }
        };

    // Metrics below the coalescing store count the GETs that reach S3; above it, the
    // get_many rounds.
    let backend = Arc::new(Metrics::new(client));
    let store = Metrics::new(ObjectStoreStore::new(backend.clone()));
    let started = Instant::now();
    let array = Array::open(&store, &path).await?;
    let m = array.metadata();
    println!(
        "opened {path:?} in {:.1} ms: shape {:?}, {}, chunks {:?}, inner chunks {:?}, codecs {:?}",
        started.elapsed().as_secs_f64() * 1e3,
        m.shape,
        m.data_type,
        m.chunk_shape,
        m.inner_chunk_shape(),
        m.codec_names()
    );
    let selection = selection.unwrap_or_else(|| array.full_selection());
    let backend: &Metrics<Arc<dyn ObjectStore>> = &backend;
    match m.data_type {
        DataType::Bool => read_and_report::<bool, _>(&array, &store, backend, &selection).await,
        DataType::Int8 => read_and_report::<i8, _>(&array, &store, backend, &selection).await,
        DataType::Int16 => read_and_report::<i16, _>(&array, &store, backend, &selection).await,
        DataType::Int32 => read_and_report::<i32, _>(&array, &store, backend, &selection).await,
        DataType::Int64 => read_and_report::<i64, _>(&array, &store, backend, &selection).await,
        DataType::UInt8 => read_and_report::<u8, _>(&array, &store, backend, &selection).await,
        DataType::UInt16 => read_and_report::<u16, _>(&array, &store, backend, &selection).await,
        DataType::UInt32 => read_and_report::<u32, _>(&array, &store, backend, &selection).await,
        DataType::UInt64 => read_and_report::<u64, _>(&array, &store, backend, &selection).await,
        DataType::Float32 => read_and_report::<f32, _>(&array, &store, backend, &selection).await,
        DataType::Float64 => read_and_report::<f64, _>(&array, &store, backend, &selection).await,
    }
}
