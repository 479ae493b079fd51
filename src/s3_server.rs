//! An S3 REST server over any [`object_store`] backend, for tests and benchmarks.
//!
//! [`S3Server`] speaks the S3 protocol with [`s3s`] and stores objects in an
//! [`ObjectStore`] of your choice (typically [`object_store::memory::InMemory`]). Unlike
//! the `s3s-fs` reference server, which reads files in 4 KiB blocks, a GET body is the
//! backend's own byte stream ([`GetResult::into_stream`]) handed to hyper as is, so the
//! server is fast enough not to be what a client benchmark measures.
//!
//! Supported operations: `GetObject` (with `Range`), `HeadObject`, `PutObject` (with
//! `If-None-Match: *` and `If-Match`), `CopyObject` (within the bucket), `DeleteObject`,
//! `DeleteObjects`, `ListObjectsV2` (prefix, delimiter, `max-keys`, `start-after`,
//! continuation tokens), `HeadBucket`, `CreateBucket` and `ListBuckets`. Everything else
//! answers `501 NotImplemented`. Not supported: multipart uploads, versioning, conditional
//! GET/HEAD headers (ignored), object attributes such as `Content-Type` and user metadata
//! (not stored), `encoding-type=url` in listings (keys are always returned raw).

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use hyper::body::Incoming;
use hyper::{Method, header};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResult, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, UpdateVersion,
};
use s3s::auth::SimpleAuth;
use s3s::dto::{
    Bucket, CommonPrefix, CopyObjectInput, CopyObjectOutput, CopyObjectResult, CopySource,
    CreateBucketInput, CreateBucketOutput, DeleteObjectInput, DeleteObjectOutput,
    DeleteObjectsInput, DeleteObjectsOutput, DeletedObject, ETag, ETagCondition, GetObjectInput,
    GetObjectOutput, HeadBucketInput, HeadBucketOutput, HeadObjectInput, HeadObjectOutput,
    ListBucketsInput, ListBucketsOutput, ListObjectsV2Input, ListObjectsV2Output, Object,
    PutObjectInput, PutObjectOutput, Range, StreamingBlob, Timestamp,
};
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::stream::{ByteStream, RemainingLength};
use s3s::{S3, S3Error, S3Request, S3Response, S3Result, StdError, s3_error};
use tokio::net::TcpListener;

use crate::conn::{ConnectionLimits, HttpServer};

/// The most keys one `ListObjectsV2` page holds, as on AWS.
const MAX_KEYS: usize = 1000;

/// Serves an [`ObjectStore`] over the S3 REST protocol (path-style), for tests and
/// benchmarks.
///
/// The server has exactly one bucket, named by [`start`](S3Server::start); its objects are
/// the backend's objects, with the object key as the [`Path`]. Requests for any other bucket
/// answer `404 NoSuchBucket`. Keys that are not valid `object_store` paths (empty segments
/// such as `a//b`, a trailing `/`, `.` or `..` segments, control characters) cannot be
/// stored: a PUT of one answers `400 InvalidArgument`, a GET `404 NoSuchKey`.
///
/// Connections are served by the crate's connection core ([`crate::conn`]: `TCP_NODELAY`,
/// HTTP/1.1 or HTTP/2, the default [`ConnectionLimits`] but 8,192 connections). Dropping the server stops accepting
/// connections at once; open connections finish the request in flight, then close.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use getmany::s3_server::S3Server;
/// use object_store::aws::AmazonS3Builder;
/// use object_store::memory::InMemory;
/// use object_store::{ObjectStoreExt, PutPayload, path::Path};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let keys = ("access".to_string(), "secret".to_string());
/// let addr = "127.0.0.1:0".parse()?;
/// let server = S3Server::start(Arc::new(InMemory::new()), "bucket", addr, Some(keys)).await?;
///
/// let client = AmazonS3Builder::new()
///     .with_endpoint(server.url())
///     .with_allow_http(true)
///     .with_virtual_hosted_style_request(false)
///     .with_region("us-east-1")
///     .with_bucket_name("bucket")
///     .with_access_key_id("access")
///     .with_secret_access_key("secret")
///     .build()?;
/// client.put(&Path::from("a/b"), PutPayload::from("hello")).await?;
/// let got = client.get(&Path::from("a/b")).await?.bytes().await?;
/// assert_eq!(&got[..], b"hello");
/// assert_eq!((server.counts().put, server.counts().get), (1, 1));
/// # Ok(())
/// # }
/// ```
pub struct S3Server {
    counters: Arc<Counters>,
    /// Dropped with the server: stops accepting, and every connection shuts down gracefully.
    http: HttpServer,
}

