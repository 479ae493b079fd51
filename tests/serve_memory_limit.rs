//! `getmany serve`, the real binary, under an address-space limit (`prlimit --as`): requests
//! whose ranges ask for far more than the object holds (a GetBatch entry of length
//! `i64::MAX`, a plain GET of `bytes=1-18446744073709551614`) are answered with a 4xx, a
//! 416 placeholder (GetBatch ranges are exact) or, where ranges are clipped (plain GETs,
//! GetBatch with `x-getmany-ranges: clip`), with the bytes the object has, and the server is
//! still alive afterwards. Before the allocation fix the first such GetBatch made the server
//! allocate ~2 TiB and abort.

#![cfg(feature = "cli")]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The address-space limit the server runs under, 4 GiB (in bytes: util-linux 2.38's
/// prlimit crashes on a suffix such as `1G`). The server (tokio runtime, mimalloc's
/// reservations, DirStore's blocking threads with their stacks) runs under it (at 1 GiB it
/// aborted about one run in ten, out of address space for a new thread); an allocation
/// sized from a requested length (the bug allocated 2 TiB) cannot succeed under it.
const ADDRESS_SPACE_LIMIT: u64 = 4 << 30;

/// The object every request reads: 3 KiB.
fn small() -> Vec<u8> {
    (0..3 * 1024).map(|i| (i * 7 % 251) as u8).collect()
}

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    /// Fails the test, naming how the server ended, if it is no longer running.
    fn assert_alive(&mut self, after: &str) {
        self.check(after, false)
    }

    /// As `assert_alive`, after a request got no answer: a server that just crashed may
    /// need a moment to be reaped, so it is given one.
    fn assert_alive_after_error(&mut self, after: &str) {
        self.check(after, true)
    }

    /// The answer to a request, or (if there is none) a failure naming how the server
    /// ended, if it did.
    fn answered<T>(&mut self, what: &str, answer: Result<T, reqwest::Error>) -> T {
        match answer {
            Ok(answer) => answer,
            Err(e) => {
                self.assert_alive_after_error(what);
                panic!("{what}: no answer: {e}");
            }
        }
    }

    fn check(&mut self, after: &str, wait: bool) {
        for _ in 0..if wait { 50 } else { 0 } {
            if !matches!(self.0.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match self.0.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => {
                let mut stderr = String::new();
                if let Some(mut err) = self.0.stderr.take() {
                    let _ = err.read_to_string(&mut stderr);
                }
                panic!("the server died after {after}: {status}\nstderr:\n{stderr}");
            }
            Err(e) => panic!("cannot check the server after {after}: {e}"),
        }
    }
}

fn prlimit_present() {
    match Command::new("prlimit").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`prlimit --version` failed ({}); this test needs util-linux's prlimit to run the server under a memory limit",
            out.status
        ),
        Err(e) => panic!(
            "prlimit not found ({e}); this test needs util-linux's prlimit (apt-get install util-linux) to run the server under a memory limit"
        ),
    }
}

/// Starts `getmany serve` under the address-space limit, over a root holding bucket
/// `data` with `small.txt`.
fn start(root: &std::path::Path) -> (Server, String) {
    prlimit_present();
    let bucket = root.join("data");
    std::fs::create_dir_all(&bucket).unwrap();
    std::fs::write(bucket.join("small.txt"), small()).unwrap();
    let mut child = Command::new("prlimit")
        .arg(format!("--as={ADDRESS_SPACE_LIMIT}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_getmany"))
        .args(["serve", "--root"])
        .arg(root)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn prlimit getmany serve");
    let stdout = child.stdout.take().unwrap();
    let mut server = Server(child);
    let mut lines = BufReader::new(stdout).lines();
    let first = match lines.next() {
        Some(Ok(line)) => line,
        _ => {
            server.assert_alive_after_error("starting");
            panic!("the server printed no address");
        }
    };
    let url = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();
    // Keep reading stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (server, url)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The members of a tar body: (name, data).
fn tar_members(body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(body);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push((name, data));
    }
    out
}

/// The tar archive inside a GetBatch multipart body (the part after the metadata).
fn multipart_archive(body: &[u8]) -> &[u8] {
    let marker = b"name=\"archive\"";
    let at = body
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("a multipart body with an archive part");
    let start = at
        + body[at..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("the archive part's headers end")
        + 4;
    &body[start..]
}

/// Sends a GetBatch request; `None` if the server did not answer at all.
/// A GetBatch; `clip` sends `x-getmany-ranges: clip` (the `Store` trait's clipped ranges,
/// as `BundleStore` asks for them).
async fn moss(
    url: &str,
    body: serde_json::Value,
    clip: bool,
) -> Result<(u16, Vec<u8>), reqwest::Error> {
    let mut request = client()
        .get(format!("{url}/v1/ml/moss/data"))
        .header("content-type", "application/json");
    if clip {
        request = request.header("x-getmany-ranges", "clip");
    }
    let response = request.body(body.to_string()).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.bytes().await?.to_vec()))
}

