//! The coalescing planner: requests -> merged reads -> slices back.
//!
//! [`plan`] is pure (no I/O): it groups requests by key, merges overlapping, adjacent and
//! nearby byte ranges under a [`CoalescePolicy`], and splits very long reads into parts that
//! can be fetched in parallel. [`execute`] runs a plan through any read function under a
//! store's [`IoBudget`] and answers every request the moment the read that serves it
//! completes. [`ObjectStoreStore`](crate) uses both; so can any store whose backend reads
//! byte ranges.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use futures::stream::{self, StreamExt};
use tracing::Instrument;

use crate::store::{GetManyItem, GetManyStream};
use crate::{ByteRange, Error, IoBudget, Request, Result};

/// How far apart two byte ranges of one object may be and still be fetched as one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeGap {
    /// Never merge: every distinct request is its own read (identical requests still share
    /// one). Not the same as `Within(0)`, which merges overlapping and adjacent ranges.
    Never,
    /// Merge ranges whose gap (bytes between them) is at most this many bytes; `Within(0)`
    /// merges only overlapping and adjacent ranges.
    Within(u64),
}

/// The rules the planner follows. See [`CoalescePolicy::default`] for the measured defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoalescePolicy {
    /// How far apart two ranges may be and still be merged.
    pub max_gap: MergeGap,
    /// A merged read never grows beyond this many bytes by merging (a single request longer
    /// than this stays one read, and may be split).
    pub max_merged: u64,
    /// A bounded read longer than this is fetched as parts of at most this many bytes, in
    /// parallel, and reassembled. `u64::MAX` disables splitting.
    pub split_size: u64,
}

impl CoalescePolicy {
    /// Never merge, never split: one read per distinct request.
    pub fn never_merge() -> Self {
        CoalescePolicy {
            max_gap: MergeGap::Never,
            max_merged: 0,
            split_size: u64::MAX,
        }
    }
}

impl Default for CoalescePolicy {
    /// `max_gap = Within(64 KiB)`, `max_merged = 16 MiB`, `split_size = 64 MiB`.
    ///
    /// Measured with `getmany bench-store --sweep` (README, "Choosing the defaults"; 10 ms
    /// round trip, 1,000 ranges of 16 KiB: half the slots of 10 objects):
    ///
    /// * gap: never merging took 219 ms (1,000 GETs); gap 0, 117 ms (497 GETs); 16 KiB,
    ///   69 ms; 64 KiB, 28 ms (42 GETs) for 1.8x over-read; 1 MiB, 29–33 ms for 1.9–2.0x.
    ///   64 KiB takes the whole gain while a gap stays far cheaper than a round trip
    ///   (64 KiB at ~1 GB/s is ~0.06 ms); larger gaps only add over-read (VirtualiZarr saw
    ///   a 1 MiB gap read 3.16x the bytes and run slower).
    /// * max_merged: 1 MiB and 16 MiB ran the same at a 64 KiB gap; 16 MiB makes fewer
    ///   requests (cheaper where requests are billed) and bounds what one buffer holds.
    /// * split_size: on this loopback a 64 MiB read ran in 62 ms whole and ~105 ms as 2–16
    ///   parts (the client is CPU-bound and parts cost a reassembly copy), so only reads
    ///   beyond 64 MiB are split: there, the per-connection throughput limits of real object
    ///   stores make parallel parts pay.
    fn default() -> Self {
        CoalescePolicy {
            max_gap: MergeGap::Within(64 * 1024),
            max_merged: 16 * 1024 * 1024,
            split_size: 64 * 1024 * 1024,
        }
    }
}

/// One read the plan will issue: a key and a range, serving one or more requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRead {
    /// The key to read.
    pub key: String,
    /// The range to read; `None` for the whole object.
    pub range: Option<ByteRange>,
    /// For a split read (a bounded `range` longer than the policy's `split_size`), the
    /// length of its parts; `None` when the read is fetched in one piece. The parts are
    /// [`parts`](PlannedRead::parts), generated on demand: a range may ask for far more
    /// than any object holds (`0..u64::MAX`), so they are never listed up front.
    pub part_len: Option<u64>,
    /// The indices of the requests this read answers.
    pub serves: Vec<usize>,
}

impl PlannedRead {
    /// The parts of a split read, as planned from the requested range (consecutive,
    /// covering it); empty when the read is fetched in one piece. Lazy: `execute` fetches
    /// only those the object turns out to hold (see [`UNSIZED_SPLIT_BYTES`]).
    pub fn parts(&self) -> Parts {
        match (&self.range, self.part_len) {
            (Some(ByteRange::Bounded(r)), Some(len)) if len > 0 => Parts {
                next: r.start,
                end: r.end,
                len,
            },
            _ => Parts {
                next: 0,
                end: 0,
                len: 1,
            },
        }
    }

