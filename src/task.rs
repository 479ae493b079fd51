//! Reads run as tasks of the caller's tokio runtime.
//!
//! A read polled only from inside a `get_many` stream makes progress only while the consumer
//! polls that stream. A consumer that pauses (to await another `get_many` of the same store,
//! say) would then leave budget permits held by reads that cannot finish: with every permit
//! so held, the inner call waits forever. Spawned, a read runs to completion on its own, frees
//! its permit, and leaves its answer in the task's handle. Spawning also spreads the client
//! work of many reads (signing, request building, body collection) over the runtime's worker
//! threads instead of the one thread polling the stream.
//!
//! Dropping the handle aborts the task, so dropping the stream still cancels the read.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::Either;
use tokio::task::JoinHandle;

/// Runs `read` as a task of the current tokio runtime, or inline when there is none (an
/// executor other than tokio's): either way the result is the same.
///
/// The budgets the caller holds travel with the task ([`crate::limit::carry_held`]), so a
/// nested read of a budget the caller already holds still takes no second permit.
pub(crate) fn spawn_read<F>(read: F) -> impl Future<Output = F::Output> + Send
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let read = crate::limit::carry_held(read);
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => Either::Left(AbortOnDrop(runtime.spawn(read))),
        Err(_) => Either::Right(read),
    }
}

/// A task handle that aborts its task when dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.0.poll_unpin(cx) {
            Poll::Ready(Ok(value)) => Poll::Ready(value),
            // The read panicked: panic here too, as an inline read would have.
            Poll::Ready(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: only the runtime shutting down aborts a task we still hold, and
            // then nothing is left to poll this future either.
            Poll::Ready(Err(_)) => Poll::Pending,
            Poll::Pending => Poll::Pending,
        }
    }
}
