//! The chunk-read pipeline: chunk requests -> ONE `get_many` -> decode off the async threads
//! -> each chunk written into its region of the caller's output.
//!
//! [`ChunkPipeline::run`] takes a list of [`ChunkRequest`]s (a key, an optional byte range,
//! and the destination region of the chunk) and a [`ChunkDecoder`]. It issues a single
//! [`Store::get_many`] for all of them and, as the answers arrive in completion order,
//! hands each one to a decode task on tokio's blocking pool, so decoding runs while other
//! reads are still in flight and never blocks the threads that drive I/O. Each decode task
//! writes its chunk into the shared output; a missing chunk (or a failed one) has its region
//! filled with the decoder's fill value. Every chunk gets a [`ChunkStatus`].
//!
//! Memory stays bounded by the reads in flight plus the decode window, not by the size of the
//! request: at most [`ChunkPipeline::decode_window`] chunks are being decoded at once, and
//! while the window is full the pipeline stops pulling answers from the store, so the store
//! starts no new reads (its own budget bounds those in flight).
//!
//! Dropping the future returned by [`ChunkPipeline::run`] drops the `get_many` stream (which
//! cancels the reads in flight) and aborts the decode tasks that have not started; a decode
//! already running finishes its one chunk and its result is discarded.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use bytes::Bytes;
use futures::StreamExt;
use tokio::task::{Id, JoinError, JoinSet};

use crate::{Error, Request, Result, Store};

/// One chunk to read: what to read and where the decoded chunk goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRequest<R> {
    /// The read (key and optional byte range). `None` when the chunk is known to be empty
    /// before any read (an empty inner chunk of a shard, say): its region is filled and it
    /// is reported [`ChunkStatus::Missing`] without I/O.
    pub request: Option<Request>,
    /// Bytes already in hand (a slice of a shard that was read whole, say): decoded without
    /// a read, with `request` naming them in errors.
    pub ready: Option<Bytes>,
    /// Where the decoded chunk goes in the output, in the decoder's terms.
    pub region: R,
}

impl<R> ChunkRequest<R> {
    /// A chunk read from `request` into `region`.
    pub fn new(request: Request, region: R) -> Self {
        ChunkRequest {
            request: Some(request),
            ready: None,
            region,
        }
    }

    /// A chunk whose stored bytes are already in hand: decoded into `region` without a
    /// read; `request` says where they came from.
    pub fn ready(request: Request, bytes: Bytes, region: R) -> Self {
        ChunkRequest {
            request: Some(request),
            ready: Some(bytes),
            region,
        }
    }

    /// A chunk known to be empty: `region` is filled without any read.
    pub fn empty(region: R) -> Self {
        ChunkRequest {
            request: None,
            ready: None,
            region,
        }
    }
}

/// How a pipeline turns stored bytes into the caller's output.
///
/// `decode` runs on tokio's blocking pool, several chunks at once, without holding the
/// output; `write` and `fill` run there too, holding the output's lock for just the copy.
pub trait ChunkDecoder: Send + Sync + 'static {
    /// Where one chunk goes in the output (for arrays: the chunk's position).
    type Region: Send + 'static;
    /// A decoded chunk, before it is written into the output.
    type Decoded: Send + 'static;
    /// The caller's output buffer, which every chunk writes into.
    type Output: Send + 'static;

    /// Decodes the stored bytes of the chunk read by `request`. An error fails this chunk
    /// only; name the key (for example with [`Error::InvalidData`]).
    fn decode(
        &self,
        request: &Request,
        bytes: Bytes,
        region: &Self::Region,
    ) -> Result<Self::Decoded>;

    /// Writes a decoded chunk into its region of `output`.
    fn write(&self, decoded: Self::Decoded, region: &Self::Region, output: &mut Self::Output);

    /// Fills the region of a missing or failed chunk with the fill value.
    fn fill(&self, region: &Self::Region, output: &mut Self::Output);
}

/// What became of one chunk.
#[derive(Debug, Clone)]
pub enum ChunkStatus {
    /// Read, decoded and written.
    Present,
    /// The key does not exist (or the chunk was known to be empty): its region holds the
    /// fill value.
    Missing,
    /// The read or the decode failed: its region holds the fill value.
    Failed(Error),
}

