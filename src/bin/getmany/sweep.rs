//! `getmany bench`: the sweep. Object size x batch size x strategy against a target (the
//! embedded S3 server behind the latency model by default, or any object_store URL), with a
//! table per object size, a CSV of every cell and an SVG chart of the speed-ups.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use comfy_table::{Table, presets::ASCII_MARKDOWN};
use futures::{StreamExt, TryStreamExt};
use getmany::s3_server::S3Server;
use getmany::wrap::{Latency, LatencyModel, Metrics};
use getmany::{IoBudget, ObjectStoreStore, Request, Store, get_many_concurrent};
use indicatif::{ProgressBar, ProgressStyle};
use object_store::aws::AmazonS3Builder;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

type Error = Box<dyn std::error::Error>;

/// A way of reading a batch of objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Strategy {
    /// One `get` per object, one after the other.
    Loop,
    /// The default `get_many`: concurrent `get`s under the I/O budget.
    Default,
    /// `ObjectStoreStore::get_many` on the objects packed back to back in shards.
    Coalesce,
}

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Strategy::Loop => "loop",
            Strategy::Default => "default",
            Strategy::Coalesce => "coalesce",
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
    /// Strategies to compare.
    #[arg(long, value_delimiter = ',', default_value = "loop,default,coalesce")]
    strategies: Vec<Strategy>,
    /// Simulated round trip in ms (embedded target only).
    #[arg(long, default_value_t = 10.0)]
    rtt_ms: f64,
    /// Simulated shared bandwidth in MB/s (embedded target only; default: unlimited).
    #[arg(long)]
    bandwidth_mbps: Option<f64>,
    /// Measured repetitions per cell after one warm-up; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Reads in flight (the store's I/O budget).
    #[arg(long, default_value_t = IoBudget::DEFAULT_LIMIT)]
    budget: usize,
    /// Largest data set per object size; larger batches are skipped (and said so).
    #[arg(long, default_value = "256MiB")]
    max_cell_bytes: String,
    /// The loop strategy times this many sequential gets and scales to the batch (a loop is
    /// linear in the batch); rows so estimated are marked `est.`.
    #[arg(long, default_value_t = 20)]
    loop_sample: usize,
    /// Read from this object_store URL (e.g. s3://bucket/prefix; credentials from the usual
    /// environment) instead of the embedded server. Data is written below it first.
    #[arg(long)]
    url: Option<String>,
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
        .map(|n| n * mult)
        .map_err(|_| format!("not a size: {s:?} (use e.g. 16KiB, 1MiB)"))
}

fn size_label(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// Axis labels on a log scale fall on powers of ten: name them in decimal units.
fn decimal_label(bytes: f64) -> String {
    match bytes {
        b if b >= 1e9 => format!("{:.0} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.0} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.0} kB", b / 1e3),
        b => format!("{b:.0} B"),
    }
}

/// One measured cell.
#[derive(Debug, Clone)]
struct Row {
    size: u64,
    batch: usize,
    strategy: Strategy,
    requests: u64,
    bytes_asked: u64,
    bytes_fetched: u64,
    wall: Duration,
    first: Duration,
    estimated: bool,
    limit: Duration,
}

struct Target {
    /// For writing the data set (no latency charged).
    writer: Arc<dyn ObjectStore>,
    /// For reading: counted, and behind the latency model on the embedded target.
    reader: Arc<Metrics<Arc<dyn ObjectStore>>>,
    prefix: String,
    round_trip: Duration,
    bandwidth: f64,
    description: String,
    _server: Option<S3Server>,
}

const KEYS: (&str, &str) = ("getmany-bench", "getmany-bench-secret");

async fn embedded(args: &SweepArgs) -> Result<Target, Error> {
    let server = S3Server::start(
        Arc::new(InMemory::new()),
        "bench",
        "127.0.0.1:0".parse()?,
        Some((KEYS.0.into(), KEYS.1.into())),
    )
    .await?;
    let client: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::new()
            .with_client_options(
                object_store::ClientOptions::new().with_pool_max_idle_per_host(1024),
            )
            .with_endpoint(server.url())
            .with_allow_http(true)
            .with_bucket_name("bench")
            .with_region("us-east-1")
            .with_access_key_id(KEYS.0)
            .with_secret_access_key(KEYS.1)
            .build()?,
    );
    let mut model = LatencyModel::round_trip(Duration::from_secs_f64(args.rtt_ms / 1e3));
    if let Some(mbps) = args.bandwidth_mbps {
        model = model.with_bandwidth(mbps * 1e6);
    }
    let slow: Arc<dyn ObjectStore> = Arc::new(Latency::new(client.clone(), model));
    Ok(Target {
        writer: client,
        reader: Arc::new(Metrics::new(slow)),
        prefix: "sweep".into(),
        round_trip: Duration::ZERO,
        bandwidth: 0.0,
        description: format!(
            "embedded S3 server (s3s over object_store InMemory, SigV4) at {}, latency model: round trip {} ms{}",
            server.url(),
            args.rtt_ms,
            args.bandwidth_mbps
                .map(|b| format!(", bandwidth {b} MB/s"))
                .unwrap_or_default()
        ),
        _server: Some(server),
    })
}

