//! An in-process, real S3 server for integration tests.
//!
//! [`S3TestServer`] runs [`s3s`] with the [`s3s_fs`] file-system backend on
//! `127.0.0.1:<ephemeral port>` inside the current tokio runtime, with SigV4
//! authentication on. Every request passes through a thin hyper service of our
//! own first, which
//!
//! * counts requests by HTTP method ([`S3TestServer::counts`]), and
//! * injects faults into GETs of chosen object keys
//!   ([`S3TestServer::fail_key`], [`S3TestServer::truncate_key`]).
//!
//! Objects live in `<tempdir>/test-bucket/<key>`: s3s-fs maps a bucket to a
//! subdirectory of its root and a key to a path below it.
//!
//! Known s3s-fs 0.14.1 behaviour worth knowing when writing tests (not fixed
//! here; see `tests/s3_server_smoke.rs`, which pins it down):
//!
//! * A suffix range longer than the object (`bytes=-N`, N > size) answers
//!   HTTP 500 `InternalError` instead of returning the whole object, because
//!   s3s-fs seeks to `size - N`, i.e. before the start of the file. Being a
//!   5xx, object_store retries it when retries are on.
//! * A range starting at or past the end of the object (and `bytes=-0`)
//!   answers 416 `InvalidRange`, and so does any bounded or offset range on an
//!   empty object.
//! * A suffix range on an empty object makes s3s-fs panic (u64 underflow
//!   formatting Content-Range, debug builds): the connection is dropped with
//!   no response and the client sees a transport error.
//! * A bounded range whose end is past the end of the object is clamped
//!   (206 with the available bytes), as on AWS.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use getmany::conn::{ConnectionLimits, HttpServer};
use http::{Method, Request, Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tempfile::TempDir;
use tokio::net::TcpListener;

/// Access key the server accepts.
pub const ACCESS_KEY: &str = "getmany-test";
/// Secret key the server accepts.
pub const SECRET_KEY: &str = "getmany-test-secret";
/// The one bucket the server is started with.
pub const BUCKET: &str = "test-bucket";
/// Region used for signing.
pub const REGION: &str = "us-east-1";

/// The body returned by an injected failure ([`S3TestServer::fail_key`]).
pub const INJECTED_ERROR_BODY: &str =
    "<Error><Code>InternalError</Code><Message>injected</Message></Error>";

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Requests that reached the server, by HTTP method, since start or the last
/// [`S3TestServer::reset_counts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// All GET requests (object reads, but also e.g. LIST).
    pub get: u64,
    pub head: u64,
    pub put: u64,
    /// Every other method (POST, DELETE, ...).
    pub other: u64,
}

impl RequestCounts {
    pub fn total(&self) -> u64 {
        self.get + self.head + self.put + self.other
    }
}

/// One response the server started sending (status line and headers), in
/// the order they were produced. Requests whose connection was aborted before
/// a response existed (an s3s error or a panic in s3s-fs) are not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseRecord {
    pub method: Method,
    /// The object key for `/{bucket}/{key}` requests, `None` otherwise.
    pub key: Option<String>,
    pub status: u16,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Answer with this status and [`INJECTED_ERROR_BODY`], without calling s3s.
    Fail(StatusCode),
    /// Call s3s, but cut a successful body after this many bytes.
    Truncate(usize),
}

#[derive(Default)]
struct Shared {
    get: AtomicU64,
    head: AtomicU64,
    put: AtomicU64,
    other: AtomicU64,
    /// Faults by object key (within [`BUCKET`]).
    faults: Mutex<HashMap<String, Fault>>,
    responses: Mutex<Vec<ResponseRecord>>,
}

