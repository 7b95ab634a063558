//! The replicated key space: the multi-version store (`mvcc`) plus what the node reports about
//! it cheaply (the live keys' count and digest). Pure data, no I/O, no locks, no openraft.
//!
//! Owns: applying one [`Command`] (the seed APIs' set / multi-set / delete; each is one etcd
//! revision), point reads at the current revision, and a deterministic digest of the live keys
//! (for comparing replicas in tests and admin tools), kept current from each write's changes.
//! Does not own: locking, log order, durability — see `state_machine.rs` and `snapshot.rs`.
//!
//! Invariant: two replicas that applied the same log prefix hold equal stores (same revisions,
//! same history) and equal digests.

use bytes::Bytes;

mod digest;
#[cfg(test)]
mod replay_tests;

use digest::DigestDelta;
pub use digest::LiveSummary;
use digest::borrowed;

use crate::mvcc;
use crate::mvcc::Change;
use crate::mvcc::ChangeKind;
use crate::mvcc::KeyValue;
use crate::mvcc::MvccError;
use crate::mvcc::lease::Leases;
use crate::raft::types::Command;
use crate::raft::types::Outcome;
use crate::raft::types::Response;

/// One revision a command wrote and its changes, for the watch feed.
pub type Revision = (i64, Vec<Change>);

/// The store and its live-key digest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvState {
    store: mvcc::Store,
    /// Keys live at the current revision.
    live_keys: usize,
    /// Wrapping sum of the live kvs' hashes (`digest.rs`).
    digest_sum: u64,
    /// The leases and the keys they hold.
    leases: Leases,
}

