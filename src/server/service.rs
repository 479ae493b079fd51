//! The HTTP side: early refusals, authentication, admission (429), routing. Connections are
//! accepted and bounded in time by [`crate::conn`].
//!
//! Every request goes through an `s3s` service, which verifies SigV4 signatures (headers,
//! presigned URLs and the payload hash) when credentials are configured. Bundle and GetBatch
//! requests are an `s3s` custom route ([`BundleRoute`]); plain `GET`/`HEAD` are the S3
//! operations of [`StoreS3`](super::s3::StoreS3).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::Extensions;
use hyper::{HeaderMap, Method, StatusCode, Uri};
use s3s::route::S3Route;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{Body, S3Request, S3Response, S3Result};
use tokio::sync::Semaphore;

use super::{Limits, ServerStats, valid_bucket_name};
use crate::{Error, Store};

/// Asks for completion-order members (request header) and confirms it (response header).
pub const ORDER_HEADER: &str = "x-getmany-order";

/// State shared by every connection of a server.
pub(crate) struct Shared {
    pub buckets: BTreeMap<String, Arc<dyn Store>>,
    pub has_keys: bool,
    pub token: Option<String>,
    pub in_flight: Arc<Semaphore>,
    pub limits: Limits,
    pub stats: Arc<ServerStats>,
    pub next_request_id: AtomicU64,
    /// Where GetBatch requests are redirected, if anywhere.
    pub redirect_getbatch: Option<String>,
}