fn remote(url: &str) -> Result<Target, Error> {
    let parsed = url::Url::parse(url)?;
    let (store, path) = object_store::parse_url_opts(&parsed, std::env::vars())?;
    let store: Arc<dyn ObjectStore> = Arc::from(store);
    let prefix = if path.as_ref().is_empty() {
        "getmany-bench".to_string()
    } else {
        format!("{path}/getmany-bench")
    };
    Ok(Target {
        writer: store.clone(),
        reader: Arc::new(Metrics::new(store)),
        prefix,
        round_trip: Duration::ZERO,
        bandwidth: 0.0,
        description: format!("{url} (no simulated latency)"),
        _server: None,
    })
}

impl Target {
    fn store(&self, budget: usize) -> ObjectStoreStore {
        ObjectStoreStore::new(self.reader.clone()).with_budget(IoBudget::new(budget))
    }

    fn limit(&self, payload: u64) -> Duration {
        self.round_trip + Duration::from_secs_f64(payload as f64 / self.bandwidth)
    }

    /// Measures L (median of 21 one-byte reads) and B (one 64 MiB read, median of 3)
    /// through the whole read stack.
    async fn measure_link(&mut self) -> Result<(), Error> {
        let one = Path::from(format!("{}/probe/one", self.prefix));
        let big = Path::from(format!("{}/probe/big", self.prefix));
        self.writer.put(&one, PutPayload::from(vec![1u8])).await?;
        self.writer
            .put(&big, PutPayload::from(vec![2u8; 64 << 20]))
            .await?;
        let (round_trip, bandwidth) =
            crate::link::measure_link(&self.store(1), one.as_ref(), big.as_ref(), 64 << 20, 3)
                .await?;
        self.round_trip = round_trip;
        self.bandwidth = bandwidth;
        self.writer.delete(&one).await?;
        self.writer.delete(&big).await?;
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), Error> {
        let listed: Vec<Path> = self
            .writer
            .list(Some(&Path::from(prefix)))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        futures::stream::iter(listed)
            .map(|p| async move { self.writer.delete(&p).await })
            .buffer_unordered(64)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }
}

/// The objects of one size: each alone, and packed back to back in shards.
struct DataSet {
    size: u64,
    objects: Vec<String>,
    /// For each object: its shard key and offset.
    packed: Vec<(String, u64)>,
}

