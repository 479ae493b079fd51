//! The connection core every HTTP server of the crate runs on (features `server` and
//! `s3-server`): the accept loop, a cap on open connections, and the time limits that keep
//! one client from holding a connection, a file descriptor or a response forever.
//!
//! [`HttpServer::start`] serves a request handler on a listener. Each connection gets
//! `TCP_NODELAY` (without it every small response waits for the peer's delayed ACK, ~40 ms)
//! and its own task, served by hyper (HTTP/1.1 or HTTP/2, detected). Every connection is held
//! to [`ConnectionLimits`]:
//!
//! * **Open connections** are capped: one accepted past the cap is closed at once, so file
//!   descriptors stay bounded whatever clients do.
//! * **Idle:** a connection with no request in progress is closed when it has not started its
//!   next request within [`idle_timeout`](ConnectionLimits::idle_timeout), and its first one
//!   within [`header_read_timeout`](ConnectionLimits::header_read_timeout), counted from the
//!   accept. Bytes that trickle in do not extend either limit: only a complete request head
//!   does. (hyper's own header timeout starts at the first byte when the protocol is detected,
//!   so a socket that never sends one would otherwise stay open.)
//! * **Request time:** a request, its response body included, is cut after
//!   [`request_timeout`](ConnectionLimits::request_timeout), whether or not the client is
//!   reading.
//! * **Stalled readers:** a response that has handed a body frame to the connection and is
//!   not asked for the next one, while not a byte leaves for the socket, for
//!   [`stall_timeout`](ConnectionLimits::stall_timeout) (the client stopped reading, so the
//!   socket or the HTTP/2 window is full) is cut. A slow reader that keeps taking bytes is
//!   bounded by the request timeout instead.
//!
//! Cutting a connection drops its response bodies, which frees whatever they hold (a bundle's
//! admission permit, its reads). A watchdog per connection checks these deadlines a few times
//! per shortest limit, so a limit is enforced within a quarter of it.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use getmany::conn::{ConnectionLimits, HttpServer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = HttpServer::start(listener, ConnectionLimits::default(), |_req| async {
//!     Ok::<_, Infallible>(hyper::Response::new(String::from("hello")))
//! })?;
//! println!("serving on {}", server.local_addr());
//! assert_eq!(server.stats().open(), 0);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{Either, select};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// An error a handler or a body may return to hyper.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The limits every connection of an [`HttpServer`] is held to. [`Default`] gives the
/// documented values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; one accepted past it is closed at once (1,024).
    pub max_connections: usize,
    /// The longest a new connection may take to send its first request head, counted from
    /// the accept; also hyper's limit on reading any HTTP/1 request head (30 s).
    pub header_read_timeout: Duration,
    /// The longest a connection may stay open with no request in progress between two
    /// requests (30 s).
    pub idle_timeout: Duration,
    /// The longest one request may take, its response body included (15 minutes).
    pub request_timeout: Duration,
    /// The longest a response may wait for the client to take its next body frame (30 s).
    pub stall_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(15 * 60),
            stall_timeout: Duration::from_secs(30),
        }
    }
}

impl ConnectionLimits {
    /// How often a connection's watchdog looks at its deadlines: a quarter of the shortest
    /// limit, so each is enforced within 125% of itself.
    fn tick(&self) -> Duration {
        let shortest = [
            self.header_read_timeout,
            self.idle_timeout,
            self.request_timeout,
            self.stall_timeout,
        ]
        .into_iter()
        .min()
        .unwrap_or(Duration::from_secs(1));
        (shortest / 4).max(Duration::from_millis(1))
    }
}

/// Counters of an [`HttpServer`]'s connections.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    accepted: AtomicU64,
    refused: AtomicU64,
    open: AtomicUsize,
    peak_open: AtomicUsize,
    closed_idle: AtomicU64,
    closed_overtime: AtomicU64,
    closed_stalled: AtomicU64,
}

impl ConnectionStats {
    /// Connections accepted and served.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections closed at once because [`ConnectionLimits::max_connections`] were open.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The most connections that were open at once.
    pub fn peak_open(&self) -> usize {
        self.peak_open.load(Ordering::Relaxed)
    }

