//! `getmany serve`, the binary: it prints its address, serves a directory of buckets to
//! BundleStore, and refuses to listen publicly without credentials.

#![cfg(feature = "cli")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use futures::StreamExt;
use getmany::{BundleStore, Request, Store};

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_its_address_and_serves_a_root_of_buckets() {
    let root = tempfile::tempdir().unwrap();
    for (bucket, key, data) in [("one", "a/b", "in one"), ("two", "c", "in two")] {
        let path = root.path().join(bucket).join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_getmany"))
        .args(["serve", "--root"])
        .arg(root.path())
        .args(["--listen", "127.0.0.1:0", "--token", "t"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first.strip_prefix("listening on ").unwrap().to_string();
    assert_eq!(lines.next().unwrap().unwrap(), "buckets: one, two");

    let tigris = BundleStore::tigris(&url, "one").build().unwrap();
    let got: Vec<_> = tigris
        .get_many(vec![Request::whole("a/b"), Request::whole("nope")])
        .collect()
        .await;
    assert_eq!(got.len(), 2);
    for (i, r) in got {
        match i {
            0 => assert_eq!(r.unwrap().unwrap(), "in one"),
            _ => assert_eq!(r.unwrap(), None),
        }
    }
    let aistore = BundleStore::aistore(&url, "two")
        .token("t")
        .build()
        .unwrap();
    assert_eq!(aistore.get("c", None).await.unwrap().unwrap(), "in two");
    drop(server);
}

#[test]
fn serve_refuses_a_public_address_without_credentials() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("b")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_getmany"))
        .args(["serve", "--root"])
        .arg(root.path())
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("without credentials"), "{stderr}");
}

#[test]
fn serve_takes_a_backend_budget_and_refuses_zero() {
    let root = tempfile::tempdir().unwrap();
    for bucket in ["one", "two"] {
        std::fs::create_dir(root.path().join(bucket)).unwrap();
    }
    let serve = |extra: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_getmany"))
            .args(["serve", "--root"])
            .arg(root.path())
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let server = Server(child);
        let lines: Vec<String> = BufReader::new(stdout)
            .lines()
            .take(3)
            .map(Result::unwrap)
            .collect();
        drop(server);
        lines
    };
    // The default for a directory: 16 batches in flight, per bucket.
    assert_eq!(serve(&[])[2], "backend budget: 16, 16");
    assert_eq!(serve(&["--backend-budget", "7"])[2], "backend budget: 7, 7");

    let output = Command::new(env!("CARGO_BIN_EXE_getmany"))
        .args(["serve", "--root"])
        .arg(root.path())
        .args(["--listen", "127.0.0.1:0", "--backend-budget", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--backend-budget"), "{stderr}");
}

/// `bench-bundle` on each backend, tiny: the served store gets the budget asked for and
/// every strategy reads every object (the command checks each answer).
#[test]
fn bench_bundle_runs_on_each_backend_with_its_budget() {
    for (backend, link, proxy) in [
        ("memory", "proxy", "threads"),
        ("dir", "proxy", "threads"),
        ("s3", "proxy", "threads"),
        ("s3", "late", "threads"),
        ("s3", "proxy", "async"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_getmany"))
            .args(["bench-bundle", "--objects", "16", "--size", "300"])
            .args(["--repeat", "1", "--rtt-ms", "0", "--backend-rtt-ms", "1"])
            .args(["--backend", backend, "--backend-budget", "3"])
            .args([
                "--backend-link",
                link,
                "--delay",
                "request",
                "--proxy",
                proxy,
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{backend}: {stdout}\n{stderr}");
        let described = stdout
            .lines()
            .find(|l| l.starts_with("backend: "))
            .unwrap_or_default();
        assert!(
            described.starts_with(&format!("backend: {backend} "))
                && described.contains("budget 3"),
            "{stdout}"
        );
        assert!(
            stdout.contains("| BundleStore, Tigris, one bundle"),
            "{stdout}"
        );
    }
}
