//! [`Prefix`]: every key below a prefix.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};

use crate::store::{GetManyStream, ListDir, ListableStore, ObjectMeta, WritableStore};
use crate::{ByteRange, IoBudget, Request, Result, Store};

/// Puts every key below a prefix of the inner store: key `k` reads `<prefix>/k`.
///
/// `get_many` is forwarded whole to the inner store (with the keys rewritten), so its bulk
/// path is kept.
///
/// ```
/// use getmany::{MemoryStore, Store, wrap::Prefix};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> getmany::Result<()> {
/// let inner = MemoryStore::new();
/// inner.insert("arrays/temp/zarr.json", "{}");
/// let store = Prefix::new(inner, "arrays/temp");
/// assert_eq!(store.get("zarr.json", None).await?.unwrap(), "{}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Prefix<S> {
    inner: S,
    prefix: String,
}

impl<S> Prefix<S> {
    /// Reads keys of `inner` below `prefix` (leading and trailing `/` are ignored).
    pub fn new(inner: S, prefix: &str) -> Self {
        let p = prefix.trim_matches('/');
        Prefix {
            inner,
            prefix: if p.is_empty() {
                String::new()
            } else {
                format!("{p}/")
            },
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn strip(&self, key: String) -> String {
        match key.strip_prefix(&self.prefix) {
            Some(rest) => rest.to_string(),
            None => key,
        }
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<S: Store> Store for Prefix<S> {
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Bytes>> {
        self.inner.get(&self.full(key), range).await
    }

    fn get_many(&self, mut requests: Vec<Request>) -> GetManyStream<'_> {
        for r in &mut requests {
            r.key = self.full(&r.key);
        }
        self.inner.get_many(requests)
    }

    async fn get_with_meta(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<(Bytes, ObjectMeta)>> {
        self.inner.get_with_meta(&self.full(key), range).await
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        self.inner.size(&self.full(key)).await
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.inner.exists(&self.full(key)).await
    }

    fn io_budget(&self) -> &IoBudget {
        self.inner.io_budget()
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<S: WritableStore> WritableStore for Prefix<S> {
    async fn set(&self, key: &str, value: Bytes) -> Result<()> {
        self.inner.set(&self.full(key), value).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(&self.full(key)).await
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<S: ListableStore> ListableStore for Prefix<S> {
    fn list_prefix(&self, prefix: &str) -> BoxStream<'_, Result<String>> {
        self.inner
            .list_prefix(&self.full(prefix))
            .map(|k| k.map(|k| self.strip(k)))
            .boxed()
    }

    async fn list_dir(&self, prefix: &str) -> Result<ListDir> {
        let full = self.full(prefix);
        let dir = self.inner.list_dir(full.trim_end_matches('/')).await?;
        Ok(ListDir {
            keys: dir.keys.into_iter().map(|k| self.strip(k)).collect(),
            prefixes: dir.prefixes.into_iter().map(|k| self.strip(k)).collect(),
        })
    }
}
