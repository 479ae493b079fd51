//! `getmany bench-bundle`: BundleStore (both protocols) against the default concurrent
//! `get_many`, on the crate's bundle server behind a TCP delay proxy.
//!
//! The proxy delays each direction by half the round trip with one reader and one writer
//! thread per direction and connection, sleeping with the OS's precise timer (tokio's timer
//! rounds up to whole milliseconds). L and B are measured through it: one small GET, one
//! large GET.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use comfy_table::{Table, presets::ASCII_MARKDOWN};
use futures::StreamExt;
use getmany::server::BundleServer;
use getmany::{BundleStore, IoBudget, ObjectStoreStore, Request, Store, get_many_concurrent};
use object_store::aws::AmazonS3Builder;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

const BUCKET: &str = "bench";

/// Options of `getmany bench-bundle`.
#[derive(Debug, Args)]
pub struct BenchBundleArgs {
    /// Objects to read.
    #[arg(long, default_value_t = 4096)]
    objects: usize,
    /// Bytes per object.
    #[arg(long, default_value_t = 16 * 1024)]
    size: usize,
    /// Round trip injected by the proxy, in milliseconds (half each way).
    #[arg(long, default_value_t = 10.0)]
    rtt_ms: f64,
    /// Repetitions of each measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Reads in flight for the default concurrent get_many.
    #[arg(long, default_value_t = IoBudget::DEFAULT_LIMIT)]
    in_flight: usize,
    /// Bundles in flight for BundleStore (its default is 4).
    #[arg(long, default_value_t = 4)]
    bundles_in_flight: usize,
    /// Skip the default concurrent get_many (for profiling the bundle paths alone; the
    /// speed-up column then compares with the first strategy run).
    #[arg(long)]
    skip_default: bool,
}

/// A TCP proxy that delays every byte by `one_way` in each direction and counts the bytes
/// it forwards from the server.
struct DelayProxy {
    addr: SocketAddr,
    to_client: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl DelayProxy {
    fn start(upstream: SocketAddr, one_way: Duration) -> std::io::Result<DelayProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let to_client = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let counter = to_client.clone();
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                if client.set_nodelay(true).is_err() || server.set_nodelay(true).is_err() {
                    continue;
                }
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                pipe(client, s2, one_way, None);
                pipe(server, c2, one_way, Some(counter.clone()));
            }
        });
        Ok(DelayProxy {
            addr,
            to_client,
            stop,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn bytes_to_client(&self) -> u64 {
        self.to_client.load(Ordering::SeqCst)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Forwards `from` to `to`, each chunk held until `delay` after it was read. A reader and a
/// writer thread per direction; buffers go back to the reader once written, so the steady
/// state neither allocates nor zeroes memory.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration, count: Option<Arc<AtomicU64>>) {
    const CHUNK: usize = 256 * 1024;
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>, usize)>();
    let (give_back, take_back) = mpsc::channel::<Vec<u8>>();
    let spawn = |f: Box<dyn FnOnce() + Send>| {
        // Named, so a profile tells the proxy's CPU time from the client's and server's.
        let _ = std::thread::Builder::new()
            .name("delay-proxy".into())
            .spawn(f);
    };
    spawn(Box::new(move || {
        loop {
            let mut buf = take_back.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
            match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send((Instant::now() + delay, Vec::new(), 0));
                    return;
                }
                Ok(n) => {
                    if tx.send((Instant::now() + delay, buf, n)).is_err() {
                        return;
                    }
                }
            }
        }
    }));
    spawn(Box::new(move || {
        for (due, buf, len) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if len == 0 {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            if to.write_all(&buf[..len]).is_err() {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            if let Some(count) = &count {
                count.fetch_add(len as u64, Ordering::Relaxed);
            }
            let _ = give_back.send(buf);
        }
    }));
}

