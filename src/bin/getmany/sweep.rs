//! `getmany bench`: the sweep. Object size x batch size x strategy against a target (the
//! embedded S3 and bundle servers behind the latency model by default, the same behind a
//! TCP delay proxy with `--proxy`, or any object_store URL and bundle endpoint), with a
//! table per object size, a CSV of every cell and an SVG chart of the speed-ups.

mod data;
mod report;
mod target;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use futures::StreamExt;
use getmany::archive::{ArchiveConfig, ArchiveStore};
use getmany::{BundleProtocol, IoBudget, ObjectStoreStore, Store, get_many_concurrent};
use indicatif::{ProgressBar, ProgressStyle};

use data::{Copies, Layout};
use report::{Baselines, Row, ms, size_label};
use target::Target;

type Error = Box<dyn std::error::Error>;

/// A way of reading a batch of objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum)]
pub enum Strategy {
    /// One `get` per object, one after the other.
    Loop,
    /// The default `get_many`: concurrent `get`s under the I/O budget.
    Default,
    /// `ObjectStoreStore::get_many` on the objects packed back to back in shards.
    Coalesce,
    /// `ArchiveStore::get_many` of the objects as members of tar shards (index cached).
    Tar,
    /// `ArchiveStore::get_many` of the objects as members of stored zip shards (index cached).
    Zip,
    /// `BundleStore::get_many` on the protocol of `--bundle-protocol`.
    Bundle,
    /// `BundleStore::get_many`, Tigris bundle protocol.
    BundleTigris,
    /// `BundleStore::get_many`, AIStore GetBatch protocol.
    BundleAistore,
}

impl Strategy {
    /// Every strategy that names one way of reading (`bundle` resolves to one of the two).
    #[cfg(test)]
    const ALL: [Strategy; 7] = [
        Strategy::Loop,
        Strategy::Default,
        Strategy::Coalesce,
        Strategy::Tar,
        Strategy::Zip,
        Strategy::BundleTigris,
        Strategy::BundleAistore,
    ];

    fn name(self) -> &'static str {
        match self {
            Strategy::Loop => "loop",
            Strategy::Default => "default",
            Strategy::Coalesce => "coalesce",
            Strategy::Tar => "tar",
            Strategy::Zip => "zip",
            Strategy::Bundle => "bundle",
            Strategy::BundleTigris => "bundle-tigris",
            Strategy::BundleAistore => "bundle-aistore",
        }
    }

    fn bundle_protocol(self) -> Option<BundleProtocol> {
        match self {
            Strategy::BundleTigris => Some(BundleProtocol::Tigris),
            Strategy::BundleAistore => Some(BundleProtocol::AiStore),
            _ => None,
        }
    }
}

/// The bundle protocol of the `bundle` strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    /// Tigris bundle: `POST /{bucket}?bundle`.
    Tigris,
    /// AIStore GetBatch: `GET /v1/ml/moss/{bucket}`.
    Aistore,
}

impl ProtocolArg {
    fn protocol(self) -> BundleProtocol {
        match self {
            ProtocolArg::Tigris => BundleProtocol::Tigris,
            ProtocolArg::Aistore => BundleProtocol::AiStore,
        }
    }
}

