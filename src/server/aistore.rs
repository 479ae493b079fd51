//! The AIStore GetBatch ("moss") protocol: `GET /v1/ml/moss[/{bucket}]`.

use std::io::Read;
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine;
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Method, StatusCode, Uri};
use s3s::{Body, S3Request, S3Response, S3Result};

use super::archive::{ArchiveWriter, Compression, Member, PAX_ERROR, PAX_STATUS};
use super::body::{Assemble, BodyContext, archive_stream, collect_limited, http_body};
use super::fetch::{Fetch, Fetcher};
use super::keys::RequestError;
use super::service::{
    BodyError, Kind, MOSS_PATH, ORDER_HEADER, Shared, error_response, public_error, read_body,
    route_response, to_route_response,
};
use super::{Limits, invalid_key_reason};
use crate::{ByteRange, Error, Request, Result, Store};

/// The directory of placeholders for failed entries (`coer: true`).
pub const MISSING_DIR: &str = "__404__";

/// A getmany extension: `x-getmany-ranges: clip` asks for the ranges of the [`Store`] trait
/// (a range reaching past the end of an object is clipped there; one starting at or past the
/// end of a non-empty object still fails), which [`BundleStore`](crate) sends. Without it a
/// range is exact, as in AIStore: out of bounds is 416 (or a placeholder with `coer`).
pub const RANGES_HEADER: &str = "x-getmany-ranges";

/// Concurrent existence checks when `coer` is false, per request.
const PRECHECK_CONCURRENCY: usize = 64;

#[derive(Debug, serde::Deserialize)]
struct MossReq {
    #[serde(rename = "in", default)]
    entries: Vec<MossIn>,
    #[serde(default)]
    mime: Option<String>,
    #[serde(default)]
    coer: Option<bool>,
    #[serde(default)]
    onob: Option<bool>,
    #[serde(default)]
    strm: Option<bool>,
    /// `coloc`: a placement hint for AIStore's targets (0 none, 1 target-aware, 2 target- and
    /// shard-aware; some clients send a bool). Nothing to place here: accepted, whatever its
    /// value, and ignored, as it is in the query (`?coloc=`). Other unknown fields are
    /// ignored too.
    #[serde(default)]
    #[allow(dead_code)]
    coloc: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, serde::Deserialize)]
struct MossIn {
    objname: String,
    #[serde(default)]
    bucket: Option<String>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    uname: Option<String>,
    #[serde(default)]
    opaque: Option<String>,
    #[serde(default)]
    archpath: Option<String>,
    #[serde(default)]
    start: Option<i64>,
    #[serde(default)]
    length: Option<i64>,
}

/// One validated entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// The bucket: the entry's own, or the path's.
    pub bucket: String,
    /// The provider, `ais` by default (echoed only).
    pub provider: String,
    /// The object's key, accepted by [`invalid_key_reason`].
    pub objname: String,
    /// The file to read out of the archive object: not empty, no leading `/`, accepted by
    /// [`invalid_key_reason`].
    pub archpath: Option<String>,
    /// The caller's bytes, base64, not empty (echoed only).
    pub opaque: Option<String>,
    /// The bytes to read; `None` reads the whole object (or archived file).
    pub range: Option<ByteRange>,
    /// The member name (without the `__404__/` of a placeholder).
    pub name: String,
}

/// The metadata of one entry in a multipart answer.
#[derive(Debug, Clone, serde::Serialize)]
struct MossOut {
    objname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    archpath: Option<String>,
    bucket: String,
    provider: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    err_msg: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    opaque: Option<String>,
    size: u64,
}

/// The archive format of the answer (`mime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A tar, compressed or not.
    Tar(Compression),
    /// A zip.
    Zip,
}

fn error(shared: &Shared, status: StatusCode, message: &str) -> S3Response<Body> {
    to_route_response(error_response(Kind::Moss, status, "", message, shared))
}

fn bad_request(shared: &Shared, message: &str) -> S3Response<Body> {
    error(shared, StatusCode::BAD_REQUEST, message)
}

