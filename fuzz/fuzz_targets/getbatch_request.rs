//! Fuzzes the AIStore GetBatch request parser (`GET /v1/ml/moss[/{bucket}]`): method, path,
//! query, headers and the JSON body, as the server's handler sees them. Beyond "no panic": a
//! parsed request holds 1 to `max_entries` entries, each with a valid object name (and
//! archpath), a served bucket, a well-formed range that says what `start`/`length` say, base64
//! `opaque`, and the member name the protocol gives; the output format and flags are the body's;
//! an error is a 400, 404 (unknown bucket) or 405 (method) with a plain-text message.
#![no_main]

mod common;

use base64::Engine;
use getmany::server::fuzzing::{
    ByteRange, Compression, GetBatchHead, Method, Output, StatusCode, invalid_key_reason,
    parse_getbatch_request,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn is_base64(value: &str) -> bool {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .any(|engine| engine.decode(value).is_ok())
}

fn non_empty(value: &Option<Value>) -> Option<&str> {
    value
        .as_ref()
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The body as JSON, each field the server reads as a plain value. (Other fields are skipped,
/// as the server skips them: serde_json skips without checking everything a value would need,
/// e.g. UTF-8, a number out of `f64`'s range or a lone surrogate escape.)
#[derive(serde::Deserialize)]
struct Shadow {
    #[serde(rename = "in", default)]
    entries: Vec<ShadowIn>,
    mime: Option<Value>,
    coer: Option<Value>,
    onob: Option<Value>,
    strm: Option<Value>,
}

#[derive(serde::Deserialize)]
struct ShadowIn {
    objname: Value,
    bucket: Option<Value>,
    provider: Option<Value>,
    opaque: Option<Value>,
    archpath: Option<Value>,
    start: Option<Value>,
    length: Option<Value>,
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = common::split(data) else {
        return;
    };
    let parsed = parse_getbatch_request(
        &input.method,
        &input.uri,
        &input.headers,
        input.body,
        &input.limits,
        &common::bucket_exists,
    );
    // The two steps the handler runs, with the body read in between, give the same answer.
    let steps = GetBatchHead::parse(&input.method, &input.uri, &input.headers)
        .and_then(|head| head.parse_body(input.body, &input.limits, &common::bucket_exists));
    assert_eq!(parsed, steps);
    match parsed {
        Ok(request) => {
            assert!(input.method == Method::GET || input.method == Method::POST);
            if let Some(bucket) = &request.head.default_bucket {
                assert!(!bucket.is_empty() && !bucket.contains('/'), "{bucket:?}");
            }
            let entries = &request.entries;
            assert!(
                (1..=input.limits.max_entries).contains(&entries.len()),
                "{} entries, at most {}",
                entries.len(),
                input.limits.max_entries
            );
            for entry in entries {
                assert_eq!(invalid_key_reason(&entry.objname), None, "{entry:?}");
                assert!(common::bucket_exists(&entry.bucket), "{entry:?}");
                assert!(!entry.provider.is_empty());
                if let Some(archpath) = &entry.archpath {
                    assert!(!archpath.is_empty() && !archpath.starts_with('/'));
                    assert_eq!(invalid_key_reason(archpath), None, "{entry:?}");
                }
                if let Some(opaque) = &entry.opaque {
                    assert!(!opaque.is_empty() && is_base64(opaque), "{entry:?}");
                }
                match &entry.range {
                    None => {}
                    Some(ByteRange::Bounded(r)) => assert!(r.start < r.end, "{entry:?}"),
                    Some(ByteRange::Offset(start)) => assert!(*start > 0, "{entry:?}"),
                    Some(ByteRange::Suffix(_)) => panic!("a suffix range: {entry:?}"),
                }
                if let Some(range) = &entry.range {
                    assert_eq!(range.invalid_reason(), None, "{entry:?}");
                }
                let mut name = if request.onob {
                    entry.objname.clone()
                } else {
                    format!("{}/{}", entry.bucket, entry.objname)
                };
                if let Some(archpath) = &entry.archpath {
                    name = format!("{name}/{archpath}");
                }
                assert_eq!(entry.name, name);
            }
            // What the body says.
            let body: Shadow = serde_json::from_slice(input.body).expect("a parsed body is JSON");
            let listed = &body.entries;
            assert_eq!(listed.len(), entries.len());
            let flag =
                |value: &Option<Value>| value.as_ref().and_then(Value::as_bool) == Some(true);
            assert_eq!(request.coer, flag(&body.coer));
            assert_eq!(request.onob, flag(&body.onob));
            assert_eq!(request.streaming, flag(&body.strm));
            let output = match body.mime.as_ref().and_then(Value::as_str).unwrap_or("") {
                "" | ".tar" | "tar" => Output::Tar(Compression::None),
                ".tgz" | ".tar.gz" | "tgz" | "tar.gz" => Output::Tar(Compression::Gzip),
                ".zip" | "zip" => Output::Zip,
                ".tar.lz4" | "tar.lz4" => Output::Tar(Compression::Lz4),
                other => panic!("accepted mime {other:?}"),
            };
            assert_eq!(request.output, output);
            for (entry, given) in entries.iter().zip(listed) {
                assert_eq!(given.objname.as_str(), Some(entry.objname.as_str()));
                let bucket = non_empty(&given.bucket)
                    .or(request.head.default_bucket.as_deref())
                    .expect("a bucket");
                assert_eq!(entry.bucket, bucket);
                assert_eq!(entry.provider, non_empty(&given.provider).unwrap_or("ais"));
                assert_eq!(
                    entry.archpath.as_deref(),
                    non_empty(&given.archpath).map(|a| a.trim_start_matches('/'))
                );
                assert_eq!(entry.opaque.as_deref(), non_empty(&given.opaque));
                // The range says what start and length say.
                let number = |v: &Option<Value>| v.as_ref().map_or(0, |v| v.as_i64().unwrap());
                let (start, length) = (number(&given.start), number(&given.length));
                match &entry.range {
                    None => assert!(start == 0 && (length == 0 || length == -1)),
                    Some(ByteRange::Bounded(r)) => {
                        assert_eq!((r.start, r.end - r.start), (start as u64, length as u64))
                    }
                    Some(ByteRange::Offset(s)) => assert_eq!((*s, length), (start as u64, -1)),
                    Some(ByteRange::Suffix(_)) => unreachable!(),
                }
            }
        }
        Err(e) => {
            assert_eq!(e.code, "", "an AIStore error has no S3 code");
            match e.status {
                StatusCode::METHOD_NOT_ALLOWED => {
                    assert!(input.method != Method::GET && input.method != Method::POST)
                }
                StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND => {}
                other => panic!("status {other}: {e:?}"),
            }
            common::check_message(&e.message, data);
        }
    }
});
