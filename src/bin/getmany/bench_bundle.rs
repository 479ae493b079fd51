//! `getmany bench-bundle`: BundleStore (both protocols) against the default concurrent
//! `get_many`, on the crate's bundle server behind a TCP delay proxy.
//!
//! The proxy delays each direction by half the round trip with one reader and one writer
//! thread per direction and connection, sleeping with the OS's precise timer (tokio's timer
//! rounds up to whole milliseconds). L and B are measured through it: one small GET, one
//! large GET.
//!
//! What the bundle server serves (`--backend`): an in-memory bucket (`memory`), the objects
//! as files of a temporary directory read by `DirStore` (`dir`, what `getmany serve --root`
//! does), or an in-process S3 server reached through `ObjectStoreStore` over
//! `object_store`'s S3 client behind a second delay proxy of `--backend-rtt-ms` (`s3`, what
//! `getmany serve --url s3://...` does next to its object store). With `s3` the baseline's
//! concurrent GETs go straight to S3 (a second S3 server over the same objects), through a
//! proxy of the client's round trip: the client reading the objects itself.
//!
//! `--backend-budget` is the served store's I/O budget (`getmany serve --backend-budget`).
//! `--backend-link late` replaces the proxy between the bundle server and S3 by an S3 server
//! that answers each request a round trip late (see `late.rs`); `--delay request` puts a
//! proxy's whole round trip on the way to the server. Both keep the timing and cut the
//! harness's own CPU, which on this machine comes out of the cores the client and servers
//! share (docs/bundle-speed.md has the figures). B is measured on a second bucket held in
//! memory, so it is the link's and not one reader's of the backend; the CPU column is the
//! whole process's user + system time per run.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use comfy_table::{Table, presets::ASCII_MARKDOWN};
use futures::StreamExt;
use getmany::s3_server::S3Server;
use getmany::server::BundleServer;
use getmany::{
    BundleStore, DirStore, IoBudget, ObjectStoreStore, Request, Store, get_many_concurrent,
};
use object_store::aws::AmazonS3Builder;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

const BUCKET: &str = "bench";
/// A second bucket, always in memory, holding the objects that measure the link's B (and
/// its L without the backend).
const LINK: &str = "link";

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
    /// What the bundle server reads from: an in-memory bucket, a directory (DirStore), or an
    /// S3 server behind a second delay proxy (ObjectStoreStore over object_store's S3
    /// client).
    #[arg(long, value_enum, default_value_t = Backend::Memory)]
    backend: Backend,
    /// The served store's I/O budget: reads in flight (DirStore: batches of up to 64 files
    /// in flight). Default: what `getmany serve` uses for that kind of store.
    #[arg(long, value_parser = crate::serve::parse_budget)]
    backend_budget: Option<usize>,
    /// With `--backend s3`: the round trip between the bundle server and S3, in
    /// milliseconds (0: S3 on loopback, nothing between).
    #[arg(long, default_value_t = 1.0)]
    backend_rtt_ms: f64,
    /// Where the proxies put the round trip: half each way (`both`), or all of it on the
    /// way to the server with responses forwarded at once (`request`: the same timing for
    /// HTTP, whose every response answers a request, with one thread and two thread
    /// hand-offs fewer per exchange; the proxies' CPU is the network's, which this machine
    /// pays out of the same 2 cores).
    #[arg(long, value_enum, default_value_t = Delay::Both)]
    delay: Delay,
    /// With `--backend s3`: how the round trip between the bundle server and S3 is made: a
    /// TCP delay proxy (`proxy`), or the S3 server answering each request
    /// `--backend-rtt-ms` late, timed by one thread's precise sleep, with no proxy between
    /// (`late`: the same timing for request/response traffic without the proxy's two extra
    /// copies and thread hand-offs per GET on the shared cores).
    #[arg(long, value_enum, default_value_t = BackendLink::Proxy)]
    backend_link: BackendLink,
    /// How the delay proxies are built: a thread per direction and connection (`threads`),
    /// or tasks of one runtime on one thread, pieces timed by a thread with precise sleeps
    /// (`async`: no thread per connection).
    #[arg(long, value_enum, default_value_t = ProxyKind::Threads)]
    proxy: ProxyKind,
}