pub(crate) async fn handle(
    mut req: S3Request<Body>,
    shared: &Shared,
    context: BodyContext,
) -> S3Result<S3Response<Body>> {
    let head = match GetBatchHead::parse(&req.method, &req.uri, &req.headers) {
        Ok(head) => head,
        Err(e) => return Ok(error(shared, e.status, &e.message)),
    };
    let completion_order = head.completion_order;
    let clip_ranges = head.clip_ranges;

    let body = match read_body(&req.headers, &mut req.input, shared.limits.max_body_bytes).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return Ok(bad_request(
                shared,
                &format!(
                    "the GetBatch request body is larger than {} bytes",
                    shared.limits.max_body_bytes
                ),
            ));
        }
        Err(BodyError::Failed(why)) => {
            return Ok(bad_request(
                shared,
                &format!("could not read the request body: {why}"),
            ));
        }
    };
    // The query (`provider`, `coloc`, ...) carries nothing this server acts on.
    let bucket_exists = |bucket: &str| shared.buckets.contains_key(bucket);
    let GetBatchRequest {
        entries,
        output,
        coer,
        streaming,
        ..
    } = match head.parse_body(&body, &shared.limits, &bucket_exists) {
        Ok(request) => request,
        Err(e) => return Ok(error(shared, e.status, &e.message)),
    };
    // The parser found every entry's bucket in this same map.
    let stores: Vec<Arc<dyn Store>> = entries
        .iter()
        .map(|entry| shared.buckets[&entry.bucket].clone())
        .collect();

    if !coer {
        let checked = tokio::time::timeout_at(
            context.deadline,
            first_failure(&entries, &stores, clip_ranges),
        )
        .await;
        match checked {
            Err(_) => {
                return Ok(error(
                    shared,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "checking the entries took longer than the server's time limit",
                ));
            }
            Ok(Some((status, message))) => return Ok(error(shared, status, &message)),
            Ok(None) => {}
        }
    }

    let fetches = entries
        .iter()
        .zip(&stores)
        .map(|(entry, store)| Fetch {
            store: store.clone(),
            // An archived file is cut out of the whole archive object, then ranged.
            request: Request {
                key: entry.objname.clone(),
                range: if entry.archpath.is_some() {
                    None
                } else {
                    entry.range.clone()
                },
            },
        })
        .collect();
    let answers = Fetcher::new(
        fetches,
        shared.limits.window,
        !completion_order,
        context.stats.clone(),
    );
    let metadata = (!streaming).then(|| Arc::new(Mutex::new(Vec::with_capacity(entries.len()))));
    let failure = Arc::new(Mutex::new(None));
    let assemble = MossAssemble {
        entries,
        coer,
        completion_order,
        clip_ranges,
        max_extract: shared.limits.max_buffered_bytes,
        metadata: metadata.clone(),
        failure: failure.clone(),
    };
    let (writer, compression, content_type, extension) = match output {
        Output::Tar(Compression::None) => (
            ArchiveWriter::tar(),
            Compression::None,
            "application/x-tar",
            "tar",
        ),
        Output::Tar(Compression::Lz4) => (
            ArchiveWriter::tar(),
            Compression::Lz4,
            "application/x-lz4",
            "tar.lz4",
        ),
        Output::Tar(c) => (ArchiveWriter::tar(), c, "application/gzip", "tgz"),
        Output::Zip => (
            ArchiveWriter::zip(),
            Compression::None,
            "application/zip",
            "zip",
        ),
    };
    let archive = archive_stream(answers, writer, assemble, context);
    let internal = |e: std::io::Error| {
        s3s::S3Error::with_message(s3s::S3ErrorCode::InternalError, e.to_string())
    };

    if streaming {
        let body = http_body(archive, compression).map_err(internal)?;
        let mut response = route_response(StatusCode::OK, content_type, body);
        if completion_order {
            response
                .headers
                .insert(ORDER_HEADER, HeaderValue::from_static("completion"));
        }
        return Ok(response);
    }

    // Multipart: the metadata comes first, so the whole archive is assembled first.
    let archive = match compression {
        Compression::None => archive,
        other => super::archive::Compress::new(archive, other)
            .map_err(internal)?
            .boxed(),
    };
    let bytes = match collect_limited(archive, shared.limits.max_buffered_bytes).await {
        Ok(bytes) => bytes,
        Err(e) => {
            // An entry that failed with `coer: false` answers with its own status (404, 416,
            // ...) and message; anything else is the server's.
            let failed = failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let (status, message) = match failed {
                Some(failed) => failed,
                None if e.kind() == std::io::ErrorKind::TimedOut => {
                    (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                }
                None => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
            return Ok(error(shared, status, &message));
        }
    };
    let out = metadata
        .map(|m| std::mem::take(&mut *m.lock().unwrap_or_else(PoisonError::into_inner)))
        .unwrap_or_default();
    let uuid = shared.request_id();
    let meta = serde_json::json!({ "uuid": uuid, "out": out }).to_string();
    let boundary = format!("{uuid}{:016x}", bytes.len());
    let mut body = Vec::with_capacity(bytes.len() + meta.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{meta}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"archive\"; filename=\"batch-{uuid}.{extension}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let mut response = route_response(StatusCode::OK, "multipart/mixed", Body::from(body));
    if let Ok(value) = HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}")) {
        response.headers.insert(hyper::header::CONTENT_TYPE, value);
    }
    Ok(response)
}

