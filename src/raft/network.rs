//! Outbound Raft RPC over the peer links (`peer/link.rs`), a timeout on every call: appends,
//! votes and leadership transfer on the replication lane, heartbeats on a lane of their own,
//! snapshots on a third, streamed from their file in chunks (`peer/snapshot.rs`), never loaded
//! into memory whole.
//!
//! An append request is at most `limits::APPEND_BYTES_MAX` encoded (the receiver accepts that
//! plus slack): a longer one is cut to its longest fitting prefix, see [`cut_to_fit`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use openraft::base::BoxFuture;
use openraft::base::BoxStream;
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
use openraft::raft::StreamAppendResult;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::limits::APPEND_BYTES_MAX;
use crate::limits::APPEND_BYTES_PER_SEC_MIN;
use crate::metrics::storage::SnapshotMetrics;
use crate::metrics::storage::observe;
use crate::peer::client::PeerClients;
use crate::peer::link::Lane;
use crate::peer::link::Link;
use crate::peer::link::LinkError;
use crate::peer::wire::Rpc;
use crate::raft::types::LogId;
use crate::raft::types::Node;
use crate::raft::types::NodeId;
use crate::raft::types::Snapshot;
use crate::raft::types::SnapshotData;
use crate::raft::types::TypeConfig;
use crate::raft::types::Vote;

mod pipeline;

/// Creates per-peer Raft network clients.
pub struct NetworkFactory {
    peers: PeerClients,
    snapshots: SnapshotMetrics,
}

impl NetworkFactory {
    pub fn new(peers: PeerClients) -> Self {
        let snapshots = SnapshotMetrics::default();
        Self { peers, snapshots }
    }

    /// Records snapshot sends in `snapshots` (the state machine's instruments).
    pub fn with_metrics(self, snapshots: SnapshotMetrics) -> Self {
        Self { snapshots, ..self }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConnection {
        let mut c = PeerConnection::new(target, node, self.peers.clone(), false);
        c.snapshots = self.snapshots.clone();
        c
    }

    async fn new_heartbeat_client(&mut self, target: NodeId, node: &Node) -> PeerConnection {
        PeerConnection::new(target, node, self.peers.clone(), true)
    }
}

/// The Raft RPC client for one peer: its peer link (replication or heartbeat lane); snapshots
/// take the peer's snapshot lane.
pub struct PeerConnection {
    target: NodeId,
    addr: String,
    peers: PeerClients,
    link: Arc<Link>,
    snapshots: SnapshotMetrics,
}

impl PeerConnection {
    fn new(target: NodeId, node: &Node, peers: PeerClients, heartbeat: bool) -> Self {
        let lane = if heartbeat {
            Lane::Heartbeat
        } else {
            Lane::Replication
        };
        Self {
            target,
            addr: node.raft_addr.clone(),
            link: peers.link(target, &node.raft_addr, lane),
            peers,
            snapshots: SnapshotMetrics::default(),
        }
    }