/// How a delay proxy is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProxyKind {
    /// Two threads per direction and connection.
    Threads,
    /// One thread for every connection, plus a timer thread per direction.
    Async,
}

/// A delay proxy of either kind.
enum Proxy {
    Threads(DelayProxy),
    Async(crate::async_proxy::AsyncDelayProxy),
}

impl Proxy {
    fn start(
        kind: ProxyKind,
        upstream: SocketAddr,
        rtt: Duration,
        delay: Delay,
    ) -> std::io::Result<Proxy> {
        Ok(match kind {
            ProxyKind::Threads => Proxy::Threads(DelayProxy::start(upstream, rtt, delay)?),
            ProxyKind::Async => {
                let (up, down) = match delay {
                    Delay::Both => (rtt / 2, rtt / 2),
                    Delay::Request => (rtt, Duration::ZERO),
                };
                Proxy::Async(crate::async_proxy::AsyncDelayProxy::start(
                    upstream, up, down,
                )?)
            }
        })
    }

    fn url(&self) -> String {
        match self {
            Proxy::Threads(p) => p.url(),
            Proxy::Async(p) => p.url(),
        }
    }

    fn bytes_to_client(&self) -> u64 {
        match self {
            Proxy::Threads(p) => p.bytes_to_client(),
            Proxy::Async(p) => p.bytes_to_client(),
        }
    }
}

/// How the bundle server's round trip to S3 is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendLink {
    /// A TCP delay proxy.
    Proxy,
    /// The S3 server answers each request a round trip late.
    Late,
}

/// Where a proxy puts the round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Delay {
    /// Half the round trip each way: one reader and one writer thread per direction.
    Both,
    /// The whole round trip on the way to the server (a reader and a writer thread);
    /// responses forwarded at once by one thread.
    Request,
}

/// What the bundle server reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// `ObjectStoreStore` over object_store's `InMemory`.
    Memory,
    /// `DirStore` over a temporary directory (files in the page cache).
    Dir,
    /// `ObjectStoreStore` over object_store's S3 client, to an in-process S3 server behind a
    /// delay proxy of `--backend-rtt-ms`.
    S3,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Dir => "dir",
            Backend::S3 => "s3",
        }
    }
}

/// A TCP proxy that delays every byte by a round trip ([`Delay`] says where) and counts the
/// bytes it forwards from the server.
struct DelayProxy {
    addr: SocketAddr,
    to_client: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl DelayProxy {
    fn start(upstream: SocketAddr, rtt: Duration, delay: Delay) -> std::io::Result<DelayProxy> {
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
                match delay {
                    Delay::Both => {
                        pipe(client, s2, rtt / 2, None);
                        pipe(server, c2, rtt / 2, Some(counter.clone()));
                    }
                    Delay::Request => {
                        pipe(client, s2, rtt, None);
                        pass(server, c2, counter.clone());
                    }
                }
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

/// Forwards `from` to `to` as it arrives, counting the bytes, in one thread.
fn pass(mut from: TcpStream, mut to: TcpStream, count: Arc<AtomicU64>) {
    let _ = std::thread::Builder::new()
        .name("delay-proxy".into())
        .spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = to.shutdown(Shutdown::Write);
                        return;
                    }
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            let _ = to.shutdown(Shutdown::Both);
                            return;
                        }
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        });
}

/// One timed run: wall time, time to the first answer, bytes and requests on the wire.
#[derive(Debug, Clone, Copy)]
struct Run {
    wall: Duration,
    first: Duration,
    wire_bytes: u64,
    requests: u64,
    /// GETs the bundle server made to S3 (`--backend s3`).
    backend_requests: u64,
}