    /// How many parts the requested range is split into (0: not split). An upper bound
    /// on what [`execute`] fetches: parts past the end of the object are not fetched.
    pub fn part_count(&self) -> u64 {
        let parts = self.parts();
        (parts.end - parts.next).div_ceil(parts.len)
    }

    /// How many backend requests this read costs at most (saturating).
    pub fn requests(&self) -> usize {
        usize::try_from(self.part_count())
            .unwrap_or(usize::MAX)
            .max(1)
    }
}

/// The parts of a split read, generated one at a time (see [`PlannedRead::parts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    next: u64,
    end: u64,
    len: u64,
}

impl Iterator for Parts {
    type Item = Range<u64>;

    fn next(&mut self) -> Option<Range<u64>> {
        if self.next >= self.end {
            return None;
        }
        let part = self.next..self.next.saturating_add(self.len).min(self.end);
        self.next = part.end;
        Some(part)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = (self.end.saturating_sub(self.next)).div_ceil(self.len);
        match usize::try_from(n) {
            Ok(n) => (n, Some(n)),
            Err(_) => (usize::MAX, None),
        }
    }

    fn nth(&mut self, n: usize) -> Option<Range<u64>> {
        // O(1): a huge range has more parts than can be stepped through.
        let skip = (n as u64).checked_mul(self.len);
        match skip.and_then(|skip| self.next.checked_add(skip)) {
            Some(next) => self.next = next,
            None => self.next = self.end,
        }
        self.next()
    }

    fn last(self) -> Option<Range<u64>> {
        if self.next >= self.end {
            return None;
        }
        let n = (self.end - self.next).div_ceil(self.len);
        let start = self.next + (n - 1) * self.len;
        Some(start..self.end)
    }
}

/// How far past the start of a split read its parts are requested before the object's
/// size is known: the parts starting within this many bytes (and at most
/// [`UNSIZED_SPLIT_PARTS`] of them; always the first) go out at once; the rest only once a
/// part's answer reveals the size (`Fetched::object_size`), clipped to it, or (for a
/// backend that reports no size) once the parts before them came back full. So a range
/// far larger than its object costs a few part requests, not a number proportional to its
/// length, and nothing is allocated from its length.
///
/// The choice: a read up to this size and count (4 parts at the default 64 MiB
/// `split_size`) is fetched in one round, all parts at once, as before; a longer one has
/// the parts beyond it requested as soon as the first part comes back (backends that
/// report the size, as `ObjectStoreStore` does, tell it with every part), while the first
/// ones still stream, so an honest large read pays no extra round trip before its first
/// bytes, only a later start for its tail.
pub const UNSIZED_SPLIT_BYTES: u64 = 256 << 20;

/// The most parts of one split read in flight before the object's size is known (see
/// [`UNSIZED_SPLIT_BYTES`]); binds only with a `split_size` under 16 MiB.
pub const UNSIZED_SPLIT_PARTS: usize = 16;

/// What a plan will cost, known before any I/O.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanStats {
    /// Requests planned (including invalid ones).
    pub requests: usize,
    /// Logical reads (merged runs).
    pub reads: usize,
    /// Backend requests (a split read counts once per part).
    pub backend_requests: usize,
    /// Bytes asked for by requests whose length is known (bounded ranges and suffixes).
    pub bytes_requested: u64,
    /// Bytes the bounded and suffix reads will fetch at most (clipping can only lower it).
    pub bytes_planned: u64,
    /// Reads whose length is unknown until they run (whole objects and offset ranges).
    pub unbounded_reads: usize,
}

impl PlanStats {
    /// `bytes_planned / bytes_requested`: how much the merging over-reads (1.0 = none).
    pub fn over_read(&self) -> f64 {
        if self.bytes_requested == 0 {
            1.0
        } else {
            self.bytes_planned as f64 / self.bytes_requested as f64
        }
    }
}

/// The reads that answer a list of requests.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The reads, in the order the planner chose (first appearance of their key).
    pub reads: Vec<PlannedRead>,
    /// Requests no read can serve (an empty bounded range, a zero-length suffix), each with
    /// the reason; they are answered with [`Error::InvalidRange`] without any I/O.
    pub invalid: Vec<(usize, &'static str)>,
    /// What the plan costs.
    pub stats: PlanStats,
}

/// A bounded interval being merged: `end == None` means "to the end of the object".
struct Run {
    start: u64,
    end: Option<u64>,
    serves: Vec<usize>,
}