/// Options of `getmany bench`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Object sizes (suffixes KiB, MiB).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1KiB,16KiB,256KiB,1MiB,16MiB"
    )]
    sizes: Vec<String>,
    /// Batch sizes (objects per read).
    #[arg(long, value_delimiter = ',', default_value = "16,100,1000,10000")]
    batches: Vec<usize>,
    /// Strategies to compare (`bundle` is the protocol of --bundle-protocol;
    /// `bundle-tigris`, `bundle-aistore` name one).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "loop,default,coalesce,tar,zip,bundle"
    )]
    strategies: Vec<Strategy>,
    /// The protocol of the `bundle` strategy.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Aistore)]
    bundle_protocol: ProtocolArg,
    /// Round trip in ms: of the latency model (embedded target), or of the TCP delay proxy
    /// (--proxy).
    #[arg(long, default_value_t = 10.0)]
    rtt_ms: f64,
    /// Bandwidth in MB/s, shared by all requests (embedded and --proxy; default: unlimited).
    #[arg(long)]
    bandwidth_mbps: Option<f64>,
    /// Put the embedded servers behind a real TCP delay proxy (--rtt-ms, --bandwidth-mbps)
    /// instead of the latency model.
    #[arg(long, conflicts_with = "url")]
    proxy: bool,
    /// The share of its data set a batch reads: 1 (default) writes exactly the batch's
    /// objects, so packed and archive shards are read whole; 0.1 writes ten times as many
    /// and reads a random tenth, so packed and archive reads have gaps to bridge.
    #[arg(long, default_value_t = 1.0)]
    fill: f64,
    /// Measured repetitions per cell after one warm-up; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Reads in flight (the store's I/O budget).
    #[arg(long, default_value_t = IoBudget::DEFAULT_LIMIT)]
    budget: usize,
    /// Largest data set (one copy) per cell; larger cells are skipped (and said so).
    #[arg(long, default_value = "256MiB")]
    max_cell_bytes: String,
    /// The loop strategy times this many sequential gets and scales to the batch (a loop is
    /// linear in the batch); rows so estimated are marked `est.`.
    #[arg(long, default_value_t = 20)]
    loop_sample: usize,
    /// The object read once to measure the bandwidth B.
    #[arg(long, default_value = "64MiB")]
    link_probe: String,
    /// Read from this object_store URL (e.g. s3://bucket/prefix; credentials from the usual
    /// environment) instead of the embedded server. Data is written below it first.
    #[arg(long)]
    url: Option<String>,
    /// With --url: the bundle endpoint serving the same bucket (e.g. https://t3.storage.dev
    /// for Tigris, http://ais-proxy:8080 for AIStore), spoken with --bundle-protocol.
    /// Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (SigV4, region AWS_REGION,
    /// default auto), or AIS_AUTHN_TOKEN. Without it, the bundle strategies are skipped.
    #[arg(long, requires = "url")]
    bundle_url: Option<String>,
    /// With --bundle-url: the bucket (default: the bucket of --url).
    #[arg(long, requires = "bundle_url")]
    bundle_bucket: Option<String>,
    /// Delete the data set when done (always done for the embedded target).
    #[arg(long)]
    cleanup: bool,
    /// Directory for bench.csv and speedup.svg.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
}

/// Parses `16KiB`, `1MiB`, `1024`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("GiB") {
        (n, 1u64 << 30)
    } else if let Some(n) = t.strip_suffix("MiB") {
        (n, 1 << 20)
    } else if let Some(n) = t.strip_suffix("KiB") {
        (n, 1 << 10)
    } else {
        (t, 1)
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("not a size: {s:?} (use e.g. 16KiB, 1MiB)"))
}

/// `bundle` becomes the protocol named; duplicates go; the order is kept.
fn resolve(strategies: &[Strategy], protocol: ProtocolArg) -> Vec<Strategy> {
    let mut out: Vec<Strategy> = Vec::new();
    for &s in strategies {
        let s = match (s, protocol) {
            (Strategy::Bundle, ProtocolArg::Tigris) => Strategy::BundleTigris,
            (Strategy::Bundle, ProtocolArg::Aistore) => Strategy::BundleAistore,
            (s, _) => s,
        };
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// One cell of the sweep: a batch of `batch` objects of `size` bytes, read out of a data
/// set of `objects` objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cell {
    size: u64,
    batch: usize,
    objects: usize,
}

/// The cells to run, size by size, and the (size, batch) pairs skipped because their data
/// set exceeds `max_cell` bytes.
fn plan_cells(
    sizes: &[u64],
    batches: &[usize],
    fill: f64,
    max_cell: u64,
) -> (Vec<Cell>, Vec<(u64, usize)>) {
    let mut cells = Vec::new();
    let mut skipped = Vec::new();
    for &size in sizes {
        for &batch in batches {
            let objects = ((batch as f64 / fill).ceil() as usize).max(batch);
            if (objects as u64).saturating_mul(size) <= max_cell {
                cells.push(Cell {
                    size,
                    batch,
                    objects,
                });
            } else {
                skipped.push((size, batch));
            }
        }
    }
    (cells, skipped)
}

/// A shuffled choice of `batch` of `objects` (all of them, shuffled, when equal).
fn pick(objects: usize, batch: usize, rng: &mut u64) -> Vec<usize> {
    let mut picks: Vec<usize> = (0..objects).collect();
    for i in (1..picks.len()).rev() {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        picks.swap(i, (*rng % (i as u64 + 1)) as usize);
    }
    picks.truncate(batch);
    picks
}

/// The bundle HTTP requests `BundleStore` (its defaults: at most 5,000 keys per bundle, a
/// batch spread over up to 4 bundles of at least 256 keys) makes for `keys` distinct keys.
/// Used where the server's own count is not available (a remote endpoint).
fn planned_bundles(keys: usize) -> u64 {
    if keys == 0 {
        return 0;
    }
    let needed = keys.div_ceil(getmany::MAX_KEYS_PER_BUNDLE);
    let parallel = (keys / 256).clamp(1, 4);
    let per_bundle = keys.div_ceil(needed.max(parallel));
    keys.div_ceil(per_bundle) as u64
}

/// What one cell's strategies read through.
struct CellStores<'a> {
    target: &'a Target,
    store: ObjectStoreStore,
    archive: Option<ArchiveStore<ObjectStoreStore>>,
    layout: &'a Layout,
}