/// The CPU time this process (client, servers and proxies together) has used so far, from
/// `/proc/self/stat` (in clock ticks of 10 ms; summed over a strategy's runs), or `None`
/// where there is no such file.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces: utime and
    // stime are the 12th and 13th.
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split(' ');
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
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

/// The benchmark's objects: `obj/NNNNN` (byte `i % 251` repeated) and `tiny` (1 byte, for
/// L through the backend).
fn objects(args: &BenchBundleArgs) -> impl Iterator<Item = (String, Vec<u8>)> {
    let (n, size) = (args.objects, args.size);
    (0..n)
        .map(move |i| (format!("obj/{i:05}"), vec![(i % 251) as u8; size]))
        .chain([("tiny".to_string(), b"x".to_vec())])
}

/// The link bucket's objects: `tiny` and `large` (the whole payload in one object, for B).
fn link_objects(args: &BenchBundleArgs) -> impl Iterator<Item = (String, Vec<u8>)> {
    [
        ("tiny".to_string(), b"x".to_vec()),
        ("large".to_string(), vec![1u8; args.objects * args.size]),
    ]
    .into_iter()
}

async fn in_memory(
    objects: impl Iterator<Item = (String, Vec<u8>)>,
) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    let backend = Arc::new(InMemory::new());
    for (key, data) in objects {
        backend
            .put(&object_store::path::Path::from(key), PutPayload::from(data))
            .await?;
    }
    Ok(backend)
}

/// A directory of the system's temporary directory, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "getmany-bench-bundle-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// object_store's S3 client for the one bucket at `endpoint`, unsigned, keeping up to
/// `connections` idle connections (so a run reuses the previous run's).
fn s3_client(endpoint: String, connections: usize) -> object_store::Result<Arc<dyn ObjectStore>> {
    let s3 = AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region("auto")
        .with_bucket_name(BUCKET)
        .with_skip_signature(true)
        .with_client_options(
            object_store::ClientOptions::new()
                .with_allow_http(true)
                .with_pool_max_idle_per_host(connections.max(1)),
        )
        .build()?;
    Ok(Arc::new(s3))
}

/// With `--backend s3`: the S3 server behind the bundle server, and a second one over the
/// same objects that the baseline reads directly.
struct S3Side {
    behind: S3Server,
    /// Between the bundle server and `behind` (`--backend-link proxy`).
    backend_proxy: Option<Proxy>,
    direct: S3Server,
    /// Between the client and `direct`: the client's round trip.
    direct_proxy: Proxy,
}

/// What the bundle server serves, and what it takes to keep it.
struct Served {
    store: Arc<dyn Store>,
    budget: usize,
    description: String,
    s3: Option<S3Side>,
    _dir: Option<TempDir>,
}

