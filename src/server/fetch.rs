//! Fetching a bundle's objects through the backing stores' `get_many`, in request order,
//! through a bounded reorder window.
//!
//! The requests of a bundle are issued to the stores in consecutive *segments* (one
//! `get_many` call per store and segment), so the stores' own bulk paths (coalescing, shared
//! I/O budgets) apply. A store answers a segment in completion order; [`Fetcher`] puts the
//! answers back in request order, holding the ones that arrive early in a reorder buffer.
//!
//! # Memory bound
//!
//! * At most [`Window::requests`] requests are *outstanding* (issued to a store and not yet
//!   handed on), so at most that many answers are ever held. A segment is issued whole, once
//!   the window has room for all of it.
//! * No new segment is issued while the reorder buffer holds [`Window::bytes`] or more.
//!
//! So the buffer holds at most `Window::bytes` plus what the outstanding requests return,
//! and never more than `Window::requests` answers. A slow first object therefore costs at
//! most one window of memory, never the whole bundle. [`FetchStats`] records the peaks so
//! tests can check the bound.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::{BoxStream, SelectAll, Stream, StreamExt};

use crate::{Error, Request, Result, Store};

/// The reorder window of one bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Requests issued and not yet handed on, at most.
    pub requests: usize,
    /// No new segment is issued while the reorder buffer holds this many bytes.
    pub bytes: u64,
    /// Requests per `get_many` call on a store.
    pub segment: usize,
}

impl Default for Window {
    /// 1,024 requests, 64 MiB, segments of 128 requests.
    fn default() -> Self {
        Window {
            requests: 1024,
            bytes: 64 << 20,
            segment: 128,
        }
    }
}

/// Peaks of the reorder buffers of every bundle served, for tests and monitoring.
#[derive(Debug, Default)]
pub struct FetchStats {
    peak_buffered_bytes: AtomicU64,
    peak_buffered_answers: AtomicUsize,
    peak_outstanding: AtomicUsize,
}

impl FetchStats {
    /// The most bytes any reorder buffer has held at once.
    pub fn peak_buffered_bytes(&self) -> u64 {
        self.peak_buffered_bytes.load(Ordering::SeqCst)
    }

    /// The most answers any reorder buffer has held at once.
    pub fn peak_buffered_answers(&self) -> usize {
        self.peak_buffered_answers.load(Ordering::SeqCst)
    }

    /// The most requests any bundle has had outstanding at once.
    pub fn peak_outstanding(&self) -> usize {
        self.peak_outstanding.load(Ordering::SeqCst)
    }

    /// Sets the peaks back to zero.
    pub fn reset(&self) {
        self.peak_buffered_bytes.store(0, Ordering::SeqCst);
        self.peak_buffered_answers.store(0, Ordering::SeqCst);
        self.peak_outstanding.store(0, Ordering::SeqCst);
    }
}

/// One read of a bundle: which store, and what to read from it.
#[derive(Debug, Clone)]
pub(crate) struct Fetch {
    pub store: Arc<dyn Store>,
    pub request: Request,
}

type Answer = (usize, Result<Option<Bytes>>);

/// The requests of a segment for one store: (store, bundle indices, requests).
type StoreGroup = (Arc<dyn Store>, Vec<usize>, Vec<Request>);

/// The stream of a bundle's answers: in request order, or (for clients that asked for it) in
/// completion order.
pub(crate) struct Fetcher {
    fetches: Vec<Fetch>,
    window: Window,
    ordered: bool,
    stats: Arc<FetchStats>,
    next_issue: usize,
    next_emit: usize,
    outstanding: usize,
    running: SelectAll<BoxStream<'static, Answer>>,
    buffer: HashMap<usize, Result<Option<Bytes>>>,
    buffered_bytes: u64,
    /// Answers received per index, to notice a store that skips one.
    answered: Vec<bool>,
}

impl Fetcher {
    pub fn new(fetches: Vec<Fetch>, window: Window, ordered: bool, stats: Arc<FetchStats>) -> Self {
        let n = fetches.len();
        Fetcher {
            fetches,
            window: Window {
                requests: window.requests.max(1),
                segment: window.segment.clamp(1, window.requests.max(1)),
                bytes: window.bytes,
            },
            ordered,
            stats,
            next_issue: 0,
            next_emit: 0,
            outstanding: 0,
            running: SelectAll::new(),
            buffer: HashMap::new(),
            buffered_bytes: 0,
            answered: vec![false; n],
        }
    }

    /// Whether the next segment may be issued: a whole one (or the rest, if shorter) must
    /// fit the window. Issuing whatever room there is would, once the window is full, send
    /// one `get_many` call per answer handed on, each with its own planning and task.
    fn can_issue(&self) -> bool {
        let remaining = self.fetches.len() - self.next_issue;
        let room = self.window.requests - self.outstanding;
        remaining > 0
            && room >= self.window.segment.min(remaining)
            && self.buffered_bytes < self.window.bytes
    }