/// Drains a get_many stream, checking every answer against the object it is for; returns
/// the time to the first answer.
async fn drain(
    mut stream: getmany::GetManyStream<'_>,
    picks: &[usize],
    size: u64,
    started: Instant,
) -> Result<Duration, String> {
    let mut first = None;
    let mut answered = vec![false; picks.len()];
    while let Some((index, result)) = stream.next().await {
        first.get_or_insert_with(|| started.elapsed());
        let Some(&object) = picks.get(index) else {
            return Err(format!(
                "an answer for request {index}, which was not asked"
            ));
        };
        match result {
            Ok(Some(bytes)) => data::check(object, size, &bytes)?,
            Ok(None) => return Err(format!("request {index}: object {object} not found")),
            Err(e) => return Err(format!("request {index} (object {object}): {e}")),
        }
        if std::mem::replace(&mut answered[index], true) {
            return Err(format!("request {index} answered twice"));
        }
    }
    let missing = answered.iter().filter(|a| !**a).count();
    if missing > 0 {
        return Err(format!(
            "{missing} of {} requests not answered",
            picks.len()
        ));
    }
    Ok(first.unwrap_or_default())
}

async fn run_once(
    stores: &CellStores<'_>,
    strategy: Strategy,
    picks: &[usize],
) -> Result<Duration, String> {
    let layout = stores.layout;
    let requests = layout.requests(strategy, picks);
    let started = Instant::now();
    match strategy {
        Strategy::Loop => {
            let mut first = None;
            for (request, &object) in requests.iter().zip(picks) {
                let bytes = stores
                    .store
                    .get(&request.key, request.range.clone())
                    .await
                    .map_err(|e| format!("object {object}: {e}"))?
                    .ok_or_else(|| format!("object {object} not found"))?;
                data::check(object, layout.size, &bytes)?;
                first.get_or_insert_with(|| started.elapsed());
            }
            Ok(first.unwrap_or_default())
        }
        Strategy::Default => {
            let stream = get_many_concurrent(&stores.store, requests);
            drain(stream, picks, layout.size, started).await
        }
        Strategy::Coalesce => {
            drain(stores.store.get_many(requests), picks, layout.size, started).await
        }
        Strategy::Tar | Strategy::Zip => {
            let archive = stores.archive.as_ref().ok_or("no archive store")?;
            drain(archive.get_many(requests), picks, layout.size, started).await
        }
        Strategy::Bundle | Strategy::BundleTigris | Strategy::BundleAistore => {
            let client = strategy
                .bundle_protocol()
                .and_then(|p| stores.target.bundle(p))
                .ok_or("no bundle client")?;
            drain(client.store.get_many(requests), picks, layout.size, started).await
        }
    }
}

/// Resets the counters; returns the bundle server's request count, to subtract later.
fn reset_counts(target: &Target) -> u64 {
    target.reader.reset();
    for b in &target.bundles {
        b.store.reset();
    }
    target
        .bundle_server
        .as_ref()
        .map_or(0, |s| s.stats().requests())
}