impl KvState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps a store read from a snapshot, computing its digest (O(live keys)).
    pub fn from_store(store: mvcc::Store) -> Self {
        Self::from_parts(store, Vec::new())
    }

    /// [`KvState::from_store`] with the leases `(id, ttl)` a snapshot recorded.
    pub fn from_parts(store: mvcc::Store, leases: Vec<(i64, i64)>) -> Self {
        let mut live = LiveSummary::default();
        store.live_unordered().for_each(|kv| live.add(kv));
        Self::from_summary(store, leases, live)
    }

    /// [`KvState::from_parts`] with the live keys' summary already gathered (while the store
    /// was decoded: [`mvcc::snapshot::decode_with`]), so no pass over the store is needed.
    pub fn from_summary(store: mvcc::Store, leases: Vec<(i64, i64)>, live: LiveSummary) -> Self {
        let (live_keys, digest_sum, leased) = live.finish();
        KvState {
            store,
            live_keys,
            digest_sum,
            leases: Leases::with_holders(leases, leased),
        }
    }

    pub fn store(&self) -> &mvcc::Store {
        &self.store
    }

    /// See [`mvcc::Store::hold_compaction`]: a snapshot writer's view of the store.
    pub fn hold_compaction(&mut self) -> mvcc::snapshot::View {
        self.store.hold_compaction()
    }

    /// Ends a [`KvState::hold_compaction`].
    pub fn release_compaction(&mut self) {
        self.store.release_compaction()
    }

    /// See [`mvcc::Store::compact_step`].
    pub fn compact_step(&mut self, keys_max: usize) -> bool {
        self.store.compact_step(keys_max)
    }

    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// Applies `cmd`. A command the store refuses changes nothing; the leader checks commands
    /// before proposing (`limits::check_command`), so a refusal here means a hand-made entry,
    /// and it is the same on every replica.
    ///
    /// `existed` is true when a key the command touches held a value before the command:
    /// for `Delete`, the key was present; for `Set`/`SetMany`, at least one key was overwritten.
    pub fn apply_owned(&mut self, cmd: Command) -> Response {
        self.apply_with_changes(cmd).0
    }

    /// [`KvState::apply_owned`], also returning the changes the command made for the watch
    /// feed: per revision it wrote, in order, each revision's changes in the order the store
    /// made them (empty when it changed nothing). A [`Command::Batch`] applies each of its
    /// commands as if it were an entry of its own, at its own revision, and answers
    /// [`Outcome::Batch`] with each one's response.
    pub fn apply_with_changes(&mut self, cmd: Command) -> (Response, Vec<Revision>) {
        // The digest's change is summed over the whole command, a batch's commands included,
        // and must be added before the command's answer can be read (`digest` is read only
        // after `apply_with_changes` returns: under the state machine's lock).
        let mut delta = DigestDelta::default();
        let answer = self.apply_gathering(cmd, &mut delta);
        self.digest_sum = self.digest_sum.wrapping_add(delta.finish());
        answer
    }

    /// [`KvState::apply_with_changes`] with the digest's change gathered into `delta`.
    fn apply_gathering(
        &mut self,
        cmd: Command,
        delta: &mut DigestDelta,
    ) -> (Response, Vec<Revision>) {
        let Command::Batch(cmds) = cmd else {
            let (response, changes) = self.apply_one(cmd, delta);
            let revisions = if changes.is_empty() {
                Vec::new()
            } else {
                vec![(response.revision, changes)]
            };
            return (response, revisions);
        };
        let mut revisions = Vec::with_capacity(cmds.len());
        let mut responses = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            let (response, changes) = if cmd.batchable() {
                self.apply_one(cmd, delta)
            } else {
                self.refuse_in_batch(&cmd)
            };
            if !changes.is_empty() {
                revisions.push((response.revision, changes));
            }
            responses.push(response);
        }
        let response = Response {
            existed: false,
            revision: self.store.current_revision(),
            outcome: Some(Outcome::Batch(responses)),
        };
        (response, revisions)
    }

    /// A command the leader never puts in a batch (`Command::batchable`), found in one: a
    /// hand-made entry. Refused on every replica alike: it changes nothing.
    fn refuse_in_batch(&self, cmd: &Command) -> (Response, Vec<Change>) {
        tracing::warn!(command = %cmd, "a replicated batch held a command batches may not hold; refused");
        let response = Response {
            existed: false,
            revision: self.store.current_revision(),
            outcome: None,
        };
        (response, Vec::new())
    }

    /// Applies one command that is not a batch.
    fn apply_one(&mut self, cmd: Command, delta: &mut DigestDelta) -> (Response, Vec<Change>) {
        let leases = &self.leases;
        let exists = |id: i64| leases.exists(id);
        let (written, outcome) = match cmd {
            Command::Set { key, value } => {
                let req = mvcc::PutRequest {
                    key: Bytes::from(key.into_bytes()),
                    value: Bytes::from(value),
                    ..mvcc::PutRequest::default()
                };
                (self.store.put(req, &exists).map(|w| w.changes), None)
            }
            Command::SetMany { pairs } => {
                let pairs = pairs
                    .into_iter()
                    .map(|(k, v)| (Bytes::from(k.into_bytes()), Bytes::from(v)))
                    .collect();
                (self.store.put_many(pairs).map(|w| w.changes), None)
            }
            Command::Delete { key } => {
                let req = mvcc::DeleteRangeRequest {
                    key: Bytes::from(key.into_bytes()),
                    ..mvcc::DeleteRangeRequest::default()
                };
                (self.store.delete_range(&req).map(|w| w.changes), None)
            }
            Command::Put(req) => etcd(self.store.put(req, &exists), Outcome::Put),
            Command::DeleteRange(req) => etcd(self.store.delete_range(&req), Outcome::DeleteRange),
            Command::Txn(req) => etcd(self.store.txn(req, &exists), Outcome::Txn),
            // The removal of old entries is owed and done off the apply path
            // (`state_machine.rs`, the compactor), a piece at a time.
            Command::Compact { revision } => match self.store.compact_later(revision) {
                Ok(_) => (Ok(Vec::new()), Some(Outcome::Compact)),
                Err(e) => (Err(e.clone()), Some(Outcome::Refused(e))),
            },
            Command::LeaseGrant { id, ttl } => match self.leases.grant(id, ttl) {
                Ok(()) => {
                    let ttl = self.leases.ttl(id).unwrap_or(ttl);
                    (Ok(Vec::new()), Some(Outcome::LeaseGranted { ttl }))
                }
                Err(e) => (Err(e.clone()), Some(Outcome::Refused(e))),
            },
            Command::LeaseRevoke { id } => etcd(self.leases.revoke(id, &mut self.store), |()| {
                Outcome::LeaseRevoked
            }),
            // `apply_with_changes` takes batches apart and refuses a batch in one: never here.
            Command::Batch(_) => (Ok(Vec::new()), None),
        };
        let changes = match written {
            Ok(changes) => {
                self.account(&changes, delta);
                changes
            }
            Err(e) if outcome.is_some() => {
                tracing::debug!(error = %e, "an etcd operation was refused by the store");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(error = %refusal(&e), "a replicated command was refused by the store");
                Vec::new()
            }
        };
        let response = Response {
            existed: changes.iter().any(|c| c.prev_kv.is_some()),
            revision: self.store.current_revision(),
            outcome,
        };
        (response, changes)
    }

    /// Keeps the live count and lease key sets current with one write's changes, and gathers
    /// the digest's change into `delta`.
    fn account(&mut self, changes: &[Change], delta: &mut DigestDelta) {
        self.leases.track(changes);
        for change in changes {
            if let Some(prev) = &change.prev_kv {
                self.live_keys -= 1;
                delta.sub(borrowed(prev));
            }
            if change.kind == ChangeKind::Put {
                self.live_keys += 1;
                delta.add(borrowed(&change.kv));
            }
        }
    }

    /// The live `key` at the current revision.
    pub fn get(&self, key: &str) -> Option<KeyValue> {
        self.store.get(key.as_bytes())
    }

    /// Every live key at the current revision, in key order.
    pub fn live(&self) -> Vec<KeyValue> {
        let all = mvcc::RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            ..mvcc::RangeRequest::default()
        };
        self.store.range(&all).map(|r| r.kvs).unwrap_or_default()
    }

    /// Keys live at the current revision.
    pub fn len(&self) -> usize {
        self.live_keys
    }

    pub fn is_empty(&self) -> bool {
        self.live_keys == 0
    }

    pub fn revision(&self) -> i64 {
        self.store.current_revision()
    }

    /// A digest of the live keys: the wrapping sum of a 64-bit FNV-1a hash of every live kv
    /// (key, value, create and mod revision, version, lease). Deterministic across runs,
    /// platforms and versions (replicas compare digests); O(1), maintained on every change.
    pub fn digest(&self) -> u64 {
        self.digest_sum
    }
}

