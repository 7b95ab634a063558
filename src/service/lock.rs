//! Server-side locks (etcd's `v3lock`), and the queue elections share with them
//! (`service::election`): protocol-neutral, on raftkv's own write path, reads and watch feed —
//! no client loopback.
//!
//! The recipe is etcd's (`clientv3/concurrency`, which etcd 3.4's lock and election servers
//! run): a holder of lease `L` on name `N` queues by creating the key `N/<L in hex>` bound to
//! `L` (a txn: create it if absent, else read it — so a second call with the same lease is the
//! same place in the queue); its place is that key's create revision; it holds the lock once no
//! key under `N/` has a lower create revision. Waiting follows etcd's `waitDeletes`: read the
//! queue, and while an earlier key exists, wait for a delete under `N/` (a watcher on this
//! node's feed) and read again.
//!
//! Rules:
//! - the first read of the queue comes after the linearizable read barrier, so a follower sees
//!   the key its own forwarded txn created; later reads are local — the earlier keys only ever
//!   go away (a new key always gets a higher create revision), so a replica that saw none left
//!   may answer "acquired";
//! - a wait ends when the caller goes away (the future is dropped; its key is deleted, as
//!   etcd's `Mutex.Lock` and `Election.Campaign` clean up after a cancelled context), when the
//!   waiter's own key disappears (its lease was revoked or expired: etcd's "requested lease not
//!   found"; deleted otherwise: etcd 3.5's "session expired"), or when this node shuts down
//!   (etcd's "server stopped", the key kept so a retry elsewhere keeps its place);
//! - a lease 0 gets a fresh lease of [`SESSION_TTL`] seconds (etcd's session default), which
//!   nobody keeps alive: the lock ends with it unless released first.

use std::sync::Arc;

use bytes::Bytes;

use crate::app::App;
use crate::app::SharedApp;
use crate::error::KvError;
use crate::mvcc;
use crate::mvcc::MvccError;
use crate::raft::read::ReadLevel;
use crate::raft::types::Command;
use crate::raft::types::Outcome;
use crate::service::watch::Update;
use crate::service::watch::WatchSpec;
use crate::service::watch::Watcher;

/// The TTL of the lease granted for a lock or campaign asked with lease 0 (etcd's
/// `concurrency` session default).
pub const SESSION_TTL: i64 = 60;

/// Why a lock or election call did not succeed (etcd's texts, word for word).
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The layers below (no leader, timeouts, the store's refusals such as an unknown lease).
    #[error(transparent)]
    Kv(#[from] KvError),
    /// etcd's `concurrency.ErrElectionNotLeader`.
    #[error("election: not leader")]
    NotLeader,
    /// etcd's `concurrency.ErrElectionNoLeader`.
    #[error("election: no leader")]
    NoLeader,
    /// The waiter's key was deleted while its lease lives on (etcd 3.5's
    /// `concurrency.ErrSessionExpired`).
    #[error("session expired")]
    SessionExpired,
}

/// A place in a lock's or election's queue that became the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// `name/<lease hex>`.
    pub key: Bytes,
    /// The key's create revision (etcd's `LeaderKey.rev`).
    pub create_revision: i64,
    /// The lease the key is bound to (the granted one when asked with 0).
    pub lease: i64,
    /// The revision the answer's header names.
    pub revision: i64,
}

/// The queue of `name`: every key under `name/`.
pub fn prefix(name: &[u8]) -> Bytes {
    let mut p = name.to_vec();
    p.push(b'/');
    Bytes::from(p)
}

/// The key lease `lease` queues with under `name` (Go's `%x` of the id: lower-case hex, a
/// minus sign for a negative id).
pub fn owner_key(name: &[u8], lease: i64) -> Bytes {
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    let mut k = prefix(name).to_vec();
    k.extend_from_slice(hex.as_bytes());
    Bytes::from(k)
}

