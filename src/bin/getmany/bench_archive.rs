//! `getmany bench-archive`: members of zip shards read through `ArchiveStore`, against the
//! physical limit `L + P/B` and against downloading and extracting the whole archives.

use std::io::{Cursor, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use comfy_table::{Table, presets::ASCII_MARKDOWN};
use futures::StreamExt;
use getmany::archive::{ArchiveConfig, ArchiveStore};
use getmany::s3_server::S3Server;
use getmany::wrap::{Latency, LatencyModel, Metrics};
use getmany::{IoBudget, ObjectStoreStore, Request, Store, get_many_concurrent};
use object_store::aws::AmazonS3Builder;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

const BUCKET: &str = "bench";
const KEYS: (&str, &str) = ("getmany-bench", "getmany-bench-secret");

/// Options of `getmany bench-archive`.
#[derive(Debug, Args)]
pub struct BenchArchiveArgs {
    /// Simulated round trip per request, in milliseconds (the latency model).
    #[arg(long, default_value_t = 10.0)]
    rtt_ms: f64,
    /// Zip archives (shards).
    #[arg(long, default_value_t = 10)]
    archives: usize,
    /// Members per archive.
    #[arg(long, default_value_t = 10_000)]
    members: usize,
    /// Bytes per member (stored, incompressible: the common case of images in shards).
    #[arg(long, default_value_t = 16 * 1024)]
    member_size: usize,
    /// Random members read per batch.
    #[arg(long, default_value_t = 1_000)]
    reads: usize,
    /// Reads in flight (the inner store's I/O budget).
    #[arg(long, default_value_t = 1024)]
    budget: usize,
    /// Repetitions of each measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
}

struct Measured {
    wall: Duration,
    gets: u64,
    heads: u64,
    fetched: u64,
}

type Metered = Arc<Metrics<Latency<Arc<dyn ObjectStore>>>>;

async fn measure<F, Fut>(metered: &Metered, repeat: usize, f: F) -> Measured
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    f().await; // warm-up
    let mut runs = Vec::new();
    for _ in 0..repeat.max(1) {
        metered.reset();
        let started = Instant::now();
        f().await;
        let wall = started.elapsed();
        let m = metered.snapshot();
        runs.push(Measured {
            wall,
            gets: m.reads,
            heads: m.heads,
            fetched: m.bytes,
        });
    }
    runs.sort_by_key(|m| m.wall);
    runs.swap_remove(runs.len() / 2)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mb(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

/// Pseudo-random bytes (xorshift), distinct per seed.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn member_name(m: usize) -> String {
    format!("images/{m:06}.jpg")
}

fn zip_shard(
    archive: usize,
    members: usize,
    size: usize,
) -> Result<Vec<u8>, zip::result::ZipError> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::with_capacity(members * (size + 120))));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for m in 0..members {
        w.start_file(member_name(m), options)?;
        w.write_all(&pattern((archive * members + m) as u64, size))?;
    }
    Ok(w.finish()?.into_inner())
}

