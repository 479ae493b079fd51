//! [`ObjectStoreStore`]: a coalescing [`Store`] over any `object_store` backend.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};

use crate::coalesce::{self, CoalescePolicy, Fetched, Plan};
use crate::store::{GetManyStream, ListDir, ListableStore, ObjectMeta, WritableStore};
use crate::{ByteRange, Error, IoBudget, Request, Result, Store};

const STORE: &str = "object_store";

/// A [`Store`] over any [`object_store::ObjectStore`] (S3, GCS, Azure, HTTP, local files,
/// memory), whose [`get_many`](Store::get_many) merges nearby byte ranges into fewer reads.
///
/// `get_many` groups the requests by key, merges overlapping, adjacent and nearby ranges
/// under its [`CoalescePolicy`], splits very long reads into parallel parts, runs the reads
/// concurrently under the store's [`IoBudget`], and answers every request the moment the
/// read that serves it completes. A small slice of a large merged read is copied out so it
/// does not pin the whole buffer.
///
/// Round trips: one backend GET per planned read ([`ObjectStoreStore::plan`] tells how many
/// before any I/O). No HEAD is made before a read: suffix reads go out as suffix ranges.
/// Only when a ranged read fails does the store ask for the object's size (one HEAD) to tell
/// a range past the end from a backend failure, and to serve a suffix on backends that
/// cannot (Azure answers `NotSupported`; some S3 servers fail a suffix longer than the
/// object).
///
/// A missing object reads as `None`. An error fails only the requests its read served.
///
/// Memory: at most `budget.limit()` reads of a call are in flight, each holding one buffer
/// of at most `max_merged` bytes (or, for a longer request, what the object holds of it:
/// no buffer is sized from a requested length, and a split read's parts past the end of
/// the object are not fetched, see [`coalesce::UNSIZED_SPLIT_BYTES`]); the plan itself is
/// O(requests). Answers are yielded as their read completes, never held for the batch.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use futures::StreamExt;
/// use getmany::{ObjectStoreStore, Request, Store, WritableStore};
/// use object_store::memory::InMemory;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> getmany::Result<()> {
/// let store = ObjectStoreStore::new(Arc::new(InMemory::new()));
/// store.set("data/a", vec![7u8; 1 << 20].into()).await?;
///
/// // 100 ranges of one object: one merged read.
/// let requests: Vec<Request> =
///     (0..100).map(|i| Request::range("data/a", i * 4096..i * 4096 + 1024)).collect();
/// assert_eq!(store.plan(&requests).stats.backend_requests, 1);
///
/// let mut results = store.get_many(requests);
/// while let Some((index, result)) = results.next().await {
///     assert_eq!(result?.unwrap().len(), 1024, "request {index}");
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ObjectStoreStore {
    inner: Arc<dyn ObjectStore>,
    prefix: Option<Path>,
    policy: CoalescePolicy,
    budget: IoBudget,
}

impl fmt::Debug for ObjectStoreStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreStore")
            .field("inner", &format_args!("{}", self.inner))
            .field("prefix", &self.prefix)
            .field("policy", &self.policy)
            .field("budget", &self.budget.limit())
            .finish()
    }
}