/// etcd's Lock: waits until lease `lease` holds the lock `name`; answers its key.
pub async fn lock(app: &SharedApp, name: &[u8], lease: i64) -> Result<Held, LockError> {
    let lease = session_lease(app, lease).await?;
    let key = owner_key(name, lease);
    let queued = enqueue(app, &key, lease, Bytes::new()).await?;
    // Must arm the clean-up before the first wait: from here a dropped call deletes its key.
    let mut guard = Release::armed(app, &key, queued.create_revision);
    let waited = wait_turn(app, &prefix(name), &key, queued.create_revision, lease).await;
    let turn = guard.check(waited)?;
    guard.keep();
    Ok(Held {
        key,
        create_revision: queued.create_revision,
        lease,
        // etcd's uncontended path answers the txn's header, a wait the last read's.
        revision: turn.unwrap_or(queued.revision),
    })
}

/// etcd's Unlock: deletes the lock's key (of any holder; a missing key is no error). Answers
/// the revision after it.
pub async fn unlock(app: &App, key: &[u8]) -> Result<i64, LockError> {
    let delete = mvcc::DeleteRangeRequest {
        key: Bytes::copy_from_slice(key),
        ..Default::default()
    };
    match crate::raft::forward::propose(app, Command::DeleteRange(delete)).await? {
        (revision, Outcome::DeleteRange(_)) => Ok(revision),
        (_, other) => Err(KvError::Internal(format!("Unlock's delete answered {other:?}")).into()),
    }
}

/// Lease 0 means a fresh session lease (see the module docs); any other is used as given.
pub(crate) async fn session_lease(app: &App, lease: i64) -> Result<i64, LockError> {
    if lease != 0 {
        return Ok(lease);
    }
    let (id, _ttl) = crate::service::lease::grant(app, 0, SESSION_TTL).await?;
    Ok(id)
}

/// Where a txn put a waiter.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    pub create_revision: i64,
    /// The txn's revision.
    pub revision: i64,
    /// The key's value when it existed already (a second call with the same lease).
    pub existing_value: Option<Bytes>,
}

/// Creates `key` with `value` bound to `lease` unless it exists (then reads it): one txn.
pub(crate) async fn enqueue(
    app: &App,
    key: &Bytes,
    lease: i64,
    value: Bytes,
) -> Result<Queued, LockError> {
    let txn = mvcc::TxnRequest {
        compare: vec![create_revision_is(key, 0)],
        success: vec![mvcc::RequestOp::Put(mvcc::PutRequest {
            key: key.clone(),
            value,
            lease,
            ..Default::default()
        })],
        failure: vec![mvcc::RequestOp::Range(mvcc::RangeRequest {
            key: key.clone(),
            ..Default::default()
        })],
    };
    let (revision, r) = txn_write(app, txn).await?;
    if r.succeeded {
        return Ok(Queued {
            create_revision: revision,
            revision,
            existing_value: None,
        });
    }
    let existing = match r.responses.into_iter().next() {
        Some(mvcc::ResponseOp::Range(range)) => range.kvs.into_iter().next(),
        _ => None,
    };
    let kv = existing.ok_or_else(|| KvError::Internal("a queued key read back empty".into()))?;
    Ok(Queued {
        create_revision: kv.create_revision,
        revision,
        existing_value: Some(kv.value),
    })
}

/// etcd's `Compare(CreateRevision(key), "=", rev)`.
pub(crate) fn create_revision_is(key: &Bytes, rev: i64) -> mvcc::Compare {
    mvcc::Compare {
        key: key.clone(),
        range_end: Bytes::new(),
        result: mvcc::CompareResult::Equal,
        target: mvcc::CompareTarget::Create(rev),
    }
}

/// Proposes a txn; answers the revision after it and the txn's answer.
pub(crate) async fn txn_write(
    app: &App,
    txn: mvcc::TxnRequest,
) -> Result<(i64, mvcc::TxnResponse), LockError> {
    match crate::raft::forward::propose(app, Command::Txn(txn)).await? {
        (revision, Outcome::Txn(r)) => Ok((revision, r)),
        (_, other) => Err(KvError::Internal(format!("a lock txn answered {other:?}")).into()),
    }
}

