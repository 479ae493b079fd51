//! The bundle server tried as an attacker would, over real HTTP on loopback: nothing outside
//! the served root, no work or permit before authentication, no Signature Version 2, every
//! connection bounded in time and number, error bodies that name keys and never the disk.
//! (Allocation bounds: tests/get_many_bounds.rs.)

#![cfg(all(feature = "server", feature = "bundle", feature = "dir"))]

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use getmany::server::{BundleServer, Limits};
use getmany::{BundleStore, ByteRange, DirStore, Error, IoBudget, Request, Store};
use hmac::{KeyInit, Mac};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "TOP-SECRET-8d1f0c";

/// `outside/` holds a secret file and a tar holding it; `root/data/` is the served bucket,
/// with an honest file and links that leave the root in every way.
fn escape_layout() -> tempfile::TempDir {
    let top = tempfile::tempdir().unwrap();
    let outside = top.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(SECRET.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, "m.txt", SECRET.as_bytes())
        .unwrap();
    std::fs::write(outside.join("secret.tar"), tar.into_inner().unwrap()).unwrap();

    let data = top.path().join("root/data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("ok.txt"), "fine").unwrap();
    let link = |target: &Path, name: &str| std::os::unix::fs::symlink(target, data.join(name));
    link(&outside.join("secret.txt"), "abs").unwrap();
    link(Path::new("../../outside/secret.txt"), "rel").unwrap();
    link(Path::new("../../../outside/secret.txt"), "sub/deeper").unwrap();
    link(Path::new("../../outside"), "dirlink").unwrap();
    link(&outside.join("secret.tar"), "arch.tar").unwrap();
    // A link that stays inside the root is followed.
    link(Path::new("ok.txt"), "inside").unwrap();
    top
}

const ESCAPES: [&str; 5] = ["abs", "rel", "sub/deeper", "dirlink/secret.txt", "arch.tar"];

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap()
}

