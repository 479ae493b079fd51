//! The embedded benchmark: strategies compared against the physical limit `L + P/B`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use comfy_table::{Table, presets::ASCII_MARKDOWN};
use futures::StreamExt;
use getmany::coalesce::{CoalescePolicy, MergeGap};
use getmany::s3_server::S3Server;
use getmany::wrap::{Latency, LatencyModel, Metrics};
use getmany::{IoBudget, ObjectStoreStore, Request, Store, get_many_concurrent};
use object_store::aws::AmazonS3Builder;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

const BUCKET: &str = "bench";
const KEYS: (&str, &str) = ("getmany-bench", "getmany-bench-secret");

/// Options of `getmany bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Simulated round trip per request, in milliseconds (the latency model).
    #[arg(long, default_value_t = 10.0)]
    rtt_ms: f64,
    /// Simulated bandwidth in MB/s shared by all requests (default: the server's own).
    #[arg(long)]
    bandwidth_mbps: Option<f64>,
    /// Repetitions of each measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Reads in flight (the store's I/O budget).
    #[arg(long, default_value_t = IoBudget::DEFAULT_LIMIT)]
    budget: usize,
    /// Also time one get per object in a loop for the 4,096-object scenario (~45 s at 10 ms).
    #[arg(long)]
    loop_all: bool,
    /// Also sweep the budget and the merge gap (the measurements behind the defaults).
    #[arg(long)]
    sweep: bool,
}

/// Everything one strategy run measured.
struct Measured {
    wall: Duration,
    reads: u64,
    heads: u64,
    fetched: u64,
    first: Duration,
}

struct Bench {
    args: BenchArgs,
    metered: Arc<Metrics<Latency<Arc<dyn ObjectStore>>>>,
    round_trip: Duration,
    bandwidth: f64,
    _server: S3Server,
}

impl Bench {
    fn store(&self, policy: CoalescePolicy, budget: usize) -> ObjectStoreStore {
        ObjectStoreStore::new(self.metered.clone())
            .with_policy(policy)
            .with_budget(IoBudget::new(budget))
    }

    fn limit(&self, payload: u64) -> Duration {
        self.round_trip + Duration::from_secs_f64(payload as f64 / self.bandwidth)
    }

    /// Runs `f` `repeat` times after one warm-up and returns the median run.
    async fn measure<F, Fut>(&self, repeat: usize, f: F) -> Measured
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = (u64, Duration)>,
    {
        f().await;
        let mut runs = Vec::new();
        for _ in 0..repeat.max(1) {
            self.metered.reset();
            let started = Instant::now();
            let (_, first) = f().await;
            let wall = started.elapsed();
            let m = self.metered.snapshot();
            runs.push(Measured {
                wall,
                reads: m.reads,
                heads: m.heads,
                fetched: m.bytes,
                first,
            });
        }
        runs.sort_by_key(|m| m.wall);
        runs.swap_remove(runs.len() / 2)
    }
}

/// Reads `requests` with `get_many` and checks every answer is present; returns the bytes
/// delivered and the time to the first answer.
async fn drain<S: Store + ?Sized>(
    store: &S,
    requests: Vec<Request>,
    concurrent: bool,
) -> (u64, Duration) {
    let n = requests.len();
    let started = Instant::now();
    let mut stream = if concurrent {
        get_many_concurrent(store, requests)
    } else {
        store.get_many(requests)
    };
    let mut first = None;
    let mut bytes = 0;
    let mut answered = 0;
    while let Some((index, result)) = stream.next().await {
        first.get_or_insert_with(|| started.elapsed());
        match result {
            Ok(Some(b)) => bytes += b.len() as u64,
            other => panic!("request {index} failed in the benchmark: {other:?}"),
        }
        answered += 1;
    }
    assert_eq!(answered, n, "every request answered");
    (bytes, first.unwrap_or_default())
}

