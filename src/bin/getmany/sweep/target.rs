//! What the sweep reads from: the embedded S3 and bundle servers behind the latency model
//! (default) or behind the TCP delay proxy (`--proxy`), or the user's object store URL and
//! bundle endpoint (`--url`, `--bundle-url`).

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use getmany::s3_server::S3Server;
use getmany::server::BundleServer;
use getmany::wrap::{Latency, LatencyModel, Metrics};
use getmany::{BundleProtocol, BundleStore, IoBudget, ObjectStoreStore, Store};
use object_store::aws::AmazonS3Builder;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::{Error, SweepArgs};
use crate::proxy::DelayProxy;

const BUCKET: &str = "bench";
const KEYS: (&str, &str) = ("getmany-bench", "getmany-bench-secret");

/// The bundle client of one protocol, counted.
pub struct BundleClient {
    /// The protocol it speaks.
    pub protocol: BundleProtocol,
    /// Counts the members answered and their bytes (above any latency model).
    pub store: Arc<Metrics<Arc<dyn Store>>>,
}

/// A target: where the data set is written, the stores that read it, and its link.
pub struct Target {
    /// For writing the data set (no latency charged).
    pub writer: Arc<dyn ObjectStore>,
    /// For reading: counted, and behind the latency model on the embedded target.
    pub reader: Arc<Metrics<Arc<dyn ObjectStore>>>,
    pub bundles: Vec<BundleClient>,
    /// Why there is no bundle client, when there is none.
    pub no_bundle: Option<String>,
    /// The crate's bundle server, when the target is embedded: it counts HTTP requests.
    pub bundle_server: Option<BundleServer>,
    /// Every key of the sweep is below this.
    pub prefix: String,
    /// L and B, measured through the read stack.
    pub round_trip: Duration,
    /// B, bytes per second.
    pub bandwidth: f64,
    /// L and B measured through the bundle stack (a one-key bundle of a 1-byte object, a
    /// one-key bundle of the probe object), when there is one.
    pub bundle_link: Option<(Duration, f64)>,
    /// What the target is, for the output's header.
    pub description: String,
    /// How each strategy pays the round trip, for the output's header.
    pub latency: Vec<String>,
    _s3: Option<S3Server>,
    _proxies: Vec<DelayProxy>,
}

fn s3_client(endpoint: &str) -> Result<Arc<dyn ObjectStore>, Error> {
    Ok(Arc::new(
        AmazonS3Builder::new()
            // Client options first: they carry allow_http, which must not be reset.
            .with_client_options(
                object_store::ClientOptions::new().with_pool_max_idle_per_host(1024),
            )
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id(KEYS.0)
            .with_secret_access_key(KEYS.1)
            .build()?,
    ))
}

fn bundle_store(
    protocol: BundleProtocol,
    endpoint: &str,
    bucket: &str,
    auth: &BundleAuth,
) -> Result<BundleStore, Error> {
    let mut builder = BundleStore::builder(protocol, endpoint, bucket);
    if let Some((access, secret)) = &auth.keys {
        builder = builder.credentials(access, secret).region(&auth.region);
    }
    if let Some(token) = &auth.token {
        builder = builder.token(token);
    }
    Ok(builder.build()?)
}

struct BundleAuth {
    keys: Option<(String, String)>,
    region: String,
    token: Option<String>,
}

