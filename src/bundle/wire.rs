//! One bundle on the wire: the request (signed), the response's tar stream, and pairing
//! members with entries.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::channel::mpsc::Sender;
use futures::{SinkExt, StreamExt};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::read::{Chunks, TarMember, TarMembers};
use super::{BundleCompression, BundleProtocol, STORE, WireEntry};
use crate::{ByteRange, Error, Result};

/// The largest `start` or `length` a GetBatch entry carries (they are int64).
const I64_MAX: u64 = i64::MAX as u64;
/// The last member of a Tigris bundle in skip mode.
const ERRORS_MEMBER: &str = "__bundle_errors.json";
/// The directory of AIStore's placeholders for failed entries.
const MISSING_DIR: &str = "__404__/";
/// Asks a getmany server for completion-order members; confirmed by the same header.
const ORDER_HEADER: &str = "x-getmany-order";
/// The getmany server's PAX records on failed entries.
const PAX_STATUS: &str = "GETMANY.status";
const PAX_ERROR: &str = "GETMANY.error";
/// How often a request answered 429 (overloaded) is sent again.
const OVERLOAD_RETRIES: u32 = 4;
/// The longest pause before sending again.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);
/// The most of an error response's body kept for the message.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// What a bundle request needs to know.
pub(crate) struct Wire {
    pub protocol: BundleProtocol,
    pub endpoint: reqwest::Url,
    pub bucket: String,
    pub credentials: Option<(String, String)>,
    pub region: String,
    pub token: Option<String>,
    pub compression: BundleCompression,
    pub client: reqwest::Client,
    pub max_member_bytes: u64,
    pub completion_order: bool,
}

type Item = (usize, Result<Option<Bytes>>);

/// A message carried as an error source.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

fn backend(key: &str, message: impl Into<String>) -> Error {
    Error::Backend {
        store: STORE,
        key: key.to_string(),
        source: Arc::new(Message(message.into())),
    }
}

/// Why a bundle stopped early.
enum Stop {
    /// The reader dropped the stream: nothing more to do.
    ReaderGone,
    /// The bundle failed: every entry not yet answered gets this message.
    Failed(String),
}

