//! Outbound Raft RPC: one pooled HTTP client per peer, postcard bodies, a timeout on every call.
//! Snapshots are streamed from their file, never loaded into memory whole.
//!
//! Wire format (shared with `rpc.rs`): request body = postcard(request); response body =
//! postcard(`Result<response, String>`), where `Err` carries the remote node's error text.
//! Snapshot request body = u32 BE length + postcard((vote, meta)) + the snapshot file's bytes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
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

use crate::raft::types::Node;
use crate::raft::types::NodeId;
use crate::raft::types::Snapshot;
use crate::raft::types::SnapshotData;
use crate::raft::types::TypeConfig;
use crate::raft::types::Vote;

/// Route prefix of the internal (node-to-node) API.
pub const RAFT_PREFIX: &str = "/raft";
/// Content type of postcard bodies.
pub const POSTCARD: &str = "application/x-postcard";

/// One reqwest client (connection pool) per peer address, shared by Raft replication and by
/// request forwarding. Heartbeats get their own pool so a large append cannot delay them.
#[derive(Clone, Default)]
pub struct PeerClients {
    clients: Arc<Mutex<HashMap<(String, bool), reqwest::Client>>>,
    source_ip: Option<std::net::IpAddr>,
}

impl PeerClients {
    /// Outgoing connections will be bound to `source_ip` when given.
    pub fn new(source_ip: Option<std::net::IpAddr>) -> Self {
        Self {
            clients: Arc::default(),
            source_ip,
        }
    }

    /// The pooled client for `addr`; `heartbeat` selects the separate heartbeat pool.
    pub fn get(&self, addr: &str, heartbeat: bool) -> reqwest::Client {
        let mut map = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry((addr.to_string(), heartbeat))
            .or_insert_with(|| {
                reqwest::Client::builder()
                    .no_proxy()
                    .tcp_nodelay(true)
                    .pool_idle_timeout(Duration::from_secs(60))
                    .connect_timeout(Duration::from_secs(2))
                    .local_address(self.source_ip)
                    .build()
                    .unwrap_or_else(|_| reqwest::Client::new())
            })
            .clone()
    }
}

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
        PeerConnection::new(target, node, self.peers.get(&node.raft_addr, false))
    }

    async fn new_heartbeat_client(&mut self, target: NodeId, node: &Node) -> PeerConnection {
        PeerConnection::new(target, node, self.peers.get(&node.raft_addr, true))
    }
}

/// The Raft RPC client for one peer.
pub struct PeerConnection {
    target: NodeId,
    base_url: String,
    client: reqwest::Client,
}

impl PeerConnection {
    fn new(target: NodeId, node: &Node, client: reqwest::Client) -> Self {
        Self {
            target,
            base_url: format!("http://{}{RAFT_PREFIX}", node.raft_addr),
            client,
        }
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
            .client
            .post(format!("{}/{path}", self.base_url))
            .header(reqwest::header::CONTENT_TYPE, POSTCARD)
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| to_rpc_error(self.target, e))?;
        decode_response(response).await.map_err(RPCError::Network)
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

/// Decodes a `Result<Resp, String>` postcard body; any failure is a network error.
pub async fn decode_response<Resp: DeserializeOwned>(
    response: reqwest::Response,
) -> Result<Resp, NetworkError<TypeConfig>> {
    let status = response.status();
    let url = response.url().to_string();
    let bytes = response.bytes().await.map_err(|e| NetworkError::new(&e))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]).into_owned();
        return Err(NetworkError::from_string(format!(
            "HTTP {status} from {url}: {text}"
        )));
    }
    let result: Result<Resp, String> =
        postcard::from_bytes(&bytes).map_err(|e| NetworkError::new(&e))?;
    result.map_err(|remote| NetworkError::from_string(format!("remote error from {url}: {remote}")))
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
                .client
                .post(format!("{}/snapshot", self.base_url))
                .header(reqwest::header::CONTENT_TYPE, POSTCARD)
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
                .map_err(StreamingError::Network)
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = send => result,
        }
    }
}
