//! A TCP delay proxy: every byte crosses it `rtt / 2` late in each direction, so any client
//! (ours, zarr-python, tensorstore) sees the same round trip to the server behind it; with a
//! bandwidth, each direction is also a link of that many bytes per second shared by all the
//! proxy's connections.
//!
//! Thread per direction of each connection, with `std::thread::sleep` (precise to well under
//! a millisecond on Linux; tokio's timer would round each hop up to a whole millisecond).
//! A reader thread timestamps what it reads; a writer thread sends each piece once its delay
//! has passed, so a long response streams at full speed (or at the link's pace), only
//! shifted in time.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// Pieces queued per direction of a connection (of up to 256 KiB each): beyond this the
/// reader stops reading, and TCP pushes back on the sender.
const QUEUED_PIECES: usize = 64;

/// A running proxy; it lives as long as the process (benchmarks only).
pub struct DelayProxy {
    addr: SocketAddr,
    to_client: Arc<AtomicU64>,
}

/// One direction of the link: its one-way delay and, optionally, a bandwidth shared by
/// every connection.
#[derive(Debug)]
pub struct Link {
    one_way: Duration,
    bandwidth: Option<f64>,
    /// When the link has sent everything queued so far.
    busy_until: Mutex<Instant>,
}

impl Link {
    /// A direction delayed by `one_way`, paced at `bandwidth` bytes per second if set.
    pub fn new(one_way: Duration, bandwidth: Option<f64>) -> Link {
        Link {
            one_way,
            bandwidth,
            busy_until: Mutex::new(Instant::now()),
        }
    }

    /// When `len` bytes read at `read_at` arrive at the far end: after every byte queued
    /// before them has been sent, their own transmission, and the one-way delay.
    pub fn due(&self, len: usize, read_at: Instant) -> Instant {
        let Some(bandwidth) = self.bandwidth else {
            return read_at + self.one_way;
        };
        let mut busy = self.busy_until.lock().unwrap_or_else(|e| e.into_inner());
        let start = (*busy).max(read_at);
        *busy = start + Duration::from_secs_f64(len as f64 / bandwidth);
        *busy + self.one_way
    }
}

impl DelayProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `upstream`, each direction
    /// delayed by `rtt / 2`.
    pub fn start(upstream: SocketAddr, rtt: Duration) -> std::io::Result<DelayProxy> {
        Self::start_with(upstream, rtt, None)
    }

    /// As [`start`](Self::start), each direction also a link of `bandwidth` bytes per
    /// second shared by all connections (`None`: unlimited).
    pub fn start_with(
        upstream: SocketAddr,
        rtt: Duration,
        bandwidth: Option<f64>,
    ) -> std::io::Result<DelayProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let up = Arc::new(Link::new(rtt / 2, bandwidth));
        let down = Arc::new(Link::new(rtt / 2, bandwidth));
        let to_client = Arc::new(AtomicU64::new(0));
        let counter = to_client.clone();
        thread::Builder::new()
            .name("delay-proxy-accept".into())
            .spawn(move || {
                for client in listener.incoming().flatten() {
                    let Ok(server) = TcpStream::connect(upstream) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
                        pump(client, s2, up.clone(), None);
                        pump(server, c2, down.clone(), Some(counter.clone()));
                    }
                }
            })?;
        Ok(DelayProxy { addr, to_client })
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Bytes forwarded from the server to clients so far.
    #[allow(dead_code)] // used by some commands only
    pub fn bytes_to_client(&self) -> u64 {
        self.to_client.load(Ordering::Relaxed)
    }
}

/// Copies `from` to `to`, each piece delivered when `link` says it arrives.
fn pump(mut from: TcpStream, mut to: TcpStream, link: Arc<Link>, count: Option<Arc<AtomicU64>>) {
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(QUEUED_PIECES);
    let _ = thread::Builder::new()
        .name("delay-proxy-read".into())
        .spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let due = link.due(n, Instant::now());
                        if tx.send((due, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                }
            }
            // Dropping `tx` ends the writer once it has sent everything.
        });
    let _ = thread::Builder::new()
        .name("delay-proxy-write".into())
        .spawn(move || {
            for (due, data) in rx {
                let now = Instant::now();
                if due > now {
                    thread::sleep(due - now);
                }
                if to.write_all(&data).is_err() {
                    break;
                }
                if let Some(count) = &count {
                    count.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_queues_pieces_behind_each_other_and_adds_the_delay() {
        let ms = Duration::from_millis;
        let link = Link::new(ms(5), Some(1e6)); // 1,000 bytes per ms
        // Later than the link's creation, so the link is idle then.
        let t0 = Instant::now() + ms(1);
        assert_eq!(link.due(1000, t0), t0 + ms(1) + ms(5));
        // Read at the same time: waits for the first piece.
        assert_eq!(link.due(2000, t0), t0 + ms(3) + ms(5));
        // Read after the link went idle: starts when read.
        assert_eq!(link.due(1000, t0 + ms(10)), t0 + ms(11) + ms(5));
        let unlimited = Link::new(ms(5), None);
        assert_eq!(unlimited.due(1 << 30, t0), t0 + ms(5));
    }

    #[test]
    fn bytes_cross_the_proxy_unchanged_in_both_directions() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = server.local_addr().unwrap();
        let echo = thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(&got).unwrap();
        });
        let proxy = DelayProxy::start_with(upstream, Duration::from_millis(2), Some(1e9)).unwrap();
        let mut client = TcpStream::connect(proxy.addr).unwrap();
        let sent: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        client.write_all(&sent).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).unwrap();
        echo.join().unwrap();
        assert!(back == sent, "the echo came back changed");
        assert_eq!(proxy.bytes_to_client(), sent.len() as u64);
    }
}
