//! ObjectStoreStore against a real S3 server: s3s + s3s-fs in process, over HTTP with SigV4.

mod common;

use std::sync::Arc;

use futures::StreamExt;
use getmany::testing::{Conformance, FaultInjector, FaultObjectStore, populate};
use getmany::{ByteRange, Error, ObjectStoreStore, Request, Store};

use common::s3::S3TestServer;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    getmany::testing::pattern(seed as u64, len).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_the_s3_server() {
    let server = S3TestServer::start().await;
    let faults = FaultInjector::new();
    populate(&ObjectStoreStore::new(server.client()))
        .await
        .unwrap();
    let store = ObjectStoreStore::new(Arc::new(FaultObjectStore::new(
        server.client(),
        faults.clone(),
    )));
    // The large batch is 10,000 requests, as on the other backends.
    let report = Conformance::new(&store).with_faults(&faults).run().await;
    assert!(report.skipped.is_empty());
    report.assert_passed();
}

/// 1,000 ranges of 16 KiB packed in 10 objects: at most 20 GETs and no HEADs reach the
/// server, and every answer is byte-exact against a single read of the same range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_packed_ranges_cost_at_most_twenty_gets() {
    let server = S3TestServer::start().await;
    const SLOT: u64 = 16 * 1024;
    let mut objects = Vec::new();
    for o in 0..10u8 {
        let data = pattern(o, 100 * SLOT as usize);
        server.put(&format!("packed/{o}"), &data).await;
        objects.push(data);
    }
    let mut requests = Vec::new();
    for o in 0..10 {
        for s in 0..100u64 {
            // Interleave objects and reverse slot order so nothing arrives pre-sorted.
            requests.push(Request::range(
                format!("packed/{o}"),
                (99 - s) * SLOT..(100 - s) * SLOT,
            ));
        }
    }
    requests.sort_by_key(|r| match &r.range {
        Some(ByteRange::Bounded(x)) => (x.start, r.key.clone()),
        _ => (0, String::new()),
    });
    let store = ObjectStoreStore::new(server.client());
    server.reset_counts();
    let answers: Vec<_> = store.get_many(requests.clone()).collect().await;
    let counts = server.counts();
    assert!(counts.get <= 20, "{} GETs reached the server", counts.get);
    assert_eq!(counts.head, 0, "no HEAD before a read");
    assert_eq!(answers.len(), 1000);

    let mut seen = vec![false; requests.len()];
    for (i, got) in answers {
        assert!(!seen[i], "index {i} answered twice");
        seen[i] = true;
        let r = &requests[i];
        let got = got.unwrap().unwrap();
        let single = store.get(&r.key, r.range.clone()).await.unwrap().unwrap();
        assert_eq!(got, single, "request {r} differs from a single read");
        let o: usize = r.key["packed/".len()..].parse().unwrap();
        let Some(ByteRange::Bounded(x)) = &r.range else {
            unreachable!()
        };
        assert_eq!(&got[..], &objects[o][x.start as usize..x.end as usize]);
    }
}

/// Suffix reads go out as suffix ranges (no HEAD), including a suffix longer than the object,
/// which s3s-fs answers with HTTP 500: the store then falls back to HEAD + bounded read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suffix_reads_need_no_head_unless_the_server_fails_them() {
    let server = S3TestServer::start().await;
    server.put("obj", &pattern(1, 1000)).await;
    let store = ObjectStoreStore::new(server.client());
    server.reset_counts();
    let got = store
        .get("obj", Some(ByteRange::Suffix(10)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], &pattern(1, 1000)[990..]);
    assert_eq!((server.counts().get, server.counts().head), (1, 0));

    server.reset_counts();
    let got = store
        .get("obj", Some(ByteRange::Suffix(5000)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1000);
    assert_eq!(
        server.counts().head,
        1,
        "the fallback asks for the size once"
    );
}

