//! ArchiveStore against archives written by other tools (Python's tarfile and zipfile, GNU
//! tar, Info-ZIP, the webdataset package; see tests/fixtures/archive/make_fixtures.py),
//! compared byte for byte with what Python read from the same files (expected.json).
#![cfg(feature = "archive")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use getmany::archive::{ArchiveStore, zip};
use getmany::{ByteRange, ObjectStoreStore, Request, Store};
use sha2::{Digest, Sha256};

/// The committed fixtures, or a freshly generated set (CI sets `GETMANY_ARCHIVE_FIXTURES`
/// to the output of `make_fixtures.py --out DIR`).
fn fixtures() -> PathBuf {
    match std::env::var_os("GETMANY_ARCHIVE_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/archive"),
    }
}

struct Expected {
    archives: BTreeMap<String, BTreeMap<String, (u64, String)>>,
    cp437_high: String,
}

fn expected() -> Expected {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut archives = BTreeMap::new();
    for (archive, members) in doc["archives"].as_object().unwrap() {
        let mut m = BTreeMap::new();
        for (name, v) in members.as_object().unwrap() {
            m.insert(
                name.clone(),
                (
                    v["size"].as_u64().unwrap(),
                    v["sha256"].as_str().unwrap().to_string(),
                ),
            );
        }
        archives.insert(archive.clone(), m);
    }
    Expected {
        archives,
        cp437_high: doc["cp437_high"].as_str().unwrap().to_string(),
    }
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn store() -> ArchiveStore<ObjectStoreStore> {
    let fs = object_store::local::LocalFileSystem::new_with_prefix(fixtures()).unwrap();
    let mut store = ArchiveStore::new(ObjectStoreStore::new(Arc::new(fs)));
    // The fixtures directory is read-only input: no sidecars are looked for.
    store.config_mut().read_sidecars = false;
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_reads_as_python_reads_it() {
    let expected = expected();
    assert!(expected.archives.len() >= 13, "fixtures missing");
    let store = store();
    let mut requests = Vec::new();
    let mut want = Vec::new();
    for (archive, members) in &expected.archives {
        // Same member set: nothing missing, nothing extra (directories and links skipped).
        if !archive.ends_with(".tar.gz") {
            let index = store.index(archive).await.unwrap().unwrap();
            assert_eq!(index.damage, None, "{archive}");
            let ours: BTreeSet<&str> = index.members().map(|(n, _)| n).collect();
            let python: BTreeSet<&str> = members.keys().map(String::as_str).collect();
            assert_eq!(ours, python, "{archive}: member names");
        }
        for (name, (size, sha)) in members {
            requests.push(Request::whole(format!("{archive}/{name}")));
            want.push((*size, sha.clone()));
        }
    }
    // One batch over every archive, then one get each: both byte for byte.
    let answers: Vec<_> = store.get_many(requests.clone()).collect().await;
    assert_eq!(answers.len(), requests.len());
    for (i, got) in answers {
        let got = got
            .unwrap_or_else(|e| panic!("{}: {e}", requests[i].key))
            .unwrap_or_else(|| panic!("{}: missing", requests[i].key));
        assert_eq!(got.len() as u64, want[i].0, "{}", requests[i].key);
        assert_eq!(sha256(&got), want[i].1, "{}", requests[i].key);
    }
    for (r, (size, sha)) in requests.iter().zip(&want) {
        let got = store.get(&r.key, None).await.unwrap().unwrap();
        assert_eq!(
            (got.len() as u64, sha256(&got)),
            (*size, sha.clone()),
            "{}",
            r.key
        );
        assert_eq!(store.size(&r.key).await.unwrap(), Some(*size), "{}", r.key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_of_members_are_slices_of_the_whole() {
    let expected = expected();
    let store = store();
    for (archive, members) in &expected.archives {
        for (name, (size, _)) in members {
            let key = format!("{archive}/{name}");
            let whole = store.get(&key, None).await.unwrap().unwrap();
            let size = *size;
            let mut requests = vec![
                Request::range(&key, ByteRange::Suffix(7)),
                Request::range(&key, ByteRange::Offset(size / 2)),
                Request::range(&key, 0..size.max(1) + 100),
            ];
            if size > 10 {
                requests.push(Request::range(&key, size / 3..size / 3 + 10));
                requests.push(Request::range(&key, size - 1..size));
            }
            let answers: Vec<_> = store.get_many(requests.clone()).collect().await;
            for (i, got) in answers {
                let got = got.unwrap_or_else(|e| panic!("{}: {e}", requests[i]));
                let range = requests[i].range.clone().unwrap();
                let r = range.resolve(size).unwrap();
                assert_eq!(
                    &got.unwrap()[..],
                    &whole[r.start as usize..r.end as usize],
                    "{}",
                    requests[i]
                );
            }
            if size > 0 {
                let past = store
                    .get(&key, Some(ByteRange::Offset(size)))
                    .await
                    .unwrap_err();
                assert!(
                    matches!(past, getmany::Error::InvalidRange { .. }),
                    "{past}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_for_names() {
    let store = store();
    // The later of two members with one name wins, as in Python (tar and zip).
    let dup = store
        .get("py_gnu.tar/dup.txt", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&dup[..], b"second copy wins\n");
    let dup = store
        .get("py_deflated.zip/hello.txt", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&dup[..], b"a later duplicate wins\n");
    // `..` and absolute names are only keys.
    for archive in ["py_pax.tar", "py_stored.zip"] {
        let got = store
            .get(&format!("{archive}/../escape.txt"), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], b"only a key\n");
        let got = store
            .get(&format!("{archive}//abs/path.txt"), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], b"also only a key\n");
    }
    // Directories and symlinks are not members; missing members read as None.
    for key in [
        "py_ustar.tar/dir",
        "py_ustar.tar/link-to-hello",
        "py_stored.zip/dir/",
        "py_stored.zip/nothing",
        "gnutar_gnu.tar/./link",
    ] {
        assert_eq!(store.get(key, None).await.unwrap(), None, "{key}");
    }
    // The archive itself, and keys outside any archive, go to the inner store.
    let whole = store.get("py_stored.zip", None).await.unwrap().unwrap();
    assert_eq!(
        whole.len() as u64,
        std::fs::metadata(fixtures().join("py_stored.zip"))
            .unwrap()
            .len()
    );
    assert_eq!(
        store
            .get("expected.json", Some((0..1).into()))
            .await
            .unwrap()
            .unwrap(),
        "{"
    );
}

#[test]
fn cp437_matches_python() {
    let expected = expected();
    let ours: String = zip::CP437_HIGH.iter().collect();
    assert_eq!(ours, expected.cp437_high);
    let bytes: Vec<u8> = (128..=255u8).collect();
    assert_eq!(zip::decode_cp437(&bytes), expected.cp437_high);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_store_reads_member_paths() {
    let fs = object_store::local::LocalFileSystem::new_with_prefix(fixtures()).unwrap();
    let inner = ObjectStoreStore::new(Arc::new(fs));
    let store = ArchiveStore::bound(inner, "webdataset-000000.tar", None).unwrap();
    let expected = expected();
    let members = &expected.archives["webdataset-000000.tar"];
    let requests: Vec<Request> = members.keys().map(|k| Request::whole(k.clone())).collect();
    let answers: Vec<_> = store.get_many(requests.clone()).collect().await;
    assert_eq!(answers.len(), 80);
    for (i, got) in answers {
        let got = got.unwrap().unwrap();
        assert_eq!(
            sha256(&got),
            members[&requests[i].key].1,
            "{}",
            requests[i].key
        );
    }
    let cls = store.get("sample000003.cls", None).await.unwrap().unwrap();
    assert_eq!(&cls[..], b"3");
}

/// A batch over several archives and a plain key is ONE get_many of the inner store, and
/// ranges of stored members read only their bytes (plus, for zip, the local header and the
/// slack), counted below the ObjectStoreStore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_inner_get_many_per_batch_and_ranges_read_their_bytes() {
    use getmany::wrap::Metrics;
    let fs: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(fixtures()).unwrap());
    let backend = Arc::new(Metrics::new(fs));
    let inner = Metrics::new(ObjectStoreStore::new(backend.clone()));
    let mut store = ArchiveStore::new(inner);
    store.config_mut().read_sidecars = false;
    for archive in ["py_pax.tar", "py_stored.zip", "infozip.zip"] {
        store.index(archive).await.unwrap().unwrap();
    }
    store.inner().reset();
    let requests = vec![
        Request::whole("py_pax.tar/hello.txt"),
        Request::whole("py_stored.zip/big.bin"),
        Request::range("infozip.zip/big.bin", 100..200),
        Request::whole("expected.json"),
        Request::whole("py_pax.tar/missing"),
    ];
    let answers: Vec<_> = store.get_many(requests).collect().await;
    assert_eq!(answers.len(), 5);
    let m = store.inner().snapshot();
    assert_eq!(m.get_many_calls, 1, "one get_many of the inner store");
    assert_eq!(m.reads, 4, "the missing member needs no read");

    // A range of a stored tar member reads exactly its bytes.
    backend.reset();
    let got = store
        .get("py_pax.tar/big.bin", Some((1000..1010).into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 10);
    assert_eq!(
        (backend.snapshot().reads, backend.snapshot().bytes),
        (1, 10)
    );
    // A range of a stored zip member: local header + the bytes + at most the slack.
    backend.reset();
    let got = store
        .get("py_stored.zip/big.bin", Some((1000..1010).into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 10);
    let read = backend.snapshot();
    assert_eq!(read.reads, 1);
    assert!(read.bytes <= 30 + 7 + 1010 + 1024, "{} bytes", read.bytes);
    // Far into a stored zip member: the local header and the range, not the bytes between
    // (two reads in one batch, ~1 KiB each).
    // (py_zip64.zip's stored member has zip64 extra fields in both headers.)
    for (key, at, bound) in [
        ("py_stored.zip/big.bin", 69_000, 3_000),
        ("py_zip64.zip/stored-big.bin", 4_000, 6_500),
    ] {
        let whole = store.get(key, None).await.unwrap().unwrap();
        backend.reset();
        let got = store
            .get(key, Some((at..at + 10).into()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], &whole[at as usize..at as usize + 10], "{key}");
        let read = backend.snapshot();
        assert!(read.bytes < bound, "{key}: {} bytes", read.bytes);
    }
}