/// Plans the reads for `requests` under `policy`. Pure; O(n log n) in the number of requests.
///
/// Every valid request index appears in exactly one read's `serves`; invalid ones are listed
/// in [`Plan::invalid`].
pub fn plan(requests: &[Request], policy: &CoalescePolicy) -> Plan {
    let mut out = Plan::default();
    out.stats.requests = requests.len();

    // Group by key in order of first appearance, so the plan is deterministic.
    let mut group_of: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (index, request) in requests.iter().enumerate() {
        if let Some(range) = &request.range {
            if let Some(reason) = range.invalid_reason() {
                out.invalid.push((index, reason));
                continue;
            }
            if let Some(len) = range.requested_len() {
                // Saturating: requested lengths may add up past u64::MAX.
                out.stats.bytes_requested = out.stats.bytes_requested.saturating_add(len);
            }
        }
        let g = *group_of.entry(request.key.as_str()).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(index);
    }

    for members in groups {
        let key = &requests[members[0]].key;
        plan_key(key, requests, members, policy, &mut out.reads);
    }

    for read in &mut out.reads {
        if let Some(ByteRange::Bounded(r)) = &read.range {
            let len = r.end - r.start;
            if len > policy.split_size && policy.split_size > 0 {
                // Parts of equal length (the last may be shorter), at most `split_size`.
                let n = len.div_ceil(policy.split_size);
                read.part_len = Some(len.div_ceil(n));
            }
        }
        // Saturating: the counts are upper bounds of what the requests ask for, which may
        // be far more than the objects hold.
        out.stats.reads += 1;
        out.stats.backend_requests = out.stats.backend_requests.saturating_add(read.requests());
        match &read.range {
            Some(ByteRange::Bounded(r)) => {
                out.stats.bytes_planned = out.stats.bytes_planned.saturating_add(r.end - r.start)
            }
            Some(ByteRange::Suffix(n)) => {
                out.stats.bytes_planned = out.stats.bytes_planned.saturating_add(*n)
            }
            _ => out.stats.unbounded_reads += 1,
        }
    }
    out
}

fn plan_key(
    key: &str,
    requests: &[Request],
    members: Vec<usize>,
    policy: &CoalescePolicy,
    reads: &mut Vec<PlannedRead>,
) {
    let read = |range: Option<ByteRange>, serves: Vec<usize>| PlannedRead {
        key: key.to_string(),
        range,
        part_len: None,
        serves,
    };
    let mut whole = Vec::new();
    let mut suffixes: Vec<(u64, usize)> = Vec::new();
    let mut runs: Vec<Run> = Vec::new();
    for &i in &members {
        match &requests[i].range {
            None => whole.push(i),
            Some(ByteRange::Suffix(n)) => suffixes.push((*n, i)),
            Some(ByteRange::Offset(s)) => runs.push(Run {
                start: *s,
                end: None,
                serves: vec![i],
            }),
            Some(ByteRange::Bounded(r)) => runs.push(Run {
                start: r.start,
                end: Some(r.end),
                serves: vec![i],
            }),
        }
    }

    let gap = match policy.max_gap {
        MergeGap::Never => None,
        MergeGap::Within(g) => Some(g),
    };

    let Some(gap) = gap else {
        // Never merge: identical requests share a read, nothing else does.
        if !whole.is_empty() {
            reads.push(read(None, whole));
        }
        suffixes.sort_unstable();
        for (n, group) in group_equal(suffixes) {
            reads.push(read(Some(ByteRange::Suffix(n)), group));
        }
        let mut keyed: Vec<((u64, Option<u64>), usize)> = runs
            .into_iter()
            .map(|r| ((r.start, r.end), r.serves[0]))
            .collect();
        keyed.sort_unstable();
        for ((start, end), group) in group_equal(keyed) {
            let range = match end {
                Some(end) => ByteRange::Bounded(start..end),
                None => ByteRange::Offset(start),
            };
            reads.push(read(Some(range), group));
        }
        return;
    };

    if !whole.is_empty() {
        // The whole object is fetched anyway: it serves every request of the key.
        reads.push(read(None, members));
        return;
    }

    if !suffixes.is_empty() {
        let longest = suffixes.iter().map(|(n, _)| *n).max().unwrap_or(1);
        reads.push(read(
            Some(ByteRange::Suffix(longest)),
            suffixes.into_iter().map(|(_, i)| i).collect(),
        ));
    }

    // Sort by start; an open-ended run sorts after bounded runs with the same start.
    runs.sort_unstable_by_key(|r| (r.start, r.end.is_none(), r.end));
    let mut merged: Vec<Run> = Vec::new();
    for run in runs {
        if let Some(cur) = merged.last_mut() {
            let joins = match cur.end {
                None => true, // an open-ended read already covers everything after it
                Some(cur_end) => {
                    run.start <= cur_end.saturating_add(gap)
                        && match run.end {
                            // Merging into an open-ended read fetches nothing it would not.
                            None => true,
                            Some(end) => end.max(cur_end) - cur.start <= policy.max_merged,
                        }
                }
            };
            if joins {
                cur.end = match (cur.end, run.end) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
                cur.serves.extend(run.serves);
                continue;
            }
        }
        merged.push(run);
    }
    for run in merged {
        let range = match run.end {
            Some(end) => ByteRange::Bounded(run.start..end),
            None => ByteRange::Offset(run.start),
        };
        reads.push(read(Some(range), run.serves));
    }
}

