//! A bundle endpoint in front of any [`Store`]: the Tigris bundle and AIStore GetBatch
//! protocols, plus plain S3 `GET`/`HEAD` (feature `server`).
//!
//! [`BundleServer`] serves a set of buckets, each an `Arc<dyn Store>`:
//!
//! * **Tigris** `POST /{bucket}?bundle` with `{"keys":[...]}` (or an S3-style XML
//!   `<Bundle><Object><Key>`): a tar stream of the objects, in request order, named by key;
//!   `x-tigris-bundle-on-error: skip` (default; missing keys listed in a last member
//!   `__bundle_errors.json`) or `fail` (every key checked first, 404 `BundleKeyNotFound`
//!   listing the missing ones); `x-tigris-bundle-compression: none|gzip|zstd` compresses the
//!   body itself (no `Content-Encoding`). More than [`Limits::max_keys`] keys, an empty list or
//!   a body over [`Limits::max_body_bytes`] answer 400. Errors are S3-style XML.
//! * **AIStore GetBatch** `GET /v1/ml/moss[/{bucket}]` with `{"in":[...], "mime", "coer",
//!   "onob", "strm"}`: one archive entry per `in` element in strict order, duplicates
//!   included in every format: `.tar`, `.tgz`/`.tar.gz`, `.tar.lz4` (an LZ4 frame,
//!   `application/x-lz4`) or `.zip` (stored members, zip64 when needed, duplicate names
//!   kept). Ranges are exact: `start`/`length` reads `length` bytes, `length: -1` from
//!   `start` to the end; a range past the end (or starting at or past it) is out of bounds,
//!   416 (with `coer`, a placeholder); a non-zero `start` without a length, a negative
//!   `start` or a `length` below -1 is a 400. (`x-getmany-ranges: clip`, which
//!   [`BundleStore`](crate) sends, clips ranges as the [`Store`] trait does.) `opaque` is
//!   echoed; the `coloc` hint (body or query) and unknown fields are ignored. With `coer` a
//!   failed entry becomes a zero-size `__404__/<bucket>/<objname>` placeholder (its error in
//!   the multipart metadata's `err_msg`); without it the first failure answers its status
//!   (404, 416, ...) before any byte is sent, except for an archived file, whose failure
//!   cuts a streaming answer. `strm: false` answers `multipart/mixed` (metadata, then the
//!   archive). `archpath` reads one file out of a tar, tgz, tar.lz4 or zip archive object
//!   (the whole archive object is read, up to [`Limits::max_buffered_bytes`]). Errors are
//!   JSON `{"message","status"}`, plain text naming the entry.
//! * **S3** `GET`/`HEAD /{bucket}/{key}` with `Range`, so one endpoint also serves single
//!   (and ranged) reads, e.g. for an [`ObjectStoreStore`](crate::ObjectStoreStore) over
//!   `object_store`'s S3 client.
//!
//! # Streaming and memory
//!
//! A bundle's objects are read through the bucket store's own
//! [`get_many`](Store::get_many), in segments, and put back in request order through a
//! bounded reorder window ([`Window`]; the bound is documented there). Each member leaves as
//! soon as it and the ones before it are read: the first member is on the wire while later
//! objects are still being read. Each object is held whole while it is written (the `Store`
//! trait returns whole values).
//!
//! Members that are ready at the same moment share a body frame of up to 256 KiB: headers,
//! padding and objects under 64 KiB are copied into it, larger objects go out as frames of
//! their own without a copy. A frame leaves as soon as no further answer is ready, so a
//! member never waits for the next object. (One frame per header, object and padding cost a
//! write on the server and a wake-up of the client's reader each: three per member.)
//!
//! A client may ask for *completion order* with the request header `x-getmany-order:
//! completion`: members then leave as each object arrives, each carrying its request index
//! in the tar header's group-name field (`getmany:<index>`, no extra header block), and the
//! response carries the same header. [`BundleStore`](crate) uses it so a slow object never holds back fast ones;
//! other clients get strict request order.
//!
//! # Security
//!
//! * With credentials ([`BundleServerBuilder::credentials`]) every request must carry a valid
//!   AWS Signature V4 (checked by `s3s`, including the payload hash of a bundle's body). The
//!   AIStore routes accept either a valid signature or `Authorization: Bearer <token>`
//!   ([`BundleServerBuilder::token`]; the official AIStore client cannot sign). Nothing is
//!   served unauthenticated then. Signature Version 2 is refused: it covers no body and no
//!   time.
//! * Authentication comes first: a request without credentials, or with a `multipart/form-data`
//!   body, is refused from its headers; a bundle's admission permit is taken only once the
//!   request is authenticated.
//! * Without credentials [`start`](BundleServerBuilder::start) refuses any address but
//!   loopback.
//! * Keys never leave their bucket: see [`invalid_key_reason`]. A bucket store decides what
//!   its keys reach: [`DirStore`](crate) (what `getmany serve --root` uses) never resolves
//!   a path outside its directory.
//! * Errors name the bucket and key, never a backend's own message (which may hold paths).
//! * [`Limits`]: bundles in flight (429 `SlowDown`/`{"status":429}` when full, without
//!   disturbing the bundles already running), keys and body size, and the connection limits
//!   of [`crate::conn`] (open connections, header, idle, request and stall timeouts).
//!
//! What each promise means and how it is tested: `docs/security.md`.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use getmany::server::BundleServer;
//! use getmany::{MemoryStore, Store};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! store.insert("a/b", "hello");
//! let server = BundleServer::builder()
//!     .bucket("data", Arc::new(store))
//!     .start("127.0.0.1:0".parse()?)
//!     .await?;
//! println!("bundle endpoint at {}", server.url());
//! # Ok(()) }
//! ```