impl ChunkStatus {
    /// Whether the chunk failed.
    pub fn is_failed(&self) -> bool {
        matches!(self, ChunkStatus::Failed(_))
    }
}

/// The output of a pipeline run and what happened to each chunk.
pub struct PipelineOutcome<O> {
    /// The caller's output, with every chunk written or filled.
    pub output: O,
    /// One status per chunk request, in request order.
    pub statuses: Vec<ChunkStatus>,
    /// Reads handed to `get_many` (chunk requests with a read).
    pub reads: usize,
}

impl<O> PipelineOutcome<O> {
    /// Chunks that were read and written.
    pub fn present(&self) -> usize {
        self.count(|s| matches!(s, ChunkStatus::Present))
    }

    /// Chunks that were missing (filled).
    pub fn missing(&self) -> usize {
        self.count(|s| matches!(s, ChunkStatus::Missing))
    }

    /// The failed chunks: their index in the request list and the error.
    pub fn failures(&self) -> impl Iterator<Item = (usize, &Error)> {
        self.statuses
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                ChunkStatus::Failed(e) => Some((i, e)),
                _ => None,
            })
    }

    fn count(&self, f: impl Fn(&ChunkStatus) -> bool) -> usize {
        self.statuses.iter().filter(|s| f(s)).count()
    }
}

impl<O> fmt::Debug for PipelineOutcome<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineOutcome")
            .field("statuses", &self.statuses)
            .field("reads", &self.reads)
            .finish_non_exhaustive()
    }
}

/// Reads chunks with one `get_many`, decoding them on a bounded pool as they arrive.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use getmany::pipeline::{ChunkDecoder, ChunkPipeline, ChunkRequest, ChunkStatus};
/// use getmany::{MemoryStore, Request};
///
/// /// Chunks of 4 little-endian u32s; a region is the chunk's first index in the output.
/// struct U32Chunks;
/// impl ChunkDecoder for U32Chunks {
///     type Region = usize;
///     type Decoded = Vec<u32>;
///     type Output = Vec<u32>;
///     fn decode(&self, request: &Request, bytes: Bytes, _: &usize) -> getmany::Result<Vec<u32>> {
///         if bytes.len() != 16 {
///             return Err(getmany::Error::InvalidData {
///                 key: request.key.clone(),
///                 reason: format!("{} bytes, expected 16", bytes.len()),
///             });
///         }
///         Ok(bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
///     }
///     fn write(&self, decoded: Vec<u32>, start: &usize, out: &mut Vec<u32>) {
///         out[*start..*start + 4].copy_from_slice(&decoded);
///     }
///     fn fill(&self, start: &usize, out: &mut Vec<u32>) {
///         out[*start..*start + 4].fill(u32::MAX);
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let store = MemoryStore::new();
/// let chunk: Vec<u8> = (0u32..4).flat_map(|v| v.to_le_bytes()).collect();
/// store.insert("c/0", chunk);
/// let chunks = vec![
///     ChunkRequest::new(Request::whole("c/0"), 0),
///     ChunkRequest::new(Request::whole("c/1"), 4), // missing: filled
/// ];
/// let outcome = ChunkPipeline::new(U32Chunks).run(&store, chunks, vec![0; 8]).await;
/// assert_eq!(outcome.output, [0, 1, 2, 3, u32::MAX, u32::MAX, u32::MAX, u32::MAX]);
/// assert!(matches!(outcome.statuses[1], ChunkStatus::Missing));
/// # }
/// ```
pub struct ChunkPipeline<D> {
    decoder: Arc<D>,
    decode_window: usize,
}

impl<D> fmt::Debug for ChunkPipeline<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkPipeline")
            .field("decode_window", &self.decode_window)
            .finish_non_exhaustive()
    }
}

impl<D> Clone for ChunkPipeline<D> {
    fn clone(&self) -> Self {
        ChunkPipeline {
            decoder: self.decoder.clone(),
            decode_window: self.decode_window,
        }
    }
}

