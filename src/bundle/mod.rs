//! [`BundleStore`]: a [`Store`] whose `get_many` reads thousands of objects per HTTP request
//! from a bundle endpoint (the Tigris bundle API or AIStore's GetBatch).

mod read;
mod retry;
mod wire;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};

use crate::store::GetManyStream;
use crate::{ByteRange, Error, IoBudget, Request, Result, Store, slice_object};

const STORE: &str = "bundle";

/// Which protocol a [`BundleStore`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleProtocol {
    /// Tigris: `POST /{bucket}?bundle` with `{"keys":[...]}`, SigV4-signed. Whole objects
    /// only; byte ranges go through the ranged store ([`BundleStoreBuilder::ranged_store`]).
    Tigris,
    /// AIStore GetBatch: `GET /v1/ml/moss/{bucket}` with `{"in":[...]}`. Byte ranges are
    /// native (`start`/`length`); a suffix range is read whole and cut on the client.
    AiStore,
}

/// Compression of a bundle's body (the whole body, not a `Content-Encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BundleCompression {
    /// None (the default): for fast links the CPU time of compressing costs more than it
    /// saves.
    #[default]
    None,
    /// gzip (Tigris `gzip`, AIStore `.tgz`).
    Gzip,
    /// zstd (Tigris only).
    Zstd,
}

/// Configures a [`BundleStore`].
pub struct BundleStoreBuilder {
    protocol: BundleProtocol,
    endpoint: String,
    bucket: String,
    credentials: Option<(String, String)>,
    region: String,
    token: Option<String>,
    compression: BundleCompression,
    max_keys: usize,
    bundles_in_flight: usize,
    min_keys_per_bundle: usize,
    ranged: Option<Arc<dyn Store>>,
    budget: Option<IoBudget>,
    client: Option<reqwest::Client>,
    max_member_bytes: u64,
    completion_order: bool,
    timeout: Duration,
    retries: u32,
    retry_base: Duration,
    retry_max: Duration,
    stall_timeout: Duration,
}

impl fmt::Debug for BundleStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BundleStoreBuilder")
            .field("protocol", &self.protocol)
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("access_key", &self.credentials.as_ref().map(|(a, _)| a))
            .field("compression", &self.compression)
            .field("max_keys", &self.max_keys)
            .field("bundles_in_flight", &self.bundles_in_flight)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("retry_backoff", &(self.retry_base, self.retry_max))
            .field("stall_timeout", &self.stall_timeout)
            .finish_non_exhaustive()
    }
}

/// The most keys one bundle may hold (the Tigris limit).
pub const MAX_KEYS_PER_BUNDLE: usize = 5_000;

impl BundleStoreBuilder {
    /// Signs every request with AWS Signature V4 (service `s3`).
    pub fn credentials(
        mut self,
        access_key: impl Into<String>,
        secret_key: impl Into<String>,
    ) -> Self {
        self.credentials = Some((access_key.into(), secret_key.into()));
        self
    }

    /// The SigV4 region (default `"auto"`, as Tigris).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// Sends `Authorization: Bearer <token>` (AIStore), unless requests are signed.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Asks for a compressed body.
    pub fn compression(mut self, compression: BundleCompression) -> Self {
        self.compression = compression;
        self
    }

    /// Distinct keys (Tigris) or entries (AIStore) per bundle, 1 to 5,000 (default 5,000).
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Bundles of one `get_many` in flight at once (default 4; also bounded by the budget).
    pub fn bundles_in_flight(mut self, bundles: usize) -> Self {
        self.bundles_in_flight = bundles.max(1);
        self
    }

    /// A batch is spread over up to [`bundles_in_flight`](Self::bundles_in_flight) bundles
    /// as long as each gets at least this many keys (default 256); 4,096 keys go out as 4
    /// bundles of 1,024 at once. One TCP stream is often slower than the link (and one
    /// server stream is one pipeline); a few streams use both ends' cores. `usize::MAX`
    /// sends as few bundles as [`max_keys`](Self::max_keys) allows.
    pub fn min_keys_per_bundle(mut self, keys: usize) -> Self {
        self.min_keys_per_bundle = keys.max(1);
        self
    }