impl Wire {
    /// Runs one bundle for `entries`, sending each entry's answer (by position) to `tx`, in
    /// batches (see [`Batcher`]).
    pub async fn run(&self, entries: &[WireEntry], tx: Sender<Vec<Item>>) {
        let mut answered = vec![false; entries.len()];
        let mut out = Batcher::new(tx);
        let outcome = self.exchange(entries, &mut answered, &mut out).await;
        if let Err(Stop::Failed(message)) = outcome {
            for (slot, entry) in entries.iter().enumerate() {
                if !answered[slot]
                    && out
                        .push((slot, Err(backend(&entry.key, &message))))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        }
        // Nothing to do if the reader is gone.
        let _ = out.flush().await;
    }

    fn url(&self) -> String {
        let base = self.endpoint.as_str().trim_end_matches('/');
        match self.protocol {
            BundleProtocol::Tigris => format!("{base}/{}?bundle", self.bucket),
            BundleProtocol::AiStore => format!("{base}/v1/ml/moss/{}?provider=ais", self.bucket),
        }
    }

    /// The request body for `entries`.
    fn body(&self, entries: &[WireEntry], coer: bool) -> Vec<u8> {
        match self.protocol {
            BundleProtocol::Tigris => {
                let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
                serde_json::json!({ "keys": keys }).to_string().into_bytes()
            }
            BundleProtocol::AiStore => {
                let entries: Vec<serde_json::Value> = entries
                    .iter()
                    // GetBatch's `start` and `length` are int64: offsets and lengths past
                    // i64::MAX are sent as i64::MAX. No object reaches 2^63 bytes, so the
                    // answer is the same: a range starting there is past the end of any
                    // object, and a length reaching past it is clipped at the object's end.
                    .map(|e| match &e.range {
                        None => serde_json::json!({ "objname": e.key }),
                        Some(ByteRange::Bounded(r)) => serde_json::json!({
                            "objname": e.key,
                            "start": r.start.min(I64_MAX),
                            "length": (r.end - r.start).min(I64_MAX),
                        }),
                        Some(ByteRange::Offset(s)) => serde_json::json!({
                            "objname": e.key, "start": (*s).min(I64_MAX), "length": -1
                        }),
                        // Suffix ranges are planned as whole reads.
                        Some(ByteRange::Suffix(_)) => serde_json::json!({ "objname": e.key }),
                    })
                    .collect();
                let mime = match self.compression {
                    BundleCompression::Gzip => ".tgz",
                    _ => ".tar",
                };
                serde_json::json!({
                    "in": entries, "mime": mime, "coer": coer, "onob": true, "strm": true
                })
                .to_string()
                .into_bytes()
            }
        }
    }

    /// Sends the request for `entries`.
    async fn send(
        &self,
        entries: &[WireEntry],
        coer: bool,
    ) -> std::result::Result<reqwest::Response, String> {
        let url = self.url();
        let body = self.body(entries, coer);
        let method = match self.protocol {
            BundleProtocol::Tigris => reqwest::Method::POST,
            BundleProtocol::AiStore => reqwest::Method::GET,
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        if self.protocol == BundleProtocol::Tigris {
            let compression = match self.compression {
                BundleCompression::None => "none",
                BundleCompression::Gzip => "gzip",
                BundleCompression::Zstd => "zstd",
            };
            headers.insert("x-tigris-bundle-format", HeaderValue::from_static("tar"));
            headers.insert(
                "x-tigris-bundle-compression",
                HeaderValue::from_static(compression),
            );
            headers.insert("x-tigris-bundle-on-error", HeaderValue::from_static("skip"));
        }
        if self.completion_order {
            headers.insert(ORDER_HEADER, HeaderValue::from_static("completion"));
        }
        if let Some((access, secret)) = &self.credentials {
            sign(
                method.as_str(),
                &url,
                &mut headers,
                &body,
                access,
                secret,
                &self.region,
            )?;
        } else if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| "the token cannot be sent in a header".to_string())?;
            headers.insert(header::AUTHORIZATION, value);
        }
        // An overloaded server (429) is asked again after the pause it names; a bundle is
        // a read, so repeating it is safe. The signature stays valid for minutes.
        let mut attempt = 0;
        let response = loop {
            let response = self
                .client
                .request(method.clone(), &url)
                .headers(headers.clone())
                .body(body.clone())
                .send()
                .await
                .map_err(|e| format!("bundle request to {url} failed: {e}"))?;
            if response.status() != reqwest::StatusCode::TOO_MANY_REQUESTS
                || attempt >= OVERLOAD_RETRIES
            {
                break response;
            }
            attempt += 1;
            let named = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let backoff = Duration::from_millis(50 << attempt);
            tokio::time::sleep(named.unwrap_or(backoff).min(MAX_RETRY_PAUSE)).await;
        };
        if response.status() != reqwest::StatusCode::OK {
            let status = response.status();
            let text = error_text(response).await;
            return Err(format!("bundle request to {url} answered {status}: {text}"));
        }
        Ok(response)
    }

    /// The response body as the chunks of a tar stream (decompressed as its content type
    /// says).
    fn tar_chunks(&self, response: reqwest::Response) -> Chunks {
        use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
        use tokio_util::io::{ReaderStream, StreamReader};
        /// Decompressed bytes are read in pieces of this size.
        const DECODED_CHUNK: usize = 64 * 1024;
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let stream = response.bytes_stream().map(|r| r.map_err(io::Error::other));
        if content_type.contains("gzip") {
            let decoder = GzipDecoder::new(StreamReader::new(stream));
            ReaderStream::with_capacity(decoder, DECODED_CHUNK).boxed()
        } else if content_type.contains("zstd") {
            let decoder = ZstdDecoder::new(StreamReader::new(stream));
            ReaderStream::with_capacity(decoder, DECODED_CHUNK).boxed()
        } else {
            // The body's own chunks: nothing copied before the member buffers.
            stream.boxed()
        }
    }

