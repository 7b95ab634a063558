//! Outbound peer links: one persistent connection per peer and lane, opened on first use (and
//! again after it breaks), carrying many requests at once. Each request is tagged with an id and
//! its answer may come back in any order; a reader task per connection hands each answer to its
//! waiting caller. The wire format is in `wire.rs`, the receiving side in `link_server.rs`.
//!
//! Lanes keep traffic that must not wait behind other traffic on its own connection: Raft
//! replication (appends, votes), heartbeats (never behind a large append), and the forwarded
//! client traffic (write batches, read index, lease asks).
//!
//! What a failure means for the caller ([`LinkError`]): `Unreachable`, `Refused` and `Rejected`
//! were never handled by the receiver; `Lost` may have been (the outcome is unknown); `Remote`
//! was handled and answered an error.
//!
//! Invariant: a connection on which a frame was cut short (a failed, timed-out or cancelled
//! write) is closed at once and never written to again, so a receiver never reads half a frame
//! followed by another frame.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::io::BufWriter;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::peer::identity::Identity;
use crate::peer::wire;
use crate::peer::wire::Hello;
use crate::peer::wire::HelloRefusal;
use crate::peer::wire::Rpc;
use crate::peer::wire::Status;
use crate::raft::types::NodeId;

/// Which connection to a peer a request travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Appends, votes, leadership transfer.
    Replication,
    /// Heartbeats (appends without entries), never queued behind a large append.
    Heartbeat,
    /// Forwarded writes, read index and lease asks.
    Forward,
}

/// Bound on opening a link (TCP connect, TLS handshake, hello and its answer).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A link unused this long is reopened before its next request. The receiver closes a link
/// after 120 s without traffic (`serve::ServeLimits::idle_timeout`): reopening well before that
/// means no request is ever sent on a link the receiver is closing.
const IDLE_REOPEN: Duration = Duration::from_secs(60);
/// Read buffer of a link's reader.
const READ_BUFFER_BYTES: usize = 64 << 10;
/// Write buffer of a link (small frames leave in one write; large bodies pass through).
const WRITE_BUFFER_BYTES: usize = 64 << 10;

/// Why a request got no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// No link could be opened: nothing was sent.
    #[error("cannot reach {addr}: {why}")]
    Unreachable { addr: String, why: String },
    /// The receiver refused the link: not an authenticated peer (403) or not the node or
    /// cluster meant (421). Nothing was handled.
    #[error("refused by {addr}: {status}: {text}")]
    Refused {
        addr: String,
        status: u16,
        text: String,
    },
    /// The receiver refused this request before handling it (undecodable, over a limit).
    #[error("request refused by {addr}: {text}")]
    Rejected { addr: String, text: String },
    /// Sent, but no answer came (the link broke or the time ran out): the outcome is unknown.
    #[error("no answer from {addr}: {why}")]
    Lost { addr: String, why: String },
    /// Handled; the receiver answered an error, or an answer that does not decode.
    #[error("remote error from {addr}: {text}")]
    Remote { addr: String, text: String },
}

impl LinkError {
    /// Whether the receiver certainly did not act on the request.
    pub fn not_handled(&self) -> bool {
        matches!(
            self,
            LinkError::Unreachable { .. } | LinkError::Refused { .. } | LinkError::Rejected { .. }
        )
    }
}

/// What opening a link needs: this node's identity, where to dial from, TLS.
pub struct Dialer {
    pub source_ip: Option<std::net::IpAddr>,
    pub identity: Arc<Identity>,
    pub tls: Option<tokio_rustls::TlsConnector>,
}

/// This node's outbound links, by peer and lane.
pub struct Links {
    dialer: Arc<Dialer>,
    links: Mutex<HashMap<(NodeId, Lane), Arc<Link>>>,
}

impl Links {
    pub fn new(dialer: Dialer) -> Self {
        Self {
            dialer: Arc::new(dialer),
            links: Mutex::default(),
        }
    }

    /// The link to node `to` at `addr` on `lane`; a node now at another address gets a new one.
    pub fn get(&self, to: NodeId, addr: &str, lane: Lane) -> Arc<Link> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(link) = links.get(&(to, lane)).filter(|l| l.addr == addr) {
            return link.clone();
        }
        let link = Arc::new(Link {
            addr: addr.to_string(),
            peer: Arc::new(Peer {
                addr: addr.to_string(),
                to,
                dialer: self.dialer.clone(),
            }),
            conn: Arc::default(),
        });
        links.insert((to, lane), link.clone());
        link
    }
}

