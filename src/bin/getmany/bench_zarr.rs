//! `getmany bench-zarr`: the zarr reader (one `get_many` per round, merged ranges) against
//! one request per chunk, on a 2048x2048 float32 array in 64x64 chunks, plain and sharded
//! (512x512 shards), behind a 10 ms round trip. And `getmany s3-serve`, which serves the same
//! arrays (or a directory) for other clients, optionally behind the TCP delay proxy.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use comfy_table::{Table, presets::ASCII_MARKDOWN};
use getmany::coalesce::CoalescePolicy;
use getmany::s3_server::S3Server;
use getmany::wrap::{Latency, LatencyModel, Metrics};
use getmany::zarr::Array;
use getmany::{IoBudget, ObjectStoreStore, Store};
use object_store::aws::AmazonS3Builder;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::proxy::DelayProxy;

type BoxError = Box<dyn std::error::Error>;

const BUCKET: &str = "zarr";
const KEYS: (&str, &str) = ("getmany-zarr", "getmany-zarr-secret");
/// The array is SIDE x SIDE float32.
const SIDE: u64 = 2048;
/// Chunks (and inner chunks) are CHUNK x CHUNK.
const CHUNK: u64 = 64;
/// Shards are SHARD x SHARD.
const SHARD: u64 = 512;

/// The value stored at `(row, col)`: exact in f32 for every element of the array.
fn value(row: u64, col: u64) -> f32 {
    (row * SIDE + col) as f32
}

fn metadata(chunk: u64, codecs: &str) -> String {
    format!(
        r#"{{"zarr_format": 3, "node_type": "array", "shape": [{SIDE}, {SIDE}],
 "data_type": "float32", "fill_value": 0.0,
 "chunk_grid": {{"name": "regular", "configuration": {{"chunk_shape": [{chunk}, {chunk}]}}}},
 "chunk_key_encoding": {{"name": "default", "configuration": {{"separator": "/"}}}},
 "codecs": {codecs}, "attributes": {{}}}}"#
    )
}

/// The little-endian bytes of the `CHUNK` x `CHUNK` chunk whose first element is at
/// `(row, col)`.
fn chunk_bytes(row: u64, col: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity((CHUNK * CHUNK * 4) as usize);
    for r in row..row + CHUNK {
        for c in col..col + CHUNK {
            out.extend_from_slice(&value(r, c).to_le_bytes());
        }
    }
    out
}

/// Writes the two benchmark arrays: `dense` (one object per 64x64 chunk, 16 KiB each) and
/// `sharded` (512x512 shards of 64 inner chunks, index at the end with crc32c), both
/// uncompressed, as zarr-python would write them.
pub async fn write_arrays(backend: &dyn ObjectStore) -> Result<(), BoxError> {
    let bytes = r#"[{"name": "bytes", "configuration": {"endian": "little"}}]"#;
    put(
        backend,
        "dense/zarr.json",
        metadata(CHUNK, bytes).into_bytes(),
    )
    .await?;
    let grid = SIDE / CHUNK;
    for i in 0..grid {
        for j in 0..grid {
            let key = format!("dense/c/{i}/{j}");
            put(backend, &key, chunk_bytes(i * CHUNK, j * CHUNK)).await?;
        }
    }
    let sharding = format!(
        r#"[{{"name": "sharding_indexed", "configuration": {{"chunk_shape": [{CHUNK}, {CHUNK}],
  "codecs": {bytes},
  "index_codecs": [{{"name": "bytes", "configuration": {{"endian": "little"}}}}, {{"name": "crc32c"}}],
  "index_location": "end"}}}}]"#
    );
    put(
        backend,
        "sharded/zarr.json",
        metadata(SHARD, &sharding).into_bytes(),
    )
    .await?;
    let per_shard = SHARD / CHUNK;
    for si in 0..SIDE / SHARD {
        for sj in 0..SIDE / SHARD {
            let mut shard = Vec::new();
            let mut index = Vec::new();
            for ii in 0..per_shard {
                for ij in 0..per_shard {
                    let chunk = chunk_bytes(si * SHARD + ii * CHUNK, sj * SHARD + ij * CHUNK);
                    index.extend_from_slice(&(shard.len() as u64).to_le_bytes());
                    index.extend_from_slice(&(chunk.len() as u64).to_le_bytes());
                    shard.extend_from_slice(&chunk);
                }
            }
            let crc = crc32c::crc32c(&index);
            shard.extend_from_slice(&index);
            shard.extend_from_slice(&crc.to_le_bytes());
            put(backend, &format!("sharded/c/{si}/{sj}"), shard).await?;
        }
    }
    Ok(())
}

