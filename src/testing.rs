//! The conformance suite: the semantics every [`Store`] must share, as runnable checks.
//!
//! Every store in this crate runs it, and so can yours (feature `testing`):
//!
//! ```
//! use getmany::testing::{Conformance, FaultInjector, FaultStore, populate_memory};
//! use getmany::MemoryStore;
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() {
//! let faults = FaultInjector::new();
//! let inner = MemoryStore::new();
//! populate_memory(&inner);
//! // FaultStore sits *under* the get_many being tested, so injected faults hit its reads.
//! let store = FaultStore::new(inner, faults.clone());
//! Conformance::new(&store).with_faults(&faults).run().await.assert_passed();
//! # }
//! ```
//!
//! The suite reads the objects of [`fixture`] (write them first with [`populate`]) and never
//! writes. Checks that need to make a read fail or stall need a [`FaultInjector`] wired
//! below the store's `get_many` ([`FaultStore`] for a store built on `get`,
//! [`FaultObjectStore`] under an [`ObjectStoreStore`](crate::ObjectStoreStore)); without
//! one they are reported as skipped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::store::{GetManyStream, ObjectMeta, WritableStore, get_many_concurrent};
use crate::{ByteRange, Error, IoBudget, MemoryStore, Request, Store};

/// The prefix of every fixture key.
pub const PREFIX: &str = "conformance";

/// How long the suite waits for something that must happen before calling it a hang.
const HANG: Duration = Duration::from_secs(20);

/// Deterministic pseudo-random bytes (xorshift), so fixtures need no data files.
pub fn pattern(seed: u64, len: usize) -> Bytes {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    (0..len)
        .map(|_| rng.next() as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// A small xorshift generator: reproducible request mixes without a dependency.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// The objects the suite expects in the store under test: `(key, bytes)`.
///
/// An empty object, a 1-byte object, small, medium (300 KB) and nested ones, and 20 objects
/// under `conformance/many/`.
pub fn fixture() -> Vec<(String, Bytes)> {
    let mut out = vec![
        (format!("{PREFIX}/empty"), Bytes::new()),
        (format!("{PREFIX}/one"), Bytes::from_static(b"x")),
        (format!("{PREFIX}/small"), pattern(1, 100)),
        (format!("{PREFIX}/medium"), pattern(2, 300_000)),
        (format!("{PREFIX}/dir/nested/deep"), pattern(3, 5_000)),
    ];
    for i in 0..20u64 {
        out.push((
            format!("{PREFIX}/many/{i}"),
            pattern(100 + i, 1_000 + 37 * i as usize),
        ));
    }
    out
}

/// Keys the suite reads that must not exist.
pub fn missing_keys() -> Vec<String> {
    vec![
        format!("{PREFIX}/missing"),
        format!("{PREFIX}/dir/missing"),
        format!("{PREFIX}/many/999"),
    ]
}

/// Writes [`fixture`] into a writable store.
pub async fn populate<S: WritableStore + ?Sized>(store: &S) -> crate::Result<()> {
    for (key, value) in fixture() {
        store.set(&key, value).await?;
    }
    Ok(())
}

/// Writes [`fixture`] into a [`MemoryStore`] synchronously.
pub fn populate_memory(store: &MemoryStore) {
    for (key, value) in fixture() {
        store.insert(key, value);
    }
}

/// What a request must answer, derived from the spec (not from the crate's own slicing).
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Bytes(Bytes),
    Missing,
    InvalidRange,
}

fn expect(objects: &HashMap<String, Bytes>, request: &Request) -> Expect {
    // An invalid range is an error whether or not the key exists: no I/O is needed to know.
    match &request.range {
        Some(ByteRange::Bounded(r)) if r.start >= r.end => return Expect::InvalidRange,
        Some(ByteRange::Suffix(0)) => return Expect::InvalidRange,
        _ => {}
    }
    let Some(data) = objects.get(&request.key) else {
        return Expect::Missing;
    };
    let len = data.len() as u64;
    let take = |a: u64, b: u64| Expect::Bytes(data.slice(a as usize..b as usize));
    match &request.range {
        None => Expect::Bytes(data.clone()),
        Some(_) if len == 0 => Expect::Bytes(Bytes::new()),
        Some(ByteRange::Bounded(r)) if r.start >= len => Expect::InvalidRange,
        Some(ByteRange::Bounded(r)) => take(r.start, r.end.min(len)),
        Some(ByteRange::Offset(s)) if *s >= len => Expect::InvalidRange,
        Some(ByteRange::Offset(s)) => take(*s, len),
        Some(ByteRange::Suffix(n)) => take(len.saturating_sub(*n), len),
    }
}

fn check_answer(
    request: &Request,
    want: &Expect,
    got: &crate::Result<Option<Bytes>>,
) -> Result<(), String> {
    let ok = match (want, got) {
        (Expect::Bytes(w), Ok(Some(g))) => w == g,
        (Expect::Missing, Ok(None)) => true,
        (Expect::InvalidRange, Err(Error::InvalidRange { .. })) => true,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let show = |r: &crate::Result<Option<Bytes>>| match r {
        Ok(Some(b)) => format!("{} bytes", b.len()),
        Ok(None) => "None".to_string(),
        Err(e) => format!("error: {e}"),
    };
    let want = match want {
        Expect::Bytes(b) => format!("{} bytes", b.len()),
        Expect::Missing => "None".into(),
        Expect::InvalidRange => "an InvalidRange error".into(),
    };
    Err(format!(
        "request {request}: expected {want}, got {}{}",
        show(got),
        if matches!(got, Ok(Some(_))) {
            " (or different bytes)"
        } else {
            ""
        }
    ))
}

/// Collects a `get_many` stream, failing if an index is out of range or answered twice, or
/// if the stream does not finish.
async fn collect_once(
    stream: GetManyStream<'_>,
    n: usize,
) -> Result<Vec<crate::Result<Option<Bytes>>>, String> {
    let mut out: Vec<Option<crate::Result<Option<Bytes>>>> = (0..n).map(|_| None).collect();
    let collected = tokio::time::timeout(HANG, stream.collect::<Vec<_>>())
        .await
        .map_err(|_| format!("get_many of {n} requests did not finish within {HANG:?}"))?;
    for (index, result) in collected {
        let slot = out.get_mut(index).ok_or_else(|| {
            format!("get_many answered index {index}, but only {n} requests were made")
        })?;
        if slot.is_some() {
            return Err(format!("get_many answered index {index} twice"));
        }
        *slot = Some(result);
    }
    out.into_iter()
        .enumerate()
        .map(|(i, r)| r.ok_or_else(|| format!("get_many never answered index {i}")))
        .collect()
}

/// The result of a conformance run.
#[derive(Debug, Default)]
pub struct Report {
    /// Checks that passed.
    pub passed: Vec<&'static str>,
    /// Checks that failed, with what went wrong.
    pub failed: Vec<(&'static str, String)>,
    /// Checks that could not run (no fault injector given).
    pub skipped: Vec<&'static str>,
}

impl Report {
    /// Panics with every failure if any check failed.
    pub fn assert_passed(&self) {
        if !self.failed.is_empty() {
            let lines: Vec<String> = self
                .failed
                .iter()
                .map(|(name, why)| format!("  {name}: {why}"))
                .collect();
            panic!(
                "{} conformance check(s) failed ({} passed):\n{}",
                self.failed.len(),
                self.passed.len(),
                lines.join("\n")
            );
        }
    }
}

/// The conformance suite for one store.
#[derive(Debug)]
pub struct Conformance<'a, S: ?Sized> {
    store: &'a S,
    faults: Option<&'a FaultInjector>,
    objects: HashMap<String, Bytes>,
    large_batch: usize,
}

impl<'a, S: Store + ?Sized> Conformance<'a, S> {
    /// The suite for `store`, which must hold [`fixture`].
    pub fn new(store: &'a S) -> Self {
        Conformance {
            store,
            faults: None,
            objects: fixture().into_iter().collect(),
            large_batch: 10_000,
        }
    }

    /// Enables the checks that inject faults through `faults`, which must be wired below the
    /// store's `get_many` (keys as the store's own keys).
    pub fn with_faults(mut self, faults: &'a FaultInjector) -> Self {
        self.faults = Some(faults);
        self
    }

    /// Sets the size of the large-batch check (default 10,000 requests).
    pub fn with_large_batch(mut self, requests: usize) -> Self {
        self.large_batch = requests;
        self
    }

    /// Runs every check and reports. Faults are cleared before and after each fault check.
    pub async fn run(&self) -> Report {
        let mut report = Report::default();
        macro_rules! check {
            ($name:literal, $e:expr) => {
                match $e.await {
                    Ok(()) => report.passed.push($name),
                    Err(why) => report.failed.push(($name, why)),
                }
            };
        }
        macro_rules! fault_check {
            ($name:literal, $f:ident) => {
                match self.faults {
                    Some(faults) => {
                        faults.clear();
                        let result = self.$f(faults).await;
                        faults.clear();
                        match result {
                            Ok(()) => report.passed.push($name),
                            Err(why) => report.failed.push(($name, why)),
                        }
                    }
                    None => report.skipped.push($name),
                }
            };
        }
        check!("whole objects and missing keys", self.whole_and_missing());
        check!(
            "every range kind and edge case, via get",
            self.ranges_via_get()
        );
        check!(
            "every range kind and edge case, via get_many",
            self.ranges_via_get_many()
        );
        check!("ranged reads of missing keys", self.missing_ranges());
        check!("invalid ranges fail alone", self.invalid_requests());
        check!("empty request list", self.empty_batch());
        check!("duplicates and overlaps", self.duplicates_and_overlaps());
        check!("large batch, exactly once", self.large_batch());
        check!("size and exists", self.size_and_exists());
        check!("nested get_many within the budget", self.nested());
        check!("dropping the stream cancels", self.cancellation());
        fault_check!("a failed read fails only its requests", failure_isolation);
        fault_check!(
            "a body cut mid-read fails only its requests",
            mid_body_failure
        );
        fault_check!(
            "completion order: slow reads do not block fast ones",
            completion_order
        );
        fault_check!(
            "dropping the stream cancels reads in flight",
            cancellation_in_flight
        );
        report
    }

    fn all_ranges(&self) -> Vec<Request> {
        let mut out = Vec::new();
        let mut keys: Vec<&String> = self.objects.keys().collect();
        keys.sort();
        for key in keys {
            let len = self.objects[key].len() as u64;
            let ranges = [
                ByteRange::Bounded(0..1),
                ByteRange::Bounded(0..len.max(1)),
                ByteRange::Bounded(len / 3..len / 3 + 7),
                ByteRange::Bounded(len.saturating_sub(5)..len + 100),
                ByteRange::Bounded(len..len + 10),
                ByteRange::Bounded(len + 10..len + 20),
                ByteRange::Offset(0),
                ByteRange::Offset(len / 2),
                ByteRange::Offset(len.saturating_sub(1)),
                ByteRange::Offset(len),
                ByteRange::Offset(len + 1000),
                ByteRange::Suffix(1),
                ByteRange::Suffix(len / 2 + 1),
                ByteRange::Suffix(len),
                ByteRange::Suffix(len + 1),
                ByteRange::Suffix(len * 10 + 100),
            ];
            out.push(Request::whole(key.clone()));
            out.extend(ranges.into_iter().map(|r| Request::range(key.clone(), r)));
        }
        out
    }

    async fn check_batch(&self, requests: Vec<Request>) -> Result<(), String> {
        let n = requests.len();
        let results = collect_once(self.store.get_many(requests.clone()), n).await?;
        let mut errors = Vec::new();
        for (request, got) in requests.iter().zip(&results) {
            if let Err(e) = check_answer(request, &expect(&self.objects, request), got) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            let shown: Vec<_> = errors.iter().take(5).cloned().collect();
            Err(format!(
                "{} of {n} wrong: {}",
                errors.len(),
                shown.join("; ")
            ))
        }
    }

    async fn whole_and_missing(&self) -> Result<(), String> {
        for (key, _) in fixture() {
            let r = Request::whole(key.clone());
            check_answer(
                &r,
                &expect(&self.objects, &r),
                &self.store.get(&key, None).await,
            )?;
        }
        for key in missing_keys() {
            let r = Request::whole(key.clone());
            check_answer(&r, &Expect::Missing, &self.store.get(&key, None).await)?;
        }
        let mut requests: Vec<Request> = fixture()
            .into_iter()
            .map(|(k, _)| Request::whole(k))
            .collect();
        requests.extend(missing_keys().into_iter().map(Request::whole));
        self.check_batch(requests).await
    }

    async fn ranges_via_get(&self) -> Result<(), String> {
        for request in self.all_ranges() {
            let got = self.store.get(&request.key, request.range.clone()).await;
            check_answer(&request, &expect(&self.objects, &request), &got)?;
        }
        Ok(())
    }

    async fn ranges_via_get_many(&self) -> Result<(), String> {
        self.check_batch(self.all_ranges()).await?;
        // And one key at a time, so the ranges of one object are planned together alone.
        let all = self.all_ranges();
        let mut by_key: HashMap<&str, Vec<Request>> = HashMap::new();
        for r in &all {
            if r.range.is_some() {
                by_key.entry(r.key.as_str()).or_default().push(r.clone());
            }
        }
        for (_, requests) in by_key {
            self.check_batch(requests).await?;
        }
        Ok(())
    }

    async fn missing_ranges(&self) -> Result<(), String> {
        let mut requests = Vec::new();
        for key in missing_keys() {
            requests.push(Request::range(key.clone(), 0..10));
            requests.push(Request::range(key.clone(), ByteRange::Offset(5)));
            requests.push(Request::range(key.clone(), ByteRange::Suffix(5)));
            requests.push(Request::whole(key.clone()));
        }
        for r in &requests {
            let got = self.store.get(&r.key, r.range.clone()).await;
            check_answer(r, &Expect::Missing, &got)?;
        }
        self.check_batch(requests).await
    }

    async fn invalid_requests(&self) -> Result<(), String> {
        let small = format!("{PREFIX}/small");
        let requests = vec![
            Request::range(small.clone(), 5..5),
            Request::range(small.clone(), 0..10),
            #[allow(clippy::reversed_empty_ranges)] // deliberately invalid
            Request::range(small.clone(), 9..3),
            Request::range(small.clone(), ByteRange::Suffix(0)),
            Request::range(small.clone(), 10..20),
            Request::range(small.clone(), 1_000..2_000),
            Request::range(format!("{PREFIX}/missing"), 4..4),
            Request::range(format!("{PREFIX}/missing"), 4..5),
        ];
        self.check_batch(requests).await
    }

    async fn empty_batch(&self) -> Result<(), String> {
        let got = tokio::time::timeout(HANG, self.store.get_many(Vec::new()).collect::<Vec<_>>())
            .await
            .map_err(|_| "get_many of no requests did not finish".to_string())?;
        if got.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "get_many of no requests yielded {} items",
                got.len()
            ))
        }
    }

    async fn duplicates_and_overlaps(&self) -> Result<(), String> {
        let medium = format!("{PREFIX}/medium");
        let mut requests = vec![Request::range(medium.clone(), 100..200); 5];
        requests.extend([
            Request::range(medium.clone(), 150..250),
            Request::range(medium.clone(), 0..300_000),
            Request::range(medium.clone(), 199..201),
            Request::range(medium.clone(), 200..300),
            Request::range(medium.clone(), ByteRange::Offset(150)),
            Request::range(medium.clone(), ByteRange::Suffix(100)),
            Request::range(medium.clone(), ByteRange::Suffix(100)),
            Request::whole(medium.clone()),
            Request::whole(medium.clone()),
            Request::whole(format!("{PREFIX}/missing")),
            Request::whole(format!("{PREFIX}/missing")),
        ]);
        self.check_batch(requests).await
    }

    fn random_requests(&self, n: usize, seed: u64) -> Vec<Request> {
        let mut rng = Rng(seed | 1);
        let mut keys: Vec<(&String, u64)> = self
            .objects
            .iter()
            .map(|(k, v)| (k, v.len() as u64))
            .collect();
        keys.sort();
        let missing = missing_keys();
        (0..n)
            .map(|_| {
                if rng.below(50) == 0 {
                    return Request::whole(
                        missing[rng.below(missing.len() as u64) as usize].clone(),
                    );
                }
                let (key, len) = keys[rng.below(keys.len() as u64) as usize];
                let range = match rng.below(10) {
                    0 => None,
                    1 => Some(ByteRange::Offset(rng.below(len + 2))),
                    2 => Some(ByteRange::Suffix(1 + rng.below(len + 2))),
                    _ => {
                        let start = rng.below(len + 2);
                        Some(ByteRange::Bounded(start..start + 1 + rng.below(5_000)))
                    }
                };
                Request {
                    key: key.clone(),
                    range,
                }
            })
            .collect()
    }

    async fn large_batch(&self) -> Result<(), String> {
        self.check_batch(self.random_requests(self.large_batch, 42))
            .await
    }

    async fn size_and_exists(&self) -> Result<(), String> {
        for (key, value) in fixture() {
            let size = self
                .store
                .size(&key)
                .await
                .map_err(|e| format!("size({key:?}): {e}"))?;
            if size != Some(value.len() as u64) {
                return Err(format!("size({key:?}) = {size:?}, want {}", value.len()));
            }
            if !self.store.exists(&key).await.map_err(|e| e.to_string())? {
                return Err(format!("exists({key:?}) is false"));
            }
        }
        for key in missing_keys() {
            if self
                .store
                .size(&key)
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            {
                return Err(format!("size({key:?}) of a missing key is not None"));
            }
            if self.store.exists(&key).await.map_err(|e| e.to_string())? {
                return Err(format!("exists({key:?}) of a missing key is true"));
            }
        }
        Ok(())
    }

    async fn nested(&self) -> Result<(), String> {
        // get_many inside get_many: each outer answer starts an inner batch. Must neither
        // deadlock on the store's budget nor lose answers.
        let outer = self.random_requests(200, 7);
        let inner_batches = self
            .store
            .get_many(outer.clone())
            .map(|(i, _)| async move {
                let inner = self.random_requests(20, 1000 + i as u64);
                self.check_batch(inner).await
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>();
        let results = tokio::time::timeout(HANG, inner_batches)
            .await
            .map_err(|_| "nested get_many calls did not finish (deadlock?)".to_string())?;
        if results.len() != outer.len() {
            return Err(format!(
                "outer batch answered {} of {}",
                results.len(),
                outer.len()
            ));
        }
        results.into_iter().collect()
    }

    async fn wait_budget_free(&self, what: &str) -> Result<(), String> {
        let budget: &IoBudget = self.store.io_budget();
        let deadline = tokio::time::Instant::now() + HANG;
        while budget.available() != budget.limit() {
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "{what}: {} of {} budget units still held after dropping the stream",
                    budget.limit() - budget.available(),
                    budget.limit()
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    async fn cancellation(&self) -> Result<(), String> {
        let requests = self.random_requests(2_000, 99);
        let mut stream = self.store.get_many(requests);
        let mut seen = 0;
        while seen < 5 {
            match tokio::time::timeout(HANG, stream.next()).await {
                Ok(Some(_)) => seen += 1,
                Ok(None) => break,
                Err(_) => return Err("no answer arrived".into()),
            }
        }
        drop(stream);
        self.wait_budget_free("cancellation").await
    }

    async fn cancellation_in_flight(&self, faults: &FaultInjector) -> Result<(), String> {
        let held = format!("{PREFIX}/many/7");
        let hold = faults.hold(&held);
        let mut requests = vec![Request::whole(held.clone())];
        requests.extend(self.random_requests(50, 5));
        let mut stream = self.store.get_many(requests);
        // Wait until the held read has reached the backend.
        let deadline = tokio::time::Instant::now() + HANG;
        while faults.waiting() == 0 {
            if tokio::time::Instant::now() > deadline {
                return Err("the held read never reached the backend".into());
            }
            tokio::select! {
                _ = stream.next() => {}
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        drop(stream);
        let deadline = tokio::time::Instant::now() + HANG;
        while faults.in_flight() != 0 {
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "{} backend reads still in flight after dropping the stream",
                    faults.in_flight()
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        hold.release();
        self.wait_budget_free("cancellation in flight").await
    }

    async fn failure_isolation(&self, faults: &FaultInjector) -> Result<(), String> {
        let bad = format!("{PREFIX}/many/3");
        faults.fail_key(&bad);
        let medium = format!("{PREFIX}/medium");
        faults.fail_reads_covering(&medium, 250_000);
        let requests = self.random_requests(2_000, 11);
        let n = requests.len();
        let results = collect_once(self.store.get_many(requests.clone()), n).await?;
        let mut bad_ok = 0;
        for (request, got) in requests.iter().zip(&results) {
            let covers = |r: &Option<ByteRange>| match r {
                None => true,
                Some(ByteRange::Bounded(r)) => r.start <= 250_000 && 250_000 < r.end,
                Some(ByteRange::Offset(s)) => *s <= 250_000,
                Some(ByteRange::Suffix(k)) => *k >= 50_000,
            };
            let must_fail = request.key == bad
                || (request.key == medium
                    && covers(&request.range)
                    && expect(&self.objects, request) != Expect::InvalidRange);
            if must_fail {
                if got.is_ok() {
                    bad_ok += 1;
                }
            } else if request.key != medium {
                check_answer(request, &expect(&self.objects, request), got)?;
            } else if got.is_ok() {
                // Another read of the faulty object may legitimately fail too if it was merged
                // with the faulty range; if it succeeded it must be right.
                check_answer(request, &expect(&self.objects, request), got)?;
            }
        }
        if bad_ok > 0 {
            return Err(format!(
                "{bad_ok} requests served by a failing read answered Ok"
            ));
        }
        Ok(())
    }

    async fn mid_body_failure(&self, faults: &FaultInjector) -> Result<(), String> {
        let bad = format!("{PREFIX}/many/5");
        faults.fail_mid_body(&bad);
        let requests = self.random_requests(1_000, 13);
        let n = requests.len();
        let results = collect_once(self.store.get_many(requests.clone()), n).await?;
        for (request, got) in requests.iter().zip(&results) {
            if request.key == bad {
                if expect(&self.objects, request) != Expect::InvalidRange && got.is_ok() {
                    return Err(format!("request {request} read a cut body and answered Ok"));
                }
            } else {
                check_answer(request, &expect(&self.objects, request), got)?;
            }
        }
        Ok(())
    }

    async fn completion_order(&self, faults: &FaultInjector) -> Result<(), String> {
        let slow = format!("{PREFIX}/many/1");
        let hold = faults.hold(&slow);
        let mut requests = vec![Request::whole(slow.clone())];
        for i in 10..20 {
            requests.push(Request::whole(format!("{PREFIX}/many/{i}")));
        }
        let n = requests.len();
        let mut stream = self.store.get_many(requests.clone());
        let mut fast = 0;
        while fast < n - 1 {
            match tokio::time::timeout(HANG, stream.next()).await {
                Ok(Some((0, _))) => return Err("the held read answered before release".into()),
                Ok(Some((i, got))) => {
                    check_answer(&requests[i], &expect(&self.objects, &requests[i]), &got)?;
                    fast += 1;
                }
                Ok(None) => return Err("stream ended before the held read answered".into()),
                Err(_) => {
                    return Err(format!(
                        "only {fast} of {} fast reads arrived while one slow read was pending",
                        n - 1
                    ));
                }
            }
        }
        hold.release();
        match tokio::time::timeout(HANG, stream.next()).await {
            Ok(Some((0, got))) => {
                check_answer(&requests[0], &expect(&self.objects, &requests[0]), &got)
            }
            other => Err(format!(
                "after release, expected index 0, got {:?}",
                other.map(|o| o.map(|x| x.0))
            )),
        }
    }
}

/// A read the injector is holding until released.
#[derive(Debug)]
pub struct Hold {
    release: tokio::sync::watch::Sender<bool>,
}

impl Hold {
    /// Lets the held reads (and later ones) proceed.
    pub fn release(&self) {
        let _ = self.release.send(true);
    }
}

#[derive(Debug, Default)]
struct Rules {
    fail: Vec<(String, Option<u64>)>,
    mid_body: Vec<String>,
    holds: HashMap<String, tokio::sync::watch::Receiver<bool>>,
}

/// Injects faults into reads of chosen keys: a failure, a body cut mid-read, or a read held
/// until released. Counts reads in flight. Clones share their rules.
#[derive(Debug, Clone, Default)]
pub struct FaultInjector {
    rules: Arc<Mutex<Rules>>,
    in_flight: Arc<AtomicUsize>,
    waiting: Arc<AtomicUsize>,
    reads: Arc<AtomicU64>,
}

/// What the injector decided for one read.
#[derive(Debug, PartialEq, Eq)]
pub enum Fault {
    /// Go ahead.
    None,
    /// Fail the read.
    Fail,
    /// Deliver part of the body, then fail.
    MidBody,
}

/// Counts a read as in flight until dropped.
#[derive(Debug)]
pub struct InFlight {
    counter: Arc<AtomicUsize>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The error an injected failure carries.
#[derive(Debug, thiserror::Error)]
#[error("injected fault reading {0:?}")]
pub struct InjectedFault(pub String);

impl FaultInjector {
    /// An injector with no rules.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every read of `key` fails.
    pub fn fail_key(&self, key: &str) {
        self.lock().fail.push((key.to_string(), None));
    }

    /// Reads of `key` whose range covers byte `offset` fail.
    pub fn fail_reads_covering(&self, key: &str, offset: u64) {
        self.lock().fail.push((key.to_string(), Some(offset)));
    }

    /// Reads of `key` deliver part of the body and then fail.
    pub fn fail_mid_body(&self, key: &str) {
        self.lock().mid_body.push(key.to_string());
    }

    /// Reads of `key` wait until the returned [`Hold`] is released.
    pub fn hold(&self, key: &str) -> Hold {
        let (tx, rx) = tokio::sync::watch::channel(false);
        self.lock().holds.insert(key.to_string(), rx);
        Hold { release: tx }
    }

    /// Removes every rule (held reads stay held until their `Hold` is released or dropped).
    pub fn clear(&self) {
        let mut rules = self.lock();
        rules.fail.clear();
        rules.mid_body.clear();
        rules.holds.clear();
    }

    /// Reads that have started and not finished (or been dropped).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Reads waiting on a hold.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Reads started so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called at the start of a read of `range` (absolute start and optional end, `None` for
    /// a suffix) of `key`: waits on a hold, then says which fault applies.
    pub async fn before_read(
        &self,
        key: &str,
        span: Option<(u64, Option<u64>)>,
    ) -> (InFlight, Fault) {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight {
            counter: self.in_flight.clone(),
        };
        let hold = self.lock().holds.get(key).cloned();
        if let Some(mut rx) = hold {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let waiting = InFlight {
                counter: self.waiting.clone(),
            };
            // A dropped Hold counts as released.
            let _ = rx.wait_for(|released| *released).await;
            drop(waiting);
        }
        let rules = self.lock();
        let fails = rules.fail.iter().any(|(k, at)| {
            k == key
                && match (at, span) {
                    (None, _) => true,
                    (Some(_), None) => true,
                    (Some(off), Some((start, end))) => {
                        start <= *off && end.is_none_or(|e| *off < e)
                    }
                }
        });
        let fault = if fails {
            Fault::Fail
        } else if rules.mid_body.iter().any(|k| k == key) {
            Fault::MidBody
        } else {
            Fault::None
        };
        (guard, fault)
    }
}

fn span_of(range: &Option<ByteRange>) -> Option<(u64, Option<u64>)> {
    match range {
        None => Some((0, None)),
        Some(ByteRange::Bounded(r)) => Some((r.start, Some(r.end))),
        Some(ByteRange::Offset(s)) => Some((*s, None)),
        Some(ByteRange::Suffix(_)) => None,
    }
}

/// A [`Store`] wrapper that injects faults into `get`, and whose `get_many` is the default,
/// concurrent one over that `get`: the "get-only store" of the conformance suite.
///
/// (Unlike the crate's other wrappers it deliberately does not forward `get_many`: it
/// stands for a backend that has only `get`.)
#[derive(Debug)]
pub struct FaultStore<S> {
    inner: S,
    faults: FaultInjector,
}

impl<S> FaultStore<S> {
    /// Injects `faults` into reads of `inner`.
    pub fn new(inner: S, faults: FaultInjector) -> Self {
        FaultStore { inner, faults }
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<S: Store> Store for FaultStore<S> {
    async fn get(&self, key: &str, range: Option<ByteRange>) -> crate::Result<Option<Bytes>> {
        let (_in_flight, fault) = self.faults.before_read(key, span_of(&range)).await;
        match fault {
            Fault::None => self.inner.get(key, range).await,
            Fault::Fail | Fault::MidBody => {
                Err(Error::backend("fault", key, InjectedFault(key.to_string())))
            }
        }
    }

    fn get_many(&self, requests: Vec<Request>) -> GetManyStream<'_> {
        get_many_concurrent(self, requests)
    }

    async fn get_with_meta(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> crate::Result<Option<(Bytes, ObjectMeta)>> {
        let (_in_flight, fault) = self.faults.before_read(key, span_of(&range)).await;
        match fault {
            Fault::None => self.inner.get_with_meta(key, range).await,
            Fault::Fail | Fault::MidBody => {
                Err(Error::backend("fault", key, InjectedFault(key.to_string())))
            }
        }
    }

    async fn size(&self, key: &str) -> crate::Result<Option<u64>> {
        self.inner.size(key).await
    }

    async fn exists(&self, key: &str) -> crate::Result<bool> {
        self.inner.exists(key).await
    }

    fn io_budget(&self) -> &IoBudget {
        self.inner.io_budget()
    }
}

#[cfg(feature = "object-store")]
pub use object_store_faults::FaultObjectStore;

#[cfg(feature = "object-store")]
mod object_store_faults {
    use super::*;

    /// An `object_store::ObjectStore` wrapper that injects faults into GETs (HEADs and
    /// writes pass through). Put it under an [`ObjectStoreStore`](crate::ObjectStoreStore)
    /// to test that store's `get_many`. Keys are object paths.
    #[derive(Debug)]
    pub struct FaultObjectStore<O> {
        pub(crate) inner: O,
        faults: FaultInjector,
    }

    impl<O> FaultObjectStore<O> {
        /// Injects `faults` into GETs of `inner`.
        pub fn new(inner: O, faults: FaultInjector) -> Self {
            FaultObjectStore { inner, faults }
        }
    }

    impl<O: object_store::ObjectStore> FaultObjectStore<O> {
        pub(crate) async fn wrapped_get_opts(
            &self,
            location: &object_store::path::Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            if options.head {
                return self.inner.get_opts(location, options).await;
            }
            let key = location.as_ref();
            let span = match &options.range {
                None => Some((0, None)),
                Some(object_store::GetRange::Bounded(r)) => Some((r.start, Some(r.end))),
                Some(object_store::GetRange::Offset(s)) => Some((*s, None)),
                Some(object_store::GetRange::Suffix(_)) => None,
            };
            let (in_flight, fault) = self.faults.before_read(key, span).await;
            let injected = || object_store::Error::Generic {
                store: "fault",
                source: Box::new(InjectedFault(key.to_string())),
            };
            match fault {
                Fault::Fail => Err(injected()),
                Fault::None => {
                    let result = self.inner.get_opts(location, options).await;
                    drop(in_flight);
                    result
                }
                Fault::MidBody => {
                    let mut result = self.inner.get_opts(location, options).await?;
                    let bytes = result.bytes_ref_free().await?;
                    let half = bytes.slice(..bytes.len() / 2);
                    let err = injected();
                    let body = futures::stream::iter(vec![Ok(half), Err(err)]).boxed();
                    result = object_store::GetResult {
                        payload: object_store::GetResultPayload::Stream(body),
                        ..result
                    };
                    Ok(result)
                }
            }
        }

        pub(crate) async fn other_operation(&self, _bytes: u64) {}
    }

    trait BytesRefFree {
        async fn bytes_ref_free(&mut self) -> object_store::Result<Bytes>;
    }

    impl BytesRefFree for object_store::GetResult {
        /// Takes the body out of a result, leaving an empty stream, so the result's metadata
        /// can be reused with a new body.
        async fn bytes_ref_free(&mut self) -> object_store::Result<Bytes> {
            let payload = std::mem::replace(
                &mut self.payload,
                object_store::GetResultPayload::Stream(futures::stream::empty().boxed()),
            );
            let taken = object_store::GetResult {
                payload,
                meta: self.meta.clone(),
                range: self.range.clone(),
                attributes: self.attributes.clone(),
                extensions: Default::default(),
            };
            taken.bytes().await
        }
    }

    crate::wrap::object_store_wrapper!(FaultObjectStore);
}
