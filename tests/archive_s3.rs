//! ArchiveStore over a real S3 server (s3s + s3s-fs in process, SigV4): the conformance
//! suite on tar and zip shards, and the request counts of indexing and of member reads.
#![cfg(feature = "archive")]

mod common;

use std::io::Write;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use getmany::archive::{ArchiveIndex, ArchiveKind, ArchiveStore};
use getmany::testing::{Conformance, Fault, FaultInjector, InjectedFault, fixture};
use getmany::wrap::Prefix;
use getmany::{
    ByteRange, Error, GetManyStream, IoBudget, ObjectMeta, ObjectStoreStore, Request, Store,
    get_many_concurrent,
};
use object_store::ObjectStoreExt;

use common::s3::S3TestServer;

/// A zip of `members`, each stored or deflated as `deflate` says, written by the `zip`
/// crate.
fn zip_of(members: &[(String, Bytes)], deflate: impl Fn(usize) -> bool) -> Vec<u8> {
    let mut w = ::zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (i, (name, data)) in members.iter().enumerate() {
        let method = if deflate(i) {
            ::zip::CompressionMethod::Deflated
        } else {
            ::zip::CompressionMethod::Stored
        };
        let options = ::zip::write::SimpleFileOptions::default().compression_method(method);
        w.start_file(name.as_str(), options).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A tar of `members`, written by the `tar` crate (GNU headers).
fn tar_of(members: &[(String, Bytes)]) -> Vec<u8> {
    let mut b = ::tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = ::tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// The conformance fixture as archive members: member path = fixture key.
fn fixture_archives() -> (Vec<u8>, Vec<u8>) {
    let members = fixture();
    // Deflate every other member (the 300 KB one included), store the rest.
    (zip_of(&members, |i| i % 2 == 1), tar_of(&members))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_zip_and_tar_shards() {
    let server = S3TestServer::start().await;
    let (zip, tar) = fixture_archives();
    server.put("shards/conformance.zip", &zip).await;
    server.put("shards/conformance.tar", &tar).await;

    // Keys `<archive>/<member>` through the routing store: the suite's key
    // `conformance/small` becomes `shards/conformance.zip/conformance/small`.
    for archive in ["shards/conformance.zip", "shards/conformance.tar"] {
        let store = Prefix::new(
            ArchiveStore::new(ObjectStoreStore::new(server.client())),
            archive,
        );
        let report = Conformance::new(&store).run().await;
        report.assert_passed();
        assert!(report.passed.len() >= 11, "{archive}: {report:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_faults_on_member_reads() {
    let server = S3TestServer::start().await;
    let (zip, tar) = fixture_archives();
    server.put("shards/conformance.zip", &zip).await;
    server.put("shards/conformance.tar", &tar).await;

    for archive in ["shards/conformance.zip", "shards/conformance.tar"] {
        let plain =
            ArchiveStore::bound(ObjectStoreStore::new(server.client()), archive, None).unwrap();
        let index = plain.index(archive).await.unwrap().unwrap();
        let faults = FaultInjector::new();
        // A budget larger than the suite's nested check can hold (200 outer reads + 8 inner
        // batches of 20): with the default get_many over `get`, each outer read holds a
        // unit of the budget until the stream is polled again, and the check stops polling
        // the outer stream while its inner batches wait, so a budget of 64 can be held
        // entirely by outer reads that nobody polls (a hazard of the default get_many
        // under nesting, not of ArchiveStore, whose own path merges these reads).
        let inner = MemberFaults::new(
            ObjectStoreStore::new(server.client()).with_budget(IoBudget::new(1024)),
            archive,
            &index,
            faults.clone(),
        );
        let store = ArchiveStore::bound(inner, archive, None).unwrap();
        // Load the index before any fault is set.
        store.index(archive).await.unwrap().unwrap();
        // One GET per request here (no merging), so a smaller large batch than the 10,000
        // of the merged run above keeps the debug build within the suite's time limit.
        let report = Conformance::new(&store)
            .with_faults(&faults)
            .with_large_batch(2_000)
            .run()
            .await;
        assert!(report.skipped.is_empty(), "{report:?}");
        report.assert_passed();
    }
}

/// A span of a member as the fault rules see it: start and optional end.
type Span = Option<(u64, Option<u64>)>;

/// Injects the suite's faults, which name member keys, into the archive reads that serve
/// those members: a read of the archive belongs to the member whose record (header and
/// data) it starts in, and its range inside that member's data is the span the fault rules
/// see. Its `get_many` is the default one over `get`, so each member read is its own request
/// and a fault fails only the member it names.
#[derive(Debug)]
struct MemberFaults<S> {
    inner: S,
    archive: String,
    /// (record start, data start, data end, member key), by record start.
    layout: Vec<(u64, u64, u64, String)>,
    faults: FaultInjector,
}

impl<S> MemberFaults<S> {
    fn new(inner: S, archive: &str, index: &ArchiveIndex, faults: FaultInjector) -> Self {
        let mut layout: Vec<(u64, u64, u64, String)> = index
            .members()
            .map(|(name, m)| match index.kind {
                ArchiveKind::Zip => {
                    let data = m.offset + m.zip_header_estimate();
                    (m.offset, data, data + m.stored_size, name.to_string())
                }
                _ => (
                    m.offset - 512,
                    m.offset,
                    m.offset + m.stored_size,
                    name.to_string(),
                ),
            })
            .collect();
        layout.sort();
        MemberFaults {
            inner,
            archive: archive.to_string(),
            layout,
            faults,
        }
    }

    /// The member a read of `range` of the archive serves, and its span in that member.
    fn owner(&self, range: &Option<ByteRange>) -> Option<(&str, Span)> {
        let (start, end) = match range {
            Some(ByteRange::Bounded(r)) => (r.start, r.end),
            _ => return None,
        };
        let i = self.layout.partition_point(|(record, ..)| *record <= start);
        let (_, data, data_end, key) = self.layout.get(i.checked_sub(1)?)?;
        if start > (*data_end).max(*data) {
            return None;
        }
        let from = start.max(*data) - data;
        let to = end.min(*data_end).max(*data) - data;
        Some((key, Some((from, Some(to.max(from + 1))))))
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<S: Store> Store for MemberFaults<S> {
    async fn get(&self, key: &str, range: Option<ByteRange>) -> getmany::Result<Option<Bytes>> {
        Ok(self
            .get_with_meta(key, range)
            .await?
            .map(|(bytes, _)| bytes))
    }

    fn get_many(&self, requests: Vec<Request>) -> GetManyStream<'_> {
        get_many_concurrent(self, requests)
    }

    async fn get_with_meta(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> getmany::Result<Option<(Bytes, ObjectMeta)>> {
        let owner = if key == self.archive {
            self.owner(&range)
        } else {
            None
        };
        let Some((member, span)) = owner else {
            return self.inner.get_with_meta(key, range).await;
        };
        let (_in_flight, fault) = self.faults.before_read(member, span).await;
        match fault {
            Fault::None => self.inner.get_with_meta(key, range).await,
            Fault::Fail | Fault::MidBody => Err(Error::backend(
                "fault",
                key,
                InjectedFault(member.to_string()),
            )),
        }
    }

    async fn size(&self, key: &str) -> getmany::Result<Option<u64>> {
        self.inner.size(key).await
    }

    async fn exists(&self, key: &str) -> getmany::Result<bool> {
        self.inner.exists(key).await
    }

    fn io_budget(&self) -> &IoBudget {
        self.inner.io_budget()
    }
}

/// `archives` zips of `members` members each: (key, bytes, member contents).
fn many_member_zips(archives: usize, members: usize) -> Vec<(String, Vec<u8>, Vec<Bytes>)> {
    (0..archives)
        .map(|a| {
            let contents: Vec<(String, Bytes)> = (0..members)
                .map(|m| {
                    let len = 200 + (m * 7 + a) % 300;
                    let data = if m % 3 == 0 {
                        // Compressible text, deflated.
                        Bytes::from(format!("archive {a} member {m} ").repeat(len / 20 + 1))
                    } else {
                        getmany::testing::pattern((a * members + m) as u64, len)
                    };
                    (format!("m/{m:05}.bin"), data)
                })
                .collect();
            let bytes = zip_of(&contents, |m| m % 3 == 0);
            let key = format!("zips/{a:02}.zip");
            (key, bytes, contents.into_iter().map(|(_, d)| d).collect())
        })
        .collect()
}

/// Done when: indexing a zip takes at most 2 reads; 1,000 random members from 10 zips of
/// 10,000 members each (indexes cached) take one read per merged run and no HEAD, counted
/// at the S3 server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counted_indexing_and_member_reads_at_the_s3_server() {
    let server = S3TestServer::start().await;
    let zips = many_member_zips(10, 10_000);
    for (key, bytes, _) in &zips {
        server.put(key, bytes).await;
    }
    let mut store = ArchiveStore::new(ObjectStoreStore::new(server.client()));
    store.config_mut().read_sidecars = false;

    // Indexing: a suffix read for the end records; the central directory of 10,000 members
    // (~570 KB) is larger than the 64 KiB suffix, so one more read. Never a HEAD.
    for (key, _, contents) in &zips {
        server.reset_counts();
        let index = store.index(key).await.unwrap().unwrap();
        let counts = server.counts();
        assert_eq!(index.len(), contents.len());
        assert!(counts.get <= 2, "{key}: {} GETs to index", counts.get);
        assert_eq!(counts.head, 0, "{key}: a HEAD while indexing");
        assert_eq!(counts.total(), counts.get);
    }

    // 1,000 random members across the 10 archives, some as byte ranges.
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut requests = Vec::new();
    let mut wants = Vec::new();
    for _ in 0..1000 {
        let a = next(10) as usize;
        let m = next(10_000) as usize;
        let key = format!("{}/m/{m:05}.bin", zips[a].0);
        let content = &zips[a].2[m];
        if next(4) == 0 {
            let start = next(content.len() as u64 - 10);
            requests.push(Request::range(key, start..start + 10));
            wants.push(content.slice(start as usize..start as usize + 10));
        } else {
            requests.push(Request::whole(key));
            wants.push(content.clone());
        }
    }
    // The merged runs the inner store plans for the member reads (no I/O: indexes cached).
    let inner = store.inner_requests(&requests).await;
    // One archive range per member request; two for a range inside a stored member (its
    // local header and the range).
    assert!((1000..=1250).contains(&inner.len()), "{}", inner.len());
    let runs = store.inner().plan(&inner).stats.backend_requests as u64;

    server.reset_counts();
    let answers: Vec<_> = store.get_many(requests.clone()).collect().await;
    let counts = server.counts();
    assert_eq!(answers.len(), 1000);
    for (i, got) in answers {
        let got = got
            .unwrap_or_else(|e| panic!("{}: {e}", requests[i]))
            .unwrap();
        assert_eq!(got, wants[i], "{}", requests[i]);
    }
    assert_eq!(counts.head, 0, "no HEAD with the indexes cached");
    assert_eq!(
        counts.get, runs,
        "one GET per merged run ({runs} runs for 1,000 members)"
    );
    assert!(
        runs < 1000,
        "neighbouring members share reads ({runs} runs for 1,000 members)"
    );
    eprintln!("1,000 members from 10 zips: {runs} GETs, 0 HEADs");
}

/// The sidecar index: written beside the archive by a store that writes sidecars, loaded by
/// a fresh store with two reads in parallel (sidecar + the archive's tail, which proves the
/// archive unchanged), rejected and rebuilt after the archive changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_index_is_used_while_valid_and_rebuilt_when_stale() {
    let server = S3TestServer::start().await;
    let zips = many_member_zips(1, 2_000);
    let (key, bytes, contents) = &zips[0];
    server.put(key, bytes).await;
    let sidecar = format!("{key}.gmindex.json");

    let writer = ArchiveStore::new(ObjectStoreStore::new(server.client())).with_sidecar_writes();
    let built = writer.index(key).await.unwrap().unwrap();
    assert!(
        built.archive_version.is_some(),
        "the S3 server reports an ETag"
    );
    assert!(server.client().head(&sidecar.as_str().into()).await.is_ok());

    server.reset_counts();
    let reader = ArchiveStore::new(ObjectStoreStore::new(server.client()));
    let loaded = reader.index(key).await.unwrap().unwrap();
    let counts = server.counts();
    assert_eq!(*loaded, *built);
    assert_eq!((counts.get, counts.head), (2, 0), "sidecar + tail, no HEAD");
    let first = reader
        .get(&format!("{key}/m/00001.bin"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, contents[1]);

    // Rewrite the archive: the sidecar no longer matches its size and ETag.
    let changed = many_member_zips(1, 1_500);
    server.put(key, &changed[0].1).await;
    server.reset_counts();
    let fresh = ArchiveStore::new(ObjectStoreStore::new(server.client()));
    let rebuilt = fresh.index(key).await.unwrap().unwrap();
    assert_eq!(rebuilt.len(), 1_500, "the stale sidecar was not used");
    assert_eq!(server.counts().get, 3, "sidecar, tail, central directory");
    let got = fresh
        .get(&format!("{key}/m/01499.bin"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, changed[0].2[1499]);

    // A corrupt sidecar is ignored too.
    server.put(&sidecar, b"{ not an index").await;
    let fresh = ArchiveStore::new(ObjectStoreStore::new(server.client()));
    assert_eq!(fresh.index(key).await.unwrap().unwrap().len(), 1_500);
}

/// Tar indexing walks headers with ranged reads and skips member data: its cost in reads
/// and bytes, counted at the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tar_indexing_skips_member_data() {
    let server = S3TestServer::start().await;
    // 20 members of 1 MiB: one 64 KiB read per header, not 20 MiB.
    let big: Vec<(String, Bytes)> = (0..20)
        .map(|i| (format!("big/{i}"), getmany::testing::pattern(i, 1 << 20)))
        .collect();
    server.put("big.tar", &tar_of(&big)).await;
    let mut store = ArchiveStore::new(ObjectStoreStore::new(server.client()));
    store.config_mut().read_sidecars = false;
    server.reset_counts();
    let index = store.index("big.tar").await.unwrap().unwrap();
    assert_eq!(index.len(), 20);
    let counts = server.counts();
    assert_eq!(counts.head, 0);
    assert!(counts.get <= 21, "{} reads", counts.get);
    let responses = server.responses();
    assert_eq!(responses.len() as u64, counts.get);

    // 2,000 small members: the reads grow through the dense run.
    let small: Vec<(String, Bytes)> = (0..2000)
        .map(|i| (format!("s/{i}"), getmany::testing::pattern(i, 100)))
        .collect();
    let tar = tar_of(&small);
    server.put("small.tar", &tar).await;
    server.reset_counts();
    let index = store.index("small.tar").await.unwrap().unwrap();
    assert_eq!(index.len(), 2000);
    assert!(
        server.counts().get <= 6,
        "{} reads for a {} byte archive",
        server.counts().get,
        tar.len()
    );
}

/// Members that fail (a corrupt local header, a CRC mismatch) fail alone; the rest of the
/// batch arrives, and the S3 server's own failures fail only the members they served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_members_fail_alone_over_s3() {
    let server = S3TestServer::start().await;
    let members: Vec<(String, Bytes)> = (0..50)
        .map(|i| (format!("f/{i:02}"), getmany::testing::pattern(i, 5_000)))
        .collect();
    let mut zip = zip_of(&members, |i| i % 2 == 0);
    let plain =
        ArchiveStore::bound(getmany::MemoryStore::new(), "x.zip", Some(ArchiveKind::Zip)).unwrap();
    plain.inner().insert("x.zip", zip.clone());
    let index = plain.index("x.zip").await.unwrap().unwrap();
    // Member 10 (deflated): flip a byte of its data -> bad deflate data or CRC mismatch.
    // Member 11 (stored): break its local header signature.
    let m10 = index.get("f/10").unwrap();
    let at = (m10.offset + m10.zip_header_estimate() + 100) as usize;
    zip[at] ^= 0xff;
    let m11 = index.get("f/11").unwrap();
    zip[m11.offset as usize] = b'X';
    server.put("x.zip", &zip).await;

    let store = ArchiveStore::new(ObjectStoreStore::new(server.client()));
    let requests: Vec<Request> = members
        .iter()
        .map(|(n, _)| Request::whole(format!("x.zip/{n}")))
        .collect();
    let answers: Vec<_> = store.get_many(requests.clone()).collect().await;
    assert_eq!(answers.len(), 50);
    for (i, got) in answers {
        match i {
            10 | 11 => {
                let err = got.unwrap_err();
                assert!(matches!(err, Error::InvalidData { .. }), "{err}");
                assert!(err.to_string().contains(&format!("f/{i}")), "{err}");
            }
            _ => assert_eq!(got.unwrap().unwrap(), members[i].1),
        }
    }
    // A server failure on the archive fails the members read from it, and nothing else.
    server
        .put("ok.zip", &zip_of(&members[..5], |_| false))
        .await;
    store.index("ok.zip").await.unwrap();
    store.index("x.zip").await.unwrap();
    server.fail_key("x.zip", 500);
    let requests = vec![
        Request::whole("x.zip/f/00"),
        Request::whole("ok.zip/f/01"),
        Request::range("x.zip/f/03", 0..10),
    ];
    let answers: Vec<_> = store.get_many(requests).collect().await;
    for (i, got) in answers {
        match i {
            1 => assert_eq!(got.unwrap().unwrap(), members[1].1),
            _ => {
                let err = got.unwrap_err();
                assert!(matches!(err, Error::Backend { .. }), "{err}");
            }
        }
    }
}

/// `.tar.gz` members: one whole read of the object per batch, inflated as a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tar_gz_members_cost_one_whole_read_per_batch() {
    let server = S3TestServer::start().await;
    let members: Vec<(String, Bytes)> = (0..30)
        .map(|i| (format!("g/{i}"), getmany::testing::pattern(i, 3_000)))
        .collect();
    let tar = tar_of(&members);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    server.put("a.tar.gz", &gz.finish().unwrap()).await;
    let store = ArchiveStore::new(ObjectStoreStore::new(server.client()));
    let requests: Vec<Request> = (0..30)
        .map(|i| Request::range(format!("a.tar.gz/g/{i}"), 100..200))
        .chain([Request::whole("a.tar.gz/g/missing")])
        .collect();
    server.reset_counts();
    let answers: Vec<_> = store.get_many(requests).collect().await;
    assert_eq!(server.counts().get, 1);
    for (i, got) in answers {
        if i == 30 {
            assert_eq!(got.unwrap(), None);
        } else {
            assert_eq!(got.unwrap().unwrap(), members[i].1.slice(100..200));
        }
    }
}
