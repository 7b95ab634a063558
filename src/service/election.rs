//! Server-side elections (etcd's `v3election`), protocol-neutral, on the queue of
//! `service::lock`: a campaign is a lock whose key carries the candidate's value, the leader is
//! the key with the lowest create revision under `name/`, and the leader's key (with its create
//! revision) is the proof of leadership every later call shows.
//!
//! As etcd 3.4's `concurrency.Election` behind its election server:
//! - `Campaign` queues like a lock, with the value; a second campaign with the same lease
//!   keeps its place and proclaims the new value if it differs; it answers the header of its
//!   txn once leader;
//! - `Proclaim` and `Resign` act only if the key still has the shown create revision (else
//!   `Proclaim` answers "election: not leader"; `Resign` succeeds quietly); they use the lease
//!   as given (etcd would open a fresh session lease for lease 0);
//! - `Leader` reads linearizably, "election: no leader" for an empty election;
//! - an [`Observer`] yields the leader at once (or the first put under the name when there is
//!   none), then each put of that leader's key, and after its delete the next leader.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::app::App;
use crate::app::SharedApp;
use crate::error::KvError;
use crate::mvcc;
use crate::mvcc::ChangeKind;
use crate::mvcc::KeyValue;
use crate::raft::read::ReadLevel;
use crate::service::lock;
use crate::service::lock::Held;
use crate::service::lock::LockError;
use crate::service::watch::Update;
use crate::service::watch::WatchSpec;
use crate::service::watch::Watcher;

/// The proof of leadership a campaign answered (etcd's `LeaderKey`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaderKey {
    pub name: Bytes,
    pub key: Bytes,
    pub rev: i64,
    pub lease: i64,
}

/// etcd's Campaign: waits until lease `lease` leads election `name` with `value`.
pub async fn campaign(
    app: &SharedApp,
    name: &[u8],
    lease: i64,
    value: Bytes,
) -> Result<Held, LockError> {
    let lease = lock::session_lease(app, lease).await?;
    let key = lock::owner_key(name, lease);
    let queued = lock::enqueue(app, &key, lease, value.clone()).await?;
    // Must arm the clean-up before the first wait (etcd resigns a cancelled campaign).
    let mut guard = lock::Release::armed(app, &key, queued.create_revision);
    if let Some(old) = &queued.existing_value
        && *old != value
    {
        let leader = LeaderKey {
            name: Bytes::copy_from_slice(name),
            key: key.clone(),
            rev: queued.create_revision,
            lease,
        };
        guard.check(proclaim(app, &leader, value).await)?;
    }
    let prefix = lock::prefix(name);
    let waited = lock::wait_turn(app, &prefix, &key, queued.create_revision, lease).await;
    guard.check(waited)?;
    guard.keep();
    Ok(Held {
        key,
        create_revision: queued.create_revision,
        lease,
        revision: queued.revision,
    })
}

/// etcd's Proclaim: the leader's new value. Answers the revision after it.
pub async fn proclaim(app: &App, leader: &LeaderKey, value: Bytes) -> Result<i64, LockError> {
    let txn = mvcc::TxnRequest {
        compare: vec![lock::create_revision_is(&leader.key, leader.rev)],
        success: vec![mvcc::RequestOp::Put(mvcc::PutRequest {
            key: leader.key.clone(),
            value,
            lease: leader.lease,
            ..Default::default()
        })],
        failure: Vec::new(),
    };
    let (revision, r) = lock::txn_write(app, txn).await?;
    if r.succeeded {
        Ok(revision)
    } else {
        Err(LockError::NotLeader)
    }
}

/// etcd's Resign: deletes the leader's key if it is still that generation (quietly nothing
/// otherwise). Answers the revision after it.
pub async fn resign(app: &App, leader: &LeaderKey) -> Result<i64, LockError> {
    lock::delete_if_created_at(app, &leader.key, leader.rev).await
}

/// etcd's Leader: the election's current leader and the revision read at.
pub async fn leader(app: &App, name: &[u8]) -> Result<(i64, KeyValue), LockError> {
    crate::raft::read::read_barrier(app, ReadLevel::Linearizable).await?;
    let (revision, first) = first_created(app, &lock::prefix(name))?;
    first.map(|kv| (revision, kv)).ok_or(LockError::NoLeader)
}

