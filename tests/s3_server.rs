#![cfg(feature = "s3-server")]
//! Tests of `getmany::s3_server::S3Server`, driven by object_store's own S3 client.
//!
//! The ignored test `one_get_throughput` prints the bandwidth of one GET of a 64 MiB
//! object; run it in release mode:
//! `cargo test --release --features s3-server --test s3_server -- --ignored --nocapture`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use getmany::s3_server::{RequestCounts, S3Server};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};

const BUCKET: &str = "test-bucket";
const ACCESS_KEY: &str = "getmany-access";
const SECRET_KEY: &str = "getmany-secret";

fn any_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn counts(get: u64, head: u64, put: u64, other: u64) -> RequestCounts {
    RequestCounts {
        get,
        head,
        put,
        other,
    }
}

/// A server with SigV4 on over a fresh `InMemory`, and that backend.
async fn start() -> (S3Server, Arc<dyn ObjectStore>) {
    let backend: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let credentials = Some((ACCESS_KEY.to_owned(), SECRET_KEY.to_owned()));
    let server = S3Server::start(backend.clone(), BUCKET, any_addr(), credentials)
        .await
        .expect("start server");
    (server, backend)
}

fn builder(server: &S3Server) -> AmazonS3Builder {
    AmazonS3Builder::new()
        .with_endpoint(server.url())
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region("us-east-1")
        .with_bucket_name(BUCKET)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_retry(RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        })
}

fn client(server: &S3Server) -> AmazonS3 {
    builder(server).build().expect("S3 client")
}

fn path(key: &str) -> Path {
    Path::from(key)
}

async fn get_range(client: &AmazonS3, key: &str, range: GetRange) -> object_store::Result<Bytes> {
    let options = GetOptions {
        range: Some(range),
        ..GetOptions::default()
    };
    client.get_opts(&path(key), options).await?.bytes().await
}

/// object_store hides the HTTP status of most errors, but its message includes it.
fn assert_status(err: &object_store::Error, status: &str) {
    let message = err.to_string();
    assert!(
        message.contains(status),
        "expected {status} in error: {message}"
    );
}

#[tokio::test]
async fn put_get_round_trip() {
    let (server, backend) = start().await;
    let client = client(&server);
    let data = pattern(100_000);

    let put = client
        .put(&path("dir/a.bin"), PutPayload::from(data.clone()))
        .await
        .unwrap();
    assert!(put.e_tag.is_some());
    // The object landed in the backend under the same path.
    let stored = backend.get(&path("dir/a.bin")).await.unwrap();
    assert_eq!(stored.bytes().await.unwrap(), data);

    let got = client.get(&path("dir/a.bin")).await.unwrap();
    assert_eq!(got.meta.size, 100_000);
    assert_eq!(got.meta.e_tag, put.e_tag);
    assert_eq!(got.bytes().await.unwrap(), data);

    // Written directly to the backend, read through the server; empty objects too.
    backend
        .put(&path("direct"), PutPayload::from_static(b"direct"))
        .await
        .unwrap();
    client
        .put(&path("empty"), PutPayload::default())
        .await
        .unwrap();
    let got = client.get(&path("direct")).await.unwrap();
    assert_eq!(&got.bytes().await.unwrap()[..], b"direct");
    let got = client.get(&path("empty")).await.unwrap();
    assert_eq!(got.meta.size, 0);
    assert!(got.bytes().await.unwrap().is_empty());

    // Overwrite.
    client
        .put(&path("direct"), PutPayload::from_static(b"again"))
        .await
        .unwrap();
    let got = client.get(&path("direct")).await.unwrap();
    assert_eq!(&got.bytes().await.unwrap()[..], b"again");
}

