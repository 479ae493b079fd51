//! Writing and listing through ObjectStoreStore (with a key prefix) and the Prefix wrapper.

use std::sync::Arc;

use futures::TryStreamExt;
use getmany::wrap::Prefix;
use getmany::{ListableStore, MemoryStore, ObjectStoreStore, Store, WritableStore};

const KEYS: [&str; 5] = ["a/x", "a/b/y", "a/b/z", "a/c/w", "b"];

async fn check_listing<S: ListableStore + WritableStore>(store: &S) {
    for k in KEYS {
        store.set(k, k.as_bytes().to_vec().into()).await.unwrap();
    }
    let mut all: Vec<String> = store.list_prefix("").try_collect().await.unwrap();
    all.sort();
    let mut want: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
    want.sort();
    assert_eq!(all, want);
    let mut under_b: Vec<String> = store.list_prefix("a/b").try_collect().await.unwrap();
    under_b.sort();
    assert_eq!(under_b, vec!["a/b/y", "a/b/z"]);
    let dir = store.list_dir("a").await.unwrap();
    assert_eq!(dir.keys, vec!["a/x"]);
    let mut prefixes = dir.prefixes.clone();
    prefixes.sort();
    assert_eq!(prefixes, vec!["a/b", "a/c"]);
    store.delete("a/x").await.unwrap();
    store.delete("a/x").await.unwrap(); // deleting a missing key is not an error
    assert_eq!(store.get("a/x", None).await.unwrap(), None);
    assert_eq!(store.get("a/b/y", None).await.unwrap().unwrap(), "a/b/y");
}

#[tokio::test]
async fn object_store_store_with_a_prefix_lists_its_own_keys() {
    let backend = Arc::new(object_store::memory::InMemory::new());
    // Something outside the prefix that must never show up.
    ObjectStoreStore::new(backend.clone())
        .set("other/zzz", "no".into())
        .await
        .unwrap();
    let store = ObjectStoreStore::new(backend)
        .with_prefix("root/data")
        .unwrap();
    check_listing(&store).await;
}

#[tokio::test]
async fn prefix_wrapper_lists_and_writes_below_its_prefix() {
    let inner = MemoryStore::new();
    inner.insert("elsewhere", "no");
    let store = Prefix::new(inner, "p/q");
    check_listing(&store).await;
    assert!(store.inner().get("p/q/b", None).await.unwrap().is_some());
}

#[tokio::test]
async fn keys_cannot_climb_out_of_the_prefix() {
    let store = ObjectStoreStore::new(Arc::new(object_store::memory::InMemory::new()))
        .with_prefix("root")
        .unwrap();
    for bad in ["../x", "a/../../x", "a//b", "/abs", ""] {
        let err = store.get(bad, None).await.unwrap_err();
        assert!(
            matches!(err, getmany::Error::InvalidKey { .. }),
            "{bad:?}: {err}"
        );
    }
}
