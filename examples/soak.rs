//! A soak run of `getmany serve`: many concurrent clients for a minute, mixing good bundles
//! with the clients a public endpoint meets (unsigned requests, slow readers, idle sockets,
//! resets), while the server's memory, threads and file descriptors are watched.
//!
//! ```sh
//! cargo build --release --features cli --example soak --bin getmany
//! cargo run --release --features cli --example soak -- --clients 64 --seconds 60
//! ```
//!
//! It writes a data set to a temporary directory (every byte a function of its key, so every
//! answer is checked byte for byte), starts the release `getmany serve` on it as a child
//! process with short limits, runs the clients, and samples the child's `/proc` entries every
//! 500 ms. It exits non-zero when a body was corrupt, a signed client got no bundle, an
//! unsigned request was served, an idle socket or a stalled reader was never cut, or the
//! server's memory or file descriptors did not come back near their start. docs/soak.md has
//! a measured run. Linux only (`/proc`); not part of CI.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use comfy_table::{Table, presets::ASCII_MARKDOWN};
use futures::StreamExt;
use getmany::{BundleProtocol, BundleStore, Request, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Options of the soak run.
#[derive(Debug, Clone, Parser)]
#[command(about = "A soak run of getmany serve: concurrent good and bad clients, RSS watched")]
struct Args {
    /// Concurrent client tasks.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// How long the clients start new requests, in seconds (requests under way then finish).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Small objects in the data set.
    #[arg(long, default_value_t = 4000)]
    small_objects: usize,
    /// Bytes of each small object.
    #[arg(long, default_value_t = 16 * 1024)]
    small_bytes: usize,
    /// Large objects in the data set.
    #[arg(long, default_value_t = 64)]
    large_objects: usize,
    /// Bytes of each large object.
    #[arg(long, default_value_t = 1 << 20)]
    large_bytes: usize,
    /// Seed of the data set and of every client's choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The `getmany` binary to run (default: `getmany` next to this example's directory,
    /// i.e. target/release/getmany for a release build).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The server's --max-in-flight.
    #[arg(long, default_value_t = 32)]
    max_in_flight: usize,
    /// The server's --idle-timeout-secs.
    #[arg(long, default_value_t = 5.0)]
    idle_timeout_secs: f64,
    /// The server's --stall-timeout-secs.
    #[arg(long, default_value_t = 5.0)]
    stall_timeout_secs: f64,
    /// The server's --header-timeout-secs.
    #[arg(long, default_value_t = 5.0)]
    header_timeout_secs: f64,
    /// The mix of client actions, as relative weights.
    #[arg(
        long,
        default_value = "tigris=38,aistore=38,unsigned=10,slow=3,idle=3,reset=8"
    )]
    mix: String,
    /// Keys per good bundle: at least this many ...
    #[arg(long, default_value_t = 50)]
    min_keys: usize,
    /// ... and at most this many.
    #[arg(long, default_value_t = 500)]
    max_keys: usize,
    /// 1 MiB entries a slow reader asks for (far more than the socket buffers hold).
    #[arg(long, default_value_t = 200)]
    slow_entries: usize,
    /// How long slow readers and idle sockets hold their connection: at least ... (s)
    #[arg(long, default_value_t = 10)]
    hold_min_secs: u64,
    /// ... and at most (s).
    #[arg(long, default_value_t = 20)]
    hold_max_secs: u64,
    /// Fail when the server's RSS 15 s after the clients stopped exceeds this times its
    /// start ...
    #[arg(long, default_value_t = 1.5)]
    rss_ratio: f64,
    /// ... plus this many MiB.
    #[arg(long, default_value_t = 64)]
    rss_slack_mib: u64,
    /// Fail when the server's open fds 15 s after the clients stopped exceed its start by
    /// more than this.
    #[arg(long, default_value_t = 16)]
    fd_slack: u64,
    /// Runs of the clients against the same server, each followed by the 5 s and 15 s
    /// samples: a server whose memory after a round keeps growing round after round leaks.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Fail when more than this share of the good bundles that succeeded took longer than
    /// --late-secs (a server that lets one client hold up the others) ...
    #[arg(long, default_value_t = 0.01)]
    max_late_share: f64,
    /// ... this many seconds.
    #[arg(long, default_value_t = 5.0)]
    late_secs: f64,
    /// Write every 500 ms sample (seconds, RSS KiB, threads, fds) to this CSV file.
    #[arg(long)]
    samples_csv: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------
// Determinism: a small PRNG and the data set.

/// SplitMix64: small, fast, good enough to pick keys and actions.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    fn index(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The content of object `index`: a PRNG stream seeded by the run's seed and the index.
fn content(seed: u64, index: usize, len: usize) -> Bytes {
    let mut rng = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ ((index as u64) << 20));
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out.into()
}

/// The data set: keys and their bytes, by index; small objects first.
struct DataSet {
    keys: Vec<String>,
    data: Vec<Bytes>,
    small: usize,
}

impl DataSet {
    fn build(args: &Args, bucket_dir: &Path) -> std::io::Result<Self> {
        let mut keys = Vec::new();
        let mut data = Vec::new();
        std::fs::create_dir_all(bucket_dir.join("s"))?;
        std::fs::create_dir_all(bucket_dir.join("l"))?;
        for i in 0..args.small_objects + args.large_objects {
            let (key, len) = if i < args.small_objects {
                (format!("s/{i:06}"), args.small_bytes)
            } else {
                (format!("l/{:04}", i - args.small_objects), args.large_bytes)
            };
            let bytes = content(args.seed, i, len);
            std::fs::write(bucket_dir.join(&key), &bytes)?;
            keys.push(key);
            data.push(bytes);
        }
        Ok(DataSet {
            keys,
            data,
            small: args.small_objects,
        })
    }

    fn large(&self, rng: &mut Rng) -> usize {
        self.small + rng.index(self.keys.len() - self.small)
    }

