//! The request parsers of the bundle and GetBatch protocols, for the crate's fuzz targets
//! (`fuzz/`). **Not part of the API**: hidden from the documentation, and free to change in
//! any release.
//!
//! [`parse_bundle_request`] and [`parse_getbatch_request`] take what a request carries
//! (method, URI, headers, body) and the server's [`Limits`], and return the parsed, validated
//! request or the error the server answers, without any I/O.

pub use super::Limits;
pub use super::aistore::{
    Entry as GetBatchEntry, GetBatchHead, GetBatchRequest, Output, parse_getbatch_request,
};
pub use super::archive::Compression;
pub use super::keys::{MAX_KEY_BYTES, RequestError, invalid_key_reason, valid_bucket_name};
pub use super::tigris::{BundleHead, BundleRequest, parse_bundle_keys, parse_bundle_request};
pub use crate::ByteRange;
pub use hyper::header::{HeaderName, HeaderValue};
pub use hyper::{HeaderMap, Method, StatusCode, Uri};