/// Requests that reached an [`S3Server`], by HTTP method, since it started or since the
/// last [`S3Server::reset_counts`].
///
/// A request is counted when hyper hands it to the server, before authentication, so
/// rejected requests count too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RequestCounts {
    /// GET requests: object reads, but also listings (`ListObjectsV2`, `ListBuckets`).
    pub get: u64,
    /// HEAD requests (`HeadObject`, `HeadBucket`).
    pub head: u64,
    /// PUT requests (`PutObject`, `CopyObject`, `CreateBucket`).
    pub put: u64,
    /// Every other method: POST (`DeleteObjects`), DELETE, ...
    pub other: u64,
}

impl RequestCounts {
    /// All requests, whatever their method.
    pub fn total(&self) -> u64 {
        self.get + self.head + self.put + self.other
    }
}

#[derive(Debug, Default)]
struct Counters {
    get: AtomicU64,
    head: AtomicU64,
    put: AtomicU64,
    other: AtomicU64,
}

impl Counters {
    fn all(&self) -> [&AtomicU64; 4] {
        [&self.get, &self.head, &self.put, &self.other]
    }

    fn count(&self, method: &Method) {
        let counter = match *method {
            Method::GET => &self.get,
            Method::HEAD => &self.head,
            Method::PUT => &self.put,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

impl S3Server {
    /// Binds `addr` (e.g. `127.0.0.1:0` for an ephemeral port) and serves `backend` as the
    /// single bucket `bucket`.
    ///
    /// With `credentials = Some((access_key, secret_key))` every request must carry a valid
    /// AWS Signature V4 (or V2) made with these keys; anything else is refused with `403`.
    /// With `None` authentication is off: requests are served whether or not they are
    /// signed, and an `Authorization` header is ignored (so a client may sign with any
    /// keys). Presigned URLs and `aws-chunked` uploads need authentication on.
    ///
    /// Must be called within a tokio runtime, which then runs the server's tasks; the
    /// runtime needs the I/O and time drivers enabled.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `bucket` is not a valid S3 bucket name; otherwise any error from
    /// binding the listener.
    pub async fn start(
        backend: Arc<dyn ObjectStore>,
        bucket: &str,
        addr: SocketAddr,
        credentials: Option<(String, String)>,
    ) -> std::io::Result<S3Server> {
        if !s3s::path::check_bucket_name(bucket) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid S3 bucket name {bucket:?}"),
            ));
        }
        let strip_auth = credentials.is_none();
        let service = {
            let backend = Backend {
                store: backend,
                bucket: bucket.to_owned(),
                created: SystemTime::now(),
            };
            let mut builder = S3ServiceBuilder::new(backend);
            if let Some((access_key, secret_key)) = credentials {
                builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
            }
            builder.build()
        };

        let listener = TcpListener::bind(addr).await?;
        let counters = Arc::new(Counters::default());
        let handler_counters = counters.clone();
        // A stand-in for S3 in tests and benchmarks: S3 caps no client at 1,024 connections.
        let limits = ConnectionLimits {
            max_connections: 8192,
            ..ConnectionLimits::default()
        };
        let http = HttpServer::start(listener, limits, move |req| {
            handle(req, service.clone(), handler_counters.clone(), strip_auth)
        })?;
        Ok(S3Server { counters, http })
    }

    /// The address the server listens on (with the actual port if `0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// The endpoint URL for clients, `http://ip:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.http.local_addr())
    }

    /// Requests received so far, by method (exact).
    pub fn counts(&self) -> RequestCounts {
        let [get, head, put, other] = self.counters.all().map(|c| c.load(Ordering::SeqCst));
        RequestCounts {
            get,
            head,
            put,
            other,
        }
    }

    /// Sets all request counts back to zero.
    pub fn reset_counts(&self) {
        for counter in self.counters.all() {
            counter.store(0, Ordering::SeqCst);
        }
    }
}

