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

fn non_empty(value: &Value) -> Option<&str> {
    value.as_str().filter(|s| !s.is_empty())
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
            // serde_json does not check the UTF-8 of what it skips (the value of a field the
            // server ignores), so the parser accepts such a body: read it with those bytes
            // replaced.
            let text = String::from_utf8_lossy(input.body);
            let body: Value = serde_json::from_str(&text).expect("a parsed body is JSON");
            let listed = body["in"].as_array().expect("an \"in\" array");
            assert_eq!(listed.len(), entries.len());
            let flag = |name: &str| body[name].as_bool().unwrap_or(false);
            assert_eq!(request.coer, flag("coer"));
            assert_eq!(request.onob, flag("onob"));
            assert_eq!(request.streaming, flag("strm"));
            let output = match body["mime"].as_str().unwrap_or("") {
                "" | ".tar" | "tar" => Output::Tar(Compression::None),
                ".tgz" | ".tar.gz" | "tgz" | "tar.gz" => Output::Tar(Compression::Gzip),
                ".zip" | "zip" => Output::Zip,
                ".tar.lz4" | "tar.lz4" => Output::Tar(Compression::Lz4),
                other => panic!("accepted mime {other:?}"),
            };
            assert_eq!(request.output, output);
            for (entry, given) in entries.iter().zip(listed) {
                assert_eq!(invalid_key_reason(&entry.objname), None, "{entry:?}");
                assert_eq!(given["objname"].as_str(), Some(entry.objname.as_str()));
                assert!(common::bucket_exists(&entry.bucket), "{entry:?}");
                let bucket = non_empty(&given["bucket"])
                    .or(request.head.default_bucket.as_deref())
                    .expect("a bucket");
                assert_eq!(entry.bucket, bucket);
                assert_eq!(
                    entry.provider,
                    non_empty(&given["provider"]).unwrap_or("ais")
                );
                if let Some(archpath) = &entry.archpath {
                    assert!(!archpath.is_empty() && !archpath.starts_with('/'));
                    assert_eq!(invalid_key_reason(archpath), None, "{entry:?}");
                }
                assert_eq!(
                    entry.archpath.as_deref(),
                    non_empty(&given["archpath"]).map(|a| a.trim_start_matches('/'))
                );
                if let Some(opaque) = &entry.opaque {
                    assert!(!opaque.is_empty() && is_base64(opaque), "{entry:?}");
                }
                assert_eq!(entry.opaque.as_deref(), non_empty(&given["opaque"]));
                // The range says what start and length say.
                let start = given["start"].as_i64().unwrap_or(0);
                let length = given["length"].as_i64().unwrap_or(0);
                match &entry.range {
                    None => assert!(start == 0 && (length == 0 || length == -1)),
                    Some(range) => {
                        assert_eq!(range.invalid_reason(), None, "{entry:?}");
                        match range {
                            ByteRange::Bounded(r) => {
                                assert!(r.start < r.end);
                                assert_eq!(
                                    (r.start, r.end - r.start),
                                    (start as u64, length as u64)
                                );
                            }
                            ByteRange::Offset(s) => {
                                assert!(*s > 0);
                                assert_eq!((*s, length), (start as u64, -1));
                            }
                            ByteRange::Suffix(_) => panic!("a suffix range: {entry:?}"),
                        }
                    }
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