/// Bad input: an invalid range, a backend 500 and a connection dropped mid-body each give an
/// error on the affected indices only; everything else arrives, nothing hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_touch_only_the_requests_they_served() {
    let server = S3TestServer::start().await;
    for o in 0..4u8 {
        server.put(&format!("obj/{o}"), &pattern(o, 200_000)).await;
    }
    server.fail_key("obj/1", 500);
    server.truncate_key("obj/2", 50_000);
    let store = ObjectStoreStore::new(server.client());
    let mut requests = Vec::new();
    for o in 0..4 {
        for s in 0..10u64 {
            requests.push(Request::range(
                format!("obj/{o}"),
                s * 20_000..s * 20_000 + 1000,
            ));
        }
    }
    requests.push(Request::range("obj/0", 500_000..500_010)); // start past the end
    requests.push(Request::range("obj/3", 7..7)); // empty range
    requests.push(Request::whole("obj/missing"));
    let n = requests.len();
    let answers: Vec<_> = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        store.get_many(requests.clone()).collect::<Vec<_>>(),
    )
    .await
    .expect("no hang");
    assert_eq!(answers.len(), n);
    for (i, got) in answers {
        let r = &requests[i];
        match (r.key.as_str(), &r.range) {
            ("obj/1", _) => assert!(matches!(&got, Err(Error::Backend { .. })), "{r}: {got:?}"),
            ("obj/2", _) => assert!(
                got.is_err(),
                "{r}: a cut body must be an error, got {got:?}"
            ),
            ("obj/missing", _) => assert!(matches!(got, Ok(None))),
            (_, Some(ByteRange::Bounded(x))) if x.start >= 200_000 || x.start == x.end => {
                let err = got.unwrap_err();
                assert!(matches!(err, Error::InvalidRange { .. }), "{err}");
                assert!(
                    err.to_string().contains(&r.key),
                    "error names the key: {err}"
                );
            }
            (key, Some(ByteRange::Bounded(x))) => {
                let o: u8 = key["obj/".len()..].parse().unwrap();
                let want = &pattern(o, 200_000)[x.start as usize..x.end as usize];
                assert_eq!(&got.unwrap().unwrap()[..], want, "{r}");
            }
            _ => unreachable!(),
        }
    }
    // The server keeps serving after the failures.
    server.clear_faults();
    assert!(store.get("obj/1", None).await.unwrap().is_some());
}

/// A consumer that stops polling a `get_many` stream while it awaits another `get_many` of the
/// same store must not deadlock: the first stream's reads hold every permit of the budget,
/// and they finish (and free them) without being polled because each runs as a task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_stream_does_not_starve_a_second_call_of_its_budget() {
    use getmany::IoBudget;
    use getmany::wrap::{Latency, LatencyModel};
    use std::time::Duration;

    let server = S3TestServer::start().await;
    for (i, key) in ["a", "b", "c"].iter().enumerate() {
        server.put(key, &pattern(i as u8, 1000)).await;
    }
    // Reads stay in flight long enough for the first poll to leave both permits held.
    let slow: Arc<dyn object_store::ObjectStore> = Arc::new(Latency::new(
        server.client(),
        LatencyModel::round_trip(Duration::from_millis(50)),
    ));
    let store = ObjectStoreStore::new(slow).with_budget(IoBudget::new(2));
    let mut outer = store.get_many(vec![
        Request::whole("a"),
        Request::whole("b"),
        Request::whole("c"),
    ]);
    // One poll: the reads of `a` and `b` start and take both permits.
    let mut answered = Vec::new();
    if let std::task::Poll::Ready(item) = futures::poll!(outer.next()) {
        answered.push(item.expect("the stream has three answers"));
    }
    // Without polling `outer`, read through the same store.
    let inner: Vec<_> = tokio::time::timeout(
        Duration::from_secs(60),
        store
            .get_many(vec![Request::whole("c")])
            .collect::<Vec<_>>(),
    )
    .await
    .expect("the second call got a permit: the paused stream's reads finished and freed theirs");
    assert_eq!(inner.len(), 1);
    assert_eq!(
        inner[0].1.as_ref().unwrap().as_deref(),
        Some(&pattern(2, 1000)[..])
    );
    answered.extend(outer.collect::<Vec<_>>().await);
    answered.sort_by_key(|(i, _)| *i);
    assert_eq!(answered.len(), 3);
    for (i, result) in answered {
        assert_eq!(
            result.unwrap().as_deref(),
            Some(&pattern(i as u8, 1000)[..]),
            "answer {i}"
        );
    }
}
