//! etcd's `Cluster` service over raftkv's membership: members are Raft members (id = raftkv's
//! u64 node id, name = the node name, peerURLs = its Raft address, clientURLs = its API
//! address, isLearner = not yet a voter). Changes go through raftkv's own join and remove, with
//! all their safety rules, from any node (a follower relays them to the leader):
//!
//! - `MemberAdd{peerURLs: [URL]}`: raftkv adds a *running* node (the leader handshakes with it
//!   first), so the new node's name and API address are read from its `/status` at that URL
//!   (a node on a shared port, raftd's `-p`); the node must not be a cluster of its own already.
//!   The usual way to add a member stays `raftkv -join`. A permanent learner (`isLearner`) is
//!   refused: a raftkv learner is only a joiner that has not caught up yet.
//! - `MemberRemove{ID}`: raftkv's remove (refused when the quorum would be lost).
//! - `MemberPromote{ID}`: raftkv promotes a learner by itself once it has caught up, so this
//!   answers etcd's "not a learner" or "not in sync" errors, never a change.
//! - `MemberUpdate` (changing a member's peer URLs): `Unimplemented`.

use std::time::Duration;

use etcd_client::proto::PbClusterService;
use etcd_client::proto::PbMember;
use etcd_client::proto::PbMemberAddRequest;
use etcd_client::proto::PbMemberAddResponse;
use etcd_client::proto::PbMemberListRequest;
use etcd_client::proto::PbMemberListResponse;
use etcd_client::proto::PbMemberPromoteRequest;
use etcd_client::proto::PbMemberPromoteResponse;
use etcd_client::proto::PbMemberRemoveRequest;
use etcd_client::proto::PbMemberRemoveResponse;
use etcd_client::proto::PbMemberUpdateRequest;
use etcd_client::proto::PbMemberUpdateResponse;
use serde::Deserialize;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::api::etcd::authorize_admin;
use crate::api::etcd::error::EtcdError;
use crate::api::etcd::header;
use crate::app::App;
use crate::app::SharedApp;
use crate::raft::read::ReadLevel;
use crate::raft::types::Node;
use crate::service::cluster;

/// Bound on reading a new member's `/status` in `MemberAdd`.
const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(3);

pub struct ClusterService {
    app: SharedApp,
}

impl ClusterService {
    pub fn new(app: SharedApp) -> Self {
        Self { app }
    }
}

/// The members as etcd describes them.
pub fn pb_members(app: &App) -> Vec<PbMember> {
    let peer_scheme = app.peers.scheme();
    let client_scheme = app.api_scheme;
    cluster::members(app)
        .into_iter()
        .map(|m| PbMember {
            id: m.id,
            name: m.node.name,
            peer_ur_ls: vec![format!("{peer_scheme}://{}", m.node.raft_addr)],
            client_ur_ls: vec![format!("{client_scheme}://{}", m.node.api_addr)],
            is_learner: !m.voter,
        })
        .collect()
}

fn member_by_id(app: &App, id: u64) -> Result<cluster::Member, EtcdError> {
    cluster::members(app)
        .into_iter()
        .find(|m| m.id == id)
        .ok_or(EtcdError::MemberNotFound)
}

/// `http://host:port` (or `https://`, or a bare `host:port`) → `host:port`.
fn peer_addr(url: &str) -> Result<String, EtcdError> {
    crate::config::normalize_peer_addr(url).map_err(|_| EtcdError::BadUrls)
}

/// What a new member's `/status` tells about it.
#[derive(Deserialize)]
struct Identity {
    id: String,
    api_addr: String,
}

/// Reads the name and API address of the raftkv node at `addr`.
async fn identify(app: &App, addr: &str) -> Result<Identity, EtcdError> {
    let url = format!("{}://{addr}/status", app.peers.scheme());
    let unsupported = |why: String| {
        EtcdError::Unsupported(format!(
            "raftkv: cannot read the new member's /status at {url} ({why}); start the new node \
             with `raftkv -join <a member's address>`, which adds it with the same checks"
        ))
    };
    let answer = app
        .peers
        .get(addr)
        .get(&url)
        .timeout(IDENTIFY_TIMEOUT)
        .send()
        .await
        .map_err(|e| unsupported(crate::peer::client::error_chain(&e)))?;
    if !answer.status().is_success() {
        return Err(unsupported(format!("answer {}", answer.status())));
    }
    answer
        .json::<Identity>()
        .await
        .map_err(|e| unsupported(e.to_string()))
}

