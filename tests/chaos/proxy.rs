//! A user-space TCP fault proxy on loopback, owned by the test.
//!
//! Each node advertises proxy addresses (`--advertise-haddr`, `--advertise-raddr`) instead of
//! the ones it binds; the proxy listens there and forwards to the bound ones. Every node dials
//! its peers from its own loopback IP (`--source-ip 127.x.y.z`), so the proxy tells links apart
//! by the connecting socket's source IP: a connection arriving at destination node `d`'s
//! listener from node `s`'s IP belongs to link `s → d`. Connections from any other address (the
//! test's own clients) are never faulted.
//!
//! Faults are per directed link and govern the connections the source opens to the
//! destination (both byte directions of those connections, since a request and its answer
//! travel on the same connection). Setting a fault affects existing connections at once: every
//! connection task watches its link and re-checks before moving each chunk.
//! - `Pass`: forward.
//! - `Blackhole`: accept, then move no bytes (held in kernel buffers) until the link changes —
//!   a partition; data held back is delivered after healing, like TCP retransmission would.
//! - `Reset`: RST every connection on the link, and every new one.
//! - `Delay(d)`: each chunk waits `d` before being forwarded.
//! - `Drop(p)`: each new connection is reset at once with probability p %.
//!
//! Nothing here ever touches an address outside 127.0.0.0/8.

#![allow(dead_code)] // some knobs are only used by some tests

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::rng::Rng;

/// Bytes moved per read.
const CHUNK_BYTES: usize = 16 * 1024;
/// Bound on connecting to the real (upstream) address.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkFault {
    Pass,
    Blackhole,
    Reset,
    Delay(Duration),
    /// Percentage of new connections reset at once.
    Drop(u8),
}

/// A listener of the proxy: where it listens and where it forwards to (settable later, since
/// a node's real port is only known when it starts).
#[derive(Clone)]
pub struct ProxyPort {
    pub listen: SocketAddr,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
}

impl ProxyPort {
    pub fn set_upstream(&self, to: SocketAddr) {
        *lock(&self.upstream) = Some(to);
    }
}

struct Shared {
    /// Source IP → node index.
    sources: Mutex<HashMap<IpAddr, usize>>,
    /// (source node, destination node) → current fault.
    links: Mutex<HashMap<(usize, usize), watch::Sender<LinkFault>>>,
    /// The link of connections from unknown sources: always `Pass`.
    external: watch::Sender<LinkFault>,
    rng: Mutex<Rng>,
}

impl Shared {
    fn link(&self, src: usize, dst: usize) -> watch::Receiver<LinkFault> {
        lock(&self.links)
            .entry((src, dst))
            .or_insert_with(|| watch::channel(LinkFault::Pass).0)
            .subscribe()
    }