/// The link to one peer on one lane.
pub struct Link {
    addr: String,
    peer: Arc<Peer>,
    /// The open connection, if any (replaced when it closes or idles). Held locked while a
    /// connection is being opened, so callers wait for that one instead of opening their own.
    conn: Arc<tokio::sync::Mutex<Option<Arc<Conn>>>>,
}

/// Whom a link connects to, and how.
struct Peer {
    addr: String,
    to: NodeId,
    dialer: Arc<Dialer>,
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;
/// An answer: its status byte and body, or why the link closed.
type Answer = Result<(u8, Bytes), String>;

struct Conn {
    writer: tokio::sync::Mutex<BufWriter<Writer>>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    _reader: AbortOnDrop,
}

/// What the callers and the reader task share.
struct Shared {
    state: Mutex<State>,
    opened: Instant,
    /// Milliseconds after `opened` of the last request sent.
    last_used_ms: AtomicU64,
}

struct State {
    /// Why the connection closed; `None` while open.
    closed: Option<String>,
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
}

impl Shared {
    fn is_open(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed
            .is_none()
    }

    /// Registers a waiter for `id`; false when the connection already closed.
    fn register(&self, id: u64, tx: oneshot::Sender<Answer>) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.closed.is_some() {
            return false;
        }
        state.waiting.insert(id, tx);
        true
    }

    fn forget(&self, id: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.waiting.remove(&id);
    }

    fn answer(&self, id: u64, answer: Answer) {
        let tx = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.waiting.remove(&id)
        };
        // No waiter: it timed out or was cancelled; the answer is dropped.
        if let Some(tx) = tx {
            let _ = tx.send(answer);
        }
    }

    /// Closes the connection: every waiter learns why, and no request is sent on it again.
    fn close(&self, why: &str) {
        let waiting = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.closed.is_none() {
                state.closed = Some(why.to_string());
            }
            std::mem::take(&mut state.waiting)
        };
        for (_, tx) in waiting {
            let _ = tx.send(Err(why.to_string()));
        }
    }

    fn idle_for(&self) -> Duration {
        let now = self.opened.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_used_ms.load(Ordering::Relaxed)))
    }

    fn touch(&self) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.last_used_ms.store(now, Ordering::Relaxed);
    }
}

/// Aborts the reader task when the connection is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Closes the connection unless disarmed: armed across a frame's write, so a write that fails,
/// times out or is cancelled halfway never leaves half a frame on a connection still in use.
struct CloseUnlessDone<'a> {
    shared: &'a Shared,
    done: bool,
}

impl Drop for CloseUnlessDone<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.close("a request's write did not complete");
        }
    }
}

/// Forgets a waiter when its caller stops waiting (answered, timed out or cancelled).
struct Forget<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.shared.forget(self.id);
    }
}