    /// Issues the next segment: one `get_many` per store among its requests.
    fn issue(&mut self) {
        let room = self.window.requests - self.outstanding;
        let len = self
            .window
            .segment
            .min(room)
            .min(self.fetches.len() - self.next_issue);
        let start = self.next_issue;
        self.next_issue += len;
        self.outstanding += len;
        self.stats
            .peak_outstanding
            .fetch_max(self.outstanding, Ordering::SeqCst);
        // Group the segment by store (by pointer), keeping request order within each group.
        let mut groups: Vec<StoreGroup> = Vec::new();
        for index in start..start + len {
            let fetch = &self.fetches[index];
            let group = groups
                .iter_mut()
                .find(|(store, _, _)| Arc::ptr_eq(store, &fetch.store));
            match group {
                Some((_, indices, requests)) => {
                    indices.push(index);
                    requests.push(fetch.request.clone());
                }
                None => groups.push((
                    fetch.store.clone(),
                    vec![index],
                    vec![fetch.request.clone()],
                )),
            }
        }
        for (store, indices, requests) in groups {
            let stream = owned_get_many(store, requests)
                .map(move |(local, result)| match indices.get(local) {
                    Some(&global) => (global, result),
                    None => (usize::MAX, result),
                })
                .boxed();
            self.running.push(stream);
        }
    }

    fn take_buffered(&mut self, index: usize) -> Option<Answer> {
        let result = self.buffer.remove(&index)?;
        self.buffered_bytes -= answer_len(&result);
        Some((index, result))
    }

    fn hand_on(&mut self, answer: Answer) -> Poll<Option<Answer>> {
        self.outstanding -= 1;
        if self.ordered {
            self.next_emit += 1;
        }
        Poll::Ready(Some(answer))
    }
}

fn answer_len(result: &Result<Option<Bytes>>) -> u64 {
    match result {
        Ok(Some(bytes)) => bytes.len() as u64,
        _ => 0,
    }
}

impl Stream for Fetcher {
    type Item = Answer;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Answer>> {
        let this = self.get_mut();
        loop {
            if this.ordered
                && let Some(answer) = this.take_buffered(this.next_emit)
            {
                return this.hand_on(answer);
            }
            while this.can_issue() {
                this.issue();
            }
            match this.running.poll_next_unpin(cx) {
                Poll::Ready(Some((index, result))) => {
                    let fresh = this.answered.get_mut(index).is_some_and(|seen| {
                        let fresh = !*seen;
                        *seen = true;
                        fresh
                    });
                    if !fresh {
                        // A store answering an index twice (or one it was not asked): keep
                        // the first answer, drop the rest.
                        continue;
                    }
                    if !this.ordered || index == this.next_emit {
                        return this.hand_on((index, result));
                    }
                    this.buffered_bytes += answer_len(&result);
                    this.buffer.insert(index, result);
                    this.stats
                        .peak_buffered_bytes
                        .fetch_max(this.buffered_bytes, Ordering::SeqCst);
                    this.stats
                        .peak_buffered_answers
                        .fetch_max(this.buffer.len(), Ordering::SeqCst);
                }
                Poll::Ready(None) => {
                    if this.can_issue() {
                        continue;
                    }
                    // Every issued get_many has ended. Indices a store never answered get an
                    // error, so the bundle still has one entry per request.
                    let unanswered = if this.ordered {
                        (this.next_emit < this.next_issue).then_some(this.next_emit)
                    } else {
                        this.answered[..this.next_issue]
                            .iter()
                            .position(|seen| !seen)
                    };
                    match unanswered {
                        Some(index) => {
                            this.answered[index] = true;
                            let key = this.fetches[index].request.key.clone();
                            let error = Error::InvalidData {
                                key,
                                reason: "the backing store's get_many never answered this request"
                                    .into(),
                            };
                            return this.hand_on((index, Err(error)));
                        }
                        // Everything issued was handed on and nothing is left to issue.
                        None => return Poll::Ready(None),
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// `store.get_many(requests)` as a `'static` stream that owns its store.
///
/// The borrowing stream lives inside a future that owns the `Arc` and forwards the answers
/// over a channel; that future is polled together with the channel by whoever reads the
/// answers, so no task is spawned and dropping the reader drops the reads. The channel has
/// room for every answer of the call, so forwarding never waits on the reader (a one-slot
/// channel cost a pause and a wake-up of the reader's task per answer); the answers it holds
/// are outstanding requests, which the window bounds.
pub(crate) fn owned_get_many(
    store: Arc<dyn Store>,
    requests: Vec<Request>,
) -> BoxStream<'static, Answer> {
    let (mut tx, rx) = futures::channel::mpsc::channel(requests.len());
    let driver = async move {
        let mut stream = store.get_many(requests);
        while let Some(answer) = stream.next().await {
            if futures::SinkExt::send(&mut tx, answer).await.is_err() {
                return;
            }
        }
    };
    let driver = futures::stream::once(driver).filter_map(|()| async { None });
    futures::stream::select(driver, rx).boxed()
}
