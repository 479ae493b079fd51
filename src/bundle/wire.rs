//! One bundle on the wire: the request (signed), the response's tar stream, and pairing
//! members with entries.

use std::borrow::Cow;
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
use super::retry::{Interrupted, RetryPolicy, StallWatch, is_cut, retry_after, transient_status};
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
/// Asks a getmany server for the `Store` trait's ranges (clipped at the end of the object)
/// rather than GetBatch's exact ones (out of bounds: range not satisfiable).
const RANGES_HEADER: &str = "x-getmany-ranges";
/// The getmany server's PAX records on failed entries.
const PAX_STATUS: &str = "GETMANY.status";
const PAX_ERROR: &str = "GETMANY.error";
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
    /// The time limit of one HTTP request, its body included.
    pub timeout: Duration,
    pub retry: RetryPolicy,
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

/// Why an attempt at a bundle stopped early.
enum Stop {
    /// The reader dropped the stream: nothing more to do.
    ReaderGone,
    /// The bundle failed for good: every entry not yet answered gets this message.
    Failed(String),
    /// The attempt failed in a way worth another (the stream was cut or stalled, the server
    /// is overloaded): the entries not yet answered are asked for again, after the server's
    /// `Retry-After` if it named one.
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
}

impl Stop {
    fn transient(message: String) -> Stop {
        Stop::Transient {
            message,
            retry_after: None,
        }
    }
}

/// An error and its sources, as one line.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