impl Link {
    /// Sends `req` as `rpc` and decodes the receiver's `Result<Resp, String>` answer, all
    /// within `timeout`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        rpc: Rpc,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, LinkError> {
        let body = postcard::to_stdvec(req).map_err(|e| LinkError::Rejected {
            addr: self.addr.clone(),
            text: format!("encode: {e}"),
        })?;
        self.call_encoded(rpc, &body, timeout).await
    }

    /// [`Link::call`] with the request already encoded.
    pub async fn call_encoded<Resp: DeserializeOwned>(
        &self,
        rpc: Rpc,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Resp, LinkError> {
        let answer = self.call_raw(rpc, body, timeout).await?;
        let decoded: Result<Resp, String> =
            postcard::from_bytes(&answer).map_err(|e| LinkError::Remote {
                addr: self.addr.clone(),
                text: format!("decode answer to {}: {e}", rpc.name()),
            })?;
        decoded.map_err(|text| LinkError::Remote {
            addr: self.addr.clone(),
            text,
        })
    }

    /// Sends one request and waits for its answer's body, all within `timeout`.
    pub async fn call_raw(
        &self,
        rpc: Rpc,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Bytes, LinkError> {
        let deadline = Instant::now() + timeout;
        let len = wire::HEAD_BYTES + body.len();
        if len > wire::FRAME_BYTES_MAX {
            return Err(LinkError::Rejected {
                addr: self.addr.clone(),
                text: format!(
                    "request of {len} bytes is over the limit of {}",
                    wire::FRAME_BYTES_MAX
                ),
            });
        }
        let conn = self.connection(deadline).await?;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if !conn.shared.register(id, tx) {
            return Err(self.unreachable("the link closed before the request was sent"));
        }
        let _forget = Forget {
            shared: &conn.shared,
            id,
        };
        conn.shared.touch();
        let head = wire::head(body.len(), id, rpc as u8);
        let written = tokio::time::timeout_at(deadline, async {
            let mut writer = conn.writer.lock().await;
            // Must write the whole frame or close the connection: see `CloseUnlessDone`.
            let mut guard = CloseUnlessDone {
                shared: &conn.shared,
                done: false,
            };
            writer.write_all(&head).await?;
            writer.write_all(body).await?;
            writer.flush().await?;
            guard.done = true;
            Ok::<(), std::io::Error>(())
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.lost(format!("write {}: {e}", rpc.name()))),
            Err(_) => return Err(self.lost(format!("{} not sent within {timeout:?}", rpc.name()))),
        }
        let (status, answer) = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(answer))) => answer,
            Ok(Ok(Err(why))) => return Err(self.lost(why)),
            Ok(Err(_)) => return Err(self.lost("the link closed".into())),
            Err(_) => {
                return Err(self.lost(format!("{} unanswered within {timeout:?}", rpc.name())));
            }
        };
        if status == Status::Ok as u8 {
            Ok(answer)
        } else {
            Err(LinkError::Rejected {
                addr: self.addr.clone(),
                text: String::from_utf8_lossy(&answer[..answer.len().min(512)]).into_owned(),
            })
        }
    }

    fn unreachable(&self, why: impl Into<String>) -> LinkError {
        LinkError::Unreachable {
            addr: self.addr.clone(),
            why: why.into(),
        }
    }

    fn lost(&self, why: String) -> LinkError {
        LinkError::Lost {
            addr: self.addr.clone(),
            why,
        }
    }

    /// The open connection, opening one if there is none (or it closed, or idled). Opening is
    /// bounded by `CONNECT_TIMEOUT`, not by the caller's deadline: a caller that stops waiting
    /// leaves it running, so a link to a peer whose round trip exceeds one RPC's time (a heartbeat
    /// interval) still opens, and the next request finds it open.
    async fn connection(&self, deadline: Instant) -> Result<Arc<Conn>, LinkError> {
        let waited = tokio::time::timeout_at(deadline, self.conn.clone().lock_owned()).await;
        let Ok(mut slot) = waited else {
            return Err(self.unreachable("the link is still opening"));
        };
        if let Some(conn) = slot.as_ref() {
            if conn.shared.is_open() && conn.shared.idle_for() < IDLE_REOPEN {
                return Ok(conn.clone());
            }
            conn.shared.close("replaced");
        }
        *slot = None;
        let peer = self.peer.clone();
        let opening = tokio::spawn(async move {
            let opened = match tokio::time::timeout(CONNECT_TIMEOUT, peer.open()).await {
                Ok(Ok(conn)) => Arc::new(conn),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(peer.unreachable("timed out opening the link")),
            };
            tracing::debug!(to = peer.to, addr = %peer.addr, "peer link open");
            *slot = Some(opened.clone());
            Ok(opened)
        });
        match tokio::time::timeout_at(deadline, opening).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(self.unreachable(format!("opening the link failed: {e}"))),
            Err(_) => Err(self.unreachable("the link is still opening")),
        }
    }
}

impl Peer {
    fn unreachable(&self, why: impl Into<String>) -> LinkError {
        LinkError::Unreachable {
            addr: self.addr.clone(),
            why: why.into(),
        }
    }