mod aistore;
mod archive;
mod body;
mod fetch;
mod keys;
mod s3;
mod service;
mod tigris;
// For the fuzz targets only; not part of the API.
#[doc(hidden)]
pub mod fuzzing;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::Store;
use crate::conn::{ConnectionLimits, ConnectionStats, HttpServer};

pub use fetch::{FetchStats, Window};
pub use keys::{MAX_KEY_BYTES, invalid_key_reason, valid_bucket_name};

/// The server's limits. [`Default`] gives the documented values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Keys per Tigris bundle (5,000, as Tigris).
    pub max_keys: usize,
    /// Entries per AIStore GetBatch request (50,000).
    pub max_entries: usize,
    /// Bytes of a bundle request's body (5 MiB, as Tigris).
    pub max_body_bytes: usize,
    /// Bytes of objects one Tigris bundle may assemble (50 GB, as Tigris); a bundle that
    /// would pass it is cut there.
    pub max_bundle_bytes: u64,
    /// Bundle and GetBatch requests served at once; one more answers 429 (32).
    pub max_in_flight: usize,
    /// The longest a request may take, body included (15 minutes, as Tigris); a body still
    /// streaming then is cut.
    pub request_timeout: Duration,
    /// The longest a client may take to send a request's headers, and a new connection its
    /// first request (30 s).
    pub header_read_timeout: Duration,
    /// The longest a connection may stay open between two requests (30 s).
    pub idle_timeout: Duration,
    /// The longest a response may wait for the client to read on (30 s); a client that stops
    /// reading loses its connection, and its bundle's permit is freed.
    pub stall_timeout: Duration,
    /// Connections open at once; one more is closed at once (1,024).
    pub max_connections: usize,
    /// The reorder window of each bundle.
    pub window: Window,
    /// The most a response may hold in memory when it cannot stream: a multipart GetBatch
    /// answer, an archive object read for `archpath` (256 MiB).
    pub max_buffered_bytes: u64,
}

impl Limits {
    /// The connection limits of these server limits.
    fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            request_timeout: self.request_timeout,
            stall_timeout: self.stall_timeout,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_keys: 5_000,
            max_entries: 50_000,
            max_body_bytes: 5 << 20,
            max_bundle_bytes: 50_000_000_000,
            max_in_flight: 32,
            request_timeout: Duration::from_secs(15 * 60),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(30),
            max_connections: 1024,
            window: Window::default(),
            max_buffered_bytes: 256 << 20,
        }
    }
}

/// Counters of a running [`BundleServer`].
#[derive(Debug, Default)]
pub struct ServerStats {
    requests: AtomicU64,
    bundles: AtomicU64,
    overloaded: AtomicU64,
    fetch: Arc<FetchStats>,
}

impl ServerStats {
    /// HTTP requests received.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Bundle and GetBatch requests admitted.
    pub fn bundles(&self) -> u64 {
        self.bundles.load(Ordering::SeqCst)
    }

    /// Requests refused with 429 because [`Limits::max_in_flight`] were running.
    pub fn overloaded(&self) -> u64 {
        self.overloaded.load(Ordering::SeqCst)
    }

    /// The reorder buffers' peaks.
    pub fn fetch(&self) -> &FetchStats {
        &self.fetch
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A bucket name the server cannot serve.
    #[error("invalid bucket name {0:?}: use 1 to 255 characters from [A-Za-z0-9._-]")]
    InvalidBucket(String),
    /// Two buckets with one name.
    #[error("bucket {0:?} given twice")]
    DuplicateBucket(String),
    /// A non-loopback address without credentials.
    #[error(
        "refusing to listen on {0} without credentials: give an access key and secret key \
         (and a token for AIStore clients), or listen on a loopback address"
    )]
    Unauthenticated(SocketAddr),
    /// Credentials or token that cannot be used.
    #[error("invalid credentials: {0}")]
    InvalidCredentials(&'static str),
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Builds a [`BundleServer`].
#[derive(Default)]
pub struct BundleServerBuilder {
    buckets: Vec<(String, Arc<dyn Store>)>,
    credentials: Option<(String, String)>,
    token: Option<String>,
    limits: Limits,
    redirect_getbatch: Option<String>,
}

impl fmt::Debug for BundleServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BundleServerBuilder")
            .field(
                "buckets",
                &self.buckets.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("credentials", &self.credentials.as_ref().map(|(a, _)| a))
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("limits", &self.limits)
            .field("redirect_getbatch", &self.redirect_getbatch)
            .finish()
    }
}

