//! What the request-parser targets share: the input read as a small HTTP request, and the
//! checks every error answer must pass.
//!
//! An input is
//!
//! ```text
//! METHOD TARGET\n
//! name: value\n        (any number of header lines; `\r\n` also ends a line)
//! \n
//! body (raw bytes, to the end)
//! ```
//!
//! so the corpus holds readable requests and the fuzzer mutates the method, the path, the
//! query, the headers and the body alike. A request line or header that hyper itself would
//! refuse (a method or URI that does not parse, a header name or value that is not a valid
//! `HeaderName`/`HeaderValue`) never reaches the server's parsers: the input is skipped, or the
//! header line ignored.

use getmany::server::fuzzing::{HeaderMap, HeaderName, HeaderValue, Limits, Method, Uri};

/// The bucket names the fuzzed server serves.
pub const BUCKETS: [&str; 2] = ["data", "b2"];

pub fn bucket_exists(bucket: &str) -> bool {
    BUCKETS.contains(&bucket)
}

pub struct Input<'a> {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: &'a [u8],
    pub limits: Limits,
}

/// The next line (without its `\n` or `\r\n`) and the rest, or `None` at the end.
fn line(data: &[u8]) -> Option<(&[u8], &[u8])> {
    if data.is_empty() {
        return None;
    }
    let (line, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[data.len()..]),
    };
    Some((line.strip_suffix(b"\r").unwrap_or(line), rest))
}

pub fn split(data: &[u8]) -> Option<Input<'_>> {
    let (request_line, mut rest) = line(data)?;
    let space = request_line.iter().position(|&b| b == b' ')?;
    let method = Method::from_bytes(&request_line[..space]).ok()?;
    let uri = Uri::try_from(&request_line[space + 1..]).ok()?;
    let mut headers = HeaderMap::new();
    while let Some((header, after)) = line(rest) {
        rest = after;
        if header.is_empty() {
            break;
        }
        let Some(colon) = header.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = &header[colon + 1..];
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&header[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    // Small limits for a quarter of the inputs each, so that they are hit; the server's
    // defaults for the last quarter.
    let defaults = Limits::default();
    let (max_keys, max_entries) = match data.len() % 4 {
        0 => (1, 1),
        1 => (3, 3),
        2 => (64, 64),
        _ => (defaults.max_keys, defaults.max_entries),
    };
    Some(Input {
        method,
        uri,
        headers,
        body: rest,
        limits: Limits {
            max_keys,
            max_entries,
            ..defaults
        },
    })
}

/// An error message is plain text: not empty, no control characters, U+FFFE or U+FFFF (a
/// Tigris error goes out in an XML body, where XML 1.0 does not allow most of them even as
/// character references; and a message is one line), and no Rust `Debug`
/// output of anything but strings (`EscapeAscii { .. }`, `Utf8Error { .. }`, `Some(..)`).
/// Text inside `"..."` is a string's own `Debug` form (escaped) and is not looked at, nor is
/// what the request itself holds (`data`): a message may quote the request. (libFuzzer sees
/// the needles compared and builds inputs around them: these exceptions keep them honest.)
pub fn check_message(message: &str, data: &[u8]) {
    assert!(!message.trim().is_empty(), "empty error message");
    assert!(
        !message
            .chars()
            .any(|c| c.is_control() || matches!(c, '\u{fffe}' | '\u{ffff}')),
        "control character or noncharacter in the error message {message:?}"
    );
    let in_request = |text: &str| {
        data.windows(text.len().max(1))
            .any(|w| w == text.as_bytes())
    };
    let mut outside = String::with_capacity(message.len());
    let mut quoted = false;
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        match c {
            // The quotes stay, so that no needle is made of the text around a string.
            '"' => {
                quoted = !quoted;
                outside.push('"');
            }
            '\\' if quoted => {
                chars.next();
            }
            c if !quoted => outside.push(c),
            _ => {}
        }
    }
    for needle in [
        "EscapeAscii",
        "Utf8Error {",
        " { ..",
        "Some(",
        "Ok(",
        "Err(",
        "[0x",
    ] {
        assert!(
            !outside.contains(needle) || in_request(needle),
            "Debug output ({needle:?}) in the error message {message:?}"
        );
    }
    // `Name { ` outside a string: a struct's Debug form.
    let bytes = outside.as_bytes();
    for (i, window) in bytes.windows(3).enumerate() {
        if window == b" { " && i > 0 && bytes[i - 1].is_ascii_alphanumeric() {
            let word_start = bytes[..i]
                .iter()
                .rposition(|b| !b.is_ascii_alphanumeric() && *b != b'_')
                .map_or(0, |p| p + 1);
            let debug = &outside[word_start..i + 3];
            assert!(
                !bytes[word_start].is_ascii_uppercase() || in_request(debug),
                "Debug output of a struct ({debug:?}) in the error message {message:?}"
            );
        }
    }
}