    /// Connects, says hello and reads the answer; starts the reader task.
    async fn open(&self) -> Result<Conn, LinkError> {
        let tcp = self.connect_tcp().await.map_err(|e| self.unreachable(e))?;
        let (reader, writer): (Reader, Writer) = match &self.dialer.tls {
            None => {
                let (r, w) = tcp.into_split();
                (Box::new(r), Box::new(w))
            }
            Some(connector) => {
                let name = server_name(&self.addr).map_err(|e| self.unreachable(e))?;
                let tls = connector.connect(name, tcp).await.map_err(|e| {
                    self.unreachable(format!("TLS: {}", crate::peer::client::error_chain(&e)))
                })?;
                let (r, w) = tokio::io::split(tls);
                (Box::new(r), Box::new(w))
            }
        };
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
        let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, writer);
        let hello = Hello {
            cluster_id: self.dialer.identity.cluster_id().unwrap_or_default(),
            from: self.dialer.identity.node_id,
            to: self.to,
        };
        let hello = postcard::to_stdvec(&hello).map_err(|e| self.unreachable(e.to_string()))?;
        let said = async {
            writer.write_all(wire::MAGIC).await?;
            writer.write_all(&wire::plain_frame(&hello)).await?;
            writer.flush().await
        };
        said.await
            .map_err(|e| self.unreachable(format!("send hello: {e}")))?;
        let answer = read_frame(&mut reader, wire::HELLO_BYTES_MAX)
            .await
            .map_err(|e| self.unreachable(format!("read hello answer: {e}")))?;
        let answer: Result<(), HelloRefusal> = postcard::from_bytes(&answer)
            .map_err(|e| self.unreachable(format!("decode hello answer: {e}")))?;
        if let Err(refusal) = answer {
            return Err(LinkError::Refused {
                addr: self.addr.clone(),
                status: refusal.status,
                text: refusal.text,
            });
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                closed: None,
                waiting: HashMap::new(),
            }),
            opened: Instant::now(),
            last_used_ms: AtomicU64::new(0),
        });
        let reading = tokio::spawn(read_answers(reader, shared.clone()));
        Ok(Conn {
            writer: tokio::sync::Mutex::new(writer),
            shared,
            next_id: AtomicU64::new(1),
            _reader: AbortOnDrop(reading),
        })
    }

    async fn connect_tcp(&self) -> Result<tokio::net::TcpStream, String> {
        let target = tokio::net::lookup_host(&self.addr)
            .await
            .map_err(|e| format!("resolve: {e}"))?
            .next()
            .ok_or_else(|| "resolve: no address".to_string())?;
        let socket = if target.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(|e| format!("socket: {e}"))?;
        if let Some(ip) = self.dialer.source_ip {
            socket
                .bind(std::net::SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let tcp = socket
            .connect(target)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }
}

/// The TLS server name of `addr` (`host:port`): an IP address or a DNS name.
fn server_name(addr: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("TLS server name {host:?}: {e}"))
}

/// Reads one frame's payload of at most `max` bytes.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Vec<u8>> {
    let mut prefix = [0u8; wire::LEN_BYTES];
    r.read_exact(&mut prefix).await?;
    let len = wire::frame_len(prefix, max)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(payload)
}

/// The reader task: hands every answer to its waiter until the connection ends, then closes it.
async fn read_answers(mut reader: BufReader<Reader>, shared: Arc<Shared>) {
    let why = loop {
        let payload = match read_frame(&mut reader, wire::FRAME_BYTES_MAX).await {
            Ok(p) => Bytes::from(p),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break "the peer closed the link".to_string();
            }
            Err(e) => break format!("read: {e}"),
        };
        match wire::split(&payload) {
            Ok((id, status, _)) => {
                shared.answer(id, Ok((status, payload.slice(wire::HEAD_BYTES..))));
            }
            Err(e) => break format!("bad answer: {e}"),
        }
    };
    tracing::debug!(why = %why, "peer link closed");
    shared.close(&why);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host_part() {
        assert!(matches!(
            server_name("127.0.0.1:4001"),
            Ok(rustls::pki_types::ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[::1]:4001"),
            Ok(rustls::pki_types::ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("node1.example:4001"),
            Ok(rustls::pki_types::ServerName::DnsName(_))
        ));
    }

    #[test]
    fn only_failures_before_handling_count_as_not_handled() {
        let addr = "a:1".to_string();
        assert!(
            LinkError::Unreachable {
                addr: addr.clone(),
                why: String::new()
            }
            .not_handled()
        );
        assert!(
            LinkError::Refused {
                addr: addr.clone(),
                status: 421,
                text: String::new()
            }
            .not_handled()
        );
        assert!(
            !LinkError::Lost {
                addr: addr.clone(),
                why: String::new()
            }
            .not_handled()
        );
        assert!(
            !LinkError::Remote {
                addr,
                text: String::new()
            }
            .not_handled()
        );
    }
}
