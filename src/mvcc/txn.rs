//! Transactions: etcd's request validation (`checkTxnRequest`, `checkIntervals` in
//! v3rpc/key.go), compare evaluation (`applyCompare`), the pre-apply checks of the taken path
//! (`checkRequestPut`, `checkRequestRange`) and the apply itself (`applyTxn`).
//!
//! etcd evaluates every compare — nested txns' too — against the state before the txn, while
//! ranges inside the txn see its earlier writes. Both hold here: compares read at `begin`, the
//! txn's writes land at `begin + 1`.

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::mvcc::LeaseCheck;
use crate::mvcc::Store;
use crate::mvcc::error::MvccError;
use crate::mvcc::history::Entry;
use crate::mvcc::types::Compare;
use crate::mvcc::types::CompareResult;
use crate::mvcc::types::CompareTarget;
use crate::mvcc::types::RequestOp;
use crate::mvcc::types::ResponseOp;
use crate::mvcc::types::TxnRequest;
use crate::mvcc::types::TxnResponse;
use crate::mvcc::write::WriteTxn;
use crate::mvcc::write::check_put_request;

/// etcd's default `--max-txn-ops`.
pub const TXN_OPS_MAX_DEFAULT: usize = 128;

/// Validate a txn the way etcd's gRPC layer does before proposing it: op counts (a nested txn
/// gets what its parent left), empty keys, put flags, then overlapping puts/deletes per branch.
/// [`Store::txn`] runs it too, so a log entry that skipped it cannot apply differently.
pub fn validate_txn(req: &TxnRequest, txn_ops_max: usize) -> Result<(), MvccError> {
    check_txn_request(req, txn_ops_max)?;
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

fn check_txn_request(req: &TxnRequest, max: usize) -> Result<(), MvccError> {
    let opc = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if opc > max {
        return Err(MvccError::TooManyOps { max });
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(MvccError::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        match op {
            RequestOp::Range(r) if r.key.is_empty() => return Err(MvccError::EmptyKey),
            RequestOp::DeleteRange(d) if d.key.is_empty() => return Err(MvccError::EmptyKey),
            RequestOp::Put(p) => check_put_request(p)?,
            RequestOp::Txn(t) => check_txn_request(t, max - opc)?,
            _ => {}
        }
    }
    Ok(())
}

/// A delete's interval as etcd's interval tree sees it: an empty end is the point `key`; any
/// other end is taken literally — so a from-key delete (`end = [0]`) covers nothing and never
/// conflicts with a put (etcd 3.4's behaviour, kept).
fn delete_covers(dels: &[(Bytes, Bytes)], k: &[u8]) -> bool {
    dels.iter().any(|(b, e)| {
        if e.is_empty() {
            k == &b[..]
        } else {
            &b[..] <= k && k < &e[..]
        }
    })
}

type Intervals = (BTreeSet<Bytes>, Vec<(Bytes, Bytes)>);

fn check_intervals(reqs: &[RequestOp]) -> Result<Intervals, MvccError> {
    let mut dels: Vec<(Bytes, Bytes)> = reqs
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) => Some((d.key.clone(), d.range_end.clone())),
            _ => None,
        })
        .collect();
    let mut puts = BTreeSet::new();
    for op in reqs {
        let RequestOp::Txn(t) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || delete_covers(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            // then and else exclude each other: the same key in both is fine.
            if puts.contains(k) && !puts_then.contains(k) || delete_covers(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in reqs {
        let RequestOp::Put(p) = op else { continue };
        if puts.contains(&p.key) || delete_covers(&dels, &p.key) {
            return Err(MvccError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

fn compare_entry(c: &Compare, e: Option<&Entry>) -> bool {
    let num = |v: Option<i64>, want: i64| v.unwrap_or(0).cmp(&want);
    let ord = match &c.target {
        CompareTarget::Version(v) => num(e.map(|e| e.version), *v),
        CompareTarget::Create(v) => num(e.map(|e| e.create), *v),
        CompareTarget::Mod(v) => num(e.map(|e| e.rev.main), *v),
        CompareTarget::Lease(v) => num(e.map(|e| e.lease), *v),
        CompareTarget::Value(v) => {
            let have: &[u8] = e.and_then(|e| e.value.as_deref()).unwrap_or_default();
            have.cmp(&v[..])
        }
    };
    match c.result {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::NotEqual => ord.is_ne(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
    }
}

/// Which check pass [`Store::check_path`] runs: etcd checks every put of the taken path first,
/// then every range.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Puts,
    Ranges,
}

impl Store {
    /// etcd's `applyCompare`: true iff it holds for every key in its range at `rev`; with no
    /// key there, a missing key is version/create/mod/lease 0, and a VALUE compare fails.
    pub(crate) fn compare_holds(&self, c: &Compare, rev: i64) -> bool {
        let mut any = false;
        for (_, e) in self.live_in_range(&c.key, &c.range_end, rev) {
            any = true;
            if !compare_entry(c, Some(e)) {
                return false;
            }
        }
        any || !matches!(c.target, CompareTarget::Value(_)) && compare_entry(c, None)
    }

    fn compares_hold(&self, cmps: &[Compare], rev: i64) -> bool {
        cmps.iter().all(|c| self.compare_holds(c, rev))
    }

    fn check_path(
        &self,
        req: &TxnRequest,
        pass: Pass,
        leases: &dyn LeaseCheck,
    ) -> Result<(), MvccError> {
        let rev = self.current;
        let ops = if self.compares_hold(&req.compare, rev) {
            &req.success
        } else {
            &req.failure
        };
        for op in ops {
            match (op, pass) {
                (RequestOp::Txn(t), _) => self.check_path(t, pass, leases)?,
                (RequestOp::Put(p), Pass::Puts) => self.check_put(p, leases, false)?,
                (RequestOp::Range(r), Pass::Ranges) if r.revision != 0 => {
                    if r.revision > rev {
                        return Err(MvccError::FutureRevision {
                            current_revision: rev,
                        });
                    }
                    if r.revision < self.compacted {
                        return Err(MvccError::Compacted {
                            compact_revision: self.compacted,
                        });
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// etcd's put preconditions at the current revision. A single put checks the lease first
    /// (`applierV3backend.Put`), a put in a txn the key first (`checkRequestPut`).
    pub(crate) fn check_put(
        &self,
        p: &crate::mvcc::PutRequest,
        leases: &dyn LeaseCheck,
        lease_first: bool,
    ) -> Result<(), MvccError> {
        let lease = || {
            if p.lease != 0 && !leases.lease_exists(p.lease) {
                return Err(MvccError::LeaseNotFound { lease: p.lease });
            }
            Ok(())
        };
        if lease_first {
            lease()?;
        }
        if (p.ignore_value || p.ignore_lease)
            && self.keys.get(&p.key[..]).and_then(|h| h.live()).is_none()
        {
            return Err(MvccError::KeyNotFound);
        }
        lease()
    }

    /// Validate, check the taken path, then apply: one revision if anything changed.
    pub fn txn(
        &mut self,
        req: TxnRequest,
        leases: &dyn LeaseCheck,
    ) -> Result<crate::mvcc::Written<TxnResponse>, MvccError> {
        validate_txn(&req, self.txn_ops_max)?;
        self.check_path(&req, Pass::Puts, leases)?;
        self.check_path(&req, Pass::Ranges, leases)?;
        let mut w = WriteTxn::new(self);
        let mut response = match apply_txn(&mut w, req) {
            Ok(r) => r,
            Err(e) => {
                // Only an ignore_* put after a from-key delete of its key gets here (see write.rs).
                w.abort();
                return Err(e);
            }
        };
        let (revision, changes) = w.finish();
        response.revision = revision;
        Ok(crate::mvcc::Written { response, changes })
    }
}

fn apply_txn(w: &mut WriteTxn<'_>, req: TxnRequest) -> Result<TxnResponse, MvccError> {
    let succeeded = w.store.compares_hold(&req.compare, w.begin);
    let ops = if succeeded { req.success } else { req.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        responses.push(match op {
            RequestOp::Range(r) => ResponseOp::Range(w.range(&r)?),
            RequestOp::Put(p) => ResponseOp::Put(w.put(p)?),
            RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(w.delete_range(&d)),
            RequestOp::Txn(t) => ResponseOp::Txn(apply_txn(w, t)?),
        });
    }
    Ok(TxnResponse {
        revision: 0,
        succeeded,
        responses,
    })
}

/// etcd's `isTxnReadonly`: every op of both branches is a range (a nested txn counts as a
/// write). Such a txn changes nothing and may be served by [`Store::read_txn`] without a log
/// entry (after ReadIndex, or locally when serializable).
pub fn is_txn_read_only(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| matches!(op, RequestOp::Range(_)))
}

impl Store {
    /// A read-only txn over `&self`, answering exactly what [`Store::txn`] would; `None` if the
    /// txn is not read-only (see [`is_txn_read_only`]).
    pub fn read_txn(&self, req: &TxnRequest) -> Option<Result<TxnResponse, MvccError>> {
        if !is_txn_read_only(req) {
            return None;
        }
        let answer = || {
            validate_txn(req, self.txn_ops_max)?;
            self.check_path(req, Pass::Ranges, &crate::mvcc::NoLeases)?;
            let succeeded = self.compares_hold(&req.compare, self.current);
            let ops = if succeeded {
                &req.success
            } else {
                &req.failure
            };
            let mut responses = Vec::with_capacity(ops.len());
            for op in ops {
                if let RequestOp::Range(r) = op {
                    responses.push(ResponseOp::Range(self.range_at(r, self.current)?));
                }
            }
            Ok(TxnResponse {
                revision: self.current,
                succeeded,
                responses,
            })
        };
        Some(answer())
    }
}