/// A refusal with status 400.
fn refused(message: impl Into<String>) -> RequestError {
    RequestError::new(StatusCode::BAD_REQUEST, "", message)
}

/// A GetBatch request's default bucket and options, from its method, path and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetBatchHead {
    /// The bucket of the path `/v1/ml/moss/{bucket}`, if any.
    pub default_bucket: Option<String>,
    /// `x-getmany-order: completion`.
    pub completion_order: bool,
    /// `x-getmany-ranges: clip`: ranges clipped at the end of the object, as the `Store`
    /// trait clips them (not exact, as in AIStore).
    pub clip_ranges: bool,
}

/// A parsed and validated GetBatch request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetBatchRequest {
    /// The default bucket and options of the head.
    pub head: GetBatchHead,
    /// The entries in request order (duplicates kept): 1 to [`Limits::max_entries`], each in
    /// a bucket the server serves.
    pub entries: Vec<Entry>,
    /// `mime`.
    pub output: Output,
    /// `coer`: continue on error.
    pub coer: bool,
    /// `onob`: member names without the bucket.
    pub onob: bool,
    /// `strm`: a streaming answer (otherwise multipart).
    pub streaming: bool,
}

/// Parses and validates a GetBatch request `GET /v1/ml/moss[/{bucket}]` as the handler does,
/// with the same errors in the same order: the method, path and headers
/// ([`GetBatchHead::parse`]), then the body ([`GetBatchHead::parse_body`]). `bucket_exists`
/// says whether the server serves a bucket. (The handler runs the two steps itself, to read
/// the body only after the first.)
pub fn parse_getbatch_request(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    limits: &Limits,
    bucket_exists: &dyn Fn(&str) -> bool,
) -> std::result::Result<GetBatchRequest, RequestError> {
    GetBatchHead::parse(method, uri, headers)?.parse_body(body, limits, bucket_exists)
}

