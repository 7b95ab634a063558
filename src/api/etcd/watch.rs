//! etcd's `Watch` service: one bidirectional stream carries many watches, each driven by a
//! [`Watcher`] (`service/watch.rs`) in its own task, all sending into the stream's one bounded
//! queue of responses.
//!
//! As etcd's `serverWatchStream` does: watch ids are given per stream from 0 (or by the client;
//! a duplicate is refused), the creation is answered (header revision = the published revision
//! then) before any of the watch's events, a cancel is answered once the watch's task has
//! stopped (so no event follows it; an unknown id gets no answer), a `ProgressRequest` is
//! answered at once with watch id -1 and the current revision, `progress_notify` watches get an
//! empty response every `--experimental-watch-progress-notify-interval` when synced and
//! nothing was sent since the last tick, a compacted start cancels the watch with
//! `compact_revision`, and the stream ends when the client closes its side.
//!
//! Limits: [`WATCHES_PER_STREAM_MAX`] watches per stream, [`STREAM_RESPONSES_MAX`] responses
//! queued per stream (a client that does not read makes its watches wait, then catch up from
//! history: never a dropped event, never a stalled apply), and responses over
//! [`WATCH_RESPONSE_BYTES_MAX`] split — as fragments (`fragment` set) when the watch asked for
//! them, else as several whole responses (etcd would send one oversized message).

use std::collections::HashMap;
use std::time::Duration;

use etcd_client::proto::PbEvent;
use etcd_client::proto::PbResponseHeader;
use etcd_client::proto::PbWatchRequest;
use etcd_client::proto::PbWatchRequestUnion;
use etcd_client::proto::PbWatchResponse;
use etcd_client::proto::PbWatchService;
use futures::StreamExt;
use futures::stream::BoxStream;
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use crate::app::App;
use crate::app::SharedApp;
use crate::mvcc::Change;
use crate::mvcc::ChangeKind;
use crate::service::watch::Update;
use crate::service::watch::WatchSpec;
use crate::service::watch::Watcher;

/// Watches one stream may hold (created and not cancelled).
pub const WATCHES_PER_STREAM_MAX: usize = 10_000;
/// Responses queued for one stream's client before its watches wait.
pub const STREAM_RESPONSES_MAX: usize = 256;
/// Encoded bytes of events in one response before it is split (etcd's default
/// `--max-request-bytes` plus its gRPC overhead allowance).
pub const WATCH_RESPONSE_BYTES_MAX: usize = (3 << 19) + (512 << 10);
/// The watch id of responses that belong to no watch (clientv3's `InvalidWatchID`).
const NO_WATCH_ID: i64 = -1;
/// etcd's filter numbers (`WatchCreateRequest.FilterType`).
const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;

pub struct WatchService {
    app: SharedApp,
}

impl WatchService {
    pub fn new(app: SharedApp) -> Self {
        WatchService { app }
    }
}

type Outbox = mpsc::Sender<Result<PbWatchResponse, Status>>;

#[tonic::async_trait]
impl PbWatchService for WatchService {
    type WatchStream = BoxStream<'static, Result<PbWatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<PbWatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_RESPONSES_MAX);
        let stream = WatchStream {
            app: self.app.clone(),
            tx,
            watches: HashMap::new(),
            next_id: 0,
        };
        tokio::spawn(stream.run(inbound));
        Ok(Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
        ))
    }
}

/// One client stream: its watches and its queue of responses.
struct WatchStream {
    app: SharedApp,
    tx: Outbox,
    watches: HashMap<i64, JoinHandle<()>>,
    /// The next automatic watch id (etcd's `nextID`).
    next_id: i64,
}

/// What a watch's task needs besides its watcher.
#[derive(Clone, Copy)]
struct Options {
    id: i64,
    prev_kv: bool,
    fragment: bool,
    progress: Option<Duration>,
}

