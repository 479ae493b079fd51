//! The bundle server over real backends (object_store's LocalFileSystem and InMemory), driven
//! with raw HTTP: wire formats of both protocols, streaming and its memory bound, limits,
//! security and bad input.

#![cfg(all(feature = "server", feature = "bundle"))]

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use getmany::server::{BundleServer, Limits, ServerError, Window};
use getmany::testing::{FaultInjector, FaultObjectStore};
use getmany::wrap::Metrics;
use getmany::{BundleStore, ObjectStoreStore, Request, Store};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// A bucket directory `data` under a temp root, holding `files`.
fn root_with(files: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (key, data) in files {
        let path = root.path().join("data").join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    std::fs::create_dir_all(root.path().join("data")).unwrap();
    root
}

fn local_store(root: &Path) -> Arc<dyn ObjectStore> {
    Arc::new(LocalFileSystem::new_with_prefix(root.join("data")).unwrap())
}

async fn serve(store: Arc<dyn Store>, limits: Limits) -> BundleServer {
    BundleServer::builder()
        .bucket("data", store)
        .limits(limits)
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap()
}

async fn tigris(
    server: &BundleServer,
    bucket: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = client()
        .post(format!("{}/{bucket}?bundle", server.url()))
        .header("x-tigris-bundle-format", "tar")
        .body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.unwrap()
}

async fn moss(server: &BundleServer, path: &str, body: serde_json::Value) -> reqwest::Response {
    client()
        .get(format!("{}/v1/ml/moss{path}", server.url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// A tar member: (name, bytes, PAX records).
type TarMember = (String, Vec<u8>, Vec<(String, String)>);

/// Every member of a tar body.
fn tar_members(body: &[u8]) -> Vec<TarMember> {
    let mut archive = tar::Archive::new(body);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let pax: Vec<(String, String)> = entry
            .pax_extensions()
            .unwrap()
            .into_iter()
            .flatten()
            .map(|e| {
                let e = e.unwrap();
                (e.key().unwrap().to_string(), e.value().unwrap().to_string())
            })
            .collect();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push((name, data, pax));
    }
    out
}

fn names(members: &[TarMember]) -> Vec<&str> {
    members.iter().map(|m| m.0.as_str()).collect()
}

fn abc_root() -> tempfile::TempDir {
    root_with(&[
        ("a", b"alpha".to_vec()),
        ("b/c", b"bravo-charlie".to_vec()),
        ("big", vec![9u8; 100_000]),
        ("empty", Vec::new()),
    ])
}

#[tokio::test]
async fn tigris_skip_mode_lists_missing_keys_last() {
    let root = abc_root();
    let server = serve(
        Arc::new(ObjectStoreStore::new(local_store(root.path()))),
        Limits::default(),
    )
    .await;
    let response = tigris(
        &server,
        "data",
        r#"{"keys":["b/c","nope","a","a","empty"]}"#,
        &[],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-tar");
    assert!(response.headers().get("content-encoding").is_none());
    let members = tar_members(&response.bytes().await.unwrap());
    assert_eq!(
        names(&members),
        vec!["b/c", "a", "a", "empty", "__bundle_errors.json"]
    );
    assert_eq!(members[0].1, b"bravo-charlie");
    let errors: serde_json::Value = serde_json::from_slice(&members[4].1).unwrap();
    assert_eq!(
        errors["skipped"],
        serde_json::json!([{"key": "nope", "reason": "NoSuchKey"}])
    );
}

#[tokio::test]
async fn tigris_fail_mode_answers_404_listing_missing_keys() {
    let root = abc_root();
    let server = serve(
        Arc::new(ObjectStoreStore::new(local_store(root.path()))),
        Limits::default(),
    )
    .await;
    let response = tigris(
        &server,
        "data",
        r#"{"keys":["a","x/1","x/0"]}"#,
        &[("x-tigris-bundle-on-error", "fail")],
    )
    .await;
    assert_eq!(response.status(), 404);
    let text = response.text().await.unwrap();
    assert!(text.contains("<Code>BundleKeyNotFound</Code>"), "{text}");
    assert!(
        text.contains("<MissingKeys><Key>x/0</Key><Key>x/1</Key></MissingKeys>"),
        "{text}"
    );
    assert!(text.contains("<RequestId>"), "{text}");
    // All present: a complete tar, no errors member.
    let response = tigris(
        &server,
        "data",
        r#"{"keys":["a","big"]}"#,
        &[("x-tigris-bundle-on-error", "fail")],
    )
    .await;
    assert_eq!(response.status(), 200);
    let members = tar_members(&response.bytes().await.unwrap());
    assert_eq!(names(&members), vec!["a", "big"]);
    assert_eq!(members[1].1.len(), 100_000);
}

#[tokio::test]
async fn tigris_gzip_zstd_and_xml_bodies() {
    let root = abc_root();
    let server = serve(
        Arc::new(ObjectStoreStore::new(local_store(root.path()))),
        Limits::default(),
    )
    .await;
    let response = tigris(
        &server,
        "data",
        r#"{"keys":["a","big"]}"#,
        &[("x-tigris-bundle-compression", "gzip")],
    )
    .await;
    assert_eq!(response.headers()["content-type"], "application/gzip");
    assert!(response.headers().get("content-encoding").is_none());
    let compressed = response.bytes().await.unwrap();
    assert!(compressed.len() < 10_000, "{} bytes", compressed.len());
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(names(&tar_members(&tar)), vec!["a", "big"]);

    let response = tigris(
        &server,
        "data",
        "<Bundle><Object><Key>big</Key></Object><Object><Key>a</Key></Object></Bundle>",
        &[("x-tigris-bundle-compression", "zstd")],
    )
    .await;
    assert_eq!(response.headers()["content-type"], "application/zstd");
    let tar = zstd::decode_all(&response.bytes().await.unwrap()[..]).unwrap();
    assert_eq!(names(&tar_members(&tar)), vec!["big", "a"]);
}

#[tokio::test]
async fn tigris_bad_input_is_named_and_the_server_keeps_serving() {
    let root = abc_root();
    let limits = Limits {
        max_body_bytes: 4096,
        ..Limits::default()
    };
    let server = serve(
        Arc::new(ObjectStoreStore::new(local_store(root.path()))),
        limits,
    )
    .await;
    let cases: Vec<(String, String, &str, u16, &str)> = vec![
        (
            "data".into(),
            "{\"keys\":[".into(),
            "MalformedJSON",
            400,
            "expected",
        ),
        (
            "data".into(),
            "{\"keys\":[]}".into(),
            "InvalidRequest",
            400,
            "no keys",
        ),
        (
            "nobucket".into(),
            "{\"keys\":[\"a\"]}".into(),
            "NoSuchBucket",
            404,
            "nobucket",
        ),
        (
            "data".into(),
            format!("{{\"keys\":[\"{}\"]}}", "k".repeat(5000)),
            "EntityTooLarge",
            400,
            "4096",
        ),
        (
            "data".into(),
            "{\"keys\":[\"../../etc/passwd\"]}".into(),
            "InvalidArgument",
            400,
            "segment",
        ),
        (
            "data".into(),
            "{\"keys\":[\"/abs\"]}".into(),
            "InvalidArgument",
            400,
            "must not start with",
        ),
    ];
    for (bucket, body, code, status, needle) in cases {
        let response = tigris(&server, &bucket, body, &[]).await;
        assert_eq!(response.status().as_u16(), status, "{code}");
        let text = response.text().await.unwrap();
        assert!(text.contains(&format!("<Code>{code}</Code>")), "{text}");
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    // More than 5,000 keys.
    let keys: Vec<String> = (0..5001).map(|i| format!("k{i}")).collect();
    let server_big = serve(
        Arc::new(ObjectStoreStore::new(local_store(root.path()))),
        Limits::default(),
    )
    .await;
    let response = tigris(
        &server_big,
        "data",
        serde_json::json!({ "keys": keys }).to_string(),
        &[],
    )
    .await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("at most 5000"));
    // Unknown header values.
    let response = tigris(
        &server,
        "data",
        "{\"keys\":[\"a\"]}",
        &[("x-tigris-bundle-compression", "brotli")],
    )
    .await;
    assert_eq!(response.status(), 400);
    // And it still serves.
    let response = tigris(&server, "data", "{\"keys\":[\"a\"]}", &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        names(&tar_members(&response.bytes().await.unwrap())),
        vec!["a"]
    );
}

#[tokio::test]
async fn plain_get_and_head_with_range_and_no_escape() {
    let root = abc_root();
    std::fs::write(root.path().join("secret"), b"outside the bucket").unwrap();
    let server = serve(
        Arc::new(ObjectStoreStore::new(local_store(root.path()))),
        Limits::default(),
    )
    .await;
    let c = client();
    let url = server.url();
    let got = c
        .get(format!("{url}/data/b/c"))
        .header("range", "bytes=2-5")
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 206);
    assert_eq!(got.headers()["content-range"], "bytes 2-5/13");
    assert_eq!(got.bytes().await.unwrap(), "avo-");
    let head = c.head(format!("{url}/data/big")).send().await.unwrap();
    assert_eq!(head.headers()["content-length"], "100000");
    let missing = c.get(format!("{url}/data/zzz")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let past = c
        .get(format!("{url}/data/a"))
        .header("range", "bytes=10-20")
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), 416);
    for escape in [
        "/data/..%2Fsecret",
        "/data/%2E%2E/secret",
        "/data/b/..%2F..%2Fsecret",
    ] {
        let response = c.get(format!("{url}{escape}")).send().await.unwrap();
        // (The URL parser may resolve `%2E%2E` itself; the request must fail either way.)
        assert!(
            !response.status().is_success(),
            "{escape}: {}",
            response.status()
        );
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("outside the bucket"),
            "{escape} escaped: {body}"
        );
    }
}

#[tokio::test]
async fn moss_streaming_tar_strict_order_duplicates_placeholders_ranges() {
    let root = abc_root();
    let server = serve(
        Arc::new(ObjectStoreStore::new(local_store(root.path()))),
        Limits::default(),
    )
    .await;
    let body = serde_json::json!({
        "in": [
            {"objname": "b/c"},
            {"objname": "nope"},
            {"objname": "a", "start": 1, "length": 3},
            {"objname": "a"},
            {"objname": "b/c", "start": 9, "length": -1},
            {"objname": "a", "start": 99, "length": 1},
            {"objname": "a"},
        ],
        "coer": true, "strm": true, "mime": ".tar"
    });
    let response = moss(&server, "/data?provider=ais", body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-tar");
    let members = tar_members(&response.bytes().await.unwrap());
    assert_eq!(
        names(&members),
        vec![
            "data/b/c",
            "__404__/data/nope",
            "data/a",
            "data/a",
            "data/b/c",
            "__404__/data/a",
            "data/a"
        ]
    );
    let data: Vec<&[u8]> = members.iter().map(|m| &m.1[..]).collect();
    assert_eq!(
        data,
        vec![
            &b"bravo-charlie"[..],
            b"",
            b"lph",
            b"alpha",
            b"rlie",
            b"",
            b"alpha"
        ]
    );
    let status = |i: usize| {
        members[i]
            .2
            .iter()
            .find(|(k, _)| k == "GETMANY.status")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(status(1).as_deref(), Some("404"));
    assert_eq!(status(5).as_deref(), Some("416"));

    // onob, and a bucket per entry on the bucket-less route.
    let body = serde_json::json!({
        "in": [{"objname": "a", "bucket": "data"}, {"objname": "gone", "bucket": "data"}],
        "coer": true, "strm": true, "onob": true
    });
    let members = tar_members(&moss(&server, "", body).await.bytes().await.unwrap());
    assert_eq!(names(&members), vec!["a", "__404__/gone"]);
}

#[tokio::test]
async fn moss_coer_false_fails_first_and_bad_requests_are_json() {
    let root = abc_root();
    let server = serve(
        Arc::new(ObjectStoreStore::new(local_store(root.path()))),
        Limits::default(),
    )
    .await;
    let response = moss(
        &server,
        "/data",
        serde_json::json!({"in": [{"objname": "a"}, {"objname": "nope"}], "strm": true}),
    )
    .await;
    assert_eq!(response.status(), 404);
    let error: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(error["status"], 404);
    assert!(error["message"].as_str().unwrap().contains("data/nope"));

    let cases = [
        (
            serde_json::json!({"in": "x"}),
            400,
            "not a GetBatch request",
        ),
        (serde_json::json!({"in": []}), 400, "no entries"),
        (
            serde_json::json!({"in": [{"objname": "a", "start": -1, "length": 2}]}),
            400,
            "negative",
        ),
        (
            serde_json::json!({"in": [{"objname": "a", "start": 3}]}),
            400,
            "needs a length",
        ),
        (
            serde_json::json!({"in": [{"objname": "a", "length": -2}]}),
            400,
            "length -2",
        ),
        (
            serde_json::json!({"in": [{"objname": "a", "bucket": "zzz"}]}),
            404,
            "zzz",
        ),
        (
            serde_json::json!({"in": [{"objname": "../x"}]}),
            400,
            "invalid object name",
        ),
        (
            serde_json::json!({"in": [{"objname": "a"}], "mime": ".rar"}),
            400,
            "unknown output format",
        ),
        (
            serde_json::json!({"in": [{"objname": "a", "opaque": "!!"}]}),
            400,
            "base64",
        ),
    ];
    for (body, status, needle) in cases {
        let response = moss(&server, "/data", body.clone()).await;
        assert_eq!(response.status().as_u16(), status, "{body}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let error: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
    let response = moss(
        &server,
        "/data",
        serde_json::json!({"in": [{"objname": "a"}], "strm": true}),
    )
    .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn moss_multipart_zip_tgz_opaque_and_archpath() {
    // Archive objects written by the `tar` and `zip` crates, for archpath.
    let mut tar_builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_mode(0o644);
    header.set_cksum();
    tar_builder
        .append_data(&mut header, "inner/file.txt", &b"inner"[..])
        .unwrap();
    let shard = tar_builder.into_inner().unwrap();
    let mut zip_bytes = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut zip_bytes);
        z.start_file("z.json", zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut z, b"{\"zip\":1}").unwrap();
        z.finish().unwrap();
    }
    let root = root_with(&[
        ("a", b"alpha".to_vec()),
        ("shard.tar", shard),
        ("shard.zip", zip_bytes.into_inner()),
    ]);
    let server = serve(
        Arc::new(ObjectStoreStore::new(local_store(root.path()))),
        Limits::default(),
    )
    .await;
    let body = serde_json::json!({
        "in": [
            {"objname": "a", "opaque": "dXNlci0xMjM="},
            {"objname": "shard.tar", "archpath": "inner/file.txt", "start": 1, "length": 3},
            {"objname": "shard.zip", "archpath": "z.json"},
            {"objname": "shard.tar", "archpath": "not/there"},
        ],
        "coer": true, "strm": false, "mime": ".zip"
    });
    let response = moss(&server, "/data", body).await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    let boundary = content_type
        .strip_prefix("multipart/mixed; boundary=")
        .unwrap()
        .to_string();
    let body = response.bytes().await.unwrap();
    let delimiter = format!("--{boundary}");
    let text = body.as_ref();
    let parts: Vec<&[u8]> = split(text, delimiter.as_bytes());
    // preamble (empty), metadata, archive, closing "--\r\n"
    assert_eq!(parts.len(), 4, "{parts:?}");
    let (meta_headers, meta) = split_part(parts[1]);
    assert!(meta_headers.contains("name=\"metadata\""));
    let meta: serde_json::Value = serde_json::from_slice(meta).unwrap();
    let out = meta["out"].as_array().unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!(out[0]["opaque"], "dXNlci0xMjM=");
    assert_eq!(out[0]["size"], 5);
    assert_eq!(out[1]["archpath"], "inner/file.txt");
    assert_eq!(out[1]["size"], 3);
    assert!(out[3]["err_msg"].as_str().unwrap().contains("not/there"));
    let (archive_headers, archive) = split_part(parts[2]);
    assert!(archive_headers.contains("name=\"archive\""));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive.to_vec())).unwrap();
    let mut names = Vec::new();
    let mut datas = Vec::new();
    for i in 0..zip.len() {
        let mut file = zip.by_index(i).unwrap();
        names.push(file.name().unwrap().to_string());
        let mut d = Vec::new();
        file.read_to_end(&mut d).unwrap();
        datas.push(d);
    }
    assert_eq!(
        names,
        vec![
            "data/a",
            "data/shard.tar/inner/file.txt",
            "data/shard.zip/z.json",
            "__404__/data/shard.tar/not/there"
        ]
    );
    assert_eq!(datas[1], b"nne");
    assert_eq!(datas[2], b"{\"zip\":1}");

    // .tgz streaming.
    let body = serde_json::json!({"in": [{"objname": "a"}], "strm": true, "mime": ".tgz"});
    let response = moss(&server, "/data", body).await;
    assert_eq!(response.headers()["content-type"], "application/gzip");
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&response.bytes().await.unwrap()[..])
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(names_of(&tar), vec!["data/a"]);
}

fn names_of(tar: &[u8]) -> Vec<String> {
    tar_members(tar).into_iter().map(|m| m.0).collect()
}

fn split<'a>(haystack: &'a [u8], needle: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = haystack;
    while let Some(pos) = rest.windows(needle.len()).position(|w| w == needle) {
        out.push(&rest[..pos]);
        rest = &rest[pos + needle.len()..];
    }
    out.push(rest);
    out
}