    /// Connections closed for sending no request within the header or idle timeout.
    pub fn closed_idle(&self) -> u64 {
        self.closed_idle.load(Ordering::Relaxed)
    }

    /// Connections closed because a request ran past the request timeout.
    pub fn closed_overtime(&self) -> u64 {
        self.closed_overtime.load(Ordering::Relaxed)
    }

    /// Connections closed because a client stopped reading its response.
    pub fn closed_stalled(&self) -> u64 {
        self.closed_stalled.load(Ordering::Relaxed)
    }
}

/// An HTTP server: an accept loop serving one handler under [`ConnectionLimits`]. Dropping
/// it stops accepting at once; open connections finish the request in flight (within the
/// limits), then close.
pub struct HttpServer {
    addr: SocketAddr,
    stats: Arc<ConnectionStats>,
    accept_task: JoinHandle<()>,
    shutdown: watch::Sender<bool>,
}

impl HttpServer {
    /// Serves `handler` on `listener`, on the current tokio runtime (which needs its I/O and
    /// time drivers).
    ///
    /// A handler's `Err` makes hyper close that connection.
    ///
    /// # Errors
    ///
    /// The listener's address cannot be read.
    pub fn start<F, Fut, B, E>(
        listener: TcpListener,
        limits: ConnectionLimits,
        handler: F,
    ) -> std::io::Result<HttpServer>
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        E: Into<BoxError> + 'static,
    {
        let addr = listener.local_addr()?;
        let stats = Arc::new(ConnectionStats::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let accept_task = tokio::spawn(accept_loop(
            listener,
            limits,
            handler,
            stats.clone(),
            shutdown_rx,
        ));
        Ok(HttpServer {
            addr,
            stats,
            accept_task,
            shutdown,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The connection counters.
    pub fn stats(&self) -> &ConnectionStats {
        &self.stats
    }

    /// A shared handle on the connection counters.
    pub fn stats_handle(&self) -> Arc<ConnectionStats> {
        self.stats.clone()
    }
}

impl fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.shutdown.send_replace(true);
    }
}

async fn accept_loop<F, Fut, B, E>(
    listener: TcpListener,
    limits: ConnectionLimits,
    handler: F,
    stats: Arc<ConnectionStats>,
    shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    E: Into<BoxError> + 'static,
{
    let mut builder = ConnBuilder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _peer)) => socket,
            // Out of file descriptors, say: back off instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(socket);
            continue;
        };
        if socket.set_nodelay(true).is_err() {
            continue;
        }
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let open = stats.open.fetch_add(1, Ordering::Relaxed) + 1;
        stats.peak_open.fetch_max(open, Ordering::Relaxed);

