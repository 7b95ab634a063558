//! Watching over plain HTTP, curl-friendly, on the same [`Watcher`] as etcd's Watch:
//!
//! - `GET /watch?prefix=<p>` (or `?key=<k>`) `&from=<rev>` `&prev_kv=true`: a stream of
//!   server-sent events, one per revision (`id:` the revision, `data:` a JSON object with the
//!   revision and its events), so an `EventSource` that reconnects with `Last-Event-ID`
//!   resumes right after the last revision it got — exactly once across reconnects. A start
//!   below the compacted revision gets one `event: compacted` and the stream ends. A comment
//!   line every [`KEEP_ALIVE`] keeps idle connections (and their proxies) open.
//! - `GET /db/<key>?wait=<rev>&timeout=30s`: a long poll, answered like a plain `GET` once the
//!   key changes after `rev` (its new value, or `404` if it was deleted), or at the timeout
//!   with the current value.
//!
//! Limits: at most [`HTTP_WATCHES_MAX`] event streams and long polls open on a node (more get
//! `503`), a long poll waits at most [`LONG_POLL_TIMEOUT_MAX`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::response::sse::Event;
use axum::response::sse::KeepAlive;
use axum::response::sse::Sse;
use futures::Stream;
use serde::Deserialize;
use serde_json::Value;
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;

use crate::app::App;
use crate::app::SharedApp;
use crate::error::KvError;
use crate::http::error::ApiError;
use crate::mvcc::Change;
use crate::mvcc::ChangeKind;
use crate::service::watch::Update;
use crate::service::watch::WatchSpec;
use crate::service::watch::Watcher;

/// Event streams and long polls open at once on one node.
pub const HTTP_WATCHES_MAX: usize = 10_000;
/// The longest `timeout` a long poll may ask for.
pub const LONG_POLL_TIMEOUT_MAX: Duration = Duration::from_secs(300);
/// A long poll's timeout when the request names none.
pub const LONG_POLL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// How often an idle event stream sends a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The open HTTP watches of one node (held in `App`).
#[derive(Debug)]
pub struct HttpWatches(Arc<Semaphore>);

impl Default for HttpWatches {
    fn default() -> Self {
        HttpWatches(Arc::new(Semaphore::new(HTTP_WATCHES_MAX)))
    }
}

impl HttpWatches {
    fn admit(&self) -> Result<OwnedSemaphorePermit, KvError> {
        self.0.clone().try_acquire_owned().map_err(|_| {
            KvError::Busy(format!(
                "too many open watches on this node (at most {HTTP_WATCHES_MAX})"
            ))
        })
    }
}

#[derive(Debug, Deserialize, Default)]
pub struct WatchParams {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    /// The first revision to send (0 or absent: the next one written).
    #[serde(default)]
    from: i64,
    #[serde(default)]
    prev_kv: bool,
}

/// `GET /watch`: see the module docs.
pub async fn events(
    State(app): State<SharedApp>,
    Query(params): Query<WatchParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let permit = app.http_watches.admit()?;
    let (key, range_end) = match (&params.key, &params.prefix) {
        (Some(k), None) => {
            crate::limits::check_key(k)?;
            (k.as_bytes().to_vec(), Vec::new())
        }
        (None, Some(p)) => (p.as_bytes().to_vec(), crate::mvcc::prefix_end(p.as_bytes())),
        _ => {
            return Err(KvError::BadRequest(
                "give one of ?key=<key> or ?prefix=<prefix> (an empty prefix watches every key)"
                    .into(),
            )
            .into());
        }
    };
    let from = match last_event_id(&headers)? {
        Some(last) => last + 1,
        None => params.from,
    };
    let spec =
        WatchSpec::new(&key, &range_end, from).map_err(|e| KvError::BadRequest(e.to_string()))?;
    let watcher = Watcher::new(&app.state_machine, spec);
    let stream = sse_stream(watcher, params.prev_kv, permit);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// The revision in an `EventSource` reconnect's `Last-Event-ID`.
fn last_event_id(headers: &HeaderMap) -> Result<Option<i64>, KvError> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|r| *r >= 0)
        .map(Some)
        .ok_or_else(|| KvError::BadRequest("Last-Event-ID must be a revision".into()))
}

fn sse_stream(
    watcher: Watcher,
    prev_kv: bool,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(
        (watcher, std::collections::VecDeque::new(), false, permit),
        move |(mut watcher, mut queued, done, permit)| async move {
            loop {
                if let Some(event) = queued.pop_front() {
                    return Some((Ok(event), (watcher, queued, done, permit)));
                }
                if done {
                    return None;
                }
                match watcher.next().await? {
                    Update::Events { events, .. } => queued.extend(by_revision(events, prev_kv)),
                    Update::Compacted { compact_revision } => {
                        let data = json!({ "compact_revision": compact_revision });
                        let event = Event::default().event("compacted").data(data.to_string());
                        return Some((Ok(event), (watcher, queued, true, permit)));
                    }
                }
            }
        },
    )
}

/// One SSE event per revision (an update read from history can span several).
fn by_revision(events: Vec<Change>, prev_kv: bool) -> Vec<Event> {
    let mut out: Vec<(i64, Vec<Value>)> = Vec::new();
    for change in events {
        let rev = change.revision.main;
        let json = change_json(&change, prev_kv);
        match out.last_mut() {
            Some((r, list)) if *r == rev => list.push(json),
            _ => out.push((rev, vec![json])),
        }
    }
    out.into_iter()
        .map(|(rev, events)| {
            let data = json!({ "revision": rev, "events": events });
            Event::default().id(rev.to_string()).data(data.to_string())
        })
        .collect()
}

fn change_json(change: &Change, prev_kv: bool) -> Value {
    let mut v = crate::http::versions::kv_json(&change.kv);
    v["type"] = json!(match change.kind {
        ChangeKind::Put => "put",
        ChangeKind::Delete => "delete",
    });
    if change.kind == ChangeKind::Delete {
        // A delete names the key and the revision that deleted it, nothing else.
        v = json!({ "type": "delete", "key": v["key"], "mod_revision": change.kv.mod_revision });
    }
    if let Some(prev) = change.prev_kv.as_ref().filter(|_| prev_kv) {
        v["prev_kv"] = crate::http::versions::kv_json(prev);
    }
    v
}

/// `GET /db/<key>?wait=<rev>`: returns once the key changed after `rev` (or at once if it
/// already did), or at the timeout; the caller then answers a plain read of the key. A `rev`
/// whose next revision was compacted returns at once (whether the key changed is unknown,
/// and the current value is the best answer there is).
pub async fn wait_for_change(
    app: &App,
    key: &str,
    rev: i64,
    timeout: Option<&str>,
) -> Result<(), KvError> {
    crate::limits::check_key(key)?;
    if rev < 0 {
        return Err(KvError::BadRequest("wait must be a revision (>= 0)".into()));
    }
    let timeout = match timeout {
        None => LONG_POLL_TIMEOUT_DEFAULT,
        Some(t) => crate::compaction::parse_duration("timeout", t)
            .map_err(KvError::BadRequest)?
            .min(LONG_POLL_TIMEOUT_MAX),
    };
    let _permit = app.http_watches.admit()?;
    let spec = WatchSpec::new(key.as_bytes(), b"", rev + 1)
        .map_err(|e| KvError::BadRequest(e.to_string()))?;
    let mut watcher = Watcher::new(&app.state_machine, spec);
    // Any update (a change, compaction, the node stopping) or the timeout ends the wait.
    let _ = tokio::time::timeout(timeout, watcher.next()).await;
    Ok(())
}
