//! The HTTP API: every public route in one place (JSON; errors always JSON). The internal
//! node-to-node routes live in `peer/server.rs`; [`router`] adds them when the public port is
//! also the Raft port (raftd's one `-p`), and `node.rs` serves them alone on `-raddr` otherwise.

pub mod admin;
pub mod db;
pub mod drain;
pub mod error;
pub mod health;
pub mod keys;
pub mod leader;
pub mod snapshot;
pub mod ui;
pub mod versions;
pub mod watch;

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::http::HeaderName;
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::routing::post;
use serde::Deserialize;

use crate::app::App;
use crate::app::SharedApp;
use crate::error::KvError;
use crate::metrics::http::TrackLayer;
use crate::raft::forward::WriteOk;
use crate::raft::read::ReadLevel;

/// The public router; with `with_peer_routes` the internal routes are served on it too.
pub fn router(app: SharedApp, with_peer_routes: bool) -> Router {
    let for_layers = process_app(&app);
    let admin = Router::new()
        .route("/join", post(admin::join))
        .route("/remove", post(admin::remove))
        .route("/leader", post(leader::transfer))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            admin::guard,
        ));
    let public = Router::new()
        .route(
            "/db/",
            get(db::empty_key)
                .post(db::empty_key)
                .put(db::empty_key)
                .delete(db::empty_key),
        )
        .route("/db", get(versions::list))
        .route(
            "/db/{*key}",
            get(db::get).post(db::put).put(db::put).delete(db::delete),
        )
        .route("/key", post(keys::set))
        .route("/key/", get(db::empty_key).delete(db::empty_key))
        .route("/key/{*key}", get(keys::get).delete(db::delete))
        .route("/watch", get(watch::events))
        .route("/status", get(admin::status))
        // A backup exports all data: the admin rule of /join (see http/snapshot.rs).
        .route(
            "/snapshot",
            get(snapshot::get).route_layer(axum::middleware::from_fn_with_state(
                app.clone(),
                admin::guard,
            )),
        )
        .route("/status/cluster", get(ui::cluster_status))
        .route("/", get(ui::page))
        .route("/ui", get(ui::page))
        // Health answers even while draining (it says why it is not ready).
        .route_layer(drain::DrainLayer::new(&for_layers.lifecycle))
        .route("/metrics", get(crate::metrics::http::scrape))
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/health", get(health::health));
    let public = if with_peer_routes {
        // The peer router carries its own guarded copy of /join and /remove.
        public.merge(crate::peer::server::routes(app.clone()))
    } else {
        public.merge(admin)
    };
    let track = TrackLayer::new(&for_layers.metrics);
    public
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(track)
        .with_state(app)
}

/// The node's `App` for as long as the process lives: the per-request layers hold `&'static`
/// references into it instead of `Arc` clones (see `drain.rs`). One `Arc` is leaked per router
/// built (one or two per node; a few in tests).
fn process_app(app: &SharedApp) -> &'static App {
    let leaked: &'static SharedApp = Box::leak(Box::new(app.clone()));
    leaked
}

/// The router of a separate Raft listener (`-raddr`): internal routes only.
pub fn peer_router(app: SharedApp) -> Router {
    let track = TrackLayer::new(&process_app(&app).metrics);
    crate::peer::server::routes(app.clone())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(track)
        .with_state(app)
}

/// `?level=stale|linearizable` on reads.
#[derive(Debug, Deserialize, Default)]
pub struct ReadParams {
    #[serde(default)]
    level: Option<String>,
    /// `?revision=<r>`: read the key as of revision `r` (history; 0 or absent: now).
    #[serde(default)]
    pub revision: i64,
    /// `?wait=<rev>`: a long poll — answer once the key changed after `rev` (`watch.rs`).
    #[serde(default)]
    pub wait: Option<i64>,
    /// `&timeout=30s`: how long a long poll waits at most.
    #[serde(default)]
    pub timeout: Option<String>,
}

impl ReadParams {
    pub fn level(&self) -> Result<ReadLevel, KvError> {
        ReadLevel::parse(self.level.as_deref().unwrap_or(""))
    }
}

/// Rejects keys clients cannot address or that are unreasonably long (the leader checks again
/// before proposing, see `limits::check_command`).
pub fn validate_key(key: &str) -> Result<(), KvError> {
    crate::limits::check_key(key)
}

/// Reads `key` at the consistency level the request asks for; `NotFound` if absent.
pub async fn read_value(
    app: &App,
    key: &str,
    params: &ReadParams,
) -> Result<crate::mvcc::KeyValue, KvError> {
    validate_key(key)?;
    if params.revision != 0 {
        return versions::read_at(app, key, params.revision, params.level()?).await;
    }
    crate::raft::read::read_barrier(app, params.level()?).await?;
    app.state_machine.get(key).ok_or(KvError::NotFound)
}

/// Reads a request body of at most `limit` bytes, answering 413 above it.
pub async fn read_limited(body: Body, limit: usize, what: &str) -> Result<Bytes, KvError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // axum reports an over-limit body as a `LengthLimitError` source.
        let over_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over_limit {
            KvError::TooLarge {
                what: what.to_string(),
                size: limit + 1,
                limit,
            }
        } else {
            KvError::BadRequest(format!("cannot read {what}: {e}"))
        }
    })
}

/// `X-Raft-Revision`: the store's revision after a write, a read key's `mod_revision`.
pub static X_RAFT_REVISION: HeaderName = HeaderName::from_static("x-raft-revision");
/// `X-Raft-Index`: the Raft log index a write was committed at.
pub static X_RAFT_INDEX: HeaderName = HeaderName::from_static("x-raft-index");
/// `X-Raft-Lease`: the lease a `?ttl=` write attached (hex, as etcdctl writes lease ids).
pub static X_RAFT_LEASE: HeaderName = HeaderName::from_static("x-raft-lease");

/// A successful write: 200 with an empty body (as raftd/hraftd), the commit index and the
/// store's new revision in headers.
pub fn write_response(ok: &WriteOk) -> Response {
    let mut response = ().into_response();
    let headers = response.headers_mut();
    headers.insert(X_RAFT_INDEX.clone(), HeaderValue::from(ok.index));
    headers.insert(
        X_RAFT_REVISION.clone(),
        HeaderValue::from(ok.response.revision),
    );
    response
}

/// A read's headers: the key's `mod_revision` as `X-Raft-Revision` and as the `ETag`.
pub fn revision_headers(response: &mut Response, mod_revision: i64) {
    let headers = response.headers_mut();
    headers.insert(X_RAFT_REVISION.clone(), HeaderValue::from(mod_revision));
    let etag = Bytes::from(format!("\"{mod_revision}\""));
    if let Ok(v) = HeaderValue::from_maybe_shared(etag) {
        headers.insert(axum::http::header::ETAG, v);
    }
}