async fn one_by_one<S: Store + ?Sized>(store: &S, requests: &[Request]) -> (u64, Duration) {
    let started = Instant::now();
    let mut first = None;
    let mut bytes = 0;
    for r in requests {
        let b = store
            .get(&r.key, r.range.clone())
            .await
            .expect("benchmark read")
            .expect("benchmark object exists");
        first.get_or_insert_with(|| started.elapsed());
        bytes += b.len() as u64;
    }
    (bytes, first.unwrap_or_default())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn row(table: &mut Table, name: &str, m: &Measured, asked: u64, limit: Duration) {
    table.add_row(vec![
        name.to_string(),
        m.reads.to_string(),
        m.heads.to_string(),
        format!("{:.2} MB", asked as f64 / 1e6),
        format!("{:.2} MB", m.fetched as f64 / 1e6),
        ms(m.first),
        ms(m.wall),
        format!("{:.2}", m.wall.as_secs_f64() / limit.as_secs_f64()),
    ]);
}

fn new_table() -> Table {
    let mut t = Table::new();
    t.load_preset(ASCII_MARKDOWN);
    t.set_header(vec![
        "strategy",
        "GETs",
        "HEADs",
        "bytes asked",
        "bytes fetched",
        "first result",
        "wall (median)",
        "wall / (L + P/B)",
    ]);
    t
}

pub async fn run(args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
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
                object_store::ClientOptions::new().with_pool_max_idle_per_host(1024),
            )
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .build()?,
    );
    let mut model = LatencyModel::round_trip(Duration::from_secs_f64(args.rtt_ms / 1e3));
    if let Some(mbps) = args.bandwidth_mbps {
        model = model.with_bandwidth(mbps * 1e6);
    }
    let metered = Arc::new(Metrics::new(Latency::new(client, model)));

    println!("# getmany bench");
    println!();
    println!(
        "Embedded S3 server (s3s over object_store InMemory, SigV4, TCP_NODELAY) at {}, behind the latency model: round trip {} ms{}, I/O budget {}.",
        server.url(),
        args.rtt_ms,
        args.bandwidth_mbps
            .map(|b| format!(", bandwidth {b} MB/s"))
            .unwrap_or_default(),
        args.budget
    );

    // Data: the 4,096 small objects, the packed objects, and two probes.
    let small: Vec<String> = (0..4096).map(|i| format!("small/{i:05}")).collect();
    let payload16k = Bytes::from(vec![0x5a; 16 * 1024]);
    futures::stream::iter(small.iter())
        .for_each_concurrent(64, |k| {
            let backend = backend.clone();
            let value = payload16k.clone();
            async move {
                backend
                    .put(&k.as_str().into(), PutPayload::from_bytes(value))
                    .await
                    .expect("put into memory");
            }
        })
        .await;
    // Packed: 10 objects of 100 slots of 16 KiB; sparse: 10 objects of 200 slots.
    for (name, slots) in [("packed", 100u64), ("sparse", 200)] {
        for o in 0..10u64 {
            let data: Vec<u8> = (0..slots * 16 * 1024)
                .map(|i| (i as u8) ^ (o as u8))
                .collect();
            backend
                .put(&format!("{name}/{o}").into(), PutPayload::from(data))
                .await?;
        }
    }
    backend
        .put(&"probe/one".into(), PutPayload::from(vec![1u8]))
        .await?;
    backend
        .put(&"probe/big".into(), PutPayload::from(vec![2u8; 64 << 20]))
        .await?;

    // Measure L (one 1-byte GET) and B (one 64 MiB GET) through the whole stack.
    let probe = ObjectStoreStore::new(metered.clone());
    let (round_trip, bandwidth) =
        crate::link::measure_link(&probe, "probe/one", "probe/big", 64 << 20, 5).await?;
    println!(
        "Measured through the stack: L = {} (median of 21 one-byte GETs), B = {:.0} MB/s (one 64 MiB GET, median of 5).",
        ms(round_trip),
        bandwidth / 1e6
    );
    println!();

    let bench = Bench {
        args,
        metered,
        round_trip,
        bandwidth,
        _server: server,
    };
    let budget = bench.args.budget;
    let repeat = bench.args.repeat;

    // Scenario 1: 4,096 whole 16 KiB objects.
    let requests: Vec<Request> = small.iter().map(|k| Request::whole(k.clone())).collect();
    let payload = 4096 * 16 * 1024;
    let limit = bench.limit(payload);
    let rounds = 4096u64.div_ceil(budget as u64);
    let rounds_limit = bench.round_trip * rounds as u32
        + Duration::from_secs_f64(payload as f64 / bench.bandwidth);
    println!(
        "## 4,096 whole objects of 16 KiB (P = {:.1} MB): L + P/B = {}; ceil(4096/{budget})·L + P/B = {}",
        payload as f64 / 1e6,
        ms(limit),
        ms(rounds_limit)
    );
    println!();
    let mut table = new_table();
    let store = bench.store(CoalescePolicy::default(), budget);
    if bench.args.loop_all {
        let m = bench.measure(1, || one_by_one(&store, &requests)).await;
        row(
            &mut table,
            "one get per object, in a loop",
            &m,
            payload,
            limit,
        );
    }
    let m = bench
        .measure(repeat, || drain(&store, requests.clone(), true))
        .await;
    row(
        &mut table,
        &format!("default get_many ({budget} in flight)"),
        &m,
        payload,
        limit,
    );
    let default_wall = m.wall;
    let m = bench
        .measure(repeat, || drain(&store, requests.clone(), false))
        .await;
    row(
        &mut table,
        "coalescing get_many (ObjectStoreStore)",
        &m,
        payload,
        limit,
    );
    println!("{table}");
    println!();
    println!(
        "default get_many / (ceil(4096/{budget})·L + P/B) = {:.2}",
        default_wall.as_secs_f64() / rounds_limit.as_secs_f64()
    );
    println!();

    // Scenario 2: 1,000 ranges of 16 KiB packed in 10 objects, in shuffled order.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut shuffle = |v: &mut Vec<Request>| {
        for i in (1..v.len()).rev() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            v.swap(i, (rng % (i as u64 + 1)) as usize);
        }
    };
    let slot = 16 * 1024u64;
    let mut requests: Vec<Request> = (0..10u64)
        .flat_map(|o| {
            (0..100u64)
                .map(move |s| Request::range(format!("packed/{o}"), s * slot..(s + 1) * slot))
        })
        .collect();
    shuffle(&mut requests);
    // For the gap sweep: 100 random slots of the 200 of each sparse object.
    let mut sparse: Vec<Request> = Vec::new();
    for o in 0..10u64 {
        let mut slots: Vec<Request> = (0..200u64)
            .map(|s| Request::range(format!("sparse/{o}"), s * slot..(s + 1) * slot))
            .collect();
        shuffle(&mut slots);
        sparse.extend(slots.into_iter().take(100));
    }
    let payload = 1000 * 16 * 1024;
    let limit = bench.limit(payload);
    println!(
        "## 1,000 ranges of 16 KiB packed in 10 objects, shuffled (P = {:.1} MB): L + P/B = {}",
        payload as f64 / 1e6,
        ms(limit)
    );
    println!();
    let mut table = new_table();
    let m = bench.measure(1, || one_by_one(&store, &requests)).await;
    row(
        &mut table,
        "one get per range, in a loop",
        &m,
        payload,
        limit,
    );
    let loop_wall = m.wall;
    let m = bench
        .measure(repeat, || drain(&store, requests.clone(), true))
        .await;
    row(
        &mut table,
        &format!("default get_many ({budget} in flight)"),
        &m,
        payload,
        limit,
    );
    let m = bench
        .measure(repeat, || drain(&store, requests.clone(), false))
        .await;
    row(
        &mut table,
        "coalescing get_many (ObjectStoreStore)",
        &m,
        payload,
        limit,
    );
    let coalesced = m.wall;
    println!("{table}");
    println!();
    println!(
        "coalescing speed-up over the loop: {:.1}x",
        loop_wall.as_secs_f64() / coalesced.as_secs_f64()
    );
    println!();

    if bench.args.sweep {
        sweep(&bench, &small, &sparse).await;
    }
    Ok(())
}

