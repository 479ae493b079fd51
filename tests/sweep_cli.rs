//! `getmany bench`, the binary, on tiny cells: every strategy answers every request (the
//! sweep checks each answer and fails otherwise), and the CSV's counts of requests and bytes
//! are the ones each strategy must make.

#![cfg(feature = "cli")]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

const STRATEGIES: [&str; 7] = [
    "loop",
    "default",
    "coalesce",
    "tar",
    "zip",
    "bundle-tigris",
    "bundle-aistore",
];

/// A CSV row by column name.
type Row = HashMap<String, String>;

/// Runs `getmany bench` with `args`; returns its stdout and the CSV rows by (size, batch,
/// strategy).
fn sweep(args: &[&str], out: &Path) -> (String, HashMap<(u64, u64, String), Row>) {
    let output = Command::new(env!("CARGO_BIN_EXE_getmany"))
        .arg("bench")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the sweep failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut reader = csv::Reader::from_path(out.join("bench.csv")).unwrap();
    let header = reader.headers().unwrap().clone();
    let mut rows = HashMap::new();
    for record in reader.records() {
        let record = record.unwrap();
        let row: Row = header
            .iter()
            .zip(record.iter())
            .map(|(h, v)| (h.to_string(), v.to_string()))
            .collect();
        let key = (
            row["object_bytes"].parse().unwrap(),
            row["batch"].parse().unwrap(),
            row["strategy"].clone(),
        );
        assert!(rows.insert(key, row).is_none(), "a cell twice");
    }
    (stdout, rows)
}

fn num(row: &Row, column: &str) -> u64 {
    row[column].parse().unwrap()
}

#[test]
fn every_strategy_reads_every_object_with_the_requests_it_should() {
    let out = tempfile::tempdir().unwrap();
    let (stdout, rows) = sweep(
        &[
            "--sizes",
            "1KiB,4KiB",
            "--batches",
            "16,600",
            "--strategies",
            &STRATEGIES.join(","),
            "--rtt-ms",
            "0",
            "--repeat",
            "1",
            "--link-probe",
            "1MiB",
        ],
        out.path(),
    );
    assert_eq!(rows.len(), 2 * 2 * STRATEGIES.len(), "{stdout}");
    for size in [1024u64, 4096] {
        for batch in [16u64, 600] {
            for strategy in STRATEGIES {
                let row = &rows[&(size, batch, strategy.to_string())];
                let payload = size * batch;
                assert_eq!(num(row, "bytes_asked"), payload);
                let requests = num(row, "requests");
                let fetched = num(row, "bytes_fetched");
                let what =
                    format!("{batch} x {size} {strategy}: {requests} requests, {fetched} bytes");
                match strategy {
                    // One GET per object (the loop timed on 20 and scaled: exactly).
                    "loop" | "default" => {
                        assert_eq!(requests, batch, "{what}");
                        assert_eq!(fetched, payload, "{what}");
                    }
                    // The batch is its whole shard: one merged GET of exactly the payload.
                    "coalesce" => {
                        assert_eq!(requests, 1, "{what}");
                        assert_eq!(fetched, payload, "{what}");
                    }
                    // The shard's members (and the headers between them) in one GET.
                    "tar" => {
                        assert_eq!(requests, 1, "{what}");
                        assert_eq!(fetched, batch * (512 + size) - 512, "{what}");
                    }
                    "zip" => {
                        assert_eq!(requests, 1, "{what}");
                        assert!(
                            fetched > payload && fetched < payload + batch * 64 + 2048,
                            "{what}"
                        );
                    }
                    // Counted at the bundle server: one bundle, or two of 300 keys (the
                    // store spreads a batch over bundles of at least 256 keys).
                    _ => {
                        assert_eq!(requests, if batch == 16 { 1 } else { 2 }, "{what}");
                        assert_eq!(fetched, batch * (512 + size) + requests * 1024, "{what}");
                    }
                }
            }
        }
    }
    assert!(stdout.contains("## 1 KiB objects") && stdout.contains("## 4 KiB objects"));
    assert!(stdout.contains("built once before timing"));
    let svg = std::fs::read_to_string(out.path().join("speedup.svg")).unwrap();
    assert!(svg.contains("bundle-aistore: speed-up"));
}

#[test]
fn the_proxy_target_serves_every_strategy_through_the_tcp_proxy() {
    let out = tempfile::tempdir().unwrap();
    let (stdout, rows) = sweep(
        &[
            "--proxy",
            "--rtt-ms",
            "1",
            "--bandwidth-mbps",
            "2000",
            "--sizes",
            "4KiB",
            "--batches",
            "300",
            "--strategies",
            "default,coalesce,tar,bundle",
            "--bundle-protocol",
            "tigris",
            "--repeat",
            "1",
            "--link-probe",
            "1MiB",
        ],
        out.path(),
    );
    assert!(stdout.contains("TCP delay proxy"), "{stdout}");
    assert_eq!(rows.len(), 4);
    let bundle = &rows[&(4096, 300, "bundle-tigris".to_string())];
    assert_eq!(num(bundle, "requests"), 1);
    assert_eq!(
        num(&rows[&(4096, 300, "default".to_string())], "requests"),
        300
    );
}

#[test]
fn a_remote_target_without_a_bundle_endpoint_skips_the_bundle_strategy() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let url = format!("file://{}", data.path().display());
    let (stdout, rows) = sweep(
        &[
            "--url",
            &url,
            "--cleanup",
            "--sizes",
            "1KiB",
            "--batches",
            "20",
            "--strategies",
            "default,zip,bundle",
            "--repeat",
            "1",
            "--link-probe",
            "1MiB",
        ],
        out.path(),
    );
    assert!(
        stdout.contains("Strategy bundle-aistore skipped: no bundle endpoint named"),
        "{stdout}"
    );
    let mut strategies: Vec<&str> = rows.keys().map(|k| k.2.as_str()).collect();
    strategies.sort();
    assert_eq!(strategies, ["default", "zip"]);
    // --cleanup leaves nothing behind.
    let left: Vec<_> = walk(data.path());
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn bad_options_are_named() {
    let out = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_getmany"))
            .arg("bench")
            .args(args)
            .arg("--out")
            .arg(out.path())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} accepted");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    assert!(run(&["--sizes", "16kb"]).contains("\"16kb\""));
    assert!(run(&["--fill", "0"]).contains("--fill"));
    assert!(run(&["--proxy", "--url", "file:///tmp"]).contains("--url"));
    assert!(run(&["--bundle-url", "http://x"]).contains("--url"));
}