    /// The store that serves byte-range requests on the Tigris protocol, typically an
    /// [`ObjectStoreStore`](crate::ObjectStoreStore) over `object_store`'s S3 client pointed
    /// at the same endpoint. Without one, ranged reads on Tigris fail with `NotSupported`.
    pub fn ranged_store(mut self, store: Arc<dyn Store>) -> Self {
        self.ranged = Some(store);
        self
    }

    /// The I/O budget; each bundle in flight holds one unit until its last member is read
    /// (default: 64 units). A consumer that calls `get_many` again while it holds open
    /// streams needs a unit per open bundle, so keep the budget above the nesting depth.
    pub fn budget(mut self, budget: IoBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The HTTP client (default: `TCP_NODELAY`, no automatic decompression).
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The largest member accepted (default 1 GiB); a larger declared size cuts the bundle
    /// before anything is allocated for it.
    pub fn max_member_bytes(mut self, bytes: u64) -> Self {
        self.max_member_bytes = bytes;
        self
    }

    /// Asks the server for completion-order members (`x-getmany-order: completion`, default
    /// on). A getmany server then sends each object as soon as it is read, so a slow object
    /// never holds back the others; other servers ignore the header and send request order,
    /// which the store also reads.
    pub fn completion_order(mut self, enabled: bool) -> Self {
        self.completion_order = enabled;
        self
    }

    /// The longest one HTTP request may take, from connecting until the last byte of its
    /// response body (default 15 minutes, the Tigris limit). It applies to each attempt of a
    /// bundle on its own (a retry gets a fresh one), and to a [`client`](Self::client) given
    /// by the caller too, overriding that client's own timeout. A request cut by it counts as
    /// a cut stream: what arrived stays answered and the rest is retried.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often a bundle is asked again after a transient failure (a cut or stalled stream,
    /// a connection error, or a 408, 429, 500, 502, 503 or 504 answer), each time for only the
    /// entries not yet answered (default 3; 0 turns retries off). See [`BundleStore`],
    /// "Retries".
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The exponential backoff between attempts (default 200 ms and 20 s): retry `r` pauses
    /// for a random time between half and all of `min(max, base × 2^(r-1))`, unless the
    /// server named a pause with `Retry-After`. `max` is also the longest `Retry-After`
    /// waited out: a server that asks for longer gets no retry.
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.retry_base = base;
        self.retry_max = max;
        self
    }

    /// The longest a bundle waits for its response head, and then for the next bytes of its
    /// body, before treating the stream as cut (default 30 s). The clock runs only while the
    /// store waits for the network, not while the caller is slow to read the answers. A
    /// stalled bundle is retried like a cut one.
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// Builds the store.
    ///
    /// # Errors
    ///
    /// `InvalidKey` for an endpoint that is not an `http(s)://` URL, or an empty or invalid
    /// bucket name; `NotSupported` for zstd on AIStore or a `max_keys` outside 1..=5,000.
    pub fn build(self) -> Result<BundleStore> {
        let endpoint = reqwest::Url::parse(self.endpoint.trim_end_matches('/')).map_err(|e| {
            Error::InvalidKey {
                key: self.endpoint.clone(),
                reason: format!("not a URL: {e}"),
            }
        })?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(Error::InvalidKey {
                key: self.endpoint,
                reason: "the endpoint must be an http:// or https:// URL".into(),
            });
        }
        let bucket_ok = !self.bucket.is_empty()
            && self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !bucket_ok {
            return Err(Error::InvalidKey {
                key: self.bucket,
                reason: "a bucket name is 1 or more characters from [A-Za-z0-9._-]".into(),
            });
        }
        if !(1..=MAX_KEYS_PER_BUNDLE).contains(&self.max_keys) {
            return Err(Error::NotSupported {
                store: STORE,
                operation: format!("{} keys per bundle (1 to 5,000)", self.max_keys),
            });
        }
        if self.protocol == BundleProtocol::AiStore && self.compression == BundleCompression::Zstd {
            return Err(Error::NotSupported {
                store: STORE,
                operation: "zstd on the AIStore protocol (use gzip)".into(),
            });
        }
        let client = match self.client {
            Some(client) => client,
            None => reqwest::Client::builder()
                .tcp_nodelay(true)
                .build()
                .map_err(|e| Error::backend(STORE, "", e))?,
        };
        Ok(BundleStore {
            inner: Arc::new(wire::Wire {
                protocol: self.protocol,
                endpoint,
                bucket: self.bucket,
                credentials: self.credentials,
                region: self.region,
                token: self.token,
                compression: self.compression,
                client,
                max_member_bytes: self.max_member_bytes,
                completion_order: self.completion_order,
                timeout: self.timeout,
                retry: retry::RetryPolicy {
                    max_retries: self.retries,
                    base: self.retry_base,
                    max: self.retry_max,
                    stall: self.stall_timeout,
                },
            }),
            max_keys: self.max_keys,
            bundles_in_flight: self.bundles_in_flight,
            min_keys_per_bundle: self.min_keys_per_bundle,
            ranged: self.ranged,
            budget: self.budget.unwrap_or_default(),
        })
    }
}