impl Shared {
    pub fn request_id(&self) -> String {
        format!(
            "{:016x}",
            self.next_request_id.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// What kind of request this is, from its method and URI alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Tigris `POST /{bucket}?bundle`.
    Bundle,
    /// AIStore `GET /v1/ml/moss[/{bucket}]`.
    Moss,
    /// Anything else (plain S3).
    Other,
}

pub(crate) const MOSS_PATH: &str = "/v1/ml/moss";

pub(crate) fn classify(method: &Method, uri: &Uri) -> Kind {
    let path = uri.path();
    if path == MOSS_PATH || path.starts_with("/v1/ml/moss/") {
        return Kind::Moss;
    }
    let is_bundle_query = uri.query().is_some_and(|q| {
        q.split('&')
            .any(|pair| pair == "bundle" || pair.starts_with("bundle="))
    });
    if *method == Method::POST && is_bundle_query {
        Kind::Bundle
    } else {
        Kind::Other
    }
}

/// Marks a request whose Bearer token was checked.
#[derive(Clone, Copy)]
struct BearerOk;

/// Accepts only the server's bucket names (AIStore's `/v1/...` parses as bucket `v1`).
struct BucketNames;

impl s3s::validation::NameValidation for BucketNames {
    fn validate_bucket_name(&self, name: &str) -> bool {
        valid_bucket_name(name)
    }
}

pub(crate) fn build_s3_service(
    shared: Arc<Shared>,
    credentials: Option<(String, String)>,
) -> S3Service {
    let mut builder = S3ServiceBuilder::new(super::s3::StoreS3 {
        shared: shared.clone(),
    });
    if let Some((access, secret)) = credentials {
        builder.set_auth(s3s::auth::SimpleAuth::from_single(access, secret));
    }
    builder.set_route(BundleRoute { shared });
    builder.set_validation(BucketNames);
    builder.build()
}

/// The server's request handler: checks that cost nothing, Bearer tokens, then `s3s`
/// (signatures, routing), under the request time limit.
pub(crate) async fn handle(
    req: hyper::Request<Incoming>,
    service: S3Service,
    shared: Arc<Shared>,
) -> Result<hyper::Response<Body>, s3s::HttpError> {
    shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    let kind = classify(req.method(), req.uri());
    // Refusals that need no body and no signature check, so an unauthenticated client
    // cannot make the server read, buffer or wait for anything.
    if let Some(refusal) = refuse_early(req.uri(), req.headers(), kind, &shared) {
        return Ok(refusal);
    }
    let mut req = req.map(Body::from);

    // Authentication that s3s does not do: the Bearer token of the AIStore routes.
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    if let Some(given) = bearer {
        let valid = kind == Kind::Moss
            && shared
                .token
                .as_deref()
                .is_some_and(|token| constant_time_eq(token.as_bytes(), given.trim().as_bytes()));
        if !valid {
            let message = if kind == Kind::Moss {
                "invalid bearer token"
            } else {
                "a bearer token is accepted only on the AIStore routes (/v1/ml/moss)"
            };
            return Ok(error_response(
                kind,
                StatusCode::UNAUTHORIZED,
                "AccessDenied",
                message,
                &shared,
            ));
        }
        req.headers_mut().remove(header::AUTHORIZATION);
        req.extensions_mut().insert(BearerOk);
    } else if !shared.has_keys {
        // Without keys s3s cannot check a signature; one made with any keys is ignored.
        req.headers_mut().remove(header::AUTHORIZATION);
    }

    // The time limit up to the response headers; the connection core bounds the body.
    match tokio::time::timeout(shared.limits.request_timeout, service.call(req)).await {
        Ok(result) => result,
        Err(_) => Ok(error_response(
            kind,
            StatusCode::SERVICE_UNAVAILABLE,
            "RequestTimeout",
            "the request took longer than the server's time limit",
            &shared,
        )),
    }
}

/// A refusal decided from the request line and headers alone, before `s3s` reads a body or
/// a bundle takes a permit:
///
/// * `multipart/form-data` (S3's browser POST upload): the server is read-only, and `s3s`
///   would read the whole form before checking its signature.
/// * Signature Version 2 (`Authorization: AWS ...`, `?Signature=`, `?AWSAccessKeyId=`): it
///   covers neither the body nor, here, a bounded time, so a captured request would replay
///   forever.
/// * With authentication required, a request that carries no credentials at all; on the
///   AIStore routes also an `Authorization` header that is neither a Bearer token nor SigV4
///   (401, as AIStore answers).
fn refuse_early(
    uri: &Uri,
    headers: &HeaderMap,
    kind: Kind,
    shared: &Shared,
) -> Option<hyper::Response<Body>> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    if is_form {
        return Some(error_response(
            kind,
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "multipart/form-data requests (browser POST uploads) are not supported by this server",
            shared,
        ));
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("").trim());
    let query_has = |name: &str| {
        uri.query().is_some_and(|q| {
            q.split('&')
                .any(|pair| pair.split('=').next() == Some(name))
        })
    };
    let sig_v2 = authorization.is_some_and(|a| a.starts_with("AWS ") && !a.starts_with("AWS4"))
        || query_has("Signature")
        || query_has("AWSAccessKeyId");
    if sig_v2 && shared.has_keys {
        return Some(error_response(
            kind,
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "AWS Signature Version 2 is not accepted: sign requests with Signature Version 4",
            shared,
        ));
    }
    let needs_auth = shared.has_keys || (kind == Kind::Moss && shared.token.is_some());
    if !needs_auth {
        return None;
    }
    let presigned = query_has("X-Amz-Signature");
    match authorization {
        None if !presigned => Some(unauthenticated(kind, shared)),
        Some(a)
            if kind == Kind::Moss
                && !a.starts_with("Bearer ")
                && !a.starts_with("AWS4-HMAC-SHA256 ") =>
        {
            Some(error_response(
                kind,
                StatusCode::UNAUTHORIZED,
                "AccessDenied",
                "malformed Authorization header: expected \"Bearer <token>\" or an AWS Signature Version 4",
                shared,
            ))
        }
        _ => None,
    }
}

/// The answer to a request without credentials where they are required: 401 on the AIStore
/// routes (as AIStore), 403 `AccessDenied` elsewhere (as S3).
fn unauthenticated(kind: Kind, shared: &Shared) -> hyper::Response<Body> {
    if kind == Kind::Moss {
        error_response(
            kind,
            StatusCode::UNAUTHORIZED,
            "AccessDenied",
            "this server needs a bearer token or an AWS Signature Version 4",
            shared,
        )
    } else {
        error_response(
            kind,
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "this server needs an AWS Signature Version 4",
            shared,
        )
    }
}

/// What a client is told about a failed read: the key and the kind of failure, never a
/// backend's own message, which may name paths of the server's disk (object_store's local
/// file system does). The whole error goes to the log.
pub(crate) fn public_error(error: &Error) -> String {
    match error {
        Error::Backend { key, .. } => {
            tracing::warn!(%error, "a read failed in the server's backend");
            format!("reading {key:?} failed in the server's backend")
        }
        other => other.to_string(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An error answer in the protocol's own format: JSON for AIStore, S3 XML otherwise.
pub(crate) fn error_response(
    kind: Kind,
    status: StatusCode,
    code: &str,
    message: &str,
    shared: &Shared,
) -> hyper::Response<Body> {
    let request_id = shared.request_id();
    let (content_type, body) = match kind {
        Kind::Moss => ("application/json", json_error(status, message)),
        _ => (
            "application/xml",
            xml_error(code, message, &request_id, None),
        ),
    };
    let mut response = hyper::Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub(crate) fn json_error(status: StatusCode, message: &str) -> String {
    serde_json::json!({ "message": message, "status": status.as_u16() }).to_string()
}

/// `<Error><Code/><Message/>[extra]<RequestId/></Error>`.
pub(crate) fn xml_error(
    code: &str,
    message: &str,
    request_id: &str,
    extra: Option<&str>,
) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message>{}<RequestId>{}</RequestId></Error>",
        xml_escape(code),
        xml_escape(message),
        extra.unwrap_or(""),
        xml_escape(request_id)
    )
}

pub(crate) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A response with a body, status and content type, for a route.
pub(crate) fn route_response(
    status: StatusCode,
    content_type: &'static str,
    body: Body,
) -> S3Response<Body> {
    let mut response = S3Response::with_status(body, status);
    response
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The bundle and GetBatch routes.
struct BundleRoute {
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl S3Route for BundleRoute {
    fn is_match(
        &self,
        method: &Method,
        uri: &Uri,
        _headers: &HeaderMap,
        _extensions: &mut Extensions,
    ) -> bool {
        classify(method, uri) != Kind::Other
    }

    /// Access is decided in `call`, so that a refusal is answered in the protocol's format.
    async fn check_access(&self, _req: &mut S3Request<Body>) -> S3Result<()> {
        Ok(())
    }

    async fn call(&self, req: S3Request<Body>) -> S3Result<S3Response<Body>> {
        let kind = classify(&req.method, &req.uri);
        let shared = &self.shared;
        let signed = req.credentials.is_some();
        let bearer = req.extensions.get::<BearerOk>().is_some();
        let allowed = match kind {
            Kind::Moss if shared.has_keys || shared.token.is_some() => signed || bearer,
            _ if shared.has_keys => signed,
            _ => true,
        };
        if !allowed {
            return Ok(to_route_response(unauthenticated(kind, shared)));
        }
        if kind == Kind::Moss
            && let Some(base) = &shared.redirect_getbatch
        {
            let target = match req.uri.query() {
                Some(query) => format!("{base}{}?{query}", req.uri.path()),
                None => format!("{base}{}", req.uri.path()),
            };
            let mut response =
                S3Response::with_status(Body::empty(), StatusCode::TEMPORARY_REDIRECT);
            if let Ok(location) = HeaderValue::from_str(&target) {
                response.headers.insert(header::LOCATION, location);
            }
            return Ok(response);
        }
        // Admission, only once authenticated: a bounded number of bundles at once; the rest
        // are told to come back.
        let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
            shared.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            let mut response = error_response(
                kind,
                StatusCode::TOO_MANY_REQUESTS,
                "SlowDown",
                "too many bundle requests in flight; retry later",
                shared,
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(to_route_response(response));
        };
        shared.stats.bundles.fetch_add(1, Ordering::Relaxed);
        let permit = Some(permit);
        let deadline = tokio::time::Instant::now() + shared.limits.request_timeout;
        let context = super::body::BodyContext {
            permit,
            deadline,
            stats: shared.stats.fetch.clone(),
        };
        match kind {
            Kind::Bundle => super::tigris::handle(req, shared, context).await,
            _ => super::aistore::handle(req, shared, context).await,
        }
    }
}

pub(crate) fn to_route_response(response: hyper::Response<Body>) -> S3Response<Body> {
    let (parts, body) = response.into_parts();
    let mut out = S3Response::with_status(body, parts.status);
    out.headers = parts.headers;
    out
}

/// Reads a request body of at most `limit` bytes (a declared `Content-Length` over the limit
/// is refused before reading).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: &mut Body,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = futures::StreamExt::next(body).await {
        let chunk = chunk.map_err(|e| BodyError::Failed(e.to_string()))?;
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Why a request body could not be read.
pub(crate) enum BodyError {
    TooLarge,
    Failed(String),
}