async fn put(backend: &dyn ObjectStore, key: &str, data: Vec<u8>) -> Result<(), BoxError> {
    backend.put(&key.into(), PutPayload::from(data)).await?;
    Ok(())
}

/// Copies every file under `dir` into `backend`, keyed by its path below `dir`.
async fn load_dir(backend: &dyn ObjectStore, dir: &Path) -> Result<usize, BoxError> {
    let mut stack = vec![dir.to_path_buf()];
    let mut n = 0;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let key = path.strip_prefix(dir)?.to_string_lossy().replace('\\', "/");
            put(backend, &key, std::fs::read(&path)?).await?;
            n += 1;
        }
    }
    Ok(n)
}

async fn start_server(backend: Arc<dyn ObjectStore>) -> Result<S3Server, BoxError> {
    let addr: SocketAddr = "127.0.0.1:0".parse()?;
    let keys = Some((KEYS.0.to_string(), KEYS.1.to_string()));
    Ok(S3Server::start(backend, BUCKET, addr, keys).await?)
}

fn client(url: &str) -> Result<Arc<dyn ObjectStore>, BoxError> {
    Ok(Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(url)
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id(KEYS.0)
            .with_secret_access_key(KEYS.1)
            // Client options first: they carry allow_http, which must not be reset.
            .with_client_options(
                object_store::ClientOptions::new().with_pool_max_idle_per_host(1024),
            )
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .build()?,
    ))
}

/// How the round trip is simulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// The `Latency` wrapper at the object_store level (each GET waits one round trip).
    Model,
    /// The TCP delay proxy between the client and the server (rtt/2 each way).
    Proxy,
}

/// Options of `getmany bench-zarr`.
#[derive(Debug, Args)]
pub struct BenchZarrArgs {
    /// Simulated round trip, in milliseconds.
    #[arg(long, default_value_t = 10.0)]
    rtt_ms: f64,
    /// How the round trip is simulated.
    #[arg(long, value_enum, default_value_t = Via::Model)]
    via: Via,
    /// Repetitions of each measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Reads in flight (the store's I/O budget).
    #[arg(long, default_value_t = IoBudget::DEFAULT_LIMIT)]
    budget: usize,
    /// Skip the one-request-at-a-time loop (about 1.3 s per run at 10 ms).
    #[arg(long)]
    no_loop: bool,
}

/// Which reader options a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The defaults: exactly two rounds for a sharded array.
    Cold,
    /// Shard indexes cached by the warm-up read.
    Warm,
    /// Covered shards read whole in the index round.
    Whole,
}

/// One strategy's median run.
struct Measured {
    wall: Duration,
    rounds: u64,
    gets: u64,
    fetched: u64,
}

struct Bench {
    backend: Arc<Metrics<Arc<dyn ObjectStore>>>,
    round_trip: Duration,
    bandwidth: f64,
    repeat: usize,
    budget: usize,
}

impl Bench {
    fn store(&self, policy: CoalescePolicy) -> Metrics<ObjectStoreStore> {
        Metrics::new(
            ObjectStoreStore::new(self.backend.clone())
                .with_policy(policy)
                .with_budget(IoBudget::new(self.budget)),
        )
    }

    fn limit(&self, rounds: u32, payload: u64) -> Duration {
        self.round_trip * rounds + Duration::from_secs_f64(payload as f64 / self.bandwidth)
    }

    /// Reads `selection` of `path` with the zarr reader over `store`: one warm-up (checked
    /// element by element), then the median of `repeat` runs.
    async fn zarr_read(
        &self,
        store: &Metrics<ObjectStoreStore>,
        path: &str,
        selection: &[Range<u64>],
        mode: Mode,
    ) -> Result<Measured, BoxError> {
        let mut array = Array::open(store, path).await?;
        if mode == Mode::Whole {
            array = array.with_whole_shard_reads();
        }
        if mode == Mode::Warm {
            // The warm-up read fills the cache; the measured reads skip the index round.
            array = array.with_index_cache();
        }
        let read = array.read::<f32>(selection).await?;
        check(&read.data, selection)?;
        if !read.failures.is_empty() {
            return Err(format!("{path}: {:?}", read.failures).into());
        }
        let mut runs = Vec::new();
        for _ in 0..self.repeat.max(1) {
            store.reset();
            self.backend.reset();
            let started = Instant::now();
            let read = array.read::<f32>(selection).await?;
            let wall = started.elapsed();
            if !read.failures.is_empty() {
                return Err(format!("{path}: {:?}", read.failures).into());
            }
            let b = self.backend.snapshot();
            runs.push(Measured {
                wall,
                rounds: store.snapshot().get_many_calls,
                gets: b.reads,
                fetched: b.bytes,
            });
        }
        runs.sort_by_key(|m| m.wall);
        Ok(runs.swap_remove(runs.len() / 2))
    }

