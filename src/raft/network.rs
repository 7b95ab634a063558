//! Outbound Raft RPC over the peer clients (`peer/client.rs`): postcard bodies, identity headers,
//! a timeout on every call. Snapshots are streamed from their file, never loaded into memory whole.
//!
//! Wire format (shared with `peer/server.rs`): request body = postcard(request); response body =
//! postcard(`Result<response, String>`), where `Err` carries the remote node's error text.
//! Snapshot request body = u32 BE length + postcard((vote, meta)) + the snapshot file's bytes.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use openraft::errors::NetworkError;
use openraft::errors::RPCError;
use openraft::errors::ReplicationClosed;
use openraft::errors::StreamingError;
use openraft::errors::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RaftNetworkFactory;
use openraft::network::v2::RaftNetworkV2;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::peer::client::PeerClients;
use crate::raft::types::Node;
use crate::raft::types::NodeId;
use crate::raft::types::Snapshot;
use crate::raft::types::SnapshotData;
use crate::raft::types::TypeConfig;
use crate::raft::types::Vote;

/// Creates per-peer Raft network clients.
pub struct NetworkFactory {
    peers: PeerClients,
}

impl NetworkFactory {
    pub fn new(peers: PeerClients) -> Self {
        Self { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConnection {
        PeerConnection::new(target, node, self.peers.clone(), false)
    }

    async fn new_heartbeat_client(&mut self, target: NodeId, node: &Node) -> PeerConnection {
        PeerConnection::new(target, node, self.peers.clone(), true)
    }
}

/// The Raft RPC client for one peer.
pub struct PeerConnection {
    target: NodeId,
    addr: String,
    peers: PeerClients,
    heartbeat: bool,
}

impl PeerConnection {
    fn new(target: NodeId, node: &Node, peers: PeerClients, heartbeat: bool) -> Self {
        Self {
            target,
            addr: node.raft_addr.clone(),
            peers,
            heartbeat,
        }
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.peers
            .post_raft(&self.addr, self.target, path, self.heartbeat)
    }

    async fn call<Req, Resp>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let body =
            postcard::to_stdvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let response = self
            .post(path)
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| to_rpc_error(self.target, e))?;
        decode_response(response)
            .await
            .map_err(|e| peer_error_to_rpc(self.target, &self.addr, e))
    }
}

fn to_rpc_error(target: NodeId, e: reqwest::Error) -> RPCError<TypeConfig> {
    if e.is_connect() {
        RPCError::Unreachable(Unreachable::new(&e))
    } else {
        tracing::trace!(target, error = %e, "raft rpc failed");
        RPCError::Network(NetworkError::new(&e))
    }
}

/// Why a peer request got no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// The receiver refused the request before handling it (not authenticated: 403; meant for
    /// another node or cluster: 421). It was certainly not acted on.
    #[error("refused by {url}: HTTP {status}: {text}")]
    Refused {
        url: String,
        status: u16,
        text: String,
    },
    /// Anything else: a bad status, an undecodable body, a remote error, a broken connection.
    #[error("{0}")]
    Failed(String),
}

/// Decodes a `Result<Resp, String>` postcard body.
pub async fn decode_response<Resp: DeserializeOwned>(
    response: reqwest::Response,
) -> Result<Resp, PeerError> {
    let status = response.status();
    let url = response.url().to_string();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| PeerError::Failed(format!("read answer from {url}: {e}")))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
        if status == reqwest::StatusCode::FORBIDDEN
            || status == reqwest::StatusCode::MISDIRECTED_REQUEST
        {
            return Err(PeerError::Refused {
                url,
                status: status.as_u16(),
                text,
            });
        }
        return Err(PeerError::Failed(format!(
            "HTTP {status} from {url}: {text}"
        )));
    }
    let result: Result<Resp, String> = postcard::from_bytes(&bytes)
        .map_err(|e| PeerError::Failed(format!("decode answer from {url}: {e}")))?;
    result.map_err(|remote| PeerError::Failed(format!("remote error from {url}: {remote}")))
}

/// A refusal counts as unreachable (never as a vote or an acknowledgement), logged at most
/// once per 5 s; other failures are network errors.
fn peer_error_to_rpc(target: NodeId, addr: &str, e: PeerError) -> RPCError<TypeConfig> {
    static LAST_LOG_MS: AtomicU64 = AtomicU64::new(0);
    match e {
        PeerError::Refused { .. } => {
            if crate::peer::log_gate(&LAST_LOG_MS, 5000) {
                tracing::warn!(target, addr, error = %e, "peer refused our request: treating it as unreachable");
            }
            RPCError::Unreachable(Unreachable::from_string(e.to_string()))
        }
        PeerError::Failed(text) => RPCError::Network(NetworkError::from_string(text)),
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call("append", &req, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call("vote", &req, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        req: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call("pre_vote", &req, option.hard_ttl()).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call("transfer_leader", &req, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header =
            postcard::to_stdvec(&(&vote, &snapshot.meta)).map_err(|e| NetworkError::new(&e))?;
        let header_len = u32::try_from(header.len()).map_err(|e| NetworkError::new(&e))?;
        let mut prefix = header_len.to_be_bytes().to_vec();
        prefix.extend_from_slice(&header);

        // The file is streamed as the rest of the body, chunk by chunk.
        let file = tokio::fs::File::from_std(snapshot.snapshot);
        let prefix_stream =
            futures::stream::once(
                async move { Ok::<_, std::io::Error>(bytes::Bytes::from(prefix)) },
            );
        let file_stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
        let body =
            reqwest::Body::wrap_stream(futures::StreamExt::chain(prefix_stream, file_stream));

        tracing::info!(target = self.target, last_log_id = ?snapshot.meta.last_log_id, "sending snapshot");
        let send = async {
            let response = self
                .post("snapshot")
                .timeout(option.hard_ttl())
                .body(body)
                .send()
                .await
                .map_err(|e| match to_rpc_error(self.target, e) {
                    RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                    other => StreamingError::Network(NetworkError::from_string(other.to_string())),
                })?;
            decode_response::<SnapshotResponse<TypeConfig>>(response)
                .await
                .map_err(|e| match peer_error_to_rpc(self.target, &self.addr, e) {
                    RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                    other => StreamingError::Network(NetworkError::from_string(other.to_string())),
                })
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = send => result,
        }
    }
}
