//! The one wiring place: open the stores, build Raft, bind the listeners, bootstrap or join,
//! serve until shutdown.
//!
//! DATA_DIR layout: `node-name` (this node's stable name), `cluster-id` (the cluster it belongs
//! to, once it does), `raft-log/` (the WAL: vote, entries, committed id), `snapshots/` (state
//! machine snapshots; snapshots being received are unnamed files there).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use openraft::SnapshotPolicy;
use openraft::async_runtime::watch::WatchReceiver;
use tokio::net::TcpListener;

use crate::serve::ServeLimits;

use crate::app::App;
use crate::config::Config;
use futures::FutureExt;

use crate::peer::auth::PeerAuth;
use crate::peer::client::PeerClients;
use crate::peer::identity::Identity;
use crate::raft::forward_batch::ForwardBatcher;
use crate::raft::network::NetworkFactory;
use crate::raft::types::Node;
use crate::raft::types::Raft;
use crate::raft::types::node_id_from_name;
use crate::store::error::StoreError;
use crate::store::log::LogStore;
use crate::store::small_file;
use crate::store::state_machine::StateMachineStore;
use crate::tls::NodeTls;

pub const NODE_NAME_FILE: &str = "node-name";

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
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("Raft failed: {0}")]
    Raft(String),
    #[error(
        "data dir {0} holds cluster state but no cluster-id file: it was written by an older \
         raftkv without peer identity; start this node with a new data dir and join it again"
    )]
    NoClusterId(String),
    #[error(
        "data dir {dir} has data format {found:?}; this raftkv reads and writes format \
         {DATA_FORMAT} (nothing was changed): use the raftkv version that wrote it"
    )]
    DataFormat { dir: String, found: String },
    /// The Raft core stopped on its own (a storage or fatal error): fail-stop.
    #[error("the Raft core stopped: {0}; exiting instead of serving from a stopped node")]
    Fatal(String),
}

