//! AIStore GetBatch fidelity, over real HTTP against the crate's bundle server: duplicates in
//! every output format and both delivery modes, exact ranges (out of bounds: 416 or a
//! placeholder), open ranges, the `coloc` hint, `.tar.lz4` output, and error bodies in plain
//! text.

#![cfg(all(feature = "server", feature = "bundle"))]

use std::io::Read;
use std::sync::Arc;

use getmany::server::{BundleServer, Limits};
use getmany::{ObjectStoreStore, Store};
use object_store::local::LocalFileSystem;
use serde_json::{Value, json};

const ALPHA: &[u8] = b"alpha";
const BRAVO: &[u8] = b"bravo-charlie";

/// A tar archive object holding `inner/file.txt` = `inner-file`.
fn shard_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(10);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "inner/file.txt", &b"inner-file"[..])
        .unwrap();
    builder.into_inner().unwrap()
}

fn lz4(data: &[u8]) -> Vec<u8> {
    let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
    std::io::Write::write_all(&mut encoder, data).unwrap();
    encoder.finish().unwrap()
}

/// A server with bucket `data` over a local directory holding the fixture objects.
async fn server() -> (tempfile::TempDir, BundleServer) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    std::fs::create_dir_all(dir.join("b")).unwrap();
    std::fs::write(dir.join("a"), ALPHA).unwrap();
    std::fs::write(dir.join("b/c"), BRAVO).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::fs::write(dir.join("shard.tar"), shard_tar()).unwrap();
    std::fs::write(dir.join("shard.tar.lz4"), lz4(&shard_tar())).unwrap();
    let store: Arc<dyn Store> = Arc::new(ObjectStoreStore::new(Arc::new(
        LocalFileSystem::new_with_prefix(&dir).unwrap(),
    )));
    let server = BundleServer::builder()
        .bucket("data", store)
        .limits(Limits::default())
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (root, server)
}

async fn moss(server: &BundleServer, path_and_query: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}/v1/ml/moss{path_and_query}", server.url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// An archive member: its name and bytes.
type Entry = (String, Vec<u8>);

fn tar_entries(body: &[u8]) -> Vec<Entry> {
    let mut archive = tar::Archive::new(body);
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

/// Every entry of a zip, duplicates included: through its central directory and through its
/// local headers (a streaming reader), which must agree.
fn zip_entries(body: &[u8]) -> Vec<Entry> {
    let mut central = Vec::new();
    let mut iterable = zip::unstable::read::ZipIterable::try_new(
        std::io::Cursor::new(body),
        zip::read::Config::default(),
    )
    .unwrap();
    let mut files = iterable
        .files_with_cloned_reader(zip::ZipReadOptions::default())
        .unwrap();
    while let Some(file) = files.next() {
        let mut file = file.unwrap();
        let mut data = Vec::new();
        let name = file.name().unwrap().to_string();
        file.read_to_end(&mut data).unwrap();
        central.push((name, data));
    }
    let mut local = Vec::new();
    let mut reader = body;
    while let Some(mut file) = zip::read::read_zipfile_from_stream(&mut reader).unwrap() {
        let mut data = Vec::new();
        let name = file.name().unwrap().to_string();
        file.read_to_end(&mut data).unwrap();
        local.push((name, data));
    }
    assert_eq!(central, local);
    central
}

/// The entries of an archive body in output format `mime`.
fn entries(mime: &str, body: &[u8]) -> Vec<Entry> {
    match mime {
        ".zip" => zip_entries(body),
        ".tgz" => {
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut tar)
                .unwrap();
            tar_entries(&tar)
        }
        ".tar.lz4" => {
            let mut tar = Vec::new();
            lz4_flex::frame::FrameDecoder::new(body)
                .read_to_end(&mut tar)
                .unwrap();
            tar_entries(&tar)
        }
        _ => tar_entries(body),
    }
}

fn content_type(mime: &str) -> &'static str {
    match mime {
        ".zip" => "application/zip",
        ".tgz" => "application/gzip",
        ".tar.lz4" => "application/x-lz4",
        _ => "application/x-tar",
    }
}