impl Shared {
    fn count(&self, method: &Method) {
        let counter = match *method {
            Method::GET => &self.get,
            Method::HEAD => &self.head,
            Method::PUT => &self.put,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }

    fn fault_for(&self, key: &str) -> Option<Fault> {
        self.faults.lock().unwrap().get(key).copied()
    }

    fn record(&self, method: Method, key: Option<String>, status: StatusCode) {
        let record = ResponseRecord {
            method,
            key,
            status: status.as_u16(),
        };
        self.responses.lock().unwrap().push(record);
    }
}

/// A real S3 server (s3s + s3s-fs) on localhost, stopped when dropped.
///
/// Must be started inside a tokio runtime; the server's tasks run on it.
pub struct S3TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The crate's connection core; dropping it stops the server.
    _http: HttpServer,
    /// Declared last so it is removed after the tasks were told to stop.
    root: TempDir,
}

impl S3TestServer {
    /// Starts a server with an empty bucket [`BUCKET`] on `127.0.0.1:0`.
    pub async fn start() -> S3TestServer {
        let root = tempfile::tempdir().expect("create temp dir");
        std::fs::create_dir(root.path().join(BUCKET)).expect("create bucket dir");

        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs root");
        let s3 = {
            let mut b = S3ServiceBuilder::new(fs);
            b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            b.build()
        };

        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared::default());
        let handler_shared = shared.clone();
        // Real S3 caps no client at 1,024 connections; the conformance suite's nested reads
        // through ArchiveStore open ~2,000 at once.
        let limits = ConnectionLimits {
            max_connections: 8192,
            ..ConnectionLimits::default()
        };
        let http = HttpServer::start(listener, limits, move |req| {
            handle(req, s3.clone(), handler_shared.clone())
        })
        .expect("start the HTTP server");

        S3TestServer {
            addr,
            shared,
            _http: http,
            root,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// The s3s-fs root; objects are files under `root()/bucket()/`.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// An S3 client for the bucket with retries off, so that injected
    /// failures surface at once.
    pub fn client(&self) -> Arc<dyn ObjectStore> {
        self.client_with_retries(0)
    }

    /// An S3 client for the bucket that retries up to `retries` times (with a
    /// short backoff).
    pub fn client_with_retries(&self, retries: usize) -> Arc<dyn ObjectStore> {
        Arc::new(self.build_client(SECRET_KEY, retries))
    }

    /// A client that signs with `secret_key` instead of the right one; for
    /// checking that authentication is enforced.
    pub fn client_with_secret(&self, secret_key: &str) -> Arc<dyn ObjectStore> {
        Arc::new(self.build_client(secret_key, 0))
    }

    fn build_client(&self, secret_key: &str, retries: usize) -> AmazonS3 {
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(100),
                base: 2.0,
            },
            max_retries: retries,
            retry_timeout: Duration::from_secs(30),
        };
        AmazonS3Builder::new()
            .with_endpoint(self.url())
            .with_bucket_name(BUCKET)
            .with_region(REGION)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(secret_key)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_retry(retry)
            .build()
            .expect("build S3 client")
    }

    /// Writes an object through the S3 API (counted as one PUT).
    pub async fn put(&self, key: &str, data: &[u8]) {
        self.client()
            .put(
                &object_store::path::Path::from(key),
                PutPayload::from(data.to_vec()),
            )
            .await
            .unwrap_or_else(|e| panic!("put {key:?}: {e}"));
    }

    pub fn counts(&self) -> RequestCounts {
        let s = &self.shared;
        RequestCounts {
            get: s.get.load(Ordering::SeqCst),
            head: s.head.load(Ordering::SeqCst),
            put: s.put.load(Ordering::SeqCst),
            other: s.other.load(Ordering::SeqCst),
        }
    }

    /// Zeroes the counts and clears [`S3TestServer::responses`].
    pub fn reset_counts(&self) {
        let s = &self.shared;
        for c in [&s.get, &s.head, &s.put, &s.other] {
            c.store(0, Ordering::SeqCst);
        }
        s.responses.lock().unwrap().clear();
    }

    /// Responses produced since start or the last
    /// [`S3TestServer::reset_counts`]; handy for asserting the exact HTTP
    /// status behind an `object_store` error (its `RetryError` is private).
    pub fn responses(&self) -> Vec<ResponseRecord> {
        self.shared.responses.lock().unwrap().clone()
    }

    /// Every GET of `key` answers `status` with an S3-style XML error body
    /// ([`INJECTED_ERROR_BODY`]), without reaching s3s. Replaces any other
    /// fault on `key`.
    pub fn fail_key(&self, key: &str, status: u16) {
        let status = StatusCode::from_u16(status).expect("valid HTTP status");
        self.set_fault(key, Fault::Fail(status));
    }

    /// Every successful GET of `key` is served by s3s with its headers intact
    /// (Content-Length is the full length), but the body stops after
    /// `after_bytes` bytes with an error, so the connection is aborted
    /// mid-body and the client sees an error rather than short data. A body no
    /// longer than `after_bytes` is delivered whole. Replaces any other fault
    /// on `key`.
    pub fn truncate_key(&self, key: &str, after_bytes: usize) {
        self.set_fault(key, Fault::Truncate(after_bytes));
    }

    /// Removes all injected faults.
    pub fn clear_faults(&self) {
        self.shared.faults.lock().unwrap().clear();
    }

    fn set_fault(&self, key: &str, fault: Fault) {
        let mut faults = self.shared.faults.lock().unwrap();
        faults.insert(key.to_owned(), fault);
    }
}

