//! The [`Store`] trait and its default, concurrent [`get_many`](Store::get_many).

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};

use crate::{ByteRange, IoBudget, Request, Result};

/// One answer of [`Store::get_many`]: the index of the request it answers, and its result
/// (`Ok(None)` when the key does not exist).
pub type GetManyItem = (usize, Result<Option<Bytes>>);

/// The stream [`Store::get_many`] returns. It borrows the store; dropping it cancels every
/// read still in flight.
pub type GetManyStream<'a> = BoxStream<'a, GetManyItem>;

/// What a read learned about an object besides its bytes: see [`Store::get_with_meta`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The size of the whole object in bytes, when the backend reported it.
    pub size: Option<u64>,
    /// A tag that changes whenever the object is rewritten (an HTTP ETag or an object
    /// version), when the backend has one.
    pub version: Option<String>,
}

/// A key-value store that can read many values at once.
///
/// Implement [`get`](Store::get) and [`io_budget`](Store::io_budget) and every reader of the
/// crate works with your store: [`get_many`](Store::get_many) defaults to concurrent `get`s
/// under the store's budget ([`get_many_concurrent`]). Override `get_many` when the backend
/// has a better bulk path (merging ranges, one request for many objects).
///
/// # The contract every store keeps
///
/// * A missing key reads as `Ok(None)`, for whole and ranged reads alike.
/// * Ranges follow [`ByteRange`]'s semantics (those of `object_store::GetRange`).
/// * `get_many` answers every request index exactly once, in completion order (a slow read
///   never holds back a fast one). Duplicate and overlapping requests each get their own
///   answer. An empty request list yields nothing. A failed read fails only the requests it
///   served.
/// * Dropping the stream cancels the reads still in flight; no task outlives it.
/// * Memory and pending futures stay bounded whatever the number of requests.
///
/// The conformance suite in [`testing`](crate) (feature `testing`) checks all of this for
/// any store.
///
/// # Example: a custom backend
///
/// ```
/// use std::collections::HashMap;
/// use bytes::Bytes;
/// use futures::StreamExt;
/// use getmany::{ByteRange, IoBudget, Request, Result, Store};
///
/// #[derive(Debug, Default)]
/// struct Fixed {
///     objects: HashMap<String, Bytes>,
///     budget: IoBudget,
/// }
///
/// #[getmany::async_trait]
/// impl Store for Fixed {
///     async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Bytes>> {
///         let Some(value) = self.objects.get(key) else { return Ok(None) };
///         getmany::slice_object(key, value, range).map(Some)
///     }
///     fn io_budget(&self) -> &IoBudget {
///         &self.budget
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut store = Fixed::default();
/// store.objects.insert("a".into(), Bytes::from_static(b"hello"));
/// let mut results = store.get_many(vec![Request::whole("a"), Request::range("a", 1..3)]);
/// while let Some((index, value)) = results.next().await {
///     println!("{index}: {:?}", value.unwrap());
/// }
/// # }
/// ```
#[async_trait]
pub trait Store: Send + Sync + Debug {
    /// Reads the object at `key`, or `range` of it. `Ok(None)` if the key does not exist.
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Bytes>>;

    /// Reads many requests; answers each index exactly once, in completion order.
    ///
    /// The default runs [`get`](Store::get)s concurrently under the store's
    /// [`io_budget`](Store::io_budget): see [`get_many_concurrent`].
    fn get_many(&self, requests: Vec<Request>) -> GetManyStream<'_> {
        get_many_concurrent(self, requests)
    }

    /// Reads like [`get`](Store::get) and also reports what the backend said about the whole
    /// object (its size and version) with the same response, so a reader that must know
    /// them (an archive index that records which version of the archive it describes) needs
    /// no second request.
    ///
    /// The default calls `get` and reports nothing ([`ObjectMeta::default`]); stores whose
    /// backend returns the size or a version tag with every read override it.
    async fn get_with_meta(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<(Bytes, ObjectMeta)>> {
        Ok(self
            .get(key, range)
            .await?
            .map(|bytes| (bytes, ObjectMeta::default())))
    }

    /// The size in bytes of the object at `key`, or `None` if it does not exist.
    ///
    /// The default reads the whole object; stores that can ask for the size alone override it.
    async fn size(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.get(key, None).await?.map(|b| b.len() as u64))
    }

    /// Whether an object exists at `key`.
    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.size(key).await?.is_some())
    }

    /// The store's I/O budget: the limit on reads in flight, shared by all calls.
    fn io_budget(&self) -> &IoBudget;
}