/// A GetBatch answer: the metadata (multipart only) and the archive's entries.
struct Answer {
    meta: Option<Value>,
    entries: Vec<Entry>,
}

/// Sends a GetBatch and reads its 200 answer, streaming or multipart, in its format.
async fn batch(server: &BundleServer, body: &Value) -> Answer {
    batch_at(server, "/data?provider=ais", body).await
}

/// [`batch`] at `/v1/ml/moss{path_and_query}`.
async fn batch_at(server: &BundleServer, path_and_query: &str, body: &Value) -> Answer {
    let mime = match body["mime"].as_str().unwrap_or(".tar") {
        "" => ".tar".to_string(),
        ".tar.gz" | "tar.gz" | "tgz" => ".tgz".to_string(),
        m if m.starts_with('.') => m.to_string(),
        m => format!(".{m}"),
    };
    let response = moss(server, path_and_query, body).await;
    let status = response.status();
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    let bytes = response.bytes().await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    if body["strm"].as_bool().unwrap_or(false) {
        assert_eq!(kind, content_type(&mime));
        return Answer {
            meta: None,
            entries: entries(&mime, &bytes),
        };
    }
    let boundary = kind.strip_prefix("multipart/mixed; boundary=").unwrap();
    let parts = split(&bytes, format!("--{boundary}").as_bytes());
    assert_eq!(parts.len(), 4, "preamble, metadata, archive, end");
    let (headers, meta) = split_part(parts[1]);
    assert!(headers.contains("name=\"metadata\""), "{headers}");
    let (headers, archive) = split_part(parts[2]);
    assert!(headers.contains("name=\"archive\""), "{headers}");
    let extension = mime.trim_start_matches('.');
    assert!(
        headers.contains(&format!(".{extension}\"")),
        "{headers} (format {mime})"
    );
    Answer {
        meta: Some(serde_json::from_slice(meta).unwrap()),
        entries: entries(&mime, archive),
    }
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

fn split_part(part: &[u8]) -> (String, &[u8]) {
    let pos = part.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let headers = String::from_utf8_lossy(&part[..pos]).into_owned();
    (headers, part[pos + 4..].strip_suffix(b"\r\n").unwrap())
}

/// An error answer: its status and JSON message, checked to be plain text (no Rust `Debug`
/// output of a type).
async fn error_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/json");
    let error: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(error["status"], status);
    let message = error["message"].as_str().unwrap().to_string();
    for debug in [" { ", "{ .. }", "Some(", "EscapeAscii", "Error {"] {
        assert!(!message.contains(debug), "Debug output in {message:?}");
    }
    (status, message)
}

const FORMATS: [&str; 4] = [".tar", ".tgz", ".tar.lz4", ".zip"];