/// The measurements behind the defaults: budget for many small objects, gap for ranges.
async fn sweep(bench: &Bench, small: &[String], ranges: &[Request]) {
    let repeat = bench.args.repeat;
    println!("## Sweep: I/O budget, 4,096 whole objects of 16 KiB");
    println!();
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN);
    table.set_header(vec![
        "budget",
        "GETs",
        "wall (median)",
        "ceil(4096/C)·L + P/B",
    ]);
    let requests: Vec<Request> = small.iter().map(|k| Request::whole(k.clone())).collect();
    let payload = 4096 * 16 * 1024u64;
    for budget in [8usize, 16, 32, 64, 128, 256] {
        let store = bench.store(CoalescePolicy::default(), budget);
        let m = bench
            .measure(repeat, || drain(&store, requests.clone(), false))
            .await;
        let rounds = 4096u64.div_ceil(budget as u64) as u32;
        let reference =
            bench.round_trip * rounds + Duration::from_secs_f64(payload as f64 / bench.bandwidth);
        table.add_row(vec![
            budget.to_string(),
            m.reads.to_string(),
            ms(m.wall),
            ms(reference),
        ]);
    }
    println!("{table}");
    println!();

    println!(
        "## Sweep: merge gap, 1,000 ranges of 16 KiB: 100 random slots of 200 in each of 10 objects"
    );
    println!();
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN);
    table.set_header(vec![
        "max_gap",
        "max_merged",
        "GETs",
        "bytes fetched / asked",
        "wall (median)",
    ]);
    let asked = 1000 * 16 * 1024u64;
    let gaps = [
        ("never", MergeGap::Never),
        ("0", MergeGap::Within(0)),
        ("16 KiB", MergeGap::Within(16 << 10)),
        ("64 KiB", MergeGap::Within(64 << 10)),
        ("1 MiB", MergeGap::Within(1 << 20)),
    ];
    for (name, gap) in gaps {
        for max_merged in [1u64 << 20, 16 << 20] {
            let policy = CoalescePolicy {
                max_gap: gap,
                max_merged,
                ..CoalescePolicy::default()
            };
            let store = bench.store(policy, bench.args.budget);
            let m = bench
                .measure(repeat, || drain(&store, ranges.to_vec(), false))
                .await;
            table.add_row(vec![
                name.to_string(),
                format!("{} MiB", max_merged >> 20),
                m.reads.to_string(),
                format!("{:.2}", m.fetched as f64 / asked as f64),
                ms(m.wall),
            ]);
        }
    }
    println!("{table}");
    println!();

    println!("## Sweep: split size, one 64 MiB read");
    println!();
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN);
    table.set_header(vec![
        "split_size",
        "GETs",
        "wall (median)",
        "wall / (L + P/B)",
    ]);
    let big = vec![Request::range("probe/big", 0..64 << 20)];
    for (name, split) in [
        ("none", u64::MAX),
        ("32 MiB", 32 << 20),
        ("16 MiB", 16 << 20),
        ("8 MiB", 8 << 20),
        ("4 MiB", 4 << 20),
    ] {
        let policy = CoalescePolicy {
            split_size: split,
            ..CoalescePolicy::default()
        };
        let store = bench.store(policy, bench.args.budget);
        let m = bench
            .measure(repeat, || drain(&store, big.clone(), false))
            .await;
        table.add_row(vec![
            name.to_string(),
            m.reads.to_string(),
            ms(m.wall),
            format!(
                "{:.2}",
                m.wall.as_secs_f64() / bench.limit(64 << 20).as_secs_f64()
            ),
        ]);
    }
    println!("{table}");
}