/// A [`Store`] over a bundle endpoint: its [`get_many`](Store::get_many) sends whole-object
/// requests as bundles of up to 5,000 distinct keys, one HTTP request each, and parses each
/// response's tar stream as it arrives, answering every request the moment its member is
/// complete.
///
/// * **Round trips**: one, for up to `max_keys × bundles_in_flight` distinct keys: the keys
///   go out as `max(ceil(keys / max_keys), min(bundles_in_flight, keys /
///   min_keys_per_bundle))` bundles of equal size, up to
///   [`bundles_in_flight`](BundleStoreBuilder::bundles_in_flight) at once, each holding one
///   unit of the store's [`IoBudget`]. A duplicate key is fetched once and answers every
///   request for it.
/// * **Missing keys** read as `None` (the Tigris errors member `__bundle_errors.json`, the
///   AIStore `__404__/` placeholders). Any other failure of one object fails only the
///   requests for it.
/// * **Byte ranges**: native on AIStore (identical ranges share one entry; a suffix is read
///   whole and cut here). On Tigris they go to the [ranged
///   store](BundleStoreBuilder::ranged_store).
/// * **Retries**: when an attempt at a bundle fails transiently, the bundle is sent again
///   for only the entries not yet answered: every request is answered exactly once, and
///   nothing that arrived is read again (a duplicate key is one entry, asked for once).
///   There are at most [`retries`](BundleStoreBuilder::retries) retries per bundle (default
///   3; counted over the bundle's life, not reset by progress), so at most `1 + retries`
///   HTTP requests per bundle.
///   - *Transient*: the request could not be sent or the connection failed; the body was
///     cut (mid-member, or at a member boundary without the archive's end-of-archive
///     block); no response head, or no body bytes, for
///     [`stall_timeout`](BundleStoreBuilder::stall_timeout) (default 30 s); the request's
///     [`timeout`](BundleStoreBuilder::timeout) ran out (default 15 minutes per HTTP
///     request, body included, each retry a fresh one); a status 408, 429, 500, 502, 503
///     or 504.
///   - *Not transient*, not retried, failing the requests concerned at once: any other
///     status than 200 (so 4xx but 408 and 429, and 501, 505); a malformed archive (a bad
///     header or checksum, a member not asked for or out of step, an entry answered twice);
///     an object the server marked failed (listed in Tigris's `__bundle_errors.json`, an
///     AIStore `__404__/` placeholder with a status). A missing key is `None`, never
///     retried.
///   - *Pause*: retry `r` (1-based) waits for the server's `Retry-After` (delay-seconds or
///     an HTTP-date; a past date is no wait) when the failed answer has one, otherwise for
///     a random time between half and all of `min(max, base × 2^(r-1))`
///     ([`retry_backoff`](BundleStoreBuilder::retry_backoff), default base 200 ms, max
///     20 s). A `Retry-After` longer than `max` is not waited out: no further retry. The
///     bundle keeps its budget unit while it pauses; answers that arrived are handed over
///     before the pause.
///   - *Giving up*: each request not answered fails with an error naming the last
///     failure, the retries and the progress, e.g. "the bundle stream was cut after 2 of 8
///     members: …; gave up after 3 retries (4 of 10 entries delivered)"; requests answered
///     before keep their answers. With retries off the error is the failure itself.
///   - An AIStore placeholder without a reason (a real AIStore) is asked about alone, one
///     request each, retried by the same policy.
/// * **Order**: with a getmany server, members come in completion order
///   ([`completion_order`](BundleStoreBuilder::completion_order)); otherwise in request
///   order, as the protocols define.
/// * **Memory**: per bundle, the member being read (its buffer allocated once, at its
///   declared size, after that size is checked against
///   [`max_member_bytes`](BundleStoreBuilder::max_member_bytes)) and up to three batches
///   of answers waiting for the reader, each of at most 64 answers or about 1 MiB (one
///   larger member alone). Answers are handed over in batches as they are ready, never
///   held back waiting for the network.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use futures::StreamExt;
/// use getmany::server::BundleServer;
/// use getmany::{BundleStore, MemoryStore, Request, Store};
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // A bundle endpoint over an in-memory bucket (needs feature `server`).
/// let backend = MemoryStore::new();
/// for i in 0..100 {
///     backend.insert(format!("img/{i}"), vec![i as u8; 1000]);
/// }
/// let server = BundleServer::builder()
///     .bucket("data", Arc::new(backend))
///     .start("127.0.0.1:0".parse()?)
///     .await?;
///
/// // 100 objects and a missing key: one HTTP request.
/// let store = BundleStore::tigris(server.url(), "data").build()?;
/// let mut requests: Vec<Request> = (0..100).map(|i| Request::whole(format!("img/{i}"))).collect();
/// requests.push(Request::whole("img/missing"));
/// let mut results = store.get_many(requests);
/// while let Some((index, result)) = results.next().await {
///     match result? {
///         Some(bytes) => assert_eq!(bytes.len(), 1000, "request {index}"),
///         None => assert_eq!(index, 100),
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BundleStore {
    inner: Arc<wire::Wire>,
    max_keys: usize,
    bundles_in_flight: usize,
    min_keys_per_bundle: usize,
    ranged: Option<Arc<dyn Store>>,
    budget: IoBudget,
}