    fn total_bytes(&self) -> u64 {
        self.data.iter().map(|d| d.len() as u64).sum()
    }
}

// ---------------------------------------------------------------------------------------
// Counters.

#[derive(Default)]
struct Counter(AtomicU64);

impl Counter {
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The outcomes of one kind of good bundle.
#[derive(Default)]
struct GoodStats {
    ok: Counter,
    corrupt: Counter,
    slowdown: Counter,
    errors: Counter,
    objects: Counter,
    bytes: Counter,
    missing_checked: Counter,
    latencies_ms: Mutex<Vec<f64>>,
}

#[derive(Default)]
struct Stats {
    tigris: GoodStats,
    aistore: GoodStats,
    /// Unsigned or wrongly signed requests: refused with 401/403, served (2xx, a failure),
    /// anything else.
    unsigned_refused: Counter,
    unsigned_served: Counter,
    unsigned_other: Counter,
    unsigned_by_kind: Mutex<HashMap<&'static str, u64>>,
    /// Slow readers: started (200), busy (429), cut by the server, not cut, failed.
    slow_started: Counter,
    slow_busy: Counter,
    slow_cut: Counter,
    slow_not_cut: Counter,
    slow_failed: Counter,
    /// Bytes a slow reader received before it stopped reading plus what it drained after.
    slow_received_mib: Mutex<Vec<f64>>,
    /// Idle sockets: closed by the server (with when), still open at the end of the hold.
    idle_closed: Counter,
    idle_open: Counter,
    idle_close_secs: Mutex<Vec<f64>>,
    /// Resets: sent after reading part of a 200; busy (429); failed before the reset.
    reset_sent: Counter,
    reset_busy: Counter,
    reset_failed: Counter,
    /// Raw answers whose tar prefix was checked, and the ones that were wrong.
    raw_prefix_ok: Counter,
    raw_prefix_corrupt: Counter,
    raw_members_checked: Counter,
    /// The first few messages of each unexpected outcome.
    notes: Mutex<Vec<String>>,
    /// Good bundles that took more than 5 s: (start, seconds since the run's clock).
    slow_bundles: Mutex<Vec<(f64, f64)>>,
    /// When each slow reader stopped reading (seconds since the run's clock).
    stalls: Mutex<Vec<f64>>,
    clock: Option<Instant>,
}

impl Stats {
    fn since_start(&self, t: Instant) -> f64 {
        self.clock
            .map(|c| t.saturating_duration_since(c).as_secs_f64())
            .unwrap_or(0.0)
    }