    /// One `get` at a time per chunk of the dense array (no decode: a lower bound for a
    /// serial reader).
    async fn serial_loop(&self, selection: &[Range<u64>]) -> Result<Measured, BoxError> {
        let store = ObjectStoreStore::new(self.backend.clone());
        self.backend.reset();
        let started = Instant::now();
        for i in selection[0].start / CHUNK..selection[0].end.div_ceil(CHUNK) {
            for j in selection[1].start / CHUNK..selection[1].end.div_ceil(CHUNK) {
                store
                    .get(&format!("dense/c/{i}/{j}"), None)
                    .await?
                    .ok_or("missing chunk")?;
            }
        }
        let b = self.backend.snapshot();
        Ok(Measured {
            wall: started.elapsed(),
            rounds: 0,
            gets: b.reads,
            fetched: b.bytes,
        })
    }
}

/// Every element of a read equals the value written.
fn check(data: &[f32], selection: &[Range<u64>]) -> Result<(), BoxError> {
    let cols = selection[1].end - selection[1].start;
    for (i, v) in data.iter().enumerate() {
        let (r, c) = (i as u64 / cols, i as u64 % cols);
        let want = value(selection[0].start + r, selection[1].start + c);
        if *v != want {
            return Err(format!("element ({r}, {c}) read {v}, expected {want}").into());
        }
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

pub async fn run(args: BenchZarrArgs) -> Result<(), BoxError> {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    write_arrays(memory.as_ref()).await?;
    put(memory.as_ref(), "probe/one", vec![1]).await?;
    put(memory.as_ref(), "probe/big", vec![2; 64 << 20]).await?;
    let server = start_server(memory).await?;
    let rtt = Duration::from_secs_f64(args.rtt_ms / 1e3);
    let (link, how): (Arc<dyn ObjectStore>, String) = match args.via {
        _ if rtt.is_zero() => (client(&server.url())?, "no added delay".to_string()),
        Via::Model => (
            Arc::new(Latency::new(
                client(&server.url())?,
                LatencyModel::round_trip(rtt),
            )),
            format!(
                "the Latency wrapper at the object_store level ({} ms per GET)",
                args.rtt_ms
            ),
        ),
        Via::Proxy => {
            let proxy = DelayProxy::start(server.local_addr(), rtt)?;
            let how = format!(
                "a TCP delay proxy at {} ({} ms round trip)",
                proxy.url(),
                args.rtt_ms
            );
            (client(&proxy.url())?, how)
        }
    };
    let backend = Arc::new(Metrics::new(link));

    // L: one 1-byte GET; B: one 64 MiB GET; both through the whole stack.
    let probe = ObjectStoreStore::new(backend.clone());
    let (round_trip, bandwidth) =
        crate::link::measure_link(&probe, "probe/one", "probe/big", 64 << 20, 5).await?;

    println!("# getmany bench-zarr");
    println!();
    println!(
        "2048x2048 float32, 64x64 chunks (1,024 objects of 16 KiB) and the same in 512x512 shards (16 objects of 1 MiB, 64 inner chunks each, index at the end). Embedded S3 server (s3s over object_store InMemory, TCP_NODELAY) at {}, behind {how}; I/O budget {}.",
        server.url(),
        args.budget
    );
    println!(
        "Measured through the stack: L = {} (median of 21 one-byte GETs), B = {:.0} MB/s (one 64 MiB GET, median of 5).",
        ms(round_trip),
        bandwidth / 1e6
    );
    println!();

    let bench = Bench {
        backend,
        round_trip,
        bandwidth,
        repeat: args.repeat,
        budget: args.budget,
    };
    let coalescing = bench.store(CoalescePolicy::default());
    let per_chunk = bench.store(CoalescePolicy::never_merge());
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN);
    table.set_header(vec![
        "array",
        "selection",
        "reader",
        "get_many rounds",
        "GETs",
        "bytes fetched",
        "P'/P",
        "wall (median)",
        "limit",
        "wall / limit",
    ]);
    let selections: [(&str, Vec<Range<u64>>); 2] = [
        ("full", vec![0..SIDE, 0..SIDE]),
        ("256-row band", vec![0..256, 0..SIDE]),
    ];
    let mut band_ratio = None;
    for (path, rounds) in [("dense", 1u32), ("sharded", 2)] {
        for (name, selection) in &selections {
            let payload: u64 = selection.iter().map(|r| r.end - r.start).product::<u64>() * 4;
            let limit = bench.limit(rounds, payload);
            let mut add = |reader: &str, m: &Measured| {
                // The limit of the rounds this reader needs at best (1 when warm).
                let rounds = rounds.min(m.rounds.max(1) as u32);
                let limit = bench.limit(rounds, payload);
                table.add_row(vec![
                    path.to_string(),
                    name.to_string(),
                    reader.to_string(),
                    m.rounds.to_string(),
                    m.gets.to_string(),
                    format!("{:.2} MB", m.fetched as f64 / 1e6),
                    format!("{:.3}", m.fetched as f64 / payload as f64),
                    ms(m.wall),
                    format!("{}L + P/B = {}", rounds, ms(limit)),
                    format!("{:.2}", m.wall.as_secs_f64() / limit.as_secs_f64()),
                ]);
            };
            let m = bench
                .zarr_read(&coalescing, path, selection, Mode::Cold)
                .await?;
            if path == "sharded" && *name != "full" {
                band_ratio = Some((m.wall, limit));
            }
            add("getmany zarr (merged ranges)", &m);
            if path == "sharded" {
                let m = bench
                    .zarr_read(&coalescing, path, selection, Mode::Whole)
                    .await?;
                add("getmany zarr, covered shards read whole", &m);
                let m = bench
                    .zarr_read(&coalescing, path, selection, Mode::Warm)
                    .await?;
                add("getmany zarr, shard indexes cached (warm)", &m);
            }
            let m = bench
                .zarr_read(&per_chunk, path, selection, Mode::Cold)
                .await?;
            add(
                &format!("one request per chunk ({} in flight)", args.budget),
                &m,
            );
            if path == "dense" && *name != "full" && !args.no_loop {
                let m = bench.serial_loop(selection).await?;
                add("one request per chunk, one at a time", &m);
            }
        }
    }
    println!("{table}");
    println!();
    if let Some((wall, limit)) = band_ratio {
        println!(
            "sharded 256-row band: {} against 2L + P/B = {}: {:.2}x (target: within 2x)",
            ms(wall),
            ms(limit),
            wall.as_secs_f64() / limit.as_secs_f64()
        );
    }
    Ok(())
}

/// Options of `getmany s3-serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Load every file under this directory into the bucket (keys = paths below it).
    #[arg(long)]
    dir: Vec<PathBuf>,
    /// Also write the bench-zarr arrays (`dense/`, `sharded/`).
    #[arg(long)]
    bench_arrays: bool,
    /// Put the TCP delay proxy with this round trip in front of the server (0: none).
    #[arg(long, default_value_t = 0.0)]
    rtt_ms: f64,
}