/// Duplicates, in every format and both modes: one entry per request element, in order,
/// duplicates included (with `coer` false too: nothing fails).
#[tokio::test]
async fn duplicates_in_every_format_and_mode() {
    let (_root, server) = server().await;
    let listed = json!([
        {"objname": "a"},
        {"objname": "b/c"},
        {"objname": "a"},
        {"objname": "a", "start": 1, "length": 3},
        {"objname": "b/c", "start": 6, "length": -1},
        {"objname": "shard.tar", "archpath": "inner/file.txt"},
        {"objname": "shard.tar", "archpath": "inner/file.txt"},
        {"objname": "a"},
    ]);
    let expected: Vec<Entry> = [
        ("data/a", ALPHA),
        ("data/b/c", BRAVO),
        ("data/a", ALPHA),
        ("data/a", &b"lph"[..]),
        ("data/b/c", &b"charlie"[..]),
        ("data/shard.tar/inner/file.txt", &b"inner-file"[..]),
        ("data/shard.tar/inner/file.txt", &b"inner-file"[..]),
        ("data/a", ALPHA),
    ]
    .iter()
    .map(|(n, d)| (n.to_string(), d.to_vec()))
    .collect();
    for mime in FORMATS {
        for strm in [true, false] {
            for coer in [true, false] {
                let body = json!({"in": listed, "mime": mime, "strm": strm, "coer": coer});
                let answer = batch(&server, &body).await;
                assert_eq!(answer.entries, expected, "{body}");
                if let Some(meta) = answer.meta {
                    let out = meta["out"].as_array().unwrap();
                    let sizes: Vec<u64> = out.iter().map(|o| o["size"].as_u64().unwrap()).collect();
                    assert_eq!(sizes, vec![5, 13, 5, 3, 7, 10, 10, 5], "{body}");
                    assert!(out.iter().all(|o| o.get("err_msg").is_none()), "{meta}");
                }
            }
        }
    }

    // A missing entry among duplicates: placeholders in order with coer, a 404 naming the
    // key without.
    let listed =
        json!([{"objname": "a"}, {"objname": "nope"}, {"objname": "nope"}, {"objname": "a"}]);
    for mime in FORMATS {
        for strm in [true, false] {
            let body = json!({"in": listed, "mime": mime, "strm": strm, "coer": true});
            let names: Vec<String> = batch(&server, &body)
                .await
                .entries
                .into_iter()
                .map(|e| e.0)
                .collect();
            assert_eq!(
                names,
                ["data/a", "__404__/data/nope", "__404__/data/nope", "data/a"],
                "{body}"
            );
            let body = json!({"in": listed, "mime": mime, "strm": strm, "coer": false});
            let (status, message) = error_of(moss(&server, "/data", &body).await).await;
            assert_eq!(status, 404, "{body}");
            assert!(message.contains("data/nope"), "{message}");
        }
    }
}

/// Out-of-bounds ranges (past the end, or starting at or past it): 416 naming the entry
/// without `coer`; with it a `__404__/` placeholder, and `err_msg` in multipart metadata.
#[tokio::test]
async fn out_of_bounds_ranges_are_416_or_placeholders() {
    let (_root, server) = server().await;
    // (entry, what the message names)
    let cases = [
        (json!({"objname": "a", "start": 1, "length": 5}), "data/a"),
        (json!({"objname": "a", "start": 0, "length": 6}), "data/a"),
        (json!({"objname": "a", "start": 5, "length": 1}), "data/a"),
        (json!({"objname": "a", "start": 99, "length": 1}), "data/a"),
        (json!({"objname": "a", "start": 5, "length": -1}), "data/a"),
        (json!({"objname": "a", "start": 9, "length": -1}), "data/a"),
        (
            json!({"objname": "empty", "start": 0, "length": 1}),
            "data/empty",
        ),
        (
            json!({"objname": "shard.tar", "archpath": "inner/file.txt", "start": 4, "length": 7}),
            "data/shard.tar/inner/file.txt",
        ),
        (
            json!({"objname": "shard.tar", "archpath": "inner/file.txt", "start": 10, "length": -1}),
            "data/shard.tar/inner/file.txt",
        ),
    ];
    for (entry, name) in &cases {
        let archived = entry.get("archpath").is_some();
        for strm in [true, false] {
            // coer false: a 416 JSON error naming the entry. (An archived file's size is
            // known only once the archive object is read: a streaming answer has started by
            // then, and is cut instead; see the placeholder case below.)
            if !(archived && strm) {
                let body = json!({"in": [{"objname": "b/c"}, entry], "strm": strm, "coer": false});
                let (status, message) = error_of(moss(&server, "/data", &body).await).await;
                assert_eq!(status, 416, "{body}: {message}");
                assert!(
                    message.contains(&format!("entry 1 ({name})"))
                        && message.contains("out of bounds"),
                    "{message}"
                );
            }
            // coer true: a placeholder, in tar and zip.
            for mime in [".tar", ".zip"] {
                let body = json!({
                    "in": [{"objname": "b/c"}, entry, {"objname": "a"}],
                    "strm": strm, "coer": true, "mime": mime,
                });
                let answer = batch(&server, &body).await;
                let placeholder = format!("__404__/{name}");
                let expected = vec![
                    ("data/b/c".to_string(), BRAVO.to_vec()),
                    (placeholder, Vec::new()),
                    ("data/a".to_string(), ALPHA.to_vec()),
                ];
                assert_eq!(answer.entries, expected, "{body}");
                if let Some(meta) = answer.meta {
                    let out = &meta["out"][1];
                    assert_eq!(out["size"], 0, "{meta}");
                    let err = out["err_msg"].as_str().unwrap();
                    assert!(err.contains(name) && err.contains("out of bounds"), "{err}");
                }
            }
        }
    }

    // The tar placeholder carries the status.
    let body =
        json!({"in": [{"objname": "a", "start": 2, "length": 9}], "strm": true, "coer": true});
    let response = moss(&server, "/data", &body).await;
    let bytes = response.bytes().await.unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
    let status = entry
        .pax_extensions()
        .unwrap()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.key() == Ok("GETMANY.status"))
        .map(|e| e.value().unwrap().to_string());
    assert_eq!(status.as_deref(), Some("416"));

    // In bounds, exactly to the end: served.
    let body = json!({"in": [
        {"objname": "a", "start": 0, "length": 5},
        {"objname": "a", "start": 4, "length": 1},
        {"objname": "a", "start": 4, "length": -1},
        {"objname": "shard.tar", "archpath": "inner/file.txt", "start": 6, "length": 4},
    ], "strm": true});
    let data: Vec<Vec<u8>> = batch(&server, &body)
        .await
        .entries
        .into_iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(data, [&b"alpha"[..], b"a", b"a", b"file"]);
}

