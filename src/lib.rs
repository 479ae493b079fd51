//! Read many pieces of data from storage fast.
//!
//! `getmany` is a zarr-style storage abstraction: a [`Store`] trait whose
//! [`get_many`](Store::get_many) takes many read requests (whole keys or byte ranges, across
//! any number of keys) and answers each exactly once, in completion order, tagged with its
//! request index. Every store gets a concurrent default; stores with a better bulk path
//! override it, such as [`ObjectStoreStore`], which merges nearby ranges into fewer reads.
//!
//! ```
//! use std::sync::Arc;
//! use futures::StreamExt;
//! use getmany::{ObjectStoreStore, Request, Store, WritableStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> getmany::Result<()> {
//! let store = ObjectStoreStore::new(Arc::new(object_store::memory::InMemory::new()));
//! store.set("a", "hello world".into()).await?;
//!
//! let requests = vec![
//!     Request::whole("a"),
//!     Request::range("a", 0..5),
//!     Request::whole("missing"),
//! ];
//! let mut results = store.get_many(requests);
//! while let Some((index, result)) = results.next().await {
//!     match result? {
//!         Some(bytes) => println!("request {index}: {} bytes", bytes.len()),
//!         None => println!("request {index}: no such key"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! * `object-store` (default): [`ObjectStoreStore`] over any `object_store` backend.
//! * `aws`: `object_store`'s S3 backend.
//! * `testing`: the public conformance suite, [`testing`], for your own stores.
//! * `zarr`: a zarr v3 array reader on the chunk-read [`pipeline`].
//! * `server`: a bundle endpoint (Tigris bundle and AIStore GetBatch) in front of any store,
//!   [`server`].
//! * `bundle`: [`BundleStore`], a store that reads many objects per request from such an
//!   endpoint.
//! * `archive`: [`ArchiveStore`], tar and zip archives used as shards, read by byte ranges
//!   of any inner store.
#![warn(missing_docs)]

mod error;
mod limit;
mod memory;
mod request;
mod store;
mod task;

pub mod coalesce;
pub mod pipeline;
pub mod wrap;

#[cfg(feature = "zarr")]
pub mod zarr;

#[cfg(feature = "object-store")]
mod object_store;

#[cfg(feature = "testing")]
pub mod testing;

#[cfg(feature = "archive")]
pub mod archive;

#[cfg(feature = "dir")]
mod dir;

#[cfg(any(feature = "server", feature = "s3-server"))]
pub mod conn;

#[cfg(feature = "s3-server")]
pub mod s3_server;

#[cfg(feature = "server")]
pub mod server;

#[cfg(feature = "bundle")]
mod bundle;

/// Re-exported so a custom [`Store`] can be written as `#[getmany::async_trait]`.
pub use async_trait::async_trait;
pub use error::{BoxError, Error, Result};
pub use limit::IoBudget;
pub use memory::MemoryStore;
pub use request::{ByteRange, Request};
pub use store::{
    GetManyItem, GetManyStream, ListDir, ListableStore, ObjectMeta, Store, WritableStore,
    get_many_concurrent, slice_object,
};

#[cfg(feature = "object-store")]
pub use crate::object_store::ObjectStoreStore;

#[cfg(feature = "bundle")]
pub use crate::bundle::{
    BundleCompression, BundleProtocol, BundleStore, BundleStoreBuilder, MAX_KEYS_PER_BUNDLE,
};
#[cfg(feature = "archive")]
pub use archive::ArchiveStore;
#[cfg(feature = "dir")]
pub use dir::DirStore;