/// Serves an in-memory bucket over S3 until standard input closes; prints one JSON line with
/// the endpoint, bucket and keys so a script can connect.
pub async fn serve(args: ServeArgs) -> Result<(), BoxError> {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let mut files = 0;
    for dir in &args.dir {
        files += load_dir(memory.as_ref(), dir).await?;
    }
    if args.bench_arrays {
        write_arrays(memory.as_ref()).await?;
    }
    let server = start_server(memory).await?;
    let proxy = if args.rtt_ms > 0.0 {
        Some(DelayProxy::start(
            server.local_addr(),
            Duration::from_secs_f64(args.rtt_ms / 1e3),
        )?)
    } else {
        None
    };
    let endpoint = proxy.as_ref().map_or_else(|| server.url(), DelayProxy::url);
    println!(
        r#"{{"endpoint": "{endpoint}", "server": "{}", "bucket": "{BUCKET}", "access_key": "{}", "secret_key": "{}", "files": {files}, "rtt_ms": {}}}"#,
        server.url(),
        KEYS.0,
        KEYS.1,
        args.rtt_ms
    );
    // Until the parent closes our standard input: a line `reset` zeroes the server's request
    // counts, a line `counts` prints them as JSON (GETs are counted at the server, behind the
    // proxy, whatever the client).
    let server = Arc::new(server);
    let counted = server.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, Write};
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match line.trim() {
                "reset" => counted.reset_counts(),
                "counts" => {
                    let c = counted.counts();
                    println!(r#"{{"get": {}, "head": {}}}"#, c.get, c.head);
                }
                _ => {}
            }
            let _ = std::io::stdout().flush();
        }
    })
    .await?;
    drop(server);
    Ok(())
}
