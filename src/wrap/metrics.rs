//! [`Metrics`]: counts what passes through.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::store::{GetManyStream, ObjectMeta};
use crate::{ByteRange, IoBudget, Request, Result, Store};

#[derive(Debug, Default)]
struct Counters {
    reads: AtomicU64,
    get_many_calls: AtomicU64,
    heads: AtomicU64,
    other: AtomicU64,
    found: AtomicU64,
    missing: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
}

/// What a [`Metrics`] wrapper has counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Read requests that reached the wrapper: each `get`, each request of a `get_many`
    /// (over a `Store`), or each GET (over an `object_store::ObjectStore`).
    pub reads: u64,
    /// `get_many` calls.
    pub get_many_calls: u64,
    /// Size queries: `size`/`exists` calls, or HEAD requests.
    pub heads: u64,
    /// Other requests (writes, listings, copies), object_store level only.
    pub other: u64,
    /// Reads that returned bytes.
    pub found: u64,
    /// Reads of a missing key.
    pub missing: u64,
    /// Reads that failed.
    pub errors: u64,
    /// Bytes returned by reads.
    pub bytes: u64,
}

impl MetricsSnapshot {
    /// `self.bytes / delivered.bytes`: bytes fetched here against bytes delivered by a
    /// wrapper above the coalescing layer (the over-read; 1.0 = none).
    pub fn over_read(&self, delivered: &MetricsSnapshot) -> f64 {
        if delivered.bytes == 0 {
            1.0
        } else {
            self.bytes as f64 / delivered.bytes as f64
        }
    }
}

/// Counts the reads, bytes, misses and errors that pass through it.
///
/// Over a [`Store`] it counts the requests and bytes the store answers; over an
/// `object_store::ObjectStore` (under an [`ObjectStoreStore`](crate::ObjectStoreStore)) it
/// counts the GETs, HEADs and bytes that reach the backend. The two together give the
/// over-read of a coalescing store.
///
/// Clones share the counters.
///
/// ```
/// use futures::StreamExt;
/// use getmany::{MemoryStore, Request, Store, wrap::Metrics};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let inner = MemoryStore::new();
/// inner.insert("a", "hello");
/// let store = Metrics::new(inner);
/// let results: Vec<_> = store.get_many(vec![Request::whole("a"), Request::whole("b")]).collect().await;
/// let m = store.snapshot();
/// assert_eq!((m.reads, m.found, m.missing, m.bytes), (2, 1, 1, 5));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Metrics<T> {
    inner: T,
    counters: Arc<Counters>,
}

impl<T> Metrics<T> {
    /// Counts what passes through to `inner`.
    pub fn new(inner: T) -> Self {
        Metrics {
            inner,
            counters: Arc::default(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// The counts so far.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            reads: get(&c.reads),
            get_many_calls: get(&c.get_many_calls),
            heads: get(&c.heads),
            other: get(&c.other),
            found: get(&c.found),
            missing: get(&c.missing),
            errors: get(&c.errors),
            bytes: get(&c.bytes),
        }
    }

    /// Sets every count back to zero.
    pub fn reset(&self) {
        let c = &self.counters;
        for a in [
            &c.reads,
            &c.get_many_calls,
            &c.heads,
            &c.other,
            &c.found,
            &c.missing,
            &c.errors,
            &c.bytes,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }

    fn record<E>(counters: &Counters, result: &std::result::Result<Option<Bytes>, E>) {
        match result {
            Ok(Some(b)) => {
                counters.found.fetch_add(1, Ordering::Relaxed);
                counters.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
            Ok(None) => {
                counters.missing.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<S: Store> Store for Metrics<S> {
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Bytes>> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        let result = self.inner.get(key, range).await;
        Self::record(&self.counters, &result);
        result
    }

    fn get_many(&self, requests: Vec<Request>) -> GetManyStream<'_> {
        let counters = self.counters.clone();
        counters.get_many_calls.fetch_add(1, Ordering::Relaxed);
        counters
            .reads
            .fetch_add(requests.len() as u64, Ordering::Relaxed);
        self.inner
            .get_many(requests)
            .inspect(move |(_, result)| Self::record(&counters, result))
            .boxed()
    }

    async fn get_with_meta(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<(Bytes, ObjectMeta)>> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        let result = self.inner.get_with_meta(key, range).await;
        let bytes = result.as_ref().map(|o| o.as_ref().map(|(b, _)| b.clone()));
        Self::record(&self.counters, &bytes);
        result
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        self.counters.heads.fetch_add(1, Ordering::Relaxed);
        self.inner.size(key).await
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.counters.heads.fetch_add(1, Ordering::Relaxed);
        self.inner.exists(key).await
    }

    fn io_budget(&self) -> &IoBudget {
        self.inner.io_budget()
    }
}

#[cfg(feature = "object-store")]
impl<O: object_store::ObjectStore> Metrics<O> {
    async fn wrapped_get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        let c = &self.counters;
        if options.head {
            c.heads.fetch_add(1, Ordering::Relaxed);
            return self.inner.get_opts(location, options).await;
        }
        c.reads.fetch_add(1, Ordering::Relaxed);
        match self.inner.get_opts(location, options).await {
            Ok(result) => {
                c.found.fetch_add(1, Ordering::Relaxed);
                c.bytes
                    .fetch_add(result.range.end - result.range.start, Ordering::Relaxed);
                Ok(result)
            }
            Err(e) => {
                if matches!(e, object_store::Error::NotFound { .. }) {
                    c.missing.fetch_add(1, Ordering::Relaxed);
                } else {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }

    async fn other_operation(&self, _bytes: u64) {
        self.counters.other.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(feature = "object-store")]
super::object_store_wrapper!(Metrics);