/// Runs a node until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let started = std::time::Instant::now();
    // TLS files first: a bad certificate must stop the node before it touches its data dir.
    let tls = NodeTls::load(config.peer_tls.as_ref(), config.client_tls.as_ref())?;
    let shared_port = config.raft.is_none();
    let public_acceptor = tls.public_acceptor(shared_port)?;
    let peer_acceptor = tls.peer_acceptor()?;

    let data_dir = &config.data_dir;
    let io_err = |source| StoreError::Io {
        path: data_dir.clone(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(io_err)?;

    check_data_format(data_dir)?;
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
    let wal = log_store.clone(); // flushed once more at a graceful shutdown

    let heartbeat_ms = u64::try_from(config.heartbeat_interval.as_millis()).unwrap_or(100);
    let raft_config = openraft::Config {
        cluster_name: "raftkv".to_string(),
        heartbeat_interval: heartbeat_ms,
        election_timeout_min: heartbeat_ms * 5,
        election_timeout_max: heartbeat_ms * 10,
        // A whole snapshot is streamed in one RPC: allow it time.
        install_snapshot_timeout: 120_000,
        // Snapshots are triggered by `raft::snapshot_policy` (entries and store size).
        snapshot_policy: SnapshotPolicy::Never,
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

    let identity = Arc::new(Identity::open(data_dir, node_id, me.name.clone())?);
    let link_metrics = Arc::new(crate::metrics::peer::LinkMetrics::default());
    let peers = PeerClients::new(
        config.source_ip,
        identity.clone(),
        tls.peer_client(),
        link_metrics.clone(),
    );
    let peer_auth = peer_auth(&config, &tls);
    let (snapshot_metrics, mvcc_metrics) = state_machine.metrics();
    let wal_metrics = log_store.metrics();
    let recovery =
        crate::metrics::progress::Recovery::begin(started, &log_store, &state_machine).await;
    // The replay must be marked before `Raft::new` applies it, and the listeners (so every
    // watcher) must start after it returns: a watcher's revisions from the replay then come
    // from the store's history, never from a feed that skipped them (see
    // `StateMachineStore::replay_quietly_through`; test in `store/state_machine/tests.rs`).
    if let Some(committed) = recovery.replay_through() {
        state_machine.replay_quietly_through(committed);
    }
    let raft = Raft::new(
        node_id,
        Arc::new(raft_config),
        NetworkFactory::new(peers.clone()).with_metrics(snapshot_metrics.clone()),
        log_store,
        state_machine.clone(),
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?;
    recovery.replayed(&state_machine);
    let metrics = Arc::new(crate::metrics::Metrics::new(crate::metrics::Sources {
        raft: raft.clone(),
        wal: wal_metrics,
        snapshots: snapshot_metrics,
        mvcc: mvcc_metrics,
        links: link_metrics,
        log_dir: data_dir.join("raft-log"),
        snapshot_dir: data_dir.join("snapshots"),
    }));
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    if initialized && identity.cluster_id().is_none() {
        let _ = raft.shutdown().await;
        return Err(NodeError::NoClusterId(data_dir.display().to_string()));
    }
    if let Some(cluster_id) = identity.cluster_id() {
        tracing::info!(cluster_id, "member of cluster");
    }

    // Gathering (`raft::batch_queue`): the leader's batches and a follower's forwarded ones.
    let gather = crate::raft::batch_queue::GatherConfig {
        wait: config.write_gather,
        holds_filled: metrics.write_holds_filled.clone(),
        holds_expired: metrics.write_holds_expired.clone(),
    };
    let app = Arc::new(App {
        raft: raft.clone(),
        state_machine,
        node_id,
        me,
        forwarder: ForwardBatcher::new(peers.clone(), config.request_timeout, gather.clone()),
        proposer: crate::raft::propose::Proposer::new(crate::raft::propose::ProposerConfig {
            raft: raft.clone(),
            node_id,
            request_timeout: config.request_timeout,
            failed: metrics.proposals_failed.clone(),
            batches: metrics.write_batches.clone(),
            batched: metrics.batched_writes.clone(),
            value_bytes_max: config.max_value_bytes,
            batching: config.write_batching,
            gather: gather.clone(),
            features: peers.features().clone(),
        }),
        peers,
        request_timeout: config.request_timeout,
        max_value_bytes: config.max_value_bytes,
        peer_auth,
        join_timeout: config.join_timeout,
        heartbeat_interval: config.heartbeat_interval,
        membership_lock: tokio::sync::Mutex::new(()),
        data_dir: data_dir.clone(),
        api_scheme: if public_acceptor.is_some() {
            "https"
        } else {
            "http"
        },
        lifecycle: crate::shutdown::Lifecycle::default(),
        watch_progress_interval: config.watch_progress_interval,
        http_watches: Default::default(),
        lessor: Default::default(),
        metrics: metrics.clone(),
        raft_metrics: raft.metrics(),
    });
    let leader_watch = tokio::spawn(crate::metrics::raft::watch_leader_changes(
        raft.clone(),
        metrics.leader_changes.clone(),
    ));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    let (server_exit_tx, mut server_exit_rx) = tokio::sync::mpsc::unbounded_channel();
    // With -raddr the internal routes are served only there; with one port both share it.
    // Peer links are served where the internal routes are: on the Raft listener with -raddr,
    // else on the shared port.
    let links = link_handler(app.clone());
    let mut endpoints = vec![(
        "http",
        config.http.bind.clone(),
        // etcd's gRPC API shares the public port, dispatched by content type.
        crate::api::etcd::with_grpc(app.clone(), crate::http::router(app.clone(), shared_port)),
        public_acceptor,
        shared_port.then(|| links.clone()),
    )];
    if let Some(raft_endpoint) = &config.raft {
        endpoints.push((
            "raft",
            raft_endpoint.bind.clone(),
            crate::api::etcd::Dispatch::http_only(crate::http::peer_router(app.clone())),
            peer_acceptor,
            Some(links),
        ));
    }
    let limits = ServeLimits {
        connections_max: config.connections_max,
        ..ServeLimits::default()
    };
    for (kind, addr, router, acceptor, links) in endpoints {
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| NodeError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        tracing::info!(kind, addr = %addr, scheme, "listening");
        let mut stop = stop_rx.clone();
        let exited = server_exit_tx.clone();
        servers.push(tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            };
            let serving =
                crate::serve::serve(kind, listener, router, acceptor, links, limits, stopped);
            // A listener is essential: its end (even by a panic) must stop the node.
            let outcome = std::panic::AssertUnwindSafe(serving).catch_unwind().await;
            let why = match outcome {
                Ok(()) => "stopped".to_string(),
                Err(panic) => format!("panicked: {}", panic_text(panic.as_ref())),
            };
            let _ = exited.send((kind, why));
        }));
    }

    recovery.serving();
    let compactor = tokio::spawn(crate::compaction::run(app.clone(), config.auto_compaction));
    let snapshots = tokio::spawn(crate::raft::snapshot_policy::run(
        app.clone(),
        config.snapshot_every,
    ));
    let lease_expiry = tokio::spawn(crate::service::lease::run_expiry(app.clone()));
    let bootstrap_app = app.clone();
    let join = config.join.clone();
    let bootstrap = tokio::spawn(async move {
        if let Err(e) = crate::cluster::bootstrap(&bootstrap_app, join.as_deref()).await {
            tracing::error!(error = %e, "bootstrap failed");
        }
    });

    // Fail-stop: a Raft core that stopped on its own (storage error, fatal error) must not keep
    // serving reads or status; the node exits non-zero instead.
    let outcome = tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
        reason = core_stopped(&raft) => {
            tracing::error!(reason = %reason, "the Raft core stopped: exiting");
            Err(NodeError::Fatal(reason))
        }
        Some((kind, why)) = server_exit_rx.recv() => {
            let reason = format!("the {kind} listener {why}");
            tracing::error!(reason = %reason, "an essential task ended: exiting");
            Err(NodeError::Fatal(reason))
        }
    };
    bootstrap.abort();
    compactor.abort();
    snapshots.abort();
    lease_expiry.abort();
    leader_watch.abort();
    let graceful = outcome.is_ok();
    let stopping = std::time::Instant::now();
    if graceful {
        // Hand-off, then drain (see shutdown.rs); the listeners stop in between.
        crate::shutdown::hand_off_and_drain(&app, || {
            let _ = stop_tx.send(true);
        })
        .await;
    }
    let _ = stop_tx.send(true);
    let step = std::time::Instant::now();
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    if graceful {
        tracing::info!(
            took_ms = step.elapsed().as_millis(),
            "shutdown step 4/5: Raft stopped"
        );
        // Must come after raft.shutdown(): no append may follow the final flush.
        if let Err(source) = crate::shutdown::flush_log(&wal).await {
            let path = wal.dir().to_path_buf();
            return Err(StoreError::Io { path, source }.into());
        }
        tracing::info!(
            took_ms = stopping.elapsed().as_millis(),
            "shutdown complete: exiting 0"
        );
    }
    for server in servers {
        let _ = server.await;
    }
    outcome
}

