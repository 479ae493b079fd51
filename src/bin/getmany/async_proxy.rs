//! A TCP delay proxy without a thread per connection (`bench-bundle --proxy async`): every
//! connection is served by tasks of one tokio runtime on one thread of its own, and every
//! piece that crosses it is held until a [`Timer`] thread, which sleeps with the OS's
//! precise timer (tokio's rounds up to whole milliseconds), says it is due.
//!
//! The thread-per-connection proxy costs two threads per direction and connection and a
//! hand-off between them for every piece. In front of a server making thousands of small
//! GETs over hundreds of connections that was the largest user of CPU on the machine;
//! here a piece costs the same two copies (read, write) but no thread of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::late::Timer;

/// A running proxy; it lives as long as the process (benchmarks only).
pub struct AsyncDelayProxy {
    addr: SocketAddr,
    to_client: Arc<AtomicU64>,
}

impl AsyncDelayProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `upstream`, each
    /// direction delayed by `up` (to the server) and `down` (to the client).
    pub fn start(
        upstream: SocketAddr,
        up: Duration,
        down: Duration,
    ) -> std::io::Result<AsyncDelayProxy> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let to_client = Arc::new(AtomicU64::new(0));
        let counter = to_client.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let timer = |delay: Duration| (!delay.is_zero()).then(|| Timer::start(delay));
        let (up, down) = (timer(up), timer(down));
        std::thread::Builder::new()
            .name("delay-proxy".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    while let Ok((client, _)) = listener.accept().await {
                        let (up, down, counter) = (up.clone(), down.clone(), counter.clone());
                        tokio::spawn(async move {
                            let Ok(server) = TcpStream::connect(upstream).await else {
                                return;
                            };
                            let _ = client.set_nodelay(true);
                            let _ = server.set_nodelay(true);
                            let (client_read, client_write) = client.into_split();
                            let (server_read, server_write) = server.into_split();
                            tokio::spawn(forward(client_read, server_write, up, None));
                            tokio::spawn(forward(server_read, client_write, down, Some(counter)));
                        });
                    }
                });
            })?;
        Ok(AsyncDelayProxy { addr, to_client })
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Bytes forwarded from the server to clients so far.
    pub fn bytes_to_client(&self) -> u64 {
        self.to_client.load(Ordering::Relaxed)
    }
}

/// Copies `from` to `to`, each piece written once `timer` says it is due: a reader task
/// stamps what it reads, a writer task waits and writes, so a long response streams at
/// full speed, only shifted in time.
async fn forward(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    timer: Option<Arc<Timer>>,
    count: Option<Arc<AtomicU64>>,
) {
    let Some(timer) = timer else {
        // No delay this way: forward as it comes.
        let mut buf = vec![0u8; 256 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 || to.write_all(&buf[..n]).await.is_err() {
                break;
            }
            if let Some(count) = &count {
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        let _ = to.shutdown().await;
        return;
    };
    // Pieces of up to 256 KiB in flight; beyond 64 the reader waits, and TCP pushes back.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(_, Vec<u8>)>(64);
    let writer = tokio::spawn(async move {
        while let Some((due, piece)) = rx.recv().await {
            let _ = due.await;
            if to.write_all(&piece).await.is_err() {
                return;
            }
            if let Some(count) = &count {
                count.fetch_add(piece.len() as u64, Ordering::Relaxed);
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let due = timer.after_delay();
                if tx.send((due, buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
