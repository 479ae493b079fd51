//! The Tigris bundle protocol: `POST /{bucket}?bundle`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{HeaderMap, StatusCode, Uri};
use s3s::{Body, S3Request, S3Response, S3Result};

use super::archive::{ArchiveWriter, Compression, Member};
use super::body::{Assemble, BodyContext, archive_stream, http_body_with_trailers};
use super::fetch::{Fetch, Fetcher};
use super::keys::RequestError;
use super::service::{
    BodyError, Kind, ORDER_HEADER, Shared, error_response, public_error, read_body, route_response,
    to_route_response, xml_error, xml_escape,
};
use super::{Limits, invalid_key_reason};
use crate::{Error, Request, Result, Store};

/// The name of the last member in skip mode, listing the keys left out.
pub const ERRORS_MEMBER: &str = "__bundle_errors.json";

/// Concurrent existence checks of fail mode, per bundle.
const PRECHECK_CONCURRENCY: usize = 64;

fn error(shared: &Shared, status: StatusCode, code: &str, message: &str) -> S3Response<Body> {
    to_route_response(error_response(Kind::Bundle, status, code, message, shared))
}

fn bad_request(shared: &Shared, code: &str, message: &str) -> S3Response<Body> {
    error(shared, StatusCode::BAD_REQUEST, code, message)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

pub(crate) async fn handle(
    mut req: S3Request<Body>,
    shared: &Shared,
    context: BodyContext,
) -> S3Result<S3Response<Body>> {
    let bucket_exists = |bucket: &str| shared.buckets.contains_key(bucket);
    let head = match BundleHead::parse(&req.uri, &req.headers, &bucket_exists) {
        Ok(head) => head,
        Err(e) => return Ok(error(shared, e.status, e.code, &e.message)),
    };
    // The parser found the bucket in this same map.
    let store = shared.buckets[&head.bucket].clone();
    let BundleHead {
        compression,
        fail_mode,
        completion_order,
        ..
    } = head;

    let body = match read_body(&req.headers, &mut req.input, shared.limits.max_body_bytes).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return Ok(bad_request(
                shared,
                "EntityTooLarge",
                &format!(
                    "the bundle request body is larger than {} bytes",
                    shared.limits.max_body_bytes
                ),
            ));
        }
        Err(BodyError::Failed(why)) => {
            return Ok(bad_request(
                shared,
                "IncompleteBody",
                &format!("could not read the request body: {why}"),
            ));
        }
    };
    let keys = match parse_bundle_keys(&body, &shared.limits) {
        Ok(keys) => keys,
        Err(e) => return Ok(error(shared, e.status, e.code, &e.message)),
    };

    if fail_mode {
        let checked = tokio::time::timeout_at(context.deadline, missing_keys(&store, &keys)).await;
        match checked {
            Err(_) => {
                return Ok(error(
                    shared,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "RequestTimeout",
                    "checking the keys took longer than the server's time limit",
                ));
            }
            Ok(Err(e)) => {
                return Ok(error(
                    shared,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    &public_error(&e),
                ));
            }
            Ok(Ok(missing)) if !missing.is_empty() => {
                let extra: String = std::iter::once("<MissingKeys>".to_string())
                    .chain(
                        missing
                            .iter()
                            .map(|k| format!("<Key>{}</Key>", xml_escape(k))),
                    )
                    .chain(std::iter::once("</MissingKeys>".to_string()))
                    .collect();
                let body = xml_error(
                    "BundleKeyNotFound",
                    "One or more keys could not be resolved",
                    &shared.request_id(),
                    Some(&extra),
                );
                return Ok(route_response(
                    StatusCode::NOT_FOUND,
                    "application/xml",
                    Body::from(body),
                ));
            }
            Ok(Ok(_)) => {}
        }
    }

    let fetches = keys
        .iter()
        .map(|key| Fetch {
            store: store.clone(),
            request: Request::whole(key.clone()),
        })
        .collect();
    let answers = Fetcher::new(
        fetches,
        shared.limits.window,
        !completion_order,
        context.stats.clone(),
    );
    let counts = Arc::new(BundleCounts::default());
    let assemble = TigrisAssemble {
        keys,
        skipped: Vec::new(),
        fail_mode,
        completion_order,
        counts: counts.clone(),
        max_bytes: shared.limits.max_bundle_bytes,
    };
    let archive = archive_stream(answers, ArchiveWriter::tar(), assemble, context);
    let body = http_body_with_trailers(archive, compression, move || counts.trailers())
        .map_err(|e| s3s::S3Error::with_message(s3s::S3ErrorCode::InternalError, e.to_string()))?;
    let content_type = match compression {
        Compression::None => "application/x-tar",
        Compression::Gzip => "application/gzip",
        Compression::Zstd => "application/zstd",
        Compression::Lz4 => "application/x-lz4",
    };
    let mut response = route_response(StatusCode::OK, content_type, body);
    response
        .headers
        .insert(header::TRAILER, HeaderValue::from_static(TRAILERS));
    if completion_order {
        response
            .headers
            .insert(ORDER_HEADER, HeaderValue::from_static("completion"));
    }
    Ok(response)
}