async fn serve_backend(args: &BenchBundleArgs) -> Result<Served, Box<dyn std::error::Error>> {
    Ok(match args.backend {
        Backend::Memory => {
            let budget = args
                .backend_budget
                .unwrap_or(crate::serve::OBJECT_STORE_BUDGET);
            let store = ObjectStoreStore::new(in_memory(objects(args)).await?)
                .with_budget(IoBudget::new(budget));
            Served {
                store: Arc::new(store),
                budget,
                description: format!("memory (ObjectStoreStore over InMemory, budget {budget})"),
                s3: None,
                _dir: None,
            }
        }
        Backend::Dir => {
            let dir = TempDir::new()?;
            std::fs::create_dir(dir.0.join("obj"))?;
            for (key, data) in objects(args) {
                std::fs::write(dir.0.join(key), data)?;
            }
            let budget = args.backend_budget.unwrap_or(crate::serve::DIR_BUDGET);
            let store = DirStore::open(&dir.0)?.with_limit(budget);
            Served {
                store: Arc::new(store),
                budget,
                description: format!(
                    "dir (DirStore over {}, in the page cache; budget {budget} batches)",
                    dir.0.display()
                ),
                s3: None,
                _dir: Some(dir),
            }
        }
        Backend::S3 => {
            let objects = in_memory(objects(args)).await?;
            let any = "127.0.0.1:0".parse()?;
            let backend_rtt = Duration::from_secs_f64(args.backend_rtt_ms / 1e3);
            let (behind, backend_proxy) = match args.backend_link {
                // No round trip to add: S3 on loopback, nothing between.
                _ if backend_rtt.is_zero() => (
                    S3Server::start(objects.clone(), BUCKET, any, None).await?,
                    None,
                ),
                BackendLink::Proxy => {
                    let behind = S3Server::start(objects.clone(), BUCKET, any, None).await?;
                    let proxy =
                        Proxy::start(args.proxy, behind.local_addr(), backend_rtt, args.delay)?;
                    (behind, Some(proxy))
                }
                BackendLink::Late => {
                    let late = Arc::new(crate::late::Late::new(objects.clone(), backend_rtt));
                    (S3Server::start(late, BUCKET, any, None).await?, None)
                }
            };
            let backend_url = backend_proxy
                .as_ref()
                .map_or_else(|| behind.url(), Proxy::url);
            let direct = S3Server::start(objects, BUCKET, any, None).await?;
            let direct_proxy = Proxy::start(
                args.proxy,
                direct.local_addr(),
                Duration::from_secs_f64(args.rtt_ms / 1e3),
                args.delay,
            )?;
            let budget = args
                .backend_budget
                .unwrap_or(crate::serve::OBJECT_STORE_BUDGET);
            let store = ObjectStoreStore::new(s3_client(backend_url, budget)?)
                .with_budget(IoBudget::new(budget));
            Served {
                store: Arc::new(store),
                budget,
                description: format!(
                    "s3 (ObjectStoreStore over object_store's S3 client, budget {budget}, to an \
                     S3 server {} ms away{})",
                    args.backend_rtt_ms,
                    match args.backend_link {
                        _ if backend_rtt.is_zero() => " on loopback, nothing between",
                        BackendLink::Proxy => " through a delay proxy",
                        BackendLink::Late => " that answers each request that much late, no proxy",
                    }
                ),
                s3: Some(S3Side {
                    behind,
                    backend_proxy,
                    direct,
                    direct_proxy,
                }),
                _dir: None,
            }
        }
    })
}

/// One plain GET of `url`: its time and length.
async fn timed_get(
    http: &reqwest::Client,
    url: String,
) -> Result<(Duration, usize), reqwest::Error> {
    let started = Instant::now();
    let body = http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    Ok((started.elapsed(), body.len()))
}

/// The median time of a 1-byte GET of `base/bucket/tiny`, on a warm connection.
async fn small_get(
    http: &reqwest::Client,
    base: &str,
    bucket: &str,
) -> Result<Duration, reqwest::Error> {
    let url = format!("{base}/{bucket}/tiny");
    timed_get(http, url.clone()).await?;
    let mut smalls = Vec::new();
    for _ in 0..21 {
        smalls.push(timed_get(http, url.clone()).await?.0);
    }
    smalls.sort();
    Ok(smalls[smalls.len() / 2])
}

/// Which endpoint a strategy talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The bundle server, through the client's proxy.
    Bundle,
    /// S3 itself, through a proxy of the client's round trip (`--backend s3` only).
    Direct,
}