    fn roll(&self, percent: u8) -> bool {
        lock(&self.rng).percent(u64::from(percent))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The proxy: its own small tokio runtime, shut down (all connections dropped) on Drop.
pub struct Proxy {
    rt: Option<Runtime>,
    shared: Arc<Shared>,
}

impl Proxy {
    /// `seed` drives the `Drop` fault's coin flips.
    pub fn new(seed: u64) -> Proxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("chaos-proxy")
            .enable_all()
            .build()
            .expect("build proxy runtime");
        let shared = Arc::new(Shared {
            sources: Mutex::default(),
            links: Mutex::default(),
            external: watch::channel(LinkFault::Pass).0,
            rng: Mutex::new(Rng::new(seed)),
        });
        Proxy {
            rt: Some(rt),
            shared,
        }
    }

    fn rt(&self) -> &Runtime {
        self.rt.as_ref().expect("runtime")
    }

    /// Connections from `ip` belong to node `node`.
    pub fn add_source(&self, ip: IpAddr, node: usize) {
        lock(&self.shared.sources).insert(ip, node);
    }

    /// Listens on `ip` (a free port) for connections to node `dst`.
    pub fn listen(&self, dst: usize, ip: IpAddr) -> io::Result<ProxyPort> {
        let listener = self
            .rt()
            .block_on(TcpListener::bind(SocketAddr::new(ip, 0)))?;
        let port = ProxyPort {
            listen: listener.local_addr()?,
            upstream: Arc::default(),
        };
        let shared = Arc::clone(&self.shared);
        let upstream = Arc::clone(&port.upstream);
        self.rt()
            .spawn(accept_loop(listener, dst, upstream, shared));
        Ok(port)
    }

    /// Sets the fault of link `src → dst` (existing connections included).
    pub fn set(&self, src: usize, dst: usize, fault: LinkFault) {
        let mut links = lock(&self.shared.links);
        let tx = links
            .entry((src, dst))
            .or_insert_with(|| watch::channel(LinkFault::Pass).0);
        tx.send_replace(fault);
    }

    /// Both directions between `a` and `b`.
    pub fn set_both(&self, a: usize, b: usize, fault: LinkFault) {
        self.set(a, b, fault);
        self.set(b, a, fault);
    }

    /// Every link back to `Pass`.
    pub fn heal(&self) {
        for tx in lock(&self.shared.links).values() {
            tx.send_replace(LinkFault::Pass);
        }
    }

    /// The links currently faulted, for logs.
    pub fn faults(&self) -> Vec<((usize, usize), LinkFault)> {
        let mut v: Vec<_> = lock(&self.shared.links)
            .iter()
            .map(|(k, tx)| (*k, *tx.borrow()))
            .filter(|(_, f)| *f != LinkFault::Pass)
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    dst: usize,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    shared: Arc<Shared>,
) {
    loop {
        match listener.accept().await {
            Ok((sock, peer)) => {
                let src = lock(&shared.sources).get(&peer.ip()).copied();
                let rx = match src {
                    Some(s) => shared.link(s, dst),
                    None => shared.external.subscribe(),
                };
                let to = *lock(&upstream);
                let shared = Arc::clone(&shared);
                tokio::spawn(serve(sock, to, rx, shared));
            }
            // E.g. out of file descriptors: back off, never spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Closes with RST instead of FIN.
fn reset(sock: TcpStream) {
    let _ = sock.set_zero_linger();
    drop(sock);
}

async fn serve(
    client: TcpStream,
    to: Option<SocketAddr>,
    mut rx: watch::Receiver<LinkFault>,
    shared: Arc<Shared>,
) {
    // Admission of a new connection.
    loop {
        let fault = *rx.borrow_and_update();
        match fault {
            LinkFault::Reset => return reset(client),
            LinkFault::Drop(p) if shared.roll(p) => return reset(client),
            LinkFault::Blackhole => {
                if rx.changed().await.is_err() {
                    return reset(client);
                }
            }
            _ => break,
        }
    }
    let Some(to) = to else { return reset(client) };
    let upstream =
        match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(to)).await {
            Ok(Ok(s)) => s,
            _ => return reset(client),
        };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    pump(client, upstream, rx).await;
}

/// Moves bytes both ways until both sides closed, obeying the link's fault before each chunk.
async fn pump(mut a: TcpStream, mut b: TcpStream, mut rx: watch::Receiver<LinkFault>) {
    let mut buf_a = vec![0u8; CHUNK_BYTES];
    let mut buf_b = vec![0u8; CHUNK_BYTES];
    let (mut a_open, mut b_open) = (true, true);
    while a_open || b_open {
        let fault = *rx.borrow_and_update();
        match fault {
            LinkFault::Reset => {
                reset(a);
                reset(b);
                return;
            }
            LinkFault::Blackhole => {
                if rx.changed().await.is_err() {
                    return;
                }
                continue;
            }
            _ => {}
        }
        tokio::select! {
            r = a.read(&mut buf_a), if a_open => match r {
                Ok(0) => {
                    a_open = false;
                    let _ = b.shutdown().await;
                }
                Ok(n) => {
                    if !deliver(&mut b, &buf_a[..n], &mut rx).await {
                        reset(a);
                        reset(b);
                        return;
                    }
                }
                Err(_) => {
                    reset(a);
                    reset(b);
                    return;
                }
            },
            r = b.read(&mut buf_b), if b_open => match r {
                Ok(0) => {
                    b_open = false;
                    let _ = a.shutdown().await;
                }
                Ok(n) => {
                    if !deliver(&mut a, &buf_b[..n], &mut rx).await {
                        reset(a);
                        reset(b);
                        return;
                    }
                }
                Err(_) => {
                    reset(a);
                    reset(b);
                    return;
                }
            },
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes one chunk once the link lets it through; `false` if the connection must be reset.
async fn deliver(out: &mut TcpStream, data: &[u8], rx: &mut watch::Receiver<LinkFault>) -> bool {
    loop {
        let fault = *rx.borrow_and_update();
        match fault {
            LinkFault::Reset => return false,
            LinkFault::Blackhole => {
                if rx.changed().await.is_err() {
                    return false;
                }
            }
            LinkFault::Delay(d) => {
                tokio::time::sleep(d).await;
                break;
            }
            LinkFault::Pass | LinkFault::Drop(_) => break,
        }
    }
    out.write_all(data).await.is_ok()
}

#[cfg(test)]
mod tests {
    //! The proxy on its own: an echo server upstream, clients dialling from chosen loopback IPs.

    use super::*;
    use std::io::{Read, Write};
    use std::time::Instant;

    /// An echo server on 127.0.0.1 (one thread per connection).
    fn echo_server() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind echo");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Connects to `to` from `from` (bind before connect) and hands back a std stream.
    fn dial(from: IpAddr, to: SocketAddr) -> io::Result<std::net::TcpStream> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let s = rt.block_on(async {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(SocketAddr::new(from, 0))?;
            sock.connect(to).await
        })?;
        let s = s.into_std()?;
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_millis(400)))?;
        Ok(s)
    }

    /// True if a new connection from `from` gets nowhere (reset at once, or no echo).
    fn dead_end(from: IpAddr, to: SocketAddr) -> bool {
        // The reset may surface at connect, at a socket option call, or at the first read.
        dial(from, to)
            .and_then(|mut c| roundtrip(&mut c, b"x"))
            .is_err()
    }

    fn roundtrip(s: &mut std::net::TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 97, last])
    }

    #[test]
    fn faults_apply_per_link_and_to_existing_connections() {
        let echo = echo_server();
        let proxy = Proxy::new(1);
        proxy.add_source(ip(1), 1);
        proxy.add_source(ip(2), 2);
        let port = proxy.listen(0, ip(10)).expect("listen");
        port.set_upstream(echo);

        // Pass.
        let mut c1 = dial(ip(1), port.listen).expect("dial");
        assert_eq!(roundtrip(&mut c1, b"hello").expect("echo"), b"hello");

        // Blackhole link 1→0: the existing connection stalls, link 2→0 still works.
        proxy.set(1, 0, LinkFault::Blackhole);
        assert!(
            roundtrip(&mut c1, b"held").is_err(),
            "blackholed bytes must not arrive"
        );
        let mut c2 = dial(ip(2), port.listen).expect("dial");
        assert_eq!(roundtrip(&mut c2, b"ok").expect("echo"), b"ok");
        // A new connection on the blackholed link is accepted but silent.
        assert!(dead_end(ip(1), port.listen));

        // Heal: held bytes are delivered (like TCP retransmission after a partition).
        proxy.heal();
        let mut got = vec![0u8; 4];
        c1.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        c1.read_exact(&mut got)
            .expect("held bytes delivered after heal");
        assert_eq!(&got, b"held");
        assert_eq!(roundtrip(&mut c1, b"again").expect("echo"), b"again");

        // Reset: the existing connection is torn down, new ones are refused.
        proxy.set(1, 0, LinkFault::Reset);
        std::thread::sleep(Duration::from_millis(100));
        let r = roundtrip(&mut c1, b"dead");
        assert!(r.is_err(), "reset connection still echoed: {r:?}");
        assert!(dead_end(ip(1), port.listen));
        assert_eq!(roundtrip(&mut c2, b"still").expect("other link"), b"still");

        // Delay: a roundtrip takes two delayed chunks.
        proxy.set(1, 0, LinkFault::Delay(Duration::from_millis(150)));
        let mut c1d = dial(ip(1), port.listen).expect("dial");
        c1d.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let t0 = Instant::now();
        assert_eq!(roundtrip(&mut c1d, b"slow").expect("echo"), b"slow");
        assert!(
            t0.elapsed() >= Duration::from_millis(280),
            "{:?}",
            t0.elapsed()
        );

        // Drop 100 %: every new connection is reset; 0 %: none.
        proxy.set(1, 0, LinkFault::Drop(100));
        assert!(dead_end(ip(1), port.listen));
        proxy.set(1, 0, LinkFault::Drop(0));
        let mut c1f = dial(ip(1), port.listen).expect("dial");
        assert_eq!(roundtrip(&mut c1f, b"y").expect("echo"), b"y");

        // Unknown sources (the test's clients) are never faulted.
        proxy.set(1, 0, LinkFault::Reset);
        let mut ext = dial(IpAddr::from([127, 0, 0, 1]), port.listen).expect("dial");
        assert_eq!(roundtrip(&mut ext, b"client").expect("echo"), b"client");
        assert_eq!(proxy.faults(), vec![((1, 0), LinkFault::Reset)]);
    }
}