    async fn exchange(
        &self,
        entries: &[WireEntry],
        answered: &mut [bool],
        out: &mut Batcher,
    ) -> std::result::Result<(), Stop> {
        let n = entries.len();
        let response = self.send(entries, true).await.map_err(Stop::Failed)?;
        let completion = response
            .headers()
            .get(ORDER_HEADER)
            .is_some_and(|v| v.as_bytes() == b"completion");
        let mut members = TarMembers::new(self.tar_chunks(response), self.max_member_bytes);
        let by_name: HashMap<&str, usize> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.key.as_str(), i))
            .collect();
        let mut skipped: HashMap<String, (String, Option<String>)> = HashMap::new();
        // Placeholders without a reason, answered after the stream by asking again.
        let mut unresolved = Vec::new();
        let mut deferred = vec![false; n];
        let mut position = 0;
        let mut delivered = 0;
        loop {
            let next = {
                let mut next = std::pin::pin!(members.next());
                match futures::poll!(next.as_mut()) {
                    Poll::Ready(next) => next,
                    // The next member is not here yet: hand over what is ready meanwhile.
                    Poll::Pending => {
                        out.flush().await?;
                        next.await
                    }
                }
            };
            let member = match next {
                Ok(Some(member)) => member,
                Ok(None) => break,
                Err(e) => {
                    return Err(Stop::Failed(format!(
                        "the bundle stream was cut after {delivered} of {n} members: {e}"
                    )));
                }
            };
            let (slot, result) = match self.protocol {
                BundleProtocol::Tigris => {
                    let errors_requested = by_name
                        .get(ERRORS_MEMBER)
                        .is_some_and(|&slot| !answered[slot]);
                    if member.name == ERRORS_MEMBER && !errors_requested {
                        parse_skipped(&member.data, &mut skipped).map_err(Stop::Failed)?;
                        continue;
                    }
                    let slot = *by_name.get(member.name.as_str()).ok_or_else(|| {
                        Stop::Failed(format!(
                            "the bundle holds member {:?}, which was not asked for",
                            member.name
                        ))
                    })?;
                    (slot, Ok(Some(member.data)))
                }
                BundleProtocol::AiStore => {
                    let slot = if completion {
                        member.index.ok_or_else(|| {
                            Stop::Failed(format!(
                                "member {:?} of a completion-order bundle has no index",
                                member.name
                            ))
                        })?
                    } else {
                        position
                    };
                    position += 1;
                    let entry = entries.get(slot).ok_or_else(|| {
                        Stop::Failed(format!(
                            "the bundle holds more members than the {n} entries asked for"
                        ))
                    })?;
                    match placeholder(entry, &member) {
                        Placement::Data => (slot, Ok(Some(member.data))),
                        Placement::Failed(result) => (slot, result),
                        Placement::Unexplained => {
                            // A placeholder without a reason (a real AIStore): ask again below.
                            if std::mem::replace(&mut deferred[slot], true) {
                                return Err(Stop::Failed(format!(
                                    "the bundle answered {:?} twice",
                                    entry.key
                                )));
                            }
                            unresolved.push(slot);
                            continue;
                        }
                        Placement::OutOfStep => {
                            return Err(Stop::Failed(format!(
                                "member {:?} arrived where {:?} was expected",
                                member.name, entry.key
                            )));
                        }
                    }
                }
            };
            if answered[slot] || deferred[slot] {
                return Err(Stop::Failed(format!(
                    "the bundle answered {:?} twice",
                    entries[slot].key
                )));
            }
            answered[slot] = true;
            delivered += 1;
            out.push((slot, result)).await?;
        }

        out.flush().await?;
        for slot in unresolved {
            let result = self.probe(&entries[slot]).await;
            answered[slot] = true;
            out.push((slot, result)).await?;
            out.flush().await?;
        }
        match self.protocol {
            BundleProtocol::Tigris => {
                for (slot, entry) in entries.iter().enumerate() {
                    if answered[slot] {
                        continue;
                    }
                    let result = match skipped.get(&entry.key) {
                        Some((reason, _)) if reason == "NoSuchKey" => Ok(None),
                        Some((reason, message)) => Err(backend(
                            &entry.key,
                            format!(
                                "the bundle skipped it: {reason}{}",
                                message
                                    .as_deref()
                                    .map(|m| format!(": {m}"))
                                    .unwrap_or_default()
                            ),
                        )),
                        None => Err(backend(
                            &entry.key,
                            "the bundle ended without it and without listing it in __bundle_errors.json",
                        )),
                    };
                    answered[slot] = true;
                    out.push((slot, result)).await?;
                }
                Ok(())
            }
            BundleProtocol::AiStore => {
                if answered.iter().all(|&a| a) {
                    Ok(())
                } else {
                    Err(Stop::Failed(format!(
                        "the bundle ended after {delivered} of {n} entries"
                    )))
                }
            }
        }
    }

    /// Asks for one entry alone with `coer: false`, to learn why it failed in a batch.
    async fn probe(&self, entry: &WireEntry) -> Result<Option<Bytes>> {
        let response = match self.send(std::slice::from_ref(entry), false).await {
            Ok(response) => response,
            Err(message) if message.contains(" answered 404") => return Ok(None),
            Err(message) if message.contains(" answered 416") => {
                return Err(Error::InvalidRange {
                    key: entry.key.clone(),
                    range: entry.range.clone().unwrap_or(ByteRange::Offset(0)),
                    reason: message,
                });
            }
            Err(message) => return Err(backend(&entry.key, message)),
        };
        let mut members = TarMembers::new(self.tar_chunks(response), self.max_member_bytes);
        match members.next().await {
            Ok(Some(member)) => Ok(Some(member.data)),
            Ok(None) => Err(backend(&entry.key, "an empty answer to a one-entry batch")),
            Err(e) => Err(backend(&entry.key, e.to_string())),
        }
    }
}