impl GetBatchHead {
    /// The default bucket (from the path) and options (from the headers).
    pub fn parse(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> std::result::Result<GetBatchHead, RequestError> {
        if method != Method::GET && method != Method::POST {
            return Err(RequestError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "",
                format!("GetBatch is GET {MOSS_PATH}[/bucket], not {method}"),
            ));
        }
        let rest = match uri.path().strip_prefix(MOSS_PATH) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.trim_matches('/'),
            // Not routed here.
            _ => {
                return Err(refused(format!(
                    "GetBatch is GET {MOSS_PATH}[/bucket], not {:?}",
                    uri.path()
                )));
            }
        };
        let default_bucket = (!rest.is_empty()).then(|| rest.to_owned());
        if default_bucket.as_deref().is_some_and(|b| b.contains('/')) {
            return Err(refused(format!(
                "GetBatch is GET {MOSS_PATH}[/bucket]; {rest:?} is not a bucket name"
            )));
        }
        let completion_order = headers
            .get(ORDER_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "completion");
        let clip_ranges = headers
            .get(RANGES_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "clip");
        Ok(GetBatchHead {
            default_bucket,
            completion_order,
            clip_ranges,
        })
    }

    /// The request's body: entries (each validated) and options.
    pub fn parse_body(
        self,
        body: &[u8],
        limits: &Limits,
        bucket_exists: &dyn Fn(&str) -> bool,
    ) -> std::result::Result<GetBatchRequest, RequestError> {
        let request: MossReq = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(e) => {
                return Err(refused(format!(
                    "the request body is not a GetBatch request ({e}); expected {{\"in\":[{{\"objname\":...}}, ...]}}"
                )));
            }
        };
        if request.entries.is_empty() {
            return Err(refused("the GetBatch request has no entries (\"in\")"));
        }
        if request.entries.len() > limits.max_entries {
            return Err(refused(format!(
                "the GetBatch request has {} entries; at most {} are allowed",
                request.entries.len(),
                limits.max_entries
            )));
        }
        let output = match request.mime.as_deref().unwrap_or("") {
            "" | ".tar" | "tar" => Output::Tar(Compression::None),
            ".tgz" | ".tar.gz" | "tgz" | "tar.gz" => Output::Tar(Compression::Gzip),
            ".zip" | "zip" => Output::Zip,
            ".tar.lz4" | "tar.lz4" => Output::Tar(Compression::Lz4),
            other => {
                return Err(refused(format!(
                    "unknown output format {other:?}; use .tar, .tgz, .tar.gz, .tar.lz4 or .zip"
                )));
            }
        };
        let coer = request.coer.unwrap_or(false);
        let onob = request.onob.unwrap_or(false);
        let streaming = request.strm.unwrap_or(false);

        let mut entries = Vec::with_capacity(request.entries.len());
        for (i, entry) in request.entries.into_iter().enumerate() {
            let default_bucket = self.default_bucket.as_deref();
            entries.push(validate(i, entry, default_bucket, onob, bucket_exists)?);
        }
        Ok(GetBatchRequest {
            head: self,
            entries,
            output,
            coer,
            onob,
            streaming,
        })
    }
}

/// Checks one `in` element.
fn validate(
    i: usize,
    entry: MossIn,
    default_bucket: Option<&str>,
    onob: bool,
    bucket_exists: &dyn Fn(&str) -> bool,
) -> std::result::Result<Entry, RequestError> {
    let what = format!("entry {i} ({:?})", entry.objname);
    if entry.uname.as_deref().is_some_and(|u| !u.is_empty()) {
        return Err(refused(format!("{what}: \"uname\" is not supported")));
    }
    let Some(bucket) = entry
        .bucket
        .filter(|b| !b.is_empty())
        .or_else(|| default_bucket.map(str::to_owned))
    else {
        return Err(refused(format!(
            "{what} names no bucket (give one in the path or the entry)"
        )));
    };
    if !bucket_exists(&bucket) {
        return Err(RequestError::new(
            StatusCode::NOT_FOUND,
            "",
            format!("{what}: no bucket named {bucket:?} on this server"),
        ));
    }
    if let Some(reason) = invalid_key_reason(&entry.objname) {
        return Err(refused(format!("{what}: invalid object name: {reason}")));
    }
    let archpath = entry
        .archpath
        .filter(|a| !a.is_empty())
        .map(|a| a.trim_start_matches('/').to_owned());
    if let Some(reason) = archpath.as_deref().and_then(invalid_key_reason) {
        return Err(refused(format!("{what}: invalid archpath: {reason}")));
    }
    let start = entry.start.unwrap_or(0);
    let length = entry.length.unwrap_or(0);
    let range = match (start, length) {
        (s, _) if s < 0 => {
            return Err(refused(format!("{what}: start {s} is negative")));
        }
        (_, l) if l < -1 => {
            return Err(refused(format!(
                "{what}: length {l} must be positive, or -1 for the rest of the object"
            )));
        }
        (s, 0) if s != 0 => {
            return Err(refused(format!(
                "{what}: start {s} needs a length (positive, or -1 for the rest)"
            )));
        }
        (0, 0) | (0, -1) => None,
        (s, -1) => Some(ByteRange::Offset(s as u64)),
        (s, l) => match (s as u64).checked_add(l as u64) {
            Some(end) => Some(ByteRange::Bounded(s as u64..end)),
            None => {
                return Err(refused(format!("{what}: start + length overflows")));
            }
        },
    };
    let opaque = match entry.opaque.filter(|o| !o.is_empty()) {
        None => None,
        Some(o) => match decode_opaque(&o) {
            Some(_) => Some(o),
            None => {
                return Err(refused(format!("{what}: \"opaque\" is not base64")));
            }
        },
    };
    let mut name = if onob {
        entry.objname.clone()
    } else {
        format!("{bucket}/{}", entry.objname)
    };
    if let Some(archpath) = &archpath {
        name.push('/');
        name.push_str(archpath);
    }
    Ok(Entry {
        bucket,
        provider: entry
            .provider
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "ais".into()),
        objname: entry.objname,
        archpath,
        opaque,
        range,
        name,
    })
}