/// A multipart part: (headers, body without the CRLF before the next delimiter).
fn split_part(part: &[u8]) -> (String, &[u8]) {
    let pos = part.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let headers = String::from_utf8_lossy(&part[..pos]).into_owned();
    let body = &part[pos + 4..];
    (headers, body.strip_suffix(b"\r\n").unwrap())
}

/// An InMemory backend under fault injection, with `n` objects `o/<i>` of `size` bytes.
async fn faulty_memory(n: usize, size: usize, faults: &FaultInjector) -> Arc<dyn Store> {
    let backend = Arc::new(InMemory::new());
    for i in 0..n {
        backend
            .put(
                &object_store::path::Path::from(format!("o/{i}")),
                PutPayload::from(vec![(i % 251) as u8; size]),
            )
            .await
            .unwrap();
    }
    Arc::new(ObjectStoreStore::new(Arc::new(FaultObjectStore::new(
        backend,
        faults.clone(),
    ))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_member_leaves_before_the_last_object_is_read() {
    let faults = FaultInjector::new();
    let store = faulty_memory(10, 1000, &faults).await;
    let server = serve(store, Limits::default()).await;
    let hold = faults.hold("o/9");
    for protocol in [
        getmany::BundleProtocol::Tigris,
        getmany::BundleProtocol::AiStore,
    ] {
        let client = BundleStore::builder(protocol, server.url(), "data")
            .completion_order(false)
            .build()
            .unwrap();
        let requests: Vec<Request> = (0..10).map(|i| Request::whole(format!("o/{i}"))).collect();
        let mut results = client.get_many(requests);
        // Members 0..9 arrive in order while the last object is still held on the server.
        for want in 0..9 {
            let (index, result) = tokio::time::timeout(Duration::from_secs(20), results.next())
                .await
                .expect("a member before the held one")
                .unwrap();
            assert_eq!(index, want);
            assert_eq!(result.unwrap().unwrap().len(), 1000);
        }
        assert_eq!(faults.waiting(), 1, "the last read is still held");
        drop(results);
    }
    hold.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorder_window_bounds_what_the_server_holds() {
    const N: usize = 1_000;
    const SIZE: usize = 16 * 1024;
    let faults = FaultInjector::new();
    let store = faulty_memory(N, SIZE, &faults).await;
    let window = Window {
        requests: 64,
        bytes: 256 * 1024,
        segment: 16,
    };
    let server = serve(
        store,
        Limits {
            window,
            ..Limits::default()
        },
    )
    .await;
    // The first object is held: everything after it must wait in the reorder buffer.
    let hold = faults.hold("o/0");
    let client = BundleStore::tigris(server.url(), "data")
        .completion_order(false)
        .min_keys_per_bundle(usize::MAX)
        .build()
        .unwrap();
    let requests: Vec<Request> = (0..N).map(|i| Request::whole(format!("o/{i}"))).collect();
    let mut results = client.get_many(requests);
    let mut first = Box::pin(results.next());
    // Drive the request until the server has read a full window (or hangs).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while faults.reads() < 64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} reads",
            faults.reads()
        );
        tokio::select! {
            _ = &mut first => panic!("an answer arrived while the first object was held"),
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    // Give a server that ignores its window the chance to read on, then check it did not.
    tokio::select! {
        _ = &mut first => panic!("an answer arrived while the first object was held"),
        _ = tokio::time::sleep(Duration::from_millis(300)) => {}
    }
    let stats = server.stats().fetch();
    assert_eq!(faults.reads(), 64, "reads issued while the first is held");
    assert!(
        stats.peak_outstanding() <= 64,
        "{}",
        stats.peak_outstanding()
    );
    // The buffer stops admitting new segments at 256 KiB: at most 64 - 1 answers of 16 KiB.
    assert!(
        stats.peak_buffered_answers() <= 63,
        "{}",
        stats.peak_buffered_answers()
    );
    assert!(
        stats.peak_buffered_bytes() <= 63 * SIZE as u64,
        "{} bytes buffered",
        stats.peak_buffered_bytes()
    );
    hold.release();
    let (index, result) = first.await.unwrap();
    assert_eq!((index, result.unwrap().unwrap().len()), (0, SIZE));
    let mut next = 1;
    while let Some((index, result)) = results.next().await {
        assert_eq!(index, next, "request order");
        assert_eq!(result.unwrap().unwrap()[0], (index % 251) as u8);
        next += 1;
    }
    assert_eq!(next, N);
    assert!(stats.peak_buffered_bytes() <= 63 * SIZE as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_fetched_once_and_big_batches_split_into_bundles() {
    let root = root_with(&[]);
    let backend = Metrics::new(local_store(root.path()));
    for i in 0..6_000 {
        backend
            .put(
                &object_store::path::Path::from(format!("k/{i}")),
                PutPayload::from(format!("v{i}")),
            )
            .await
            .unwrap();
    }
    backend.reset();
    let server = serve(
        Arc::new(ObjectStoreStore::new(Arc::new(backend.clone()))),
        Limits::default(),
    )
    .await;
    let client = BundleStore::tigris(server.url(), "data").build().unwrap();
    let requests: Vec<Request> = ["k/1", "k/2", "k/1", "k/1", "missing", "missing"]
        .into_iter()
        .map(Request::whole)
        .collect();
    let mut got: Vec<_> = client.get_many(requests).collect().await;
    got.sort_by_key(|(i, _)| *i);
    let values: Vec<Option<Bytes>> = got.into_iter().map(|(_, r)| r.unwrap()).collect();
    assert_eq!(
        values,
        vec![
            Some(Bytes::from("v1")),
            Some(Bytes::from("v2")),
            Some(Bytes::from("v1")),
            Some(Bytes::from("v1")),
            None,
            None
        ]
    );
    assert_eq!(
        backend.snapshot().reads,
        3,
        "one backend read per distinct key"
    );
    assert_eq!(server.stats().bundles(), 1);

    // 6,000 distinct keys, as few bundles as the 5,000-key limit allows: two.
    backend.reset();
    let requests: Vec<Request> = (0..6_000)
        .map(|i| Request::whole(format!("k/{i}")))
        .collect();
    let fewest = BundleStore::tigris(server.url(), "data")
        .min_keys_per_bundle(usize::MAX)
        .build()
        .unwrap();
    let answers: Vec<_> = fewest.get_many(requests.clone()).collect().await;
    assert_eq!(answers.len(), 6_000);
    for (i, result) in answers {
        assert_eq!(result.unwrap().unwrap(), format!("v{i}"));
    }
    assert_eq!(server.stats().bundles(), 1 + 2);
    assert_eq!(backend.snapshot().reads, 6_000);
    // With the defaults the batch is spread over 4 bundles in flight (1,500 keys each).
    let answers: Vec<_> = client.get_many(requests).collect().await;
    assert_eq!(answers.len(), 6_000);
    assert!(
        answers
            .iter()
            .all(|(i, r)| matches!(r, Ok(Some(v)) if *v == format!("v{i}")))
    );
    assert_eq!(server.stats().bundles(), 1 + 2 + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_answers_429_and_keeps_the_running_bundle() {
    let faults = FaultInjector::new();
    let store = faulty_memory(5, 100, &faults).await;
    let server = serve(
        store,
        Limits {
            max_in_flight: 1,
            ..Limits::default()
        },
    )
    .await;
    let hold = faults.hold("o/2");
    let client = BundleStore::tigris(server.url(), "data")
        .completion_order(false)
        .build()
        .unwrap();
    let requests: Vec<Request> = (0..5).map(|i| Request::whole(format!("o/{i}"))).collect();
    let mut running = client.get_many(requests.clone());
    // The running bundle has delivered its first member and waits on o/2.
    let (i, r) = running.next().await.unwrap();
    assert_eq!((i, r.unwrap().unwrap().len()), (0, 100));
    let response = tigris(&server, "data", "{\"keys\":[\"o/1\"]}", &[]).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("<Code>SlowDown</Code>")
    );
    let response = moss(
        &server,
        "/data",
        serde_json::json!({"in":[{"objname":"o/1"}]}),
    )
    .await;
    assert_eq!(response.status(), 429);
    let error: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(error["status"], 429);
    assert_eq!(server.stats().overloaded(), 2);
    hold.release();
    let rest: Vec<_> = running.collect().await;
    assert_eq!(rest.len(), 4);
    assert!(
        rest.iter()
            .all(|(_, r)| matches!(r, Ok(Some(b)) if b.len() == 100))
    );
    // The permit came back: the next bundle is admitted.
    let again: Vec<_> = client.get_many(requests).collect().await;
    assert!(again.iter().all(|(_, r)| r.is_ok()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_stream_frees_the_server() {
    let faults = FaultInjector::new();
    let store = faulty_memory(200, 4096, &faults).await;
    let server = serve(
        store,
        Limits {
            max_in_flight: 1,
            ..Limits::default()
        },
    )
    .await;
    let hold = faults.hold("o/100");
    let client = BundleStore::aistore(server.url(), "data")
        .completion_order(false)
        .build()
        .unwrap();
    let requests: Vec<Request> = (0..200).map(|i| Request::whole(format!("o/{i}"))).collect();
    let mut stream = client.get_many(requests.clone());
    for _ in 0..10 {
        stream.next().await.unwrap().1.unwrap();
    }
    // The client goes away in the middle of the bundle.
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while faults.in_flight() > 0 || server.bundles_in_flight() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server still reads for a client that left"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(hold);
    // The only bundle slot is free again, and the server serves the next client.
    let answers: Vec<_> = client.get_many(requests).collect().await;
    assert_eq!(answers.len(), 200);
    for (i, r) in answers {
        assert!(matches!(r, Ok(Some(_))), "{i}: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_upstream_object_fails_only_its_entry() {
    let faults = FaultInjector::new();
    let store = faulty_memory(20, 5000, &faults).await;
    let server = serve(store, Limits::default()).await;
    faults.fail_mid_body("o/7");
    for protocol in [
        getmany::BundleProtocol::Tigris,
        getmany::BundleProtocol::AiStore,
    ] {
        let client = BundleStore::builder(protocol, server.url(), "data")
            .build()
            .unwrap();
        let requests: Vec<Request> = (0..20).map(|i| Request::whole(format!("o/{i}"))).collect();
        let answers: Vec<_> = client.get_many(requests).collect().await;
        assert_eq!(answers.len(), 20);
        for (i, result) in answers {
            if i == 7 {
                // The key and the kind of failure; the backend's own message stays in the log.
                let error = result.unwrap_err().to_string();
                assert!(
                    error.contains("\"o/7\" failed in the server's backend"),
                    "{protocol:?}: {error}"
                );
            } else {
                assert_eq!(result.unwrap().unwrap().len(), 5000);
            }
        }
    }
    // Raw: the Tigris errors member names the failure; AIStore's placeholder carries it.
    let response = tigris(&server, "data", "{\"keys\":[\"o/6\",\"o/7\"]}", &[]).await;
    let members = tar_members(&response.bytes().await.unwrap());
    assert_eq!(names(&members), vec!["o/6", "__bundle_errors.json"]);
    let errors: serde_json::Value = serde_json::from_slice(&members[1].1).unwrap();
    assert_eq!(errors["skipped"][0]["reason"], "InternalError");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_fails_undelivered_entries_only() {
    let faults = FaultInjector::new();
    let store = faulty_memory(10, 100, &faults).await;
    // The server's time limit cuts the body while o/5 is held.
    let server = serve(
        store,
        Limits {
            request_timeout: Duration::from_millis(1500),
            ..Limits::default()
        },
    )
    .await;
    let _hold = faults.hold("o/5");
    for protocol in [
        getmany::BundleProtocol::Tigris,
        getmany::BundleProtocol::AiStore,
    ] {
        // Retries off: a retry would only be cut again while o/5 is held (tests/bundle_retry.rs
        // covers retries).
        let client = BundleStore::builder(protocol, server.url(), "data")
            .completion_order(false)
            .retries(0)
            .build()
            .unwrap();
        let requests: Vec<Request> = (0..10).map(|i| Request::whole(format!("o/{i}"))).collect();
        let mut answers: Vec<_> = client.get_many(requests).collect().await;
        answers.sort_by_key(|(i, _)| *i);
        assert_eq!(answers.len(), 10);
        for (i, result) in answers {
            if i < 5 {
                assert_eq!(result.unwrap().unwrap().len(), 100, "{protocol:?} {i}");
            } else {
                let error = result.expect_err("undelivered entries fail, not None");
                assert!(
                    error.to_string().contains("cut"),
                    "{protocol:?} {i}: {error}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_signatures_tokens_and_loopback() {
    let root = abc_root();
    let store: Arc<dyn Store> = Arc::new(ObjectStoreStore::new(local_store(root.path())));
    // No credentials: only loopback.
    let refused = BundleServer::builder()
        .bucket("data", store.clone())
        .start("0.0.0.0:0".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ServerError::Unauthenticated(_)),
        "{refused}"
    );
    assert!(refused.to_string().contains("without credentials"));

    let server = BundleServer::builder()
        .bucket("data", store)
        .credentials("ak", "sk")
        .token("tok")
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let requests = vec![Request::whole("a"), Request::whole("b/c")];
    // Signed with the right keys: both protocols work.
    for protocol in [
        getmany::BundleProtocol::Tigris,
        getmany::BundleProtocol::AiStore,
    ] {
        let good = BundleStore::builder(protocol, server.url(), "data")
            .credentials("ak", "sk")
            .build()
            .unwrap();
        let answers: Vec<_> = good.get_many(requests.clone()).collect().await;
        assert!(
            answers.iter().all(|(_, r)| matches!(r, Ok(Some(_)))),
            "{answers:?}"
        );
        let bad = BundleStore::builder(protocol, server.url(), "data")
            .credentials("ak", "wrong")
            .build()
            .unwrap();
        let answers: Vec<_> = bad.get_many(requests.clone()).collect().await;
        for (_, r) in answers {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("403"), "{e}");
        }
    }
    // The token opens the AIStore routes only.
    let token = BundleStore::aistore(server.url(), "data")
        .token("tok")
        .build()
        .unwrap();
    let answers: Vec<_> = token.get_many(requests.clone()).collect().await;
    assert!(answers.iter().all(|(_, r)| matches!(r, Ok(Some(_)))));
    let wrong = BundleStore::aistore(server.url(), "data")
        .token("nope")
        .build()
        .unwrap();
    let answers: Vec<_> = wrong.get_many(requests.clone()).collect().await;
    assert!(
        answers
            .iter()
            .all(|(_, r)| r.as_ref().unwrap_err().to_string().contains("401"))
    );
    // Unsigned requests are refused everywhere.
    let response = tigris(&server, "data", "{\"keys\":[\"a\"]}", &[]).await;
    assert_eq!(response.status(), 403);
    let response = moss(
        &server,
        "/data",
        serde_json::json!({"in":[{"objname":"a"}]}),
    )
    .await;
    // AIStore answers a request without credentials 401.
    assert_eq!(response.status(), 401);
    let response = client()
        .get(format!("{}/data/a", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = client()
        .post(format!("{}/data?bundle", server.url()))
        .bearer_auth("tok")
        .body("{\"keys\":[\"a\"]}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etag_changes_when_an_object_is_rewritten_at_the_same_size() {
    let root = abc_root();
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    memory
        .put(&"a".into(), PutPayload::from_static(b"one"))
        .await
        .unwrap();
    let dir: Arc<dyn Store> = Arc::new(getmany::DirStore::open(root.path().join("data")).unwrap());
    let stores: [(&str, Arc<dyn Store>); 2] = [
        ("DirStore", dir),
        (
            "ObjectStoreStore",
            Arc::new(ObjectStoreStore::new(memory.clone())),
        ),
    ];
    for (name, store) in stores {
        let server = serve(store, Limits::default()).await;
        let etag = |response: &reqwest::Response| {
            response
                .headers()
                .get("etag")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        let url = format!("{}/data/a", server.url());
        let before = client().get(&url).send().await.unwrap();
        let head = client().head(&url).send().await.unwrap();
        let ranged = client()
            .get(&url)
            .header("range", "bytes=1-")
            .send()
            .await
            .unwrap();
        let tag = etag(&before);
        assert_eq!(etag(&head), tag, "{name}: HEAD and GET agree");
        assert_eq!(etag(&ranged), tag, "{name}: ranged GET agrees");
        // The same size, other bytes.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(root.path().join("data/a"), b"ALPHA").unwrap();
        memory
            .put(&"a".into(), PutPayload::from_static(b"two"))
            .await
            .unwrap();
        let after = client().get(&url).send().await.unwrap();
        assert_ne!(
            etag(&after),
            tag,
            "{name}: a rewritten object keeps its ETag"
        );
    }
}

/// A raw HTTP/1.1 exchange (`Connection: close`): the whole response as bytes.
async fn raw_exchange(server: &BundleServer, request: String) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), socket.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tigris_bundles_end_with_the_documented_trailers() {
    let root = abc_root();
    let server = serve(
        Arc::new(ObjectStoreStore::new(local_store(root.path()))),
        Limits::default(),
    )
    .await;
    let body = r#"{"keys":["a","nope","b/c","empty"]}"#;
    let request = format!(
        "POST /data?bundle HTTP/1.1\r\nhost: x\r\nte: trailers\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = String::from_utf8_lossy(&raw_exchange(&server, request).await).into_owned();
    let (head, rest) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase().contains(
            "trailer: x-tigris-bundle-count, x-tigris-bundle-bytes, x-tigris-bundle-skipped"
        ),
        "{head}"
    );
    // After the last chunk: three objects (5 + 13 + 0 bytes), one key skipped.
    let (_, trailers) = rest.rsplit_once("\r\n0\r\n").unwrap();
    let trailers = trailers.to_ascii_lowercase();
    for expected in [
        "x-tigris-bundle-count: 3",
        "x-tigris-bundle-bytes: 18",
        "x-tigris-bundle-skipped: 1",
    ] {
        assert!(trailers.contains(expected), "{expected} in {trailers:?}");
    }
    // The tar itself still reads (clients that ignore trailers).
    let response = tigris(&server, "data", body, &[]).await;
    let members = tar_members(&response.bytes().await.unwrap());
    assert_eq!(
        names(&members),
        vec!["a", "b/c", "empty", "__bundle_errors.json"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_past_the_assembled_limit_is_cut_there() {
    let root = abc_root();
    let limits = Limits {
        max_bundle_bytes: 10,
        ..Limits::default()
    };
    let server = serve(
        Arc::new(ObjectStoreStore::new(local_store(root.path()))),
        limits,
    )
    .await;
    // In request order, "a" (5 bytes) fits and "b/c" (13 more) passes the limit: the body
    // is cut there, without the end of the chunked encoding ("a" leaves first when its frame
    // was handed on before "b/c" was read; when both are ready at once, the frame holding
    // "a" is dropped with the cut).
    let body = r#"{"keys":["a","b/c"]}"#;
    let request = format!(
        "POST /data?bundle HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = raw_exchange(&server, request).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.contains("bravo-charlie"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the body ended cleanly: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getbatch_redirects_are_followed_with_the_body() {
    let root = abc_root();
    let target = serve(
        Arc::new(ObjectStoreStore::new(local_store(root.path()))),
        Limits::default(),
    )
    .await;
    // A front that owns no data: it sends every GetBatch on to the target.
    let proxy = BundleServer::builder()
        .bucket("data", Arc::new(getmany::MemoryStore::new()))
        .redirect_getbatch(target.url())
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let raw = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/v1/ml/moss/data?coloc=1", proxy.url()))
        .body(r#"{"in":[{"objname":"a"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 307);
    assert_eq!(
        raw.headers()["location"].to_str().unwrap(),
        format!("{}/v1/ml/moss/data?coloc=1", target.url())
    );
    let client = BundleStore::aistore(proxy.url(), "data").build().unwrap();
    let mut answers: Vec<_> = client
        .get_many(vec![
            Request::whole("a"),
            Request::whole("b/c"),
            Request::whole("a"),
        ])
        .collect()
        .await;
    answers.sort_by_key(|(i, _)| *i);
    let values: Vec<_> = answers
        .into_iter()
        .map(|(_, a)| a.unwrap().unwrap())
        .collect();
    assert_eq!(values, ["alpha", "bravo-charlie", "alpha"]);
    assert_eq!(proxy.stats().bundles(), 0);
    assert_eq!(target.stats().bundles(), 1);
}