impl fmt::Debug for BundleStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BundleStore")
            .field("protocol", &self.inner.protocol)
            .field("endpoint", &self.inner.endpoint.as_str())
            .field("bucket", &self.inner.bucket)
            .field("max_keys", &self.max_keys)
            .field("bundles_in_flight", &self.bundles_in_flight)
            .field("ranged", &self.ranged)
            .finish_non_exhaustive()
    }
}

/// One entry of a bundle: what goes on the wire, and the requests it answers (with the cut
/// to apply here, for a suffix read whole).
#[derive(Debug, Clone)]
pub(crate) struct WireEntry {
    pub key: String,
    pub range: Option<ByteRange>,
    pub serves: Vec<(usize, Option<ByteRange>)>,
}

impl BundleStore {
    /// A builder for `protocol` at `endpoint` (`http(s)://host:port`), reading `bucket`.
    pub fn builder(
        protocol: BundleProtocol,
        endpoint: impl Into<String>,
        bucket: impl Into<String>,
    ) -> BundleStoreBuilder {
        BundleStoreBuilder {
            protocol,
            endpoint: endpoint.into(),
            bucket: bucket.into(),
            credentials: None,
            region: "auto".into(),
            token: None,
            compression: BundleCompression::None,
            max_keys: MAX_KEYS_PER_BUNDLE,
            bundles_in_flight: 4,
            min_keys_per_bundle: 256,
            ranged: None,
            budget: None,
            client: None,
            max_member_bytes: 1 << 30,
            completion_order: true,
            timeout: Duration::from_secs(15 * 60),
            retries: 3,
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(20),
            stall_timeout: Duration::from_secs(30),
        }
    }

