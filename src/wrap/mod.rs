//! Wrappers: thin decorators over a store that forward every method, `get_many` included.
//!
//! * [`Metrics`]: counts reads, bytes, misses and errors that pass through it.
//! * [`Latency`]: a latency model (round trip per request, shared bandwidth, connection
//!   limit), charged per request that reaches it.
//! * [`Prefix`]: puts every key below a prefix.
//!
//! [`Metrics`] and [`Latency`] also wrap an `object_store::ObjectStore` (feature
//! `object-store`): placed *under* an [`ObjectStoreStore`](crate::ObjectStoreStore) they see
//! every backend request its merged reads make, which is what a coalescing benchmark
//! needs to count and to charge.

mod latency;
mod metrics;
mod prefix;

pub use latency::{Latency, LatencyModel};
pub use metrics::{Metrics, MetricsSnapshot};
pub use prefix::Prefix;

/// Implements `object_store::ObjectStore` for a wrapper `$ty<O>` with a field `inner: O`,
/// routing `get_opts` through `self.wrapped_get_opts` and charging every other operation
/// through `self.other_operation(bytes)` first.
#[cfg(feature = "object-store")]
macro_rules! object_store_wrapper {
    ($ty:ident) => {
        #[async_trait::async_trait]
        #[deny(clippy::missing_trait_methods)]
        impl<O: object_store::ObjectStore> object_store::ObjectStore for $ty<O> {
            async fn put_opts(
                &self,
                location: &object_store::path::Path,
                payload: object_store::PutPayload,
                opts: object_store::PutOptions,
            ) -> object_store::Result<object_store::PutResult> {
                self.other_operation(payload.content_length() as u64).await;
                self.inner.put_opts(location, payload, opts).await
            }

            async fn put_multipart_opts(
                &self,
                location: &object_store::path::Path,
                opts: object_store::PutMultipartOptions,
            ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
                self.other_operation(0).await;
                self.inner.put_multipart_opts(location, opts).await
            }

            async fn get_opts(
                &self,
                location: &object_store::path::Path,
                options: object_store::GetOptions,
            ) -> object_store::Result<object_store::GetResult> {
                self.wrapped_get_opts(location, options).await
            }

            async fn get_ranges(
                &self,
                location: &object_store::path::Path,
                ranges: &[std::ops::Range<u64>],
            ) -> object_store::Result<Vec<bytes::Bytes>> {
                // Every range is its own request through this wrapper, so each is counted
                // and charged.
                futures::future::try_join_all(ranges.iter().map(|r| async move {
                    let options = object_store::GetOptions {
                        range: Some(r.clone().into()),
                        ..Default::default()
                    };
                    self.wrapped_get_opts(location, options)
                        .await?
                        .bytes()
                        .await
                }))
                .await
            }

            fn delete_stream(
                &self,
                locations: futures::stream::BoxStream<
                    'static,
                    object_store::Result<object_store::path::Path>,
                >,
            ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>>
            {
                self.inner.delete_stream(locations)
            }

            fn list(
                &self,
                prefix: Option<&object_store::path::Path>,
            ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
            {
                self.inner.list(prefix)
            }

            fn list_with_offset(
                &self,
                prefix: Option<&object_store::path::Path>,
                offset: &object_store::path::Path,
            ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
            {
                self.inner.list_with_offset(prefix, offset)
            }

            async fn list_with_delimiter(
                &self,
                prefix: Option<&object_store::path::Path>,
            ) -> object_store::Result<object_store::ListResult> {
                self.other_operation(0).await;
                self.inner.list_with_delimiter(prefix).await
            }

            async fn copy_opts(
                &self,
                from: &object_store::path::Path,
                to: &object_store::path::Path,
                options: object_store::CopyOptions,
            ) -> object_store::Result<()> {
                self.other_operation(0).await;
                self.inner.copy_opts(from, to, options).await
            }

            async fn rename_opts(
                &self,
                from: &object_store::path::Path,
                to: &object_store::path::Path,
                options: object_store::RenameOptions,
            ) -> object_store::Result<()> {
                self.other_operation(0).await;
                self.inner.rename_opts(from, to, options).await
            }
        }

        impl<O: std::fmt::Display> std::fmt::Display for $ty<O> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($ty), self.inner)
            }
        }
    };
}
#[cfg(feature = "object-store")]
pub(crate) use object_store_wrapper;
