//! Fuzzes the Tigris bundle request parser (`POST /{bucket}?bundle`): path, query, headers
//! and a JSON or XML body, as the server's handler sees them. Beyond "no panic": a parsed
//! request holds 1 to `max_keys` valid keys, in a served bucket, with the options the headers
//! name (and the keys a JSON body lists); an error is a 400 or a `NoSuchBucket` 404 with a
//! known code and a plain-text message.
#![no_main]

mod common;

use getmany::server::fuzzing::{
    BundleHead, Compression, HeaderMap, Method, StatusCode, invalid_key_reason, parse_bundle_keys,
    parse_bundle_request,
};
use libfuzzer_sys::fuzz_target;

const CODES: [&str; 5] = [
    "InvalidRequest",
    "InvalidArgument",
    "MalformedJSON",
    "MalformedXML",
    "NoSuchBucket",
];

/// The body as JSON, the `keys` field as a plain value. (Other fields are skipped, as the
/// server skips them: serde_json skips without checking everything a value would need, e.g. a
/// number out of `f64`'s range or a lone surrogate escape.)
#[derive(serde::Deserialize)]
struct Shadow {
    keys: serde_json::Value,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fuzz_target!(|data: &[u8]| {
    // Only a POST is routed to the bundle handler.
    let Some(input) = common::split(data).filter(|input| input.method == Method::POST) else {
        return;
    };
    let parsed = parse_bundle_request(
        &input.uri,
        &input.headers,
        input.body,
        &input.limits,
        &common::bucket_exists,
    );
    // The two steps the handler runs, with the body read in between, give the same answer.
    let steps = BundleHead::parse(&input.uri, &input.headers, &common::bucket_exists)
        .and_then(|head| parse_bundle_keys(input.body, &input.limits).map(|keys| (head, keys)));
    match (&parsed, &steps) {
        (Ok(request), Ok((head, keys))) => {
            assert_eq!(&request.head, head);
            assert_eq!(&request.keys, keys);
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("one call: {a:?}, two steps: {b:?}"),
    }
    match parsed {
        Ok(request) => {
            let head = &request.head;
            assert!(!head.bucket.is_empty() && !head.bucket.contains('/'));
            assert!(common::bucket_exists(&head.bucket), "{:?}", head.bucket);
            assert_eq!(
                input.uri.path().trim_matches('/'),
                head.bucket,
                "the bucket is the path"
            );
            let compression = match header(&input.headers, "x-tigris-bundle-compression") {
                None | Some("") | Some("none") => Compression::None,
                Some("gzip") => Compression::Gzip,
                Some("zstd") => Compression::Zstd,
                Some(other) => panic!("accepted compression {other:?}"),
            };
            assert_eq!(head.compression, compression);
            assert_eq!(
                head.fail_mode,
                header(&input.headers, "x-tigris-bundle-on-error") == Some("fail")
            );
            assert!(matches!(
                header(&input.headers, "x-tigris-bundle-format"),
                None | Some("tar")
            ));
            assert_eq!(
                head.completion_order,
                header(&input.headers, "x-getmany-order") == Some("completion")
            );
            let keys = &request.keys;
            assert!(
                (1..=input.limits.max_keys).contains(&keys.len()),
                "{} keys, at most {}",
                keys.len(),
                input.limits.max_keys
            );
            for key in keys {
                assert_eq!(invalid_key_reason(key), None, "accepted key {key:?}");
            }
            // A JSON body: the keys are exactly its "keys" array. (The parser skips any
            // leading Unicode white space.)
            let text = std::str::from_utf8(input.body).expect("a parsed body is UTF-8");
            let text = text.trim_start();
            if !text.starts_with('<') {
                let shadow: Shadow = serde_json::from_str(text).expect("a parsed body is JSON");
                let listed: Vec<&str> = shadow
                    .keys
                    .as_array()
                    .expect("a \"keys\" array")
                    .iter()
                    .map(|k| k.as_str().expect("string keys"))
                    .collect();
                assert_eq!(listed, *keys);
            }
        }
        Err(e) => {
            assert!(CODES.contains(&e.code), "code {:?}", e.code);
            if e.status == StatusCode::NOT_FOUND {
                assert_eq!(e.code, "NoSuchBucket");
            } else {
                assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
                assert_ne!(e.code, "NoSuchBucket");
            }
            common::check_message(&e.message, data);
        }
    }
});