impl fmt::Debug for S3Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Server")
            .field("addr", &self.http.local_addr())
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

fn handle(
    req: hyper::Request<Incoming>,
    service: S3Service,
    counters: Arc<Counters>,
    strip_auth: bool,
) -> impl Future<Output = Result<hyper::Response<s3s::Body>, s3s::HttpError>> {
    counters.count(req.method());
    let mut req = req.map(s3s::Body::from);
    if strip_auth {
        req.headers_mut().remove(header::AUTHORIZATION);
    }
    async move { service.call(req).await }
}

/// The [`S3`] implementation: one bucket over one object store.
struct Backend {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    created: SystemTime,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("store", &self.store.to_string())
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl Backend {
    fn check_bucket(&self, bucket: &str) -> S3Result<()> {
        if bucket == self.bucket {
            Ok(())
        } else {
            Err(s3_error!(
                NoSuchBucket,
                "this server has only bucket {:?}",
                self.bucket
            ))
        }
    }

    /// The answer to a failed ranged GET: `NoSuchKey`, `InvalidRange` or `InternalError`.
    /// Backends differ in how they report an unsatisfiable range, so ask for the size.
    async fn ranged_get_error(
        &self,
        path: &Path,
        range: Range,
        err: object_store::Error,
    ) -> S3Error {
        if matches!(err, object_store::Error::NotFound { .. }) {
            return store_error(err);
        }
        match self.store.head(path).await {
            Ok(meta) => match satisfiable(range, meta.size) {
                Ok(_) => store_error(err),
                Err(invalid) => invalid,
            },
            Err(head_err) => store_error(head_err),
        }
    }
}

/// An object key as an object_store path, if the key is one (`Path::parse` would also
/// accept and normalise e.g. a trailing `/`, which would alias two keys).
fn key_path(key: &str) -> Option<Path> {
    Path::parse(key).ok().filter(|path| path.as_ref() == key)
}

fn read_path(key: &str) -> S3Result<Path> {
    key_path(key).ok_or_else(|| s3_error!(NoSuchKey))
}

fn write_path(key: &str) -> S3Result<Path> {
    key_path(key).ok_or_else(|| {
        s3_error!(
            InvalidArgument,
            "key {key:?} is not a valid object_store path (empty, `.` or `..` segment, trailing `/`, control character)"
        )
    })
}

fn store_error(err: object_store::Error) -> S3Error {
    use object_store::Error as E;
    let message = err.to_string();
    match err {
        E::NotFound { .. } => s3_error!(err, NoSuchKey),
        E::AlreadyExists { .. } | E::Precondition { .. } => {
            s3_error!(err, PreconditionFailed, "{message}")
        }
        E::NotModified { .. } => s3_error!(err, NotModified),
        E::NotSupported { .. } | E::NotImplemented { .. } => {
            s3_error!(err, NotImplemented, "{message}")
        }
        _ => s3_error!(err, InternalError, "{message}"),
    }
}

fn to_get_range(range: Range) -> GetRange {
    match range {
        // s3s guarantees first <= last <= i64::MAX.
        Range::Int {
            first,
            last: Some(last),
        } => GetRange::Bounded(first..last.saturating_add(1)),
        Range::Int { first, last: None } => GetRange::Offset(first),
        Range::Suffix { length } => GetRange::Suffix(length),
    }
}

/// The bytes `range` selects from an object of `size` bytes, or `InvalidRange` (416).
///
/// As on S3: a suffix longer than the object selects the whole object, a range that
/// starts at or past the end is unsatisfiable, and so is every range on an empty object.
fn satisfiable(range: Range, size: u64) -> S3Result<std::ops::Range<u64>> {
    if size == 0 {
        return Err(s3_error!(InvalidRange, "the object is empty"));
    }
    range
        .check(size)
        .map_err(|_| s3_error!(InvalidRange, "the object is {size} bytes long"))
}

fn timestamp(meta: &ObjectMeta) -> Timestamp {
    Timestamp::from(SystemTime::from(meta.last_modified))
}

/// The backend's e-tag as an S3 `ETag`, if it can be sent in a header.
fn etag(meta: &ObjectMeta) -> Option<ETag> {
    meta.e_tag.as_deref().and_then(parse_etag)
}

fn parse_etag(value: &str) -> Option<ETag> {
    let etag = ETag::parse_http_header(value.as_bytes())
        .unwrap_or_else(|_| ETag::Strong(value.to_owned()));
    etag.to_http_header().is_ok().then_some(etag)
}

fn content_length(len: u64) -> S3Result<i64> {
    i64::try_from(len).map_err(|_| s3_error!(InternalError, "object too large"))
}

/// A GET body: the backend's stream, passed through chunk for chunk, with its exact
/// remaining length known to hyper. Fails, rather than sending a body of the wrong
/// length, if the backend delivers more or fewer bytes than announced.
struct ObjectBody {
    /// Polled through `Mutex::get_mut`, which never locks: the mutex only makes the
    /// `Send` stream `Sync`, as [`StreamingBlob`] requires.
    inner: Mutex<BoxStream<'static, object_store::Result<Bytes>>>,
    remaining: usize,
    done: bool,
}

impl ObjectBody {
    fn new(result: GetResult) -> S3Result<Self> {
        let len = result.range.end - result.range.start;
        let remaining =
            usize::try_from(len).map_err(|_| s3_error!(InternalError, "object too large"))?;
        Ok(ObjectBody {
            inner: Mutex::new(result.into_stream()),
            remaining,
            done: false,
        })
    }

