//! The key/value map the state machine replicates: pure data, no I/O, no locks, no openraft.
//!
//! Owns: applying one [`Command`] at one log index, point reads, ordered iteration (for
//! snapshots) and a deterministic digest (for comparing replicas in tests and admin tools).
//! Does not own: locking, log order, durability — see `state_machine.rs` and `snapshot.rs`.
//!
//! Invariant: every stored [`Value`] carries the log index of the command that last wrote it, so
//! two replicas that applied the same log prefix hold byte-identical maps and equal digests.

use std::collections::BTreeMap;

use crate::raft::types::Command;
use crate::raft::types::Response;

/// A stored value and the log index of the command that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub data: Vec<u8>,
    /// Log index of the entry that last wrote this key.
    pub index: u64,
}

/// The replicated map, ordered by key (snapshots stream it in this order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvMap {
    entries: BTreeMap<String, Value>,
    /// Wrapping sum of [`pair_hash`] over all entries, kept current on every change so that
    /// [`KvMap::digest`] is O(1) (`/status` reports it).
    digest_sum: u64,
}

impl KvMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `cmd`, written by the log entry at `index`. See [`KvMap::apply_owned`].
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Response {
        self.apply_owned(index, cmd.clone())
    }

    /// Applies `cmd` without copying its values (the state machine owns each entry it applies).
    ///
    /// `existed` is true when a key the command touches held a value before the command:
    /// for `Delete`, the key was present; for `Set`/`SetMany`, at least one key was overwritten.
    /// In a `SetMany` naming a key twice, the last pair wins and the repeat does not count as an
    /// overwrite.
    pub fn apply_owned(&mut self, index: u64, cmd: Command) -> Response {
        let existed = match cmd {
            Command::Set { key, value } => self.set(index, key, value),
            Command::SetMany { pairs } => pairs.into_iter().fold(false, |existed, (key, value)| {
                self.set(index, key, value) | existed
            }),
            Command::Delete { key } => self.remove(&key),
        };
        Response { existed }
    }

    /// Returns whether `key` held a value written by an earlier command.
    fn set(&mut self, index: u64, key: String, data: Vec<u8>) -> bool {
        let value = Value { data, index };
        let added = pair_hash(&key, &value);
        let replaced = self.entries.get(&key).map(|old| pair_hash(&key, old));
        self.digest_sum = self
            .digest_sum
            .wrapping_add(added)
            .wrapping_sub(replaced.unwrap_or(0));
        let old = self.entries.insert(key, value);
        old.is_some_and(|old| old.index != index)
    }

    fn remove(&mut self, key: &str) -> bool {
        let Some(old) = self.entries.remove(key) else {
            return false;
        };
        self.digest_sum = self.digest_sum.wrapping_sub(pair_hash(key, &old));
        true
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The greatest key, if any.
    pub fn last_key(&self) -> Option<&str> {
        self.entries.last_key_value().map(|(key, _)| key.as_str())
    }

    /// All pairs in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&String, &Value)> {
        self.entries.iter()
    }

    /// Puts back a pair read from a snapshot, as it was stored (no command semantics).
    pub fn restore(&mut self, key: String, value: Value) {
        self.set(value.index, key, value.data);
    }

    /// A digest of the whole map: the wrapping sum of a 64-bit FNV-1a hash of every pair, each
    /// encoded as `key_len u64 LE | key | data_len u64 LE | data | index u64 LE`.
    ///
    /// Deterministic across runs, platforms and versions (replicas compare digests); O(1), as it
    /// is maintained on every change.
    pub fn digest(&self) -> u64 {
        self.digest_sum
    }
}

/// The FNV-1a hash of one stored pair (see [`KvMap::digest`]).
fn pair_hash(key: &str, value: &Value) -> u64 {
    let mut hash = Fnv1a::new();
    hash.write(&(key.len() as u64).to_le_bytes());
    hash.write(key.as_bytes());
    hash.write(&(value.data.len() as u64).to_le_bytes());
    hash.write(&value.data);
    hash.write(&value.index.to_le_bytes());
    hash.0
}

