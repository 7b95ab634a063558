//! One listener's accept loop: a connection limit, an optional TLS handshake (bounded in time),
//! HTTP/1.1 and HTTP/2 with a request-header timeout and an idle timeout, and the connection's
//! facts ([`ConnInfo`]: remote address, the client's certificate chain) handed to every request
//! as an extension. axum's `serve` has none of these limits, so the router is served here.
//!
//! On the listener that serves the internal API, a connection that opens with the peer link's
//! magic bytes (`peer::wire::MAGIC`, after TLS when TLS is on) is handed to the link handler
//! instead of HTTP; any other first bytes go to HTTP as if never looked at.
//!
//! Invariant: no connection is served beyond `connections_max`; an accepted connection that
//! would exceed it is closed at once (and logged), never queued without bound.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use rustls::pki_types::CertificateDer;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::ServiceExt;

mod authority;
mod streams;

/// The largest HTTP/2 header list a request may carry (RFC 9113's count: names, values and 32
/// bytes a field), for h2 and for the `:authority` mend alike.
const HEADER_LIST_BYTES_MAX: usize = 64 * 1024;
use streams::InlineStreams;
use streams::WithStreams;

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Connections served at once; more are closed on accept.
    pub connections_max: usize,
    /// Bound on receiving a request's headers (and on a TLS handshake).
    pub header_timeout: Duration,
    /// A connection with no request in flight and no byte moved for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            connections_max: crate::config::DEFAULT_CONNECTIONS_MAX,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// The TCP keep-alive of every accepted connection: the first probe after half the idle timeout
/// without traffic, then one every `header_timeout / 3`; three unanswered probes close it. So a
/// connection whose peer vanished (a watch stream's client, whose connection is never idle by
/// our measure) is closed within `idle_timeout / 2 + header_timeout`.
/// (The kernel counts in whole seconds: at least one each.)
fn tcp_keepalive(limits: &ServeLimits) -> socket2::TcpKeepalive {
    let second = Duration::from_secs(1);
    socket2::TcpKeepalive::new()
        .with_time((limits.idle_timeout / 2).max(second))
        .with_interval((limits.header_timeout / 3).max(second))
        .with_retries(3)
}

tokio::task_local! {
    /// The id of the connection the running request came on (ids start at 1, one per accepted
    /// connection of any listener).
    static CONNECTION_ID: u64;
}

/// Ids for [`CONNECTION_ID`].
static CONNECTIONS_SERVED: AtomicU64 = AtomicU64::new(1);

/// The id of the connection the running request came on, when it came on one served here.
/// The write path tells writers apart by it ("Gathering" in `raft/propose.rs`).
pub fn connection_id() -> Option<u64> {
    CONNECTION_ID.try_with(|id| *id).ok()
}

/// What the server knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The certificate chain the client presented in the TLS handshake (end entity first);
    /// empty when none was presented or the connection is not TLS.
    pub client_certs: Arc<Vec<CertificateDer<'static>>>,
}

/// A byte stream a connection handler can own (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// What a listener answers its HTTP requests with: an axum `Router`, or a dispatcher in front of
/// one (`api::etcd::Dispatch`).
pub trait Handler:
    tower::Service<
        axum::extract::Request,
        Response = axum::response::Response,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Handler for T where
    T: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serves a connection that opened with the peer link's magic (which it has consumed).
pub type LinkHandler = Arc<
    dyn Fn(Box<dyn Io>, ConnInfo, ServeLimits) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// Serves `router` on `listener` (and peer links on it with `links`) until `stop` resolves;
/// in-flight connections then finish.
pub async fn serve<H: Handler>(
    kind: &'static str,
    listener: TcpListener,
    router: H,
    tls: Option<tokio_rustls::TlsAcceptor>,
    links: Option<LinkHandler>,
    limits: ServeLimits,
    stop: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.connections_max));
    let refused = AtomicUsize::new(0);
    tokio::pin!(stop);
    loop {
        let (stream, remote) = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(kind, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Log the first refusal and then every 1000th, so a flood cannot flood the log.
            if refused.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
                tracing::warn!(kind, %remote, connections_max = limits.connections_max, "connection limit reached: closing new connection");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Dead peers (a crashed host, a cut cable) are found by the kernel's keep-alive probes,
        // at no cost per request: hyper's HTTP/2 keep-alive did it with a clock read and a timer
        // poll on every poll of every connection (gRPC calls took 4–10 % more CPU; BENCHMARKS.md).
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&tcp_keepalive(&limits));
        let router = router.clone();
        let tls = tls.clone();
        let links = links.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => {
                    let info = ConnInfo {
                        remote,
                        tls: false,
                        client_certs: Arc::default(),
                    };
                    dispatch(stream, info, router, links, limits).await;
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await;
                    let stream = match handshake {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            // At most one line per 5 s: a stranger retrying must not flood the log.
                            static LAST_LOG_MS: AtomicU64 = AtomicU64::new(0);
                            if crate::peer::log_gate(&LAST_LOG_MS, 5000) {
                                tracing::info!(kind, %remote, error = %e, "TLS handshake refused");
                            } else {
                                tracing::debug!(kind, %remote, error = %e, "TLS handshake refused");
                            }
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(kind, %remote, "TLS handshake timed out");
                            return;
                        }
                    };
                    let client_certs = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
                        .unwrap_or_default();
                    let info = ConnInfo {
                        remote,
                        tls: true,
                        client_certs: Arc::new(client_certs),
                    };
                    dispatch(stream, info, router, links, limits).await;
                }
            }
        });
    }
}