impl WatchStream {
    async fn run(mut self, mut inbound: Streaming<PbWatchRequest>) {
        loop {
            let request = tokio::select! {
                request = inbound.message() => request,
                () = self.tx.closed() => break,
            };
            let request = match request {
                Ok(Some(request)) => request,
                // The client closed its side (etcd ends the stream then) or the stream broke.
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "watch stream ended");
                    break;
                }
            };
            if !self.handle(request).await {
                break;
            }
        }
        for (_, task) in self.watches.drain() {
            task.abort();
        }
    }

    /// Handles one request; `false` once the client is gone.
    async fn handle(&mut self, request: PbWatchRequest) -> bool {
        match request.request_union {
            Some(PbWatchRequestUnion::CreateRequest(c)) => {
                let filters = (
                    c.filters.contains(&FILTER_NOPUT),
                    c.filters.contains(&FILTER_NODELETE),
                );
                let options = Options {
                    id: c.watch_id,
                    prev_kv: c.prev_kv,
                    fragment: c.fragment,
                    progress: c
                        .progress_notify
                        .then_some(self.app.watch_progress_interval),
                };
                let spec = WatchSpec::new(&c.key, &c.range_end, c.start_revision);
                self.create(spec, filters, options).await
            }
            Some(PbWatchRequestUnion::CancelRequest(c)) => self.cancel(c.watch_id).await,
            Some(PbWatchRequestUnion::ProgressRequest(_)) => {
                let response = PbWatchResponse {
                    header: Some(header_at(&self.app, self.app.state_machine.feed().head())),
                    watch_id: NO_WATCH_ID,
                    ..PbWatchResponse::default()
                };
                self.tx.send(Ok(response)).await.is_ok()
            }
            // etcd ignores a request it does not know rather than end the stream.
            None => true,
        }
    }

    async fn create(
        &mut self,
        spec: Result<WatchSpec, crate::service::watch::WatchError>,
        (no_put, no_delete): (bool, bool),
        mut options: Options,
    ) -> bool {
        let refuse = |reason: String, revision: i64| PbWatchResponse {
            header: Some(header_at(&self.app, revision)),
            watch_id: NO_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..PbWatchResponse::default()
        };
        let head = self.app.state_machine.feed().head();
        let spec = match spec {
            Ok(spec) => spec,
            Err(e) => return self.tx.send(Ok(refuse(e.to_string(), head))).await.is_ok(),
        };
        if options.id == 0 {
            while self.watches.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            options.id = self.next_id;
            self.next_id += 1;
        } else if self.watches.contains_key(&options.id) {
            let reason = "mvcc: duplicate watch ID provided on the WatchStream".to_string();
            return self.tx.send(Ok(refuse(reason, head))).await.is_ok();
        }
        if self.watches.len() >= WATCHES_PER_STREAM_MAX {
            let reason = format!(
                "raftkv: too many watches on one stream (at most {WATCHES_PER_STREAM_MAX})"
            );
            return self.tx.send(Ok(refuse(reason, head))).await.is_ok();
        }
        let watcher = Watcher::new(
            &self.app.state_machine,
            WatchSpec {
                no_put,
                no_delete,
                ..spec
            },
        );
        let created = PbWatchResponse {
            header: Some(header_at(&self.app, watcher.created_revision())),
            watch_id: options.id,
            created: true,
            ..PbWatchResponse::default()
        };
        // Must answer the creation before the watch's task starts: its events follow it.
        if self.tx.send(Ok(created)).await.is_err() {
            return false;
        }
        let task = tokio::spawn(run_watch(
            self.app.clone(),
            watcher,
            self.tx.clone(),
            options,
        ));
        self.watches.insert(options.id, task);
        true
    }

    async fn cancel(&mut self, id: i64) -> bool {
        let Some(task) = self.watches.remove(&id) else {
            return true;
        };
        task.abort();
        // Must wait for the task to stop before answering: no event may follow the cancel.
        let _ = task.await;
        let response = PbWatchResponse {
            header: Some(header_at(&self.app, self.app.state_machine.feed().head())),
            watch_id: id,
            canceled: true,
            ..PbWatchResponse::default()
        };
        self.tx.send(Ok(response)).await.is_ok()
    }
}