/// A refusal with status 400.
fn refused(code: &'static str, message: impl Into<String>) -> RequestError {
    RequestError::new(StatusCode::BAD_REQUEST, code, message)
}

/// A bundle request's bucket and options, from its path and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleHead {
    /// The bucket named by the path (one the server serves).
    pub bucket: String,
    /// `x-tigris-bundle-compression`.
    pub compression: Compression,
    /// `x-tigris-bundle-on-error: fail`.
    pub fail_mode: bool,
    /// `x-getmany-order: completion`.
    pub completion_order: bool,
}

/// A parsed and validated bundle request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleRequest {
    /// The bucket and options.
    pub head: BundleHead,
    /// The keys in request order (duplicates kept): 1 to [`Limits::max_keys`] of them, each
    /// accepted by [`invalid_key_reason`].
    pub keys: Vec<String>,
}

/// Parses and validates a bundle request `POST /{bucket}?bundle` as the handler does, with
/// the same errors in the same order: the path and headers ([`BundleHead::parse`]), then the
/// body ([`parse_bundle_keys`]). `bucket_exists` says whether the server serves a bucket.
/// (The handler runs the two steps itself, to read the body only after the first.)
pub fn parse_bundle_request(
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    limits: &Limits,
    bucket_exists: &dyn Fn(&str) -> bool,
) -> std::result::Result<BundleRequest, RequestError> {
    let head = BundleHead::parse(uri, headers, bucket_exists)?;
    let keys = parse_bundle_keys(body, limits)?;
    Ok(BundleRequest { head, keys })
}

impl BundleHead {
    /// The bucket (from the path; it must exist) and the options (from the headers).
    pub fn parse(
        uri: &Uri,
        headers: &HeaderMap,
        bucket_exists: &dyn Fn(&str) -> bool,
    ) -> std::result::Result<BundleHead, RequestError> {
        let path = uri.path().trim_start_matches('/');
        let bucket = path.strip_suffix('/').unwrap_or(path).to_owned();
        if bucket.is_empty() || bucket.contains('/') {
            return Err(refused(
                "InvalidRequest",
                "a bundle is requested with POST /{bucket}?bundle (no key in the path)",
            ));
        }
        if !bucket_exists(&bucket) {
            return Err(RequestError::new(
                StatusCode::NOT_FOUND,
                "NoSuchBucket",
                format!("no bucket named {bucket:?} on this server"),
            ));
        }
        match header(headers, "x-tigris-bundle-format") {
            None | Some("tar") => {}
            Some(other) => {
                return Err(refused(
                    "InvalidArgument",
                    format!("x-tigris-bundle-format {other:?} is not supported; use \"tar\""),
                ));
            }
        }
        let compression = match header(headers, "x-tigris-bundle-compression") {
            None | Some("") | Some("none") => Compression::None,
            Some("gzip") => Compression::Gzip,
            Some("zstd") => Compression::Zstd,
            Some(other) => {
                return Err(refused(
                    "InvalidArgument",
                    format!(
                        "x-tigris-bundle-compression {other:?} is not supported; use none, gzip or zstd"
                    ),
                ));
            }
        };
        let fail_mode = match header(headers, "x-tigris-bundle-on-error") {
            None | Some("") | Some("skip") => false,
            Some("fail") => true,
            Some(other) => {
                return Err(refused(
                    "InvalidArgument",
                    format!(
                        "x-tigris-bundle-on-error {other:?} is not supported; use skip or fail"
                    ),
                ));
            }
        };
        let completion_order = header(headers, ORDER_HEADER) == Some("completion");
        Ok(BundleHead {
            bucket,
            compression,
            fail_mode,
            completion_order,
        })
    }
}