/// The default decode window: four chunks per core, so each core has work queued while
/// answers are handed over, and chunks that arrive together go to the pool in one batch.
fn default_window() -> usize {
    4 * std::thread::available_parallelism().map_or(2, |n| n.get())
}

enum Job {
    Decode(Request, Bytes),
    Fill(ChunkStatus),
}

/// Jobs handed to one decode task: consecutive answers that were ready together.
type Batch = Vec<(usize, Job)>;

enum Event<T> {
    Joined(std::result::Result<(Id, T), JoinError>),
    /// Answers ready together (at most the room left in the window), and whether the
    /// stream ended after them.
    Answers(Vec<crate::GetManyItem>, bool),
    Local(Batch),
    Done,
}

fn lock<O>(output: &Mutex<O>) -> MutexGuard<'_, O> {
    // A decoder that panicked mid-write leaves its own chunk's region half-written (that
    // chunk is reported failed); the rest of the output is still good.
    output.lock().unwrap_or_else(|e| e.into_inner())
}

/// Decodes (or fills) one chunk into the output; runs on the blocking pool.
fn process<D: ChunkDecoder>(
    decoder: &D,
    job: Job,
    region: &D::Region,
    output: &Mutex<D::Output>,
) -> ChunkStatus {
    match job {
        Job::Decode(request, bytes) => {
            // A decoder that panics on bad bytes fails its chunk, not the read.
            let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
                decoder.decode(&request, bytes, region)
            }))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(Error::InvalidData {
                    key: request.key.clone(),
                    reason: format!("the chunk decoder failed: panicked: {what}"),
                })
            });
            match decoded {
                Ok(decoded) => {
                    decoder.write(decoded, region, &mut lock(output));
                    ChunkStatus::Present
                }
                Err(e) => {
                    decoder.fill(region, &mut lock(output));
                    ChunkStatus::Failed(e)
                }
            }
        }
        Job::Fill(status) => {
            decoder.fill(region, &mut lock(output));
            status
        }
    }
}

impl<D: ChunkDecoder> ChunkPipeline<D> {
    /// A pipeline with `decoder` and the default decode window (four chunks per core).
    pub fn new(decoder: D) -> Self {
        Self::from_arc(Arc::new(decoder))
    }

    /// A pipeline sharing `decoder`.
    pub fn from_arc(decoder: Arc<D>) -> Self {
        ChunkPipeline {
            decoder,
            decode_window: default_window(),
        }
    }

    /// At most `window` chunks (at least 1) decoded or waiting to be written at once.
    pub fn with_decode_window(mut self, window: usize) -> Self {
        self.decode_window = window.max(1);
        self
    }

    /// The most chunks decoded at once.
    pub fn decode_window(&self) -> usize {
        self.decode_window
    }

    /// The decoder.
    pub fn decoder(&self) -> &Arc<D> {
        &self.decoder
    }