/// Hands the connection to the link handler if it opens with the link magic, else to HTTP
/// (with the bytes looked at put back in front).
async fn dispatch<S: Io, H: Handler>(
    mut stream: S,
    info: ConnInfo,
    router: H,
    links: Option<LinkHandler>,
    limits: ServeLimits,
) {
    let Some(links) = links else {
        return serve_connection(stream, Prefix::default(), info, router, limits).await;
    };
    use crate::peer::wire::MAGIC;
    use crate::peer::wire::Sniff;
    let mut first = [0u8; MAGIC.len()];
    let mut seen = 0;
    let sniffed = tokio::time::timeout(limits.header_timeout, async {
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut stream, &mut first[seen..]).await?;
            if n == 0 {
                return Ok(None);
            }
            seen += n;
            match crate::peer::wire::sniff(&first[..seen]) {
                Sniff::More => continue,
                found => return Ok::<_, std::io::Error>(Some(found)),
            }
        }
    })
    .await;
    match sniffed {
        Ok(Ok(Some(Sniff::Link))) => links(Box::new(stream), info, limits).await,
        Ok(Ok(Some(_))) => {
            let prefix = Prefix {
                bytes: first,
                start: 0,
                end: seen,
            };
            serve_connection(stream, prefix, info, router, limits).await;
        }
        Ok(Ok(None) | Err(_)) | Err(_) => {}
    }
}

/// Bytes already read from a connection (while looking for the link magic), to be read again
/// first.
#[derive(Default)]
struct Prefix {
    bytes: [u8; crate::peer::wire::MAGIC.len()],
    start: usize,
    end: usize,
}

async fn serve_connection<S, H>(
    stream: S,
    prefix: Prefix,
    info: ConnInfo,
    router: H,
    limits: ServeLimits,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let activity = Arc::new(Activity::default());
    let start = Instant::now();
    // etcdctl's own dials send a URL as the HTTP/2 :authority, which h2 refuses: mended here.
    let io = TokioIo::new(authority::Mended::new(Watched {
        inner: stream,
        prefix,
        activity: activity.clone(),
        start,
    }));
    let service_activity = activity.clone();
    let connection_id = CONNECTIONS_SERVED.fetch_add(1, Ordering::Relaxed);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(info.clone());
        let router = router.clone();
        let guard = InFlight::new(service_activity.clone());
        CONNECTION_ID.scope(connection_id, async move {
            let response = router.oneshot(req.map(Body::new)).await;
            drop(guard);
            response
        })
    });
    let exec = InlineStreams::default();
    let mut builder = hyper_util::server::conn::auto::Builder::new(exec.clone());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(HEADER_LIST_BYTES_MAX as u32);
    let conn = WithStreams::new(builder.serve_connection_with_upgrades(io, service), exec);
    tokio::pin!(conn);
    loop {
        let idle_check = tokio::time::sleep(limits.idle_timeout / 4);
        tokio::select! {
            result = &mut conn => {
                if let Err(e) = result {
                    tracing::trace!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = idle_check => {
                if activity.idle_for(start) >= limits.idle_timeout {
                    tracing::trace!("closing idle connection");
                    return;
                }
            }
        }
    }
}

/// When the connection last moved a byte, and how many requests are being answered.
#[derive(Default)]
struct Activity {
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self, start: Instant) {
        let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the connection has been idle; zero while a request is in flight.
    fn idle_for(&self, start: Instant) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let now = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An I/O stream that records when bytes last moved, read after its `prefix`.
struct Watched<S> {
    inner: S,
    prefix: Prefix,
    activity: Arc<Activity>,
    start: Instant,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let p = &mut self.prefix;
        if p.start < p.end {
            let n = (p.end - p.start).min(buf.remaining());
            buf.put_slice(&p.bytes[p.start..p.start + n]);
            p.start += n;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch(self.start);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch(self.start);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch(self.start);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests;
