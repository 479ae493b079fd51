//! Plain S3 `GET`/`HEAD /{bucket}/{key}` (with `Range`) over the buckets' stores.

use std::sync::Arc;
use std::time::SystemTime;

use s3s::dto::{
    ETag, GetObjectInput, GetObjectOutput, HeadObjectInput, HeadObjectOutput, Range, StreamingBlob,
    Timestamp,
};
use s3s::{S3, S3Error, S3Request, S3Response, S3Result, s3_error};

use super::invalid_key_reason;
use super::service::Shared;
use crate::store::ObjectMeta;
use crate::{ByteRange, Error, Store};

/// The S3 operations of the server: reads only.
pub(crate) struct StoreS3 {
    pub shared: Arc<Shared>,
}

impl StoreS3 {
    fn store(&self, bucket: &str, key: &str) -> S3Result<&Arc<dyn Store>> {
        let store =
            self.shared.buckets.get(bucket).ok_or_else(|| {
                s3_error!(NoSuchBucket, "no bucket named {bucket:?} on this server")
            })?;
        if let Some(reason) = invalid_key_reason(key) {
            return Err(s3_error!(InvalidArgument, "invalid key {key:?}: {reason}"));
        }
        Ok(store)
    }
}

fn to_byte_range(range: &Range) -> ByteRange {
    match *range {
        // s3s guarantees first <= last.
        Range::Int {
            first,
            last: Some(last),
        } => ByteRange::Bounded(first..last.saturating_add(1)),
        Range::Int { first, last: None } => ByteRange::Offset(first),
        Range::Suffix { length } => ByteRange::Suffix(length),
    }
}

fn store_error(error: Error) -> S3Error {
    match error {
        Error::InvalidRange { .. } => s3_error!(InvalidRange, "{error}"),
        Error::InvalidKey { .. } => s3_error!(InvalidArgument, "{error}"),
        other => s3_error!(InternalError, "{}", super::service::public_error(&other)),
    }
}

/// The ETag of an object: its store's version tag (the backend's ETag or object version,
/// `DirStore`'s inode, size and modification time), so a rewritten object gets a new one.
/// A store that reports no version gets a tag of the size: enough for clients that require
/// the header (object_store), no validator; the server ignores conditional headers.
fn etag(meta: &ObjectMeta, size: u64) -> Option<ETag> {
    let tag = match &meta.version {
        Some(version) => format!("v-{}", version.trim_matches('"')),
        None => format!("getmany-{size}"),
    };
    Some(ETag::Strong(tag))
}

fn length(len: u64) -> S3Result<i64> {
    i64::try_from(len).map_err(|_| s3_error!(InternalError, "object too large"))
}

#[async_trait::async_trait]
impl S3 for StoreS3 {
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let store = self.store(&input.bucket, &input.key)?;
        let key = input.key.as_str();
        let range = input.range.as_ref().map(to_byte_range);
        // One read gives the bytes, the object's size (for Content-Range) and its version,
        // on every store that reports them; others are asked for the size alone.
        let (data, meta) = match store.get_with_meta(key, range.clone()).await {
            Err(Error::InvalidRange { .. }) => {
                let size = store.size(key).await.map_err(store_error)?;
                return Err(s3_error!(
                    InvalidRange,
                    "the range is past the end of the object ({} bytes)",
                    size.unwrap_or(0)
                ));
            }
            other => other
                .map_err(store_error)?
                .ok_or_else(|| s3_error!(NoSuchKey))?,
        };
        let (content_range, size) = match &input.range {
            None => (None, data.len() as u64),
            Some(range) => {
                let size = match meta.size {
                    Some(size) => size,
                    None => store
                        .size(key)
                        .await
                        .map_err(store_error)?
                        .ok_or_else(|| s3_error!(NoSuchKey))?,
                };
                // As on S3: any range of an empty object, or one starting past the end, is
                // unsatisfiable.
                let want =
                    range.check(size).ok().filter(|_| size > 0).ok_or_else(|| {
                        s3_error!(InvalidRange, "the object is {size} bytes long")
                    })?;
                if data.len() as u64 != want.end - want.start {
                    return Err(s3_error!(
                        InternalError,
                        "the object changed while it was read"
                    ));
                }
                (
                    Some(format!("bytes {}-{}/{size}", want.start, want.end - 1)),
                    size,
                )
            }
        };
        let len = data.len() as u64;
        let output = GetObjectOutput {
            body: Some(StreamingBlob::from(s3s::Body::from(data))),
            content_length: Some(length(len)?),
            content_range,
            accept_ranges: Some("bytes".to_owned()),
            e_tag: etag(&meta, size),
            last_modified: Some(Timestamp::from(SystemTime::UNIX_EPOCH)),
            ..GetObjectOutput::default()
        };
        Ok(S3Response::new(output))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let store = self.store(&input.bucket, &input.key)?;
        // A one-byte read reports the size and the version at the cost of a HEAD.
        let first = store
            .get_with_meta(&input.key, Some(ByteRange::Bounded(0..1)))
            .await
            .map_err(store_error)?
            .ok_or_else(|| s3_error!(NoSuchKey))?;
        let meta = first.1;
        let size = match meta.size {
            Some(size) => size,
            None => store
                .size(&input.key)
                .await
                .map_err(store_error)?
                .ok_or_else(|| s3_error!(NoSuchKey))?,
        };
        let output = HeadObjectOutput {
            content_length: Some(length(size)?),
            accept_ranges: Some("bytes".to_owned()),
            e_tag: etag(&meta, size),
            last_modified: Some(Timestamp::from(SystemTime::UNIX_EPOCH)),
            ..HeadObjectOutput::default()
        };
        Ok(S3Response::new(output))
    }
}