/// Groups a sorted list of `(value, index)` pairs into runs of equal values.
fn group_equal<T: PartialEq>(sorted: Vec<(T, usize)>) -> Vec<(T, Vec<usize>)> {
    let mut out: Vec<(T, Vec<usize>)> = Vec::new();
    for (value, index) in sorted {
        match out.last_mut() {
            Some((last, group)) if *last == value => group.push(index),
            _ => out.push((value, vec![index])),
        }
    }
    out
}

/// The bytes one backend read returned.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The bytes of the range that was read (clipped at the end of the object).
    pub bytes: Bytes,
    /// The size of the whole object, when the backend reported it.
    pub object_size: Option<u64>,
}

/// A slice smaller than this fraction of its buffer (and the buffer larger than
/// [`COPY_OUT_MIN_BUFFER`]) is copied out, so one small value never pins a large merged read.
pub const COPY_OUT_FRACTION: usize = 4;
/// Buffers up to this size are always sliced without copying.
pub const COPY_OUT_MIN_BUFFER: usize = 64 * 1024;

/// Slices `range` of `buffer`, copying it out when it would pin a much larger buffer.
pub fn slice_or_copy(buffer: &Bytes, range: Range<usize>) -> Bytes {
    let len = range.end - range.start;
    if buffer.len() > COPY_OUT_MIN_BUFFER && len.saturating_mul(COPY_OUT_FRACTION) < buffer.len() {
        Bytes::copy_from_slice(&buffer[range])
    } else {
        buffer.slice(range)
    }
}

/// Answers one request from the read that served it.
///
/// `read_range` is what the read asked for; `fetched` is what came back.
pub fn answer(
    request: &Request,
    read_range: &Option<ByteRange>,
    fetched: &Fetched,
) -> Result<Bytes> {
    let bytes = &fetched.bytes;
    let len = bytes.len() as u64;
    let Some(range) = &request.range else {
        return Ok(bytes.clone());
    };
    if let Some(ByteRange::Suffix(_)) = read_range {
        // A suffix read only serves suffix requests (the planner guarantees it).
        let ByteRange::Suffix(n) = range else {
            return Err(Error::InvalidData {
                key: request.key.clone(),
                reason: "internal: a suffix read served a non-suffix request".into(),
            });
        };
        let take = len.min(*n);
        return Ok(slice_or_copy(bytes, (len - take) as usize..len as usize));
    }
    let read_start = match read_range {
        Some(ByteRange::Bounded(r)) => r.start,
        Some(ByteRange::Offset(s)) => *s,
        _ => 0,
    };
    // The object's size: reported, or implied by a read that ran to the end.
    let size = fetched.object_size.unwrap_or(read_start + len);
    if size == 0 || (bytes.is_empty() && fetched.object_size.is_none()) {
        // Any range of an empty object is empty (a non-empty object never returns an empty
        // read without an error).
        return Ok(Bytes::new());
    }
    match range {
        ByteRange::Suffix(n) => {
            // Served by a whole read.
            let take = len.min(*n);
            Ok(slice_or_copy(bytes, (len - take) as usize..len as usize))
        }
        ByteRange::Offset(s) | ByteRange::Bounded(Range { start: s, .. }) => {
            let off = s - read_start;
            if off >= len {
                return Err(Error::range_past_end(&request.key, range.clone(), size));
            }
            let end = match range {
                ByteRange::Bounded(r) => (r.end - read_start).min(len),
                _ => len,
            };
            Ok(slice_or_copy(bytes, off as usize..end as usize))
        }
    }
}

/// Rewrites the error of a failed read for one of the requests it served: a range error
/// names that request's own range; anything else is passed on unchanged.
fn error_for(request: &Request, error: &Error) -> Error {
    match (error, &request.range) {
        (Error::InvalidRange { reason, .. }, Some(range)) => Error::InvalidRange {
            key: request.key.clone(),
            range: range.clone(),
            reason: reason.clone(),
        },
        _ => error.clone(),
    }
}