/// The embedded target: the crate's S3 server and bundle server over one in-memory bucket,
/// read through the latency model, or through the TCP delay proxy with `--proxy`.
pub async fn embedded(args: &SweepArgs) -> Result<Target, Error> {
    let backend: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let s3 = S3Server::start(
        backend.clone(),
        BUCKET,
        "127.0.0.1:0".parse()?,
        Some((KEYS.0.into(), KEYS.1.into())),
    )
    .await?;
    let bundle_server = BundleServer::builder()
        .bucket(BUCKET, Arc::new(ObjectStoreStore::new(backend.clone())))
        .credentials(KEYS.0, KEYS.1)
        .start("127.0.0.1:0".parse()?)
        .await?;
    let rtt = Duration::from_secs_f64(args.rtt_ms / 1e3);
    let bandwidth = args.bandwidth_mbps.map(|mbps| mbps * 1e6);
    let link = format!(
        "round trip {} ms{}",
        args.rtt_ms,
        bandwidth
            .map(|b| format!(", bandwidth {} MB/s", b / 1e6))
            .unwrap_or_default()
    );
    let auth = BundleAuth {
        keys: Some((KEYS.0.into(), KEYS.1.into())),
        region: "us-east-1".into(),
        token: None,
    };
    let protocols = [BundleProtocol::Tigris, BundleProtocol::AiStore];
    let (reader, bundles, proxies, description, latency) = if args.proxy {
        let s3_proxy = DelayProxy::start_with(s3.local_addr(), rtt, bandwidth)?;
        let bundle_proxy = DelayProxy::start_with(bundle_server.local_addr(), rtt, bandwidth)?;
        let reader: Arc<dyn ObjectStore> = s3_client(&s3_proxy.url())?;
        let bundles = protocols
            .iter()
            .map(|&protocol| {
                let store: Arc<dyn Store> =
                    Arc::new(bundle_store(protocol, &bundle_proxy.url(), BUCKET, &auth)?);
                Ok(BundleClient {
                    protocol,
                    store: Arc::new(Metrics::new(store)),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let description = format!(
            "embedded S3 server at {} and bundle server at {} (one in-memory bucket), each behind a TCP delay proxy ({link}; {} ms each way, precise sleeps; the bandwidth shared by all connections of a proxy, per direction)",
            s3_proxy.url(),
            bundle_proxy.url(),
            args.rtt_ms / 2.0
        );
        let latency = vec![
            "No latency model in the client: every strategy's requests cross a real TCP delay proxy, so each HTTP request (a GET, a bundle) pays the round trip on the wire.".to_string(),
        ];
        (
            reader,
            bundles,
            vec![s3_proxy, bundle_proxy],
            description,
            latency,
        )
    } else {
        let mut model = LatencyModel::round_trip(rtt);
        if let Some(b) = bandwidth {
            model = model.with_bandwidth(b);
        }
        let reader: Arc<dyn ObjectStore> = Arc::new(Latency::new(s3_client(&s3.url())?, model));
        let bundles = protocols
            .iter()
            .map(|&protocol| {
                let store = bundle_store(protocol, &bundle_server.url(), BUCKET, &auth)?;
                // Over a Store, `Latency` charges each get_many call one round trip: one
                // per bundle request for batches of up to 20,000 keys (4 bundles in flight).
                let store: Arc<dyn Store> = Arc::new(Latency::new(store, model));
                Ok(BundleClient {
                    protocol,
                    store: Arc::new(Metrics::new(store)),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let description = format!(
            "embedded S3 server at {} and bundle server at {} (one in-memory bucket, SigV4 on both), latency model: {link}",
            s3.url(),
            bundle_server.url()
        );
        let latency = vec![
            format!("loop, default, coalesce, tar, zip: `getmany::wrap::Latency` at the object_store level (under `ObjectStoreStore`, under `ArchiveStore` for tar and zip) charges every GET that reaches the S3 client one round trip ({} ms){}.", args.rtt_ms, if bandwidth.is_some() { " and its bytes over the shared link" } else { "" }),
            "bundle: `BundleStore` sends one HTTP request per bundle with its own client (reqwest), so the model sits above it: one round trip per `get_many` call, charged with the same timer waits as one GET above, then the members' bytes over the link. All bundles of a call are in flight at once for batches up to 4 x 5,000 keys (`bundles_in_flight` x `max_keys`), so that is one round trip per bundle, exactly; a larger batch would be under-charged (use --proxy). (`wrap::Latency` over a Store is not used: it sleeps once per member, ~1 ms each with tokio's timer.)".to_string(),
        ];
        (reader, bundles, Vec::new(), description, latency)
    };
    Ok(Target {
        writer: backend,
        reader: Arc::new(Metrics::new(reader)),
        bundles,
        no_bundle: None,
        bundle_server: Some(bundle_server),
        prefix: "sweep".into(),
        round_trip: Duration::ZERO,
        bandwidth: 0.0,
        bundle_link: None,
        description,
        latency,
        _s3: Some(s3),
        _proxies: proxies,
    })
}

/// The user's object store (`--url`), and bundle endpoint if named (`--bundle-url`).
pub fn remote(url: &str, args: &SweepArgs) -> Result<Target, Error> {
    let parsed = url::Url::parse(url).map_err(|e| format!("--url {url:?}: {e}"))?;
    let (store, path) = object_store::parse_url_opts(&parsed, std::env::vars())?;
    let store: Arc<dyn ObjectStore> = Arc::from(store);
    let prefix = if path.as_ref().is_empty() {
        "getmany-bench".to_string()
    } else {
        format!("{path}/getmany-bench")
    };
    let mut bundles = Vec::new();
    let mut no_bundle = None;
    let mut description = format!("{url} (no simulated latency)");
    match &args.bundle_url {
        Some(endpoint) => {
            let bucket = match (&args.bundle_bucket, parsed.host_str()) {
                (Some(b), _) => b.clone(),
                (None, Some(host)) => host.to_string(),
                (None, None) => {
                    return Err(format!("--bundle-bucket is needed: {url} names no bucket").into());
                }
            };
            let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            let auth = BundleAuth {
                keys: env("AWS_ACCESS_KEY_ID").zip(env("AWS_SECRET_ACCESS_KEY")),
                region: env("AWS_REGION").unwrap_or_else(|| "auto".into()),
                token: env("AIS_AUTHN_TOKEN"),
            };
            let protocol = args.bundle_protocol.protocol();
            let store: Arc<dyn Store> = Arc::new(bundle_store(protocol, endpoint, &bucket, &auth)?);
            bundles.push(BundleClient {
                protocol,
                store: Arc::new(Metrics::new(store)),
            });
            description.push_str(&format!(
                "; bundle endpoint {endpoint} ({}), bucket {bucket}",
                protocol_name(protocol)
            ));
        }
        None => {
            no_bundle = Some(
                "no bundle endpoint named for this target (--bundle-url, --bundle-protocol)"
                    .to_string(),
            );
        }
    }
    Ok(Target {
        writer: store.clone(),
        reader: Arc::new(Metrics::new(store)),
        bundles,
        no_bundle,
        bundle_server: None,
        prefix,
        round_trip: Duration::ZERO,
        bandwidth: 0.0,
        bundle_link: None,
        description,
        latency: vec!["The target's own latency: nothing is simulated.".to_string()],
        _s3: None,
        _proxies: Vec::new(),
    })
}

/// The protocol's name, for messages.
pub fn protocol_name(protocol: BundleProtocol) -> &'static str {
    match protocol {
        BundleProtocol::Tigris => "Tigris bundle",
        BundleProtocol::AiStore => "AIStore GetBatch",
    }
}

impl Target {
    /// An `ObjectStoreStore` over the counted reader, with `budget` reads in flight.
    pub fn store(&self, budget: usize) -> ObjectStoreStore {
        ObjectStoreStore::new(self.reader.clone()).with_budget(IoBudget::new(budget))
    }

    /// The bundle client of `protocol`, if the target has one.
    pub fn bundle(&self, protocol: BundleProtocol) -> Option<&BundleClient> {
        self.bundles.iter().find(|b| b.protocol == protocol)
    }

    /// `L + P/B` for `payload` bytes, with L and B of the stack `bundle` says.
    pub fn limit(&self, payload: u64, bundle: bool) -> Duration {
        let (l, b) = match self.bundle_link {
            Some(link) if bundle => link,
            _ => (self.round_trip, self.bandwidth),
        };
        l + Duration::from_secs_f64(payload as f64 / b)
    }

    /// Measures L (median of 21 one-byte reads) and B (one `probe_bytes` read, median of 3)
    /// through the whole S3 read stack, and the same through the bundle stack (one-key
    /// bundles).
    pub async fn measure_link(&mut self, probe_bytes: u64) -> Result<(), Error> {
        let one = format!("{}/probe/one", self.prefix);
        let big = format!("{}/probe/big", self.prefix);
        self.writer
            .put(&Path::from(one.as_str()), PutPayload::from(vec![1u8]))
            .await?;
        self.writer
            .put(
                &Path::from(big.as_str()),
                PutPayload::from(vec![2u8; probe_bytes as usize]),
            )
            .await?;
        let (round_trip, bandwidth) =
            crate::link::measure_link(&self.store(1), &one, &big, probe_bytes, 3).await?;
        self.round_trip = round_trip;
        self.bandwidth = bandwidth;
        if let Some(bundle) = self.bundles.first() {
            self.bundle_link = Some(
                crate::link::measure_link(bundle.store.as_ref(), &one, &big, probe_bytes, 3)
                    .await?,
            );
        }
        self.writer.delete(&Path::from(one.as_str())).await?;
        self.writer.delete(&Path::from(big.as_str())).await?;
        Ok(())
    }

    /// Deletes every object below `prefix`.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<(), Error> {
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
