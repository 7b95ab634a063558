//! The deliberately simple model the store is tested against: the whole key space as a plain
//! map, one full copy per revision (`states[r]` is the key space at revision `r`). No history
//! per key, no compaction of data (only of what may be read), no sub-revisions in storage.
//!
//! Shared with the store on purpose: [`crate::mvcc::validate_txn`] (etcd's syntactic checks,
//! pinned by unit tests) and the request/response types.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::mvcc::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelKv {
    pub value: Bytes,
    pub create: i64,
    pub modified: i64,
    pub version: i64,
    pub lease: i64,
}

pub type Space = BTreeMap<Bytes, ModelKv>;

pub struct Model {
    /// `states[r]` = key space at revision r; `states[0]` is unused.
    pub states: Vec<Space>,
    pub compacted: i64,
    pub txn_ops_max: usize,
}

fn kv(k: &Bytes, m: &ModelKv) -> KeyValue {
    KeyValue {
        key: k.clone(),
        create_revision: m.create,
        mod_revision: m.modified,
        version: m.version,
        value: m.value.clone(),
        lease: m.lease,
    }
}

/// etcd's documented range_end rules, written out.
fn matches(key: &[u8], end: &[u8], k: &[u8]) -> bool {
    if end.is_empty() {
        k == key
    } else if end == [0] {
        k >= key
    } else {
        key <= k && k < end
    }
}

fn lease_ok(lease: i64, leases: &dyn Fn(i64) -> bool) -> bool {
    lease == 0 || leases(lease)
}

/// One write txn in progress on a copy of the current space.
struct Work {
    begin: i64,
    space: Space,
    changes: Vec<Change>,
}

impl Work {
    fn view(&self) -> i64 {
        self.begin + i64::from(!self.changes.is_empty())
    }
    fn rev(&self) -> Revision {
        Revision::new(self.begin + 1, self.changes.len() as i64)
    }
}

impl Model {
    pub fn new(txn_ops_max: usize) -> Self {
        Model {
            states: vec![Space::new(), Space::new()],
            compacted: -1,
            txn_ops_max,
        }
    }