/// The keys of a bundle request's body: 1 to [`Limits::max_keys`], each valid.
pub fn parse_bundle_keys(
    body: &[u8],
    limits: &Limits,
) -> std::result::Result<Vec<String>, RequestError> {
    let keys = parse_keys(body).map_err(|(code, message)| refused(code, message))?;
    if keys.is_empty() {
        return Err(refused("InvalidRequest", "the bundle lists no keys"));
    }
    if keys.len() > limits.max_keys {
        return Err(refused(
            "InvalidRequest",
            format!(
                "the bundle lists {} keys; at most {} are allowed per request",
                keys.len(),
                limits.max_keys
            ),
        ));
    }
    if let Some((key, reason)) = keys
        .iter()
        .find_map(|k| invalid_key_reason(k).map(|r| (k, r)))
    {
        return Err(refused(
            "InvalidArgument",
            format!("invalid key {key:?}: {reason}"),
        ));
    }
    Ok(keys)
}

/// The keys of a bundle request: JSON `{"keys":[...]}` or XML
/// `<Bundle><Object><Key>..</Key></Object>..</Bundle>`.
fn parse_keys(body: &[u8]) -> std::result::Result<Vec<String>, (&'static str, String)> {
    #[derive(serde::Deserialize)]
    struct Keys {
        keys: Vec<String>,
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        (
            "MalformedJSON",
            format!("the request body is not UTF-8: {e}"),
        )
    })?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('<') {
        // The XML parser's messages quote the body as it is.
        return parse_xml_keys(trimmed).map_err(|why| ("MalformedXML", printable(&why)));
    }
    serde_json::from_str::<Keys>(trimmed)
        .map(|k| k.keys)
        .map_err(|e| {
            (
                "MalformedJSON",
                format!(
                    "the request body is not a bundle request ({e}); expected {{\"keys\":[\"key\", ...]}}"
                ),
            )
        })
}

/// `text` on one line, with control characters, U+FFFE and U+FFFF escaped as Rust does
/// (`\0`, `\n`, `\u{fffe}`): an error message goes out in an XML body, where most of them are
/// not allowed even as character references.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || matches!(c, '\u{fffe}' | '\u{ffff}') {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_xml_keys(text: &str) -> std::result::Result<Vec<String>, String> {
    use quick_xml::Reader;
    use quick_xml::events::Event;
    let mut reader = Reader::from_str(text);
    let mut keys = Vec::new();
    let mut path: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    loop {
        match reader.read_event() {
            Err(e) => {
                return Err(format!(
                    "invalid XML at byte {}: {e}",
                    reader.buffer_position()
                ));
            }
            Ok(Event::Eof) => break,
            Ok(Event::Start(tag)) => {
                let name = String::from_utf8_lossy(tag.name().as_ref()).into_owned();
                if path.is_empty() && name != "Bundle" {
                    return Err(format!("expected a <Bundle> root element, found <{name}>"));
                }
                if name == "Key" && path.last().map(String::as_str) == Some("Object") {
                    current = Some(String::new());
                }
                path.push(name);
            }
            Ok(Event::Empty(tag)) => {
                let name = String::from_utf8_lossy(tag.name().as_ref()).into_owned();
                if path.is_empty() && name != "Bundle" {
                    return Err(format!("expected a <Bundle> root element, found <{name}/>"));
                }
            }
            Ok(Event::End(_)) => {
                if path.pop().as_deref() == Some("Key")
                    && let Some(key) = current.take()
                {
                    keys.push(key);
                }
            }
            Ok(Event::Text(t)) => {
                if let Some(key) = current.as_mut() {
                    let text = t
                        .decode()
                        .map_err(|e| format!("invalid text in <Key>: {e}"))?;
                    let unescaped = quick_xml::escape::unescape(&text)
                        .map_err(|e| format!("invalid escape in <Key>: {e}"))?;
                    key.push_str(&unescaped);
                }
            }
            Ok(Event::GeneralRef(r)) => {
                if let Some(key) = current.as_mut() {
                    let name = r.decode().map_err(|e| format!("invalid reference: {e}"))?;
                    let resolved = quick_xml::escape::resolve_predefined_entity(&name)
                        .ok_or_else(|| format!("unknown entity &{name};"))?;
                    key.push_str(resolved);
                }
            }
            Ok(_) => {}
        }
    }
    if !path.is_empty() {
        return Err("the XML body ends inside an element".into());
    }
    Ok(keys)
}