async fn write_data_set(target: &Target, size: u64, count: usize) -> Result<DataSet, Error> {
    let base = format!("{}/{}", target.prefix, size);
    let objects: Vec<String> = (0..count).map(|i| format!("{base}/o/{i:06}")).collect();
    // Content differs per object so a mixed-up answer would show.
    let content = |i: usize| -> Bytes {
        let mut v = vec![(i % 251) as u8; size as usize];
        v[..8.min(size as usize)]
            .copy_from_slice(&(i as u64).to_le_bytes()[..8.min(size as usize)]);
        v.into()
    };
    futures::stream::iter(objects.iter().enumerate())
        .map(|(i, k)| {
            let value = content(i);
            async move {
                target
                    .writer
                    .put(&Path::from(k.as_str()), PutPayload::from_bytes(value))
                    .await
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    let per_shard = ((64u64 << 20) / size).clamp(1, count as u64) as usize;
    let mut packed = Vec::with_capacity(count);
    for (s, chunk) in (0..count).collect::<Vec<_>>().chunks(per_shard).enumerate() {
        let key = format!("{base}/packed/{s:04}");
        let mut shard = Vec::with_capacity(chunk.len() * size as usize);
        for &i in chunk {
            packed.push((key.clone(), shard.len() as u64));
            shard.extend_from_slice(&content(i));
        }
        target
            .writer
            .put(&Path::from(key.as_str()), PutPayload::from(shard))
            .await?;
    }
    Ok(DataSet {
        size,
        objects,
        packed,
    })
}

/// Drains a get_many stream; returns the time to the first answer. Panics on a failed read:
/// a benchmark whose reads fail measures nothing.
async fn drain(mut stream: getmany::GetManyStream<'_>, n: usize, started: Instant) -> Duration {
    let mut first = None;
    let mut answered = 0;
    while let Some((index, result)) = stream.next().await {
        first.get_or_insert_with(|| started.elapsed());
        match result {
            Ok(Some(_)) => answered += 1,
            other => panic!("benchmark read {index} failed: {other:?}"),
        }
    }
    assert_eq!(answered, n, "every request answered");
    first.unwrap_or_default()
}

async fn run_once(
    target: &Target,
    store: &ObjectStoreStore,
    strategy: Strategy,
    data: &DataSet,
    picks: &[usize],
) -> Duration {
    let started = Instant::now();
    match strategy {
        Strategy::Loop => {
            let mut first = None;
            for &i in picks {
                store
                    .get(&data.objects[i], None)
                    .await
                    .expect("benchmark read")
                    .expect("benchmark object exists");
                first.get_or_insert_with(|| started.elapsed());
            }
            first.unwrap_or_default()
        }
        Strategy::Default => {
            let requests: Vec<Request> = picks
                .iter()
                .map(|&i| Request::whole(data.objects[i].clone()))
                .collect();
            drain(get_many_concurrent(store, requests), picks.len(), started).await
        }
        Strategy::Coalesce => {
            let requests: Vec<Request> = picks
                .iter()
                .map(|&i| {
                    let (key, at) = &data.packed[i];
                    Request::range(key.clone(), *at..*at + data.size)
                })
                .collect();
            let _ = target;
            drain(store.get_many(requests), picks.len(), started).await
        }
    }
}

async fn measure(
    target: &Target,
    args: &SweepArgs,
    strategy: Strategy,
    data: &DataSet,
    picks: &[usize],
) -> Row {
    let store = target.store(args.budget);
    let n = picks.len();
    let (sample, estimated) = if strategy == Strategy::Loop && n > args.loop_sample {
        (&picks[..args.loop_sample.max(1)], true)
    } else {
        (picks, false)
    };
    let scale = n as f64 / sample.len() as f64;
    run_once(target, &store, strategy, data, sample).await; // warm-up
    let mut runs = Vec::new();
    for _ in 0..args.repeat.max(1) {
        target.reader.reset();
        let started = Instant::now();
        let first = run_once(target, &store, strategy, data, sample).await;
        let wall = started.elapsed().mul_f64(scale);
        let m = target.reader.snapshot();
        runs.push((
            wall,
            first,
            (m.reads as f64 * scale) as u64,
            (m.bytes as f64 * scale) as u64,
        ));
    }
    runs.sort_by_key(|r| r.0);
    let (wall, first, requests, fetched) = runs[runs.len() / 2];
    let payload = n as u64 * data.size;
    Row {
        size: data.size,
        batch: n,
        strategy,
        requests,
        bytes_asked: payload,
        bytes_fetched: fetched,
        wall,
        first,
        estimated,
        limit: target.limit(payload),
    }
}

fn ms(d: Duration) -> String {
    if d.as_secs_f64() >= 10.0 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

fn table(rows: &[Row], loops: &HashMap<(u64, usize), Duration>) -> Table {
    let mut t = Table::new();
    t.load_preset(ASCII_MARKDOWN);
    t.set_header(vec![
        "batch",
        "strategy",
        "GETs",
        "MB asked",
        "MB fetched",
        "wall (median)",
        "MB/s",
        "speed-up vs loop",
        "wall / (L + P/B)",
        "first result",
    ]);
    for r in rows {
        let speedup = loops
            .get(&(r.size, r.batch))
            .map(|l| format!("{:.1}x", l.as_secs_f64() / r.wall.as_secs_f64()))
            .unwrap_or_else(|| "-".into());
        t.add_row(vec![
            r.batch.to_string(),
            format!(
                "{}{}",
                r.strategy.name(),
                if r.estimated { " (est.)" } else { "" }
            ),
            r.requests.to_string(),
            format!("{:.2}", r.bytes_asked as f64 / 1e6),
            format!("{:.2}", r.bytes_fetched as f64 / 1e6),
            ms(r.wall),
            format!("{:.0}", r.bytes_asked as f64 / 1e6 / r.wall.as_secs_f64()),
            speedup,
            format!("{:.2}", r.wall.as_secs_f64() / r.limit.as_secs_f64()),
            ms(r.first),
        ]);
    }
    t
}

fn write_csv(
    path: &std::path::Path,
    rows: &[Row],
    loops: &HashMap<(u64, usize), Duration>,
) -> Result<(), Error> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record([
        "object_bytes",
        "batch",
        "strategy",
        "estimated",
        "requests",
        "bytes_asked",
        "bytes_fetched",
        "wall_ms",
        "first_ms",
        "throughput_mb_s",
        "speedup_vs_loop",
        "limit_ms",
        "ratio_to_limit",
    ])?;
    for r in rows {
        let speedup = loops
            .get(&(r.size, r.batch))
            .map(|l| l.as_secs_f64() / r.wall.as_secs_f64());
        w.write_record([
            r.size.to_string(),
            r.batch.to_string(),
            r.strategy.name().to_string(),
            r.estimated.to_string(),
            r.requests.to_string(),
            r.bytes_asked.to_string(),
            r.bytes_fetched.to_string(),
            format!("{:.3}", r.wall.as_secs_f64() * 1e3),
            format!("{:.3}", r.first.as_secs_f64() * 1e3),
            format!("{:.1}", r.bytes_asked as f64 / 1e6 / r.wall.as_secs_f64()),
            speedup.map(|s| format!("{s:.2}")).unwrap_or_default(),
            format!("{:.3}", r.limit.as_secs_f64() * 1e3),
            format!("{:.3}", r.wall.as_secs_f64() / r.limit.as_secs_f64()),
        ])?;
    }
    w.flush()?;
    Ok(())
}

/// One panel per strategy: speed-up over the loop against object size, a line per batch.
fn write_chart(
    path: &std::path::Path,
    rows: &[Row],
    loops: &HashMap<(u64, usize), Duration>,
    title: &str,
) -> Result<(), Error> {
    use plotters::prelude::*;
    let strategies: Vec<Strategy> = {
        let mut s: Vec<Strategy> = rows
            .iter()
            .map(|r| r.strategy)
            .filter(|s| *s != Strategy::Loop)
            .collect();
        s.sort_by_key(|s| *s as u8);
        s.dedup();
        s
    };
    if strategies.is_empty() || loops.is_empty() {
        return Ok(());
    }
    let mut batches: Vec<usize> = rows.iter().map(|r| r.batch).collect();
    batches.sort();
    batches.dedup();
    let sizes: Vec<u64> = rows.iter().map(|r| r.size).collect();
    let (min_size, max_size) = (
        *sizes.iter().min().unwrap_or(&1) as f64,
        *sizes.iter().max().unwrap_or(&1) as f64,
    );
    let speedups: Vec<f64> = rows
        .iter()
        .filter_map(|r| {
            loops
                .get(&(r.size, r.batch))
                .map(|l| l.as_secs_f64() / r.wall.as_secs_f64())
        })
        .collect();
    let max_speedup = speedups.iter().cloned().fold(1.0f64, f64::max) * 2.0;

    let width = 480 * strategies.len() as u32;
    let root = SVGBackend::new(path, (width.max(480), 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    let panels = root.split_evenly((1, strategies.len()));
    for (panel, strategy) in panels.iter().zip(&strategies) {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{} vs one get per object", strategy.name()),
                ("sans-serif", 15),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(
                (min_size / 1.5..max_size * 1.5).log_scale(),
                (0.5f64..max_speedup).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("object size")
            .y_desc("speed-up (x)")
            .x_label_formatter(&|v| decimal_label(*v))
            .draw()?;
        for (i, batch) in batches.iter().enumerate() {
            let mut points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.strategy == *strategy && r.batch == *batch)
                .filter_map(|r| {
                    loops
                        .get(&(r.size, r.batch))
                        .map(|l| (r.size as f64, l.as_secs_f64() / r.wall.as_secs_f64()))
                })
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            if points.is_empty() {
                continue;
            }
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(format!("batch {batch}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 15, y)], color.stroke_width(2))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Runs the sweep.
pub async fn run(args: SweepArgs) -> Result<(), Error> {
    let sizes: Vec<u64> = args
        .sizes
        .iter()
        .map(|s| parse_size(s))
        .collect::<Result<_, _>>()?;
    let max_cell = parse_size(&args.max_cell_bytes)?;
    let mut target = match &args.url {
        Some(url) => remote(url)?,
        None => embedded(&args).await?,
    };
    std::fs::create_dir_all(&args.out)?;
    target.measure_link().await?;
    println!("# getmany bench");
    println!();
    println!("Target: {}.", target.description);
    println!(
        "Measured through the read stack: L = {} (median of 21 one-byte GETs), B = {:.0} MB/s (one 64 MiB GET). I/O budget {}; medians of {} runs after a warm-up.",
        ms(target.round_trip),
        target.bandwidth / 1e6,
        args.budget,
        args.repeat
    );
    println!();

    let cells: usize = sizes
        .iter()
        .map(|&s| {
            args.batches
                .iter()
                .filter(|&&b| b as u64 * s <= max_cell)
                .count()
        })
        .sum::<usize>()
        * args.strategies.len();
    let progress = ProgressBar::new(cells as u64);
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} cells {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let mut rows: Vec<Row> = Vec::new();
    let mut loops: HashMap<(u64, usize), Duration> = HashMap::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for &size in &sizes {
        let batches: Vec<usize> = args
            .batches
            .iter()
            .copied()
            .filter(|&b| b as u64 * size <= max_cell)
            .collect();
        let skipped: Vec<usize> = args
            .batches
            .iter()
            .copied()
            .filter(|&b| b as u64 * size > max_cell)
            .collect();
        let Some(&largest) = batches.iter().max() else {
            progress.println(format!(
                "{}: every batch exceeds --max-cell-bytes {}; skipped",
                size_label(size),
                args.max_cell_bytes
            ));
            continue;
        };
        progress.set_message(format!("writing {} x {}", largest, size_label(size)));
        let data = write_data_set(&target, size, largest).await?;
        let mut size_rows = Vec::new();
        for &batch in &batches {
            // A random subset of the objects, so packed reads have gaps unless batch = all.
            let mut picks: Vec<usize> = (0..largest).collect();
            for i in (1..picks.len()).rev() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                picks.swap(i, (rng % (i as u64 + 1)) as usize);
            }
            picks.truncate(batch);
            for &strategy in &args.strategies {
                progress.set_message(format!(
                    "{} x {} {}",
                    batch,
                    size_label(size),
                    strategy.name()
                ));
                let row = measure(&target, &args, strategy, &data, &picks).await;
                if strategy == Strategy::Loop {
                    loops.insert((size, batch), row.wall);
                }
                size_rows.push(row);
                progress.inc(1);
            }
        }
        progress.suspend(|| {
            println!(
                "## {} objects (B = {:.0} MB/s, L = {})",
                size_label(size),
                target.bandwidth / 1e6,
                ms(target.round_trip)
            );
            println!();
            println!("{}", table(&size_rows, &loops));
            if !skipped.is_empty() {
                println!();
                println!(
                    "Batches {:?} skipped: over --max-cell-bytes {}.",
                    skipped, args.max_cell_bytes
                );
            }
            println!();
        });
        rows.extend(size_rows);
        target
            .delete_prefix(&format!("{}/{}", target.prefix, size))
            .await?;
    }
    progress.finish_and_clear();

    let csv_path = args.out.join("bench.csv");
    write_csv(&csv_path, &rows, &loops)?;
    let chart_path = args.out.join("speedup.svg");
    write_chart(
        &chart_path,
        &rows,
        &loops,
        &format!(
            "getmany bench: speed-up over one get per object ({})",
            ms(target.round_trip)
        ),
    )?;
    println!("Wrote {} and {}.", csv_path.display(), chart_path.display());
    if args.cleanup || args.url.is_none() {
        target.delete_prefix(&target.prefix).await?;
    }
    Ok(())
}