impl ClusterService {
    async fn add(&self, request: PbMemberAddRequest) -> Result<PbMemberAddResponse, EtcdError> {
        let app = &self.app;
        if request.is_learner {
            return Err(EtcdError::Unsupported(
                "raftkv: a member cannot be added as a permanent learner; a new member is a \
                 learner only until it has caught up, then raftkv promotes it"
                    .into(),
            ));
        }
        let [url] = request.peer_ur_ls.as_slice() else {
            return Err(EtcdError::BadUrls);
        };
        let addr = peer_addr(url)?;
        if cluster::members(app)
            .iter()
            .any(|m| m.node.raft_addr == addr || m.node.api_addr == addr)
        {
            return Err(EtcdError::PeerUrlExists);
        }
        let found = identify(app, &addr).await?;
        let node = Node {
            name: found.id,
            api_addr: found.api_addr,
            raft_addr: addr,
        };
        let id = crate::raft::types::node_id_from_name(&node.name);
        cluster::join(app, node).await?;
        let members = pb_members(app);
        let member = members.iter().find(|m| m.id == id).cloned();
        Ok(PbMemberAddResponse {
            header: Some(cluster_header(app)),
            member,
            members,
        })
    }

    async fn remove(&self, id: u64) -> Result<PbMemberRemoveResponse, EtcdError> {
        let member = member_by_id(&self.app, id)?;
        cluster::remove(&self.app, &member.node.name).await?;
        Ok(PbMemberRemoveResponse {
            header: Some(cluster_header(&self.app)),
            members: pb_members(&self.app),
        })
    }
}

#[tonic::async_trait]
impl PbClusterService for ClusterService {
    async fn member_add(
        &self,
        request: Request<PbMemberAddRequest>,
    ) -> Result<Response<PbMemberAddResponse>, Status> {
        authorize_admin(&self.app, &request)?;
        Ok(Response::new(self.add(request.into_inner()).await?))
    }

    async fn member_remove(
        &self,
        request: Request<PbMemberRemoveRequest>,
    ) -> Result<Response<PbMemberRemoveResponse>, Status> {
        authorize_admin(&self.app, &request)?;
        Ok(Response::new(self.remove(request.into_inner().id).await?))
    }

    async fn member_update(
        &self,
        _request: Request<PbMemberUpdateRequest>,
    ) -> Result<Response<PbMemberUpdateResponse>, Status> {
        Err(EtcdError::Unimplemented("Cluster.MemberUpdate").into())
    }

    async fn member_list(
        &self,
        request: Request<PbMemberListRequest>,
    ) -> Result<Response<PbMemberListResponse>, Status> {
        if request.get_ref().linearizable {
            crate::raft::read::read_barrier(&self.app, ReadLevel::Linearizable)
                .await
                .map_err(EtcdError::from)?;
        }
        Ok(Response::new(PbMemberListResponse {
            header: Some(cluster_header(&self.app)),
            members: pb_members(&self.app),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        let member = member_by_id(&self.app, request.get_ref().id)?;
        let refusal = if member.voter {
            EtcdError::NotLearner
        } else {
            EtcdError::LearnerNotReady
        };
        Err(refusal.into())
    }
}

/// etcd's Cluster service answers headers without a revision (its cluster server fills only
/// cluster id, member id and raft term), and etcdctl prints what it gets.
fn cluster_header(app: &crate::app::App) -> etcd_client::proto::PbResponseHeader {
    etcd_client::proto::PbResponseHeader {
        revision: 0,
        ..header(app)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_become_addresses() {
        assert_eq!(
            peer_addr("http://127.0.0.1:2380").ok().as_deref(),
            Some("127.0.0.1:2380")
        );
        assert_eq!(
            peer_addr("https://localhost:12000/").ok().as_deref(),
            Some("localhost:12000")
        );
        assert!(matches!(peer_addr("http://"), Err(EtcdError::BadUrls)));
    }
}