/// An etcd write's changes (for the digest) and its answer for the client.
fn etcd<R>(
    written: Result<mvcc::Written<R>, MvccError>,
    answer: impl FnOnce(R) -> Outcome,
) -> (Result<Vec<Change>, MvccError>, Option<Outcome>) {
    match written {
        Ok(w) => (Ok(w.changes), Some(answer(w.response))),
        Err(e) => (Err(e.clone()), Some(Outcome::Refused(e))),
    }
}

fn refusal(e: &MvccError) -> String {
    format!("{e} ({e:?})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> Command {
        let (key, value) = (key.to_string(), value.as_bytes().to_vec());
        Command::Set { key, value }
    }

    fn del(key: &str) -> Command {
        let key = key.to_string();
        Command::Delete { key }
    }

    #[test]
    fn set_overwrite_and_delete_report_existed_and_revisions() {
        let mut kv = KvState::new();
        assert_eq!(kv.revision(), 1, "a fresh store is at revision 1");
        let r = kv.apply_owned(set("a", "1"));
        assert_eq!((r.existed, r.revision), (false, 2));
        let r = kv.apply_owned(set("a", "2"));
        assert_eq!((r.existed, r.revision), (true, 3));
        let a = kv.get("a").expect("a");
        assert_eq!(
            (
                a.value.as_ref(),
                a.create_revision,
                a.mod_revision,
                a.version
            ),
            (&b"2"[..], 2, 3, 2)
        );
        let r = kv.apply_owned(del("a"));
        assert_eq!((r.existed, r.revision), (true, 4));
        let r = kv.apply_owned(del("a"));
        assert_eq!(
            (r.existed, r.revision),
            (false, 4),
            "deleting nothing adds no revision"
        );
        assert_eq!(kv.get("a"), None);
        assert!(kv.is_empty());
    }

    #[test]
    fn set_many_is_one_revision() {
        let mut kv = KvState::new();
        kv.apply_owned(set("x", "0"));
        let pairs = vec![
            ("x".to_string(), b"1".to_vec()),
            ("y".to_string(), b"2".to_vec()),
            ("x".to_string(), b"3".to_vec()),
        ];
        let r = kv.apply_owned(Command::SetMany { pairs });
        assert_eq!((r.existed, r.revision), (true, 3));
        assert_eq!(kv.get("x").expect("x").value.as_ref(), b"3");
        assert_eq!(kv.get("y").expect("y").mod_revision, 3);
        assert_eq!(kv.len(), 2);
    }

    #[test]
    fn incremental_digest_matches_a_rebuilt_one_and_is_sensitive() {
        let mut a = KvState::new();
        for i in 0..200 {
            a.apply_owned(set(&format!("k{}", i % 50), &format!("v{i}")));
            if i % 7 == 0 {
                a.apply_owned(del(&format!("k{}", (i * 3) % 50)));
            }
        }
        let rebuilt = KvState::from_store(a.store().clone());
        assert_eq!(rebuilt.digest(), a.digest());
        assert_eq!(rebuilt.len(), a.len());
        assert_eq!(rebuilt.len(), a.live().len());

        let mut b = a.clone();
        b.apply_owned(set("k1", "other"));
        assert_ne!(b.digest(), a.digest());
        let mut c = KvState::new();
        c.apply_owned(set("k", "v"));
        let mut d = KvState::new();
        d.apply_owned(set("k", "x"));
        d.apply_owned(set("k", "v"));
        assert_ne!(
            c.digest(),
            d.digest(),
            "same value, other revisions and version: the digest tells them apart"
        );
    }

    #[test]
    fn a_batch_applies_each_command_at_its_own_revision() {
        let cmds = vec![
            set("a", "1"),
            set("b", "1"),
            del("missing"),
            set("a", "2"),
            Command::Compact { revision: 1 },
            del("b"),
        ];
        let mut one_by_one = KvState::new();
        let expected: Vec<Response> = cmds
            .iter()
            .map(|cmd| match cmd {
                // Not batchable: refused inside a batch, it changes nothing.
                Command::Compact { .. } => Response {
                    revision: one_by_one.revision(),
                    ..Response::default()
                },
                cmd => one_by_one.apply_owned(cmd.clone()),
            })
            .collect();

        let mut batched = KvState::new();
        let (response, revisions) = batched.apply_with_changes(Command::Batch(cmds));
        assert_eq!(response.outcome, Some(Outcome::Batch(expected.clone())));
        assert_eq!(response.revision, 5);
        assert_eq!(
            expected.iter().map(|r| r.revision).collect::<Vec<_>>(),
            [2, 3, 3, 4, 4, 5],
            "a revision per write; nothing deleted and the refused compaction add none"
        );
        assert_eq!(
            revisions
                .iter()
                .map(|(rev, changes)| (*rev, changes.len()))
                .collect::<Vec<_>>(),
            [(2, 1), (3, 1), (4, 1), (5, 1)],
            "the watch feed gets each write's revision and changes"
        );
        assert_eq!(batched, one_by_one, "the same store, history and digest");
        let a = batched.get("a").expect("a");
        assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 4, 2));
    }

    #[test]
    fn a_batch_in_a_batch_changes_nothing() {
        let mut kv = KvState::new();
        let inner = Command::Batch(vec![set("a", "1")]);
        let (response, revisions) =
            kv.apply_with_changes(Command::Batch(vec![inner, set("b", "1")]));
        let expected = vec![
            Response {
                revision: 1,
                ..Response::default()
            },
            Response {
                revision: 2,
                ..Response::default()
            },
        ];
        assert_eq!(response.outcome, Some(Outcome::Batch(expected)));
        assert_eq!(revisions.len(), 1);
        assert_eq!(kv.get("a"), None);
        assert_eq!(kv.len(), 1);
    }
}