/// Runs the benchmark and prints its table.
pub async fn run(args: BenchBundleArgs) -> Result<(), Box<dyn std::error::Error>> {
    let served = serve_backend(&args).await?;
    let payload = (args.objects * args.size) as u64;
    let link = ObjectStoreStore::new(in_memory(link_objects(&args)).await?);
    let server = BundleServer::builder()
        .bucket(BUCKET, served.store.clone())
        .bucket(LINK, Arc::new(link))
        .start("127.0.0.1:0".parse()?)
        .await?;
    let rtt = Duration::from_secs_f64(args.rtt_ms / 1e3);
    let proxy = Proxy::start(args.proxy, server.local_addr(), rtt, args.delay)?;
    println!(
        "getmany bench-bundle: {} objects of {} bytes, {} ms round trip injected by a TCP delay proxy ({}), {} repetitions (median)",
        args.objects,
        args.size,
        args.rtt_ms,
        match args.delay {
            Delay::Both => format!("{} ms each way", args.rtt_ms / 2.0),
            Delay::Request => "all of it on the way to the server".to_string(),
        },
        args.repeat
    );
    println!("backend: {}", served.description);

    // L and B, through the proxy, on a warm connection: L from a 1-byte object of the
    // backend (so it includes the backend's own round trip, and a file's open), B from one
    // large object in memory (the link's bandwidth, not one reader's of the backend).
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let l = small_get(&http, &proxy.url(), BUCKET).await?;
    let mut larges = Vec::new();
    for _ in 0..5 {
        let (t, len) = timed_get(&http, format!("{}/{LINK}/large", proxy.url())).await?;
        if len as u64 != payload {
            return Err("the large GET returned the wrong size".into());
        }
        larges.push(t);
    }
    larges.sort();
    let large = larges[larges.len() / 2];
    let link_l = small_get(&http, &proxy.url(), LINK).await?;
    let transfer = large.saturating_sub(link_l).max(Duration::from_micros(1));
    let b = payload as f64 / transfer.as_secs_f64();
    let limit = l + Duration::from_secs_f64(payload as f64 / b);
    println!(
        "measured through the proxy: L = {} (one 1-byte GET), B = {:.0} MB/s (one {} MiB GET from memory: {}), limit L + P/B = {} for P = {} MiB",
        ms(l),
        b / 1e6,
        payload >> 20,
        ms(large),
        ms(limit),
        payload >> 20
    );
    if let Some(s3) = &served.s3 {
        let backend_url = s3
            .backend_proxy
            .as_ref()
            .map_or_else(|| s3.behind.url(), Proxy::url);
        let backend_l = small_get(&http, &backend_url, BUCKET).await?;
        let direct_l = small_get(&http, &s3.direct_proxy.url(), BUCKET).await?;
        println!(
            "S3: the bundle server's round trip to it L = {}; the client's to the bundle server alone L = {}, to S3 (the default get_many's GETs) L = {}",
            ms(backend_l),
            ms(link_l),
            ms(direct_l)
        );
    }
    println!();

    let requests: Vec<Request> = (0..args.objects)
        .map(|i| Request::whole(format!("obj/{i:05}")))
        .collect();
    let (baseline_endpoint, baseline_via, baseline_target) = match &served.s3 {
        Some(s3) => (s3.direct_proxy.url(), Via::Direct, "straight to S3"),
        None => (proxy.url(), Via::Bundle, "S3 GETs"),
    };
    let concurrent = ObjectStoreStore::new(s3_client(baseline_endpoint, args.in_flight)?)
        .with_budget(IoBudget::new(args.in_flight));
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

    let strategies: Vec<(String, &dyn Store, bool, Via)> = vec![
        (
            format!(
                "default get_many, {} in flight ({baseline_target})",
                args.in_flight
            ),
            &concurrent,
            true,
            baseline_via,
        ),
        (
            format!("BundleStore, Tigris ({split} bundles of {per_bundle})"),
            &tigris,
            false,
            Via::Bundle,
        ),
        (
            format!("BundleStore, AIStore ({split} bundles of {per_bundle})"),
            &aistore,
            false,
            Via::Bundle,
        ),
        (
            "BundleStore, Tigris, one bundle".into(),
            &tigris_one,
            false,
            Via::Bundle,
        ),
        (
            "BundleStore, AIStore, one bundle".into(),
            &aistore_one,
            false,
            Via::Bundle,
        ),
    ];
    // (bytes to the client, requests received, GETs the bundle server made to S3) so far.
    let counters = |via: Via| -> (u64, u64, u64) {
        let backend_gets = served.s3.as_ref().map_or(0, |s3| s3.behind.counts().get);
        match (via, &served.s3) {
            (Via::Direct, Some(s3)) => (
                s3.direct_proxy.bytes_to_client(),
                s3.direct.counts().total(),
                backend_gets,
            ),
            _ => (
                proxy.bytes_to_client(),
                server.stats().requests(),
                backend_gets,
            ),
        }
    };
    let mut results = Vec::new();
    for (name, store, default_get_many, via) in strategies
        .iter()
        .filter(|(_, _, default, _)| !(args.skip_default && *default))
    {
        // Warm-up: connections open, caches warm.
        drain(*store, requests.clone(), args.size, *default_get_many).await?;
        let mut runs = Vec::new();
        let cpu_before = cpu_time();
        for _ in 0..args.repeat.max(1) {
            let before = counters(*via);
            let started = Instant::now();
            let first = drain(*store, requests.clone(), args.size, *default_get_many).await?;
            let wall = started.elapsed();
            let after = counters(*via);
            runs.push(Run {
                wall,
                first,
                wire_bytes: after.0 - before.0,
                requests: after.1 - before.1,
                backend_requests: after.2 - before.2,
            });
        }
        let runs_done = runs.len() as u32;
        let cpu = cpu_before
            .zip(cpu_time())
            .map(|(before, after)| (after - before) / runs_done);
        results.push((name.clone(), median(runs), cpu));
    }

    let baseline = results[0].1.wall;
    let limit_of = |run: &Run| run.wall.as_secs_f64() / limit.as_secs_f64();
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
        "CPU / run (mean)",
    ]);
    for (name, run, cpu) in &results {
        table.add_row(vec![
            name.clone(),
            ms(run.wall),
            ms(run.first),
            run.requests.to_string(),
            format!("{:.3}", run.wire_bytes as f64 / payload as f64),
            format!("{:.2}", limit_of(run)),
            format!("{:.1}x", baseline.as_secs_f64() / run.wall.as_secs_f64()),
            cpu.map_or_else(|| "-".to_string(), ms),
        ]);
    }
    println!("{table}");
    println!(
        "\nP'/P counts every byte the proxy forwarded to the client (HTTP headers, tar headers and padding included). CPU / run: this process's user + system time (client, bundle server, backend and proxies together) over the runs, divided by their number."
    );
    if served.s3.is_some() {
        let gets: Vec<String> = results
            .iter()
            .filter(|(_, run, _)| run.backend_requests > 0)
            .map(|(name, run, _)| format!("{name}: {}", run.backend_requests))
            .collect();
        println!(
            "GETs from the bundle server to S3 per run (budget {}): {}",
            served.budget,
            gets.join("; ")
        );
    }
    // The targets of the README (memory), and of issue 11 (dir: 1.5x at 10 ms, 1.3x at 0;
    // s3: 3x faster than the client's own GETs straight to S3).
    let ratio_target = if args.rtt_ms <= 0.0 { 1.3 } else { 1.5 };
    let speedup_target = if args.backend == Backend::S3 {
        3.0
    } else {
        5.0
    };
    for (name, run, _) in results.iter().skip(usize::from(!args.skip_default)).take(2) {
        let ratio = limit_of(run);
        let speedup = baseline.as_secs_f64() / run.wall.as_secs_f64();
        println!(
            "{name}, backend {}: {:.2}x the limit (target <= {ratio_target}: {}), {:.1}x faster than the default (target >= {speedup_target}: {})",
            args.backend.name(),
            ratio,
            if ratio <= ratio_target {
                "met"
            } else {
                "NOT met"
            },
            speedup,
            if speedup >= speedup_target {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    drop(proxy);
    Ok(())
}
