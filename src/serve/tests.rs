//! The accept loop from outside, over real loopback sockets: the connection limit, the header,
//! idle and keep-alive timeouts, and links told apart from HTTP on one port.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use axum::Router;

use super::*;

/// Serves a one-route router with `limits` on a loopback port; returns its address and a
/// sender that stops it.
async fn start(limits: ServeLimits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    start_with(limits, None).await
}

async fn start_with(
    limits: ServeLimits,
    links: Option<LinkHandler>,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        "test",
        listener,
        router,
        None,
        links,
        limits,
        async move {
            let _ = rx.await;
        },
    ));
    (addr, tx)
}

/// Reads until the peer closes the connection; how long that took (None: still open at
/// `within`).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(t0 + within, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let limits = ServeLimits {
        connections_max: 2,
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
    };
    let (addr, _stop) = start(limits).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(GET).await.expect("write");
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "served");
        held.push(s);
    }
    let mut third = TcpStream::connect(addr).await.expect("connect");
    let closed = closed_within(&mut third, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "the third connection is closed");
    drop(held);
    // Permits come back: a new connection is served again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let _ = s.write_all(GET).await;
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await
            && buf[..n].starts_with(b"HTTP/1.1 200")
        {
            break;
        }
        assert!(Instant::now() < deadline, "permits were not returned");
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let limits = ServeLimits {
        connections_max: 8,
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(30),
    };
    let (addr, _stop) = start(limits).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let closed = closed_within(&mut s, Duration::from_secs(5))
        .await
        .expect("closed by the header timeout");
    assert!(
        closed >= Duration::from_millis(250),
        "not before: {closed:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let limits = ServeLimits {
        connections_max: 8,
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_millis(400),
    };
    let (addr, _stop) = start(limits).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(GET).await.expect("write");
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "served");
    let closed = closed_within(&mut s, Duration::from_secs(5))
        .await
        .expect("closed when idle");
    assert!(
        closed >= Duration::from_millis(300),
        "not before: {closed:?}"
    );
}

/// The kernel's timer on the server's end of the connection from `client` (a local address)
/// to `server`: `(kind, seconds left)` from `/proc/net/tcp` (kind 2: keep-alive).
#[cfg(target_os = "linux")]
fn server_side_timer(server: SocketAddr, client: SocketAddr) -> Option<(u32, f64)> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => String::new(),
    };
    let (local, remote) = (hex(server), hex(client));
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let line = table.lines().find(|l| {
        let mut cols = l.split_whitespace().skip(1);
        cols.next() == Some(local.as_str()) && cols.next() == Some(remote.as_str())
    })?;
    // Columns: sl local rem st tx:rx tr:when ...; `when` in clock ticks (USER_HZ, 100/s).
    let (kind, when) = line.split_whitespace().nth(5)?.split_once(':')?;
    let ticks = u64::from_str_radix(when, 16).ok()?;
    Some((kind.parse().ok()?, ticks as f64 / 100.0))
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_kernel_probes_an_idle_connection_for_a_dead_peer() {
    let (addr, _stop) = start(ServeLimits::default()).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(GET).await.expect("write");
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "served");
    let client = s.local_addr().expect("client addr");
    let (kind, left) = server_side_timer(addr, client).expect("the server's socket");
    // Idle with keep-alive on: the keep-alive timer runs, due half the idle timeout (60 s)
    // after the last traffic.
    assert_eq!(kind, 2, "keep-alive timer");
    assert!((30.0..=60.0).contains(&left), "first probe in {left} s");
}

/// A link handler that echoes what follows the magic, up to 5 bytes.
fn echo_links() -> LinkHandler {
    Arc::new(|mut io, _info, _limits| {
        Box::pin(async move {
            let mut buf = [0u8; 5];
            if io.read_exact(&mut buf).await.is_ok() {
                let _ = io.write_all(&buf).await;
            }
        })
    })
}

#[tokio::test]
async fn one_port_serves_links_and_http_told_apart_by_the_first_bytes() {
    let (addr, _stop) = start_with(ServeLimits::default(), Some(echo_links())).await;
    // The magic in pieces, then a payload: the link handler gets what follows the magic.
    let mut link = TcpStream::connect(addr).await.expect("connect");
    let magic = crate::peer::wire::MAGIC;
    link.write_all(&magic[..3]).await.expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await; // a second TCP segment
    link.write_all(&magic[3..]).await.expect("write");
    link.write_all(b"hello").await.expect("write");
    let mut echoed = [0u8; 5];
    link.read_exact(&mut echoed).await.expect("echo");
    assert_eq!(&echoed, b"hello");
    // HTTP on the same port, its first bytes looked at and put back.
    for _ in 0..2 {
        let mut http = TcpStream::connect(addr).await.expect("connect");
        http.write_all(GET).await.expect("write");
        let mut buf = [0u8; 256];
        let n = http.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    }
    // A request that starts like the magic and then differs is HTTP's to answer (400).
    let mut odd = TcpStream::connect(addr).await.expect("connect");
    odd.write_all(b"\0raftkv-GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 256];
    let n = odd.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 400"), "{:?}", &buf[..n]);
}
