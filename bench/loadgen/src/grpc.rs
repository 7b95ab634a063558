//! The etcd v3 gRPC scenarios (`run --api grpc`): the same `etcd-client` calls against raftkv's
//! etcd API and against etcd itself — the comparison on etcd's own protocol.
//!
//! Each closed-loop client owns one gRPC connection (one HTTP/2 connection, one call at a time),
//! like each HTTP client owns one keep-alive connection. The operations:
//! - `write`: `KV.Put` of a random preloaded key;
//! - `lread` / `sread`: `KV.Range` of one random preloaded key, linearizable / serializable (an
//!   answer without the key is a `miss` error);
//! - `cas`: a compare-and-swap `KV.Txn` — `if mod_revision(key) == last seen { put } else { get }` —
//!   on one of 16 keys owned by the client, so there is no contention between clients: each txn
//!   is one compare plus one put, the way a lock or a counter is updated. A txn whose compare fails
//!   (after a timeout left the client unsure of the key's revision) learns the revision from the
//!   `get` and counts as a `cas_conflicts`, not as an error;
//! - `lease` (l1): `LeaseGrant(ttl 10)` + `Put` of one of the client's 16 keys with that lease +
//!   `LeaseRevoke`, one op (watch.rs).

use std::time::Duration;

use etcd_client::Client;
use etcd_client::Compare;
use etcd_client::CompareOp;
use etcd_client::ConnectOptions;
use etcd_client::GetOptions;
use etcd_client::KvClient;
use etcd_client::LeaseClient;
use etcd_client::Txn;
use etcd_client::TxnOp;
use etcd_client::TxnOpResponse;

use crate::AnyErr;
use crate::Op;

/// Keys each client compare-and-swaps in the `cas` scenario.
pub const CAS_KEYS_PER_CLIENT: usize = 16;

/// What one call ended as.
pub enum Done {
    Ok,
    /// A CAS txn whose compare failed (the client's view of the key's revision was stale).
    Conflict,
    /// An error, by kind (`timeout`, `io`, `miss`, or the gRPC code).
    Err(String),
}

/// One client's connection and its CAS bookkeeping.
pub struct Conn {
    kv: KvClient,
    lease: LeaseClient,
    value: Vec<u8>,
    /// The mod revision this client last saw of each of its CAS keys (0: absent).
    cas_seen: Vec<i64>,
    client: usize,
}

/// Connects to `addr` (host:port) and makes one call, so the connection is up before the clock
/// starts.
pub async fn connect(
    addr: &str,
    client: usize,
    value: Vec<u8>,
    timeout: Duration,
) -> Result<Conn, AnyErr> {
    let options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout);
    let client_ = Client::connect([format!("http://{addr}")], Some(options)).await?;
    let (mut kv, lease) = (client_.kv_client(), client_.lease_client());
    kv.get(
        "loadgen-warm-up",
        Some(GetOptions::new().with_serializable()),
    )
    .await?;
    Ok(Conn {
        kv,
        lease,
        value,
        cas_seen: vec![0; CAS_KEYS_PER_CLIENT],
        client,
    })
}

/// 16-byte CAS key `j` of `client`: `cas` + 5 + 8 digits.
fn cas_key(client: usize, j: usize) -> String {
    format!("cas{client:05}{j:08}")
}

impl Conn {
    /// One call: `key` for put/range, `pick` chooses the CAS key.
    pub async fn call(&mut self, op: Op, key: &str, pick: u64, timeout: Duration) -> Done {
        match tokio::time::timeout(timeout, self.call_inner(op, key, pick)).await {
            Err(_) => Done::Err("timeout".into()),
            Ok(Err(e)) => Done::Err(error_kind(&e)),
            Ok(Ok(done)) => done,
        }
    }

    async fn call_inner(
        &mut self,
        op: Op,
        key: &str,
        pick: u64,
    ) -> Result<Done, etcd_client::Error> {
        match op {
            Op::Write => {
                self.kv.put(key, self.value.clone(), None).await?;
                Ok(Done::Ok)
            }
            Op::LinRead | Op::StaleRead => {
                let options = (op == Op::StaleRead).then(|| GetOptions::new().with_serializable());
                let r = self.kv.get(key, options).await?;
                Ok(if r.kvs().is_empty() {
                    Done::Err("miss".into())
                } else {
                    Done::Ok
                })
            }
            Op::Lease => {
                // 16 bytes: `l1` + 5 + 9 digits; revoking the lease deletes the key again.
                let key = format!(
                    "l1{:05}{:09}",
                    self.client,
                    pick % CAS_KEYS_PER_CLIENT as u64
                );
                crate::watch::lease_churn(&mut self.kv, &mut self.lease, &key, self.value.clone())
                    .await?;
                Ok(Done::Ok)
            }
            Op::Cas => {
                let j = (pick % CAS_KEYS_PER_CLIENT as u64) as usize;
                let key = cas_key(self.client, j);
                let seen = self.cas_seen[j];
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, seen)])
                    .and_then([TxnOp::put(key.as_str(), self.value.clone(), None)])
                    .or_else([TxnOp::get(key.as_str(), None)]);
                let r = self.kv.txn(txn).await?;
                if r.succeeded() {
                    // The txn's revision is the key's new mod revision.
                    self.cas_seen[j] = r.header().map(|h| h.revision()).unwrap_or(0);
                    return Ok(Done::Ok);
                }
                self.cas_seen[j] = r
                    .op_responses()
                    .into_iter()
                    .find_map(|o| match o {
                        TxnOpResponse::Get(g) => {
                            Some(g.kvs().first().map(|kv| kv.mod_revision()).unwrap_or(0))
                        }
                        _ => None,
                    })
                    .unwrap_or(0);
                Ok(Done::Conflict)
            }
        }
    }
}

pub fn error_kind(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("grpc_{:?}", s.code()).to_lowercase(),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => "io".into(),
        _ => "other".into(),
    }
}
