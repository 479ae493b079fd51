//! A TCP delay proxy: every byte crosses it `rtt / 2` late in each direction, so any client
//! (ours, zarr-python, tensorstore) sees the same round trip to the server behind it.
//!
//! Thread per direction of each connection, with `std::thread::sleep` (precise to well under
//! a millisecond on Linux; tokio's timer would round each hop up to a whole millisecond).
//! A reader thread timestamps what it reads; a writer thread sends each piece once its delay
//! has passed, so a long response streams at full speed, only shifted in time.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// A running proxy; it lives as long as the process (benchmarks only).
pub struct DelayProxy {
    addr: SocketAddr,
}

impl DelayProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `upstream`, each direction
    /// delayed by `rtt / 2`.
    pub fn start(upstream: SocketAddr, rtt: Duration) -> std::io::Result<DelayProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let one_way = rtt / 2;
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
                        pump(client, s2, one_way);
                        pump(server, c2, one_way);
                    }
                }
            })?;
        Ok(DelayProxy { addr })
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Copies `from` to `to`, each piece `delay` after it was read.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let _ = thread::Builder::new()
        .name("delay-proxy-read".into())
        .spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx
                            .send((Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                        {
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
            }
            let _ = to.shutdown(Shutdown::Write);
        });
}