/// Base64 in either alphabet, padded or not.
fn decode_opaque(value: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(value).ok())
}

/// `coer: false`: the first entry that cannot be served, checked before anything is sent.
async fn first_failure(
    entries: &[Entry],
    stores: &[Arc<dyn Store>],
    clip_ranges: bool,
) -> Option<(StatusCode, String)> {
    let owned: Vec<(usize, Entry, Arc<dyn Store>)> = entries
        .iter()
        .cloned()
        .zip(stores.iter().cloned())
        .enumerate()
        .map(|(i, (e, s))| (i, e, s))
        .collect();
    let checks = stream::iter(owned)
        .map(|(i, entry, store)| async move {
            let name = format!("{}/{}", entry.bucket, entry.objname);
            let failure = match store.size(&entry.objname).await {
                Ok(None) => Some((
                    StatusCode::NOT_FOUND,
                    format!("object {name} does not exist"),
                )),
                Err(e) => Some((status_of(&e), format!("{name}: {}", public_error(&e)))),
                Ok(Some(size)) => match (&entry.range, &entry.archpath) {
                    (Some(range), None) if out_of_bounds(range, size, clip_ranges) => Some((
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        out_of_range(i, &entry, &format!("the object has {size} bytes")),
                    )),
                    _ => None,
                },
            };
            (i, failure)
        })
        .buffer_unordered(PRECHECK_CONCURRENCY)
        .boxed()
        .collect::<Vec<_>>()
        .await;
    checks
        .into_iter()
        .filter_map(|(i, failure)| failure.map(|f| (i, f)))
        .min_by_key(|(i, _)| *i)
        .map(|(_, failure)| failure)
}

/// Whether `range` reaches past the end of an object (or archived file) of `size` bytes. A
/// GetBatch range is exact: `length` bytes from `start`, all inside the object, or from
/// `start` (inside the object) to its end; it is never clipped.
///
/// With `clip` ([`RANGES_HEADER`]), only a range that starts at or past the end of a
/// non-empty object.
fn out_of_bounds(range: &ByteRange, size: u64, clip: bool) -> bool {
    if clip {
        return size > 0 && range.resolve(size).is_none();
    }
    match range {
        // Also a start at or past the end: start < end.
        ByteRange::Bounded(r) => r.end > size,
        ByteRange::Offset(start) => *start >= size,
        ByteRange::Suffix(n) => *n > size,
    }
}

/// Whether `got` bytes, read for `range` from a store (which clips a range at the end of the
/// object, and reads any range of an empty object as empty), fall short of the range: the
/// range was out of bounds.
fn short_read(range: &ByteRange, got: u64) -> bool {
    match range {
        ByteRange::Bounded(r) => got < r.end - r.start,
        // A start inside the object reads at least one byte.
        ByteRange::Offset(_) => got == 0,
        ByteRange::Suffix(n) => got < *n,
    }
}

/// The range as the request gave it: `(start, length)`, length -1 for "to the end".
fn start_length(range: &ByteRange) -> (u64, i64) {
    match range {
        ByteRange::Bounded(r) => (r.start, (r.end - r.start) as i64),
        ByteRange::Offset(start) => (*start, -1),
        ByteRange::Suffix(n) => (0, *n as i64),
    }
}

/// `<bucket>/<objname>[/<archpath>]`.
fn full_name(entry: &Entry) -> String {
    match &entry.archpath {
        Some(archpath) => format!("{}/{}/{archpath}", entry.bucket, entry.objname),
        None => format!("{}/{}", entry.bucket, entry.objname),
    }
}

