//! Outbound node-to-node requests: the peer links (`link.rs`) that carry the Raft RPCs and the
//! forwarded client traffic (and snapshots), and one pooled HTTP client per peer address for the
//! rest (joining handshake, membership and status routes): the identity headers on every HTTP
//! request, and TLS with this node's peer certificate when peer TLS is configured.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::metrics::peer::LinkMetrics;
use crate::peer::features::PeerFeatures;
use crate::peer::identity::HEADER_CLUSTER;
use crate::peer::identity::HEADER_FROM;
use crate::peer::identity::HEADER_TO;
use crate::peer::identity::Identity;
use crate::peer::link::Dialer;
use crate::peer::link::Lane;
use crate::peer::link::Link;
use crate::peer::link::Links;
use crate::raft::types::NodeId;

/// Content type of postcard bodies.
pub const POSTCARD: &str = "application/x-postcard";
/// Route prefix of the internal (node-to-node) API.
pub const RAFT_PREFIX: &str = "/raft";
/// Bound on establishing a connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The pooled clients of this node, shared by Raft replication, forwarding and joining.
#[derive(Clone)]
pub struct PeerClients {
    clients: Arc<Mutex<HashMap<String, reqwest::Client>>>,
    source_ip: Option<std::net::IpAddr>,
    identity: Arc<Identity>,
    /// TLS for peer links (present our peer certificate, trust the peer CA); `None` = plain HTTP.
    tls: Option<Arc<rustls::ClientConfig>>,
    links: Arc<Links>,
    features: Arc<PeerFeatures>,
}

impl PeerClients {
    /// Outgoing connections are bound to `source_ip` when given.
    pub fn new(
        source_ip: Option<std::net::IpAddr>,
        identity: Arc<Identity>,
        tls: Option<Arc<rustls::ClientConfig>>,
        link_metrics: Arc<LinkMetrics>,
    ) -> Self {
        let features = Arc::new(PeerFeatures::default());
        let links = Links::new(
            Dialer {
                source_ip,
                identity: identity.clone(),
                tls: tls.clone().map(tokio_rustls::TlsConnector::from),
                features: features.clone(),
            },
            link_metrics,
        );
        Self {
            clients: Arc::default(),
            source_ip,
            identity,
            tls,
            links: Arc::new(links),
            features,
        }
    }

    /// What each peer said it can do when a link to it last opened.
    pub fn features(&self) -> &Arc<PeerFeatures> {
        &self.features
    }

    /// The peer link to node `to` at `addr` on `lane`.
    pub fn link(&self, to: NodeId, addr: &str, lane: Lane) -> Arc<Link> {
        self.links.get(to, addr, lane)
    }

    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    /// `https` with peer TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The pooled client for `addr`.
    pub fn get(&self, addr: &str) -> reqwest::Client {
        let mut map = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(addr.to_string())
            .or_insert_with(|| self.build())
            .clone()
    }

    fn build(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .local_address(self.source_ip);
        if let Some(tls) = &self.tls {
            builder = builder.use_preconfigured_tls((**tls).clone());
        }
        builder.build().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot build a peer client; using defaults");
            reqwest::Client::new()
        })
    }

    /// A POST of the internal API `path` (e.g. `hello`) to the node `to` at `addr`, carrying
    /// the identity headers.
    pub fn post_raft(&self, addr: &str, to: NodeId, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}://{addr}{RAFT_PREFIX}/{path}", self.scheme());
        self.get(addr)
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, POSTCARD)
            .header(
                HEADER_CLUSTER,
                self.identity.cluster_id().unwrap_or_default(),
            )
            .header(HEADER_FROM, self.identity.node_id.to_string())
            .header(HEADER_TO, to.to_string())
    }

    /// A POST of an admin route (`join`, `remove`) to a member at `addr` whose node id is not
    /// known (a `-join` target): authenticated by the connection (peer TLS or loopback).
    pub fn post_admin(&self, addr: &str, route: &str) -> reqwest::RequestBuilder {
        let url = format!("{}://{addr}/{route}", self.scheme());
        self.get(addr).post(url)
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

/// An error with its causes (`a: b: c`): reqwest's own message hides why a TLS connection
/// failed (an unknown issuer, a name the certificate does not cover).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