/// Fail mode: the keys (distinct, sorted) that do not exist.
async fn missing_keys(store: &Arc<dyn Store>, keys: &[String]) -> Result<Vec<String>> {
    let distinct: BTreeSet<String> = keys.iter().cloned().collect();
    let store = store.clone();
    let checks = stream::iter(distinct)
        .map(move |key| {
            let store = store.clone();
            async move { store.exists(&key).await.map(|found| (key, found)) }
        })
        .buffer_unordered(PRECHECK_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let mut missing = Vec::new();
    for check in checks {
        let (key, found) = check?;
        if !found {
            missing.push(key);
        }
    }
    missing.sort();
    Ok(missing)
}

/// The trailers a bundle ends with, as Tigris documents them.
const TRAILERS: &str = "x-tigris-bundle-count, x-tigris-bundle-bytes, x-tigris-bundle-skipped";

/// What a bundle delivered, for its trailers.
#[derive(Debug, Default)]
struct BundleCounts {
    count: AtomicU64,
    bytes: AtomicU64,
    skipped: AtomicU64,
}

impl BundleCounts {
    fn trailers(&self) -> hyper::HeaderMap {
        let mut map = hyper::HeaderMap::new();
        for (name, counter) in [
            ("x-tigris-bundle-count", &self.count),
            ("x-tigris-bundle-bytes", &self.bytes),
            ("x-tigris-bundle-skipped", &self.skipped),
        ] {
            map.insert(
                HeaderName::from_static(name),
                HeaderValue::from(counter.load(Ordering::Relaxed)),
            );
        }
        map
    }
}

struct TigrisAssemble {
    keys: Vec<String>,
    skipped: Vec<serde_json::Value>,
    fail_mode: bool,
    completion_order: bool,
    counts: Arc<BundleCounts>,
    /// [`Limits::max_bundle_bytes`].
    max_bytes: u64,
}

impl TigrisAssemble {
    fn skip(&mut self, entry: serde_json::Value) {
        self.counts.skipped.fetch_add(1, Ordering::Relaxed);
        self.skipped.push(entry);
    }
}

impl Assemble for TigrisAssemble {
    fn member(
        &mut self,
        index: usize,
        result: Result<Option<Bytes>>,
    ) -> std::result::Result<Option<Member>, String> {
        // Each index is answered once (the fetcher drops repeats): take the key, no copy.
        let key = std::mem::take(&mut self.keys[index]);
        match result {
            Ok(Some(data)) => {
                let bytes = self.counts.bytes.load(Ordering::Relaxed) + data.len() as u64;
                if bytes > self.max_bytes {
                    return Err(format!(
                        "the bundle passed the server's limit of {} bytes assembled at key \
                         {key:?}; the bundle is cut",
                        self.max_bytes
                    ));
                }
                self.counts.bytes.store(bytes, Ordering::Relaxed);
                self.counts.count.fetch_add(1, Ordering::Relaxed);
                Ok(Some(Member {
                    name: key,
                    data,
                    pax: Vec::new(),
                    index: self.completion_order.then_some(index),
                }))
            }
            Ok(None) if self.fail_mode => Err(format!(
                "key {key:?} disappeared after the fail-mode check; the bundle is cut"
            )),
            Ok(None) => {
                self.skip(serde_json::json!({ "key": key, "reason": "NoSuchKey" }));
                Ok(None)
            }
            Err(e) if self.fail_mode => Err(public_error(&e)),
            Err(e) => {
                let reason = match e {
                    Error::InvalidKey { .. } => "InvalidArgument",
                    _ => "InternalError",
                };
                self.skip(
                    serde_json::json!({ "key": key, "reason": reason, "message": public_error(&e) }),
                );
                Ok(None)
            }
        }
    }

    fn last(&mut self) -> Vec<Member> {
        if self.skipped.is_empty() {
            return Vec::new();
        }
        let skipped = std::mem::take(&mut self.skipped);
        let json = serde_json::json!({ "skipped": skipped }).to_string();
        vec![Member {
            name: ERRORS_MEMBER.to_string(),
            data: Bytes::from(json),
            pax: Vec::new(),
            index: None,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_json_and_xml() {
        let json = Bytes::from_static(br#"{"keys":["a","b/c"]}"#);
        assert_eq!(parse_keys(&json).unwrap(), vec!["a", "b/c"]);
        let xml = Bytes::from_static(
            b"<Bundle><Object><Key>a</Key></Object><Object><Key>x&amp;y</Key></Object></Bundle>",
        );
        assert_eq!(parse_keys(&xml).unwrap(), vec!["a", "x&y"]);
        let (code, message) = parse_keys(&Bytes::from_static(b"{\"keys\":[1]}")).unwrap_err();
        assert_eq!(code, "MalformedJSON");
        assert!(message.contains("expected"), "{message}");
        assert_eq!(
            parse_keys(&Bytes::from_static(b"<Other/>")).unwrap_err().0,
            "MalformedXML"
        );
    }

    /// Found by the `bundle_request` fuzz target: the XML parser's messages quoted the body's
    /// control characters as they were, which no XML error body may hold.
    #[test]
    fn xml_error_messages_are_printable() {
        for body in [
            "<\0\0Object>".as_bytes(),
            "<Bundle><Object><Key>&a\u{1b}\u{ffff}b;</Key></Object></Bundle>".as_bytes(),
            b"<Bundle><a\x01></b></Bundle>",
        ] {
            let (code, message) = parse_keys(body).unwrap_err();
            assert_eq!(code, "MalformedXML");
            assert!(
                !message.chars().any(|c| c.is_control() || c == '\u{ffff}'),
                "{message:?}"
            );
            assert!(message.contains("\\"), "{message:?}");
        }
    }

    #[test]
    fn request_parsed_with_the_handlers_errors_in_its_order() {
        let exists = |bucket: &str| bucket == "data";
        let limits = Limits {
            max_keys: 2,
            ..Limits::default()
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-tigris-bundle-compression",
            HeaderValue::from_static("brotli"),
        );
        let parse = |uri: &str, headers: &HeaderMap, body: &[u8]| {
            parse_bundle_request(&uri.parse().unwrap(), headers, body, &limits, &exists)
        };
        // The path, then the bucket, then the headers, then the body.
        let e = parse("/data/k?bundle", &headers, b"").unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "InvalidRequest")
        );
        let e = parse("/nobucket?bundle", &headers, b"").unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::NOT_FOUND, "NoSuchBucket"));
        let e = parse("/data?bundle", &headers, b"{").unwrap_err();
        assert_eq!(e.code, "InvalidArgument");
        assert!(e.message.contains("brotli"), "{}", e.message);
        headers.insert(
            "x-tigris-bundle-compression",
            HeaderValue::from_static("zstd"),
        );
        headers.insert(
            "x-tigris-bundle-on-error",
            HeaderValue::from_static(" fail"),
        );
        let e = parse("/data?bundle", &headers, br#"{"keys":["a","b","c"]}"#).unwrap_err();
        assert!(e.message.contains("at most 2"), "{}", e.message);
        let e = parse("/data?bundle", &headers, br#"{"keys":["a","a//b"]}"#).unwrap_err();
        assert_eq!(e.code, "InvalidArgument");
        let request = parse("/data/?bundle=", &headers, br#"{"keys":["a","a"]}"#).unwrap();
        assert_eq!(request.keys, ["a", "a"]);
        assert_eq!(
            request.head,
            BundleHead {
                bucket: "data".into(),
                compression: Compression::Zstd,
                fail_mode: true,
                completion_order: false,
            }
        );
    }
}