    fn fail(&mut self, err: StdError) -> Poll<Option<Result<Bytes, StdError>>> {
        self.done = true;
        Poll::Ready(Some(Err(err)))
    }
}

impl Stream for ObjectBody {
    type Item = Result<Bytes, StdError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let inner = this.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
        match inner.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => match this.remaining.checked_sub(chunk.len()) {
                Some(remaining) => {
                    this.remaining = remaining;
                    Poll::Ready(Some(Ok(chunk)))
                }
                None => this.fail("the backend returned more bytes than the range holds".into()),
            },
            Poll::Ready(Some(Err(err))) => this.fail(Box::new(err)),
            Poll::Ready(None) if this.remaining > 0 => {
                let missing = this.remaining;
                this.fail(format!("the backend's stream ended {missing} bytes early").into())
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
        }
    }
}

impl ByteStream for ObjectBody {
    fn remaining_length(&self) -> RemainingLength {
        RemainingLength::new_exact(self.remaining)
    }
}

/// One entry of a listing: an object, or a common prefix (`None`).
type ListEntry = (String, Option<ObjectMeta>);

impl Backend {
    /// Every object whose key starts with `prefix`, and, with a delimiter, the common
    /// prefixes rolled up from them; in key order.
    async fn list_entries(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> S3Result<Vec<ListEntry>> {
        // The directory holding every key that starts with `prefix`.
        let dir = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let dir = if dir.is_empty() {
            None
        } else {
            match key_path(dir) {
                Some(dir) => Some(dir),
                // No valid path lies below an invalid one.
                None => return Ok(Vec::new()),
            }
        };
        let mut entries: Vec<ListEntry> = Vec::new();

        if delimiter == Some("/") && (prefix.is_empty() || prefix.ends_with('/')) {
            // One level: the backend can do it without walking the subtree.
            let listed = self
                .store
                .list_with_delimiter(dir.as_ref())
                .await
                .map_err(store_error)?;
            entries.extend(
                listed
                    .common_prefixes
                    .into_iter()
                    .map(|p| (format!("{p}/"), None)),
            );
            entries.extend(
                listed
                    .objects
                    .into_iter()
                    .map(|meta| (meta.location.to_string(), Some(meta))),
            );
            entries.retain(|(key, _)| key.starts_with(prefix));
        } else {
            let mut common = BTreeSet::new();
            let mut stream = self.store.list(dir.as_ref());
            while let Some(meta) = stream.try_next().await.map_err(store_error)? {
                let key = meta.location.as_ref();
                let Some(rest) = key.strip_prefix(prefix) else {
                    continue;
                };
                match delimiter.and_then(|d| rest.find(d).map(|i| i + d.len())) {
                    Some(end) => {
                        common.insert(key[..prefix.len() + end].to_owned());
                    }
                    None => entries.push((key.to_owned(), Some(meta))),
                }
            }
            entries.extend(common.into_iter().map(|p| (p, None)));
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }
}

#[async_trait::async_trait]
impl S3 for Backend {
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let path = read_path(&input.key)?;
        let options = GetOptions {
            range: input.range.map(to_get_range),
            ..GetOptions::default()
        };
        let result = match self.store.get_opts(&path, options).await {
            Ok(result) => result,
            Err(err) => {
                return Err(match input.range {
                    Some(range) => self.ranged_get_error(&path, range, err).await,
                    None => store_error(err),
                });
            }
        };

        let meta = result.meta.clone();
        let served = result.range.clone();
        let content_range = match input.range {
            Some(range) => {
                let want = satisfiable(range, meta.size)?;
                if want != served {
                    return Err(s3_error!(
                        InternalError,
                        "the backend served bytes {served:?} for range {want:?}"
                    ));
                }
                let last = served.end - 1;
                Some(format!("bytes {}-{last}/{}", served.start, meta.size))
            }
            None => None,
        };
        let output = GetObjectOutput {
            body: Some(StreamingBlob::new(ObjectBody::new(result)?)),
            content_length: Some(content_length(served.end - served.start)?),
            content_range,
            accept_ranges: Some("bytes".to_owned()),
            e_tag: etag(&meta),
            last_modified: Some(timestamp(&meta)),
            ..GetObjectOutput::default()
        };
        Ok(S3Response::new(output))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let path = read_path(&input.key)?;
        let meta = self.store.head(&path).await.map_err(store_error)?;
        let output = HeadObjectOutput {
            content_length: Some(content_length(meta.size)?),
            accept_ranges: Some("bytes".to_owned()),
            e_tag: etag(&meta),
            last_modified: Some(timestamp(&meta)),
            ..HeadObjectOutput::default()
        };
        Ok(S3Response::new(output))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let path = write_path(&input.key)?;
        let expected = match input.content_length {
            Some(len) => Some(
                u64::try_from(len)
                    .map_err(|_| s3_error!(InvalidArgument, "negative Content-Length"))?,
            ),
            None => None,
        };
        let mode = match (input.if_none_match, input.if_match) {
            (Some(ETagCondition::Any), _) => PutMode::Create,
            (Some(ETagCondition::ETag(_)), _) => {
                return Err(s3_error!(
                    NotImplemented,
                    "If-None-Match on PUT supports only `*`"
                ));
            }
            (None, Some(ETagCondition::ETag(etag))) => PutMode::Update(UpdateVersion {
                e_tag: Some(etag.into_value()),
                version: None,
            }),
            (None, Some(ETagCondition::Any)) => {
                return Err(s3_error!(NotImplemented, "If-Match on PUT needs an ETag"));
            }
            (None, None) => PutMode::Overwrite,
        };

        // The whole body, chunk by chunk, as hyper received it (no copy here).
        let mut chunks = Vec::new();
        let mut received: u64 = 0;
        if let Some(mut body) = input.body {
            while let Some(chunk) = body.next().await {
                let chunk =
                    chunk.map_err(|e| S3Error::with_source(s3s::S3ErrorCode::IncompleteBody, e))?;
                received += chunk.len() as u64;
                if expected.is_some_and(|expected| received > expected) {
                    return Err(s3_error!(IncompleteBody, "body longer than Content-Length"));
                }
                chunks.push(chunk);
            }
        }
        if let Some(expected) = expected
            && received != expected
        {
            return Err(s3_error!(
                IncompleteBody,
                "got {received} of {expected} bytes (Content-Length)"
            ));
        }

        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let payload: PutPayload = chunks.into_iter().collect();
        let put = self
            .store
            .put_opts(&path, payload, options)
            .await
            .map_err(store_error)?;
        let output = PutObjectOutput {
            e_tag: put.e_tag.as_deref().and_then(parse_etag),
            size: Some(content_length(received)?),
            ..PutObjectOutput::default()
        };
        Ok(S3Response::new(output))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let CopySource::Bucket {
            bucket: ref source_bucket,
            key: ref source_key,
            ..
        } = input.copy_source
        else {
            return Err(s3_error!(NotImplemented, "copy source must be bucket/key"));
        };
        self.check_bucket(source_bucket)?;
        let from = read_path(source_key)?;
        let to = write_path(&input.key)?;
        self.store.copy(&from, &to).await.map_err(store_error)?;
        let meta = self.store.head(&to).await.map_err(store_error)?;
        let output = CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: etag(&meta),
                last_modified: Some(timestamp(&meta)),
                ..CopyObjectResult::default()
            }),
            ..CopyObjectOutput::default()
        };
        Ok(S3Response::new(output))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        // As on S3, deleting a missing object (or one that cannot exist) succeeds.
        if let Some(path) = key_path(&input.key) {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(err) => return Err(store_error(err)),
            }
        }
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for object in input.delete.objects {
            let result = match key_path(&object.key) {
                Some(path) => self.store.delete(&path).await,
                None => Ok(()),
            };
            match result {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(object.key),
                            ..DeletedObject::default()
                        });
                    }
                }
                Err(err) => errors.push(s3s::dto::Error {
                    code: Some("InternalError".to_owned()),
                    key: Some(object.key),
                    message: Some(err.to_string()),
                    version_id: None,
                }),
            }
        }
        let output = DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..DeleteObjectsOutput::default()
        };
        Ok(S3Response::new(output))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let prefix = input.prefix.as_deref().unwrap_or("");
        let delimiter = input.delimiter.as_deref().filter(|d| !d.is_empty());
        let max_keys = match input.max_keys {
            None => MAX_KEYS,
            Some(n) => usize::try_from(n)
                .map_err(|_| s3_error!(InvalidArgument, "negative max-keys"))?
                .min(MAX_KEYS),
        };
        // Continuation tokens are the last key (or common prefix) of the previous page.
        let after = match (
            input.continuation_token.as_deref(),
            input.start_after.as_deref(),
        ) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };

        let mut entries = self.list_entries(prefix, delimiter).await?;
        if let Some(after) = after {
            entries.retain(|(key, _)| key.as_str() > after);
        }
        // As on S3, `max-keys=0` answers an empty, untruncated page.
        let is_truncated = max_keys > 0 && entries.len() > max_keys;
        entries.truncate(max_keys);
        let next_continuation_token = if is_truncated {
            entries.last().map(|(key, _)| key.clone())
        } else {
            None
        };

        let key_count = i32::try_from(entries.len()).unwrap_or(i32::MAX);
        let mut contents = Vec::new();
        let mut common_prefixes = Vec::new();
        for (key, meta) in entries {
            match meta {
                Some(meta) => contents.push(Object {
                    key: Some(key),
                    size: Some(content_length(meta.size)?),
                    e_tag: etag(&meta),
                    last_modified: Some(timestamp(&meta)),
                    ..Object::default()
                }),
                None => common_prefixes.push(CommonPrefix { prefix: Some(key) }),
            }
        }
        let output = ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            max_keys: Some(i32::try_from(max_keys).unwrap_or(i32::MAX)),
            key_count: Some(key_count),
            is_truncated: Some(is_truncated),
            continuation_token: input.continuation_token,
            next_continuation_token,
            start_after: input.start_after,
            contents: (!contents.is_empty()).then_some(contents),
            common_prefixes: (!common_prefixes.is_empty()).then_some(common_prefixes),
            ..ListObjectsV2Output::default()
        };
        Ok(S3Response::new(output))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.check_bucket(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        // The one bucket always exists; creating it again succeeds, as in us-east-1.
        if req.input.bucket != self.bucket {
            return Err(s3_error!(
                NotImplemented,
                "this server has only bucket {:?}",
                self.bucket
            ));
        }
        Ok(S3Response::new(CreateBucketOutput::default()))
    }

    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let bucket = Bucket {
            name: Some(self.bucket.clone()),
            creation_date: Some(Timestamp::from(self.created)),
            ..Bucket::default()
        };
        let output = ListBucketsOutput {
            buckets: Some(vec![bucket]),
            ..ListBucketsOutput::default()
        };
        Ok(S3Response::new(output))
    }
}
