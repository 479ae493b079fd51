//! A round trip without a proxy: an `ObjectStore` whose every call is answered a fixed time
//! late, timed by one thread with the OS's precise sleep (`bench-bundle --s3-delay server`).
//!
//! For request/response traffic this is the same timing as a link of that round trip: the
//! answer's first byte leaves one round trip after the request arrived. It costs one queue
//! entry and one wake-up per call, where a TCP delay proxy costs two extra copies of every
//! byte and four thread hand-offs per exchange, CPU that on this machine comes out of the
//! two cores the client and servers share (a real network's costs them nothing).

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::channel::oneshot;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// Calls waiting for their time, in the order they are due (the delay is fixed, so the
/// order they came in), served by one thread. Also times `async_proxy`'s pieces.
pub struct Timer {
    delay: Duration,
    queue: Mutex<VecDeque<(Instant, oneshot::Sender<()>)>>,
    /// Signalled when the queue stops being empty.
    filled: Condvar,
}

impl Timer {
    /// A timer of `delay`, with its thread.
    pub fn start(delay: Duration) -> Arc<Timer> {
        let timer = Arc::new(Timer {
            delay,
            queue: Mutex::new(VecDeque::new()),
            filled: Condvar::new(),
        });
        let serving = Arc::downgrade(&timer);
        let _ = std::thread::Builder::new()
            .name("late-timer".into())
            .spawn(move || {
                // Ends once the store (and so the timer) is gone.
                while let Some(timer) = serving.upgrade() {
                    if !timer.serve_due() {
                        return;
                    }
                }
            });
        timer
    }

    /// Wakes the calls that are due and sleeps until the next one (or until one comes, for
    /// at most a second). `false` once the queue's lock is unusable.
    fn serve_due(&self) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        while queue.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, waiting)) = queue.pop_front() {
                let _ = waiting.send(());
            }
        }
        match queue.front() {
            Some((due, _)) => {
                let wait = *due - now;
                drop(queue);
                std::thread::sleep(wait);
            }
            None => {
                let _ = self
                    .filled
                    .wait_timeout(queue, Duration::from_secs(1))
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
        true
    }

    /// Resolves `delay` from now.
    async fn wait(&self) {
        let _ = self.after_delay().await;
    }

    /// A receiver that resolves `delay` from now (counted from this call, not from the
    /// first poll).
    pub fn after_delay(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.push_back((Instant::now() + self.delay, tx));
        if queue.len() == 1 {
            self.filled.notify_one();
        }
        rx
    }
}

/// `inner`, each call answered `delay` late.
pub struct Late {
    inner: Arc<dyn ObjectStore>,
    timer: Arc<Timer>,
}

impl Late {
    pub fn new(inner: Arc<dyn ObjectStore>, delay: Duration) -> Late {
        Late {
            inner,
            timer: Timer::start(delay),
        }
    }
}

impl fmt::Debug for Late {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Late({:?}, {:?})", self.inner, self.timer.delay)
    }
}

impl fmt::Display for Late {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Late({}, {:?})", self.inner, self.timer.delay)
    }
}

#[async_trait]
impl ObjectStore for Late {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.timer.wait().await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.timer.wait().await;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.timer.wait().await;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.timer.wait().await;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let timer = self.timer.clone();
        let inner = self.inner.list(prefix);
        futures::stream::once(async move { timer.wait().await })
            .flat_map(move |()| futures::stream::empty())
            .chain(inner)
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.timer.wait().await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.timer.wait().await;
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_at_once_are_each_answered_one_delay_late() {
        let inner = Arc::new(InMemory::new());
        let key = Path::from("a");
        inner
            .put(&key, PutPayload::from_static(b"x"))
            .await
            .unwrap();
        let delay = Duration::from_millis(30);
        let late = Late::new(inner, delay);
        let started = Instant::now();
        let gets = (0..10).map(|_| async {
            let got = late.get(&key).await.unwrap().bytes().await.unwrap();
            (got, started.elapsed())
        });
        for (got, elapsed) in futures::future::join_all(gets).await {
            assert_eq!(&got[..], b"x");
            assert!(elapsed >= delay, "answered after {elapsed:?}");
            // Together, not one after another (10 x 30 ms).
            assert!(elapsed < delay * 5, "answered after {elapsed:?}");
        }
    }
}
