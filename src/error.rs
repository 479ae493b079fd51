//! The crate's error type. A missing key is not an error: reads answer `Ok(None)`.

use std::sync::Arc;

use crate::ByteRange;

/// A boxed error from a backend, shareable so that one failed merged read can report the same
/// cause to every request it served.
pub type BoxError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a read (or another store operation) failed.
///
/// Errors are `Clone`: a merged read that fails hands the same error to every request it
/// served, and only to those.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The range cannot be served: it is empty, or it starts at or past the end of a non-empty
    /// object.
    #[error("invalid range {range} for key {key:?}: {reason}")]
    InvalidRange {
        /// The key that was read.
        key: String,
        /// The range that was asked for.
        range: ByteRange,
        /// What is wrong with it.
        reason: String,
    },

    /// The key cannot name an object in this store (for example an empty path segment or `..`).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The stored bytes are not what the reader expected (a corrupt archive, a truncated body).
    #[error("invalid data in {key:?}: {reason}")]
    InvalidData {
        /// The key whose bytes were read.
        key: String,
        /// What is wrong with them.
        reason: String,
    },

    /// The backend failed (network error, server error, I/O error, ...).
    #[error("{store} error reading {key:?}: {source}")]
    Backend {
        /// Which store reported it (for example `"object_store"`).
        store: &'static str,
        /// The key being read when it failed.
        key: String,
        /// The backend's own error.
        source: BoxError,
    },

    /// The store does not support this operation.
    #[error("{store} does not support {operation}")]
    NotSupported {
        /// The store.
        store: &'static str,
        /// The operation that was asked for.
        operation: String,
    },
}

impl Error {
    /// An [`Error::Backend`] from any error value.
    pub fn backend(
        store: &'static str,
        key: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Backend {
            store,
            key: key.into(),
            source: Arc::new(source),
        }
    }

    /// The [`Error::InvalidRange`] for a range that starts at or past the end of an object of
    /// `size` bytes.
    pub fn range_past_end(key: impl Into<String>, range: ByteRange, size: u64) -> Self {
        Error::InvalidRange {
            key: key.into(),
            reason: format!("it starts at or past the end of the object ({size} bytes)"),
            range,
        }
    }

    /// The key this error is about, if it names one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Error::InvalidRange { key, .. }
            | Error::InvalidKey { key, .. }
            | Error::InvalidData { key, .. }
            | Error::Backend { key, .. } => Some(key),
            Error::NotSupported { .. } => None,
        }
    }
}
