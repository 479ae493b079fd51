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

    fn fail(&mut self, error: std::io::Error) -> Poll<Option<std::io::Result<Bytes>>> {
        self.done = true;
        // What was written before the failure is dropped: the body is cut either way.
        self.frames = Frames::default();
        Poll::Ready(Some(Err(error)))
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
            if this.done {
                return Poll::Ready(None);
            }
            match this.answers.poll_next_unpin(cx) {
                Poll::Ready(Some((index, result))) => match this.assemble.member(index, result) {
                    Ok(Some(member)) => {
                        if let Err(e) = this.writer.member(member, &mut this.frames) {
                            return this.fail(e);
                        }
                    }
                    Ok(None) => {}
                    Err(why) => return this.fail(std::io::Error::other(why)),
                },
                Poll::Ready(None) => {
                    this.done = true;
                    if let Err(e) = this.finish() {
                        return this.fail(e);
                    }
                }
                Poll::Pending => {
                    // Nothing more is ready: what is written so far leaves now.
                    this.frames.cut();
                    if this.frames.has_ready() {
                        continue;
                    }
                    if this.deadline.as_mut().poll(cx).is_ready() {
                        return this.fail(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the bundle took longer than the server's time limit",
                        ));
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

    struct Named;

    impl Assemble for Named {
        fn member(
            &mut self,
            index: usize,
            result: Result<Option<Bytes>>,
        ) -> std::result::Result<Option<Member>, String> {
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

    /// Members that are ready together leave together: a few large frames, not three
    /// frames per member; and the frames are a valid tar of every member, in order.
    #[tokio::test(flavor = "current_thread")]
    async fn ready_members_share_frames() {
        const N: usize = 2_000;
        let store = MemoryStore::new();
        for i in 0..N {
            store.insert(format!("o/{i}"), vec![(i % 251) as u8; 1000 + i % 100]);
        }
        let store: Arc<dyn Store> = Arc::new(store);
        let fetches = (0..N)
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
        let frames: Vec<Bytes> = archive_stream(answers, ArchiveWriter::tar(), Named, context)
            .map(|frame| frame.unwrap())
            .collect()
            .await;
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
        let mut archive = tar::Archive::new(&body[..]);
        for (i, entry) in archive.entries().unwrap().enumerate() {
            let mut entry = entry.unwrap();
            assert_eq!(
                entry.path().unwrap().to_str(),
                Some(format!("o/{i}").as_str())
            );
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            assert_eq!(data, vec![(i % 251) as u8; 1000 + i % 100]);
        }
    }
}
