//! A bundle's response body: answers from the [`Fetcher`], turned into members by a
//! protocol's [`Assemble`], written by an [`ArchiveWriter`], optionally compressed, with the
//! request's admission permit and deadline attached.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use super::archive::{ArchiveWriter, Compress, Compression, Frames, Member};
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

/// The archive's bytes as a stream of frames (see [`Frames`]).
///
/// Each poll takes every answer that is ready, writes its member, and hands on a frame once
/// it is full or once no further answer is ready: a member never waits for the next object,
/// and a bundle of small objects leaves in a few large frames instead of three per member.
/// Memory: one frame being built ([`Frames::FRAME_BYTES`] plus at most one small member)
/// besides the reorder window.
struct ArchiveBody<A> {
    answers: Fetcher,
    writer: ArchiveWriter,
    assemble: A,
    frames: Frames,
    deadline: Pin<Box<Sleep>>,
    done: bool,
    /// The error that ends the body, once the frames before it are out.
    failed: Option<std::io::Error>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<A: Assemble> ArchiveBody<A> {
    /// Writes the members after the last answer and the archive's end.
    fn finish(&mut self) -> std::io::Result<()> {
        let mut result = Ok(());
        for member in self.assemble.last() {
            if let Err(e) = self.writer.member(member, &mut self.frames) {
                result = Err(e);
            }
        }
        result?;
        self.writer.finish(&mut self.frames)?;
        self.frames.cut();
        Ok(())
    }

    /// Ends the body with `error`, after the members written before it: a failure cuts the
    /// body there, and loses none of the members before it.
    fn fail(&mut self, error: std::io::Error) {
        self.done = true;
        self.frames.cut();
        self.failed = Some(error);
    }
}

impl<A: Assemble + Unpin> Stream for ArchiveBody<A> {
    type Item = std::io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.frames.pop() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if let Some(error) = this.failed.take() {
                return Poll::Ready(Some(Err(error)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.answers.poll_next_unpin(cx) {
                Poll::Ready(Some((index, result))) => match this.assemble.member(index, result) {
                    Ok(Some(member)) => {
                        if let Err(e) = this.writer.member(member, &mut this.frames) {
                            this.fail(e);
                        }
                    }
                    Ok(None) => {}
                    Err(why) => this.fail(std::io::Error::other(why)),
                },
                Poll::Ready(None) => {
                    this.done = true;
                    if let Err(e) = this.finish() {
                        this.fail(e);
                    }
                }
                Poll::Pending => {
                    // Nothing more is ready: what is written so far leaves now.
                    this.frames.cut();
                    if this.frames.has_ready() {
                        continue;
                    }
                    if this.deadline.as_mut().poll(cx).is_ready() {
                        this.fail(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the bundle took longer than the server's time limit",
                        ));
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// The archive's bytes, uncompressed, as a stream of chunks.
pub(crate) fn archive_stream<A: Assemble + Unpin>(
    answers: Fetcher,
    writer: ArchiveWriter,
    assemble: A,
    context: BodyContext,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    ArchiveBody {
        answers,
        writer,
        assemble,
        frames: Frames::default(),
        deadline: Box::pin(tokio::time::sleep_until(context.deadline)),
        done: false,
        failed: None,
        _permit: context.permit,
    }
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

/// Like [`http_body`], ending with a trailers frame made by `trailers` once the archive is
/// complete (HTTP/1.1 sends it only to clients that asked with `TE: trailers`).
pub(crate) fn http_body_with_trailers(
    archive: BoxStream<'static, std::io::Result<Bytes>>,
    compression: Compression,
    trailers: impl FnOnce() -> hyper::HeaderMap + Send + 'static,
) -> std::io::Result<s3s::Body> {
    let chunks: BoxStream<'static, std::io::Result<Bytes>> = match compression {
        Compression::None => archive,
        other => Compress::new(archive, other)?.boxed(),
    };
    let frames = chunks
        .map(|chunk| chunk.map(Frame::data))
        .chain(futures::stream::once(async move {
            Ok(Frame::trailers(trailers()))
        }));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::fetch::{Fetch, Window};
    use crate::{MemoryStore, Request, Store};
    use std::io::Read;

    /// Names members `o/<index>`; fails the body at index `fail_at`.
    struct Named {
        fail_at: Option<usize>,
    }

    impl Assemble for Named {
        fn member(
            &mut self,
            index: usize,
            result: Result<Option<Bytes>>,
        ) -> std::result::Result<Option<Member>, String> {
            if Some(index) == self.fail_at {
                return Err(format!("member {index} fails"));
            }
            let data = result.map_err(|e| e.to_string())?.unwrap_or_default();
            Ok(Some(Member {
                name: format!("o/{index}"),
                data,
                pax: Vec::new(),
                index: None,
            }))
        }

        fn last(&mut self) -> Vec<Member> {
            Vec::new()
        }
    }

    fn content(i: usize) -> Vec<u8> {
        vec![(i % 251) as u8; 1000 + i % 100]
    }

    /// The body of a request-order bundle of objects `o/0..n`, frame by frame.
    async fn body(n: usize, fail_at: Option<usize>) -> Vec<std::io::Result<Bytes>> {
        let store = MemoryStore::new();
        for i in 0..n {
            store.insert(format!("o/{i}"), content(i));
        }
        let store: Arc<dyn Store> = Arc::new(store);
        let fetches = (0..n)
            .map(|i| Fetch {
                store: store.clone(),
                request: Request::whole(format!("o/{i}")),
            })
            .collect();
        let stats = Arc::new(FetchStats::default());
        let answers = Fetcher::new(fetches, Window::default(), true, stats.clone());
        let context = BodyContext {
            permit: None,
            deadline: Instant::now() + std::time::Duration::from_secs(60),
            stats,
        };
        archive_stream(answers, ArchiveWriter::tar(), Named { fail_at }, context)
            .collect()
            .await
    }

    /// The members of a tar body, checked against `content`.
    fn check_members(body: &[u8]) -> usize {
        let mut archive = tar::Archive::new(body);
        let mut count = 0;
        for (i, entry) in archive.entries().unwrap().enumerate() {
            let mut entry = entry.unwrap();
            assert_eq!(
                entry.path().unwrap().to_str(),
                Some(format!("o/{i}").as_str())
            );
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            assert_eq!(data, content(i));
            count += 1;
        }
        count
    }

    /// A member that fails cuts the body after the members before it, which all arrive,
    /// though they were ready in the same poll as the failure.
    #[tokio::test(flavor = "current_thread")]
    async fn a_failure_cuts_the_body_after_the_members_before_it() {
        let mut items = body(100, Some(50)).await;
        let last = items.pop().unwrap();
        assert!(last.unwrap_err().to_string().contains("member 50 fails"));
        let body: Vec<u8> = items
            .into_iter()
            .map(|f| f.unwrap())
            .collect::<Vec<_>>()
            .concat();
        assert_eq!(check_members(&body), 50);
    }

    /// Members that are ready together leave together: a few large frames, not three
    /// frames per member; and the frames are a valid tar of every member, in order.
    #[tokio::test(flavor = "current_thread")]
    async fn ready_members_share_frames() {
        const N: usize = 2_000;
        let frames: Vec<Bytes> = body(N, None)
            .await
            .into_iter()
            .map(|frame| frame.unwrap())
            .collect();
        let total: usize = frames.iter().map(Bytes::len).sum();
        // About 3 MB of tar: at least 12 frames of 256 KiB; one per answer handed over
        // together (the backing store answers in batches) at most, never 3 per member.
        assert!(
            frames.len() < N / 8,
            "{} frames for {N} members",
            frames.len()
        );
        assert!(
            frames
                .iter()
                .all(|f| f.len() < Frames::FRAME_BYTES + Frames::SHARE_BYTES),
            "a frame over the bound"
        );
        let body: Vec<u8> = frames.concat();
        assert_eq!(body.len(), total);
        assert_eq!(check_members(&body), N);
    }
}