fn tar_shard(members: usize, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(members * (size + 1024));
    for m in 0..members {
        let name = member_name(m);
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(&pattern(m as u64, size));
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

pub async fn run(args: BenchArchiveArgs) -> Result<(), Box<dyn std::error::Error>> {
    let backend: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let addr: SocketAddr = "127.0.0.1:0".parse()?;
    let server = S3Server::start(
        backend.clone(),
        BUCKET,
        addr,
        Some((KEYS.0.to_string(), KEYS.1.to_string())),
    )
    .await?;
    let client: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(server.url())
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id(KEYS.0)
            .with_secret_access_key(KEYS.1)
            // Client options first: they carry allow_http, which must not be reset.
            .with_client_options(
                object_store::ClientOptions::new().with_pool_max_idle_per_host(4096),
            )
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .build()?,
    );
    let model = LatencyModel::round_trip(Duration::from_secs_f64(args.rtt_ms / 1e3))
        .with_connections(args.budget.max(1024));
    let metered: Metered = Arc::new(Metrics::new(Latency::new(client, model)));

    println!("# getmany bench-archive");
    println!();
    println!(
        "Embedded S3 server (s3s over object_store InMemory, SigV4, TCP_NODELAY) at {}, behind the latency model: round trip {} ms, I/O budget {}.",
        server.url(),
        args.rtt_ms,
        args.budget
    );
    println!(
        "{} zip shards of {} stored members of {} bytes, written by the `zip` crate.",
        args.archives, args.members, args.member_size
    );

    // Data.
    let keys: Vec<String> = (0..args.archives)
        .map(|a| format!("shards/{a:06}.zip"))
        .collect();
    let mut shard_bytes = 0u64;
    for (a, key) in keys.iter().enumerate() {
        let bytes = zip_shard(a, args.members, args.member_size)?;
        shard_bytes += bytes.len() as u64;
        backend
            .put(&key.as_str().into(), PutPayload::from(bytes))
            .await?;
    }
    let tar = tar_shard(args.members, args.member_size);
    let tar_len = tar.len() as u64;
    backend
        .put(&"shards/tar-000000.tar".into(), PutPayload::from(tar))
        .await?;
    backend
        .put(&"probe/one".into(), PutPayload::from(vec![1u8]))
        .await?;
    backend
        .put(&"probe/big".into(), PutPayload::from(vec![2u8; 64 << 20]))
        .await?;

    // L and B through the whole stack.
    let probe = ObjectStoreStore::new(metered.clone());
    let (round_trip, bandwidth) =
        crate::link::measure_link(&probe, "probe/one", "probe/big", 64 << 20, 5).await?;
    println!(
        "Measured through the stack: L = {} (median of 21 one-byte GETs), B = {:.0} MB/s (one 64 MiB GET, median of 5).",
        ms(round_trip),
        bandwidth / 1e6
    );
    println!();
    let limit = |payload: u64| round_trip + Duration::from_secs_f64(payload as f64 / bandwidth);

    let inner = || ObjectStoreStore::new(metered.clone()).with_budget(IoBudget::new(args.budget));
    let config = ArchiveConfig {
        read_sidecars: false,
        ..ArchiveConfig::default()
    };

    // Indexing, cold: every archive indexed by a fresh store.
    println!("## Indexing (cold cache, no sidecar)");
    println!();
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN);
    table.set_header(vec![
        "what",
        "archive bytes",
        "GETs",
        "HEADs",
        "bytes read",
        "wall (median)",
    ]);
    let m = measure(&metered, args.repeat, || async {
        let store = ArchiveStore::with_config(inner(), config.clone());
        futures::future::join_all(keys.iter().map(|k| store.index(k)))
            .await
            .into_iter()
            .for_each(|r| {
                r.expect("index").expect("archive exists");
            });
    })
    .await;
    table.add_row(vec![
        format!("{} zips, concurrently", args.archives),
        mb(shard_bytes),
        m.gets.to_string(),
        m.heads.to_string(),
        mb(m.fetched),
        ms(m.wall),
    ]);
    let m = measure(&metered, args.repeat, || async {
        let store = ArchiveStore::with_config(inner(), config.clone());
        store
            .index("shards/tar-000000.tar")
            .await
            .expect("index")
            .expect("archive exists");
    })
    .await;
    table.add_row(vec![
        format!("1 tar of {} members (header walk)", args.members),
        mb(tar_len),
        m.gets.to_string(),
        m.heads.to_string(),
        mb(m.fetched),
        ms(m.wall),
    ]);
    // The tar's index persisted once, then loaded by fresh stores.
    let writer_backend = ObjectStoreStore::new(backend.clone());
    ArchiveStore::new(writer_backend)
        .with_sidecar_writes()
        .index("shards/tar-000000.tar")
        .await?;
    let m = measure(&metered, args.repeat, || async {
        let store = ArchiveStore::new(inner());
        store
            .index("shards/tar-000000.tar")
            .await
            .expect("index")
            .expect("archive exists");
    })
    .await;
    table.add_row(vec![
        "the same tar, index from its sidecar".to_string(),
        mb(tar_len),
        m.gets.to_string(),
        m.heads.to_string(),
        mb(m.fetched),
        ms(m.wall),
    ]);
    println!("{table}");
    println!();

    // Member reads, warm cache.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let picks: Vec<(usize, usize)> = (0..args.reads)
        .map(|_| {
            (
                next(args.archives as u64) as usize,
                next(args.members as u64) as usize,
            )
        })
        .collect();
    let requests: Vec<Request> = picks
        .iter()
        .map(|(a, m)| Request::whole(format!("{}/{}", keys[*a], member_name(*m))))
        .collect();
    let payload = (args.reads * args.member_size) as u64;
    let store = ArchiveStore::with_config(inner(), config.clone());
    for k in &keys {
        store.index(k).await?;
    }
    let planned = store.inner_requests(&requests).await;
    let runs = store.inner().plan(&planned).stats.backend_requests;
    println!(
        "## {} random members of {} zips (P = {}), indexes cached: L + P/B = {}",
        args.reads,
        args.archives,
        mb(payload),
        ms(limit(payload))
    );
    println!();
    println!(
        "The ArchiveStore maps the {} member reads to {} archive ranges and sends them as one get_many of the ObjectStoreStore, which plans {runs} merged GETs.",
        args.reads,
        planned.len()
    );
    println!();
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN);
    table.set_header(vec![
        "strategy",
        "GETs",
        "HEADs",
        "bytes fetched",
        "P'/P",
        "wall (median)",
        "wall / (L + P/B)",
    ]);
    let mut row = |name: &str, m: &Measured| {
        table.add_row(vec![
            name.to_string(),
            m.gets.to_string(),
            m.heads.to_string(),
            mb(m.fetched),
            format!("{:.2}", m.fetched as f64 / payload as f64),
            ms(m.wall),
            format!("{:.2}", m.wall.as_secs_f64() / limit(payload).as_secs_f64()),
        ]);
    };
    let m = measure(&metered, args.repeat, || async {
        let mut answers = store.get_many(requests.clone());
        let mut n = 0;
        while let Some((i, r)) = answers.next().await {
            let bytes = r.expect("member read").expect("member exists");
            assert_eq!(bytes.len(), args.member_size, "member {i}");
            n += 1;
        }
        assert_eq!(n, args.reads);
    })
    .await;
    row("ArchiveStore get_many (one merged batch)", &m);
    let archive_wall = m.wall;
    // The same archive ranges sent straight to the inner store: what ArchiveStore adds.
    let m = measure(&metered, args.repeat, || async {
        let answers: Vec<_> = store.inner().get_many(planned.clone()).collect().await;
        assert!(answers.iter().all(|(_, r)| matches!(r, Ok(Some(_)))));
    })
    .await;
    row(
        "ObjectStoreStore get_many of the same archive ranges (no ArchiveStore)",
        &m,
    );
    let m = measure(&metered, args.repeat, || async {
        let answers: Vec<_> = get_many_concurrent(&store, requests.clone())
            .collect()
            .await;
        assert!(answers.iter().all(|(_, r)| matches!(r, Ok(Some(_)))));
    })
    .await;
    row(
        &format!("ArchiveStore get per member ({} in flight)", args.budget),
        &m,
    );
    // Baseline: download every archive whole and extract the members with the zip crate.
    let m = measure(&metered, args.repeat.min(3), || async {
        let store = inner();
        let whole: Vec<Request> = keys.iter().map(|k| Request::whole(k.clone())).collect();
        let mut downloaded: Vec<Option<Bytes>> = vec![None; keys.len()];
        let mut answers = store.get_many(whole);
        while let Some((i, r)) = answers.next().await {
            downloaded[i] = r.expect("download");
        }
        let mut zips: Vec<zip::ZipArchive<Cursor<Bytes>>> = downloaded
            .into_iter()
            .map(|b| zip::ZipArchive::new(Cursor::new(b.expect("archive"))).expect("zip"))
            .collect();
        for (a, m) in &picks {
            let mut file = zips[*a].by_name(&member_name(*m)).expect("member");
            let mut out = Vec::with_capacity(args.member_size);
            file.read_to_end(&mut out).expect("extract");
            assert_eq!(out.len(), args.member_size);
        }
    })
    .await;
    row(
        "baseline: download the archives whole, extract (zip crate)",
        &m,
    );
    println!("{table}");
    println!();
    println!(
        "ArchiveStore speed-up over downloading the archives: {:.1}x",
        m.wall.as_secs_f64() / archive_wall.as_secs_f64()
    );
    println!();
    println!(
        "Per-request cost of this stack: (wall - L - P/B) / GETs = {:.0} us for the merged batch (client, S3 server and latency model share the machine's cores).",
        (archive_wall.as_secs_f64() - limit(payload).as_secs_f64()).max(0.0) * 1e6
            / runs.max(1) as f64
    );
    drop(server);
    Ok(())
}