    fn note(&self, message: String) {
        let mut notes = self.notes.lock().unwrap();
        if notes.len() < 40 {
            notes.push(message);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Server process and /proc samples.

/// The server child; killed when dropped.
struct Server {
    child: Child,
    url: String,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_bin(args: &Args) -> Result<PathBuf, String> {
    if let Some(bin) = &args.server_bin {
        return Ok(bin.clone());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot find the target directory")?;
    let bin = dir.join("getmany");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it (cargo build --release --features cli --bin getmany) or \
             give --server-bin",
            bin.display()
        ))
    }
}

fn start_server(
    args: &Args,
    root: &Path,
    log: &Path,
) -> Result<Server, Box<dyn std::error::Error>> {
    let bin = server_bin(args)?;
    let mut child = Command::new(&bin)
        .arg("serve")
        .arg("--root")
        .arg(root)
        .args(["--listen", "127.0.0.1:0"])
        .args(["--access-key", "ak", "--secret-key", "sk", "--token", "tok"])
        .args(["--idle-timeout-secs", &args.idle_timeout_secs.to_string()])
        .args(["--stall-timeout-secs", &args.stall_timeout_secs.to_string()])
        .args([
            "--header-timeout-secs",
            &args.header_timeout_secs.to_string(),
        ])
        .args(["--max-in-flight", &args.max_in_flight.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().transpose()?.unwrap_or_default();
    let Some(url) = first.strip_prefix("listening on ") else {
        let _ = child.kill();
        return Err(format!("the server said {first:?}, not \"listening on ...\"").into());
    };
    let url = url.trim().trim_end_matches('/').to_string();
    let addr: SocketAddr = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http URL: {url}"))?
        .parse()?;
    // Keep reading its stdout so the pipe never fills.
    std::thread::spawn(move || for _ in lines {});
    println!("server: {} (pid {}), {url}", bin.display(), child.id());
    Ok(Server { child, url, addr })
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    secs: f64,
    rss_kib: u64,
    anon_kib: u64,
    threads: u64,
    fds: u64,
}

fn sample(pid: u32, start: Instant) -> Sample {
    let mut s = Sample {
        secs: start.elapsed().as_secs_f64(),
        ..Sample::default()
    };
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in status.lines() {
            let value = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("VmRSS:") {
                s.rss_kib = value(line);
            } else if line.starts_with("RssAnon:") {
                s.anon_kib = value(line);
            } else if line.starts_with("Threads:") {
                s.threads = value(line);
            }
        }
    }
    s.fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    s
}

// ---------------------------------------------------------------------------------------
// Good bundles through BundleStore.

/// One good bundle of `min_keys..=max_keys` random keys (and, one time in four, a key that
/// does not exist), every answer checked.
async fn good_bundle(
    store: &BundleStore,
    all: &Stats,
    data: &DataSet,
    rng: &mut Rng,
    args: &Args,
    context: &str,
) {
    let stats = match store.protocol() {
        BundleProtocol::Tigris => &all.tigris,
        BundleProtocol::AiStore => &all.aistore,
    };
    let n = rng.range(args.min_keys as u64, args.max_keys as u64) as usize;
    let mut expected: Vec<Option<usize>> =
        (0..n).map(|_| Some(rng.index(data.keys.len()))).collect();
    if rng.index(4) == 0 {
        let at = rng.index(n);
        expected[at] = None;
    }
    let requests: Vec<Request> = expected
        .iter()
        .map(|e| match e {
            Some(i) => Request::whole(data.keys[*i].clone()),
            None => Request::whole(format!("missing/{}", rng.next_u64())),
        })
        .collect();
    let started = Instant::now();
    let mut answered = vec![false; n];
    let (mut corrupt, mut slowdown, mut error) = (0u64, 0u64, 0u64);
    let mut first_error: Option<String> = None;
    let (mut objects, mut bytes, mut missing) = (0u64, 0u64, 0u64);
    let mut results = store.get_many(requests);
    while let Some((index, result)) = results.next().await {
        if index >= n || std::mem::replace(&mut answered[index], true) {
            corrupt += 1;
            all.note(format!(
                "{:?}: answer for request {index} out of range or twice",
                store.protocol()
            ));
            continue;
        }
        match (result, expected[index]) {
            (Ok(Some(got)), Some(i)) => {
                if got == data.data[i] {
                    objects += 1;
                    bytes += got.len() as u64;
                } else {
                    corrupt += 1;
                    all.note(format!(
                        "{:?}: CORRUPT {}: {} bytes, expected {}",
                        store.protocol(),
                        data.keys[i],
                        got.len(),
                        data.data[i].len()
                    ));
                }
            }
            (Ok(None), None) => missing += 1,
            (Ok(None), Some(i)) => {
                corrupt += 1;
                all.note(format!(
                    "{:?}: CORRUPT {} read as missing",
                    store.protocol(),
                    data.keys[i]
                ));
            }
            (Ok(Some(got)), None) => {
                corrupt += 1;
                all.note(format!(
                    "{:?}: CORRUPT a missing key read as {} bytes",
                    store.protocol(),
                    got.len()
                ));
            }
            (Err(e), _) => {
                let message = e.to_string();
                if message.contains("answered 429") {
                    slowdown += 1;
                } else {
                    error += 1;
                    first_error.get_or_insert_with(|| chain(&e));
                }
            }
        }
    }
    drop(results);
    if let Some(message) = first_error {
        all.note(format!(
            "{:?}: a bundle of {n} keys failed ({error} answers were errors), t={:.1} s after \
             {:.1} s ({context}): {message}",
            store.protocol(),
            all.since_start(started),
            started.elapsed().as_secs_f64()
        ));
    }
    let unanswered = answered.iter().filter(|a| !**a).count() as u64;
    if unanswered > 0 {
        error += 1;
        all.note(format!(
            "{:?}: {unanswered} requests never answered",
            store.protocol()
        ));
    }
    stats.objects.add(objects);
    stats.bytes.add(bytes);
    stats.missing_checked.add(missing);
    if corrupt > 0 {
        stats.corrupt.add(1);
    } else if error > 0 {
        stats.errors.add(1);
    } else if slowdown > 0 {
        stats.slowdown.add(1);
    } else {
        stats.ok.add(1);
        let elapsed = started.elapsed().as_secs_f64();
        stats.latencies_ms.lock().unwrap().push(elapsed * 1e3);
        if elapsed > 5.0 {
            all.slow_bundles
                .lock()
                .unwrap()
                .push((all.since_start(started), elapsed));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Unsigned and wrongly signed requests.

const UNSIGNED_KINDS: [&str; 4] = [
    "bundle, no auth",
    "GetBatch, wrong token",
    "bundle, SigV2 header",
    "bundle, SigV4 wrong secret",
];

async fn unsigned(
    client: &reqwest::Client,
    bad_signer: &BundleStore,
    server: &str,
    stats: &Stats,
    data: &DataSet,
    rng: &mut Rng,
) {
    let kind = rng.index(UNSIGNED_KINDS.len());
    let keys: Vec<&str> = (0..3)
        .map(|_| data.keys[rng.index(data.small)].as_str())
        .collect();
    let status = match kind {
        0 | 2 => {
            let body = serde_json::json!({ "keys": keys }).to_string();
            let mut request = client
                .post(format!("{server}/data?bundle"))
                .header("content-type", "application/json")
                .header("x-tigris-bundle-format", "tar")
                .header("x-tigris-bundle-compression", "none")
                .body(body);
            if kind == 2 {
                request = request
                    .header("authorization", "AWS ak:bm90LWEtcmVhbC1zaWduYXR1cmU=")
                    .header("date", "Thu, 01 Jan 2026 00:00:00 GMT");
            }
            request
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())
        }
        1 => {
            let entries: Vec<_> = keys
                .iter()
                .map(|k| serde_json::json!({ "objname": k }))
                .collect();
            let body = serde_json::json!({ "in": entries, "strm": true }).to_string();
            client
                .get(format!("{server}/v1/ml/moss/data"))
                .header("content-type", "application/json")
                .header("authorization", "Bearer not-the-token")
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())
        }
        _ => {
            // BundleStore signs with a wrong secret; its error names the status.
            let requests = keys.iter().map(|k| Request::whole(*k)).collect();
            let mut results = bad_signer.get_many(requests);
            let mut status = Err("no answer".to_string());
            while let Some((_, result)) = results.next().await {
                status = match result {
                    Ok(_) => Ok(200),
                    Err(e) => {
                        let message = e.to_string();
                        match message.split("answered ").nth(1).and_then(|s| s.get(..3)) {
                            Some(code) => code.parse::<u16>().map_err(|_| message.clone()),
                            None => Err(message),
                        }
                    }
                };
            }
            status
        }
    };
    *stats
        .unsigned_by_kind
        .lock()
        .unwrap()
        .entry(UNSIGNED_KINDS[kind])
        .or_default() += 1;
    match status {
        Ok(401 | 403) => stats.unsigned_refused.add(1),
        Ok(code) if (200..300).contains(&code) => {
            stats.unsigned_served.add(1);
            stats.note(format!("{}: SERVED ({code})", UNSIGNED_KINDS[kind]));
        }
        Ok(code) => {
            stats.unsigned_other.add(1);
            stats.note(format!("{}: answered {code}", UNSIGNED_KINDS[kind]));
        }
        Err(e) => {
            stats.unsigned_other.add(1);
            stats.note(format!("{}: {e}", UNSIGNED_KINDS[kind]));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Raw HTTP/1.1 GetBatch for slow readers and resets.

/// A raw GetBatch whose response head has been read, with the first body bytes.
struct RawResponse {
    stream: TcpStream,
    status: u16,
    chunked: bool,
    /// Raw body bytes received after the head (chunk framing included).
    leftover: Vec<u8>,
}

async fn raw_getbatch(addr: SocketAddr, keys: &[&str]) -> std::io::Result<RawResponse> {
    let entries: Vec<_> = keys
        .iter()
        .map(|k| serde_json::json!({ "objname": k }))
        .collect();
    let body = serde_json::json!({ "in": entries, "strm": true }).to_string();
    let head = format!(
        "GET /v1/ml/moss/data HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer tok\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("response head too long"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the response head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head.contains("transfer-encoding: chunked");
    Ok(RawResponse {
        stream,
        status,
        chunked,
        leftover: buf[end..].to_vec(),
    })
}

/// Decodes `Transfer-Encoding: chunked` incrementally.
#[derive(Default)]
struct Dechunk {
    /// Bytes left in the current chunk's data; `None` while reading a size line.
    left: Option<usize>,
    line: Vec<u8>,
    /// CRLF bytes to skip after a chunk's data.
    skip: usize,
    done: bool,
}

impl Dechunk {
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() && !self.done {
            if self.skip > 0 {
                let n = self.skip.min(input.len());
                self.skip -= n;
                input = &input[n..];
                continue;
            }
            match self.left {
                Some(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if left == n {
                        self.left = None;
                        self.skip = 2;
                    } else {
                        self.left = Some(left - n);
                    }
                }
                None => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\n' {
                        let line = String::from_utf8_lossy(&self.line).to_string();
                        let size = line.trim().split(';').next().unwrap_or("");
                        let size = usize::from_str_radix(size, 16).unwrap_or(0);
                        self.line.clear();
                        if size == 0 {
                            self.done = true;
                        } else {
                            self.left = Some(size);
                        }
                    } else {
                        self.line.push(b);
                    }
                }
            }
        }
    }
}

/// Checks the start of a GetBatch tar answer against the data set: each member's ustar name
/// and size and as much of its data as `body` holds. Returns the members checked.
fn check_tar_prefix(body: &[u8], entries: &[usize], data: &DataSet) -> Result<u64, String> {
    let mut pos = 0usize;
    let mut entry = 0usize;
    let mut checked = 0u64;
    while pos + 512 <= body.len() {
        let header = &body[pos..pos + 512];
        if header.iter().all(|b| *b == 0) {
            return if entry == entries.len() {
                Ok(checked)
            } else {
                Err(format!(
                    "end of archive after {entry} of {} members",
                    entries.len()
                ))
            };
        }
        let size_field = String::from_utf8_lossy(&header[124..136]);
        let size = u64::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
            .map_err(|_| format!("bad size field {size_field:?} at {pos}"))?
            as usize;
        let padded = size.div_ceil(512) * 512;
        let kind = header[156];
        if matches!(kind, b'x' | b'g') {
            pos += 512 + padded;
            continue;
        }
        let Some(&index) = entries.get(entry) else {
            return Err(format!("more members than the {} entries", entries.len()));
        };
        let name_end = header[..100].iter().position(|b| *b == 0).unwrap_or(100);
        let name = String::from_utf8_lossy(&header[..name_end]);
        let want = format!("data/{}", data.keys[index]);
        if name != want {
            return Err(format!("member {entry} is {name:?}, expected {want:?}"));
        }
        let expected = &data.data[index];
        if size != expected.len() {
            return Err(format!(
                "member {name} has {size} bytes, expected {}",
                expected.len()
            ));
        }
        let have = body.len().saturating_sub(pos + 512).min(size);
        if body[pos + 512..pos + 512 + have] != expected[..have] {
            return Err(format!(
                "member {name}: data differs in its first {have} bytes"
            ));
        }
        checked += 1;
        entry += 1;
        pos += 512 + padded;
    }
    Ok(checked)
}

/// Reads body bytes of `response` until at least `want` decoded bytes are in hand; checks
/// them. Returns false if the prefix was wrong.
async fn read_and_check(
    response: &mut RawResponse,
    want: usize,
    entries: &[usize],
    data: &DataSet,
    stats: &Stats,
) -> std::io::Result<bool> {
    let mut dechunk = Dechunk::default();
    let mut body = Vec::with_capacity(want + 16 * 1024);
    let leftover = std::mem::take(&mut response.leftover);
    let mut feed = |bytes: &[u8], body: &mut Vec<u8>| {
        if response.chunked {
            dechunk.feed(bytes, body);
        } else {
            body.extend_from_slice(bytes);
        }
    };
    feed(&leftover, &mut body);
    let mut chunk = vec![0u8; 16 * 1024];
    while body.len() < want {
        let n = response.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed early"));
        }
        feed(&chunk[..n], &mut body);
    }
    match check_tar_prefix(&body, entries, data) {
        Ok(members) => {
            stats.raw_prefix_ok.add(1);
            stats.raw_members_checked.add(members);
            Ok(true)
        }
        Err(e) => {
            stats.raw_prefix_corrupt.add(1);
            stats.note(format!("raw GetBatch CORRUPT: {e}"));
            Ok(false)
        }
    }
}

/// A slow reader: a GetBatch far larger than the socket buffers, a few KiB read, then no
/// reading for the hold; then the rest is drained to see whether the server cut it.
async fn slow_reader(addr: SocketAddr, stats: &Stats, data: &DataSet, rng: &mut Rng, args: &Args) {
    let entries: Vec<usize> = (0..args.slow_entries).map(|_| data.large(rng)).collect();
    let keys: Vec<&str> = entries.iter().map(|i| data.keys[*i].as_str()).collect();
    let full: u64 = entries
        .iter()
        .map(|i| 512 + data.data[*i].len() as u64)
        .sum();
    let hold = Duration::from_secs(rng.range(args.hold_min_secs, args.hold_max_secs));
    let mut response = match raw_getbatch(addr, &keys).await {
        Ok(r) => r,
        Err(e) => {
            stats.slow_failed.add(1);
            stats.note(format!("slow reader: {e}"));
            return;
        }
    };
    match response.status {
        200 => {}
        429 => {
            stats.slow_busy.add(1);
            return;
        }
        other => {
            stats.slow_failed.add(1);
            stats.note(format!("slow reader: answered {other}"));
            return;
        }
    }
    stats.slow_started.add(1);
    let want = 4096 + rng.index(4096);
    match read_and_check(&mut response, want, &entries, data, stats).await {
        Ok(_) => {}
        Err(e) => {
            stats.slow_failed.add(1);
            stats.note(format!("slow reader, first bytes: {e}"));
            return;
        }
    }
    // Stop reading; the server's stall timeout should cut the connection.
    stats
        .stalls
        .lock()
        .unwrap()
        .push(stats.since_start(Instant::now()));
    tokio::time::sleep(hold).await;
    let started = Instant::now();
    let mut received = 0u64;
    let mut chunk = vec![0u8; 256 * 1024];
    let outcome = loop {
        if received > full {
            break "complete";
        }
        match tokio::time::timeout(Duration::from_secs(5), response.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break "cut",
            Ok(Ok(n)) => received += n as u64,
            Err(_) => break "stuck",
        }
        if started.elapsed() > Duration::from_secs(30) {
            break "still streaming";
        }
    };
    stats
        .slow_received_mib
        .lock()
        .unwrap()
        .push(received as f64 / (1 << 20) as f64);
    if outcome == "cut" && received < full / 2 {
        stats.slow_cut.add(1);
    } else {
        stats.slow_not_cut.add(1);
        stats.note(format!(
            "slow reader NOT cut after {hold:?} without reading: {outcome}, {received} bytes drained"
        ));
    }
}

/// An idle socket: connects and sends nothing; the server should close it after its header
/// timeout.
async fn idle_socket(addr: SocketAddr, stats: &Stats, rng: &mut Rng, args: &Args) {
    let hold = Duration::from_secs(rng.range(args.hold_min_secs, args.hold_max_secs));
    let started = Instant::now();
    let mut stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            stats.note(format!("idle socket: connect: {e}"));
            stats.idle_open.add(1);
            return;
        }
    };
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + hold;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                stats.idle_closed.add(1);
                stats
                    .idle_close_secs
                    .lock()
                    .unwrap()
                    .push(started.elapsed().as_secs_f64());
                return;
            }
            Ok(Ok(_)) => continue,
            Err(_) => {
                stats.idle_open.add(1);
                stats.note(format!("idle socket still open after {hold:?}"));
                return;
            }
        }
    }
}