/// Runs `plan` for `requests`, fetching each planned read (or part) with `read` under
/// `budget`, and yields every request's answer as soon as its read completes.
///
/// At most `budget.limit()` reads of this call are pending at once; each backend request runs
/// inside [`IoBudget::run`]. Under a tokio runtime the reads run on a task of it, so they
/// complete and free their permits even while the consumer is busy elsewhere (awaiting
/// another `get_many` of the same store, say); the read function is therefore `'static`
/// (clone what it needs, as `ObjectStoreStore` clones itself). At most `budget.limit()`
/// completed reads' answers wait for the consumer. Dropping the stream aborts the reads in
/// flight.
pub fn execute<F, Fut>(
    requests: Vec<Request>,
    plan: Plan,
    budget: &IoBudget,
    read: F,
) -> GetManyStream<'static>
where
    F: Fn(String, Option<ByteRange>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Fetched>>> + Send + 'static,
{
    let requests = std::sync::Arc::new(requests);
    let invalid: Vec<GetManyItem> = plan
        .invalid
        .iter()
        .map(|&(i, reason)| {
            let r = &requests[i];
            let err = Error::InvalidRange {
                key: r.key.clone(),
                range: r.range.clone().unwrap_or(ByteRange::Offset(0)),
                reason: reason.to_string(),
            };
            (i, Err(err))
        })
        .collect();
    let read = std::sync::Arc::new(read);
    let budget = budget.clone();
    let limit = budget.limit();
    let reads = stream::iter(plan.reads).map(move |planned| {
        let read = read.clone();
        let requests = requests.clone();
        let budget = budget.clone();
        let span = tracing::debug_span!(
            "getmany.read",
            key = %planned.key,
            range = ?planned.range,
            requests = planned.serves.len(),
            parts = planned.part_count(),
        );
        async move {
            let result = fetch_read(&planned, &budget, &*read).await;
            planned
                .serves
                .iter()
                .map(|&i| {
                    let request = &requests[i];
                    let answer = match &result {
                        Ok(None) => Ok(None),
                        Ok(Some(fetched)) => answer(request, &planned.range, fetched).map(Some),
                        Err(e) => Err(error_for(request, e)),
                    };
                    (i, answer)
                })
                .collect::<Vec<GetManyItem>>()
        }
        .instrument(span)
    });
    // On a task of the runtime (see `task.rs`): the reads finish and free their permits even
    // while the consumer is not polling.
    let reads = crate::task::drive(reads, limit);
    stream::iter(invalid).chain(reads).boxed()
}

async fn fetch_read<F, Fut>(
    planned: &PlannedRead,
    budget: &IoBudget,
    read: &F,
) -> Result<Option<Fetched>>
where
    F: Fn(String, Option<ByteRange>) -> Fut,
    Fut: Future<Output = Result<Option<Fetched>>>,
{
    match (&planned.range, planned.part_len) {
        (Some(ByteRange::Bounded(range)), Some(part_len)) if part_len > 0 => {
            fetch_parts(&planned.key, range.clone(), part_len, budget, read).await
        }
        _ => {
            budget
                .run(read(planned.key.clone(), planned.range.clone()))
                .await
        }
    }
}

/// Fetches a split read part by part and reassembles it.
///
/// Parts are requested lazily (see [`UNSIZED_SPLIT_BYTES`]), at most `budget.limit()` at a
/// time, and clipped to the object once a part reveals its size; answers are appended in
/// order as they arrive, into a buffer sized from the bytes the object holds (never from
/// the requested length). The outcome is that of reading the parts in order: the first
/// `None` or error ends the read, except that a part at or past the end of the object
/// (after one that came back short, or failing with a range error after bytes were read)
/// just ends it there.
async fn fetch_parts<F, Fut>(
    key: &str,
    range: Range<u64>,
    part_len: u64,
    budget: &IoBudget,
    read: &F,
) -> Result<Option<Fetched>>
where
    F: Fn(String, Option<ByteRange>) -> Fut,
    Fut: Future<Output = Result<Option<Fetched>>>,
{
    use futures::stream::FuturesUnordered;
    use std::collections::BTreeMap;

    let start = range.start;
    // Where the read ends: the requested end, lowered as the object's end becomes known.
    let mut end = range.end;
    let mut object_size: Option<u64> = None;
    // Every byte before this is known to exist (parts up to here came back full).
    let mut confirmed = start;
    // The start of the next part to request.
    let mut next = start;
    let window = budget.limit().max(1);
    let mut in_flight = FuturesUnordered::new();
    // Answers that arrived before the parts ahead of them, by part start.
    let mut arrived: BTreeMap<u64, (Range<u64>, Result<Option<Fetched>>)> = BTreeMap::new();
    // The bytes so far: the first part's own buffer while it is the only one, then a
    // buffer sized for the whole (clipped) read once it is known.
    let mut first: Option<Bytes> = None;
    let mut buffer = BytesMut::new();
    // The end of the bytes appended so far.
    let mut assembled = start;

    'read: loop {
        // Append, in order, the answers that are here.
        while let Some((part, result)) = arrived.remove(&assembled) {
            match result {
                Ok(None) => return Ok(None),
                Ok(Some(fetched)) => {
                    let len = fetched.bytes.len() as u64;
                    if len > part.end - part.start {
                        return Err(Error::InvalidData {
                            key: key.to_string(),
                            reason: format!(
                                "the backend returned {len} bytes for a part of {} bytes",
                                part.end - part.start
                            ),
                        });
                    }
                    let short = len < part.end - part.start;
                    assembled += len;
                    if first.is_none() && buffer.is_empty() {
                        first = Some(fetched.bytes);
                    } else {
                        if let Some(first) = first.take() {
                            // One buffer for the whole read, sized from the object's size
                            // when the backend reported it (`end` is clipped to it), never
                            // from the requested length; else grown as the parts arrive.
                            if object_size.is_some()
                                && let Ok(total) = usize::try_from(end - start)
                            {
                                buffer.reserve(total);
                            }
                            buffer.extend_from_slice(&first);
                        }
                        buffer.extend_from_slice(&fetched.bytes);
                    }
                    if short {
                        // The object ended inside this part; later parts start past its end.
                        break 'read;
                    }
                }
                // A part after the end of an object that ended exactly on a part boundary.
                Err(Error::InvalidRange { .. }) if assembled > start => break 'read,
                Err(e) => return Err(e),
            }
        }
        if assembled >= end {
            break;
        }
        // Request more parts: all of them once the end is known (a budget's worth at a
        // time), else the first, and those within `UNSIZED_SPLIT_BYTES` of what is known
        // to exist, `UNSIZED_SPLIT_PARTS` at a time.
        while next < end
            && in_flight.len() < window
            && (object_size.is_some()
                || next == start
                || (next - confirmed < UNSIZED_SPLIT_BYTES
                    && in_flight.len() < UNSIZED_SPLIT_PARTS))
        {
            let part = next..next.saturating_add(part_len).min(end);
            next = part.end;
            let fetch = budget.run(read(
                key.to_string(),
                Some(ByteRange::Bounded(part.clone())),
            ));
            in_flight.push(async move { (part, fetch.await) });
        }
        let Some((part, result)) = in_flight.next().await else {
            // Nothing in flight and nothing to assemble: every part came back.
            break;
        };
        if part.start >= end {
            // Past the end of the object, as learnt since it was requested.
            continue;
        }
        match &result {
            Ok(Some(fetched)) => {
                if let Some(size) = fetched.object_size
                    && object_size.is_none()
                {
                    object_size = Some(size);
                    end = end.min(size.max(start));
                }
                let len = fetched.bytes.len() as u64;
                if len < part.end - part.start {
                    end = end.min(part.start + len);
                } else {
                    confirmed = confirmed.max(part.end);
                }
            }
            // The object ends at or before this part (a part after the first one).
            Err(Error::InvalidRange { .. }) if part.start > start => end = end.min(part.start),
            _ => {}
        }
        arrived.insert(part.start, (part, result));
    }
    let bytes = match first {
        Some(first) => first,
        None => buffer.freeze(),
    };
    Ok(Some(Fetched { bytes, object_size }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(key: &str, r: Range<u64>) -> Request {
        Request::range(key, r)
    }

    #[test]
    fn merges_nearby_and_keeps_far_apart() {
        let reqs = vec![
            b("a", 0..10),
            b("a", 10..20),
            b("a", 25..30),
            b("a", 1000..1010),
        ];
        let policy = CoalescePolicy {
            max_gap: MergeGap::Within(5),
            ..CoalescePolicy::default()
        };
        let p = plan(&reqs, &policy);
        let ranges: Vec<_> = p.reads.iter().map(|r| r.range.clone()).collect();
        assert_eq!(
            ranges,
            vec![
                Some(ByteRange::Bounded(0..30)),
                Some(ByteRange::Bounded(1000..1010))
            ]
        );
        assert_eq!(p.stats.bytes_requested, 35);
        assert_eq!(p.stats.bytes_planned, 40);
    }

    #[test]
    fn never_is_distinct_from_gap_zero() {
        let reqs = vec![b("a", 0..10), b("a", 10..20), b("a", 5..15), b("a", 0..10)];
        let never = plan(&reqs, &CoalescePolicy::never_merge());
        assert_eq!(never.reads.len(), 3, "{never:?}");
        let zero = plan(
            &reqs,
            &CoalescePolicy {
                max_gap: MergeGap::Within(0),
                ..CoalescePolicy::default()
            },
        );
        assert_eq!(zero.reads.len(), 1);
    }

    #[test]
    fn cap_limits_merged_size_and_split_parts_cover_the_read() {
        let reqs: Vec<_> = (0..10).map(|i| b("a", i * 100..(i + 1) * 100)).collect();
        let p = plan(
            &reqs,
            &CoalescePolicy {
                max_gap: MergeGap::Within(0),
                max_merged: 300,
                split_size: u64::MAX,
            },
        );
        assert_eq!(p.reads.len(), 4);
        let p = plan(
            &[b("a", 0..1000)],
            &CoalescePolicy {
                split_size: 300,
                ..CoalescePolicy::default()
            },
        );
        assert_eq!(
            p.reads[0].parts().collect::<Vec<_>>(),
            vec![0..250, 250..500, 500..750, 750..1000]
        );
        assert_eq!(p.stats.backend_requests, 4);
    }

    #[test]
    fn whole_read_serves_every_request_of_its_key() {
        let reqs = vec![
            b("a", 0..10),
            Request::whole("a"),
            Request::range("a", ByteRange::Suffix(3)),
            b("b", 0..1),
        ];
        let p = plan(&reqs, &CoalescePolicy::default());
        assert_eq!(p.reads.len(), 2);
        assert_eq!(p.reads[0].range, None);
        assert_eq!(p.reads[0].serves.len(), 3);
    }

    #[test]
    fn offset_absorbs_ranges_after_and_near_it() {
        let reqs = vec![
            Request::range("a", ByteRange::Offset(100)),
            b("a", 150..160),
            b("a", 90..95),
            b("a", 0..10),
        ];
        let policy = CoalescePolicy {
            max_gap: MergeGap::Within(5),
            ..CoalescePolicy::default()
        };
        let p = plan(&reqs, &policy);
        let ranges: Vec<_> = p.reads.iter().map(|r| r.range.clone()).collect();
        assert_eq!(
            ranges,
            vec![Some(ByteRange::Bounded(0..10)), Some(ByteRange::Offset(90))]
        );
    }

    #[test]
    fn invalid_requests_are_set_aside() {
        let reqs = vec![
            b("a", 5..5),
            Request::range("a", ByteRange::Suffix(0)),
            b("a", 0..1),
        ];
        let p = plan(&reqs, &CoalescePolicy::default());
        assert_eq!(
            p.invalid.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert_eq!(p.reads.len(), 1);
    }

    #[test]
    fn small_slices_of_big_buffers_are_copied_out() {
        let big = Bytes::from(vec![7u8; 1 << 20]);
        let inside = |b: &Bytes| {
            let start = big.as_ptr() as usize;
            (start..start + big.len()).contains(&(b.as_ptr() as usize))
        };
        let small = slice_or_copy(&big, 1000..2000);
        assert!(!inside(&small), "a 1 KB slice must not pin a 1 MiB buffer");
        assert_eq!(&small[..], &big[1000..2000]);
        let large = slice_or_copy(&big, 0..600_000);
        assert!(inside(&large), "a slice of most of the buffer shares it");
        let tiny_buffer = Bytes::from(vec![1u8; 4096]);
        let s = slice_or_copy(&tiny_buffer, 0..10);
        assert_eq!(
            s.as_ptr(),
            tiny_buffer.as_ptr(),
            "small buffers are never copied"
        );
    }

    /// A backend over one object that counts the reads asked of it, the parts started
    /// before the first one finished, and reports the object's size or not.
    #[derive(Clone)]
    struct Counted {
        data: Bytes,
        report_size: bool,
        reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        started: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        seen_at_first_finish: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        wait_for: usize,
    }

    impl Counted {
        fn new(len: usize, report_size: bool, wait_for: usize) -> Self {
            Counted {
                data: Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>()),
                report_size,
                reads: Default::default(),
                started: Default::default(),
                seen_at_first_finish: Default::default(),
                wait_for,
            }
        }

        fn read(
            &self,
            range: Option<ByteRange>,
        ) -> impl Future<Output = Result<Option<Fetched>>> + Send + use<> {
            use std::sync::atomic::Ordering::SeqCst;
            let this = self.clone();
            async move {
                this.reads.fetch_add(1, SeqCst);
                this.started.fetch_add(1, SeqCst);
                // Give the other parts a chance to start before this one finishes (bounded:
                // a plan that holds them back must not hang the test).
                for _ in 0..1_000 {
                    if this.started.load(SeqCst) >= this.wait_for {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                let _ = this.seen_at_first_finish.compare_exchange(
                    0,
                    this.started.load(SeqCst),
                    SeqCst,
                    SeqCst,
                );
                let bytes = crate::slice_object("k", &this.data, range)?;
                Ok(Some(Fetched {
                    bytes,
                    object_size: this.report_size.then_some(this.data.len() as u64),
                }))
            }
        }
    }

    fn run_one(backend: &Counted, request: Request, policy: &CoalescePolicy) -> Result<Bytes> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let plan = plan(std::slice::from_ref(&request), policy);
        let budget = IoBudget::new(16);
        let backend = backend.clone();
        let mut answers: Vec<GetManyItem> = rt.block_on(
            execute(vec![request], plan, &budget, move |_, range| {
                backend.read(range)
            })
            .collect(),
        );
        assert_eq!(answers.len(), 1);
        answers.pop().unwrap().1.map(|b| b.unwrap())
    }

    #[test]
    fn a_huge_range_is_planned_lazily_and_fetches_only_what_the_object_holds() {
        use std::sync::atomic::Ordering::SeqCst;
        let policy = CoalescePolicy {
            split_size: 1_000,
            ..CoalescePolicy::default()
        };
        let p = plan(&[b("k", 1..u64::MAX)], &policy);
        assert_eq!(p.reads[0].part_len, Some(1_000));
        assert_eq!(p.reads[0].part_count(), (u64::MAX - 1).div_ceil(1_000));
        assert_eq!(p.stats.backend_requests, p.reads[0].requests());
        let mut parts = p.reads[0].parts();
        assert_eq!(parts.next(), Some(1..1_001));
        assert_eq!(parts.nth(1), Some(2_001..3_001));
        // 1..u64::MAX is u64::MAX - 1 bytes: parts start at 1 + 1,000 k.
        let last_start = 1 + (u64::MAX - 2) / 1_000 * 1_000;
        assert_eq!(p.reads[0].parts().last(), Some(last_start..u64::MAX));
        let mut small = plan(
            &[b("k", 0..1000)],
            &CoalescePolicy {
                split_size: 300,
                ..CoalescePolicy::default()
            },
        )
        .reads[0]
            .parts();
        assert_eq!(small.size_hint(), (4, Some(4)));
        assert_eq!(small.clone().last(), Some(750..1000));
        assert_eq!(small.nth(3), Some(750..1000));
        assert_eq!(small.next(), None);

        for report_size in [true, false] {
            let backend = Counted::new(10_000, report_size, 0);
            let got = run_one(&backend, b("k", 1..u64::MAX), &policy).unwrap();
            assert_eq!(got, backend.data.slice(1..), "report_size {report_size}");
            // 10 parts hold the object; before its end is known at most
            // `UNSIZED_SPLIT_PARTS` are in flight.
            let reads = backend.reads.load(SeqCst);
            assert!(
                reads <= 10 + UNSIZED_SPLIT_PARTS,
                "report_size {report_size}: {reads} reads"
            );
        }
        // A start past the end of the object is an error for the request, as with `get`.
        let backend = Counted::new(10_000, true, 0);
        let err = run_one(&backend, b("k", 20_000..u64::MAX), &policy).unwrap_err();
        assert!(matches!(err, Error::InvalidRange { .. }), "{err}");
        // An object that ends on a part boundary.
        let backend = Counted::new(3_000, false, 0);
        let got = run_one(&backend, b("k", 0..1 << 40), &policy).unwrap();
        assert_eq!(got, backend.data);
    }

    #[test]
    fn an_honest_split_read_requests_all_its_parts_at_once() {
        use std::sync::atomic::Ordering::SeqCst;
        let policy = CoalescePolicy {
            split_size: 1_000,
            ..CoalescePolicy::default()
        };
        // 10 parts, all within the object: all are started before any finishes.
        let backend = Counted::new(20_000, true, 10);
        let got = run_one(&backend, b("k", 5_000..15_000), &policy).unwrap();
        assert_eq!(got, backend.data.slice(5_000..15_000));
        assert_eq!(backend.reads.load(SeqCst), 10);
        assert_eq!(backend.seen_at_first_finish.load(SeqCst), 10);
    }

    #[test]
    fn answer_slices_clips_and_reports_past_end() {
        let fetched = Fetched {
            bytes: Bytes::from_static(b"0123456789"),
            object_size: None,
        };
        // The read asked for 100..200 and the object ended at 110.
        let read_range = Some(ByteRange::Bounded(100..200));
        let ok = answer(&b("k", 105..150), &read_range, &fetched).unwrap();
        assert_eq!(ok, "56789");
        let err = answer(&b("k", 150..160), &read_range, &fetched).unwrap_err();
        assert!(matches!(err, Error::InvalidRange { .. }), "{err}");
        assert!(err.to_string().contains("110 bytes"), "{err}");
    }
}
