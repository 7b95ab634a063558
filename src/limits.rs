//! Every size limit of the node in one place, and the one check every command passes on the
//! leader before it is proposed ([`check_command`]), whatever path it came by (an HTTP handler,
//! a batch forwarded by a follower, a hand-made call to the internal API).
//!
//! The limits nest, and the compile-time assertions at the bottom keep them nested:
//! a key and a value fit the snapshot format; a command (key + value + encoding) fits one log
//! entry; one entry of the largest allowed command fits one append request and one forwarded
//! batch; both fit the receiver's body limit. So no valid command can ever be refused on its
//! way through replication, and no request a node sends can exceed what its peers accept.

use crate::error::KvError;
use crate::raft::types::Command;
use crate::store::snapshot;

/// Longest key, in bytes (UTF-8).
pub const KEY_BYTES_MAX: usize = 4096;
/// Default `--max-value-bytes`: the largest value, and the largest `POST /key` body.
pub const VALUE_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// The largest `--max-value-bytes` accepted at startup. A value is held in memory several
/// times on its way (request body, command, log cache, append request), and one entry holding
/// it must fit one append request ([`APPEND_BYTES_MAX`]) — 32 MiB keeps both comfortable.
pub const VALUE_BYTES_MAX_CEILING: usize = 32 << 20;
/// Most pairs in one multi-key set (`POST /key`).
pub const SET_MANY_PAIRS_MAX: usize = 10_000;
/// Encoding allowance of one command beyond its value bytes: its key(s) and length prefixes.
pub const COMMAND_SLACK_BYTES: usize = 64 << 10;
/// What one log entry adds to its command when encoded: log id and payload tag.
pub const ENTRY_OVERHEAD_BYTES_MAX: usize = 64;
/// Largest encoded append request a node sends (the entries are cut to fit, see
/// `raft/network.rs`).
pub const APPEND_BYTES_MAX: usize = 64 << 20;
/// Encoded size of an append request without its entries (vote, prev log id, commit, count).
pub const APPEND_HEADER_BYTES_MAX: usize = 256;
/// Time an append request is given per byte, on top of openraft's per-RPC timeout: a follower
/// must take at least this many bytes per second (a 64 MiB catch-up append gets 4 s).
pub const APPEND_BYTES_PER_SEC_MIN: usize = 16 << 20;
/// Most commands in one batch forwarded to the leader.
pub const BATCH_COMMANDS_MAX: usize = 512;
/// Largest encoded batch forwarded to the leader (`/raft/write_batch`).
pub const BATCH_BYTES_MAX: usize = 64 << 20;
/// What a peer request body may hold beyond an append or a batch.
pub const RPC_BODY_SLACK_BYTES: usize = 1 << 20;
/// Largest accepted body of a (non-snapshot) peer request.
pub const RPC_BODY_BYTES_MAX: usize = APPEND_BYTES_MAX + RPC_BODY_SLACK_BYTES;
/// Largest accepted snapshot header (vote + metadata incl. membership).
pub const SNAPSHOT_HEADER_BYTES_MAX: usize = 16 << 20;
/// Largest snapshot a node accepts from its leader. The whole data set lives in memory and a
/// received snapshot is decoded into it, so a larger one would not fit a host anyway.
pub const SNAPSHOT_BYTES_MAX: u64 = 16 << 30;

/// Largest gRPC message etcd's API sends (a response); a larger one fails with `OutOfRange`
/// (tonic's answer) rather than being cut. Bounds what one `Range` page may carry once the
/// multi-version store lands (clients page with `limit`).
pub const GRPC_RESPONSE_BYTES_MAX: usize = 64 << 20;

/// Largest gRPC message a client may send to etcd's API: what the HTTP API accepts, the largest
/// value plus the command slack (its key and the encoding), so any request valid on one API is
/// valid on the other. Over it the call fails with `OutOfRange` (tonic's answer; etcd's Go
/// server says `ResourceExhausted`) before it is decoded.
pub const fn grpc_request_bytes_max(value_bytes_max: usize) -> usize {
    command_bytes_max(value_bytes_max)
}