    async fn call<Req, Resp>(
        &self,
        rpc: Rpc,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        self.link
            .call(rpc, req, timeout)
            .await
            .map_err(|e| link_error_to_rpc(self.target, e))
    }
}

/// The timeout of an append of `bytes`: openraft's per-RPC timeout (one heartbeat interval)
/// plus the time to move `bytes` at `APPEND_BYTES_PER_SEC_MIN`, so a large catch-up append is
/// not cut off and resent forever.
fn append_timeout(rpc_timeout: Duration, bytes: usize) -> Duration {
    rpc_timeout + Duration::from_secs_f64(bytes as f64 / APPEND_BYTES_PER_SEC_MIN as f64)
}

/// Cuts `req` to at most `APPEND_BYTES_MAX` encoded, keeping the longest prefix of its entries
/// that fits (always at least one: `limits` makes one valid entry fit). Returns the encoded
/// request and, if entries were cut off, the id of the last entry kept.
fn cut_to_fit(
    mut req: AppendEntriesRequest<TypeConfig>,
) -> Result<(Vec<u8>, Option<LogId>), postcard::Error> {
    let body = postcard::to_stdvec(&req)?;
    if body.len() <= APPEND_BYTES_MAX || req.entries.len() <= 1 {
        return Ok((body, None));
    }
    let entry_bytes = req
        .entries
        .iter()
        .map(postcard::experimental::serialized_size)
        .collect::<Result<Vec<usize>, _>>()?;
    let entries = std::mem::take(&mut req.entries);
    // The entry count's varint may grow when entries are added: count its largest size.
    let header_bytes =
        postcard::experimental::serialized_size(&req)? + crate::limits::varint_len(usize::MAX);
    req.entries = entries;
    let keep = crate::limits::fitting_prefix(header_bytes, &entry_bytes, APPEND_BYTES_MAX);
    req.entries.truncate(keep);
    let last = req.entries.last().map(|e| e.log_id);
    Ok((postcard::to_stdvec(&req)?, last))
}

/// `req` encoded for the link, cut to fit (see [`cut_to_fit`]; a cut is logged): the body and,
/// if entries were cut off, the last entry sent.
fn encode_append(
    target: NodeId,
    req: AppendEntriesRequest<TypeConfig>,
) -> Result<(Vec<u8>, Option<LogId>), RPCError<TypeConfig>> {
    let entries = req.entries.len();
    let (body, cut_at) = cut_to_fit(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
    if let Some(last_sent) = cut_at {
        tracing::debug!(target, entries, last_sent = %last_sent,
            "append over {APPEND_BYTES_MAX} bytes: sent a prefix");
    }
    Ok((body, cut_at))
}

/// A link that could not be opened or was refused counts as unreachable (a refusal is never a
/// vote or an acknowledgement; logged at most once per 5 s); other failures are network errors.
fn link_error_to_rpc(target: NodeId, e: LinkError) -> RPCError<TypeConfig> {
    static LAST_LOG_MS: AtomicU64 = AtomicU64::new(0);
    match &e {
        LinkError::Refused { .. } => {
            if crate::peer::log_gate(&LAST_LOG_MS, 5000) {
                tracing::warn!(target, error = %e, "peer refused our link: treating it as unreachable");
            }
            RPCError::Unreachable(Unreachable::new(&e))
        }
        LinkError::Unreachable { .. } => {
            if crate::peer::log_gate(&LAST_LOG_MS, 5000) {
                tracing::info!(target, error = %e, "raft rpc to a peer failed");
            }
            RPCError::Unreachable(Unreachable::new(&e))
        }
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotData;

    /// Pipelined: see `network/pipeline.rs`.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let stream = pipeline::stream(self.link.clone(), self.target, input, option);
        Box::pin(std::future::ready(Ok(stream)))
    }

    /// Required by the trait, but openraft (at our pin) sends both appends and heartbeats
    /// through `stream_append` above; this one-request form serves any other caller.
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let (body, cut_at) = encode_append(self.target, req)?;
        let timeout = append_timeout(option.hard_ttl(), body.len());
        let resp = self
            .link
            .call_encoded(Rpc::Append, &body, timeout)
            .await
            .map_err(|e| link_error_to_rpc(self.target, e))?;
        // Cut to fit: only the prefix up to `last_sent` was sent, so only it is acknowledged;
        // openraft resumes right after it.
        Ok(match (resp, cut_at) {
            (AppendEntriesResponse::Success, Some(last_sent)) => {
                AppendEntriesResponse::PartialSuccess(Some(last_sent))
            }
            (other, _) => other,
        })
    }

    async fn vote(
        &mut self,
        req: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::Vote, &req, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        req: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::PreVote, &req, option.hard_ttl()).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::TransferLeader, &req, option.hard_ttl())
            .await
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
        let total = snapshot.snapshot.metadata().map_or(0, |m| m.len());
        let (target, started) = (self.target, std::time::Instant::now());
        let mut gate = crate::metrics::progress::Gate::new();
        let progress = move |sent: u64| {
            if gate.due() {
                let percent = crate::metrics::progress::percent(sent, total);
                tracing::info!(
                    target,
                    sent_bytes = sent,
                    total_bytes = total,
                    percent,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "sending snapshot"
                );
            }
        };
        tracing::info!(target = self.target, last_log_id = ?snapshot.meta.last_log_id,
            bytes = total, "sending snapshot");
        let link = self.peers.link(self.target, &self.addr, Lane::Snapshot);
        let send = async {
            crate::peer::snapshot::send(
                &link,
                header,
                snapshot.snapshot,
                option.hard_ttl(),
                progress,
            )
            .await
            .map_err(|e| match link_error_to_rpc(self.target, e) {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                other => StreamingError::Network(NetworkError::from_string(other.to_string())),
            })
        };
        let result = tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = send => result,
        };
        let took_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(_) => {
                self.snapshots.sent_bytes.inc_by(total);
                observe(&self.snapshots.send, started.elapsed());
                tracing::info!(
                    target = self.target,
                    bytes = total,
                    took_ms,
                    "sent snapshot"
                );
            }
            Err(e) => {
                self.snapshots.send_failures.inc();
                tracing::info!(target = self.target, bytes = total, took_ms, error = %e,
                    "sending snapshot failed");
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::Command;
    use crate::raft::types::Entry;
    use openraft::impls::leader_id_adv::LeaderId;

    fn request(values: &[usize]) -> AppendEntriesRequest<TypeConfig> {
        let entries = values
            .iter()
            .enumerate()
            .map(|(i, &bytes)| Entry {
                log_id: LogId::new(
                    LeaderId {
                        term: 3,
                        node_id: 1,
                    },
                    i as u64 + 1,
                ),
                payload: openraft::EntryPayload::Normal(Command::Set {
                    key: format!("k{i}"),
                    value: vec![0; bytes],
                }),
            })
            .collect();
        AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: None,
            leader_commit: None,
            entries,
        }
    }

    #[test]
    fn a_request_within_the_cap_is_sent_whole() {
        let (body, cut) = cut_to_fit(request(&[1000, 1000])).expect("encode");
        assert!(cut.is_none());
        let decoded: AppendEntriesRequest<TypeConfig> =
            postcard::from_bytes(&body).expect("decode");
        assert_eq!(decoded.entries.len(), 2);
    }

    #[test]
    fn an_oversized_request_is_cut_to_its_longest_fitting_prefix() {
        let third = APPEND_BYTES_MAX / 3;
        let (body, cut) = cut_to_fit(request(&[third, third, third, third])).expect("encode");
        assert!(body.len() <= APPEND_BYTES_MAX, "{} bytes", body.len());
        let decoded: AppendEntriesRequest<TypeConfig> =
            postcard::from_bytes(&body).expect("decode");
        // Three thirds plus the encoding overhead do not fit; two do.
        assert_eq!(decoded.entries.len(), 2);
        assert_eq!(cut, Some(decoded.entries[1].log_id));
    }

    #[test]
    fn one_entry_is_always_sent() {
        let (body, cut) = cut_to_fit(request(&[APPEND_BYTES_MAX, 10])).expect("encode");
        let decoded: AppendEntriesRequest<TypeConfig> =
            postcard::from_bytes(&body).expect("decode");
        assert_eq!(decoded.entries.len(), 1);
        assert_eq!(cut, Some(decoded.entries[0].log_id));
    }

    #[test]
    fn large_appends_get_time_for_their_bytes() {
        let base = Duration::from_millis(100);
        assert_eq!(append_timeout(base, 0), base);
        assert_eq!(
            append_timeout(base, APPEND_BYTES_PER_SEC_MIN * 4),
            base + Duration::from_secs(4)
        );
    }
}
