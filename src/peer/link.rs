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
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use tokio::time::Instant;

mod conn;

use conn::CloseUnlessDone;
use conn::Conn;
use conn::Forget;
use conn::Peer;
pub use conn::read_frame;

use crate::metrics::peer::Failure;
use crate::metrics::peer::LinkMetrics;
use crate::peer::identity::Identity;
use crate::peer::wire;
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
    /// Snapshots (a long stream of chunks), never in the way of the others.
    Snapshot,
}

impl Lane {
    /// The lane's name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Lane::Replication => "replication",
            Lane::Heartbeat => "heartbeat",
            Lane::Forward => "forward",
            Lane::Snapshot => "snapshot",
        }
    }
}

/// Bound on opening a link (TCP connect, TLS handshake, hello and its answer).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A link unused this long is reopened before its next request. The receiver closes a link
/// after 120 s without traffic (`serve::ServeLimits::idle_timeout`): reopening well before that
/// means no request is ever sent on a link the receiver is closing.
const IDLE_REOPEN: Duration = Duration::from_secs(60);

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

    fn failure(&self) -> Failure {
        match self {
            LinkError::Unreachable { .. } => Failure::Unreachable,
            LinkError::Refused { .. } => Failure::Refused,
            LinkError::Rejected { .. } => Failure::Rejected,
            LinkError::Lost { .. } => Failure::Lost,
            LinkError::Remote { .. } => Failure::Remote,
        }
    }
}

/// What opening a link needs: this node's identity, where to dial from, TLS.
pub struct Dialer {
    pub source_ip: Option<std::net::IpAddr>,
    pub identity: Arc<Identity>,
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// What each peer said it can do when a link to it last opened.
    pub features: Arc<crate::peer::features::PeerFeatures>,
}

/// This node's outbound links, by peer and lane.
pub struct Links {
    dialer: Arc<Dialer>,
    links: Mutex<HashMap<(NodeId, Lane), Arc<Link>>>,
    metrics: Arc<LinkMetrics>,
}

impl Links {
    pub fn new(dialer: Dialer, metrics: Arc<LinkMetrics>) -> Self {
        Self {
            dialer: Arc::new(dialer),
            links: Mutex::default(),
            metrics,
        }
    }

    /// The link to node `to` at `addr` on `lane`; a node now at another address gets a new one.
    pub fn get(&self, to: NodeId, addr: &str, lane: Lane) -> Arc<Link> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(link) = links.get(&(to, lane)).filter(|l| l.peer.addr == addr) {
            return link.clone();
        }
        let link = Arc::new(Link {
            peer: Arc::new(Peer {
                addr: addr.to_string(),
                to,
                dialer: self.dialer.clone(),
                stats: self.metrics.link(to, lane.name()),
            }),
            conn: Arc::default(),
        });
        links.insert((to, lane), link.clone());
        link
    }
}