impl Wire {
    /// Runs one bundle for `entries`, sending each entry's answer (by position) to `tx`, in
    /// batches (see [`Batcher`]). An attempt that fails transiently is followed, after a
    /// pause, by another for the entries not yet answered, as [`RetryPolicy`] allows; every
    /// entry is answered exactly once.
    pub async fn run(&self, entries: &[WireEntry], tx: Sender<Vec<Item>>) {
        let n = entries.len();
        let mut answered = vec![false; n];
        let mut out = Batcher::new(tx);
        let mut retries = 0;
        let failure = loop {
            // The entries still owed: all at first, then only those not answered yet (a
            // duplicate key is one entry, so it is asked for once).
            let owed: Vec<usize> = (0..n).filter(|&slot| !answered[slot]).collect();
            if owed.is_empty() {
                break None;
            }
            let attempt: Cow<'_, [WireEntry]> = if owed.len() == n {
                Cow::Borrowed(entries)
            } else {
                Cow::Owned(owed.iter().map(|&slot| entries[slot].clone()).collect())
            };
            let mut done = vec![false; owed.len()];
            let outcome = self.exchange(&attempt, &owed, &mut done, &mut out).await;
            for (&slot, &done) in owed.iter().zip(&done) {
                answered[slot] |= done;
            }
            let delivered = answered.iter().filter(|&&a| a).count();
            match outcome {
                Ok(()) => break None,
                Err(Stop::ReaderGone) => return,
                Err(Stop::Failed(message)) if retries == 0 => break Some(message),
                Err(Stop::Failed(message)) => {
                    break Some(format!(
                        "{message} (after {retries} retries; {delivered} of {n} entries delivered)"
                    ));
                }
                Err(Stop::Transient {
                    message,
                    retry_after,
                }) => match self.retry.pause(retries, retry_after) {
                    Err(why) if retries == 0 => break Some(format!("{message} ({why})")),
                    Err(why) => {
                        break Some(format!(
                            "{message}; {why} ({delivered} of {n} entries delivered)"
                        ));
                    }
                    Ok(pause) => {
                        retries += 1;
                        tracing::debug!(
                            retry = retries,
                            owed = n - delivered,
                            ?pause,
                            reason = %message,
                            "getmany.bundle.retry"
                        );
                        // What arrived leaves now, not after the pause.
                        if out.flush().await.is_err() {
                            return;
                        }
                        tokio::time::sleep(pause).await;
                    }
                },
            }
        };
        if let Some(message) = failure {
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

    /// Sends the request for `entries` and waits for the response head, whatever its
    /// status, at most the stall timeout.
    async fn request(
        &self,
        entries: &[WireEntry],
        coer: bool,
    ) -> std::result::Result<reqwest::Response, Stop> {
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
        if self.protocol == BundleProtocol::AiStore {
            headers.insert(RANGES_HEADER, HeaderValue::from_static("clip"));
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
            )
            .map_err(Stop::Failed)?;
        } else if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Stop::Failed("the token cannot be sent in a header".into()))?;
            headers.insert(header::AUTHORIZATION, value);
        }
        // A bundle is a read: sending it again is safe. A signature stays valid for minutes.
        let send = self
            .client
            .request(method, &url)
            .headers(headers)
            .body(body)
            .timeout(self.timeout)
            .send();
        match tokio::time::timeout(self.retry.stall, send).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) if e.is_builder() => Err(Stop::Failed(format!(
                "bundle request to {url} cannot be sent: {}",
                describe(&e)
            ))),
            Ok(Err(e)) => Err(Stop::transient(format!(
                "bundle request to {url} failed: {}",
                describe(&e)
            ))),
            Err(_) => Err(Stop::transient(format!(
                "bundle request to {url} got no answer within {:?} (the stall timeout)",
                self.retry.stall
            ))),
        }
    }

    /// Sends the request for `entries`; a status other than 200 is a failure, transient or
    /// not (see [`transient_status`]).
    async fn send(
        &self,
        entries: &[WireEntry],
        coer: bool,
    ) -> std::result::Result<reqwest::Response, Stop> {
        let response = self.request(entries, coer).await?;
        let status = response.status();
        if status == reqwest::StatusCode::OK {
            return Ok(response);
        }
        let (message, retry_after) = self.failed_status(response).await;
        if transient_status(status) {
            Err(Stop::Transient {
                message,
                retry_after,
            })
        } else {
            Err(Stop::Failed(message))
        }
    }

    /// What a response that is not 200 says: a message and the pause it asks for.
    async fn failed_status(&self, response: reqwest::Response) -> (String, Option<Duration>) {
        let status = response.status();
        let retry_after = retry_after(response.headers(), SystemTime::now());
        let text = tokio::time::timeout(self.retry.stall, error_text(response))
            .await
            .unwrap_or_default();
        let url = self.url();
        (
            format!("bundle request to {url} answered {status}: {text}"),
            retry_after,
        )
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
        let timeout = self.timeout;
        let stream = response.bytes_stream().map(move |r| {
            r.map_err(|e| {
                let why = if e.is_timeout() {
                    format!("the request's time limit of {timeout:?} ran out")
                } else {
                    describe(&e)
                };
                io::Error::other(Interrupted(why))
            })
        });
        // A body that goes quiet is an interruption too.
        let stream = StallWatch::new(stream.boxed(), self.retry.stall);
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

    /// One attempt: asks for `entries` and answers them as their members arrive, each as
    /// entry `origin[slot]` of the bundle, marking it in `answered`.
    async fn exchange(
        &self,
        entries: &[WireEntry],
        origin: &[usize],
        answered: &mut [bool],
        out: &mut Batcher,
    ) -> std::result::Result<(), Stop> {
        let n = entries.len();
        let response = self.send(entries, true).await?;
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
                Err(e) if is_cut(&e) => {
                    return Err(Stop::transient(format!(
                        "the bundle stream was cut after {delivered} of {n} members: {e}"
                    )));
                }
                Err(e) => {
                    return Err(Stop::Failed(format!(
                        "the bundle stream is not a valid archive after {delivered} of {n} \
                         members: {e}"
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
            out.push((origin[slot], result)).await?;
        }
        // Without its end-of-archive block the archive was cut at a member boundary.
        let complete = members.end_block();
        let cut = || {
            Stop::transient(format!(
                "the bundle stream was cut after {delivered} of {n} members (it ended without \
                 the end of the archive)"
            ))
        };

        out.flush().await?;
        for slot in unresolved {
            let result = self.probe(&entries[slot]).await;
            answered[slot] = true;
            out.push((origin[slot], result)).await?;
            out.flush().await?;
        }
        match self.protocol {
            BundleProtocol::Tigris => {
                let mut unlisted = false;
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
                        // Cut: asked for again.
                        None if !complete => {
                            unlisted = true;
                            continue;
                        }
                        None => Err(backend(
                            &entry.key,
                            "the bundle ended without it and without listing it in __bundle_errors.json",
                        )),
                    };
                    answered[slot] = true;
                    out.push((origin[slot], result)).await?;
                }
                if unlisted { Err(cut()) } else { Ok(()) }
            }
            BundleProtocol::AiStore => {
                if answered.iter().all(|&a| a) {
                    Ok(())
                } else if !complete {
                    Err(cut())
                } else {
                    Err(Stop::Failed(format!(
                        "the bundle ended after {delivered} of {n} entries"
                    )))
                }
            }
        }
    }

    /// Asks for one entry alone with `coer: false`, to learn why it failed in a batch;
    /// retried as a bundle is.
    async fn probe(&self, entry: &WireEntry) -> Result<Option<Bytes>> {
        let mut retries = 0;
        loop {
            let (message, retry_after) = match self.probe_once(entry).await {
                Ok(result) => return result,
                Err(transient) => transient,
            };
            match self.retry.pause(retries, retry_after) {
                Ok(pause) => {
                    retries += 1;
                    tokio::time::sleep(pause).await;
                }
                Err(why) => return Err(backend(&entry.key, format!("{message} ({why})"))),
            }
        }
    }

    /// One probe: the entry's answer, or a transient failure and the pause it asks for.
    async fn probe_once(
        &self,
        entry: &WireEntry,
    ) -> std::result::Result<Result<Option<Bytes>>, (String, Option<Duration>)> {
        let response = match self.request(std::slice::from_ref(entry), false).await {
            Ok(response) => response,
            Err(Stop::Transient {
                message,
                retry_after,
            }) => return Err((message, retry_after)),
            Err(Stop::Failed(message)) => return Ok(Err(backend(&entry.key, message))),
            Err(Stop::ReaderGone) => return Ok(Err(backend(&entry.key, "the reader is gone"))),
        };
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            let (message, retry_after) = self.failed_status(response).await;
            return match status.as_u16() {
                404 => Ok(Ok(None)),
                416 => Ok(Err(Error::InvalidRange {
                    key: entry.key.clone(),
                    range: entry.range.clone().unwrap_or(ByteRange::Offset(0)),
                    reason: message,
                })),
                _ if transient_status(status) => Err((message, retry_after)),
                _ => Ok(Err(backend(&entry.key, message))),
            };
        }
        let mut members = TarMembers::new(self.tar_chunks(response), self.max_member_bytes);
        match members.next().await {
            Ok(Some(member)) => Ok(Ok(Some(member.data))),
            Ok(None) if !members.end_block() => Err((
                "the answer to a one-entry batch was cut before its member".into(),
                None,
            )),
            Ok(None) => Ok(Err(backend(
                &entry.key,
                "an empty answer to a one-entry batch",
            ))),
            Err(e) if is_cut(&e) => Err((e.to_string(), None)),
            Err(e) => Ok(Err(backend(&entry.key, e.to_string()))),
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
