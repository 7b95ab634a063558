//! One open peer link connection: opening it (TCP, TLS, hello), the waiters of its requests,
//! and the reader task that hands each answer to its waiter (`link.rs` sends; `wire.rs` is the
//! format).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::io::BufWriter;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Dialer;
use super::LinkError;
use crate::metrics::peer::LinkStats;
use crate::peer::wire;
use crate::peer::wire::Hello;
use crate::raft::types::NodeId;

/// Read buffer of a link's reader.
const READ_BUFFER_BYTES: usize = 64 << 10;
/// Write buffer of a link (small frames leave in one write; large bodies pass through).
const WRITE_BUFFER_BYTES: usize = 64 << 10;

/// Whom a link connects to, and how.
pub(super) struct Peer {
    pub(super) addr: String,
    pub(super) to: NodeId,
    pub(super) dialer: Arc<Dialer>,
    pub(super) stats: Arc<LinkStats>,
}

pub(super) type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub(super) type Writer = Box<dyn AsyncWrite + Send + Unpin>;
/// An answer: its status byte and body, or why the link closed.
pub(super) type Answer = Result<(u8, Bytes), String>;

pub(super) struct Conn {
    pub(super) writer: tokio::sync::Mutex<BufWriter<Writer>>,
    pub(super) shared: Arc<Shared>,
    pub(super) next_id: AtomicU64,
    _reader: AbortOnDrop,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.close("the link was dropped");
    }
}

/// What the callers and the reader task share.
pub(super) struct Shared {
    state: Mutex<State>,
    opened: Instant,
    /// Milliseconds after `opened` of the last request sent.
    last_used_ms: AtomicU64,
    /// Counts this connection open until it closes.
    stats: Arc<LinkStats>,
}

struct State {
    /// Why the connection closed; `None` while open.
    closed: Option<String>,
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
}

impl Shared {
    pub(super) fn is_open(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed
            .is_none()
    }

    /// Registers a waiter for `id`; false when the connection already closed.
    pub(super) fn register(&self, id: u64, tx: oneshot::Sender<Answer>) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.closed.is_some() {
            return false;
        }
        state.waiting.insert(id, tx);
        true
    }

    pub(super) fn forget(&self, id: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.waiting.remove(&id);
    }

    pub(super) fn answer(&self, id: u64, answer: Answer) {
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
    pub(super) fn close(&self, why: &str) {
        let waiting = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.closed.is_none() {
                state.closed = Some(why.to_string());
                self.stats.closed();
            }
            std::mem::take(&mut state.waiting)
        };
        for (_, tx) in waiting {
            let _ = tx.send(Err(why.to_string()));
        }
    }

    pub(super) fn idle_for(&self) -> Duration {
        let now = self.opened.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_used_ms.load(Ordering::Relaxed)))
    }

    pub(super) fn touch(&self) {
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
pub(super) struct CloseUnlessDone<'a> {
    pub(super) shared: &'a Shared,
    pub(super) done: bool,
}

impl Drop for CloseUnlessDone<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.close("a request's write did not complete");
        }
    }
}

/// Forgets a waiter when its caller stops waiting (answered, timed out or cancelled).
pub(super) struct Forget {
    pub(super) shared: Arc<Shared>,
    pub(super) id: u64,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.shared.forget(self.id);
    }
}

impl Peer {
    pub(super) fn unreachable(&self, why: impl Into<String>) -> LinkError {
        LinkError::Unreachable {
            addr: self.addr.clone(),
            why: why.into(),
        }
    }

    /// Connects, says hello and reads the answer; starts the reader task.
    pub(super) async fn open(&self) -> Result<Conn, LinkError> {
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
        let (answer, features) = wire::decode_hello_answer(&answer)
            .map_err(|e| self.unreachable(format!("decode hello answer: {e}")))?;
        if let Err(refusal) = answer {
            return Err(LinkError::Refused {
                addr: self.addr.clone(),
                status: refusal.status,
                text: refusal.text,
            });
        }
        // Must be recorded before the link carries a request: a peer restarted as an older
        // version is then known as one before the leader proposes another batch entry.
        self.dialer.features.record(self.to, features);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                closed: None,
                waiting: HashMap::new(),
            }),
            opened: Instant::now(),
            last_used_ms: AtomicU64::new(0),
            stats: self.stats.clone(),
        });
        self.stats.opened();
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
pub(super) fn server_name(addr: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
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