/// Largest encoded command allowed with `--max-value-bytes` = `value_bytes_max`.
pub const fn command_bytes_max(value_bytes_max: usize) -> usize {
    value_bytes_max + COMMAND_SLACK_BYTES
}

/// Bytes of postcard's varint encoding of `n` (a length prefix).
pub const fn varint_len(n: usize) -> usize {
    let mut n = n as u64;
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// The exact postcard-encoded size of `cmd`, computed without encoding it.
pub fn command_encoded_len(cmd: &Command) -> usize {
    let bytes = |b: usize| varint_len(b) + b;
    // The variant tag: one byte (fewer than 128 variants).
    1 + match cmd {
        Command::Set { key, value } => bytes(key.len()) + bytes(value.len()),
        Command::SetMany { pairs } => {
            varint_len(pairs.len())
                + pairs
                    .iter()
                    .map(|(k, v)| bytes(k.len()) + bytes(v.len()))
                    .sum::<usize>()
        }
        Command::Delete { key } => bytes(key.len()),
        // The etcd operations are nested: sized by postcard itself (no buffer is allocated).
        Command::Put(_)
        | Command::DeleteRange(_)
        | Command::Txn(_)
        | Command::Compact { .. }
        | Command::LeaseGrant { .. }
        | Command::LeaseRevoke { .. } => {
            return postcard::experimental::serialized_size(cmd).unwrap_or(usize::MAX);
        }
        Command::Batch(cmds) => {
            varint_len(cmds.len()) + cmds.iter().map(command_encoded_len).sum::<usize>()
        }
    }
}

/// Rejects keys clients cannot address (empty) or that are over [`KEY_BYTES_MAX`].
pub fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::BadRequest("empty key".into()));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(KvError::BadRequest(format!(
            "key is {} bytes, over the limit of {KEY_BYTES_MAX}",
            key.len()
        )));
    }
    Ok(())
}

fn check_value(len: usize, value_bytes_max: usize) -> Result<(), KvError> {
    if len > value_bytes_max {
        return Err(KvError::TooLarge {
            what: "value".into(),
            size: len,
            limit: value_bytes_max,
        });
    }
    Ok(())
}

/// The check every command passes on the leader before it is proposed: keys non-empty and at
/// most [`KEY_BYTES_MAX`], values at most `value_bytes_max`, a multi-key set of 1 to
/// [`SET_MANY_PAIRS_MAX`] pairs, and the whole command at most [`command_bytes_max`] encoded.
pub fn check_command(cmd: &Command, value_bytes_max: usize) -> Result<(), KvError> {
    match cmd {
        Command::Set { key, value } => {
            check_key(key)?;
            check_value(value.len(), value_bytes_max)?;
        }
        Command::SetMany { pairs } => {
            if pairs.is_empty() {
                return Err(KvError::BadRequest("a multi-key set needs a key".into()));
            }
            if pairs.len() > SET_MANY_PAIRS_MAX {
                return Err(KvError::BadRequest(format!(
                    "{} keys in one request, over the limit of {SET_MANY_PAIRS_MAX}",
                    pairs.len()
                )));
            }
            for (key, value) in pairs {
                check_key(key)?;
                check_value(value.len(), value_bytes_max)?;
            }
        }
        Command::Delete { key } => check_key(key)?,
        Command::Put(put) => check_put(put, value_bytes_max)?,
        Command::DeleteRange(d) => {
            check_key_bytes(&d.key)?;
            check_key_bytes(&d.range_end)?;
        }
        Command::Txn(txn) => check_txn(txn, value_bytes_max)?,
        Command::Compact { .. } | Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => {}
        // Made by the leader's write batching from checked commands; checked again for a batch
        // that came another way (a peer's forwarded write).
        Command::Batch(cmds) => {
            if cmds.is_empty() || cmds.len() > BATCH_COMMANDS_MAX {
                return Err(KvError::BadRequest(format!(
                    "a batch of {} commands; it must hold 1 to {BATCH_COMMANDS_MAX}",
                    cmds.len()
                )));
            }
            for inner in cmds {
                if !inner.batchable() {
                    return Err(KvError::BadRequest(format!("a batch may not hold {inner}")));
                }
                check_command(inner, value_bytes_max)?;
            }
        }
    }
    let size = command_encoded_len(cmd);
    let limit = command_bytes_max(value_bytes_max);
    if size > limit {
        return Err(KvError::TooLarge {
            what: "command".into(),
            size,
            limit,
        });
    }
    Ok(())
}