/// The accept loop's handler of peer links (`peer::link_server`).
fn link_handler(app: crate::app::SharedApp) -> crate::serve::LinkHandler {
    std::sync::Arc::new(move |io, info, limits| {
        Box::pin(crate::peer::link_server::serve(
            app.clone(),
            io,
            info,
            limits,
        ))
    })
}

/// The message of a panic payload.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

/// How peers are authenticated, logged once at start: peer TLS, protected mode (the default),
/// or `--insecure-peers` (warned about). The CLI refuses peer TLS with `--insecure-peers`.
fn peer_auth(config: &Config, tls: &NodeTls) -> PeerAuth {
    let public = tls.public_mode(config.raft.is_none());
    if let Some(peer) = &tls.peer {
        tracing::info!(public_api = public, "{}", tls.peer_mode());
        return PeerAuth::Tls(peer.verifier.clone());
    }
    if config.insecure_peers {
        tracing::warn!(
            public_api = public,
            "--insecure-peers: the internal and membership routes answer anyone who can reach \
             this node's ports; use only on a network where every host is trusted"
        );
        PeerAuth::Insecure
    } else {
        tracing::info!(
            public_api = public,
            "protected mode: the internal and membership routes answer loopback callers only \
             (configure peer TLS to run nodes on several machines)"
        );
        PeerAuth::LoopbackOnly
    }
}

/// Resolves when the Raft core has stopped without being asked to, with the reason.
///
/// Waits on `server_metrics()`, whose sender openraft's core owns and drops when its task
/// ends (after a fatal error too), rather than on `metrics()`, which is sent after every
/// flush; the reason is then read from `metrics().running_state`, set before the core ends.
async fn core_stopped(raft: &Raft) -> String {
    let mut server = raft.server_metrics();
    while server.changed().await.is_ok() {}
    match &raft.metrics().borrow_watched().running_state {
        Err(fatal) => fatal.to_string(),
        Ok(()) => "the Raft core's metrics channel closed".to_string(),
    }
}

/// The data dir format this build reads and writes, kept in `DATA_DIR/format`: 2 = the
/// multi-version store (log entries with the etcd commands, snapshot format 2). Format 1 data
/// dirs (no `format` file, no `cluster-id`) are refused by the cluster-id check and the
/// snapshot reader.
pub const DATA_FORMAT: &str = "2";
pub const DATA_FORMAT_FILE: &str = "format";

/// Refuses a data dir of another format; records ours in a new one. Must run before the log and
/// the snapshots are opened: nothing of a foreign format may be read or written.
fn check_data_format(data_dir: &Path) -> Result<(), NodeError> {
    match small_file::read(data_dir, DATA_FORMAT_FILE)? {
        Some(found) if found.trim() == DATA_FORMAT => Ok(()),
        Some(found) => Err(NodeError::DataFormat {
            dir: data_dir.display().to_string(),
            found: found.trim().to_string(),
        }),
        None => {
            small_file::write(data_dir, DATA_FORMAT_FILE, DATA_FORMAT)?;
            Ok(())
        }
    }
}

/// Returns this node's name: the one stored in the data dir, else `requested`, else a new random
/// one; stores it durably on first start (must be on disk before the node joins any cluster).
fn load_or_create_name(data_dir: &Path, requested: Option<&str>) -> Result<String, NodeError> {
    match small_file::read(data_dir, NODE_NAME_FILE)? {
        Some(stored) => match requested {
            Some(r) if r != stored => Err(NodeError::NameMismatch {
                dir: data_dir.display().to_string(),
                stored,
                requested: r.to_string(),
            }),
            _ => Ok(stored),
        },
        None => {
            let name = requested.map_or_else(
                || format!("node-{}", &small_file::random_hex(1)[..8]),
                str::to_string,
            );
            small_file::write(data_dir, NODE_NAME_FILE, &name)?;
            Ok(name)
        }
    }
}