/// A [`Store`] that can also write.
#[async_trait]
pub trait WritableStore: Store {
    /// Stores `value` at `key`, replacing what was there.
    async fn set(&self, key: &str, value: Bytes) -> Result<()>;

    /// Deletes `key`. Deleting a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
}

/// One level of a listing: the keys directly under a prefix, and the sub-prefixes below it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListDir {
    /// Keys directly under the prefix (full keys).
    pub keys: Vec<String>,
    /// Sub-prefixes, each ending without a trailing `/` (full paths).
    pub prefixes: Vec<String>,
}

/// A [`Store`] that can list its keys.
#[async_trait]
pub trait ListableStore: Store {
    /// Every key that starts with `prefix` (a `/`-separated path prefix; `""` for all).
    fn list_prefix(&self, prefix: &str) -> BoxStream<'_, Result<String>>;

    /// The keys and sub-prefixes one level below `prefix`.
    async fn list_dir(&self, prefix: &str) -> Result<ListDir>;
}

/// The default [`Store::get_many`]: concurrent [`Store::get`]s.
///
/// * At most `store.io_budget().limit()` requests of this call are pending at any time, and
///   each `get` runs inside [`IoBudget::run`], so all calls on the store together stay within
///   its budget.
/// * Results are yielded as each `get` completes.
/// * Requests are taken from the list lazily: a million requests never become a million
///   futures.
/// * Dropping the stream drops the pending `get`s, which cancels them.
/// * The `get`s borrow the store, so they run inside the stream and progress only while it
///   is polled: a consumer that pauses this stream to await another `get_many` of the same
///   store can find every permit held by the paused `get`s. Stores whose reads can own
///   what they need run them as tasks instead ([`coalesce::execute`](crate::coalesce::execute)
///   does, so [`ObjectStoreStore`](crate) has no such hazard).
/// * A request whose range is invalid whatever the object ([`ByteRange::invalid_reason`])
///   is answered with [`Error::InvalidRange`](crate::Error::InvalidRange) without a `get`.
pub fn get_many_concurrent<S: Store + ?Sized>(
    store: &S,
    requests: Vec<Request>,
) -> GetManyStream<'_> {
    let limit = store.io_budget().limit();
    stream::iter(requests.into_iter().enumerate())
        .map(move |(index, request)| async move {
            if let Some(reason) = request.range.as_ref().and_then(ByteRange::invalid_reason) {
                let err = crate::Error::InvalidRange {
                    key: request.key,
                    range: request.range.unwrap_or(ByteRange::Offset(0)),
                    reason: reason.to_string(),
                };
                return (index, Err(err));
            }
            let result = store
                .io_budget()
                .run(store.get(&request.key, request.range))
                .await;
            (index, result)
        })
        .buffer_unordered(limit)
        .boxed()
}

/// Applies `range` to a whole object's bytes, with the crate's range semantics.
///
/// For stores that hold whole objects in memory. The slice shares `value`'s buffer.
pub fn slice_object(key: &str, value: &Bytes, range: Option<ByteRange>) -> Result<Bytes> {
    let Some(range) = range else {
        return Ok(value.clone());
    };
    if let Some(reason) = range.invalid_reason() {
        return Err(crate::Error::InvalidRange {
            key: key.to_string(),
            range,
            reason: reason.to_string(),
        });
    }
    let size = value.len() as u64;
    match range.resolve(size) {
        Some(r) => Ok(value.slice(r.start as usize..r.end as usize)),
        None => Err(crate::Error::range_past_end(key, range, size)),
    }
}

macro_rules! forward_store {
    ($ty:ty) => {
        #[async_trait]
        #[deny(clippy::missing_trait_methods)]
        impl<S: Store + ?Sized> Store for $ty {
            async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Bytes>> {
                (**self).get(key, range).await
            }
            fn get_many(&self, requests: Vec<Request>) -> GetManyStream<'_> {
                (**self).get_many(requests)
            }
            async fn get_with_meta(
                &self,
                key: &str,
                range: Option<ByteRange>,
            ) -> Result<Option<(Bytes, ObjectMeta)>> {
                (**self).get_with_meta(key, range).await
            }
            async fn size(&self, key: &str) -> Result<Option<u64>> {
                (**self).size(key).await
            }
            async fn exists(&self, key: &str) -> Result<bool> {
                (**self).exists(key).await
            }
            fn io_budget(&self) -> &IoBudget {
                (**self).io_budget()
            }
        }
    };
}

forward_store!(Arc<S>);
forward_store!(Box<S>);
forward_store!(&S);