/// An etcd key (or range end) over [`KEY_BYTES_MAX`]; emptiness is the store's (etcd's) check.
fn check_key_bytes(key: &[u8]) -> Result<(), KvError> {
    if key.len() > KEY_BYTES_MAX {
        return Err(KvError::Store(crate::mvcc::MvccError::TooLarge {
            what: "key".into(),
            bytes: key.len(),
            max: KEY_BYTES_MAX,
        }));
    }
    Ok(())
}

fn check_put(put: &crate::mvcc::PutRequest, value_bytes_max: usize) -> Result<(), KvError> {
    check_key_bytes(&put.key)?;
    check_value(put.value.len(), value_bytes_max)
}

/// etcd's txn syntax checks (op counts, empty and duplicate keys: refused before a log entry
/// is spent on them) and our size limits on every key and value, nested txns included.
fn check_txn(txn: &crate::mvcc::TxnRequest, value_bytes_max: usize) -> Result<(), KvError> {
    use crate::mvcc::RequestOp;
    crate::mvcc::validate_txn(txn, crate::store::snapshot::TXN_OPS_MAX).map_err(KvError::Store)?;
    for c in &txn.compare {
        check_key_bytes(&c.key)?;
        check_key_bytes(&c.range_end)?;
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            RequestOp::Range(r) => {
                check_key_bytes(&r.key)?;
                check_key_bytes(&r.range_end)?;
            }
            RequestOp::Put(p) => check_put(p, value_bytes_max)?,
            RequestOp::DeleteRange(d) => {
                check_key_bytes(&d.key)?;
                check_key_bytes(&d.range_end)?;
            }
            RequestOp::Txn(nested) => check_txn(nested, value_bytes_max)?,
        }
    }
    Ok(())
}

/// How many of `entry_bytes` (encoded sizes, in order) fit one request of at most `max` bytes
/// after `header_bytes`: the longest fitting prefix, but always at least one entry (one valid
/// entry always fits, see the assertions below).
pub fn fitting_prefix(header_bytes: usize, entry_bytes: &[usize], max: usize) -> usize {
    let mut total = header_bytes;
    let mut count = 0;
    for &bytes in entry_bytes {
        total += bytes;
        if total > max && count > 0 {
            break;
        }
        count += 1;
    }
    count
}