        let state = Arc::new(ConnState::new());
        let service = {
            let state = state.clone();
            let handler = handler.clone();
            service_fn(move |req| {
                let guard = state.begin();
                let response = handler(req);
                async move {
                    let response = response.await?;
                    Ok::<_, E>(response.map(|body| GuardedBody { body, guard }))
                }
            })
        };
        let builder = builder.clone();
        let mut shutdown = shutdown.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let io = TokioIo::new(Tracked {
                socket,
                state: state.clone(),
            });
            let mut conn = pin!(builder.serve_connection(io, service));
            let watchdog = pin!(state.watch(limits, &stats));
            let stop = pin!(async move {
                // `wait_for` holds a lock guard in its answer: keep only the fact.
                let _ = shutdown.wait_for(|&stop| stop).await;
            });
            // Ends when the connection does, when a limit is crossed (dropping the connection
            // closes the socket and drops its response bodies), or when the server stops.
            let stopping = matches!(
                select(conn.as_mut(), select(watchdog, stop)).await,
                Either::Right((Either::Right(_), _))
            );
            if stopping {
                conn.as_mut().graceful_shutdown();
                // A connection error concerns only this connection's peer; the watchdog still
                // bounds the request in flight.
                let watchdog = pin!(state.watch(limits, &stats));
                let _ = select(conn, watchdog).await;
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// The requests in progress on one connection, for its watchdog.
struct ConnState {
    inner: Mutex<ConnTimes>,
    /// When the connection was accepted: the origin of `last_write`.
    epoch: Instant,
    /// Milliseconds from `epoch` to the last write that made progress on the socket.
    last_write: AtomicU64,
}

struct ConnTimes {
    /// When the connection last had no request in progress (the accept at first).
    idle_since: Instant,
    /// Whether a request has been received yet.
    served_one: bool,
    next_id: u64,
    /// Requests in progress: when each started, and since when its response has been waiting
    /// for the client to take a frame.
    requests: HashMap<u64, RequestTimes>,
}

struct RequestTimes {
    started: Instant,
    waiting_since: Option<Instant>,
}

/// Why a watchdog closed its connection.
enum Closed {
    Idle,
    Overtime,
    Stalled,
}

impl ConnState {
    fn new() -> Self {
        let now = Instant::now();
        ConnState {
            inner: Mutex::new(ConnTimes {
                idle_since: now,
                served_one: false,
                next_id: 0,
                requests: HashMap::new(),
            }),
            epoch: now,
            last_write: AtomicU64::new(0),
        }
    }

    fn wrote(&self) {
        let elapsed = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_write.fetch_max(elapsed, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnTimes> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn begin(self: &Arc<Self>) -> RequestGuard {
        let mut times = self.lock();
        let id = times.next_id;
        times.next_id += 1;
        times.served_one = true;
        times.requests.insert(
            id,
            RequestTimes {
                started: Instant::now(),
                waiting_since: None,
            },
        );
        RequestGuard {
            state: self.clone(),
            id,
        }
    }

    /// The first limit this connection crosses, checked every tick.
    fn check(&self, limits: &ConnectionLimits, now: Instant) -> Option<Closed> {
        let last_write =
            self.epoch + Duration::from_millis(self.last_write.load(Ordering::Relaxed));
        let times = self.lock();
        if times.requests.is_empty() {
            let limit = if times.served_one {
                limits.idle_timeout
            } else {
                limits.header_read_timeout
            };
            return (now.duration_since(times.idle_since) >= limit).then_some(Closed::Idle);
        }
        for request in times.requests.values() {
            if now.duration_since(request.started) >= limits.request_timeout {
                return Some(Closed::Overtime);
            }
            // Waiting for the client to take a frame, and no byte left for the socket since:
            // a slow but steady reader of one large frame keeps writing, so it is not stalled.
            if request.waiting_since.is_some_and(|since| {
                now.duration_since(since.max(last_write)) >= limits.stall_timeout
            }) {
                return Some(Closed::Stalled);
            }
        }
        None
    }

    /// Resolves when a limit is crossed.
    async fn watch(&self, limits: ConnectionLimits, stats: &ConnectionStats) {
        let mut ticks = tokio::time::interval(limits.tick());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = ticks.tick().await;
            let counter = match self.check(&limits, now) {
                None => continue,
                Some(Closed::Idle) => &stats.closed_idle,
                Some(Closed::Overtime) => &stats.closed_overtime,
                Some(Closed::Stalled) => &stats.closed_stalled,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
}

/// The socket, noting each write that makes progress.
struct Tracked {
    socket: TcpStream,
    state: Arc<ConnState>,
}

impl Tracked {
    fn note(&self, written: &Poll<std::io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.state.wrote();
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.socket).poll_write(cx, buf);
        this.note(&written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.socket).poll_write_vectored(cx, bufs);
        this.note(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}

/// A request in progress; dropped with its response body (or its handler, if it fails).
struct RequestGuard {
    state: Arc<ConnState>,
    id: u64,
}

impl RequestGuard {
    fn set_waiting(&self, waiting: bool) {
        let mut times = self.state.lock();
        if let Some(request) = times.requests.get_mut(&self.id) {
            request.waiting_since = waiting.then(Instant::now);
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut times = self.state.lock();
        times.requests.remove(&self.id);
        if times.requests.is_empty() {
            times.idle_since = Instant::now();
        }
    }
}

/// A response body that tells the watchdog whether the client is taking its frames.
struct GuardedBody<B> {
    body: B,
    guard: RequestGuard,
}

impl<B: Body + Unpin> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        // A frame handed out: the client owes us the next poll. Pending: we owe it data,
        // which the request timeout bounds.
        this.guard
            .set_waiting(matches!(polled, Poll::Ready(Some(Ok(_)))));
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