/// Deletes `key` if its create revision is still `rev` (etcd's `Resign`); the revision after.
pub(crate) async fn delete_if_created_at(
    app: &App,
    key: &Bytes,
    rev: i64,
) -> Result<i64, LockError> {
    let txn = mvcc::TxnRequest {
        compare: vec![create_revision_is(key, rev)],
        success: vec![mvcc::RequestOp::DeleteRange(mvcc::DeleteRangeRequest {
            key: key.clone(),
            ..Default::default()
        })],
        failure: Vec::new(),
    };
    Ok(txn_write(app, txn).await?.0)
}

/// What one read of a queue found.
enum Turn {
    /// No earlier key: the waiter is first (at this revision).
    First(i64),
    /// An earlier key exists (read at this revision).
    Behind(i64),
    /// The waiter's own key is gone (or was created anew).
    Lost,
}

/// Waits until no key under `prefix` was created before `my_rev` (etcd's `waitDeletes`).
/// Answers `None` when the first read found it first, else the revision of the read that did.
pub(crate) async fn wait_turn(
    app: &App,
    prefix: &Bytes,
    key: &Bytes,
    my_rev: i64,
    lease: i64,
) -> Result<Option<i64>, LockError> {
    // Must pass the barrier before the first read: on a follower the txn that queued us was
    // applied by the leader, maybe not here yet.
    crate::raft::read::read_barrier(app, ReadLevel::Linearizable).await?;
    let mut deletes: Option<Watcher> = None;
    let mut first = true;
    loop {
        let behind_at = match read_turn(app, prefix, key, my_rev)? {
            Turn::First(revision) => return Ok((!first).then_some(revision)),
            Turn::Lost => return Err(lost(app, lease)),
            Turn::Behind(revision) => revision,
        };
        first = false;
        // One watcher for the whole wait, from just after the first read that found us behind:
        // every delete under the prefix after any later read reaches it too.
        let watcher = match deletes.take() {
            Some(w) => w,
            None => delete_watcher(app, prefix, behind_at + 1)?,
        };
        let watcher = deletes.insert(watcher);
        match until_stopping(app, watcher.next()).await? {
            Some(Update::Events { .. }) => {}
            // History the watcher needed is gone: a fresh one after the next read.
            Some(Update::Compacted { .. }) => deletes = None,
            None => return Err(KvError::ShuttingDown.into()),
        }
    }
}

/// `wait`'s outcome, or `ShuttingDown` as soon as this node begins to shut down.
pub(crate) async fn until_stopping<T>(
    app: &App,
    wait: impl std::future::Future<Output = T>,
) -> Result<T, LockError> {
    tokio::select! {
        done = wait => Ok(done),
        () = app.lifecycle.stopping() => Err(KvError::ShuttingDown.into()),
    }
}

/// One consistent read of the queue: the waiter's own key and the latest key before it.
fn read_turn(app: &App, prefix: &Bytes, key: &Bytes, my_rev: i64) -> Result<Turn, LockError> {
    let own = mvcc::RangeRequest {
        key: key.clone(),
        ..Default::default()
    };
    // etcd's `WithLastCreate` + `WithMaxCreateRev(myRev - 1)`.
    let earlier = mvcc::RangeRequest {
        key: prefix.clone(),
        range_end: Bytes::from(mvcc::prefix_end(prefix)),
        limit: 1,
        sort_order: mvcc::SortOrder::Descend,
        sort_target: mvcc::SortTarget::Create,
        keys_only: true,
        max_create_revision: (my_rev - 1).max(1),
        ..Default::default()
    };
    let txn = mvcc::TxnRequest {
        compare: Vec::new(),
        success: vec![mvcc::RequestOp::Range(own), mvcc::RequestOp::Range(earlier)],
        failure: Vec::new(),
    };
    let r = app
        .state_machine
        .read_txn(&txn)
        .ok_or_else(|| KvError::Internal("the queue read is not read-only".into()))?
        .map_err(KvError::Store)?;
    let mut ranges = r.responses.into_iter().map(|op| match op {
        mvcc::ResponseOp::Range(range) => range.kvs,
        _ => Vec::new(),
    });
    let own = ranges.next().unwrap_or_default();
    let earlier = ranges.next().unwrap_or_default();
    if !own.iter().any(|kv| kv.create_revision == my_rev) {
        return Ok(Turn::Lost);
    }
    if earlier.is_empty() {
        Ok(Turn::First(r.revision))
    } else {
        Ok(Turn::Behind(r.revision))
    }
}