async fn serve_dir(root: &Path, limits: Limits) -> BundleServer {
    BundleServer::builder()
        .bucket("data", Arc::new(DirStore::open(root.join("data")).unwrap()))
        .limits(limits)
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn assert_no_secret(what: &str, body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    assert!(!text.contains(SECRET), "{what} leaked the secret: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_out_of_the_root_are_never_served_on_any_route() {
    let top = escape_layout();
    let server = serve_dir(&top.path().join("root"), Limits::default()).await;
    let http = client();

    for key in ESCAPES {
        let url = format!("{}/data/{key}", server.url());
        let get = http.get(&url).send().await.unwrap();
        let status = get.status();
        let body = get.bytes().await.unwrap();
        assert!(status.is_client_error(), "GET {key}: {status}");
        assert_no_secret(&format!("GET {key}"), &body);
        let head = http.head(&url).send().await.unwrap();
        assert!(head.status().is_client_error(), "HEAD {key}: {head:?}");
        assert_ne!(
            head.headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok()),
            Some(SECRET.len().to_string().as_str()),
            "HEAD {key} revealed the size"
        );
        let ranged = http
            .get(&url)
            .header("range", "bytes=0-3")
            .send()
            .await
            .unwrap();
        assert!(ranged.status().is_client_error(), "ranged GET {key}");
        assert_no_secret("ranged GET", &ranged.bytes().await.unwrap());
    }
    // Links inside the root are followed.
    let inside = http
        .get(format!("{}/data/inside", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(inside.status(), 200);
    assert_eq!(inside.bytes().await.unwrap(), "fine");

    // A Tigris bundle naming them: the honest keys arrive, the others are skipped.
    let mut keys: Vec<&str> = ESCAPES.to_vec();
    keys.push("ok.txt");
    let response = http
        .post(format!("{}/data?bundle", server.url()))
        .body(serde_json::json!({ "keys": keys }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();
    assert_no_secret("the Tigris bundle", &body);
    let names = tar_names(&body);
    assert!(names.contains(&"ok.txt".to_string()), "{names:?}");
    for key in ESCAPES {
        assert!(!names.contains(&key.to_string()), "{key} served: {names:?}");
    }

    // GetBatch, with and without `coer`, plain entries and an archive member.
    let mut entries: Vec<serde_json::Value> = ESCAPES
        .iter()
        .map(|k| serde_json::json!({ "objname": k }))
        .collect();
    entries.push(serde_json::json!({ "objname": "arch.tar", "archpath": "m.txt" }));
    entries.push(serde_json::json!({ "objname": "ok.txt" }));
    for coer in [true, false] {
        let response = http
            .get(format!("{}/v1/ml/moss/data", server.url()))
            .body(serde_json::json!({ "in": entries, "coer": coer, "strm": true }).to_string())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.bytes().await.unwrap();
        assert_no_secret(&format!("GetBatch coer={coer}"), &body);
        if coer {
            assert_eq!(status, 200);
            let names = tar_names(&body);
            assert_eq!(names.last().map(String::as_str), Some("data/ok.txt"));
            assert_eq!(
                names.iter().filter(|n| n.starts_with("__404__/")).count(),
                ESCAPES.len() + 1,
                "{names:?}"
            );
        } else {
            assert!(status.is_client_error(), "{status}");
        }
    }
}

/// The `getmany serve --root` binary, on a free port; killed when dropped.
struct ServeProcess {
    child: std::process::Child,
    url: String,
}

impl ServeProcess {
    fn start(args: &[&str]) -> ServeProcess {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_getmany"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = Vec::new();
        let mut stdout = child.stdout.take().unwrap();
        let mut byte = [0u8];
        while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8(line).unwrap();
        let url = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        ServeProcess { child, url }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_root_refuses_symlinks_out_of_the_root() {
    let top = escape_layout();
    let root = top.path().join("root");
    let url = format!("file://{}", root.join("data").display());
    let by_root = ["--root", root.to_str().unwrap()];
    let by_url = ["--url", url.as_str(), "--bucket", "data"];
    for args in [&by_root[..], &by_url[..]] {
        let serve = ServeProcess::start(args);
        let http = client();
        for key in ESCAPES {
            let response = http
                .get(format!("{}/data/{key}", serve.url))
                .send()
                .await
                .unwrap();
            let status = response.status();
            assert!(status.is_client_error(), "{args:?}: GET {key}: {status}");
            assert_no_secret(key, &response.bytes().await.unwrap());
        }
        let ok = http
            .get(format!("{}/data/ok.txt", serve.url))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.bytes().await.unwrap(), "fine", "{args:?}");
        let response = http
            .post(format!("{}/data?bundle", serve.url))
            .body(serde_json::json!({ "keys": ESCAPES }).to_string())
            .send()
            .await
            .unwrap();
        assert_no_secret("bundle", &response.bytes().await.unwrap());
    }
}

fn tar_names(body: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(body);
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// A server with keys `ak`/`sk` and token `tok` over a bucket holding `ok.txt`.
async fn signed_server(limits: Limits) -> (tempfile::TempDir, BundleServer) {
    let top = escape_layout();
    let server = BundleServer::builder()
        .bucket(
            "data",
            Arc::new(DirStore::open(top.path().join("root/data")).unwrap()),
        )
        .credentials("ak", "sk")
        .token("tok")
        .limits(limits)
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (top, server)
}

fn sig_v2(string_to_sign: &str) -> String {
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(b"sk").unwrap();
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_v2_is_refused_even_when_correctly_signed() {
    let (_top, server) = signed_server(Limits::default()).await;
    let http = client();
    // A correct SigV2 header signature, dated 2001: replayable forever if accepted.
    let date = "Mon, 01 Jan 2001 00:00:00 GMT";
    let signature = sig_v2(&format!("GET\n\n\n{date}\n/data/ok.txt"));
    let response = http
        .get(format!("{}/data/ok.txt", server.url()))
        .header("date", date)
        .header("authorization", format!("AWS ak:{signature}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body = response.text().await.unwrap();
    assert!(body.contains("Signature Version 2"), "{body}");

    // A correct SigV2 presigned URL.
    let expires = "4102444800"; // 2100-01-01
    let signature = sig_v2(&format!("GET\n\n\n{expires}\n/data/ok.txt"));
    let url = reqwest::Url::parse_with_params(
        &format!("{}/data/ok.txt", server.url()),
        &[
            ("AWSAccessKeyId", "ak"),
            ("Expires", expires),
            ("Signature", signature.as_str()),
        ],
    )
    .unwrap();
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 403);

    // A SigV2-signed bundle (its body is not covered by the signature).
    let date = httpdate_now();
    let signature = sig_v2(&format!("POST\n\napplication/json\n{date}\n/data"));
    let response = http
        .post(format!("{}/data?bundle", server.url()))
        .header("date", &date)
        .header("content-type", "application/json")
        .header("authorization", format!("AWS ak:{signature}"))
        .body(r#"{"keys":["ok.txt"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(server.stats().bundles(), 0);

    // SigV4 still works.
    let store = BundleStore::tigris(server.url(), "data")
        .credentials("ak", "sk")
        .build()
        .unwrap();
    assert_eq!(store.get("ok.txt", None).await.unwrap().unwrap(), "fine");
}

fn httpdate_now() -> String {
    // RFC 1123 without a date crate: the weekday and month names from the day count.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let days = secs / 86_400;
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let month_name = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!("{weekday}, {day:02} {month_name} {year} {h:02}:{m:02}:{s:02} GMT")
}

/// Sends `head` on a new connection and returns the status code of the answer, read within
/// 10 s (a server that waits for a body that never comes fails the test).
async fn status_of_raw(addr: SocketAddr, head: &str) -> (u16, TcpStream) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf))
        .await
        .expect("the server must answer without waiting for the body")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, socket)
}

/// A request body that counts the bytes the server pulled from it.
struct CountingBody {
    sent: Arc<AtomicU64>,
    left: u64,
}

impl Stream for CountingBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(1 << 20);
        self.left -= n;
        self.sent.fetch_add(n, Ordering::Relaxed);
        Poll::Ready(Some(Ok(Bytes::from(vec![b'x'; n as usize]))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_read_no_body_and_take_no_permit() {
    let limits = Limits {
        max_in_flight: 1,
        ..Limits::default()
    };
    let (_top, server) = signed_server(limits).await;
    let addr = server.local_addr();

    // A multipart form upload of 256 MiB: refused before its body is read.
    let sent = Arc::new(AtomicU64::new(0));
    let body = CountingBody {
        sent: sent.clone(),
        left: 256 << 20,
    };
    let response = client()
        .post(format!("{}/data", server.url()))
        .header("content-type", "multipart/form-data; boundary=zz")
        .header("content-length", (256u64 << 20).to_string())
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status(), 400);
    }
    let pulled = sent.load(Ordering::Relaxed);
    assert!(
        pulled < 64 << 20,
        "the server read {pulled} bytes of an unauthenticated upload"
    );

    // Bundle requests whose bodies never come: answered at once, holding nothing.
    let (status, _held1) = status_of_raw(
        addr,
        "POST /data?bundle HTTP/1.1\r\nhost: x\r\ncontent-type: multipart/form-data; boundary=zz\r\ncontent-length: 100000\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    let (status, _held2) = status_of_raw(
        addr,
        "POST /data?bundle HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n",
    )
    .await;
    assert_eq!(status, 403);
    let (status, _held3) = status_of_raw(
        addr,
        "GET /v1/ml/moss/data HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n",
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(server.bundles_in_flight(), 0);
    assert_eq!(server.stats().bundles(), 0);

    // While those sockets stay open, a signed client gets the one permit.
    let store = BundleStore::tigris(server.url(), "data")
        .credentials("ak", "sk")
        .build()
        .unwrap();
    let answers: Vec<_> = store
        .get_many(vec![Request::whole("ok.txt"), Request::whole("inside")])
        .collect()
        .await;
    for (i, answer) in answers {
        assert_eq!(answer.unwrap().unwrap(), "fine", "{i}");
    }
    assert_eq!(server.stats().overloaded(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aistore_routes_answer_401_without_valid_credentials_and_403_for_a_bad_signature() {
    let (_top, server) = signed_server(Limits::default()).await;
    let url = format!("{}/v1/ml/moss/data", server.url());
    let body = r#"{"in":[{"objname":"ok.txt"}]}"#;
    for authorization in [
        None,
        Some(""),
        Some("Garbage"),
        Some("Bearer"),
        Some("Bearer nope"),
    ] {
        let mut request = client().get(&url).body(body);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "Authorization {authorization:?}");
        let json: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(json["status"], 401, "{json}");
    }
    let wrong_key = BundleStore::aistore(server.url(), "data")
        .credentials("ak", "wrong")
        .build()
        .unwrap();
    let error = wrong_key.get("ok.txt", None).await.unwrap_err();
    assert!(error.to_string().contains("403"), "{error}");
    let token = BundleStore::aistore(server.url(), "data")
        .token("tok")
        .build()
        .unwrap();
    assert_eq!(token.get("ok.txt", None).await.unwrap().unwrap(), "fine");
}

/// Waits (at most 20 s) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..400 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: still not the case after 20 s");
}

/// Whether the server closed `socket` (EOF or reset) within 10 s.
async fn closed_by_server(socket: &mut TcpStream) -> bool {
    let mut buf = vec![0u8; 64 << 10];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_header_connections_are_closed_and_connections_are_capped() {
    let top = escape_layout();
    let limits = Limits {
        max_connections: 8,
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = serve_dir(&top.path().join("root"), limits).await;
    let addr = server.local_addr();

    // Twenty sockets that never send a byte.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    for (i, socket) in idle.iter_mut().enumerate() {
        assert!(closed_by_server(socket).await, "idle socket {i} still open");
    }
    let stats = server.connections();
    assert!(stats.peak_open() <= 8, "peak {}", stats.peak_open());
    assert!(stats.refused() >= 12, "refused {}", stats.refused());
    assert!(
        stats.closed_idle() >= 8,
        "closed idle {}",
        stats.closed_idle()
    );

    // A request head sent a byte at a time: the trickle does not extend the limit.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let head = b"GET /data/ok.txt HTTP/1.1\r\nhost: x\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut cut = false;
    for byte in head {
        if slow.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(
        cut || closed_by_server(&mut slow).await,
        "slow head kept open"
    );

    // A keep-alive connection left idle after one request is closed.
    let (status, mut kept) =
        status_of_raw(addr, "GET /data/ok.txt HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    assert!(
        closed_by_server(&mut kept).await,
        "idle keep-alive kept open"
    );

    // And the server still serves.
    let response = client()
        .get(format!("{}/data/ok.txt", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    eventually("connections closed", || server.connections().open() <= 1).await;
}

/// A bucket of `n` files of `size` bytes each.
fn big_root(n: usize, size: usize) -> tempfile::TempDir {
    let top = tempfile::tempdir().unwrap();
    let data = top.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..n {
        std::fs::write(data.join(format!("f{i}")), vec![i as u8; size]).unwrap();
    }
    top
}

fn bundle_head(n: usize) -> String {
    let keys: Vec<String> = (0..n).map(|i| format!("f{i}")).collect();
    let body = serde_json::json!({ "keys": keys }).to_string();
    format!(
        "POST /data?bundle HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_permit() {
    let top = big_root(16, 8 << 20);
    let limits = Limits {
        max_in_flight: 1,
        stall_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let server = serve_dir(top.path(), limits).await;
    // 128 MiB asked for; the client reads the first bytes, then nothing.
    let (status, _stalled) = status_of_raw(server.local_addr(), &bundle_head(16)).await;
    assert_eq!(status, 200);
    assert_eq!(server.bundles_in_flight(), 1);
    eventually("the stalled bundle's permit is freed", || {
        server.bundles_in_flight() == 0
    })
    .await;
    assert_eq!(server.connections().closed_stalled(), 1);
    // The permit serves the next client.
    let response = client()
        .post(format!("{}/data?bundle", server.url()))
        .body(r#"{"keys":["f1","f2"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(tar_names(&response.bytes().await.unwrap()), ["f1", "f2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_bounds_a_slowly_read_response() {
    let top = big_root(16, 8 << 20);
    let limits = Limits {
        request_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let server = serve_dir(top.path(), limits).await;
    let mut socket = TcpStream::connect(server.local_addr()).await.unwrap();
    socket.write_all(bundle_head(16).as_bytes()).await.unwrap();
    // Reading steadily, 64 KiB every 50 ms (~1.3 MB/s), would take ~100 s for 128 MiB.
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0usize;
    let started = std::time::Instant::now();
    loop {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never cut");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        total < 128 << 20,
        "read {total} bytes: the response was not cut"
    );
    eventually("the connection is counted", || {
        server.connections().closed_overtime() == 1
    })
    .await;
    assert_eq!(server.bundles_in_flight(), 0);
}

/// A store whose reads fail with a backend error naming a path of the server's disk, as
/// object_store's local file system does.
#[derive(Debug, Default)]
struct LeakyBackend {
    budget: IoBudget,
}

const DISK_PATH: &str = "/srv/private/disk-layout-7f3a";

#[getmany::async_trait]
impl Store for LeakyBackend {
    async fn get(&self, key: &str, _range: Option<ByteRange>) -> getmany::Result<Option<Bytes>> {
        if key == "ok.txt" {
            return Ok(Some(Bytes::from_static(b"fine")));
        }
        Err(Error::backend(
            "object_store",
            key,
            std::io::Error::other(format!("Unable to open file {DISK_PATH}/{key}: I/O error")),
        ))
    }

    async fn size(&self, key: &str) -> getmany::Result<Option<u64>> {
        self.get(key, None).await.map(|b| b.map(|b| b.len() as u64))
    }

    fn io_budget(&self) -> &IoBudget {
        &self.budget
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_name_the_key_never_a_path_of_the_disk() {
    let server = BundleServer::builder()
        .bucket("data", Arc::new(LeakyBackend::default()))
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let http = client();
    let mut bodies = Vec::new();
    let get = http
        .get(format!("{}/data/broken.bin", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 500);
    bodies.push(("GET", get.bytes().await.unwrap()));
    for mode in ["skip", "fail"] {
        let response = http
            .post(format!("{}/data?bundle", server.url()))
            .header("x-tigris-bundle-on-error", mode)
            .body(r#"{"keys":["ok.txt","broken.bin"]}"#)
            .send()
            .await
            .unwrap();
        bodies.push(("bundle", response.bytes().await.unwrap()));
    }
    for coer in [true, false] {
        for strm in [true, false] {
            let response = http
                .get(format!("{}/v1/ml/moss/data", server.url()))
                .body(
                    serde_json::json!({
                        "in": [{"objname": "ok.txt"}, {"objname": "broken.bin"}],
                        "coer": coer,
                        "strm": strm,
                    })
                    .to_string(),
                )
                .send()
                .await
                .unwrap();
            bodies.push(("GetBatch", response.bytes().await.unwrap()));
        }
    }
    for (what, body) in bodies {
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains(DISK_PATH),
            "{what} shows a disk path: {text}"
        );
        assert!(
            text.contains("broken.bin"),
            "{what} does not name the key: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_reader_is_not_taken_for_a_stalled_one() {
    // A bundle of two 16 MiB objects leaves as two 16 MiB frames; the client takes ~4 s to
    // read each, longer than the stall timeout, but bytes keep leaving for the socket (in bursts:
    // the kernel wakes a writer only once a good part of the send buffer is free).
    let top = big_root(2, 16 << 20);
    let limits = Limits {
        stall_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let server = serve_dir(top.path(), limits).await;
    let mut socket = TcpStream::connect(server.local_addr()).await.unwrap();
    socket.write_all(bundle_head(2).as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0usize;
    // Until the end of the tar (two 8 MiB members and their headers), or the server cuts it.
    while total < 32 << 20 {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let c = server.connections();
    assert!(
        total > 32 << 20,
        "read only {total} bytes; closed idle {} stalled {} overtime {}",
        c.closed_idle(),
        c.closed_stalled(),
        c.closed_overtime()
    );
    assert_eq!(server.connections().closed_stalled(), 0);
}