/// Delivers one watch's updates into the stream until it ends or the client goes.
async fn run_watch(app: SharedApp, mut watcher: Watcher, tx: Outbox, options: Options) {
    let period = options.progress.unwrap_or(Duration::from_secs(3600));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent_events = false;
    loop {
        let update = tokio::select! {
            update = watcher.next() => update,
            _ = ticker.tick(), if options.progress.is_some() => {
                // etcd elides a progress notification right after events, and sends one only
                // to a synced watch.
                if !sent_events && watcher.is_synced() {
                    let progress = PbWatchResponse {
                        header: Some(header_at(&app, watcher.head())),
                        watch_id: options.id,
                        ..PbWatchResponse::default()
                    };
                    if tx.send(Ok(progress)).await.is_err() {
                        return;
                    }
                }
                sent_events = false;
                continue;
            }
        };
        match update {
            None => return,
            Some(Update::Events {
                header_revision,
                events,
            }) => {
                let header = header_at(&app, header_revision);
                for response in responses(header, &options, events) {
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
                sent_events = true;
            }
            Some(Update::Compacted { compact_revision }) => {
                let response = PbWatchResponse {
                    header: Some(header_at(&app, watcher.head())),
                    watch_id: options.id,
                    canceled: true,
                    compact_revision,
                    ..PbWatchResponse::default()
                };
                let _ = tx.send(Ok(response)).await;
                return;
            }
        }
    }
}

/// One update's events as responses, split at [`WATCH_RESPONSE_BYTES_MAX`].
fn responses(
    header: PbResponseHeader,
    options: &Options,
    events: Vec<Change>,
) -> Vec<PbWatchResponse> {
    let mut out = Vec::new();
    let mut current: Vec<PbEvent> = Vec::new();
    let mut bytes = 0;
    for change in events {
        let event = pb_event(change, options.prev_kv);
        let len = event.encoded_len();
        if !current.is_empty() && bytes + len > WATCH_RESPONSE_BYTES_MAX {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += len;
        current.push(event);
    }
    out.push(current);
    let parts = out.len();
    out.into_iter()
        .enumerate()
        .map(|(i, events)| PbWatchResponse {
            header: Some(header),
            watch_id: options.id,
            fragment: options.fragment && i + 1 < parts,
            events,
            ..PbWatchResponse::default()
        })
        .collect()
}

/// A change as etcd's event (`prev_kv` only when the watch asked for it).
fn pb_event(change: Change, prev_kv: bool) -> PbEvent {
    // mvccpb.Event.EventType: PUT = 0, DELETE = 1.
    let r#type = match change.kind {
        ChangeKind::Put => 0,
        ChangeKind::Delete => 1,
    };
    PbEvent {
        r#type,
        kv: Some(super::kv::pb_kv(change.kv)),
        prev_kv: change.prev_kv.filter(|_| prev_kv).map(super::kv::pb_kv),
    }
}

/// The response header with `revision` (etcd's watch responses name the events' revision).
fn header_at(app: &App, revision: i64) -> PbResponseHeader {
    PbResponseHeader {
        revision,
        ..super::header(app)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn put(key: &str, value_bytes: usize) -> Change {
        Change {
            kind: ChangeKind::Put,
            revision: crate::mvcc::Revision { main: 2, sub: 0 },
            kv: crate::mvcc::KeyValue {
                key: Bytes::from(key.to_string()),
                value: Bytes::from(vec![b'v'; value_bytes]),
                ..Default::default()
            },
            prev_kv: None,
        }
    }

    fn options(fragment: bool) -> Options {
        Options {
            id: 7,
            prev_kv: false,
            fragment,
            progress: None,
        }
    }

    #[test]
    fn a_small_update_is_one_response() {
        let r = responses(
            PbResponseHeader::default(),
            &options(true),
            vec![put("a", 1)],
        );
        assert_eq!(r.len(), 1);
        assert!(!r[0].fragment);
        assert_eq!((r[0].watch_id, r[0].events.len()), (7, 1));
    }

    #[test]
    fn a_large_update_splits_and_marks_fragments_when_asked() {
        let big = WATCH_RESPONSE_BYTES_MAX / 2;
        let events = || vec![put("a", big), put("b", big), put("c", big)];
        let r = responses(PbResponseHeader::default(), &options(true), events());
        assert_eq!(r.len(), 3);
        assert_eq!(
            r.iter().map(|r| r.fragment).collect::<Vec<_>>(),
            vec![true, true, false]
        );
        let whole = responses(PbResponseHeader::default(), &options(false), events());
        assert!(whole.iter().all(|r| !r.fragment));
        let keys: Vec<_> = whole
            .iter()
            .flat_map(|r| {
                r.events
                    .iter()
                    .map(|e| e.kv.as_ref().map(|kv| kv.key.clone()))
            })
            .collect();
        assert_eq!(keys.len(), 3, "every event once, in order");
    }
}
