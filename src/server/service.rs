//! The HTTP side: accepting connections, admission (429), authentication, routing.
//!
//! Every request goes through an `s3s` service, which verifies SigV4 signatures (headers,
//! presigned URLs and the payload hash) when credentials are configured. Bundle and GetBatch
//! requests are an `s3s` custom route ([`BundleRoute`]); plain `GET`/`HEAD` are the S3
//! operations of [`StoreS3`](super::s3::StoreS3).

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{Either, select};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::Extensions;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::route::S3Route;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{Body, S3Request, S3Response, S3Result};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::{Limits, ServerStats, valid_bucket_name};
use crate::Store;

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

/// The admission permit of a bundle, handed from the HTTP layer to the route through the
/// request's extensions (which must be `Clone`).
#[derive(Clone)]
pub(crate) struct Admission(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl Admission {
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
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

pub(crate) async fn accept_loop(
    listener: TcpListener,
    service: S3Service,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let mut builder = ConnBuilder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header_read_timeout);
    let builder = Arc::new(builder);
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _peer)) => socket,
            // Out of file descriptors, say: back off instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        // Without it every small response waits for the peer's delayed ACK (~40 ms).
        if socket.set_nodelay(true).is_err() {
            continue;
        }
        let service = service.clone();
        let shared = shared.clone();
        let handler = service_fn(move |req| handle(req, service.clone(), shared.clone()));
        let builder = builder.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut conn = pin!(builder.serve_connection(TokioIo::new(socket), handler));
            let stopping = matches!(
                select(conn.as_mut(), pin!(shutdown.wait_for(|&stop| stop))).await,
                Either::Right(_)
            );
            if stopping {
                conn.as_mut().graceful_shutdown();
                // A connection error concerns only this connection's peer.
                let _ = conn.await;
            }
        });
    }
}

async fn handle(
    req: hyper::Request<Incoming>,
    service: S3Service,
    shared: Arc<Shared>,
) -> Result<hyper::Response<Body>, s3s::HttpError> {
    shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    let kind = classify(req.method(), req.uri());
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

    // Admission: a bounded number of bundles at once; the rest are told to come back.
    if kind != Kind::Other {
        match shared.in_flight.clone().try_acquire_owned() {
            Ok(permit) => {
                shared.stats.bundles.fetch_add(1, Ordering::Relaxed);
                req.extensions_mut()
                    .insert(Admission(Arc::new(Mutex::new(Some(permit)))));
            }
            Err(_) => {
                shared.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                let mut response = error_response(
                    kind,
                    StatusCode::TOO_MANY_REQUESTS,
                    "SlowDown",
                    "too many bundle requests in flight; retry later",
                    &shared,
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return Ok(response);
            }
        }
    }

    // The time limit up to the response headers; the body enforces the rest of it.
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
        let permit = req.extensions.get::<Admission>().and_then(Admission::take);
        if !allowed {
            let message = if kind == Kind::Moss {
                "this server needs a SigV4 signature or a bearer token"
            } else {
                "this server needs a SigV4 signature"
            };
            return Ok(to_route_response(error_response(
                kind,
                StatusCode::FORBIDDEN,
                "AccessDenied",
                message,
                shared,
            )));
        }
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