/// One timed run: wall time, time to the first answer, bytes from the server.
#[derive(Debug, Clone, Copy)]
struct Run {
    wall: Duration,
    first: Duration,
    wire_bytes: u64,
    requests: u64,
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by_key(|r| r.wall);
    runs[runs.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Reads every request and checks the answers; returns the time to the first answer.
async fn drain<S: Store + ?Sized>(
    store: &S,
    requests: Vec<Request>,
    size: usize,
    default_get_many: bool,
) -> Result<Duration, String> {
    let n = requests.len();
    let started = Instant::now();
    let mut stream = if default_get_many {
        get_many_concurrent(store, requests)
    } else {
        store.get_many(requests)
    };
    let mut first = None;
    let mut answered = 0;
    while let Some((index, result)) = stream.next().await {
        first.get_or_insert_with(|| started.elapsed());
        match result {
            Ok(Some(bytes)) if bytes.len() == size && bytes[0] == (index % 251) as u8 => {}
            other => return Err(format!("request {index}: unexpected answer {other:?}")),
        }
        answered += 1;
    }
    if answered != n {
        return Err(format!("{answered} of {n} answered"));
    }
    Ok(first.unwrap_or_default())
}

/// Runs the benchmark and prints its table.
pub async fn run(args: BenchBundleArgs) -> Result<(), Box<dyn std::error::Error>> {
    let backend = Arc::new(InMemory::new());
    for i in 0..args.objects {
        backend
            .put(
                &object_store::path::Path::from(format!("obj/{i:05}")),
                PutPayload::from(vec![(i % 251) as u8; args.size]),
            )
            .await?;
    }
    let payload = (args.objects * args.size) as u64;
    backend
        .put(
            &object_store::path::Path::from("tiny"),
            PutPayload::from_static(b"x"),
        )
        .await?;
    backend
        .put(
            &object_store::path::Path::from("large"),
            PutPayload::from(vec![1u8; payload as usize]),
        )
        .await?;
    let backend: Arc<dyn ObjectStore> = backend;
    let server = BundleServer::builder()
        .bucket(BUCKET, Arc::new(ObjectStoreStore::new(backend)))
        .start("127.0.0.1:0".parse()?)
        .await?;
    let one_way = Duration::from_secs_f64(args.rtt_ms / 2e3);
    let proxy = DelayProxy::start(server.local_addr(), one_way)?;
    println!(
        "getmany bench-bundle: {} objects of {} bytes, {} ms round trip injected by a TCP delay proxy ({} ms each way), {} repetitions (median)",
        args.objects,
        args.size,
        args.rtt_ms,
        args.rtt_ms / 2.0,
        args.repeat
    );

    // L and B, through the proxy, on a warm connection.
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let get = |key: &'static str| {
        let http = http.clone();
        let url = format!("{}/{BUCKET}/{key}", proxy.url());
        async move {
            let started = Instant::now();
            let body = http
                .get(url)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            Ok::<_, reqwest::Error>((started.elapsed(), body.len()))
        }
    };
    get("tiny").await?;
    let mut smalls = Vec::new();
    for _ in 0..21 {
        smalls.push(get("tiny").await?.0);
    }
    smalls.sort();
    let l = smalls[smalls.len() / 2];
    let mut larges = Vec::new();
    for _ in 0..5 {
        let (t, len) = get("large").await?;
        if len as u64 != payload {
            return Err("the large GET returned the wrong size".into());
        }
        larges.push(t);
    }
    larges.sort();
    let large = larges[larges.len() / 2];
    let transfer = large.saturating_sub(l).max(Duration::from_micros(1));
    let b = payload as f64 / transfer.as_secs_f64();
    let limit = l + Duration::from_secs_f64(payload as f64 / b);
    println!(
        "measured through the proxy: L = {} (one 1-byte GET), B = {:.0} MB/s (one {} MiB GET: {}), limit L + P/B = {} for P = {} MiB\n",
        ms(l),
        b / 1e6,
        payload >> 20,
        ms(large),
        ms(limit),
        payload >> 20
    );

    let requests: Vec<Request> = (0..args.objects)
        .map(|i| Request::whole(format!("obj/{i:05}")))
        .collect();
    let s3 = AmazonS3Builder::new()
        .with_endpoint(proxy.url())
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region("auto")
        .with_bucket_name(BUCKET)
        .with_skip_signature(true)
        .with_client_options(
            object_store::ClientOptions::new()
                .with_allow_http(true)
                .with_pool_max_idle_per_host(args.in_flight.max(1)),
        )
        .build()?;
    let concurrent = ObjectStoreStore::new(Arc::new(s3)).with_budget(IoBudget::new(args.in_flight));
    let tigris = BundleStore::tigris(proxy.url(), BUCKET)
        .bundles_in_flight(args.bundles_in_flight)
        .build()?;
    let aistore = BundleStore::aistore(proxy.url(), BUCKET)
        .bundles_in_flight(args.bundles_in_flight)
        .build()?;
    let tigris_one = BundleStore::tigris(proxy.url(), BUCKET)
        .min_keys_per_bundle(usize::MAX)
        .build()?;
    let aistore_one = BundleStore::aistore(proxy.url(), BUCKET)
        .min_keys_per_bundle(usize::MAX)
        .build()?;
    // What the defaults do with this batch (see BundleStoreBuilder::min_keys_per_bundle).
    let split = args
        .objects
        .div_ceil(5000)
        .max((args.objects / 256).clamp(1, args.bundles_in_flight.max(1)));
    let per_bundle = args.objects.div_ceil(split);

    let strategies: Vec<(String, &dyn Store, bool)> = vec![
        (
            format!("default get_many, {} in flight (S3 GETs)", args.in_flight),
            &concurrent,
            true,
        ),
        (
            format!("BundleStore, Tigris ({split} bundles of {per_bundle})"),
            &tigris,
            false,
        ),
        (
            format!("BundleStore, AIStore ({split} bundles of {per_bundle})"),
            &aistore,
            false,
        ),
        ("BundleStore, Tigris, one bundle".into(), &tigris_one, false),
        (
            "BundleStore, AIStore, one bundle".into(),
            &aistore_one,
            false,
        ),
    ];
    let mut results = Vec::new();
    for (name, store, default_get_many) in strategies
        .iter()
        .filter(|(_, _, default)| !(args.skip_default && *default))
    {
        // Warm-up: connections open, caches warm.
        drain(*store, requests.clone(), args.size, *default_get_many).await?;
        let mut runs = Vec::new();
        for _ in 0..args.repeat.max(1) {
            let bytes_before = proxy.bytes_to_client();
            let requests_before = server.stats().requests();
            let started = Instant::now();
            let first = drain(*store, requests.clone(), args.size, *default_get_many).await?;
            let wall = started.elapsed();
            runs.push(Run {
                wall,
                first,
                wire_bytes: proxy.bytes_to_client() - bytes_before,
                requests: server.stats().requests() - requests_before,
            });
        }
        results.push((name.clone(), median(runs)));
    }

    let baseline = results[0].1.wall;
    let mut table = Table::new();
    table.load_preset(ASCII_MARKDOWN);
    table.set_header(vec![
        "strategy",
        "wall (median)",
        "first answer",
        "requests R",
        "P'/P (wire)",
        "wall / (L+P/B)",
        "speed-up vs default",
    ]);
    for (name, run) in &results {
        table.add_row(vec![
            name.clone(),
            ms(run.wall),
            ms(run.first),
            run.requests.to_string(),
            format!("{:.3}", run.wire_bytes as f64 / payload as f64),
            format!("{:.2}", run.wall.as_secs_f64() / limit.as_secs_f64()),
            format!("{:.1}x", baseline.as_secs_f64() / run.wall.as_secs_f64()),
        ]);
    }
    println!("{table}");
    println!(
        "\nP'/P counts every byte the proxy forwarded to the client (HTTP headers, tar headers and padding included)."
    );
    for (name, run) in results.iter().skip(usize::from(!args.skip_default)).take(2) {
        let ratio = run.wall.as_secs_f64() / limit.as_secs_f64();
        let speedup = baseline.as_secs_f64() / run.wall.as_secs_f64();
        println!(
            "{name}: {:.2}x the limit (target <= 1.5: {}), {:.1}x faster than the default (target >= 5: {})",
            ratio,
            if ratio <= 1.5 { "met" } else { "NOT met" },
            speedup,
            if speedup >= 5.0 { "met" } else { "NOT met" }
        );
    }
    drop(proxy);
    Ok(())
}