async fn handle(
    req: Request<Incoming>,
    s3: S3Service,
    shared: Arc<Shared>,
) -> Result<Response<ResponseBody>, BoxError> {
    shared.count(req.method());

    let method = req.method().clone();
    let key = object_key(req.uri().path());
    let fault = match &key {
        Some(key) if method == Method::GET => shared.fault_for(key),
        _ => None,
    };
    if let Some(Fault::Fail(status)) = fault {
        shared.record(method, key, status);
        return Ok(injected_error(status));
    }

    // An `Err` here (or a panic inside s3s-fs) makes hyper drop the connection.
    let resp = s3.call(req.map(s3s::Body::from)).await?;
    shared.record(method, key, resp.status());
    let resp = match fault {
        Some(Fault::Truncate(after_bytes)) if resp.status().is_success() => {
            resp.map(|body| TruncatingBody::new(body, after_bytes).boxed_unsync())
        }
        _ => resp.map(BodyExt::boxed_unsync),
    };
    Ok(resp)
}

/// The object key of a path-style request `/{BUCKET}/{key}`, percent-decoded.
fn object_key(path: &str) -> Option<String> {
    let (bucket, key) = path.strip_prefix('/')?.split_once('/')?;
    if bucket != BUCKET || key.is_empty() {
        return None;
    }
    Some(
        percent_encoding::percent_decode_str(key)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

fn injected_error(status: StatusCode) -> Response<ResponseBody> {
    let body = http_body_util::Full::new(Bytes::from_static(INJECTED_ERROR_BODY.as_bytes()))
        .map_err(|never| match never {})
        .boxed_unsync();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/xml")
        .body(body)
        .expect("valid response")
}

/// Passes through the first `remaining` bytes of `inner`, then fails.
struct TruncatingBody<B> {
    inner: B,
    remaining: usize,
    state: CutState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum CutState {
    Passing,
    /// The last allowed bytes were handed out; yield once so hyper flushes
    /// them to the socket before the error makes it drop its write buffer.
    Cut,
    Failing,
}

impl<B> TruncatingBody<B> {
    fn new(inner: B, after_bytes: usize) -> Self {
        TruncatingBody {
            inner,
            remaining: after_bytes,
            state: CutState::Passing,
        }
    }
}

impl<B> HttpBody for TruncatingBody<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match this.state {
            CutState::Passing => {}
            CutState::Cut => {
                this.state = CutState::Failing;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            CutState::Failing => {
                return Poll::Ready(Some(Err("injected truncation of the response body".into())));
            }
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => return Poll::Ready(Some(Ok(frame))),
        };
        if data.len() <= this.remaining {
            this.remaining -= data.len();
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        data.truncate(this.remaining);
        this.remaining = 0;
        if data.is_empty() {
            // Earlier bytes may still sit in hyper's write buffer.
            this.state = CutState::Failing;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.state = CutState::Cut;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