/// Answers on their way to the reader, handed over in batches: one channel message (and one
/// wake-up of the reader) per batch instead of per member. A batch leaves when the next
/// member has not arrived yet, so no answer waits for the network; and when it holds
/// [`Batcher::MAX_ANSWERS`] answers or [`Batcher::MAX_BYTES`] bytes, so what waits for the
/// reader stays bounded: at most the batch being filled and the channel's two.
pub(crate) struct Batcher {
    tx: Sender<Vec<Item>>,
    batch: Vec<Item>,
    bytes: usize,
}

impl Batcher {
    /// Answers per batch, at most.
    pub const MAX_ANSWERS: usize = 64;
    /// A batch leaves once its answers hold this many bytes.
    pub const MAX_BYTES: usize = 1 << 20;

    fn new(tx: Sender<Vec<Item>>) -> Self {
        Batcher {
            tx,
            batch: Vec::new(),
            bytes: 0,
        }
    }

    /// Adds an answer; hands the batch over once it is full.
    async fn push(&mut self, item: Item) -> std::result::Result<(), Stop> {
        if let (_, Ok(Some(data))) = &item {
            self.bytes += data.len();
        }
        self.batch.push(item);
        if self.batch.len() >= Self::MAX_ANSWERS || self.bytes >= Self::MAX_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Hands the answers gathered so far to the reader.
    async fn flush(&mut self) -> std::result::Result<(), Stop> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        let batch = std::mem::take(&mut self.batch);
        self.tx.send(batch).await.map_err(|_| Stop::ReaderGone)
    }
}