/// A reset: a good GetBatch, part of the answer read, then RST (SO_LINGER 0).
async fn reset(addr: SocketAddr, stats: &Stats, data: &DataSet, rng: &mut Rng) {
    let n = rng.range(20, 200) as usize;
    let entries: Vec<usize> = (0..n)
        .map(|_| {
            if rng.index(2) == 0 {
                data.large(rng)
            } else {
                rng.index(data.small)
            }
        })
        .collect();
    let keys: Vec<&str> = entries.iter().map(|i| data.keys[*i].as_str()).collect();
    let mut response = match raw_getbatch(addr, &keys).await {
        Ok(r) => r,
        Err(e) => {
            stats.reset_failed.add(1);
            stats.note(format!("reset: {e}"));
            return;
        }
    };
    match response.status {
        200 => {}
        429 => {
            stats.reset_busy.add(1);
            return;
        }
        other => {
            stats.reset_failed.add(1);
            stats.note(format!("reset: answered {other}"));
            return;
        }
    }
    let want = 1024 + rng.index(256 * 1024);
    if let Err(e) = read_and_check(&mut response, want, &entries, data, stats).await {
        stats.reset_failed.add(1);
        stats.note(format!("reset, first bytes: {e}"));
        return;
    }
    match response.stream.set_zero_linger() {
        Ok(()) => stats.reset_sent.add(1),
        Err(e) => {
            stats.reset_failed.add(1);
            stats.note(format!("reset: SO_LINGER: {e}"));
        }
    }
    drop(response);
}