    /// A builder for the Tigris bundle protocol.
    pub fn tigris(endpoint: impl Into<String>, bucket: impl Into<String>) -> BundleStoreBuilder {
        Self::builder(BundleProtocol::Tigris, endpoint, bucket)
    }

    /// A builder for the AIStore GetBatch protocol.
    pub fn aistore(endpoint: impl Into<String>, bucket: impl Into<String>) -> BundleStoreBuilder {
        Self::builder(BundleProtocol::AiStore, endpoint, bucket)
    }

    /// The protocol.
    pub fn protocol(&self) -> BundleProtocol {
        self.inner.protocol
    }

    /// Splits `requests` into bundle entries (deduplicated) and the ones that go elsewhere.
    fn plan(&self, requests: &[Request]) -> Plan {
        let mut plan = Plan::default();
        let mut by_wire: HashMap<(&str, Option<ByteRange>), usize> =
            HashMap::with_capacity(requests.len());
        plan.entries.reserve(requests.len());
        for (index, request) in requests.iter().enumerate() {
            if let Some(reason) = request.range.as_ref().and_then(ByteRange::invalid_reason) {
                plan.invalid.push((
                    index,
                    Error::InvalidRange {
                        key: request.key.clone(),
                        range: request.range.clone().unwrap_or(ByteRange::Offset(0)),
                        reason: reason.to_string(),
                    },
                ));
                continue;
            }
            let (wire_range, cut) = match (self.inner.protocol, &request.range) {
                (_, None) => (None, None),
                (BundleProtocol::Tigris, Some(_)) => {
                    plan.ranged.push(index);
                    continue;
                }
                (BundleProtocol::AiStore, Some(ByteRange::Suffix(n))) => {
                    (None, Some(ByteRange::Suffix(*n)))
                }
                (BundleProtocol::AiStore, Some(range)) => (Some(range.clone()), None),
            };
            let slot = *by_wire
                .entry((request.key.as_str(), wire_range.clone()))
                .or_insert_with(|| {
                    plan.entries.push(WireEntry {
                        key: request.key.clone(),
                        range: wire_range,
                        serves: Vec::new(),
                    });
                    plan.entries.len() - 1
                });
            plan.entries[slot].serves.push((index, cut));
        }
        plan
    }
}

#[derive(Debug, Default)]
struct Plan {
    entries: Vec<WireEntry>,
    ranged: Vec<usize>,
    invalid: Vec<(usize, Error)>,
}

/// Adds the answers of one entry to `out`, one for each request it serves.
fn fan_out(
    entry: &WireEntry,
    result: Result<Option<Bytes>>,
    out: &mut Vec<(usize, Result<Option<Bytes>>)>,
) {
    let Some(((last_index, last_cut), others)) = entry.serves.split_last() else {
        return;
    };
    let answer = |result: &Result<Option<Bytes>>, cut: &Option<ByteRange>| match (result, cut) {
        (Ok(Some(bytes)), Some(cut)) => {
            slice_object(&entry.key, bytes, Some(cut.clone())).map(Some)
        }
        (Err(Error::InvalidRange { reason, .. }), Some(cut)) => Err(Error::InvalidRange {
            key: entry.key.clone(),
            range: cut.clone(),
            reason: reason.clone(),
        }),
        (other, _) => other.clone(),
    };
    for (index, cut) in others {
        out.push((*index, answer(&result, cut)));
    }
    // The last (usually the only) request takes the answer itself.
    let last = match last_cut {
        None => result,
        Some(_) => answer(&result, last_cut),
    };
    out.push((*last_index, last));
}

#[async_trait]
impl Store for BundleStore {
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Bytes>> {
        let request = Request {
            key: key.to_string(),
            range,
        };
        match self.get_many(vec![request]).next().await {
            Some((_, result)) => result,
            None => Err(Error::InvalidData {
                key: key.to_string(),
                reason: "the bundle answered nothing".into(),
            }),
        }
    }