/// The message of an out-of-bounds range: the entry, its range, and `why`.
fn out_of_range(index: usize, entry: &Entry, why: &str) -> String {
    let (start, length) = entry.range.as_ref().map_or((0, 0), start_length);
    format!(
        "entry {index} ({}): range start {start}, length {length} is out of bounds: {why}",
        full_name(entry)
    )
}

struct MossAssemble {
    entries: Vec<Entry>,
    coer: bool,
    completion_order: bool,
    /// [`RANGES_HEADER`].
    clip_ranges: bool,
    max_extract: u64,
    metadata: Option<Arc<Mutex<Vec<MossOut>>>>,
    /// With `coer: false`, the failure that cut the batch (its status and message), for a
    /// multipart answer, which has not started yet.
    failure: Arc<Mutex<Option<(StatusCode, String)>>>,
}

impl MossAssemble {
    /// The bytes of entry `index` from what the store answered, or why it failed (status and
    /// message): an archived file is cut out of the archive object; a range must be inside
    /// the object (or archived file).
    fn outcome(
        &self,
        index: usize,
        entry: &Entry,
        result: Result<Option<Bytes>>,
    ) -> std::result::Result<Bytes, (StatusCode, String)> {
        let range_failed = |why: &str| {
            (
                StatusCode::RANGE_NOT_SATISFIABLE,
                out_of_range(index, entry, why),
            )
        };
        let data = match result {
            Ok(Some(data)) => data,
            Ok(None) => {
                return Err((
                    StatusCode::NOT_FOUND,
                    format!("object {}/{} does not exist", entry.bucket, entry.objname),
                ));
            }
            // A range that starts at or past the end of a non-empty object.
            Err(Error::InvalidRange { reason, .. }) if entry.range.is_some() => {
                return Err(range_failed(&reason));
            }
            Err(e) => return Err((status_of(&e), public_error(&e))),
        };
        let Some(archpath) = &entry.archpath else {
            // The store read the range, clipped at the end of the object.
            return match &entry.range {
                Some(range) if !self.clip_ranges && short_read(range, data.len() as u64) => {
                    let (start, _) = start_length(range);
                    Err(range_failed(&if data.is_empty() {
                        "it starts at or past the end of the object".to_string()
                    } else {
                        format!("the object has {} bytes", start + data.len() as u64)
                    }))
                }
                _ => Ok(data),
            };
        };
        let file = match extract(&entry.objname, &data, archpath, self.max_extract) {
            Ok(Some(file)) => file,
            Ok(None) => {
                return Err((
                    StatusCode::NOT_FOUND,
                    format!(
                        "{}/{}: no file {archpath:?} in the archive",
                        entry.bucket, entry.objname
                    ),
                ));
            }
            Err(e) => return Err((status_of(&e), public_error(&e))),
        };
        match &entry.range {
            None => Ok(file),
            Some(range) => {
                let size = file.len() as u64;
                match range.resolve(size) {
                    Some(r) if !out_of_bounds(range, size, self.clip_ranges) => {
                        Ok(file.slice(r.start as usize..r.end as usize))
                    }
                    _ => Err(range_failed(&format!("the archived file has {size} bytes"))),
                }
            }
        }
    }

    fn record(&self, entry: &Entry, size: u64, err_msg: Option<String>) {
        if let Some(metadata) = &self.metadata {
            metadata
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(MossOut {
                    objname: entry.objname.clone(),
                    archpath: entry.archpath.clone(),
                    bucket: entry.bucket.clone(),
                    provider: entry.provider.clone(),
                    err_msg,
                    opaque: entry.opaque.clone(),
                    size,
                });
        }
    }
}