enum Placement {
    /// The entry's bytes.
    Data,
    /// A placeholder whose PAX records say why.
    Failed(Result<Option<Bytes>>),
    /// A placeholder without a reason.
    Unexplained,
    /// Neither the entry nor its placeholder.
    OutOfStep,
}

/// Whether `member` is `entry`'s data or its `__404__/` placeholder (names without bucket:
/// the store asks with `onob`).
fn placeholder(entry: &WireEntry, member: &TarMember) -> Placement {
    if member.name == entry.key {
        return Placement::Data;
    }
    let is_placeholder = member
        .name
        .strip_prefix(MISSING_DIR)
        .is_some_and(|rest| rest == entry.key)
        && member.data.is_empty();
    if !is_placeholder {
        return Placement::OutOfStep;
    }
    let message = member
        .pax
        .get(PAX_ERROR)
        .cloned()
        .unwrap_or_else(|| "the entry failed on the server".to_string());
    match member.pax.get(PAX_STATUS).map(String::as_str) {
        None => Placement::Unexplained,
        Some("404") => Placement::Failed(Ok(None)),
        Some("416") => Placement::Failed(Err(Error::InvalidRange {
            key: entry.key.clone(),
            range: entry.range.clone().unwrap_or(ByteRange::Offset(0)),
            reason: message,
        })),
        Some(status) => Placement::Failed(Err(backend(
            &entry.key,
            format!("the server answered {status} for it: {message}"),
        ))),
    }
}

/// Reads a Tigris errors member: `{"skipped":[{"key","reason","message"?}]}`.
fn parse_skipped(
    data: &[u8],
    out: &mut HashMap<String, (String, Option<String>)>,
) -> std::result::Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Skipped {
        #[serde(default)]
        skipped: Vec<SkippedKey>,
    }
    #[derive(serde::Deserialize)]
    struct SkippedKey {
        key: String,
        #[serde(default)]
        reason: String,
        #[serde(default)]
        message: Option<String>,
    }
    let parsed: Skipped = serde_json::from_slice(data)
        .map_err(|e| format!("the bundle's {ERRORS_MEMBER} is not valid: {e}"))?;
    for key in parsed.skipped {
        out.insert(key.key, (key.reason, key.message));
    }
    Ok(())
}

/// The start of an error response's body, as text.
async fn error_text(response: reqwest::Response) -> String {
    let mut body = response.bytes_stream();
    let mut text = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        let room = MAX_ERROR_BODY.saturating_sub(text.len());
        text.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if text.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    String::from_utf8_lossy(&text).trim().to_string()
}

/// Adds AWS Signature V4 headers (service `s3`, payload hash in `x-amz-content-sha256`).
fn sign(
    method: &str,
    url: &str,
    headers: &mut HeaderMap,
    body: &[u8],
    access_key: &str,
    secret_key: &str,
    region: &str,
) -> std::result::Result<(), String> {
    use aws_sigv4::http_request::{
        PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
        UriPathNormalizationMode, sign as sigv4_sign,
    };
    use aws_sigv4::sign::v4;

    let identity =
        aws_credential_types::Credentials::new(access_key, secret_key, None, None, "getmany")
            .into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("s3")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .map_err(|e| format!("cannot sign: {e}"))?
        .into();
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    let signable = SignableRequest::new(method, url, pairs.into_iter(), SignableBody::Bytes(body))
        .map_err(|e| format!("cannot sign: {e}"))?;
    let (instructions, _signature) = sigv4_sign(signable, &params)
        .map_err(|e| format!("cannot sign: {e}"))?
        .into_parts();
    let (signed, _) = instructions.into_parts();
    for header in signed {
        let name = HeaderName::from_bytes(header.name().as_bytes())
            .map_err(|_| "a signature header has an invalid name".to_string())?;
        let value = HeaderValue::from_str(header.value())
            .map_err(|_| "a signature header is not a valid header value".to_string())?;
        headers.insert(name, value);
    }
    Ok(())
}