impl BundleServerBuilder {
    /// Serves `store` as bucket `name`.
    pub fn bucket(mut self, name: impl Into<String>, store: Arc<dyn Store>) -> Self {
        self.buckets.push((name.into(), store));
        self
    }

    /// Requires an AWS Signature V4 made with these keys on every request.
    pub fn credentials(
        mut self,
        access_key: impl Into<String>,
        secret_key: impl Into<String>,
    ) -> Self {
        self.credentials = Some((access_key.into(), secret_key.into()));
        self
    }

    /// Accepts `Authorization: Bearer <token>` on the AIStore routes.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Answers every authenticated GetBatch request with `307 Temporary Redirect` to the same
    /// path and query at `base_url` (`http://host:port`), as an AIStore proxy sends a batch
    /// to a target; the client resends the body there. For a front that owns no data, and
    /// for testing that clients follow.
    pub fn redirect_getbatch(mut self, base_url: impl Into<String>) -> Self {
        self.redirect_getbatch = Some(base_url.into().trim_end_matches('/').to_owned());
        self
    }

    /// Sets the limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Binds `addr` (port 0 for any free port) and starts serving on the current tokio
    /// runtime (which needs its I/O and time drivers).
    ///
    /// # Errors
    ///
    /// An invalid or repeated bucket name, empty credentials, a non-loopback address without
    /// credentials, or a failed bind.
    pub async fn start(self, addr: SocketAddr) -> Result<BundleServer, ServerError> {
        let mut buckets = BTreeMap::new();
        for (name, store) in self.buckets {
            if !valid_bucket_name(&name) {
                return Err(ServerError::InvalidBucket(name));
            }
            if buckets.insert(name.clone(), store).is_some() {
                return Err(ServerError::DuplicateBucket(name));
            }
        }
        if let Some((access, secret)) = &self.credentials
            && (access.is_empty() || secret.is_empty())
        {
            return Err(ServerError::InvalidCredentials(
                "access key and secret key must not be empty",
            ));
        }
        if self.token.as_deref() == Some("") {
            return Err(ServerError::InvalidCredentials(
                "the token must not be empty",
            ));
        }
        if self.credentials.is_none() && !addr.ip().is_loopback() {
            return Err(ServerError::Unauthenticated(addr));
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let stats = Arc::new(ServerStats::default());
        let max_in_flight = self.limits.max_in_flight.max(1);
        let in_flight = Arc::new(Semaphore::new(max_in_flight));
        let shared = Arc::new(service::Shared {
            buckets,
            has_keys: self.credentials.is_some(),
            token: self.token,
            in_flight: in_flight.clone(),
            limits: self.limits,
            stats: stats.clone(),
            next_request_id: AtomicU64::new(1),
            redirect_getbatch: self.redirect_getbatch,
        });
        let service = service::build_s3_service(shared.clone(), self.credentials);
        let connection_limits = shared.limits.connection_limits();
        let http = HttpServer::start(listener, connection_limits, move |req| {
            service::handle(req, service.clone(), shared.clone())
        })
        .map_err(|source| ServerError::Bind { addr, source })?;
        Ok(BundleServer {
            addr: local,
            in_flight,
            max_in_flight,
            stats,
            http,
        })
    }
}

/// A running bundle endpoint. Dropping it stops accepting connections; connections in
/// progress finish their current request (within the [`Limits`]).
pub struct BundleServer {
    addr: SocketAddr,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    stats: Arc<ServerStats>,
    http: HttpServer,
}

impl BundleServer {
    /// A builder with no buckets, no credentials and the default [`Limits`].
    pub fn builder() -> BundleServerBuilder {
        BundleServerBuilder::default()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<address>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// The connection counters (open, refused, closed by a time limit).
    pub fn connections(&self) -> &ConnectionStats {
        self.http.stats()
    }

    /// Bundle and GetBatch requests running now (admitted and not yet finished or dropped).
    pub fn bundles_in_flight(&self) -> usize {
        self.max_in_flight - self.in_flight.available_permits()
    }
}

impl fmt::Debug for BundleServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BundleServer")
            .field("addr", &self.addr)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}
