//! DirStore: the conformance suite over real files, and confinement to its root.

#![cfg(feature = "dir")]

use futures::StreamExt;
use getmany::testing::{Conformance, fixture};
use getmany::{DirStore, Error, Request, Store};

fn written_fixture() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (key, value) in fixture() {
        let path = root.path().join(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, value).unwrap();
    }
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_a_directory() {
    let root = written_fixture();
    let store = DirStore::open(root.path()).unwrap();
    let report = Conformance::new(&store).run().await;
    report.assert_passed();
    // A small budget: batches queue behind each other and still answer everything.
    let store = DirStore::open(root.path()).unwrap().with_limit(1);
    Conformance::new(&store).run().await.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_refuses_what_leaves_the_root_and_answers_the_rest() {
    let top = tempfile::tempdir().unwrap();
    std::fs::write(top.path().join("secret"), "secret").unwrap();
    let root = top.path().join("root");
    std::fs::create_dir_all(root.join("d")).unwrap();
    std::fs::write(root.join("d/ok"), "fine").unwrap();
    std::os::unix::fs::symlink("../secret", root.join("rel")).unwrap();
    std::os::unix::fs::symlink(top.path().join("secret"), root.join("abs")).unwrap();
    std::os::unix::fs::symlink("..", root.join("up")).unwrap();
    std::os::unix::fs::symlink("d/ok", root.join("inside")).unwrap();
    let store = DirStore::open(&root).unwrap();
    let keys = [
        "d/ok",
        "rel",
        "abs",
        "up/secret",
        "inside",
        "d/../d/ok",
        "d",
        "nope",
    ];
    let requests = keys.iter().map(|k| Request::whole(*k)).collect();
    let mut answers: Vec<_> = store.get_many(requests).collect().await;
    answers.sort_by_key(|(i, _)| *i);
    let answers: Vec<_> = answers.into_iter().map(|(_, a)| a).collect();
    assert_eq!(answers.len(), keys.len());
    assert_eq!(answers[0].as_ref().unwrap().as_deref(), Some(&b"fine"[..]));
    for i in [1, 2, 3, 5] {
        match &answers[i] {
            Err(Error::InvalidKey { key, reason }) => {
                assert_eq!(key, keys[i]);
                assert!(!reason.contains(top.path().to_str().unwrap()), "{reason}");
            }
            other => panic!("{}: {other:?}", keys[i]),
        }
    }
    assert_eq!(answers[4].as_ref().unwrap().as_deref(), Some(&b"fine"[..]));
    // A directory and a missing file read as missing.
    assert!(matches!(answers[6], Ok(None)), "{:?}", answers[6]);
    assert!(matches!(answers[7], Ok(None)), "{:?}", answers[7]);
    // Ranges are clipped to the file before anything is allocated.
    let huge = store
        .get("d/ok", Some((1..u64::MAX / 2).into()))
        .await
        .unwrap();
    assert_eq!(huge.as_deref(), Some(&b"ine"[..]));
}