/// Requests and bytes fetched since [`reset_counts`], for `strategy`.
fn counts(target: &Target, strategy: Strategy, size: u64, server_before: u64) -> (u64, u64) {
    match strategy.bundle_protocol().and_then(|p| target.bundle(p)) {
        Some(client) => {
            let answered = client.store.snapshot();
            let requests = match &target.bundle_server {
                Some(server) => server.stats().requests() - server_before,
                None => planned_bundles(answered.found as usize),
            };
            // What crossed the wire: the objects in tar framing.
            (
                requests,
                data::tar_stream_bytes(answered.found, size, requests),
            )
        }
        None => {
            let m = target.reader.snapshot();
            (m.reads, m.bytes)
        }
    }
}

async fn measure(
    stores: &CellStores<'_>,
    args: &SweepArgs,
    strategy: Strategy,
    picks: &[usize],
) -> Result<Row, Error> {
    let target = stores.target;
    let size = stores.layout.size;
    let n = picks.len();
    let (sample, estimated) = if strategy == Strategy::Loop && n > args.loop_sample.max(1) {
        (&picks[..args.loop_sample.max(1)], true)
    } else {
        (picks, false)
    };
    let scale = n as f64 / sample.len() as f64;
    let failed = |e: String| format!("{} x {} {}: {e}", n, size_label(size), strategy.name());
    run_once(stores, strategy, sample).await.map_err(failed)?; // warm-up
    let mut runs = Vec::new();
    for _ in 0..args.repeat.max(1) {
        let server_before = reset_counts(target);
        let started = Instant::now();
        let first = run_once(stores, strategy, sample).await.map_err(failed)?;
        let wall = started.elapsed().mul_f64(scale);
        let (requests, fetched) = counts(target, strategy, size, server_before);
        runs.push((
            wall,
            first,
            (requests as f64 * scale).round() as u64,
            (fetched as f64 * scale).round() as u64,
        ));
    }
    runs.sort_by_key(|r| r.0);
    let (wall, first, requests, fetched) = runs[runs.len() / 2];
    let payload = n as u64 * size;
    Ok(Row {
        size,
        batch: n,
        strategy,
        requests,
        bytes_asked: payload,
        bytes_fetched: fetched,
        wall,
        first,
        estimated,
        limit: target.limit(payload, strategy.bundle_protocol().is_some()),
    })
}

/// Builds the archive indexes of a cell (before timing, as a reader with a warm cache has
/// them); returns the store and a line saying what indexing cost.
async fn index_archives(
    target: &Target,
    layout: &Layout,
    budget: usize,
    tar: bool,
    zip: bool,
) -> Result<(ArchiveStore<ObjectStoreStore>, String), Error> {
    let config = ArchiveConfig {
        read_sidecars: false,
        ..ArchiveConfig::default()
    };
    let archive = ArchiveStore::with_config(target.store(budget), config);
    let mut notes = Vec::new();
    for (wanted, kind, keys) in [
        (tar, "tar", layout.tar_shards()),
        (zip, "zip", layout.zip_shards()),
    ] {
        if !wanted {
            continue;
        }
        target.reader.reset();
        let started = Instant::now();
        let indexes = futures::future::join_all(keys.iter().map(|k| archive.index(k))).await;
        for (key, index) in keys.iter().zip(indexes) {
            index?.ok_or_else(|| format!("{key}: written but not found"))?;
        }
        let m = target.reader.snapshot();
        notes.push(format!(
            "{kind}: {} shards in {} GETs, {:.1} MB, {}",
            keys.len(),
            m.reads,
            m.bytes as f64 / 1e6,
            ms(started.elapsed())
        ));
    }
    Ok((archive, notes.join("; ")))
}