// ---------------------------------------------------------------------------------------
// The clients.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Tigris,
    AiStore,
    Unsigned,
    Slow,
    Idle,
    Reset,
}

fn parse_mix(mix: &str) -> Result<Vec<(Action, u64)>, String> {
    let mut out = Vec::new();
    for part in mix.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .ok_or_else(|| format!("--mix: {part:?} is not name=weight"))?;
        let action = match name.trim() {
            "tigris" => Action::Tigris,
            "aistore" => Action::AiStore,
            "unsigned" => Action::Unsigned,
            "slow" => Action::Slow,
            "idle" => Action::Idle,
            "reset" => Action::Reset,
            other => return Err(format!("--mix: unknown action {other:?}")),
        };
        let weight = weight
            .trim()
            .parse()
            .map_err(|_| format!("--mix: {weight:?} is not a weight"))?;
        out.push((action, weight));
    }
    if out.iter().map(|(_, w)| w).sum::<u64>() == 0 {
        return Err("--mix: all weights are 0".into());
    }
    Ok(out)
}

fn pick(mix: &[(Action, u64)], rng: &mut Rng) -> Action {
    let total: u64 = mix.iter().map(|(_, w)| w).sum();
    let mut r = rng.next_u64() % total;
    for (action, weight) in mix {
        if r < *weight {
            return *action;
        }
        r -= weight;
    }
    mix[0].0
}