/// 64-bit FNV-1a (same constants as `raft::types::node_id_from_name`).
struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Self(Self::OFFSET)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(Self::PRIME);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> Command {
        Command::Set {
            key: key.into(),
            value: value.into(),
        }
    }

    fn del(key: &str) -> Command {
        Command::Delete { key: key.into() }
    }

    #[test]
    fn set_overwrite_and_delete_report_existed() {
        let mut kv = KvMap::new();
        assert!(!kv.apply(1, &set("a", "1")).existed);
        assert_eq!(
            kv.get("a"),
            Some(&Value {
                data: b"1".to_vec(),
                index: 1
            })
        );
        assert!(kv.apply(2, &set("a", "2")).existed);
        assert_eq!(
            kv.get("a"),
            Some(&Value {
                data: b"2".to_vec(),
                index: 2
            })
        );
        assert!(kv.apply(3, &del("a")).existed);
        assert_eq!(kv.get("a"), None);
        assert!(
            !kv.apply(4, &del("a")).existed,
            "deleting an absent key is not an error"
        );
        assert!(kv.is_empty());
    }

    #[test]
    fn set_many_applies_every_pair_at_one_index() {
        let mut kv = KvMap::new();
        kv.apply(1, &set("b", "old"));
        let pairs = vec![
            ("a".to_string(), b"1".to_vec()),
            ("c".to_string(), b"3".to_vec()),
            ("a".to_string(), b"last".to_vec()),
        ];
        let resp = kv.apply(
            7,
            &Command::SetMany {
                pairs: pairs.clone(),
            },
        );
        assert!(
            !resp.existed,
            "a repeated key inside one command is not an overwrite"
        );
        assert_eq!(kv.len(), 3);
        assert_eq!(
            kv.get("a"),
            Some(&Value {
                data: b"last".to_vec(),
                index: 7
            })
        );
        assert_eq!(kv.get("b").map(|v| v.index), Some(1));
        assert_eq!(kv.get("c").map(|v| v.index), Some(7));

        let resp = kv.apply(
            8,
            &Command::SetMany {
                pairs: vec![("b".into(), b"new".to_vec())],
            },
        );
        assert!(resp.existed);
        let empty = kv.apply(9, &Command::SetMany { pairs: vec![] });
        assert!(!empty.existed);
        let keys: Vec<&str> = kv.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"], "iteration is in key order");
    }

    #[test]
    fn digest_is_deterministic_and_sensitive() {
        let build = |cmds: &[(u64, Command)]| {
            let mut kv = KvMap::new();
            for (index, cmd) in cmds {
                kv.apply(*index, cmd);
            }
            kv
        };
        let a = build(&[(1, set("x", "1")), (2, set("y", "2"))]);
        let b = build(&[(1, set("x", "1")), (2, set("y", "2"))]);
        assert_eq!(a.digest(), b.digest());
        // Fixed value: the encoding must never change silently.
        assert_eq!(KvMap::new().digest(), 0);

        assert_ne!(
            a.digest(),
            build(&[(1, set("x", "1")), (3, set("y", "2"))]).digest()
        );
        assert_ne!(
            a.digest(),
            build(&[(1, set("x", "1")), (2, set("y", "3"))]).digest()
        );
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        assert_ne!(
            build(&[(1, set("ab", "c"))]).digest(),
            build(&[(1, set("a", "bc"))]).digest()
        );

        let mut restored = KvMap::new();
        for (k, v) in a.iter() {
            restored.restore(k.clone(), v.clone());
        }
        assert_eq!(restored, a);
        assert_eq!(restored.digest(), a.digest());
    }

    #[test]
    fn incremental_digest_matches_a_rebuilt_map() {
        let mut a = KvMap::new();
        a.apply(1, &set("x", "1"));
        a.apply(2, &set("y", "2"));
        a.apply(3, &set("x", "3"));
        a.apply(4, &del("y"));
        a.apply(5, &del("absent"));
        let mut rebuilt = KvMap::new();
        for (k, v) in a.iter() {
            rebuilt.restore(k.clone(), v.clone());
        }
        assert_eq!(a.digest(), rebuilt.digest());
        let mut only_x = KvMap::new();
        only_x.apply(3, &set("x", "3"));
        assert_eq!(a.digest(), only_x.digest());
        a.apply(6, &del("x"));
        assert_eq!(a.digest(), KvMap::new().digest());
    }
}
