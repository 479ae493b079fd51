//! A `get_many` call's reads, driven by a task of the caller's tokio runtime.
//!
//! Reads polled only from inside a `get_many` stream progress only while the consumer polls
//! that stream. A consumer that pauses (to await another `get_many` of the same store, say)
//! would leave budget permits held by reads that cannot finish; with every permit so held,
//! the inner call waits forever. [`drive`] runs the reads on a task instead, and lets a read
//! start only once a slot for its answers is reserved in the channel to the consumer: a
//! started read always completes and frees its permit, paused consumer or not, and at most
//! `limit` reads' answers wait in the channel (the memory bound).
//!
//! One task per call, not one per read: the task polls all its reads together, as the stream
//! did. Measured with `getmany bench-archive` (951 ranged GETs of ~16 KiB per batch, 101
//! batches back to back): reads polled by the stream 61 ms a batch, a task per read 74 ms
//! (each read's wake-up scheduled on its own), one driving task per call 59 ms.
//!
//! Dropping the stream aborts the task, which cancels the reads.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Runs the futures of `reads`, at most `limit` at a time, each yielding a batch of answers,
/// and streams the answers in completion order.
///
/// Under a tokio runtime the reads run on a spawned task (see the module docs); without one
/// (another executor) they run inside the returned stream. Either way the answers are the
/// same. The budgets the caller holds travel with the task, so a nested read of a budget the
/// caller already holds still takes no second permit.
pub(crate) fn drive<S, Fut, T>(reads: S, limit: usize) -> BoxStream<'static, T>
where
    S: stream::Stream<Item = Fut> + Send + 'static,
    Fut: Future<Output = Vec<T>> + Send + 'static,
    T: Send + 'static,
{
    let limit = limit.max(1);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return reads.buffer_unordered(limit).flat_map(stream::iter).boxed();
    };
    let (slots, mut answers) = mpsc::channel::<Vec<T>>(limit);
    let driver = reads
        .map(move |read| {
            let slot = slots.clone().reserve_owned();
            async move {
                // The slot first, then the read: a read that has started can always deliver
                // its answers, so it never waits on the consumer while it holds a permit.
                // No slot means the consumer is gone: nothing to read for.
                match slot.await {
                    Ok(slot) => {
                        slot.send(read.await);
                        true
                    }
                    Err(_) => false,
                }
            }
        })
        .buffer_unordered(limit)
        // Once the consumer is gone, start nothing more: a read stream that makes its reads
        // as it goes (DirStore's batches) would otherwise spin on reads that end at once.
        .take_while(|&delivered| futures::future::ready(delivered))
        .for_each(|_| async {});
    let task = AbortOnDrop(runtime.spawn(crate::limit::carry_held(driver)));
    let delivered = stream::poll_fn(move |cx| answers.poll_recv(cx)).flat_map(stream::iter);
    // The channel closes when the task ends; the task's end says whether it ended well.
    let ended = stream::once(task).filter_map(|()| async { None });
    delivered.chain(ended).boxed()
}

/// A task handle that aborts its task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Future for AbortOnDrop {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.0.poll_unpin(cx) {
            // A read panicked: panic here too, as a read polled by the stream would have.
            Poll::Ready(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Done, or cancelled by the runtime shutting down (then nothing can be read).
            Poll::Ready(_) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}
