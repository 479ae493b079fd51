//! A bundle's response body: answers from the [`Fetcher`], turned into members by a
//! protocol's [`Assemble`], written by an [`ArchiveWriter`], optionally compressed, with the
//! request's admission permit and deadline attached.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::archive::{ArchiveWriter, Compress, Compression, Member};
use super::fetch::{FetchStats, Fetcher};
use crate::Result;

/// What a route hands to the body it builds.
pub(crate) struct BodyContext {
    /// The admission permit: released when the body ends or is dropped.
    pub permit: Option<OwnedSemaphorePermit>,
    /// When the request's time is up; a body still streaming is cut.
    pub deadline: Instant,
    pub stats: Arc<FetchStats>,
}

/// A protocol's way of turning answers into members.
pub(crate) trait Assemble: Send + 'static {
    /// The member for answer `index` (`None`: left out), or why the body must be cut.
    fn member(
        &mut self,
        index: usize,
        result: Result<Option<Bytes>>,
    ) -> std::result::Result<Option<Member>, String>;

    /// Members after the last answer.
    fn last(&mut self) -> Vec<Member>;
}

struct State<A> {
    answers: Fetcher,
    writer: ArchiveWriter,
    assemble: A,
    queue: VecDeque<Bytes>,
    deadline: Instant,
    done: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

/// The archive's bytes, uncompressed, as a stream of chunks.
pub(crate) fn archive_stream<A: Assemble>(
    answers: Fetcher,
    writer: ArchiveWriter,
    assemble: A,
    context: BodyContext,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    let state = State {
        answers,
        writer,
        assemble,
        queue: VecDeque::new(),
        deadline: context.deadline,
        done: false,
        _permit: context.permit,
    };
    stream::unfold(state, |mut state| async move {
        loop {
            if let Some(chunk) = state.queue.pop_front() {
                return Some((Ok(chunk), state));
            }
            if state.done {
                return None;
            }
            let next = tokio::time::timeout_at(state.deadline, state.answers.next()).await;
            let chunks = match next {
                Err(_) => {
                    state.done = true;
                    let error = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the bundle took longer than the server's time limit",
                    );
                    return Some((Err(error), state));
                }
                Ok(Some((index, result))) => match state.assemble.member(index, result) {
                    Ok(Some(member)) => state.writer.member(member),
                    Ok(None) => Ok(Vec::new()),
                    Err(why) => {
                        state.done = true;
                        return Some((Err(std::io::Error::other(why)), state));
                    }
                },
                Ok(None) => {
                    state.done = true;
                    let mut chunks = Vec::new();
                    let mut result = Ok(());
                    for member in state.assemble.last() {
                        match state.writer.member(member) {
                            Ok(c) => chunks.extend(c),
                            Err(e) => result = Err(e),
                        }
                    }
                    result.and_then(|()| {
                        chunks.extend(state.writer.finish()?);
                        Ok(chunks)
                    })
                }
            };
            match chunks {
                Ok(chunks) => state
                    .queue
                    .extend(chunks.into_iter().filter(|c| !c.is_empty())),
                Err(e) => {
                    state.done = true;
                    return Some((Err(e), state));
                }
            }
        }
    })
    .boxed()
}

/// The archive stream, compressed if asked, as an HTTP body. An error ends the body early,
/// which hyper signals to the client by closing the connection without finishing the body.
pub(crate) fn http_body(
    archive: BoxStream<'static, std::io::Result<Bytes>>,
    compression: Compression,
) -> std::io::Result<s3s::Body> {
    let chunks: BoxStream<'static, std::io::Result<Bytes>> = match compression {
        Compression::None => archive,
        other => Compress::new(archive, other)?.boxed(),
    };
    let frames = chunks.map(|chunk| chunk.map(Frame::data));
    Ok(s3s::Body::http_body_unsync(StreamBody::new(frames)))
}

/// Collects an archive stream into memory, failing once it passes `limit` bytes.
pub(crate) async fn collect_limited(
    mut archive: BoxStream<'static, std::io::Result<Bytes>>,
    limit: u64,
) -> std::io::Result<Bytes> {
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = archive.next().await {
        let chunk = chunk?;
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(std::io::Error::other(format!(
                "the response would exceed the server's limit of {limit} bytes held in memory"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}