impl ObjectStoreStore {
    /// A store over `inner` with the default policy and budget.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        ObjectStoreStore {
            inner,
            prefix: None,
            policy: CoalescePolicy::default(),
            budget: IoBudget::default(),
        }
    }

    /// Reads keys below `prefix` of the backend (`"data"` makes key `a` the object `data/a`).
    pub fn with_prefix(mut self, prefix: &str) -> Result<Self> {
        let trimmed = prefix.trim_matches('/');
        self.prefix = if trimmed.is_empty() {
            None
        } else {
            Some(Path::parse(trimmed).map_err(|e| Error::InvalidKey {
                key: prefix.to_string(),
                reason: e.to_string(),
            })?)
        };
        Ok(self)
    }

    /// Uses `policy` to merge and split reads.
    pub fn with_policy(mut self, policy: CoalescePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Uses `budget` for reads in flight (share one budget between stores to cap them
    /// together).
    pub fn with_budget(mut self, budget: IoBudget) -> Self {
        self.budget = budget;
        self
    }

    /// The merge policy.
    pub fn policy(&self) -> &CoalescePolicy {
        &self.policy
    }

    /// The backend.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// The reads [`get_many`](Store::get_many) would issue for `requests`, without any I/O.
    pub fn plan(&self, requests: &[Request]) -> Plan {
        coalesce::plan(requests, &self.policy)
    }

    fn path(&self, key: &str) -> Result<Path> {
        let full = match &self.prefix {
            Some(p) => format!("{p}/{key}"),
            None => key.to_string(),
        };
        // Path::parse rejects empty segments, `.` and `..`; a key can never climb out of the
        // prefix.
        if key.is_empty() || key.starts_with('/') || key.ends_with('/') {
            return Err(Error::InvalidKey {
                key: key.to_string(),
                reason: "a key must be a non-empty path without leading or trailing '/'".into(),
            });
        }
        Path::parse(&full).map_err(|e| Error::InvalidKey {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }

    /// The backend path to list for a key prefix (`None` lists everything).
    fn list_path(&self, prefix: &str) -> Option<Path> {
        let trimmed = prefix.trim_matches('/');
        match (&self.prefix, trimmed.is_empty()) {
            (Some(p), true) => Some(p.clone()),
            (Some(p), false) => Some(Path::from(format!("{p}/{trimmed}"))),
            (None, true) => None,
            (None, false) => Some(Path::from(trimmed)),
        }
    }

    fn key_of(&self, path: &Path) -> String {
        let s = path.as_ref();
        match &self.prefix {
            Some(p) => s
                .strip_prefix(p.as_ref())
                .map(|rest| rest.trim_start_matches('/'))
                .unwrap_or(s)
                .to_string(),
            None => s.to_string(),
        }
    }

    /// One backend read: `range` of `key`, with the object's size.
    async fn fetch(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Fetched>> {
        Ok(self
            .fetch_with_meta(key, range)
            .await?
            .map(|(fetched, _)| fetched))
    }

    /// One backend read, with the object's size and version (ETag, else version id) as the
    /// response reported them.
    async fn fetch_with_meta(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<(Fetched, ObjectMeta)>> {
        let path = self.path(key)?;
        let options = GetOptions {
            range: range.clone().map(to_get_range),
            ..GetOptions::default()
        };
        match self.inner.get_opts(&path, options).await {
            Ok(result) => {
                let size = result.meta.size;
                let meta = ObjectMeta {
                    size: Some(size),
                    version: result.meta.e_tag.clone().or(result.meta.version.clone()),
                };
                let bytes = result.bytes().await.map_err(|e| backend(key, e))?;
                let fetched = Fetched {
                    bytes,
                    object_size: Some(size),
                };
                Ok(Some((fetched, meta)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => match range {
                Some(range) => Ok(self.recover(key, &path, range, e).await?.map(|fetched| {
                    let meta = ObjectMeta {
                        size: fetched.object_size,
                        version: None,
                    };
                    (fetched, meta)
                })),
                None => Err(backend(key, e)),
            },
        }
    }

    /// A ranged read failed: ask for the size (one HEAD) to tell a range the object cannot
    /// serve, an empty object and a missing one from a real failure, and to serve a suffix on
    /// a backend that could not.
    async fn recover(
        &self,
        key: &str,
        path: &Path,
        range: ByteRange,
        error: object_store::Error,
    ) -> Result<Option<Fetched>> {
        let size = match self.inner.head(path).await {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(_) => return Err(backend(key, error)),
        };
        if size == 0 {
            return Ok(Some(Fetched {
                bytes: Bytes::new(),
                object_size: Some(0),
            }));
        }
        match (&range, range.resolve(size)) {
            (_, None) => Err(Error::range_past_end(key, range, size)),
            (ByteRange::Suffix(_), Some(absolute)) => {
                let options = GetOptions {
                    range: Some(GetRange::Bounded(absolute)),
                    ..GetOptions::default()
                };
                let result = self
                    .inner
                    .get_opts(path, options)
                    .await
                    .map_err(|e| backend(key, e))?;
                let bytes = result.bytes().await.map_err(|e| backend(key, e))?;
                Ok(Some(Fetched {
                    bytes,
                    object_size: Some(size),
                }))
            }
            _ => Err(backend(key, error)),
        }
    }
}

fn to_get_range(range: ByteRange) -> GetRange {
    match range {
        ByteRange::Bounded(r) => GetRange::Bounded(r),
        ByteRange::Offset(s) => GetRange::Offset(s),
        ByteRange::Suffix(n) => GetRange::Suffix(n),
    }
}

fn backend(key: &str, error: object_store::Error) -> Error {
    match error {
        object_store::Error::InvalidPath { source } => Error::InvalidKey {
            key: key.to_string(),
            reason: source.to_string(),
        },
        other => Error::backend(STORE, key, other),
    }
}

#[async_trait]
impl Store for ObjectStoreStore {
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Bytes>> {
        if let Some(reason) = range.as_ref().and_then(ByteRange::invalid_reason) {
            return Err(Error::InvalidRange {
                key: key.to_string(),
                range: range.unwrap_or(ByteRange::Offset(0)),
                reason: reason.to_string(),
            });
        }
        let fetched = self.budget.run(self.fetch(key, range)).await?;
        Ok(fetched.map(|f| f.bytes))
    }

    async fn get_with_meta(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<(Bytes, ObjectMeta)>> {
        if let Some(reason) = range.as_ref().and_then(ByteRange::invalid_reason) {
            return Err(Error::InvalidRange {
                key: key.to_string(),
                range: range.unwrap_or(ByteRange::Offset(0)),
                reason: reason.to_string(),
            });
        }
        let fetched = self.budget.run(self.fetch_with_meta(key, range)).await?;
        Ok(fetched.map(|(f, meta)| (f.bytes, meta)))
    }

    fn get_many(&self, requests: Vec<Request>) -> GetManyStream<'_> {
        let plan = self.plan(&requests);
        tracing::debug!(
            requests = plan.stats.requests,
            reads = plan.stats.reads,
            backend_requests = plan.stats.backend_requests,
            bytes_requested = plan.stats.bytes_requested,
            bytes_planned = plan.stats.bytes_planned,
            "getmany.object_store.get_many"
        );
        // The reads run as tasks (`coalesce::execute`), so each owns a handle to the store.
        let store = self.clone();
        coalesce::execute(requests, plan, &self.budget, move |key, range| {
            let store = store.clone();
            async move { store.fetch(&key, range).await }
        })
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key)?;
        match self.budget.run(self.inner.head(&path)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(backend(key, e)),
        }
    }

    fn io_budget(&self) -> &IoBudget {
        &self.budget
    }
}

#[async_trait]
impl WritableStore for ObjectStoreStore {
    async fn set(&self, key: &str, value: Bytes) -> Result<()> {
        let path = self.path(key)?;
        self.inner
            .put(&path, PutPayload::from_bytes(value))
            .await
            .map_err(|e| backend(key, e))?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match self.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(backend(key, e)),
        }
    }
}

#[async_trait]
impl ListableStore for ObjectStoreStore {
    fn list_prefix(&self, prefix: &str) -> BoxStream<'_, Result<String>> {
        let full = self.list_path(prefix);
        let prefix = prefix.to_string();
        self.inner
            .list(full.as_ref())
            .map(move |meta| match meta {
                Ok(meta) => Ok(self.key_of(&meta.location)),
                Err(e) => Err(backend(&prefix, e)),
            })
            .boxed()
    }

    async fn list_dir(&self, prefix: &str) -> Result<ListDir> {
        let full = self.list_path(prefix);
        let listing = self
            .inner
            .list_with_delimiter(full.as_ref())
            .await
            .map_err(|e| backend(prefix, e))?;
        Ok(ListDir {
            keys: listing
                .objects
                .iter()
                .map(|m| self.key_of(&m.location))
                .collect(),
            prefixes: listing
                .common_prefixes
                .iter()
                .map(|p| self.key_of(p))
                .collect(),
        })
    }
}
