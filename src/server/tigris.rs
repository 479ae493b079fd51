//! The Tigris bundle protocol: `POST /{bucket}?bundle`.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use hyper::StatusCode;
use hyper::header::HeaderValue;
use s3s::{Body, S3Request, S3Response, S3Result};

use super::archive::{ArchiveWriter, Compression, Member};
use super::body::{Assemble, BodyContext, archive_stream, http_body};
use super::fetch::{Fetch, Fetcher};
use super::invalid_key_reason;
use super::service::{
    BodyError, Kind, ORDER_HEADER, Shared, error_response, public_error, read_body, route_response,
    to_route_response, xml_error, xml_escape,
};
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

fn header<'a>(req: &'a S3Request<Body>, name: &str) -> Option<&'a str> {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

pub(crate) async fn handle(
    mut req: S3Request<Body>,
    shared: &Shared,
    context: BodyContext,
) -> S3Result<S3Response<Body>> {
    let path = req.uri.path().trim_start_matches('/');
    let bucket = path.strip_suffix('/').unwrap_or(path).to_owned();
    if bucket.is_empty() || bucket.contains('/') {
        return Ok(bad_request(
            shared,
            "InvalidRequest",
            "a bundle is requested with POST /{bucket}?bundle (no key in the path)",
        ));
    }
    let Some(store) = shared.buckets.get(&bucket).cloned() else {
        return Ok(error(
            shared,
            StatusCode::NOT_FOUND,
            "NoSuchBucket",
            &format!("no bucket named {bucket:?} on this server"),
        ));
    };
    match header(&req, "x-tigris-bundle-format") {
        None | Some("tar") => {}
        Some(other) => {
            return Ok(bad_request(
                shared,
                "InvalidArgument",
                &format!("x-tigris-bundle-format {other:?} is not supported; use \"tar\""),
            ));
        }
    }
    let compression = match header(&req, "x-tigris-bundle-compression") {
        None | Some("") | Some("none") => Compression::None,
        Some("gzip") => Compression::Gzip,
        Some("zstd") => Compression::Zstd,
        Some(other) => {
            return Ok(bad_request(
                shared,
                "InvalidArgument",
                &format!(
                    "x-tigris-bundle-compression {other:?} is not supported; use none, gzip or zstd"
                ),
            ));
        }
    };
    let fail_mode = match header(&req, "x-tigris-bundle-on-error") {
        None | Some("") | Some("skip") => false,
        Some("fail") => true,
        Some(other) => {
            return Ok(bad_request(
                shared,
                "InvalidArgument",
                &format!("x-tigris-bundle-on-error {other:?} is not supported; use skip or fail"),
            ));
        }
    };
    let completion_order = header(&req, ORDER_HEADER) == Some("completion");

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
    let keys = match parse_keys(&body) {
        Ok(keys) => keys,
        Err((code, message)) => return Ok(bad_request(shared, code, &message)),
    };
    if keys.is_empty() {
        return Ok(bad_request(
            shared,
            "InvalidRequest",
            "the bundle lists no keys",
        ));
    }
    if keys.len() > shared.limits.max_keys {
        return Ok(bad_request(
            shared,
            "InvalidRequest",
            &format!(
                "the bundle lists {} keys; at most {} are allowed per request",
                keys.len(),
                shared.limits.max_keys
            ),
        ));
    }
    if let Some((key, reason)) = keys
        .iter()
        .find_map(|k| invalid_key_reason(k).map(|r| (k, r)))
    {
        return Ok(bad_request(
            shared,
            "InvalidArgument",
            &format!("invalid key {key:?}: {reason}"),
        ));
    }

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
    let assemble = TigrisAssemble {
        keys,
        skipped: Vec::new(),
        fail_mode,
        completion_order,
    };
    let archive = archive_stream(answers, ArchiveWriter::tar(), assemble, context);
    let body = http_body(archive, compression)
        .map_err(|e| s3s::S3Error::with_message(s3s::S3ErrorCode::InternalError, e.to_string()))?;
    let content_type = match compression {
        Compression::None => "application/x-tar",
        Compression::Gzip => "application/gzip",
        Compression::Zstd => "application/zstd",
    };
    let mut response = route_response(StatusCode::OK, content_type, body);
    if completion_order {
        response
            .headers
            .insert(ORDER_HEADER, HeaderValue::from_static("completion"));
    }
    Ok(response)
}

/// The keys of a bundle request: JSON `{"keys":[...]}` or XML
/// `<Bundle><Object><Key>..</Key></Object>..</Bundle>`.
fn parse_keys(body: &Bytes) -> std::result::Result<Vec<String>, (&'static str, String)> {
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
        return parse_xml_keys(trimmed).map_err(|why| ("MalformedXML", why));
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

struct TigrisAssemble {
    keys: Vec<String>,
    skipped: Vec<serde_json::Value>,
    fail_mode: bool,
    completion_order: bool,
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
            Ok(Some(data)) => Ok(Some(Member {
                name: key,
                data,
                pax: Vec::new(),
                index: self.completion_order.then_some(index),
            })),
            Ok(None) if self.fail_mode => Err(format!(
                "key {key:?} disappeared after the fail-mode check; the bundle is cut"
            )),
            Ok(None) => {
                self.skipped
                    .push(serde_json::json!({ "key": key, "reason": "NoSuchKey" }));
                Ok(None)
            }
            Err(e) if self.fail_mode => Err(public_error(&e)),
            Err(e) => {
                let reason = match e {
                    Error::InvalidKey { .. } => "InvalidArgument",
                    _ => "InternalError",
                };
                self.skipped.push(
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
}