/// Open ranges (`length: -1`) read from `start` to the end; malformed ranges are 400.
#[tokio::test]
async fn open_ranges_and_malformed_ranges() {
    let (_root, server) = server().await;
    for mime in [".tar", ".zip"] {
        for strm in [true, false] {
            let body = json!({"in": [
                {"objname": "a", "start": 2, "length": -1},
                {"objname": "a", "start": 0, "length": -1},
                {"objname": "b/c", "length": -1},
                {"objname": "empty", "start": 0, "length": -1},
                {"objname": "shard.tar", "archpath": "inner/file.txt", "start": 6, "length": -1},
                {"objname": "shard.tar.lz4", "archpath": "inner/file.txt", "start": 1, "length": -1},
            ], "strm": strm, "mime": mime});
            let answer = batch(&server, &body).await;
            let data: Vec<&[u8]> = answer.entries.iter().map(|e| &e.1[..]).collect();
            assert_eq!(
                data,
                [&b"pha"[..], ALPHA, BRAVO, b"", b"file", b"nner-file"],
                "{body}"
            );
            if let Some(meta) = answer.meta {
                let sizes: Vec<u64> = meta["out"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o["size"].as_u64().unwrap())
                    .collect();
                assert_eq!(sizes, [3, 5, 13, 0, 4, 9]);
            }
        }
    }
    let cases = [
        (
            json!({"objname": "a", "start": 3, "length": 0}),
            "needs a length",
        ),
        (json!({"objname": "a", "start": 3}), "needs a length"),
        (
            json!({"objname": "a", "start": -1, "length": -1}),
            "negative",
        ),
        (
            json!({"objname": "a", "start": -4, "length": 2}),
            "negative",
        ),
        (json!({"objname": "a", "length": -2}), "length -2"),
        (
            json!({"objname": "a", "start": 1, "length": -100}),
            "length -100",
        ),
    ];
    for (entry, needle) in cases {
        let body = json!({"in": [{"objname": "b/c"}, entry], "strm": true, "coer": true});
        let (status, message) = error_of(moss(&server, "/data", &body).await).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            message.contains("entry 1 (\"a\")") && message.contains(needle),
            "{needle:?} not in {message:?}"
        );
    }
}

