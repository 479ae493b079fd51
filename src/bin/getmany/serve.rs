//! `getmany serve`: the bundle endpoint (Tigris bundle, AIStore GetBatch, S3 GET/HEAD) in
//! front of a directory of buckets or any object_store URL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use getmany::server::{BundleServer, Limits, valid_bucket_name};
use getmany::{DirStore, IoBudget, ObjectStoreStore, Store};

/// The I/O budget of a bucket served from an object_store URL when `--backend-budget` is
/// not given: GETs in flight to the object store, per bucket. Chosen from the
/// `getmany bench-bundle --backend s3` sweep (docs/bundle-speed.md).
pub const OBJECT_STORE_BUDGET: usize = 256;

/// The I/O budget of a directory bucket when `--backend-budget` is not given: batches of up
/// to 64 files read at once. Below DirStore's own default of 64: with the files in the page
/// cache, 64 batches at once were the slowest of 1-64 in the `bench-bundle --backend dir`
/// sweep at RTT 0 (reads run far ahead of the response, and their buffers leave the CPU's
/// caches before they are sent), while 16 still keeps a cold disk's queue busy
/// (docs/bundle-speed.md).
pub const DIR_BUDGET: usize = 16;

/// A budget of at least one read.
pub fn parse_budget(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a positive number of reads, not {s:?}")),
    }
}

/// Options of `getmany serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A directory whose subdirectories are the buckets. Nothing outside it is ever served:
    /// symbolic links that lead out of a bucket are refused.
    #[arg(long, conflicts_with = "url", required_unless_present = "url")]
    root: Option<PathBuf>,
    /// Any object_store URL (s3://bucket/prefix, gs://..., az://...) or a directory
    /// (file:///path, confined as --root is), served as one bucket; credentials come from the usual environment variables (AWS_*, GOOGLE_*,
    /// AZURE_*).
    #[arg(long)]
    url: Option<String>,
    /// The bucket name for --url (default: the URL's bucket, or "data").
    #[arg(long, requires = "url")]
    bucket: Option<String>,
    /// The address to listen on (port 0: any free port). Anything but loopback needs
    /// --access-key and --secret-key.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Require an AWS Signature V4 made with this access key on every request.
    #[arg(long, requires = "secret_key")]
    access_key: Option<String>,
    /// The secret key for --access-key.
    #[arg(long, requires = "access_key")]
    secret_key: Option<String>,
    /// Accept `Authorization: Bearer <token>` on the AIStore routes.
    #[arg(long)]
    token: Option<String>,
    /// Bundle and GetBatch requests served at once; more answer 429.
    #[arg(long, default_value_t = Limits::default().max_in_flight)]
    max_in_flight: usize,
    /// The longest a request may take, its response included, in seconds.
    #[arg(long, default_value_t = Limits::default().request_timeout.as_secs())]
    request_timeout_secs: u64,
    /// The longest a client may take to send a request head (and a new connection its first
    /// request), in seconds.
    #[arg(long, default_value_t = Limits::default().header_read_timeout.as_secs_f64())]
    header_timeout_secs: f64,
    /// The longest a connection may stay open between requests, in seconds.
    #[arg(long, default_value_t = Limits::default().idle_timeout.as_secs_f64())]
    idle_timeout_secs: f64,
    /// The longest a response may wait for its client to read on, in seconds.
    #[arg(long, default_value_t = Limits::default().stall_timeout.as_secs_f64())]
    stall_timeout_secs: f64,
    /// Answer GetBatch requests with a 307 redirect to this base URL (as an AIStore proxy
    /// does), after authentication.
    #[arg(long)]
    redirect_getbatch: Option<String>,
    /// Connections open at once; more are closed at once.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Reads in flight from each bucket's store, shared by every bundle: GETs to the object
    /// store for --url (default 256: a server next to its object store, where a GET takes
    /// 5-20 ms, needs many in flight), batches of up to 64 files for a directory (default
    /// 16).
    #[arg(long, value_parser = parse_budget)]
    backend_budget: Option<usize>,
}

/// A positive, finite number of seconds.
fn seconds(name: &str, secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("--{name} must be a positive number of seconds, not {secs}"))
}

/// The options object_store reads for a URL, from the environment (lower-cased, as its
/// builders' config keys are).
fn env_options() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            ["AWS_", "GOOGLE_", "AZURE_", "OBJECT_STORE_"]
                .iter()
                .any(|p| k.starts_with(p))
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

