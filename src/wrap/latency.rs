//! [`Latency`]: a latency model charged per request that reaches it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::store::{GetManyStream, ObjectMeta};
use crate::{ByteRange, IoBudget, Request, Result, Store};

/// The link a [`Latency`] wrapper simulates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyModel {
    /// Paid once per request, before its first byte.
    pub round_trip: Duration,
    /// Bytes per second of the link, shared by all requests in flight; `None` for unlimited.
    pub bandwidth: Option<f64>,
    /// Requests that can be in flight at once (connections); more wait for a free one.
    pub connections: usize,
}

impl LatencyModel {
    /// A link with `round_trip` per request, unlimited bandwidth and 1,024 connections.
    pub fn round_trip(round_trip: Duration) -> Self {
        LatencyModel {
            round_trip,
            bandwidth: None,
            connections: 1024,
        }
    }

    /// The same link with `bytes_per_second` of shared bandwidth.
    pub fn with_bandwidth(mut self, bytes_per_second: f64) -> Self {
        self.bandwidth = Some(bytes_per_second);
        self
    }

    /// The same link with at most `connections` requests in flight.
    pub fn with_connections(mut self, connections: usize) -> Self {
        self.connections = connections.max(1);
        self
    }
}

#[derive(Debug)]
struct Link {
    model: LatencyModel,
    connections: Semaphore,
    /// When the shared link has sent everything queued so far.
    busy_until: Mutex<Instant>,
}

impl Link {
    /// Queues `bytes` on the shared link and returns when they will have arrived; `None` on
    /// an unlimited link.
    fn transfer_done(&self, bytes: u64) -> Option<Instant> {
        let now = Instant::now();
        let bandwidth = self.model.bandwidth?;
        let took = Duration::from_secs_f64(bytes as f64 / bandwidth);
        // A panic while holding this lock cannot leave the instant half-written.
        let mut busy = self.busy_until.lock().unwrap_or_else(|e| e.into_inner());
        let start = (*busy).max(now);
        *busy = start + took;
        Some(*busy)
    }

    /// Waits for `bytes` to cross the link. tokio's timer rounds every sleep up to the next
    /// millisecond, so a wait shorter than one is skipped rather than charged a whole one
    /// (the link's queue still counts the bytes, so later transfers wait for them): without
    /// this, every answer on an unlimited link paid an extra millisecond.
    async fn transfer(&self, bytes: u64) {
        if let Some(done) = self.transfer_done(bytes)
            && done.saturating_duration_since(Instant::now()) >= Duration::from_millis(1)
        {
            tokio::time::sleep_until(done).await;
        }
    }

    /// Waits one round trip and then for `bytes` to cross the link.
    async fn charge(&self, bytes: u64) {
        tokio::time::sleep(self.model.round_trip).await;
        self.transfer(bytes).await;
    }
}

/// A latency model: every request that reaches the wrapper waits one round trip, holds one
/// of a limited number of connections, and sends its bytes over a link of shared bandwidth.
///
/// It is charged per request that *reaches* it, so where it sits decides what it measures:
///
/// * Under an [`ObjectStoreStore`](crate::ObjectStoreStore), wrapping the
///   `object_store::ObjectStore` backend, it charges every backend GET the coalescing store
///   makes: 1,000 ranges merged into 10 reads pay 10 round trips (object_store's
///   `ThrottledStore` charges one wait per `get_ranges` call and cannot show this).
/// * Over a [`Store`], each `get` is one request; a `get_many` call is forwarded to the inner
///   store's own `get_many` and charged as ONE request (one round trip, then each answer's
///   bytes over the link): the cost model of a bulk endpoint that answers many keys in one
///   response. To model a backend that serves one key per request, put the wrapper under
///   the store whose `get_many` you measure (its `get`s then each pay).
///
/// Sleeps use tokio's timer, which rounds up to whole milliseconds: measure the round trip
/// you actually get (one small read) before computing limits from it.
///
/// ```
/// use std::time::Duration;
/// use getmany::{MemoryStore, Store, wrap::{Latency, LatencyModel}};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> getmany::Result<()> {
/// let inner = MemoryStore::new();
/// inner.insert("a", "hello");
/// let slow = Latency::new(inner, LatencyModel::round_trip(Duration::from_millis(5)));
/// let started = std::time::Instant::now();
/// slow.get("a", None).await?;
/// println!("one get took {:?}", started.elapsed()); // about 5 ms
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Latency<T> {
    inner: T,
    link: Arc<Link>,
}

impl<T> Latency<T> {
    /// Charges every request to `inner` according to `model`.
    pub fn new(inner: T, model: LatencyModel) -> Self {
        Latency {
            inner,
            link: Arc::new(Link {
                connections: Semaphore::new(model.connections.max(1)),
                model,
                busy_until: Mutex::new(Instant::now()),
            }),
        }
    }

    /// The model.
    pub fn model(&self) -> &LatencyModel {
        &self.link.model
    }

    /// The wrapped store.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<S: Store> Store for Latency<S> {
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Bytes>> {
        let _connection = self.link.connections.acquire().await;
        let result = self.inner.get(key, range).await;
        let bytes = match &result {
            Ok(Some(b)) => b.len() as u64,
            _ => 0,
        };
        self.link.charge(bytes).await;
        result
    }

    fn get_many(&self, requests: Vec<Request>) -> GetManyStream<'_> {
        if requests.is_empty() {
            return stream::empty().boxed();
        }
        let link: &Link = &self.link;
        let inner = self.inner.get_many(requests);
        stream::once(async move {
            let connection = link.connections.acquire().await;
            tokio::time::sleep(link.model.round_trip).await;
            inner
                .then(move |(index, result)| async move {
                    let bytes = match &result {
                        Ok(Some(b)) => b.len() as u64,
                        _ => 0,
                    };
                    link.transfer(bytes).await;
                    Some((index, result))
                })
                // The connection is held until the last answer has crossed the link.
                .chain(stream::once(async move {
                    drop(connection);
                    None
                }))
        })
        .flatten()
        .filter_map(|item| async move { item })
        .boxed()
    }

    async fn get_with_meta(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<(Bytes, ObjectMeta)>> {
        let _connection = self.link.connections.acquire().await;
        let result = self.inner.get_with_meta(key, range).await;
        let bytes = match &result {
            Ok(Some((b, _))) => b.len() as u64,
            _ => 0,
        };
        self.link.charge(bytes).await;
        result
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        let _connection = self.link.connections.acquire().await;
        let result = self.inner.size(key).await;
        self.link.charge(0).await;
        result
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        let _connection = self.link.connections.acquire().await;
        let result = self.inner.exists(key).await;
        self.link.charge(0).await;
        result
    }

    fn io_budget(&self) -> &IoBudget {
        self.inner.io_budget()
    }
}

#[cfg(feature = "object-store")]
impl<O: object_store::ObjectStore> Latency<O> {
    async fn wrapped_get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        let _connection = self.link.connections.acquire().await;
        let result = self.inner.get_opts(location, options).await;
        let bytes = match &result {
            Ok(r) if !r.meta.size.eq(&0) || r.range.end > r.range.start => {
                r.range.end - r.range.start
            }
            _ => 0,
        };
        self.link.charge(bytes).await;
        result
    }

    async fn other_operation(&self, bytes: u64) {
        let _connection = self.link.connections.acquire().await;
        self.link.charge(bytes).await;
    }
}

#[cfg(feature = "object-store")]
super::object_store_wrapper!(Latency);