/// A watcher of the deletes under `prefix` from revision `from`.
pub(crate) fn delete_watcher(app: &App, prefix: &Bytes, from: i64) -> Result<Watcher, LockError> {
    let spec = WatchSpec::new(prefix, &mvcc::prefix_end(prefix), from)
        .map_err(|e| KvError::Internal(format!("a queue's watch: {e}")))?;
    Ok(Watcher::new(
        &app.state_machine,
        WatchSpec {
            no_put: true,
            ..spec
        },
    ))
}

/// Why a waiter's key went: its lease ended (etcd's "requested lease not found"), or someone
/// deleted it ("session expired").
fn lost(app: &App, lease: i64) -> LockError {
    if app.state_machine.lease_ttl(lease).is_none() {
        KvError::Store(MvccError::LeaseNotFound { lease }).into()
    } else {
        LockError::SessionExpired
    }
}

/// Deletes a queued key (if still the same generation) when its call ends without the lock:
/// dropped (the client went away) or failed. Kept on success and on shutdown.
pub(crate) struct Release {
    pending: Option<(SharedApp, Bytes, i64)>,
}

impl Release {
    pub(crate) fn armed(app: &SharedApp, key: &Bytes, rev: i64) -> Release {
        Release {
            pending: Some((Arc::clone(app), key.clone(), rev)),
        }
    }

    /// Passes `result` on. A failure that leaves nothing to delete disarms: a shutdown (the key
    /// is kept so a retry elsewhere keeps its place) or a key already gone.
    pub(crate) fn check<T>(&mut self, result: Result<T, LockError>) -> Result<T, LockError> {
        let nothing_to_do = matches!(
            &result,
            Err(LockError::Kv(KvError::ShuttingDown))
                | Err(LockError::SessionExpired)
                | Err(LockError::Kv(KvError::Store(
                    MvccError::LeaseNotFound { .. }
                )))
        );
        if nothing_to_do {
            self.pending = None;
        }
        result
    }

    /// The call succeeded: the key stays.
    pub(crate) fn keep(mut self) {
        self.pending = None;
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let Some((app, key, rev)) = self.pending.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Bounded: one write with the request timeout.
        runtime.spawn(async move {
            if let Err(e) = delete_if_created_at(&app, &key, rev).await {
                tracing::warn!(key = ?key, error = %e, "could not delete an abandoned lock key");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_name_slash_lease_hex_as_go_prints_it() {
        assert_eq!(
            &owner_key(b"jobs", 0x694d_7a3c_1e2f)[..],
            b"jobs/694d7a3c1e2f"
        );
        assert_eq!(&owner_key(b"", 255)[..], b"/ff");
        assert_eq!(&owner_key(b"x", -26)[..], b"x/-1a");
        assert_eq!(&prefix(b"jobs")[..], b"jobs/");
    }

    #[test]
    fn errors_keep_etcds_text() {
        assert_eq!(LockError::NotLeader.to_string(), "election: not leader");
        assert_eq!(LockError::NoLeader.to_string(), "election: no leader");
        assert_eq!(LockError::SessionExpired.to_string(), "session expired");
        let gone = LockError::from(KvError::Store(MvccError::LeaseNotFound { lease: 1 }));
        assert_eq!(gone.to_string(), "etcdserver: requested lease not found");
    }
}