/// A bucket name and the store that serves it.
type Bucket = (String, Arc<dyn Store>);

fn buckets_of_root(
    root: &PathBuf,
    budget: usize,
) -> Result<Vec<Bucket>, Box<dyn std::error::Error>> {
    let mut buckets = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(root)
        .map_err(|e| format!("cannot read --root {}: {e}", root.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        // A bucket is a real directory of the root, never a link to one elsewhere.
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if !valid_bucket_name(&name) {
            eprintln!("getmany serve: skipping {name:?}: not a valid bucket name");
            continue;
        }
        let store = DirStore::open(entry.path())
            .map_err(|e| format!("cannot open bucket directory {name:?}: {e}"))?
            .with_limit(budget);
        buckets.push((name, Arc::new(store) as Arc<dyn Store>));
    }
    Ok(buckets)
}

fn bucket_of_url(
    url: &str,
    name: Option<String>,
    budget: Option<usize>,
) -> Result<(String, Arc<dyn Store>), Box<dyn std::error::Error>> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("--url {url:?}: {e}"))?;
    if parsed.scheme() == "file" {
        // A directory is served by DirStore, which never follows a link out of it
        // (object_store's LocalFileSystem would).
        let path = parsed
            .to_file_path()
            .map_err(|()| format!("--url {url:?}: not a local path"))?;
        let store = DirStore::open(&path)
            .map_err(|e| format!("--url {url:?}: {e}"))?
            .with_limit(budget.unwrap_or(DIR_BUDGET));
        return Ok((name.unwrap_or_else(|| "data".to_string()), Arc::new(store)));
    }
    let budget = budget.unwrap_or(OBJECT_STORE_BUDGET);
    let mut options = env_options();
    // Keep a connection per read in flight open between bundles.
    options.push(("pool_max_idle_per_host".into(), budget.to_string()));
    let (store, prefix) = object_store::parse_url_opts(&parsed, options)
        .map_err(|e| format!("--url {url:?}: {e}"))?;
    let name = name
        .or_else(|| {
            parsed
                .host_str()
                .filter(|h| valid_bucket_name(h))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "data".to_string());
    let store = ObjectStoreStore::new(Arc::from(store))
        .with_prefix(prefix.as_ref())?
        .with_budget(IoBudget::new(budget));
    Ok((name, Arc::new(store)))
}

/// Runs the server until the process is stopped.
pub async fn run(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let buckets = match (&args.root, &args.url) {
        (Some(root), _) => buckets_of_root(root, args.backend_budget.unwrap_or(DIR_BUDGET))?,
        (None, Some(url)) => vec![bucket_of_url(
            url,
            args.bucket.clone(),
            args.backend_budget,
        )?],
        (None, None) => return Err("give --root DIR or --url URL".into()),
    };
    if buckets.is_empty() {
        return Err("no buckets to serve (the --root directory has no subdirectories)".into());
    }
    let limits = Limits {
        max_in_flight: args.max_in_flight,
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        header_read_timeout: seconds("header-timeout-secs", args.header_timeout_secs)?,
        idle_timeout: seconds("idle-timeout-secs", args.idle_timeout_secs)?,
        stall_timeout: seconds("stall-timeout-secs", args.stall_timeout_secs)?,
        max_connections: args.max_connections,
        ..Limits::default()
    };
    let mut builder = BundleServer::builder().limits(limits);
    let names: Vec<String> = buckets.iter().map(|(n, _)| n.clone()).collect();
    let stores: Vec<Arc<dyn Store>> = buckets.iter().map(|(_, s)| s.clone()).collect();
    for (name, store) in buckets {
        builder = builder.bucket(name, store);
    }
    if let (Some(access), Some(secret)) = (args.access_key, args.secret_key) {
        builder = builder.credentials(access, secret);
    }
    if let Some(token) = args.token {
        builder = builder.token(token);
    }
    if let Some(target) = args.redirect_getbatch {
        builder = builder.redirect_getbatch(target);
    }
    let server = builder.start(args.listen).await?;
    // The first line is for scripts: the address to connect to.
    println!("listening on {}", server.url());
    println!("buckets: {}", names.join(", "));
    let budgets: Vec<String> = stores
        .iter()
        .map(|store| store.io_budget().limit().to_string())
        .collect();
    println!("backend budget: {}", budgets.join(", "));
    std::future::pending::<()>().await;
    Ok(())
}