fn status_of(error: &Error) -> StatusCode {
    match error {
        Error::InvalidRange { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
        Error::InvalidKey { .. } => StatusCode::BAD_REQUEST,
        Error::NotSupported { .. } => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl Assemble for MossAssemble {
    fn member(
        &mut self,
        index: usize,
        result: Result<Option<Bytes>>,
    ) -> std::result::Result<Option<Member>, String> {
        // Each index is answered once (the fetcher drops repeats): take the entry, no copy.
        let Some(entry) = self.entries.get_mut(index).map(std::mem::take) else {
            return Err(format!("internal: answer for unknown entry {index}"));
        };
        let mut pax = Vec::new();
        let member_index = self.completion_order.then_some(index);
        let (status, message) = match self.outcome(index, &entry, result) {
            Ok(data) => {
                self.record(&entry, data.len() as u64, None);
                return Ok(Some(Member {
                    name: entry.name,
                    data,
                    pax,
                    index: member_index,
                }));
            }
            Err(failed) => failed,
        };
        if !self.coer {
            let cut = format!("{message}; the batch is cut (coer is false)");
            *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some((status, message));
            return Err(cut);
        }
        self.record(&entry, 0, Some(message.clone()));
        pax.push((PAX_STATUS, status.as_u16().to_string()));
        pax.push((PAX_ERROR, message));
        Ok(Some(Member {
            name: format!("{MISSING_DIR}/{}", entry.name),
            data: Bytes::new(),
            pax,
            index: member_index,
        }))
    }

    fn last(&mut self) -> Vec<Member> {
        Vec::new()
    }
}

/// The bytes allocated up front for an archived file that declares `declared` bytes (already
/// checked against the server's `max_buffered_bytes`) in an archive of `held` bytes: no more
/// than the archive can hold (`held`, or 1032 times it, deflate's largest expansion, more
/// than LZ4's, for a compressed file), so a header that declares more than that costs
/// nothing before its bytes come out; `read_to_end` grows the buffer past it if ever needed.
fn upfront(declared: u64, held: usize, inflates: bool) -> usize {
    let held = held as u64;
    let bound = if inflates {
        held.saturating_mul(1032).saturating_add(64)
    } else {
        held
    };
    usize::try_from(declared.min(bound)).unwrap_or(usize::MAX)
}

/// The file at `archpath` inside the archive object `objname` (tar, tgz/tar.gz, tar.lz4 or
/// zip, by the object's extension), or `None` if the archive has no such file.
fn extract(objname: &str, archive: &Bytes, archpath: &str, limit: u64) -> Result<Option<Bytes>> {
    let invalid = |reason: String| Error::InvalidData {
        key: objname.to_string(),
        reason,
    };
    let lower = objname.to_ascii_lowercase();
    if lower.ends_with(".zip") {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive.as_ref()))
            .map_err(|e| invalid(format!("not a zip archive: {e}")))?;
        let file = match zip.by_name(archpath) {
            Ok(file) => file,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(invalid(format!("reading {archpath:?}: {e}"))),
        };
        if file.size() > limit {
            return Err(invalid(format!(
                "{archpath:?} is {} bytes, over the server's limit of {limit}",
                file.size()
            )));
        }
        let inflates = file.compression() != zip::CompressionMethod::Stored;
        let mut out = Vec::with_capacity(upfront(file.size(), archive.len(), inflates));
        file.take(limit)
            .read_to_end(&mut out)
            .map_err(|e| invalid(format!("reading {archpath:?}: {e}")))?;
        return Ok(Some(Bytes::from(out)));
    }
    let compressed = !lower.ends_with(".tar");
    let reader: Box<dyn Read> = if lower.ends_with(".tar") {
        Box::new(archive.as_ref())
    } else if lower.ends_with(".tgz") || lower.ends_with(".tar.gz") {
        Box::new(flate2::read::GzDecoder::new(archive.as_ref()))
    } else if lower.ends_with(".tar.lz4") {
        Box::new(lz4_flex::frame::FrameDecoder::new(archive.as_ref()))
    } else {
        return Err(invalid(
            "archpath needs an archive object named .tar, .tgz, .tar.gz, .tar.lz4 or .zip".into(),
        ));
    };
    let mut tar = tar::Archive::new(reader);
    let entries = tar
        .entries()
        .map_err(|e| invalid(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| invalid(format!("corrupt tar archive: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| invalid(format!("corrupt tar member name: {e}")))?;
        let name = path.to_string_lossy();
        if name.trim_start_matches("./") != archpath {
            continue;
        }
        let size = entry.size();
        if size > limit {
            return Err(invalid(format!(
                "{archpath:?} is {size} bytes, over the server's limit of {limit}"
            )));
        }
        let mut out = Vec::with_capacity(upfront(size, archive.len(), compressed));
        entry
            .take(limit)
            .read_to_end(&mut out)
            .map_err(|e| invalid(format!("reading {archpath:?}: {e}")))?;
        return Ok(Some(Bytes::from(out)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_parsed_with_the_handlers_errors_in_its_order() {
        let exists = |bucket: &str| bucket == "data";
        let limits = Limits {
            max_entries: 2,
            ..Limits::default()
        };
        let parse = |method: Method, uri: &str, body: &str| {
            let headers = HeaderMap::new();
            let uri = uri.parse().unwrap();
            parse_getbatch_request(&method, &uri, &headers, body.as_bytes(), &limits, &exists)
        };
        let e = parse(Method::PUT, "/v1/ml/moss/data/x", "").unwrap_err();
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
        let e = parse(Method::GET, "/v1/ml/moss/data/x", "").unwrap_err();
        assert!(e.message.contains("not a bucket name"), "{}", e.message);
        let e = parse(Method::GET, "/v1/ml/mossy", "").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        // An entry's unknown bucket is found before its bad name and before later entries.
        let body = r#"{"in":[{"objname":"../a","bucket":"zzz"},{"objname":"b","start":-1}]}"#;
        let e = parse(Method::GET, "/v1/ml/moss/data", body).unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert!(e.message.starts_with("entry 0"), "{}", e.message);
        let body = r#"{"in":[{"objname":"a"},{"objname":"b"},{"objname":"c"}]}"#;
        let e = parse(Method::GET, "/v1/ml/moss/data", body).unwrap_err();
        assert!(e.message.contains("at most 2"), "{}", e.message);
        let body = r#"{"in":[{"objname":"a","start":2,"length":3,"opaque":"eA"},
            {"objname":"s.tar","archpath":"/x/y","start":1,"length":-1}],
            "mime":".zip","onob":true}"#;
        let request = parse(Method::GET, "/v1/ml/moss/data/", body).unwrap();
        assert_eq!(request.head.default_bucket.as_deref(), Some("data"));
        assert_eq!(request.output, Output::Zip);
        assert!(request.onob && !request.coer && !request.streaming);
        let [a, s] = &request.entries[..] else {
            panic!("{:?}", request.entries)
        };
        assert_eq!(a.range, Some(ByteRange::Bounded(2..5)));
        assert_eq!(a.opaque.as_deref(), Some("eA"));
        assert_eq!((a.name.as_str(), a.provider.as_str()), ("a", "ais"));
        assert_eq!(s.range, Some(ByteRange::Offset(1)));
        assert_eq!(s.archpath.as_deref(), Some("x/y"));
        assert_eq!(s.name, "s.tar/x/y");
        assert!(!request.head.clip_ranges);

        // .tar.lz4; `coloc` (any value) and unknown fields ignored; the clip header.
        for coloc in ["2", "true", "\"x\"", "null"] {
            let body = format!(
                r#"{{"in":[{{"objname":"a","new":1}}],"mime":".tar.lz4","coloc":{coloc},"new":{{}}}}"#
            );
            let uri = "/v1/ml/moss/data?coloc=2".parse().unwrap();
            let mut headers = HeaderMap::new();
            headers.insert(RANGES_HEADER, HeaderValue::from_static("clip"));
            let request = parse_getbatch_request(
                &Method::GET,
                &uri,
                &headers,
                body.as_bytes(),
                &limits,
                &exists,
            )
            .unwrap();
            assert_eq!(request.output, Output::Tar(Compression::Lz4));
            assert!(request.head.clip_ranges);
        }
    }

    #[test]
    fn ranges_are_exact_unless_clipped() {
        let bounded = ByteRange::Bounded(2..5);
        let open = ByteRange::Offset(4);
        for (range, size, exact, clipped) in [
            (&bounded, 5, false, false),
            (&bounded, 4, true, false),
            (&bounded, 2, true, true),
            (&bounded, 0, true, false),
            (&open, 5, false, false),
            (&open, 4, true, true),
            (&open, 0, true, false),
        ] {
            assert_eq!(
                out_of_bounds(range, size, false),
                exact,
                "{range} of {size}"
            );
            assert_eq!(
                out_of_bounds(range, size, true),
                clipped,
                "{range} of {size}"
            );
        }
        // What a store answers (clipped): short means out of bounds.
        assert!(short_read(&bounded, 2) && !short_read(&bounded, 3));
        assert!(short_read(&open, 0) && !short_read(&open, 1));
    }
}
