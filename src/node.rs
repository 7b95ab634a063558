//! The one wiring place: open the stores, build Raft, bind the listeners, bootstrap or join,
//! serve until shutdown.
//!
//! DATA_DIR layout: `node-name` (this node's stable name), `raft-log/` (the WAL: vote, entries,
//! committed id), `snapshots/` (state machine snapshots; snapshots being received are unnamed files there).

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use openraft::SnapshotPolicy;
use tokio::net::TcpListener;

use crate::app::App;
use crate::config::Config;
use crate::raft::forward_batch::ForwardBatcher;
use crate::raft::network::NetworkFactory;
use crate::raft::network::PeerClients;
use crate::raft::types::Node;
use crate::raft::types::Raft;
use crate::raft::types::node_id_from_name;
use crate::store::error::StoreError;
use crate::store::log::LogStore;
use crate::store::state_machine::StateMachineStore;

const NODE_NAME_FILE: &str = "node-name";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("data dir {dir} belongs to node {stored:?}, but -id says {requested:?}")]
    NameMismatch {
        dir: String,
        stored: String,
        requested: String,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("invalid Raft configuration: {0}")]
    RaftConfig(String),
    #[error("Raft failed: {0}")]
    Raft(String),
}

/// Runs a node until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let data_dir = &config.data_dir;
    let io_err = |source| StoreError::Io {
        path: data_dir.clone(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(io_err)?;

    let name = load_or_create_name(data_dir, config.node_name.as_deref())?;
    let node_id = node_id_from_name(&name);
    let me = Node {
        name,
        api_addr: config.http.advertise.clone(),
        raft_addr: config.raft_advertise().to_string(),
    };
    tracing::info!(node = %me, node_id, data_dir = %data_dir.display(), "starting raftkv node");

    let log_store = LogStore::open(&data_dir.join("raft-log"), Some(config.flush_batch_wait))?;
    let state_machine = StateMachineStore::open(&data_dir.join("snapshots"))?;

    let heartbeat_ms = u64::try_from(config.heartbeat_interval.as_millis()).unwrap_or(100);
    let raft_config = openraft::Config {
        cluster_name: "raftkv".to_string(),
        heartbeat_interval: heartbeat_ms,
        election_timeout_min: heartbeat_ms * 5,
        election_timeout_max: heartbeat_ms * 10,
        // A whole snapshot is streamed in one RPC: allow it time.
        install_snapshot_timeout: 120_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
        max_in_snapshot_log_to_keep: config.snapshot_every.min(1000),
        enable_pre_vote: Some(true),
        // A restarted leader must win a new election (in a new term) before serving. A leader
        // may commit an entry on its followers' acks before its own log write is on disk; killed
        // and restored as leader in the same term, it would lack that committed entry, serve
        // stale reads and reuse its log id for another entry (found by the chaos tests; see
        // tests/chaos/regressions.rs and openraft#1511).
        enable_leader_restore: Some(false),
        ..Default::default()
    }
    .validate()
    .map_err(|e| NodeError::RaftConfig(e.to_string()))?;

    let peers = PeerClients::new(config.source_ip);
    let raft = Raft::new(
        node_id,
        Arc::new(raft_config),
        NetworkFactory::new(peers.clone()),
        log_store,
        state_machine.clone(),
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?;

    let app = Arc::new(App {
        raft: raft.clone(),
        state_machine,
        node_id,
        me,
        forwarder: ForwardBatcher::new(peers.clone(), config.request_timeout),
        peers,
        request_timeout: config.request_timeout,
        max_value_bytes: config.max_value_bytes,
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    let mut endpoints = vec![("http", config.http.bind.clone())];
    if let Some(raft_endpoint) = &config.raft {
        endpoints.push(("raft", raft_endpoint.bind.clone()));
    }
    for (kind, addr) in endpoints {
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| NodeError::Bind {
                addr: addr.clone(),
                source,
            })?;
        tracing::info!(kind, addr = %addr, "listening");
        let router = crate::http::router(app.clone());
        let mut stop = stop_rx.clone();
        servers.push(tokio::spawn(async move {
            let graceful = async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(graceful)
                .await
            {
                tracing::error!(kind, error = %e, "server failed");
            }
        }));
    }

    let bootstrap_app = app.clone();
    let join = config.join.clone();
    let bootstrap = tokio::spawn(async move {
        if let Err(e) = crate::cluster::bootstrap(&bootstrap_app, join.as_deref()).await {
            tracing::error!(error = %e, "bootstrap failed");
        }
    });

    shutdown.await;
    tracing::info!("shutting down");
    bootstrap.abort();
    let _ = stop_tx.send(true);
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    for server in servers {
        let _ = server.await;
    }
    Ok(())
}

/// Returns this node's name: the one stored in the data dir, else `requested`, else a new random
/// one; stores it durably on first start (must be on disk before the node joins any cluster).
fn load_or_create_name(data_dir: &Path, requested: Option<&str>) -> Result<String, NodeError> {
    let path = data_dir.join(NODE_NAME_FILE);
    match std::fs::read_to_string(&path) {
        Ok(stored) => {
            let stored = stored.trim().to_string();
            match requested {
                Some(r) if r != stored => Err(NodeError::NameMismatch {
                    dir: data_dir.display().to_string(),
                    stored,
                    requested: r.to_string(),
                }),
                _ => Ok(stored),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let name = requested.map_or_else(random_name, str::to_string);
            let io_err = |source| StoreError::Io {
                path: path.clone(),
                source,
            };
            let tmp = data_dir.join(format!("{NODE_NAME_FILE}.tmp"));
            let mut file = std::fs::File::create(&tmp).map_err(io_err)?;
            file.write_all(name.as_bytes()).map_err(io_err)?;
            // Must be fsync'd before the rename publishes it, and the dir fsync'd after.
            file.sync_all().map_err(io_err)?;
            std::fs::rename(&tmp, &path).map_err(io_err)?;
            std::fs::File::open(data_dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err)?;
            Ok(name)
        }
        Err(source) => Err(StoreError::Open { path, source }.into()),
    }
}

/// `node-` + 8 hex digits, from the process's random hasher keys and the clock.
fn random_name() -> String {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let hash = std::collections::hash_map::RandomState::new().hash_one((nanos, std::process::id()));
    format!("node-{:08x}", hash as u32)
}