/// `coloc` (a placement hint) is accepted and ignored, in the body (a number or a bool) and
/// in the query, as are other unknown fields.
#[tokio::test]
async fn coloc_hint_in_body_and_query_is_accepted() {
    let (_root, server) = server().await;
    for (query, coloc) in [
        ("/data?provider=ais&coloc=1", json!(1)),
        ("/data?coloc=2", json!(2)),
        ("/data?provider=ais", json!(true)),
        ("/data?coloc=0", json!(false)),
        ("?coloc=2", json!(0)),
    ] {
        for strm in [true, false] {
            let body = json!({
                "in": [{"objname": "a", "bucket": "data", "future": {"x": [1]}}, {"objname": "a", "bucket": "data"}],
                "coloc": coloc, "strm": strm, "some_new_field": "ignored",
            });
            let names: Vec<String> = batch_at(&server, query, &body)
                .await
                .entries
                .into_iter()
                .map(|e| e.0)
                .collect();
            assert_eq!(names, ["data/a", "data/a"], "{query} {body}");
        }
    }
}

/// `.tar.lz4` output: an LZ4 frame of the tar, `application/x-lz4`, streaming and
/// multipart; and `archpath` reads a file out of a `.tar.lz4` archive object.
#[tokio::test]
async fn tar_lz4_output_and_archives() {
    let (_root, server) = server().await;
    for strm in [true, false] {
        let body = json!({"in": [
            {"objname": "a"},
            {"objname": "b/c", "start": 6, "length": 7},
            {"objname": "shard.tar.lz4", "archpath": "inner/file.txt"},
            {"objname": "gone"},
            {"objname": "a"},
        ], "mime": ".tar.lz4", "strm": strm, "coer": true});
        let answer = batch(&server, &body).await;
        let expected: Vec<Entry> = [
            ("data/a", ALPHA),
            ("data/b/c", &b"charlie"[..]),
            ("data/shard.tar.lz4/inner/file.txt", &b"inner-file"[..]),
            ("__404__/data/gone", &b""[..]),
            ("data/a", ALPHA),
        ]
        .iter()
        .map(|(n, d)| (n.to_string(), d.to_vec()))
        .collect();
        assert_eq!(answer.entries, expected);
    }
    // Without the leading dot too, as the other formats.
    let body = json!({"in": [{"objname": "a"}], "mime": "tar.lz4", "strm": true});
    assert_eq!(batch(&server, &body).await.entries.len(), 1);
}

/// The getmany extension `x-getmany-ranges: clip` (sent by `BundleStore`) keeps the `Store`
/// trait's ranges: clipped at the end of the object; a start at or past the end of a
/// non-empty object still fails.
#[tokio::test]
async fn clip_header_keeps_store_range_semantics() {
    let (_root, server) = server().await;
    let body = json!({"in": [
        {"objname": "a", "start": 1, "length": 99},
        {"objname": "empty", "start": 0, "length": 5},
        {"objname": "shard.tar", "archpath": "inner/file.txt", "start": 6, "length": 50},
        {"objname": "a", "start": 5, "length": 1},
    ], "strm": true, "coer": true});
    let response = reqwest::Client::new()
        .get(format!("{}/v1/ml/moss/data", server.url()))
        .header("x-getmany-ranges", "clip")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let entries = tar_entries(&response.bytes().await.unwrap());
    let expected: Vec<Entry> = [
        ("data/a", &b"lpha"[..]),
        ("data/empty", &b""[..]),
        ("data/shard.tar/inner/file.txt", &b"file"[..]),
        ("__404__/data/a", &b""[..]),
    ]
    .iter()
    .map(|(n, d)| (n.to_string(), d.to_vec()))
    .collect();
    assert_eq!(entries, expected);
}

/// With `coer: false`, an archived file's range is checked only once the archive object is
/// read: a streaming answer has started by then, and is cut there (the client sees a body
/// that ends early, without the archive's end). Multipart answers 416 (see above).
#[tokio::test]
async fn streaming_coer_false_cuts_at_an_archived_file_out_of_bounds() {
    let (_root, server) = server().await;
    let body = json!({"in": [
        {"objname": "a"},
        {"objname": "shard.tar", "archpath": "inner/file.txt", "start": 4, "length": 7},
    ], "strm": true, "coer": false});
    let response = moss(&server, "/data", &body).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut body = Vec::new();
    let mut cut = false;
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        match chunk {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "the body was not cut");
    // No archive end: what arrived is not a complete tar.
    assert!(!body.ends_with(&[0u8; 1024]), "{} bytes", body.len());
}