/// The key with the lowest create revision under `prefix` (etcd's `WithFirstCreate`), read
/// locally, and the revision read at.
fn first_created(app: &App, prefix: &Bytes) -> Result<(i64, Option<KeyValue>), LockError> {
    let req = mvcc::RangeRequest {
        key: prefix.clone(),
        range_end: Bytes::from(mvcc::prefix_end(prefix)),
        limit: 1,
        sort_order: mvcc::SortOrder::Ascend,
        sort_target: mvcc::SortTarget::Create,
        ..Default::default()
    };
    let r = app.state_machine.range(&req).map_err(KvError::Store)?;
    Ok((r.revision, r.kvs.into_iter().next()))
}

/// Follows an election's leaders (etcd's `Election.Observe`); see the module docs.
pub struct Observer {
    prefix: Bytes,
    /// The leader key being followed, from just after the last revision yielded.
    following: Option<Watcher>,
    /// Leader updates read but not yet yielded: `(header revision, kv)`.
    pending: VecDeque<(i64, KeyValue)>,
}

impl Observer {
    pub fn new(name: &[u8]) -> Observer {
        Observer {
            prefix: lock::prefix(name),
            following: None,
            pending: VecDeque::new(),
        }
    }

    /// The next leader update: `(header revision, the leader's kv)`. Waits as long as it takes;
    /// `ShuttingDown` when the node stops. Cancel-safe between updates.
    pub async fn next(&mut self, app: &App) -> Result<(i64, KeyValue), LockError> {
        loop {
            if let Some(update) = self.pending.pop_front() {
                return Ok(update);
            }
            match &mut self.following {
                None => {
                    let (revision, kv) = self.find(app).await?;
                    self.following = Some(key_watcher(app, &kv.key, revision + 1)?);
                    return Ok((revision, kv));
                }
                Some(watcher) => match lock::until_stopping(app, watcher.next()).await? {
                    Some(Update::Events {
                        header_revision,
                        events,
                    }) => {
                        for change in events {
                            if change.kind == ChangeKind::Delete {
                                // The leader went: the next one is found afresh.
                                self.following = None;
                                break;
                            }
                            self.pending.push_back((header_revision, change.kv));
                        }
                    }
                    // Its history is gone: look the leader up again.
                    Some(Update::Compacted { .. }) => self.following = None,
                    None => return Err(KvError::ShuttingDown.into()),
                },
            }
        }
    }

    /// The current leader, or else the first key put under the prefix.
    async fn find(&self, app: &App) -> Result<(i64, KeyValue), LockError> {
        loop {
            crate::raft::read::read_barrier(app, ReadLevel::Linearizable).await?;
            let (revision, first) = first_created(app, &self.prefix)?;
            if let Some(kv) = first {
                return Ok((revision, kv));
            }
            let spec = WatchSpec::new(&self.prefix, &mvcc::prefix_end(&self.prefix), revision + 1)
                .map_err(|e| KvError::Internal(format!("an election's watch: {e}")))?;
            let mut puts = Watcher::new(
                &app.state_machine,
                WatchSpec {
                    no_delete: true,
                    ..spec
                },
            );
            match lock::until_stopping(app, puts.next()).await? {
                Some(Update::Events { events, .. }) => {
                    if let Some(put) = events.into_iter().next() {
                        // etcd names the put's own revision in this answer.
                        return Ok((put.kv.mod_revision, put.kv));
                    }
                }
                Some(Update::Compacted { .. }) => {}
                None => return Err(KvError::ShuttingDown.into()),
            }
        }
    }
}

/// A watcher of one key from revision `from`.
fn key_watcher(app: &App, key: &Bytes, from: i64) -> Result<Watcher, LockError> {
    let spec = WatchSpec::new(key, b"", from)
        .map_err(|e| KvError::Internal(format!("an election's watch: {e}")))?;
    Ok(Watcher::new(&app.state_machine, spec))
}