    /// Reads `chunks` from `store` with one `get_many` and writes each into `output`.
    ///
    /// Never fails as a whole: each chunk's fate is in [`PipelineOutcome::statuses`].
    pub async fn run<S: Store + ?Sized>(
        &self,
        store: &S,
        chunks: Vec<ChunkRequest<D::Region>>,
        output: D::Output,
    ) -> PipelineOutcome<D::Output> {
        let mut regions: Vec<Option<D::Region>> = Vec::with_capacity(chunks.len());
        let mut requests = Vec::new();
        let mut owner = Vec::new();
        // Chunks that need no read: fills, and bytes already in hand.
        let mut local: VecDeque<(usize, Job)> = VecDeque::new();
        for (index, chunk) in chunks.into_iter().enumerate() {
            regions.push(Some(chunk.region));
            match (chunk.request, chunk.ready) {
                (Some(request), None) => {
                    requests.push(request);
                    owner.push(index);
                }
                (Some(request), Some(bytes)) => {
                    local.push_back((index, Job::Decode(request, bytes)));
                }
                (None, _) => local.push_back((index, Job::Fill(ChunkStatus::Missing))),
            }
        }
        let reads = requests.len();
        let keys: Vec<Request> = requests.clone();
        let mut statuses: Vec<Option<ChunkStatus>> = vec![None; regions.len()];
        let output = Arc::new(Mutex::new(output));
        type Done = Vec<(usize, ChunkStatus)>;
        let mut tasks: JoinSet<Done> = JoinSet::new();
        // The chunks each task holds, and how many chunks all tasks hold together.
        let mut running: HashMap<Id, Vec<usize>> = HashMap::new();
        let mut held = 0usize;
        let mut stream = if requests.is_empty() {
            futures::stream::empty().boxed()
        } else {
            store.get_many(requests)
        };
        let mut stream_done = false;
        let window = self.decode_window;

        // One blocking task decodes a batch of chunks in turn: answers that arrive together
        // (the slices of one merged read) cost one hand-off to the pool, not one each.
        let spawn = |tasks: &mut JoinSet<Done>,
                     batch: Batch,
                     regions: &mut Vec<Option<D::Region>>|
         -> Option<(Id, Vec<usize>)> {
            let mut work = Vec::with_capacity(batch.len());
            for (chunk, job) in batch {
                match regions.get_mut(chunk).and_then(Option::take) {
                    Some(region) => work.push((chunk, job, region)),
                    // A store that answered one request twice: the first answer stands.
                    None => tracing::warn!(chunk, "getmany.pipeline: a chunk was answered twice"),
                }
            }
            if work.is_empty() {
                return None;
            }
            let chunks: Vec<usize> = work.iter().map(|(c, _, _)| *c).collect();
            let decoder = self.decoder.clone();
            let output = output.clone();
            let handle = tasks.spawn_blocking(move || {
                work.into_iter()
                    .map(|(chunk, job, region)| (chunk, process(&*decoder, job, &region, &output)))
                    .collect()
            });
            Some((handle.id(), chunks))
        };

        loop {
            let event = poll_fn(|cx| {
                if let Poll::Ready(Some(joined)) = tasks.poll_join_next_with_id(cx) {
                    return Poll::Ready(Event::Joined(joined));
                }
                let room = window.saturating_sub(held);
                if room > 0 {
                    // Half the room at most per batch: a slow chunk holds up only its own
                    // batch, and the rest of the window keeps other cores (and the reads)
                    // going.
                    let batch = room.div_ceil(2);
                    if !stream_done {
                        let mut answers = Vec::new();
                        let mut ended = false;
                        while answers.len() < batch {
                            match stream.poll_next_unpin(cx) {
                                Poll::Ready(Some(item)) => answers.push(item),
                                Poll::Ready(None) => {
                                    ended = true;
                                    break;
                                }
                                Poll::Pending => break,
                            }
                        }
                        if ended || !answers.is_empty() {
                            return Poll::Ready(Event::Answers(answers, ended));
                        }
                    }
                    if !local.is_empty() {
                        let n = batch.min(local.len());
                        return Poll::Ready(Event::Local(local.drain(..n).collect()));
                    }
                }
                if stream_done && tasks.is_empty() && local.is_empty() {
                    return Poll::Ready(Event::Done);
                }
                Poll::Pending
            })
            .await;
            let batch = match event {
                Event::Joined(Ok((id, done))) => {
                    if let Some(chunks) = running.remove(&id) {
                        held -= chunks.len();
                    }
                    for (chunk, status) in done {
                        statuses[chunk] = Some(status);
                    }
                    continue;
                }
                Event::Joined(Err(e)) => {
                    // A decoder's write or fill panicked (decode panics are caught per
                    // chunk): every chunk of that task fails.
                    if let Some(chunks) = running.remove(&e.id()) {
                        held -= chunks.len();
                        for chunk in chunks {
                            let key = owner
                                .iter()
                                .position(|&c| c == chunk)
                                .map_or_else(String::new, |i| keys[i].key.clone());
                            statuses[chunk] = Some(ChunkStatus::Failed(Error::InvalidData {
                                key,
                                reason: format!("the chunk decoder failed: {e}"),
                            }));
                        }
                    }
                    continue;
                }
                Event::Answers(answers, ended) => {
                    stream_done |= ended;
                    let mut batch = Vec::with_capacity(answers.len());
                    for (index, result) in answers {
                        let Some(&chunk) = owner.get(index) else {
                            tracing::warn!(index, "getmany.pipeline: answer to an unknown request");
                            continue;
                        };
                        let job = match result {
                            Ok(Some(bytes)) => Job::Decode(keys[index].clone(), bytes),
                            Ok(None) => Job::Fill(ChunkStatus::Missing),
                            Err(e) => Job::Fill(ChunkStatus::Failed(e)),
                        };
                        batch.push((chunk, job));
                    }
                    batch
                }
                Event::Local(batch) => batch,
                Event::Done => break,
            };
            if let Some((id, chunks)) = spawn(&mut tasks, batch, &mut regions) {
                held += chunks.len();
                running.insert(id, chunks);
            }
        }
        drop(stream);

        // A request the store never answered (a store bug) is filled and reported.
        for (chunk, region) in regions.iter().enumerate() {
            if let Some(region) = region {
                self.decoder.fill(region, &mut lock(&output));
                let key = owner
                    .iter()
                    .position(|&c| c == chunk)
                    .map_or_else(String::new, |i| keys[i].key.clone());
                statuses[chunk] = Some(ChunkStatus::Failed(Error::InvalidData {
                    key,
                    reason: "the store never answered this request".into(),
                }));
            }
        }
        let statuses = statuses
            .into_iter()
            .map(|s| {
                s.unwrap_or_else(|| {
                    ChunkStatus::Failed(Error::InvalidData {
                        key: String::new(),
                        reason: "internal: a chunk was never completed".into(),
                    })
                })
            })
            .collect();
        // Every task has finished and dropped its handle on the output.
        let output = match Arc::try_unwrap(output) {
            Ok(mutex) => mutex.into_inner().unwrap_or_else(|e| e.into_inner()),
            Err(_) => unreachable!("every decode task has completed"),
        };
        PipelineOutcome {
            output,
            statuses,
            reads,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::{ByteRange, IoBudget, MemoryStore};

    /// Counts buffers alive now and at most, from when a store produced them until every
    /// holder has dropped them.
    #[derive(Debug, Default)]
    struct Live {
        now: AtomicUsize,
        peak: AtomicUsize,
    }

    impl Live {
        fn up(&self) {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
        }
        fn down(&self) {
            self.now.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The owner of one tracked buffer: counted alive until the last `Bytes` on it drops.
    struct Tracked {
        bytes: Bytes,
        live: Arc<Live>,
    }
    impl AsRef<[u8]> for Tracked {
        fn as_ref(&self) -> &[u8] {
            &self.bytes
        }
    }
    impl Drop for Tracked {
        fn drop(&mut self) {
            self.live.down();
        }
    }

    /// A store whose every value is a tracked buffer, produced inside `get` (so a read that
    /// completed but was not yet taken from the stream counts too), and which can signal
    /// when a chosen key has been served.
    #[derive(Debug)]
    struct TrackingStore {
        inner: MemoryStore,
        live: Arc<Live>,
        served: AtomicUsize,
        signal_after: Option<(usize, Mutex<mpsc::SyncSender<()>>)>,
    }

    #[async_trait]
    impl Store for TrackingStore {
        async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Bytes>> {
            let value = self.inner.get(key, range).await?;
            let served = self.served.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some((n, tx)) = &self.signal_after
                && served == *n
            {
                let _ = lock(tx).try_send(());
            }
            Ok(value.map(|bytes| {
                self.live.up();
                Bytes::from_owner(Tracked {
                    bytes,
                    live: self.live.clone(),
                })
            }))
        }
        fn io_budget(&self) -> &IoBudget {
            self.inner.io_budget()
        }
    }

    /// Chunks of 8 little-endian u64s; region = chunk number. Decoding takes a little while
    /// (so an unbounded pipeline would pile up answers), counts decoded buffers alive, and
    /// can be told to fail, panic, or wait for a signal.
    struct SlowDecoder {
        decoded_live: Arc<Live>,
        wait_for: Option<(usize, Mutex<mpsc::Receiver<()>>)>,
    }

    struct Decoded {
        values: Vec<u64>,
        live: Arc<Live>,
    }
    impl Drop for Decoded {
        fn drop(&mut self) {
            self.live.down();
        }
    }

    impl ChunkDecoder for SlowDecoder {
        type Region = usize;
        type Decoded = Decoded;
        type Output = Vec<u64>;

        fn decode(&self, request: &Request, bytes: Bytes, chunk: &usize) -> Result<Decoded> {
            if let Some((n, rx)) = &self.wait_for
                && chunk == n
            {
                // Only a decode running off the async thread can see this arrive.
                lock(rx)
                    .recv_timeout(Duration::from_secs(20))
                    .map_err(|_| Error::InvalidData {
                        key: request.key.clone(),
                        reason: "decode blocked the reads".into(),
                    })?;
            }
            std::thread::sleep(Duration::from_micros(300));
            if bytes.len() != 64 {
                return Err(Error::InvalidData {
                    key: request.key.clone(),
                    reason: format!("{} bytes, expected 64", bytes.len()),
                });
            }
            if bytes[0] == 0xff {
                panic!("a decoder bug");
            }
            self.decoded_live.up();
            Ok(Decoded {
                values: bytes
                    .chunks_exact(8)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
                    .collect(),
                live: self.decoded_live.clone(),
            })
        }
        fn write(&self, decoded: Decoded, chunk: &usize, out: &mut Vec<u64>) {
            out[chunk * 8..chunk * 8 + 8].copy_from_slice(&decoded.values);
        }
        fn fill(&self, chunk: &usize, out: &mut Vec<u64>) {
            out[chunk * 8..chunk * 8 + 8].fill(u64::MAX);
        }
    }

    fn chunk_bytes(i: usize) -> Vec<u8> {
        (0..8u64)
            .flat_map(|v| (i as u64 * 8 + v).to_le_bytes())
            .collect()
    }

    fn store(chunks: usize, limit: usize) -> TrackingStore {
        let inner = MemoryStore::with_limit(limit);
        for i in 0..chunks {
            inner.insert(format!("c/{i}"), chunk_bytes(i));
        }
        TrackingStore {
            inner,
            live: Arc::default(),
            served: AtomicUsize::new(0),
            signal_after: None,
        }
    }

    fn decoder() -> SlowDecoder {
        SlowDecoder {
            decoded_live: Arc::default(),
            wait_for: None,
        }
    }

    fn requests(n: usize) -> Vec<ChunkRequest<usize>> {
        (0..n)
            .map(|i| ChunkRequest::new(Request::whole(format!("c/{i}")), i))
            .collect()
    }

    /// 600 chunks through a budget of 4 reads and a window of 3 decodes: never more than
    /// 4 + 3 + 1 fetched buffers alive (the +1: the answer being handed to a decode task),
    /// and never more than 3 decoded ones, whatever the request size.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_is_bounded_by_reads_in_flight_and_the_decode_window() {
        const N: usize = 600;
        let store = store(N, 4);
        let decoder = decoder();
        let decoded_live = decoder.decoded_live.clone();
        let pipeline = ChunkPipeline::new(decoder).with_decode_window(3);
        let outcome = pipeline.run(&store, requests(N), vec![0; N * 8]).await;
        assert_eq!(outcome.present(), N);
        let expected: Vec<u64> = (0..N as u64 * 8).collect();
        assert_eq!(outcome.output, expected);
        let peak = store.live.peak.load(Ordering::SeqCst);
        assert!(peak <= 4 + 3 + 1, "{peak} fetched buffers alive at once");
        assert!(peak >= 2, "the counter works ({peak})");
        let decoded_peak = decoded_live.peak.load(Ordering::SeqCst);
        assert!(
            decoded_peak <= 3,
            "{decoded_peak} decoded chunks alive at once"
        );
        assert_eq!(
            store.live.now.load(Ordering::SeqCst),
            0,
            "every buffer freed"
        );
        assert_eq!(decoded_live.now.load(Ordering::SeqCst), 0);
    }

    /// On a single-threaded runtime, the decode of chunk 0 waits until the store has served
    /// the last chunk: only possible if decoding runs off the thread that drives the reads.
    #[tokio::test(flavor = "current_thread")]
    async fn decoding_never_blocks_the_reads() {
        const N: usize = 40;
        let (tx, rx) = mpsc::sync_channel(1);
        let mut store = store(N, 2);
        store.signal_after = Some((N, Mutex::new(tx)));
        let decoder = SlowDecoder {
            decoded_live: Arc::default(),
            wait_for: Some((0, Mutex::new(rx))),
        };
        let outcome = ChunkPipeline::new(decoder)
            .with_decode_window(2)
            .run(&store, requests(N), vec![0; N * 8])
            .await;
        let failures: Vec<_> = outcome.failures().collect();
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(outcome.present(), N);
    }

    /// Missing chunks and chunks known empty are filled; a failed read, a decode error and a
    /// panicking decoder fail their own chunk only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_chunk_gets_its_own_status() {
        let store = store(10, 4);
        store.inner.insert("c/3", vec![1u8; 5]); // decode error
        let mut bad = chunk_bytes(4);
        bad[0] = 0xff; // panics the decoder
        store.inner.insert("c/4", bad);
        let mut chunks = requests(10);
        chunks[5] = ChunkRequest::new(Request::whole("c/missing"), 5);
        chunks[6] = ChunkRequest::new(Request::range("c/6", 100..120), 6); // past the end
        chunks[7] = ChunkRequest::empty(7);
        // Bytes in hand: decoded without a read.
        chunks[8] = ChunkRequest::ready(Request::whole("in-hand"), chunk_bytes(8).into(), 8);
        let outcome = ChunkPipeline::new(decoder())
            .run(&store, chunks, vec![0; 80])
            .await;
        assert_eq!(outcome.reads, 8);
        let kinds: Vec<&str> = outcome
            .statuses
            .iter()
            .map(|s| match s {
                ChunkStatus::Present => "present",
                ChunkStatus::Missing => "missing",
                ChunkStatus::Failed(_) => "failed",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "present", "present", "present", "failed", "failed", "missing", "failed",
                "missing", "present", "present"
            ]
        );
        for chunk in [3, 4, 5, 6, 7] {
            assert!(
                outcome.output[chunk * 8..chunk * 8 + 8]
                    .iter()
                    .all(|&v| v == u64::MAX)
            );
        }
        for chunk in [0, 1, 2, 8, 9] {
            let want: Vec<u64> = (chunk as u64 * 8..chunk as u64 * 8 + 8).collect();
            assert_eq!(&outcome.output[chunk * 8..chunk * 8 + 8], &want[..]);
        }
        let errors: Vec<String> = outcome.failures().map(|(_, e)| e.to_string()).collect();
        assert!(errors[0].contains("5 bytes, expected 64"), "{errors:?}");
        assert!(errors[1].contains("decoder failed"), "{errors:?}");
        assert!(errors[2].contains("invalid range"), "{errors:?}");
    }

    /// A store whose reads never complete, counting the reads alive.
    #[derive(Debug, Default)]
    struct Stuck {
        alive: Arc<AtomicUsize>,
        budget: IoBudget,
    }
    struct Guard(Arc<AtomicUsize>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    #[async_trait]
    impl Store for Stuck {
        async fn get(&self, _: &str, _: Option<ByteRange>) -> Result<Option<Bytes>> {
            self.alive.fetch_add(1, Ordering::SeqCst);
            let _guard = Guard(self.alive.clone());
            futures::future::pending::<()>().await;
            Ok(None)
        }
        fn io_budget(&self) -> &IoBudget {
            &self.budget
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_run_cancels_the_reads() {
        let store = Stuck::default();
        let pipeline = ChunkPipeline::new(decoder());
        let run = pipeline.run(&store, requests(100), vec![0; 800]);
        let mut run = Box::pin(run);
        // Poll until the reads have started.
        while store.alive.load(Ordering::SeqCst) == 0 {
            let _ = futures::poll!(run.as_mut());
            tokio::task::yield_now().await;
        }
        assert!(store.alive.load(Ordering::SeqCst) > 0);
        drop(run);
        assert_eq!(
            store.alive.load(Ordering::SeqCst),
            0,
            "reads cancelled on drop"
        );
    }
}