/// Runs the sweep.
pub async fn run(args: SweepArgs) -> Result<(), Error> {
    let sizes: Vec<u64> = args
        .sizes
        .iter()
        .map(|s| parse_size(s))
        .collect::<Result<_, _>>()?;
    let max_cell = parse_size(&args.max_cell_bytes)?;
    let probe = parse_size(&args.link_probe)?;
    if !(args.fill > 0.0 && args.fill <= 1.0) {
        return Err(format!("--fill {}: must be in (0, 1]", args.fill).into());
    }
    if args.batches.contains(&0) {
        return Err("--batches: a batch holds at least one object".into());
    }
    let mut target = match &args.url {
        Some(url) => target::remote(url, &args)?,
        None => target::embedded(&args).await?,
    };
    let mut strategies = resolve(&args.strategies, args.bundle_protocol);
    strategies.retain(|s| match s.bundle_protocol() {
        Some(p) if target.bundle(p).is_none() => {
            println!(
                "Strategy {} skipped: {}.",
                s.name(),
                target.no_bundle.clone().unwrap_or_else(|| format!(
                    "the bundle endpoint speaks {}",
                    target::protocol_name(target.bundles[0].protocol)
                ))
            );
            false
        }
        _ => true,
    });
    std::fs::create_dir_all(&args.out)?;
    target.measure_link(probe).await?;
    println!("# getmany bench");
    println!();
    println!("Target: {}.", target.description);
    println!();
    println!(
        "Measured through the S3 read stack: L = {} (median of 21 one-byte GETs), B = {:.0} MB/s (one {} GET, median of 3){}. I/O budget {}; medians of {} runs after a warm-up.",
        ms(target.round_trip),
        target.bandwidth / 1e6,
        size_label(probe),
        target
            .bundle_link
            .map(|(l, b)| format!(
                "; through the bundle stack (`BundleStore`, bundle server): L = {} (one-key bundles of the one-byte object), B = {:.0} MB/s (one-key bundles of the {} object). Each row's `L + P/B` uses the L and B of its own stack",
                ms(l),
                b / 1e6,
                size_label(probe)
            ))
            .unwrap_or_default(),
        args.budget,
        args.repeat
    );
    println!();
    println!("How each strategy pays the round trip:");
    println!();
    for line in &target.latency {
        println!("* {line}");
    }
    println!();
    println!(
        "Data set per cell: {}. tar and zip: `ArchiveStore` over the same `ObjectStoreStore`; each cell's shard indexes are built once before timing and cached, as a reader with a warm index has them (the cost is listed under each table). bundle: `BundleStore` with its defaults (up to 4 bundles in flight); reads issued = bundle HTTP requests, MB fetched = the tar stream (512-byte header per member, data padded to 512 bytes). Every answer is checked (length and the object's index in its first bytes).",
        if args.fill >= 1.0 {
            "exactly the batch's objects (each alone; packed back to back, and as tar and stored zip members, in shards of 64 MiB), read in shuffled order".to_string()
        } else {
            format!(
                "{:.0}x the batch's objects (each alone; packed, tar and stored zip shards of 64 MiB); the batch reads a random {:.0}% of them",
                1.0 / args.fill,
                args.fill * 100.0
            )
        }
    );
    println!();

    let (cells, skipped) = plan_cells(&sizes, &args.batches, args.fill, max_cell);
    let progress = ProgressBar::new((cells.len() * strategies.len()) as u64);
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} cells {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let copies = Copies::for_strategies(&strategies);
    let wants_tar = strategies.contains(&Strategy::Tar);
    let wants_zip = strategies.contains(&Strategy::Zip);

    let mut rows: Vec<Row> = Vec::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for &size in &sizes {
        let mut size_rows = Vec::new();
        let mut notes = Vec::new();
        for cell in cells.iter().filter(|c| c.size == size) {
            let base = Layout::base_of(&target.prefix, size, cell.batch);
            progress.set_message(format!("writing {} x {}", cell.objects, size_label(size)));
            let layout = Layout::new(&base, size, cell.objects);
            data::write(&target.writer, &layout, copies).await?;
            let archive = if wants_tar || wants_zip {
                progress.set_message(format!("indexing {} x {}", cell.objects, size_label(size)));
                let (archive, note) =
                    index_archives(&target, &layout, args.budget, wants_tar, wants_zip).await?;
                notes.push(format!("batch {}: {note}", cell.batch));
                Some(archive)
            } else {
                None
            };
            let stores = CellStores {
                target: &target,
                store: target.store(args.budget),
                archive,
                layout: &layout,
            };
            let picks = pick(cell.objects, cell.batch, &mut rng);
            for &strategy in &strategies {
                progress.set_message(format!(
                    "{} x {} {}",
                    cell.batch,
                    size_label(size),
                    strategy.name()
                ));
                size_rows.push(measure(&stores, &args, strategy, &picks).await?);
                progress.inc(1);
            }
            drop(stores);
            target.delete_prefix(&base).await?;
        }
        let skipped_here: Vec<usize> = skipped
            .iter()
            .filter(|(s, _)| *s == size)
            .map(|(_, b)| *b)
            .collect();
        let baselines = Baselines::new(&size_rows);
        progress.suspend(|| {
            println!(
                "## {} objects (L = {}, B = {:.0} MB/s)",
                size_label(size),
                ms(target.round_trip),
                target.bandwidth / 1e6
            );
            println!();
            if !size_rows.is_empty() {
                println!("{}", report::table(&size_rows, &baselines));
                println!();
            }
            if !notes.is_empty() {
                println!(
                    "Archive indexes, built before timing: {}.",
                    notes.join(". ")
                );
                println!();
            }
            if !skipped_here.is_empty() {
                println!(
                    "Batches {:?} skipped: their data set is over --max-cell-bytes {}.",
                    skipped_here, args.max_cell_bytes
                );
                println!();
            }
        });
        rows.extend(size_rows);
    }
    progress.finish_and_clear();

    let baselines = Baselines::new(&rows);
    let csv_path = args.out.join("bench.csv");
    report::write_csv(&csv_path, &rows, &baselines)?;
    let chart_path = args.out.join("speedup.svg");
    report::write_chart(
        &chart_path,
        &rows,
        &baselines,
        &format!(
            "getmany bench: speed-up over one get per object (L = {}, {})",
            ms(target.round_trip),
            if args.url.is_some() {
                "remote"
            } else if args.proxy {
                "TCP delay proxy"
            } else {
                "latency model"
            }
        ),
    )?;
    let targets = report::targets(&rows, &baselines);
    if !targets.is_empty() {
        println!("## Targets (1-16 KiB objects at batches of 1,000 and more)");
        println!();
        for line in targets {
            println!("* {line}");
        }
        println!();
    }
    println!("Wrote {} and {}.", csv_path.display(), chart_path.display());
    if args.cleanup || args.url.is_none() {
        target.delete_prefix(&target.prefix).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_bad_ones_are_named() {
        assert_eq!(parse_size("16KiB"), Ok(16384));
        assert_eq!(parse_size(" 1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("16kb").unwrap_err().contains("\"16kb\""));
        assert!(parse_size("0").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }

    #[test]
    fn cells_over_the_cap_are_skipped_by_their_data_set() {
        let sizes = [1 << 10, 1 << 20, 16 << 20];
        let (cells, skipped) = plan_cells(&sizes, &[16, 100, 1000], 1.0, 256 << 20);
        assert_eq!(cells.len(), 3 + 2 + 1);
        assert_eq!(
            skipped,
            vec![(1 << 20, 1000), (16 << 20, 100), (16 << 20, 1000)]
        );
        assert!(cells.iter().all(|c| c.objects == c.batch));
        // At fill 0.1 the data set is ten times the batch, and so is what the cap sees.
        let (cells, skipped) = plan_cells(&[1 << 20], &[16, 100], 0.1, 256 << 20);
        assert_eq!(
            cells,
            vec![Cell {
                size: 1 << 20,
                batch: 16,
                objects: 160
            }]
        );
        assert_eq!(skipped, vec![(1 << 20, 100)]);
    }

    #[test]
    fn picks_are_a_shuffled_subset_without_repeats() {
        let mut rng = 7;
        let all = pick(1000, 1000, &mut rng);
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(all, sorted, "shuffled");
        let some = pick(1000, 100, &mut rng);
        assert_eq!(some.len(), 100);
        let mut dedup = some.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), 100);
    }

    #[test]
    fn bundle_names_resolve_to_one_protocol() {
        use Strategy::*;
        assert_eq!(
            resolve(&[Loop, Bundle, BundleAistore], ProtocolArg::Aistore),
            vec![Loop, BundleAistore]
        );
        assert_eq!(
            resolve(&[Bundle, BundleAistore], ProtocolArg::Tigris),
            vec![BundleTigris, BundleAistore]
        );
    }

    #[test]
    fn planned_bundles_follow_the_store_defaults() {
        assert_eq!(planned_bundles(0), 0);
        assert_eq!(planned_bundles(16), 1);
        assert_eq!(planned_bundles(600), 2);
        assert_eq!(planned_bundles(1000), 3);
        assert_eq!(planned_bundles(10_000), 4);
        assert_eq!(planned_bundles(30_000), 6);
    }
}