struct Shared {
    args: Args,
    data: DataSet,
    stats: Stats,
    url: String,
    addr: SocketAddr,
    mix: Vec<(Action, u64)>,
    actions: Mutex<HashMap<&'static str, u64>>,
}

async fn client(
    id: usize,
    round: usize,
    deadline: Instant,
    shared: Arc<Shared>,
) -> Result<(), getmany::Error> {
    let args = &shared.args;
    let mut rng = Rng::new(
        args.seed.wrapping_mul(1_000_003) ^ ((id as u64 + 1) << 32) ^ ((round as u64) << 48),
    );
    let timeout = Duration::from_secs(120);
    let tigris = BundleStore::tigris(&shared.url, "data")
        .credentials("ak", "sk")
        .timeout(timeout)
        .build()?;
    let aistore = BundleStore::aistore(&shared.url, "data")
        .token("tok")
        .timeout(timeout)
        .build()?;
    let bad_signer = BundleStore::tigris(&shared.url, "data")
        .credentials("ak", "not-the-secret")
        .timeout(timeout)
        .build()?;
    let plain = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| getmany::Error::backend("soak", "", e))?;
    let mut counts: HashMap<&'static str, u64> = HashMap::new();
    // For the notes: the previous action, and when each store last finished a request (its
    // pooled connection has been idle since).
    let mut previous: Option<(Action, f64)> = None;
    let mut last_used: [Option<Instant>; 2] = [None, None];
    while Instant::now() < deadline {
        let action = pick(&shared.mix, &mut rng);
        let s = &shared.stats;
        let began = Instant::now();
        let context = |slot: usize| {
            format!(
                "previous action {}, this store idle for {}",
                previous.map_or("none".to_string(), |(a, secs)| format!(
                    "{a:?} ({secs:.1} s)"
                )),
                last_used[slot].map_or("ever".to_string(), |t| format!(
                    "{:.2} s",
                    began.duration_since(t).as_secs_f64()
                ))
            )
        };
        match action {
            Action::Tigris => {
                let context = context(0);
                good_bundle(&tigris, s, &shared.data, &mut rng, args, &context).await;
                last_used[0] = Some(Instant::now());
                *counts.entry("tigris").or_default() += 1;
            }
            Action::AiStore => {
                let context = context(1);
                good_bundle(&aistore, s, &shared.data, &mut rng, args, &context).await;
                last_used[1] = Some(Instant::now());
                *counts.entry("aistore").or_default() += 1;
            }
            Action::Unsigned => {
                unsigned(&plain, &bad_signer, &shared.url, s, &shared.data, &mut rng).await;
                *counts.entry("unsigned").or_default() += 1;
            }
            Action::Slow => {
                slow_reader(shared.addr, s, &shared.data, &mut rng, args).await;
                *counts.entry("slow").or_default() += 1;
            }
            Action::Idle => {
                idle_socket(shared.addr, s, &mut rng, args).await;
                *counts.entry("idle").or_default() += 1;
            }
            Action::Reset => {
                reset(shared.addr, s, &shared.data, &mut rng).await;
                *counts.entry("reset").or_default() += 1;
            }
        }
        previous = Some((action, began.elapsed().as_secs_f64()));
    }
    let mut actions = shared.actions.lock().unwrap();
    for (k, v) in counts {
        *actions.entry(k).or_default() += v;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Report.

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// An error and its sources, `: `-separated.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

fn good_row(table: &mut Table, name: &str, g: &GoodStats, secs: f64) {
    let mut lat = g.latencies_ms.lock().unwrap().clone();
    lat.sort_by(f64::total_cmp);
    table.add_row(vec![
        name.to_string(),
        g.ok.get().to_string(),
        g.corrupt.get().to_string(),
        g.slowdown.get().to_string(),
        g.errors.get().to_string(),
        g.objects.get().to_string(),
        format!("{:.0}", g.bytes.get() as f64 / (1 << 20) as f64),
        format!("{:.1}", g.bytes.get() as f64 / (1 << 20) as f64 / secs),
        format!(
            "{:.0} / {:.0} / {:.0}",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(0.0)
        ),
    ]);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mix = parse_mix(&args.mix)?;
    if args.min_keys == 0 || args.min_keys > args.max_keys || args.max_keys > 5000 {
        return Err("--min-keys and --max-keys: 1 <= min <= max <= 5000".into());
    }
    if args.hold_min_secs > args.hold_max_secs {
        return Err("--hold-min-secs must not exceed --hold-max-secs".into());
    }
    if args.small_objects == 0 || args.large_objects == 0 {
        return Err("the data set needs small and large objects".into());
    }
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let log = dir.path().join("server.log");
    let t = Instant::now();
    let data = DataSet::build(&args, &root.join("data"))?;
    println!(
        "data set: {} objects of {} B and {} of {} B, {:.0} MiB, written in {:.1} s",
        args.small_objects,
        args.small_bytes,
        args.large_objects,
        args.large_bytes,
        data.total_bytes() as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    let server = start_server(&args, &root, &log)?;
    let pid = server.child.id();
    let clock = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = sample(pid, clock);

    // Samples every 500 ms on a thread of its own (the clients' runtime can be busy).
    let samples = Arc::new(Mutex::new(vec![start]));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let samples = samples.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                next += Duration::from_millis(500);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                samples.lock().unwrap().push(sample(pid, clock));
            }
        })
    };

    println!(
        "running {} clients for {} s x {} round(s) (mix {}), server limits: idle {} s, header \
         {} s, stall {} s, {} bundles in flight",
        args.clients,
        args.seconds,
        args.rounds,
        args.mix,
        args.idle_timeout_secs,
        args.header_timeout_secs,
        args.stall_timeout_secs,
        args.max_in_flight
    );
    let shared = Arc::new(Shared {
        data,
        stats: Stats {
            clock: Some(clock),
            ..Stats::default()
        },
        url: server.url.clone(),
        addr: server.addr,
        mix,
        actions: Mutex::new(HashMap::new()),
        args: args.clone(),
    });
    // Per round: (first second, last second, secs of clients, 5 s after, 15 s after).
    let mut rounds: Vec<(f64, f64, f64, Sample, Sample)> = Vec::new();
    for round in 0..args.rounds.max(1) {
        let clients_started = clock.elapsed().as_secs_f64();
        let run_started = Instant::now();
        let deadline = run_started + Duration::from_secs(args.seconds);
        let tasks: Vec<_> = (0..args.clients)
            .map(|id| tokio::spawn(client(id, round, deadline, shared.clone())))
            .collect();
        for task in tasks {
            task.await??;
        }
        let clients_secs = run_started.elapsed().as_secs_f64();
        let clients_ended = clock.elapsed().as_secs_f64();
        println!(
            "round {}: clients done after {clients_secs:.1} s; waiting 15 s",
            round + 1
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after5 = sample(pid, clock);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let after15 = sample(pid, clock);
        rounds.push((
            clients_started,
            clients_ended,
            clients_secs,
            after5,
            after15,
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let samples = samples.lock().unwrap().clone();
    let peak_between = |from: f64, to: f64| {
        let during: Vec<Sample> = samples
            .iter()
            .filter(|s| s.secs >= from && s.secs <= to)
            .copied()
            .collect();
        let peak = |f: fn(&Sample) -> u64| during.iter().map(f).max().unwrap_or(0);
        Sample {
            secs: 0.0,
            rss_kib: peak(|s| s.rss_kib),
            anon_kib: peak(|s| s.anon_kib),
            threads: peak(|s| s.threads),
            fds: peak(|s| s.fds),
        }
    };
    let mut server = server;
    let server_alive = matches!(server.child.try_wait(), Ok(None));
    drop(server);
    let (_, _, _, _, last_after15) = *rounds.last().expect("one round at least");
    let after15 = last_after15;

    if let Some(path) = &args.samples_csv {
        let mut csv = String::from("secs,rss_kib,rss_anon_kib,threads,fds\n");
        let mut all = samples.clone();
        all.extend(rounds.iter().flat_map(|r| [r.3, r.4]));
        all.sort_by(|a, b| a.secs.total_cmp(&b.secs));
        for s in &all {
            csv.push_str(&format!(
                "{:.2},{},{},{},{}\n",
                s.secs, s.rss_kib, s.anon_kib, s.threads, s.fds
            ));
        }
        std::fs::write(path, csv)?;
    }

    let st = &shared.stats;
    let secs: f64 = rounds.iter().map(|r| r.2).sum();
    println!();
    let mut actions: Vec<_> = shared.actions.lock().unwrap().clone().into_iter().collect();
    actions.sort();
    println!(
        "{} clients, {:.1} s in {} round(s) (new requests for {} s each), actions: {}",
        args.clients,
        secs,
        rounds.len(),
        args.seconds,
        actions
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    let mut good = Table::new();
    good.load_preset(ASCII_MARKDOWN).set_header(vec![
        "signed bundles",
        "ok",
        "corrupt",
        "429 after retries",
        "errors",
        "objects verified",
        "MiB verified",
        "MiB/s",
        "ok latency p50 / p99 / max (ms)",
    ]);
    good_row(&mut good, "Tigris (SigV4)", &st.tigris, secs);
    good_row(&mut good, "GetBatch (token)", &st.aistore, secs);
    println!("{good}");
    println!(
        "missing keys read as missing: {}",
        st.tigris.missing_checked.get() + st.aistore.missing_checked.get()
    );
    let latencies: Vec<f64> = [&st.tigris, &st.aistore]
        .iter()
        .flat_map(|g| g.latencies_ms.lock().unwrap().clone())
        .collect();
    let over = |ms: f64| latencies.iter().filter(|l| **l > ms).count();
    let late = over(args.late_secs * 1e3);
    println!(
        "ok bundles by time: {} in total, {} over 1 s, {} over 5 s, {} over 10 s",
        latencies.len(),
        over(1e3),
        over(5e3),
        over(10e3)
    );
    {
        // A slow reader holds its connection from the moment it stops reading until the
        // server's stall timeout cuts it (enforced within 125% of itself).
        let stalls = st.stalls.lock().unwrap().clone();
        let slow = st.slow_bundles.lock().unwrap().clone();
        let window = args.stall_timeout_secs * 1.25 + 1.0;
        let overlapping = slow
            .iter()
            .filter(|(from, secs)| {
                stalls
                    .iter()
                    .any(|s| *s <= from + secs && s + window >= *from)
            })
            .count();
        println!(
            "ok bundles over 5 s: {}, of which {} ran while a slow reader was stalled (it \
             stopped reading less than {:.1} s before); {} slow readers stopped reading",
            slow.len(),
            overlapping,
            window,
            stalls.len()
        );
    }
    println!();

    let mut bad = Table::new();
    bad.load_preset(ASCII_MARKDOWN)
        .set_header(vec!["other clients", "count", "outcome"]);
    let by_kind = st.unsigned_by_kind.lock().unwrap().clone();
    let mut kinds: Vec<_> = by_kind.into_iter().collect();
    kinds.sort();
    bad.add_row(vec![
        "unsigned / wrongly signed".to_string(),
        (st.unsigned_refused.get() + st.unsigned_served.get() + st.unsigned_other.get())
            .to_string(),
        format!(
            "{} refused 401/403, {} served, {} other ({})",
            st.unsigned_refused.get(),
            st.unsigned_served.get(),
            st.unsigned_other.get(),
            kinds
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    ]);
    let mut slow_mib = st.slow_received_mib.lock().unwrap().clone();
    slow_mib.sort_by(f64::total_cmp);
    bad.add_row(vec![
        "slow readers (stop after a few KiB)".to_string(),
        (st.slow_started.get() + st.slow_busy.get() + st.slow_failed.get()).to_string(),
        format!(
            "{} started, {} cut by the server, {} not cut, {} got 429, {} failed; drained \
             after the hold: median {:.1} MiB, max {:.1} MiB",
            st.slow_started.get(),
            st.slow_cut.get(),
            st.slow_not_cut.get(),
            st.slow_busy.get(),
            st.slow_failed.get(),
            percentile(&slow_mib, 0.5),
            slow_mib.last().copied().unwrap_or(0.0)
        ),
    ]);
    let mut idle = st.idle_close_secs.lock().unwrap().clone();
    idle.sort_by(f64::total_cmp);
    bad.add_row(vec![
        "idle sockets (send nothing)".to_string(),
        (st.idle_closed.get() + st.idle_open.get()).to_string(),
        format!(
            "{} closed by the server after {:.1}-{:.1} s (median {:.1} s), {} still open",
            st.idle_closed.get(),
            idle.first().copied().unwrap_or(0.0),
            idle.last().copied().unwrap_or(0.0),
            percentile(&idle, 0.5),
            st.idle_open.get()
        ),
    ]);
    bad.add_row(vec![
        "resets (RST mid-answer)".to_string(),
        (st.reset_sent.get() + st.reset_busy.get() + st.reset_failed.get()).to_string(),
        format!(
            "{} reset after reading part of a 200, {} got 429, {} failed",
            st.reset_sent.get(),
            st.reset_busy.get(),
            st.reset_failed.get()
        ),
    ]);
    bad.add_row(vec![
        "raw answers checked (slow + reset)".to_string(),
        (st.raw_prefix_ok.get() + st.raw_prefix_corrupt.get()).to_string(),
        format!(
            "{} prefixes correct ({} members checked), {} corrupt",
            st.raw_prefix_ok.get(),
            st.raw_members_checked.get(),
            st.raw_prefix_corrupt.get()
        ),
    ]);
    println!("{bad}");
    println!();

    let mut res = Table::new();
    res.load_preset(ASCII_MARKDOWN).set_header(vec![
        "server",
        "RSS (MiB)",
        "of which anonymous (MiB)",
        "threads",
        "open fds",
    ]);
    let mut rows = vec![("start (data set written, server up)".to_string(), start)];
    for (i, (from, to, _, after5, after15)) in rounds.iter().enumerate() {
        let round = if rounds.len() > 1 {
            format!("round {}: ", i + 1)
        } else {
            String::new()
        };
        rows.push((
            format!("{round}peak during the run"),
            peak_between(*from, *to),
        ));
        rows.push((format!("{round}5 s after the clients stopped"), *after5));
        rows.push((format!("{round}15 s after the clients stopped"), *after15));
    }
    for (name, s) in rows {
        res.add_row(vec![
            name,
            mib(s.rss_kib),
            mib(s.anon_kib),
            s.threads.to_string(),
            s.fds.to_string(),
        ]);
    }
    println!("{res}");

    let rss_limit_kib = (start.rss_kib as f64 * args.rss_ratio) as u64 + args.rss_slack_mib * 1024;
    let fd_limit = start.fds + args.fd_slack;
    println!();
    println!(
        "thresholds: RSS 15 s after <= {} x start + {} MiB = {} MiB; open fds 15 s after <= \
         start + {} = {}; ok bundles over {} s <= {}% of them",
        args.rss_ratio,
        args.rss_slack_mib,
        mib(rss_limit_kib),
        args.fd_slack,
        fd_limit,
        args.late_secs,
        args.max_late_share * 100.0
    );

    let notes = st.notes.lock().unwrap().clone();
    if !notes.is_empty() {
        println!();
        println!("notes (first {}):", notes.len());
        for note in &notes {
            println!("  {note}");
        }
    }
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let log_lines = log_text.lines().count();
    if log_lines > 0 {
        println!();
        println!("server stderr: {log_lines} lines; the first:");
        for line in log_text.lines().take(10) {
            println!("  {line}");
        }
    }

    let mut failures = Vec::new();
    if !server_alive {
        failures.push("the server exited during the run".to_string());
    }
    let corrupt = st.tigris.corrupt.get() + st.aistore.corrupt.get() + st.raw_prefix_corrupt.get();
    if corrupt > 0 {
        failures.push(format!("{corrupt} corrupt bodies"));
    }
    if st.tigris.ok.get() == 0 || st.aistore.ok.get() == 0 {
        failures.push("a signed client kind got no complete bundle".to_string());
    }
    if st.unsigned_served.get() > 0 {
        failures.push(format!(
            "{} unsigned requests served",
            st.unsigned_served.get()
        ));
    }
    if st.idle_open.get() > 0 {
        failures.push(format!("{} idle sockets never closed", st.idle_open.get()));
    }
    if st.slow_not_cut.get() > 0 {
        failures.push(format!(
            "{} stalled readers never cut",
            st.slow_not_cut.get()
        ));
    }
    if late as f64 > args.max_late_share * latencies.len() as f64 {
        failures.push(format!(
            "{late} of {} ok bundles took over {} s ({:.1}%)",
            latencies.len(),
            args.late_secs,
            100.0 * late as f64 / latencies.len().max(1) as f64
        ));
    }
    if after15.rss_kib > rss_limit_kib {
        failures.push(format!(
            "RSS 15 s after the clients stopped is {} MiB, over {} MiB",
            mib(after15.rss_kib),
            mib(rss_limit_kib)
        ));
    }
    if after15.fds > fd_limit {
        failures.push(format!(
            "{} fds open 15 s after the clients stopped, over {fd_limit}",
            after15.fds
        ));
    }
    println!();
    if failures.is_empty() {
        println!("PASS");
        Ok(())
    } else {
        for f in &failures {
            println!("FAIL: {f}");
        }
        std::process::exit(1);
    }
}
