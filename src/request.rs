//! What to read: a key and an optional byte range.

use std::fmt;
use std::ops::Range;

/// A byte range of one object.
///
/// The semantics match [`object_store::GetRange`](https://docs.rs/object_store/latest/object_store/enum.GetRange.html):
///
/// * [`Bounded`](ByteRange::Bounded) `start..end` (end exclusive): an `end` past the end of the
///   object is clipped; a `start` at or past the end of a non-empty object is an
///   [`Error::InvalidRange`](crate::Error::InvalidRange). An empty range (`start >= end`) is
///   an invalid request.
/// * [`Offset`](ByteRange::Offset)`(start)`: from `start` to the end of the object; a start at or
///   past the end of a non-empty object is an error.
/// * [`Suffix`](ByteRange::Suffix)`(n)`: the last `n` bytes; a suffix longer than the object
///   returns the whole object. `Suffix(0)` is an invalid request.
///
/// Any range of an empty (0-byte) object reads as empty bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ByteRange {
    /// Bytes `start..end` (end exclusive).
    Bounded(Range<u64>),
    /// Bytes from `start` to the end of the object.
    Offset(u64),
    /// The last `n` bytes of the object.
    Suffix(u64),
}

impl ByteRange {
    /// Why this range can never be satisfied, whatever the object, or `None` if it can be.
    pub fn invalid_reason(&self) -> Option<&'static str> {
        match self {
            ByteRange::Bounded(r) if r.start >= r.end => {
                Some("a bounded range must have start < end")
            }
            ByteRange::Suffix(0) => Some("a suffix range must ask for at least one byte"),
            _ => None,
        }
    }

    /// The absolute range this selects in an object of `size` bytes, or `None` when the range
    /// starts at or past the end of a non-empty object (an invalid range for that object).
    ///
    /// Every range of an empty object resolves to `0..0`.
    pub fn resolve(&self, size: u64) -> Option<Range<u64>> {
        if size == 0 {
            return Some(0..0);
        }
        match self {
            ByteRange::Bounded(r) if r.start < size => Some(r.start..r.end.min(size)),
            ByteRange::Offset(start) if *start < size => Some(*start..size),
            ByteRange::Suffix(n) => Some(size.saturating_sub(*n)..size),
            _ => None,
        }
    }

    /// The number of bytes this range asks for, when it is known without the object's size.
    pub fn requested_len(&self) -> Option<u64> {
        match self {
            ByteRange::Bounded(r) => Some(r.end.saturating_sub(r.start)),
            ByteRange::Suffix(n) => Some(*n),
            ByteRange::Offset(_) => None,
        }
    }
}

impl From<Range<u64>> for ByteRange {
    fn from(r: Range<u64>) -> Self {
        ByteRange::Bounded(r)
    }
}

impl fmt::Display for ByteRange {
    /// Formats as an HTTP `Range` header value would name it: `bytes=0-99`, `bytes=100-`,
    /// `bytes=-10` (inclusive end, as in HTTP).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ByteRange::Bounded(r) if r.end > r.start => {
                write!(f, "bytes={}-{}", r.start, r.end - 1)
            }
            ByteRange::Bounded(r) => write!(f, "bytes={}..{} (empty)", r.start, r.end),
            ByteRange::Offset(s) => write!(f, "bytes={s}-"),
            ByteRange::Suffix(n) => write!(f, "bytes=-{n}"),
        }
    }
}

/// One read: a whole object, or a byte range of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    /// The key of the object, `/`-separated (for example `"array/c/0/1"`).
    pub key: String,
    /// The bytes to read; `None` reads the whole object.
    pub range: Option<ByteRange>,
}

impl Request {
    /// A request for the whole object at `key`.
    pub fn whole(key: impl Into<String>) -> Self {
        Request {
            key: key.into(),
            range: None,
        }
    }

    /// A request for `range` of the object at `key`.
    pub fn range(key: impl Into<String>, range: impl Into<ByteRange>) -> Self {
        Request {
            key: key.into(),
            range: Some(range.into()),
        }
    }
}

impl From<&str> for Request {
    fn from(key: &str) -> Self {
        Request::whole(key)
    }
}

impl From<String> for Request {
    fn from(key: String) -> Self {
        Request::whole(key)
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.range {
            None => write!(f, "{:?}", self.key),
            Some(r) => write!(f, "{:?} {r}", self.key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_follows_object_store_semantics() {
        assert_eq!(ByteRange::Bounded(2..5).resolve(10), Some(2..5));
        assert_eq!(ByteRange::Bounded(8..50).resolve(10), Some(8..10));
        assert_eq!(ByteRange::Bounded(10..50).resolve(10), None);
        assert_eq!(ByteRange::Offset(9).resolve(10), Some(9..10));
        assert_eq!(ByteRange::Offset(10).resolve(10), None);
        assert_eq!(ByteRange::Suffix(3).resolve(10), Some(7..10));
        assert_eq!(ByteRange::Suffix(30).resolve(10), Some(0..10));
        assert_eq!(ByteRange::Bounded(5..9).resolve(0), Some(0..0));
        assert_eq!(ByteRange::Offset(5).resolve(0), Some(0..0));
    }

    #[test]
    fn invalid_ranges_are_named() {
        assert!(ByteRange::Bounded(5..5).invalid_reason().is_some());
        #[allow(clippy::reversed_empty_ranges)] // deliberately invalid
        let reversed = ByteRange::Bounded(6..5);
        assert!(reversed.invalid_reason().is_some());
        assert!(ByteRange::Suffix(0).invalid_reason().is_some());
        assert!(ByteRange::Bounded(0..1).invalid_reason().is_none());
        assert_eq!(ByteRange::Bounded(0..100).to_string(), "bytes=0-99");
    }
}