/// Checks a GetBatch answer: a 4xx, or one member `data/small.txt` holding `want` (or the
/// 416 placeholder, for a range the object cannot serve, when `want` is `None`).
fn check_moss(
    server: &mut Server,
    what: &str,
    answer: Result<(u16, Vec<u8>), reqwest::Error>,
    want: Option<&[u8]>,
) {
    let (status, body) = server.answered(what, answer);
    if (400..500).contains(&status) {
        return;
    }
    assert_eq!(status, 200, "{what}: {}", String::from_utf8_lossy(&body));
    let archive = if body.starts_with(b"--") {
        multipart_archive(&body)
    } else {
        &body[..]
    };
    let members = tar_members(archive);
    assert_eq!(
        members.len(),
        1,
        "{what}: {:?}",
        members.iter().map(|m| &m.0).collect::<Vec<_>>()
    );
    match want {
        Some(want) => {
            assert_eq!(members[0].0, "data/small.txt", "{what}");
            assert!(
                members[0].1 == want,
                "{what}: {} bytes, want {}",
                members[0].1.len(),
                want.len()
            );
        }
        None => assert!(members[0].0.starts_with("__"), "{what}: {:?}", members[0].0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_under_a_memory_limit_answers_huge_ranges_and_stays_up() {
    let root = tempfile::tempdir().unwrap();
    let (mut server, url) = start(root.path());
    let small = small();

    // The GetBatch entry of the issue: start 1, length i64::MAX; streamed and multipart;
    // exact (out of bounds: a placeholder) and clipped.
    for strm in [true, false] {
        for (clip, want) in [(false, None), (true, Some(&small[1..]))] {
            let body = serde_json::json!({
                "in": [{"objname": "small.txt", "start": 1, "length": i64::MAX}],
                "strm": strm, "coer": true, "mime": ".tar"
            });
            let what = format!("GetBatch start 1 length i64::MAX (strm {strm}, clip {clip})");
            check_moss(&mut server, &what, moss(&url, body, clip).await, want);
            server.assert_alive(&what);
        }
    }
    // Other huge lengths, and a start far past the end: out of bounds when exact; clipped
    // with the header, except a start past the end.
    for (start, length, clipped) in [
        (0i64, i64::MAX, Some(&small[..])),
        (100, i64::MAX - 100, Some(&small[100..])),
        (1, 1 << 40, Some(&small[1..])),
        (3000, 1 << 34, Some(&small[3000..])),
        (i64::MAX - 1, 1, None),
        (1 << 40, 1 << 40, None),
    ] {
        for (clip, want) in [(false, None), (true, clipped)] {
            let body = serde_json::json!({
                "in": [{"objname": "small.txt", "start": start, "length": length}],
                "strm": true, "coer": true
            });
            let what = format!("GetBatch start {start} length {length} (clip {clip})");
            check_moss(&mut server, &what, moss(&url, body, clip).await, want);
            server.assert_alive(&what);
        }
    }

    // Plain ranged GETs of the S3 interface. (s3s answers 400 to the first, an end it
    // does not parse; the second is clipped to the object.)
    for range in [
        "bytes=1-18446744073709551614",
        "bytes=1-9223372036854775806",
    ] {
        let what = format!("GET {range}");
        let response = client()
            .get(format!("{url}/data/small.txt"))
            .header("range", range)
            .send()
            .await;
        let response = server.answered(&what, response);
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap();
        if !(400..500).contains(&status) {
            assert_eq!(status, 206, "{what}");
            assert!(body[..] == small[1..], "{what}: {} bytes", body.len());
        }
        server.assert_alive(&what);
    }

    // A Tigris bundle of the object.
    let what = "Tigris bundle";
    let response = client()
        .post(format!("{url}/data?bundle"))
        .header("x-tigris-bundle-format", "tar")
        .body(serde_json::json!({"keys": ["small.txt"]}).to_string())
        .send()
        .await;
    let response = server.answered(what, response);
    assert_eq!(response.status(), 200, "{what}");
    let members = tar_members(&response.bytes().await.unwrap());
    assert_eq!(members.len(), 1, "{what}");
    assert!(members[0].1 == small, "{what}");
    server.assert_alive(what);

    // Still serving after all of it.
    let got = client()
        .get(format!("{url}/data/small.txt"))
        .send()
        .await
        .expect("the server answers after the huge ranges");
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap()[..] == small[..]);
    server.assert_alive("the last GET");
}