#[tokio::test]
async fn ranges() {
    let (server, _backend) = start().await;
    let client = client(&server);
    let data = pattern(10_000);
    client
        .put(&path("obj"), PutPayload::from(data.clone()))
        .await
        .unwrap();
    client
        .put(&path("empty"), PutPayload::default())
        .await
        .unwrap();

    // Bounded, including one that runs past the end (clamped, as on S3).
    let got = get_range(&client, "obj", GetRange::Bounded(1000..1010))
        .await
        .unwrap();
    assert_eq!(got, data[1000..1010]);
    let got = get_range(&client, "obj", GetRange::Bounded(0..1))
        .await
        .unwrap();
    assert_eq!(got, data[..1]);
    let got = client.get_range(&path("obj"), 9990..20_000).await.unwrap();
    assert_eq!(got, data[9990..]);

    // Offset.
    let got = get_range(&client, "obj", GetRange::Offset(9000))
        .await
        .unwrap();
    assert_eq!(got, data[9000..]);
    let got = get_range(&client, "obj", GetRange::Offset(9999))
        .await
        .unwrap();
    assert_eq!(got, data[9999..]);

    // Suffix, shorter than, as long as and longer than the object.
    let got = get_range(&client, "obj", GetRange::Suffix(10))
        .await
        .unwrap();
    assert_eq!(got, data[9990..]);
    let got = get_range(&client, "obj", GetRange::Suffix(10_000))
        .await
        .unwrap();
    assert_eq!(got, data);
    let got = get_range(&client, "obj", GetRange::Suffix(1_000_000))
        .await
        .unwrap();
    assert_eq!(got, data);

    // The served range is reported (Content-Range) and the metadata is the object's.
    let options = GetOptions {
        range: Some(GetRange::Suffix(1_000_000)),
        ..GetOptions::default()
    };
    let result = client.get_opts(&path("obj"), options).await.unwrap();
    assert_eq!(result.range, 0..10_000);
    assert_eq!(result.meta.size, 10_000);

    // A start at or past the end: 416 InvalidRange.
    for range in [
        GetRange::Offset(10_000),
        GetRange::Offset(50_000),
        GetRange::Bounded(10_000..10_010),
    ] {
        let err = get_range(&client, "obj", range.clone())
            .await
            .expect_err("unsatisfiable range");
        assert!(
            !matches!(err, object_store::Error::NotFound { .. }),
            "{err}"
        );
        assert_status(&err, "416");
    }

    // Any range on an empty object: 416, as S3 does.
    for range in [
        GetRange::Bounded(0..1),
        GetRange::Offset(0),
        GetRange::Suffix(5),
    ] {
        let err = get_range(&client, "empty", range.clone())
            .await
            .expect_err("range on an empty object");
        assert_status(&err, "416");
    }

    // A range of a missing key is NotFound, not 416.
    let err = get_range(&client, "missing", GetRange::Offset(5))
        .await
        .unwrap_err();
    assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn head_and_missing_keys() {
    let (server, _backend) = start().await;
    let client = client(&server);
    client
        .put(&path("a/b.bin"), PutPayload::from(pattern(4096)))
        .await
        .unwrap();

    let meta = client.head(&path("a/b.bin")).await.unwrap();
    assert_eq!(meta.size, 4096);
    assert_eq!(meta.location, path("a/b.bin"));
    assert!(meta.e_tag.is_some());
    let age = chrono_free_age(meta.last_modified.timestamp());
    assert!(age < 60, "last modified {age} s ago");

    let err = client.get(&path("missing")).await.unwrap_err();
    assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
    let err = client.head(&path("a/missing")).await.unwrap_err();
    assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
    // A directory is not an object.
    let err = client.head(&path("a")).await.unwrap_err();
    assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
}

/// Seconds between a Unix timestamp and now.
fn chrono_free_age(unix_seconds: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (now - unix_seconds).abs()
}

#[tokio::test]
async fn list_with_prefix_and_delimiter() {
    let (server, _backend) = start().await;
    let client = client(&server);
    for key in [
        "a/1",
        "a/2",
        "a/sub/3",
        "a/sub/deeper/4",
        "ab/5",
        "b/6",
        "top",
    ] {
        client
            .put(&path(key), PutPayload::from(key.as_bytes().to_vec()))
            .await
            .unwrap();
    }

    let keys = |metas: Vec<object_store::ObjectMeta>| -> Vec<String> {
        let mut keys: Vec<String> = metas.into_iter().map(|m| m.location.to_string()).collect();
        keys.sort();
        keys
    };

    let all = client.list(None).try_collect::<Vec<_>>().await.unwrap();
    assert_eq!(all.len(), 7);
    let sizes: Vec<u64> = all.iter().map(|m| m.size).collect();
    assert!(sizes.iter().all(|&s| s > 0), "{sizes:?}");

    // A prefix is a directory to object_store: "a" must not match "ab/5".
    let under_a = client
        .list(Some(&path("a")))
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(keys(under_a), ["a/1", "a/2", "a/sub/3", "a/sub/deeper/4"]);
    let none = client
        .list(Some(&path("nope")))
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert!(none.is_empty());

    // With the delimiter: one level.
    let root = client.list_with_delimiter(None).await.unwrap();
    assert_eq!(keys(root.objects), ["top"]);
    let prefixes: Vec<String> = root.common_prefixes.iter().map(|p| p.to_string()).collect();
    assert_eq!(prefixes, ["a", "ab", "b"]);

    let a = client.list_with_delimiter(Some(&path("a"))).await.unwrap();
    assert_eq!(keys(a.objects), ["a/1", "a/2"]);
    let prefixes: Vec<String> = a.common_prefixes.iter().map(|p| p.to_string()).collect();
    assert_eq!(prefixes, ["a/sub"]);

    // start-after.
    let after = client
        .list_with_offset(Some(&path("a")), &path("a/2"))
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(keys(after), ["a/sub/3", "a/sub/deeper/4"]);
}

#[tokio::test]
async fn list_pages_past_1000_keys() {
    let (server, backend) = start().await;
    let client = client(&server);
    for i in 0..2500 {
        backend
            .put(
                &path(&format!("many/{i:05}")),
                PutPayload::from_static(b"x"),
            )
            .await
            .unwrap();
    }
    server.reset_counts();
    let listed = client
        .list(Some(&path("many")))
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(listed.len(), 2500);
    let mut keys: Vec<String> = listed.iter().map(|m| m.location.to_string()).collect();
    keys.dedup();
    assert_eq!(keys.len(), 2500);
    // Three pages of at most 1,000 keys.
    assert_eq!(server.counts(), counts(3, 0, 0, 0));

    let one_level = client.list_with_delimiter(None).await.unwrap();
    assert!(one_level.objects.is_empty());
    assert_eq!(one_level.common_prefixes, [path("many")]);
}

#[tokio::test]
async fn delete_copy_and_conditional_put() {
    let (server, backend) = start().await;
    let client = client(&server);
    client
        .put(&path("x"), PutPayload::from_static(b"x-data"))
        .await
        .unwrap();

    client.copy(&path("x"), &path("y")).await.unwrap();
    let got = backend
        .get(&path("y"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], b"x-data");
    let err = client.copy(&path("missing"), &path("z")).await.unwrap_err();
    assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");

    client.delete(&path("x")).await.unwrap();
    let err = backend.head(&path("x")).await.unwrap_err();
    assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
    // Deleting a missing object succeeds, as on S3.
    client.delete(&path("x")).await.unwrap();

    // If-None-Match: * (PutMode::Create).
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    client
        .put_opts(&path("new"), PutPayload::from_static(b"1"), create.clone())
        .await
        .unwrap();
    let err = client
        .put_opts(&path("new"), PutPayload::from_static(b"2"), create)
        .await
        .unwrap_err();
    assert!(
        matches!(err, object_store::Error::AlreadyExists { .. }),
        "{err}"
    );
    let got = client
        .get(&path("new"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], b"1");
}

#[tokio::test]
async fn invalid_buckets() {
    let (server, backend) = start().await;

    // Another bucket does not exist.
    let other = builder(&server).with_bucket_name("other").build().unwrap();
    let err = other.get(&path("a/b")).await.unwrap_err();
    assert_status(&err, "404");
    assert!(format!("{err}").contains("NoSuchBucket"), "{err}");
    let err = other
        .put(&path("a/b"), PutPayload::from_static(b"?"))
        .await
        .unwrap_err();
    assert_status(&err, "404");

    // Invalid bucket names are refused up front.
    let err = S3Server::start(backend.clone(), "Not_A_Bucket", any_addr(), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

/// One HTTP/1.1 request over a fresh connection; returns the status, the headers
/// (lower-case names) and the body.
async fn raw_request(
    addr: SocketAddr,
    head: &str,
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{head}\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    socket.write_all(body).await.unwrap();
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await.unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let text = String::from_utf8(response[..split].to_vec()).unwrap();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    (status, headers, response[split + 4..].to_vec())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// What object_store's client cannot send or does not show: raw requests (auth off).
#[tokio::test]
async fn raw_http() {
    let backend: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let server = S3Server::start(backend.clone(), BUCKET, any_addr(), None)
        .await
        .unwrap();
    let addr = server.local_addr();
    let data = pattern(1000);
    backend
        .put(&path("obj"), PutPayload::from(data.clone()))
        .await
        .unwrap();
    backend
        .put(&path("empty"), PutPayload::default())
        .await
        .unwrap();

    // Headers of a ranged GET.
    let (status, headers, body) = raw_request(
        addr,
        &format!("GET /{BUCKET}/obj HTTP/1.1\r\nRange: bytes=10-19"),
        b"",
    )
    .await;
    assert_eq!(status, 206);
    assert_eq!(body, data[10..20]);
    assert_eq!(header(&headers, "content-length"), Some("10"));
    assert_eq!(header(&headers, "content-range"), Some("bytes 10-19/1000"));
    assert!(header(&headers, "etag").is_some_and(|e| e.starts_with('"')));
    assert!(header(&headers, "last-modified").is_some_and(|d| d.ends_with("GMT")));

    // A whole GET: 200, no Content-Range.
    let (status, headers, body) =
        raw_request(addr, &format!("GET /{BUCKET}/obj HTTP/1.1"), b"").await;
    assert_eq!(status, 200);
    assert_eq!(body, data);
    assert_eq!(header(&headers, "content-length"), Some("1000"));
    assert_eq!(header(&headers, "content-range"), None);

    // Suffix longer than the object: the whole object.
    let (status, headers, body) = raw_request(
        addr,
        &format!("GET /{BUCKET}/obj HTTP/1.1\r\nRange: bytes=-5000"),
        b"",
    )
    .await;
    assert_eq!(status, 206);
    assert_eq!(body, data);
    assert_eq!(header(&headers, "content-range"), Some("bytes 0-999/1000"));

    // Unsatisfiable: past the end, an empty suffix, anything on an empty object.
    for (key, range) in [
        ("obj", "bytes=1000-"),
        ("obj", "bytes=2000-3000"),
        ("obj", "bytes=-0"),
        ("empty", "bytes=0-"),
        ("empty", "bytes=-1"),
    ] {
        let (status, _, body) = raw_request(
            addr,
            &format!("GET /{BUCKET}/{key} HTTP/1.1\r\nRange: {range}"),
            b"",
        )
        .await;
        assert_eq!(status, 416, "{key} {range}");
        assert!(String::from_utf8_lossy(&body).contains("InvalidRange"));
    }

    // Missing key: 404 NoSuchKey; so is a key that cannot be an object_store path.
    for key in ["missing", "a//b", "dir/"] {
        let (status, _, body) =
            raw_request(addr, &format!("GET /{BUCKET}/{key} HTTP/1.1"), b"").await;
        assert_eq!(status, 404, "{key}");
        assert!(
            String::from_utf8_lossy(&body).contains("NoSuchKey"),
            "{key}"
        );
    }

    // Such keys cannot be written.
    for key in ["a//b", "dir/", "a/./b"] {
        let (status, _, body) =
            raw_request(addr, &format!("PUT /{BUCKET}/{key} HTTP/1.1"), b"data").await;
        assert_eq!(status, 400, "{key}: {}", String::from_utf8_lossy(&body));
    }

    // A PUT stores exactly the body.
    let (status, headers, _) =
        raw_request(addr, &format!("PUT /{BUCKET}/new/key HTTP/1.1"), b"payload").await;
    assert_eq!(status, 200);
    assert!(header(&headers, "etag").is_some());
    let stored = backend.get(&path("new/key")).await.unwrap().bytes().await;
    assert_eq!(&stored.unwrap()[..], b"payload");

    // HEAD.
    let (status, headers, body) =
        raw_request(addr, &format!("HEAD /{BUCKET}/obj HTTP/1.1"), b"").await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-length"), Some("1000"));
    assert!(body.is_empty());

    // ListObjectsV2 with a string (not directory) prefix and a delimiter, paged.
    for key in ["p/ab1", "p/ab2/x", "p/ab2/y", "p/ac", "p/b"] {
        backend
            .put(&path(key), PutPayload::from_static(b"1"))
            .await
            .unwrap();
    }
    let (status, _, body) = raw_request(
        addr,
        &format!("GET /{BUCKET}?list-type=2&prefix=p/a&delimiter=/&max-keys=2 HTTP/1.1"),
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let xml = String::from_utf8(body).unwrap();
    assert!(xml.contains("<Key>p/ab1</Key>"), "{xml}");
    assert!(xml.contains("<Prefix>p/ab2/</Prefix>"), "{xml}");
    assert!(!xml.contains("p/ac"), "{xml}");
    assert!(xml.contains("<IsTruncated>true</IsTruncated>"), "{xml}");
    assert!(
        xml.contains("<NextContinuationToken>p/ab2/</NextContinuationToken>"),
        "{xml}"
    );
    let (_, _, body) = raw_request(
        addr,
        &format!(
            "GET /{BUCKET}?list-type=2&prefix=p/a&delimiter=/&max-keys=2&continuation-token=p/ab2/ HTTP/1.1"
        ),
        b"",
    )
    .await;
    let xml = String::from_utf8(body).unwrap();
    assert!(xml.contains("<Key>p/ac</Key>"), "{xml}");
    assert!(!xml.contains("<Key>p/ab"), "{xml}");
    assert!(!xml.contains("<Prefix>p/ab"), "{xml}");
    assert!(xml.contains("<IsTruncated>false</IsTruncated>"), "{xml}");
    let (_, _, body) = raw_request(
        addr,
        &format!("GET /{BUCKET}?list-type=2&prefix=p/&max-keys=0 HTTP/1.1"),
        b"",
    )
    .await;
    let xml = String::from_utf8(body).unwrap();
    assert!(xml.contains("<KeyCount>0</KeyCount>"), "{xml}");
    assert!(xml.contains("<IsTruncated>false</IsTruncated>"), "{xml}");

    // Other bucket: 404 NoSuchBucket.
    let (status, _, body) = raw_request(addr, "GET /other/obj HTTP/1.1", b"").await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("NoSuchBucket"));

    // Requests are counted by method.
    let counts = server.counts();
    assert_eq!(counts.put, 4);
    assert_eq!(counts.head, 1);
    assert_eq!(counts.other, 0);
}

#[tokio::test]
async fn authentication() {
    let (server, _backend) = start().await;
    client(&server)
        .put(&path("a"), PutPayload::from_static(b"a"))
        .await
        .unwrap();

    // A wrong secret is rejected (403 SignatureDoesNotMatch), not NotFound.
    let bad = builder(&server)
        .with_secret_access_key("not-the-secret")
        .build()
        .unwrap();
    let err = bad.get(&path("a")).await.unwrap_err();
    assert!(
        !matches!(err, object_store::Error::NotFound { .. }),
        "{err}"
    );
    assert_status(&err, "403");
    let err = bad
        .put(&path("b"), PutPayload::from_static(b"b"))
        .await
        .unwrap_err();
    assert_status(&err, "403");

    // So are unknown access keys and unsigned requests.
    let unknown = builder(&server)
        .with_access_key_id("someone-else")
        .build()
        .unwrap();
    assert_status(&unknown.get(&path("a")).await.unwrap_err(), "403");
    let anonymous = builder(&server).with_skip_signature(true).build().unwrap();
    assert_status(&anonymous.get(&path("a")).await.unwrap_err(), "403");
}

#[tokio::test]
async fn authentication_off() {
    let backend: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let server = S3Server::start(backend, BUCKET, any_addr(), None)
        .await
        .unwrap();
    // Signed with any keys, or not signed at all: all served.
    let signed = builder(&server)
        .with_secret_access_key("whatever")
        .build()
        .unwrap();
    signed
        .put(&path("a"), PutPayload::from_static(b"a"))
        .await
        .unwrap();
    let anonymous = builder(&server).with_skip_signature(true).build().unwrap();
    let got = anonymous
        .get(&path("a"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], b"a");
    assert_eq!(server.counts(), counts(1, 0, 1, 0));
}

#[tokio::test]
async fn request_counts_are_exact() {
    let (server, _backend) = start().await;
    let client = client(&server);
    assert_eq!(server.counts(), RequestCounts::default());

    for i in 0..5 {
        client
            .put(
                &path(&format!("k{i}")),
                PutPayload::from(vec![i as u8; 100]),
            )
            .await
            .unwrap();
    }
    assert_eq!(server.counts(), counts(0, 0, 5, 0));

    server.reset_counts();
    assert_eq!(server.counts(), RequestCounts::default());
    for i in 0..5 {
        client.get(&path(&format!("k{i}"))).await.unwrap();
    }
    client.get_range(&path("k0"), 10..20).await.unwrap();
    client.head(&path("k1")).await.unwrap();
    client.head(&path("k2")).await.unwrap();
    let _ = client.get(&path("missing")).await.unwrap_err();
    let _ = get_range(&client, "k0", GetRange::Offset(100))
        .await
        .unwrap_err();
    client.list(None).try_collect::<Vec<_>>().await.unwrap();
    client.delete(&path("k4")).await.unwrap(); // DeleteObjects: one POST
    client.copy(&path("k3"), &path("k5")).await.unwrap(); // one PUT
    let expected = counts(5 + 1 + 1 + 1 + 1, 2, 1, 1);
    assert_eq!(server.counts(), expected);
    assert_eq!(server.counts().total(), 13);

    // Rejected requests reach the server and count too.
    let bad = builder(&server)
        .with_secret_access_key("wrong")
        .build()
        .unwrap();
    let _ = bad.get(&path("k0")).await.unwrap_err();
    assert_eq!(server.counts().get, expected.get + 1);

    // Concurrent requests over several connections.
    server.reset_counts();
    let client = Arc::new(client);
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.get(&path(&format!("k{}", i % 4))).await.map(|_| ()) })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(server.counts(), counts(32, 0, 0, 0));
}

#[tokio::test]
async fn drop_stops_the_server() {
    let (server, _backend) = start().await;
    let url = server.url();
    assert_eq!(url, format!("http://{}", server.local_addr()));
    assert_ne!(server.local_addr().port(), 0);
    let client = client(&server);
    client
        .put(&path("a"), PutPayload::from_static(b"a"))
        .await
        .unwrap();

    drop(server);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Neither the idle pooled connection nor a new one is served any more.
    let err = client.get(&path("a")).await.unwrap_err();
    assert!(
        !matches!(err, object_store::Error::NotFound { .. }),
        "{err}"
    );
    let fresh = AmazonS3Builder::new()
        .with_endpoint(url)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region("us-east-1")
        .with_bucket_name(BUCKET)
        .with_skip_signature(true)
        .with_retry(RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        })
        .build()
        .unwrap();
    assert!(fresh.get(&path("a")).await.is_err());
}

/// Prints the bandwidth of one GET of a 64 MiB object through the server (InMemory and
/// LocalFileSystem backends), and through s3s-fs 0.14.1 for comparison.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run in release mode with --ignored --nocapture"]
async fn one_get_throughput() {
    const SIZE: usize = 64 << 20;
    const RUNS: usize = 7;
    let data = Bytes::from(pattern(SIZE));

    // InMemory backend.
    let (server, backend) = start().await;
    backend
        .put(&path("big"), PutPayload::from(data.clone()))
        .await
        .unwrap();
    report("S3Server over InMemory", &client(&server), &data, RUNS).await;
    // The same GET read by a bare socket (1 MiB reads, bytes discarded): the server's
    // side alone, without the client's HTTP parsing and buffering.
    let anonymous = S3Server::start(backend.clone(), BUCKET, any_addr(), None)
        .await
        .unwrap();
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        let received = raw_get_len(anonymous.local_addr(), "big").await;
        times.push(start.elapsed());
        assert!(received > SIZE);
    }
    times.sort();
    let median = times[RUNS / 2];
    println!(
        "S3Server over InMemory, bare-socket reader: median {:.1} ms = {:.0} MB/s",
        median.as_secs_f64() * 1e3,
        SIZE as f64 / median.as_secs_f64() / 1e6
    );

    // LocalFileSystem backend (object_store reads files in 8 KiB chunks).
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    local
        .put(&path("big"), PutPayload::from(data.clone()))
        .await
        .unwrap();
    let credentials = Some((ACCESS_KEY.to_owned(), SECRET_KEY.to_owned()));
    let fs_server = S3Server::start(local, BUCKET, any_addr(), credentials)
        .await
        .unwrap();
    report(
        "S3Server over LocalFileSystem",
        &client(&fs_server),
        &data,
        RUNS,
    )
    .await;

    // s3s-fs over a tempdir, served the same way (hyper-util auto, TCP_NODELAY).
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join(BUCKET)).unwrap();
    let (addr, _task) = serve_s3s_fs(root.path()).await;
    let url = format!("http://{addr}");
    let s3s_fs_client = AmazonS3Builder::new()
        .with_endpoint(url)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region("us-east-1")
        .with_bucket_name(BUCKET)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .build()
        .unwrap();
    s3s_fs_client
        .put(&path("big"), PutPayload::from(data.clone()))
        .await
        .unwrap();
    report("s3s-fs 0.14.1 (tempdir)", &s3s_fs_client, &data, 3).await;
}