    pub fn current(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    fn read(&self, space: &Space, req: &RangeRequest, cur: i64) -> RangeResponse {
        let all: Vec<KeyValue> = space
            .iter()
            .filter(|(k, _)| matches(&req.key, &req.range_end, k))
            .map(|(k, m)| kv(k, m))
            .collect();
        let count = all.len() as i64;
        let mut kvs: Vec<KeyValue> = if req.count_only { Vec::new() } else { all };
        // etcd quirk: with order NONE and no filter, only the first limit+1 keys (by key) are
        // fetched — a non-key target then sorts just those.
        let filters = [
            req.min_mod_revision,
            req.max_mod_revision,
            req.min_create_revision,
            req.max_create_revision,
        ];
        if req.sort_order == SortOrder::None && filters.iter().all(|f| *f == 0) && req.limit > 0 {
            kvs.truncate(req.limit as usize + 1);
        }
        let pass = |lo: i64, hi: i64, x: i64| (lo == 0 || x >= lo) && (hi == 0 || x <= hi);
        kvs.retain(|kv| {
            pass(req.min_mod_revision, req.max_mod_revision, kv.mod_revision)
                && pass(
                    req.min_create_revision,
                    req.max_create_revision,
                    kv.create_revision,
                )
        });
        let field = |kv: &KeyValue| -> (i64, Bytes) {
            match req.sort_target {
                SortTarget::Key => (0, kv.key.clone()),
                SortTarget::Version => (kv.version, Bytes::new()),
                SortTarget::Create => (kv.create_revision, Bytes::new()),
                SortTarget::Mod => (kv.mod_revision, Bytes::new()),
                SortTarget::Value => (0, kv.value.clone()),
            }
        };
        match (req.sort_order, req.sort_target) {
            (SortOrder::None, SortTarget::Key) => {}
            (SortOrder::Descend, _) => {
                kvs.sort_by_key(|kv| (std::cmp::Reverse(field(kv)), kv.key.clone()))
            }
            _ => kvs.sort_by_key(|kv| (field(kv), kv.key.clone())),
        }
        let more = req.limit > 0 && kvs.len() as i64 > req.limit;
        if more {
            kvs.truncate(req.limit as usize);
        }
        if req.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value = Bytes::new());
        }
        RangeResponse {
            revision: cur,
            kvs,
            more,
            count,
        }
    }

    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        let cur = self.current();
        if req.revision > cur {
            return Err(MvccError::FutureRevision {
                current_revision: cur,
            });
        }
        let rev = if req.revision <= 0 { cur } else { req.revision };
        if rev < self.compacted {
            return Err(MvccError::Compacted {
                compact_revision: self.compacted,
            });
        }
        Ok(self.read(&self.states[rev as usize], req, cur))
    }

    fn put_in(&self, w: &mut Work, p: &PutRequest) -> Result<PutResponse, MvccError> {
        let prev = w.space.get(&p.key).cloned();
        if prev.is_none() && (p.ignore_value || p.ignore_lease) {
            return Err(MvccError::KeyNotFound);
        }
        let prev_kv = prev.as_ref().map(|m| kv(&p.key, m));
        let rev = w.rev();
        let (create, version) = prev
            .as_ref()
            .map_or((rev.main, 1), |m| (m.create, m.version + 1));
        let value = match (&prev, p.ignore_value) {
            (Some(m), true) => m.value.clone(),
            _ => p.value.clone(),
        };
        let lease = match (&prev, p.ignore_lease) {
            (Some(m), true) => m.lease,
            _ => p.lease,
        };
        let m = ModelKv {
            value,
            create,
            modified: rev.main,
            version,
            lease,
        };
        let after = kv(&p.key, &m);
        w.space.insert(p.key.clone(), m);
        w.changes.push(Change {
            kind: ChangeKind::Put,
            revision: rev,
            kv: after,
            prev_kv: prev_kv.clone(),
        });
        Ok(PutResponse {
            revision: w.begin + 1,
            prev_kv: if p.prev_kv { prev_kv } else { None },
        })
    }

    fn delete_in(&self, w: &mut Work, d: &DeleteRangeRequest) -> DeleteRangeResponse {
        let doomed: Vec<Bytes> = w
            .space
            .keys()
            .filter(|k| matches(&d.key, &d.range_end, k))
            .cloned()
            .collect();
        let mut prev_kvs = Vec::new();
        for k in &doomed {
            let Some(m) = w.space.remove(k) else { continue };
            let rev = w.rev();
            let tomb = KeyValue {
                key: k.clone(),
                mod_revision: rev.main,
                ..KeyValue::default()
            };
            w.changes.push(Change {
                kind: ChangeKind::Delete,
                revision: rev,
                kv: tomb,
                prev_kv: Some(kv(k, &m)),
            });
            prev_kvs.push(kv(k, &m));
        }
        let revision = if w.changes.is_empty() {
            w.begin
        } else {
            w.begin + 1
        };
        DeleteRangeResponse {
            revision,
            deleted: doomed.len() as i64,
            prev_kvs: if d.prev_kv { prev_kvs } else { Vec::new() },
        }
    }

    fn finish(&mut self, w: Work) -> Vec<Change> {
        if !w.changes.is_empty() {
            self.states.push(w.space);
        }
        w.changes
    }

    fn start(&self) -> Work {
        Work {
            begin: self.current(),
            space: self.states[self.current() as usize].clone(),
            changes: Vec::new(),
        }
    }

    pub fn put(
        &mut self,
        p: PutRequest,
        leases: &dyn Fn(i64) -> bool,
    ) -> Result<Written<PutResponse>, MvccError> {
        // The syntactic checks of a put are the same in and out of a txn.
        validate_txn(
            &TxnRequest {
                success: vec![RequestOp::Put(p.clone())],
                ..Default::default()
            },
            1,
        )?;
        if !lease_ok(p.lease, leases) {
            return Err(MvccError::LeaseNotFound { lease: p.lease });
        }
        if (p.ignore_value || p.ignore_lease)
            && !self.states[self.current() as usize].contains_key(&p.key)
        {
            return Err(MvccError::KeyNotFound);
        }
        let mut w = self.start();
        let response = self.put_in(&mut w, &p)?;
        Ok(Written {
            response,
            changes: self.finish(w),
        })
    }

    pub fn delete(
        &mut self,
        d: &DeleteRangeRequest,
    ) -> Result<Written<DeleteRangeResponse>, MvccError> {
        if d.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        let mut w = self.start();
        let response = self.delete_in(&mut w, d);
        Ok(Written {
            response,
            changes: self.finish(w),
        })
    }

    fn holds(&self, c: &Compare) -> bool {
        let space = &self.states[self.current() as usize];
        let hits: Vec<&ModelKv> = space
            .iter()
            .filter(|(k, _)| matches(&c.key, &c.range_end, k))
            .map(|(_, m)| m)
            .collect();
        let zero = ModelKv {
            value: Bytes::new(),
            create: 0,
            modified: 0,
            version: 0,
            lease: 0,
        };
        let one = |m: &ModelKv| {
            let ord = match &c.target {
                CompareTarget::Version(v) => m.version.cmp(v),
                CompareTarget::Create(v) => m.create.cmp(v),
                CompareTarget::Mod(v) => m.modified.cmp(v),
                CompareTarget::Lease(v) => m.lease.cmp(v),
                CompareTarget::Value(v) => m.value.cmp(v),
            };
            match c.result {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::NotEqual => ord.is_ne(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
            }
        };
        match (hits.is_empty(), &c.target) {
            (true, CompareTarget::Value(_)) => false,
            (true, _) => one(&zero),
            (false, _) => hits.into_iter().all(one),
        }
    }

    /// The ops of the taken path, nested txns flattened, in apply order.
    fn taken<'a>(&self, t: &'a TxnRequest) -> Vec<&'a RequestOp> {
        let ops = if t.compare.iter().all(|c| self.holds(c)) {
            &t.success
        } else {
            &t.failure
        };
        ops.iter()
            .flat_map(|op| match op {
                RequestOp::Txn(inner) => self.taken(inner),
                other => vec![other],
            })
            .collect()
    }

    fn check_flat(
        &self,
        ops: &[&RequestOp],
        leases: &dyn Fn(i64) -> bool,
    ) -> Result<(), MvccError> {
        let space = &self.states[self.current() as usize];
        for op in ops {
            if let RequestOp::Put(p) = op {
                if (p.ignore_value || p.ignore_lease) && !space.contains_key(&p.key) {
                    return Err(MvccError::KeyNotFound);
                }
                if !lease_ok(p.lease, leases) {
                    return Err(MvccError::LeaseNotFound { lease: p.lease });
                }
            }
        }
        for op in ops {
            if let RequestOp::Range(r) = op {
                if r.revision != 0 && r.revision > self.current() {
                    return Err(MvccError::FutureRevision {
                        current_revision: self.current(),
                    });
                }
                if r.revision != 0 && r.revision < self.compacted {
                    return Err(MvccError::Compacted {
                        compact_revision: self.compacted,
                    });
                }
            }
        }
        Ok(())
    }

    fn apply(&self, w: &mut Work, t: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let succeeded = t.compare.iter().all(|c| self.holds(c));
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::new();
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => {
                    let space = if r.revision <= 0 {
                        &w.space
                    } else {
                        &self.states[r.revision as usize]
                    };
                    ResponseOp::Range(self.read(space, r, w.view()))
                }
                RequestOp::Put(p) => ResponseOp::Put(self.put_in(w, p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete_in(w, d)),
                RequestOp::Txn(inner) => ResponseOp::Txn(self.apply(w, inner)?),
            });
        }
        Ok(TxnResponse {
            revision: 0,
            succeeded,
            responses,
        })
    }

    pub fn txn(
        &mut self,
        t: &TxnRequest,
        leases: &dyn Fn(i64) -> bool,
    ) -> Result<Written<TxnResponse>, MvccError> {
        validate_txn(t, self.txn_ops_max)?;
        self.check_flat(&self.taken(t), leases)?;
        let mut w = self.start();
        // An error drops the work: the txn changes nothing.
        let mut response = self.apply(&mut w, t)?;
        let changes = self.finish(w);
        response.revision = self.current();
        Ok(Written { response, changes })
    }

    pub fn compact(&mut self, rev: i64) -> Result<i64, MvccError> {
        if rev <= self.compacted {
            return Err(MvccError::Compacted {
                compact_revision: self.compacted,
            });
        }
        if rev > self.current() {
            return Err(MvccError::FutureRevision {
                current_revision: self.current(),
            });
        }
        self.compacted = rev;
        Ok(self.current())
    }
}
