//! What the server accepts as a key or a bucket name: nothing that could leave a bucket; and
//! why a bundle or GetBatch request is refused.

use hyper::StatusCode;

/// The longest key the server accepts, in bytes (as S3).
pub const MAX_KEY_BYTES: usize = 1024;

/// Why `key` cannot name an object of a bucket, or `None` if it can.
///
/// A key is a `/`-separated relative path: not empty, at most [`MAX_KEY_BYTES`] bytes, no
/// leading or trailing `/`, no empty, `.` or `..` segment, no backslash and no control
/// character. Keys reach the server already percent-decoded (from the URL path) or raw (from a
/// JSON body), so an encoded `%2F` or `%2e%2e` is checked as the `/` or `..` it decodes to.
/// Together these rules keep every key inside its bucket whatever store serves it (a
/// directory of a local file system included).
pub fn invalid_key_reason(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        return Some("a key must not be empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return Some("a key must be at most 1024 bytes");
    }
    if key.starts_with('/') {
        return Some("a key must not start with '/'");
    }
    if key.ends_with('/') {
        return Some("a key must not end with '/'");
    }
    if key.contains('\\') {
        return Some("a key must not contain '\\'");
    }
    if key.chars().any(char::is_control) {
        return Some("a key must not contain control characters");
    }
    for segment in key.split('/') {
        match segment {
            "" => return Some("a key must not contain an empty segment ('//')"),
            "." | ".." => return Some("a key must not contain a '.' or '..' segment"),
            _ => {}
        }
    }
    None
}

/// Whether `name` can name a bucket: 1 to 255 characters from `[A-Za-z0-9._-]`, not `.` or
/// `..`.
pub fn valid_bucket_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Why a bundle or GetBatch request is refused: what the handler answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The S3 error code of a Tigris answer (`InvalidArgument`, ...); empty for AIStore.
    pub code: &'static str,
    /// The message, plain text.
    pub message: String,
}

impl RequestError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        RequestError {
            status,
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_escape_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            "a\\..\\b",
            "a\0b",
            "a\nb",
        ] {
            assert!(invalid_key_reason(bad).is_some(), "{bad:?} accepted");
        }
        for good in [
            "a",
            "a/b/c",
            "a..b",
            "...",
            ".hidden/x",
            "dir/file.tar",
            "é/ü",
        ] {
            assert_eq!(invalid_key_reason(good), None, "{good:?} refused");
        }
        assert!(invalid_key_reason(&"k".repeat(1025)).is_some());
    }

    #[test]
    fn bucket_names() {
        assert!(valid_bucket_name("data-1.b_2"));
        for bad in ["", ".", "..", "a/b", "a b", "ä"] {
            assert!(!valid_bucket_name(bad), "{bad:?}");
        }
    }
}