/// The link to one peer on one lane.
pub struct Link {
    peer: Arc<Peer>,
    /// The open connection, if any (replaced when it closes or idles). Held locked while a
    /// connection is being opened, so callers wait for that one instead of opening their own.
    conn: Arc<tokio::sync::Mutex<Option<Arc<Conn>>>>,
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
            addr: self.peer.addr.clone(),
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
        self.send(rpc, body, timeout).await?.decoded().await
    }

    /// Sends one request and waits for its answer's body, all within `timeout`; counts it in
    /// the link's metrics.
    pub async fn call_raw(
        &self,
        rpc: Rpc,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Bytes, LinkError> {
        self.send(rpc, body, timeout).await?.answer().await
    }

    /// Writes one request whole to the link and returns at once: its answer is taken with
    /// [`Sent::answer`] (or [`Sent::decoded`]), all within `timeout` of now. Requests sent one
    /// after another by one caller reach the receiver in that order (one connection, frames
    /// written whole under its writer's lock), so a caller may keep several in flight.
    pub async fn send(&self, rpc: Rpc, body: &[u8], timeout: Duration) -> Result<Sent, LinkError> {
        let sent = self.write_request(rpc, body, timeout).await;
        if let Err(e) = &sent {
            self.peer.stats.failed(e.failure());
        }
        sent
    }

    async fn write_request(
        &self,
        rpc: Rpc,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Sent, LinkError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let len = wire::HEAD_BYTES + body.len();
        if len > wire::FRAME_BYTES_MAX {
            return Err(LinkError::Rejected {
                addr: self.peer.addr.clone(),
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
        let sent = Sent {
            peer: self.peer.clone(),
            rpc,
            request_bytes: len,
            started,
            deadline,
            timeout,
            rx,
            _forget: Forget {
                shared: conn.shared.clone(),
                id,
            },
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
            Ok(Ok(())) => Ok(sent),
            Ok(Err(e)) => Err(self.lost(format!("write {}: {e}", rpc.name()))),
            Err(_) => Err(self.lost(format!("{} not sent within {timeout:?}", rpc.name()))),
        }
    }

    /// The peer's address.
    pub fn addr(&self) -> &str {
        &self.peer.addr
    }

    fn unreachable(&self, why: impl Into<String>) -> LinkError {
        self.peer.unreachable(why)
    }

    fn lost(&self, why: String) -> LinkError {
        LinkError::Lost {
            addr: self.peer.addr.clone(),
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

/// A request written whole to its link, its answer still to come. Dropping it forgets the
/// request (a late answer is dropped).
pub struct Sent {
    peer: Arc<Peer>,
    rpc: Rpc,
    /// The request's frame, in bytes.
    request_bytes: usize,
    started: Instant,
    deadline: Instant,
    timeout: Duration,
    rx: oneshot::Receiver<conn::Answer>,
    _forget: Forget,
}

impl Sent {
    /// Waits for the answer's body until the request's deadline; counts it in the link's metrics.
    pub async fn answer(self) -> Result<Bytes, LinkError> {
        let (peer, started, request_bytes) = (self.peer.clone(), self.started, self.request_bytes);
        let result = self.wait().await;
        match &result {
            Ok(answer) => peer.stats.answered(
                request_bytes,
                wire::HEAD_BYTES + answer.len(),
                started.elapsed().as_secs_f64(),
            ),
            Err(e) => peer.stats.failed(e.failure()),
        }
        result
    }

    /// [`Sent::answer`], decoded from the receiver's `Result<Resp, String>`.
    pub async fn decoded<Resp: DeserializeOwned>(self) -> Result<Resp, LinkError> {
        let (peer, rpc) = (self.peer.clone(), self.rpc);
        let answer = self.answer().await?;
        let decoded = postcard::from_bytes::<Result<Resp, String>>(&answer)
            .map_err(|e| format!("decode answer to {}: {e}", rpc.name()))
            .and_then(|answer| answer);
        decoded.map_err(|text| {
            peer.stats.failed(Failure::Remote);
            LinkError::Remote {
                addr: peer.addr.clone(),
                text,
            }
        })
    }

    async fn wait(self) -> Result<Bytes, LinkError> {
        let (rpc, timeout) = (self.rpc, self.timeout);
        let lost = |why: String| LinkError::Lost {
            addr: self.peer.addr.clone(),
            why,
        };
        let (status, answer) = match tokio::time::timeout_at(self.deadline, self.rx).await {
            Ok(Ok(Ok(answer))) => answer,
            Ok(Ok(Err(why))) => return Err(lost(why)),
            Ok(Err(_)) => return Err(lost("the link closed".into())),
            Err(_) => {
                return Err(lost(format!(
                    "{} unanswered within {timeout:?}",
                    rpc.name()
                )));
            }
        };
        if status == Status::Ok as u8 {
            Ok(answer)
        } else {
            Err(LinkError::Rejected {
                addr: self.peer.addr.clone(),
                text: String::from_utf8_lossy(&answer[..answer.len().min(512)]).into_owned(),
            })
        }
    }
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