// The nesting promised in the module docs.
const _: () = assert!(KEY_BYTES_MAX <= snapshot::KEY_BYTES_MAX);
const _: () = assert!(VALUE_BYTES_MAX_CEILING <= snapshot::VALUE_BYTES_MAX);
const _: () = assert!(VALUE_BYTES_MAX_DEFAULT <= VALUE_BYTES_MAX_CEILING);
const _: () = assert!(KEY_BYTES_MAX + 2 * varint_len(KEY_BYTES_MAX) + 16 <= COMMAND_SLACK_BYTES);
const _: () = assert!(
    APPEND_HEADER_BYTES_MAX + ENTRY_OVERHEAD_BYTES_MAX + command_bytes_max(VALUE_BYTES_MAX_CEILING)
        <= APPEND_BYTES_MAX
);
const _: () = assert!(
    varint_len(BATCH_COMMANDS_MAX) + command_bytes_max(VALUE_BYTES_MAX_CEILING) <= BATCH_BYTES_MAX
);
const _: () = assert!(APPEND_BYTES_MAX <= RPC_BODY_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_MAX <= RPC_BODY_BYTES_MAX);

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value_bytes: usize) -> Command {
        Command::Set {
            key: key.into(),
            value: vec![7; value_bytes],
        }
    }

    #[test]
    fn encoded_len_is_postcards() {
        let cmds = [
            set("k", 0),
            set(&"k".repeat(200), 300),
            set("k", 20_000),
            Command::Delete { key: "d".into() },
            Command::SetMany {
                pairs: (0..150)
                    .map(|i| (format!("key{i}"), vec![1; i * 3]))
                    .collect(),
            },
            Command::Batch(vec![set("a", 10), Command::Delete { key: "d".into() }]),
            Command::Batch((0..200).map(|i| set(&format!("k{i}"), i)).collect()),
        ];
        for cmd in &cmds {
            let encoded = postcard::to_stdvec(cmd).expect("encode");
            assert_eq!(command_encoded_len(cmd), encoded.len(), "{cmd}");
        }
    }

    #[test]
    fn commands_within_the_limits_pass() {
        let max = 1 << 20;
        assert!(check_command(&set(&"k".repeat(KEY_BYTES_MAX), max), max).is_ok());
        assert!(check_command(&Command::Delete { key: "k".into() }, max).is_ok());
        let pairs = vec![
            ("a".to_string(), vec![0; max / 2]),
            ("b".into(), vec![0; max / 2]),
        ];
        assert!(check_command(&Command::SetMany { pairs }, max).is_ok());
    }

    #[test]
    fn commands_over_the_limits_are_refused() {
        let max = 1024;
        let bad_request =
            |c: &Command| matches!(check_command(c, max), Err(KvError::BadRequest(_)));
        let too_large =
            |c: &Command| matches!(check_command(c, max), Err(KvError::TooLarge { .. }));
        assert!(bad_request(&set("", 1)));
        assert!(bad_request(&set(&"k".repeat(KEY_BYTES_MAX + 1), 1)));
        assert!(bad_request(&Command::Delete {
            key: "k".repeat((1 << 20) + 1)
        }));
        assert!(too_large(&set("k", max + 1)));
        assert!(bad_request(&Command::SetMany { pairs: vec![] }));
        let many = (0..=SET_MANY_PAIRS_MAX)
            .map(|i| (i.to_string(), vec![]))
            .collect();
        assert!(bad_request(&Command::SetMany { pairs: many }));
        let pairs = vec![("ok".into(), vec![]), (String::new(), vec![])];
        assert!(bad_request(&Command::SetMany { pairs }));
        // Every value within the limit, the whole command over it.
        let pairs = (0..100).map(|i| (i.to_string(), vec![0; max])).collect();
        assert!(too_large(&Command::SetMany { pairs }));
    }

    #[test]
    fn prefixes_fit_or_hold_one_entry() {
        assert_eq!(fitting_prefix(10, &[], 100), 0);
        assert_eq!(fitting_prefix(10, &[30, 30, 30], 100), 3);
        assert_eq!(fitting_prefix(10, &[30, 30, 31], 100), 2);
        assert_eq!(fitting_prefix(10, &[90, 1], 100), 1);
        assert_eq!(
            fitting_prefix(10, &[91, 1], 100),
            1,
            "an oversized first entry goes alone"
        );
        assert_eq!(fitting_prefix(10, &[500], 100), 1);
    }

    #[test]
    fn varints() {
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(16_383), 2);
        assert_eq!(varint_len(16_384), 3);
        assert_eq!(varint_len(usize::MAX), 10);
    }

    #[test]
    fn a_batch_holds_checked_client_writes_only() {
        let max = VALUE_BYTES_MAX_DEFAULT;
        let ok = Command::Batch(vec![set("a", 1), Command::Delete { key: "b".into() }]);
        assert!(check_command(&ok, max).is_ok());
        let refused = [
            Command::Batch(Vec::new()),
            Command::Batch(vec![set("a", 1); BATCH_COMMANDS_MAX + 1]),
            Command::Batch(vec![Command::Batch(vec![set("a", 1)])]),
            Command::Batch(vec![set("a", 1), Command::Compact { revision: 1 }]),
            Command::Batch(vec![set("", 1)]),
            Command::Batch(vec![set("a", max + 1)]),
            // Each command fits, together they are over one command's limit.
            Command::Batch(vec![set("a", max), set("b", max)]),
        ];
        for cmd in &refused {
            assert!(check_command(cmd, max).is_err(), "{cmd} must be refused");
        }
    }
}
