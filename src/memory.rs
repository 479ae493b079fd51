//! [`MemoryStore`]: an in-memory store for unit tests and examples.

use std::collections::BTreeMap;
use std::sync::RwLock;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};

use crate::store::{ListDir, ListableStore, WritableStore, slice_object};
use crate::{ByteRange, IoBudget, Result, Store};

/// An in-memory [`Store`] that uses the default, concurrent `get_many`.
///
/// Meant for unit tests and examples; use [`ObjectStoreStore`](crate) over a real backend
/// for anything else.
///
/// ```
/// use bytes::Bytes;
/// use getmany::{MemoryStore, Store, WritableStore};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> getmany::Result<()> {
/// let store = MemoryStore::new();
/// store.set("a/b", Bytes::from_static(b"hello")).await?;
/// assert_eq!(store.get("a/b", None).await?.unwrap(), "hello");
/// assert_eq!(store.get("missing", None).await?, None);
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: RwLock<BTreeMap<String, Bytes>>,
    budget: IoBudget,
}

impl MemoryStore {
    /// An empty store with the default budget.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with a budget of `limit` reads in flight.
    pub fn with_limit(limit: usize) -> Self {
        MemoryStore {
            objects: RwLock::default(),
            budget: IoBudget::new(limit),
        }
    }

    /// Stores `value` at `key` without going through the async API.
    pub fn insert(&self, key: impl Into<String>, value: impl Into<Bytes>) {
        self.write().insert(key.into(), value.into());
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Bytes>> {
        // A panic while holding the lock cannot leave the map half-written, so a poisoned
        // lock is still safe to use.
        self.objects.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Bytes>> {
        self.objects.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Bytes>> {
        if let Some(range) = &range
            && range.invalid_reason().is_some()
        {
            return slice_object(key, &Bytes::new(), Some(range.clone())).map(Some);
        }
        let value = self.read().get(key).cloned();
        match value {
            None => Ok(None),
            Some(value) => slice_object(key, &value, range).map(Some),
        }
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.read().get(key).map(|v| v.len() as u64))
    }

    fn io_budget(&self) -> &IoBudget {
        &self.budget
    }
}

#[async_trait]
impl WritableStore for MemoryStore {
    async fn set(&self, key: &str, value: Bytes) -> Result<()> {
        self.insert(key, value);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.write().remove(key);
        Ok(())
    }
}

#[async_trait]
impl ListableStore for MemoryStore {
    fn list_prefix(&self, prefix: &str) -> BoxStream<'_, Result<String>> {
        let keys: Vec<Result<String>> = self
            .read()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| Ok(k.clone()))
            .collect();
        stream::iter(keys).boxed()
    }

    async fn list_dir(&self, prefix: &str) -> Result<ListDir> {
        let dir = if prefix.is_empty() || prefix.ends_with('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        let mut out = ListDir::default();
        for (key, _) in self
            .read()
            .range(dir.clone()..)
            .take_while(|(k, _)| k.starts_with(&dir))
        {
            match key[dir.len()..].split_once('/') {
                None => out.keys.push(key.clone()),
                Some((child, _)) => {
                    let p = format!("{dir}{child}");
                    if out.prefixes.last() != Some(&p) {
                        out.prefixes.push(p);
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    #[tokio::test]
    async fn lists_one_level() {
        let s = MemoryStore::new();
        for k in ["a/x", "a/b/y", "a/b/z", "a/c/w", "b"] {
            s.insert(k, Bytes::new());
        }
        let d = s.list_dir("a").await.unwrap();
        assert_eq!(d.keys, vec!["a/x"]);
        assert_eq!(d.prefixes, vec!["a/b", "a/c"]);
        let all: Vec<String> = s.list_prefix("a/b").try_collect().await.unwrap();
        assert_eq!(all, vec!["a/b/y", "a/b/z"]);
    }
}