    fn get_many(&self, requests: Vec<Request>) -> GetManyStream<'_> {
        let plan = self.plan(&requests);
        tracing::debug!(
            requests = requests.len(),
            entries = plan.entries.len(),
            ranged = plan.ranged.len(),
            "getmany.bundle.get_many"
        );
        let invalid = stream::iter(plan.invalid.into_iter().map(|(i, e)| (i, Err(e))));

        let ranged: BoxStream<'_, (usize, Result<Option<Bytes>>)> = if plan.ranged.is_empty() {
            stream::empty().boxed()
        } else {
            let indices = plan.ranged;
            match &self.ranged {
                Some(store) => {
                    let subset: Vec<Request> =
                        indices.iter().map(|&i| requests[i].clone()).collect();
                    store
                        .get_many(subset)
                        .map(move |(local, result)| {
                            (indices.get(local).copied().unwrap_or(usize::MAX), result)
                        })
                        .filter(|(i, _)| futures::future::ready(*i != usize::MAX))
                        .boxed()
                }
                None => {
                    let errors: Vec<_> = indices
                        .into_iter()
                        .map(|i| {
                            let error = Error::NotSupported {
                                store: STORE,
                                operation: format!(
                                    "byte ranges on the Tigris protocol without a ranged store (request {})",
                                    requests[i]
                                ),
                            };
                            (i, Err(error))
                        })
                        .collect();
                    stream::iter(errors).boxed()
                }
            }
        };

        let entries = plan.entries;
        let in_flight = self.bundles_in_flight.min(self.budget.limit()).max(1);
        let chunks: Vec<Arc<Vec<WireEntry>>> = if entries.is_empty() {
            Vec::new()
        } else {
            let needed = entries.len().div_ceil(self.max_keys);
            let parallel = (entries.len() / self.min_keys_per_bundle).clamp(1, in_flight);
            let per_bundle = entries.len().div_ceil(needed.max(parallel));
            let mut entries = entries.into_iter();
            let mut chunks = Vec::new();
            loop {
                let chunk: Vec<WireEntry> = entries.by_ref().take(per_bundle).collect();
                if chunk.is_empty() {
                    break chunks;
                }
                chunks.push(Arc::new(chunk));
            }
        };
        let bundles = stream::iter(chunks)
            .map(move |chunk| {
                let batches = self.bundle(chunk.clone());
                batches.flat_map(move |batch| {
                    let mut items = Vec::with_capacity(batch.len());
                    for (slot, result) in batch {
                        if let Some(entry) = chunk.get(slot) {
                            fan_out(entry, result, &mut items);
                        }
                    }
                    stream::iter(items)
                })
            })
            .flatten_unordered(in_flight);
        invalid.chain(stream::select(bundles, ranged)).boxed()
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        match (&self.ranged, self.inner.protocol) {
            (Some(ranged), BundleProtocol::Tigris) => ranged.size(key).await,
            _ => Ok(self.get(key, None).await?.map(|b| b.len() as u64)),
        }
    }

    fn io_budget(&self) -> &IoBudget {
        &self.budget
    }
}

impl BundleStore {
    /// One bundle's answers, by entry position, in batches as its members arrive. The request runs
    /// inside the store's budget, driven by whoever reads the stream: nothing is spawned, and
    /// dropping the stream drops the connection.
    fn bundle(
        &self,
        entries: Arc<Vec<WireEntry>>,
    ) -> BoxStream<'_, Vec<(usize, Result<Option<Bytes>>)>> {
        // A batch or two may wait for the reader (`wire::Batcher` bounds a batch); beyond
        // that the tar parsing pauses.
        let (tx, rx) = futures::channel::mpsc::channel(1);
        let wire = self.inner.clone();
        let driver = self.budget.run(async move { wire.run(&entries, tx).await });
        let driver = stream::once(driver).filter_map(|()| futures::future::ready(None));
        stream::select(driver, rx).boxed()
    }
}