/// GETs `key` over a fresh connection and returns the response's length in bytes.
async fn raw_get_len(addr: SocketAddr, key: &str) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET /{BUCKET}/{key} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        match socket.read(&mut buf).await.unwrap() {
            0 => return total,
            n => total += n,
        }
    }
}

async fn report(name: &str, client: &AmazonS3, data: &Bytes, runs: usize) {
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let got = client
            .get(&path("big"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        times.push(start.elapsed());
        assert_eq!(got.len(), data.len());
    }
    assert_eq!(
        client
            .get(&path("big"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        *data
    );
    times.sort();
    let mb_s = |t: Duration| data.len() as f64 / t.as_secs_f64() / 1e6;
    let median = times[times.len() / 2];
    println!(
        "{name}: one GET of {} MiB: median {:.1} ms = {:.0} MB/s, best {:.0} MB/s ({runs} runs)",
        data.len() >> 20,
        median.as_secs_f64() * 1e3,
        mb_s(median),
        mb_s(times[0]),
    );
}

async fn serve_s3s_fs(root: &std::path::Path) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;

    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut b = s3s::service::S3ServiceBuilder::new(fs);
    b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = b.build();
    let listener = tokio::net::TcpListener::bind(any_addr()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            socket.set_nodelay(true).unwrap();
            let service = service.clone();
            tokio::spawn(async move {
                let handler = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let service = service.clone();
                    async move { service.call(req.map(s3s::Body::from)).await }
                });
                let _ = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), handler)
                    .await;
            });
        }
    });
    (addr, task)
}
