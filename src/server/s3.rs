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

/// The store has no versions or e-tags: the server names an object by its size, which is
/// enough for clients that require the header (object_store) but is no validator; the
/// server ignores conditional headers.
fn etag(size: u64) -> Option<ETag> {
    Some(ETag::Strong(format!("getmany-{size}")))
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
        let (data, content_range, size) = match &input.range {
            None => {
                let data = store
                    .get(key, None)
                    .await
                    .map_err(store_error)?
                    .ok_or_else(|| s3_error!(NoSuchKey))?;
                let size = data.len() as u64;
                (data, None, size)
            }
            Some(range) => {
                // The size (for Content-Range) and the bytes, at once.
                let (size, data) =
                    futures::join!(store.size(key), store.get(key, Some(to_byte_range(range))));
                let size = size
                    .map_err(store_error)?
                    .ok_or_else(|| s3_error!(NoSuchKey))?;
                // As on S3: any range of an empty object, or one starting past the end, is
                // unsatisfiable.
                let want =
                    range.check(size).ok().filter(|_| size > 0).ok_or_else(|| {
                        s3_error!(InvalidRange, "the object is {size} bytes long")
                    })?;
                let data = data
                    .map_err(store_error)?
                    .ok_or_else(|| s3_error!(NoSuchKey))?;
                if data.len() as u64 != want.end - want.start {
                    return Err(s3_error!(
                        InternalError,
                        "the object changed while it was read"
                    ));
                }
                let content_range = format!("bytes {}-{}/{size}", want.start, want.end - 1);
                (data, Some(content_range), size)
            }
        };
        let len = data.len() as u64;
        let output = GetObjectOutput {
            body: Some(StreamingBlob::from(s3s::Body::from(data))),
            content_length: Some(length(len)?),
            content_range,
            accept_ranges: Some("bytes".to_owned()),
            e_tag: etag(size),
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
        let size = store
            .size(&input.key)
            .await
            .map_err(store_error)?
            .ok_or_else(|| s3_error!(NoSuchKey))?;
        let output = HeadObjectOutput {
            content_length: Some(length(size)?),
            accept_ranges: Some("bytes".to_owned()),
            e_tag: etag(size),
            last_modified: Some(Timestamp::from(SystemTime::UNIX_EPOCH)),
            ..HeadObjectOutput::default()
        };
        Ok(S3Response::new(output))
    }
}
