//! The checker: is a recorded history linearizable, and did every acknowledged write survive?
//!
//! **Linearizability, per key.** raftkv is a map of independent registers, and linearizability
//! is compositional (Herlihy & Wing 1990, §3.3): the history is linearizable iff the
//! sub-history of every key is. Each key is checked as a register by porcupine-rs (Wing–Gong
//! search with Lowe's memoisation of (linearized set, state)).
//! - reads (default level only — the workload never records `?level=stale` reads here) must
//!   return the register's value; 404 `not_found` reads "absent";
//! - put / delete are writes of a value / of "absent";
//! - a multi-key `POST /key` is projected onto each of its keys as a write with the same
//!   invocation and completion times. That is exactly its effect on each register, so a
//!   linearizable product always passes; it checks every key's view of the multi-write but not
//!   the cross-key atomicity (there is no multi-key read to observe it);
//! - `Fail` operations are dropped (they certainly had no effect), `Unknown` writes may take
//!   effect at any time after their invocation: completion time = `NEVER` (porcupine's
//!   convention); `Unknown` reads are dropped.
//! - Pruning (exact, see `prune_unobserved`): an `Unknown` write whose value no read returned
//!   can always be linearized last, so it is removed before the search; this keeps the search
//!   small when partitions produce many indeterminate writes.
//!
//! **Lost writes** (`lost_writes`): after healing, the final value of each key must be
//! explained: the write that produced it must not have completed before any acknowledged write
//! on that key was invoked (else that acknowledged write was lost).
//!
//! On a violation, `shrink` finds a small witness using only steps that can never turn a
//! linearizable history into a non-linearizable one, so the witness itself proves the bug.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use porcupine_rs::{CheckResult, Model, Operation};

use crate::history::{Action, NEVER, Observed, Op, Outcome};

/// One register operation, as the search sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegOp {
    Write(Option<u64>),
    Read(Option<u64>),
    /// An acknowledged compare-and-swap: the register held `expect`, now holds `new`.
    Cas {
        expect: Option<u64>,
        new: u64,
    },
    /// A refused compare-and-swap (412): the register did not hold `expect`.
    CasRefused {
        expect: Option<u64>,
    },
    /// A compare-and-swap whose outcome is unknown: at its linearization point it either
    /// swapped (the register held `expect`) or did nothing.
    CasMaybe {
        expect: Option<u64>,
        new: u64,
    },
}

/// A single register holding `Option<u64>` (`None` = absent). Initial state: absent.
#[derive(Clone, Debug)]
pub struct Register;

impl Model for Register {
    type State = Option<u64>;
    type Op = RegOp;
    type Metadata = usize;

    fn init() -> Option<u64> {
        None
    }

    fn step(state: &Option<u64>, op: &RegOp) -> (bool, Option<u64>) {
        match op {
            RegOp::Write(v) => (true, *v),
            RegOp::Read(v) => (v == state, *state),
            RegOp::Cas { expect, new } => (expect == state, Some(*new)),
            RegOp::CasRefused { expect } => (expect != state, *state),
            RegOp::CasMaybe { expect, new } => {
                (true, if expect == state { Some(*new) } else { *state })
            }
        }
    }
}

/// One operation projected on one key: `op` indexes the history it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyEvent {
    pub op: usize,
    pub call: i64,
    /// `NEVER` for a write whose outcome is unknown.
    pub ret: i64,
    pub reg: RegOp,
}

impl KeyEvent {
    fn is_read(&self) -> bool {
        matches!(self.reg, RegOp::Read(_) | RegOp::CasRefused { .. })
    }

    /// The same write with an unknown outcome: open-ended, and a compare-and-swap that may
    /// not have swapped. A relaxation: any linearization of the original also fits this one.
    fn relaxed(self) -> KeyEvent {
        let reg = match self.reg {
            RegOp::Cas { expect, new } => RegOp::CasMaybe { expect, new },
            other => other,
        };
        KeyEvent {
            ret: NEVER,
            reg,
            ..self
        }
    }
}

/// Each key's sub-history (failed operations dropped, unknown writes open-ended).
pub fn project(history: &[Op]) -> BTreeMap<String, Vec<KeyEvent>> {
    let mut keys: BTreeMap<String, Vec<KeyEvent>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        match (&op.action, op.outcome) {
            (_, Outcome::Fail) => {}
            (Action::Read { .. }, Outcome::Unknown) => {}
            (Action::Read { key }, Outcome::Ok) => {
                let seen = op
                    .read
                    .as_ref()
                    .map_or(Some(u64::MAX), Observed::as_register);
                keys.entry(key.clone()).or_default().push(KeyEvent {
                    op: i,
                    call: op.call_ns,
                    ret: op.ret_ns,
                    reg: RegOp::Read(seen),
                });
            }
            (Action::CasRefused { .. }, Outcome::Unknown) => {}
            (Action::CasRefused { key, expect }, Outcome::Ok) => {
                keys.entry(key.clone()).or_default().push(KeyEvent {
                    op: i,
                    call: op.call_ns,
                    ret: op.ret_ns,
                    reg: RegOp::CasRefused { expect: *expect },
                });
            }
            (
                Action::Cas {
                    key, expect, value, ..
                },
                outcome,
            ) => {
                let (ret, reg) = if outcome == Outcome::Ok {
                    let reg = RegOp::Cas {
                        expect: *expect,
                        new: *value,
                    };
                    (op.ret_ns, reg)
                } else {
                    let reg = RegOp::CasMaybe {
                        expect: *expect,
                        new: *value,
                    };
                    (NEVER, reg)
                };
                keys.entry(key.clone()).or_default().push(KeyEvent {
                    op: i,
                    call: op.call_ns,
                    ret,
                    reg,
                });
            }
            (action, outcome) => {
                let ret = if outcome == Outcome::Ok {
                    op.ret_ns
                } else {
                    NEVER
                };
                for (key, value) in action.writes() {
                    keys.entry(key.to_owned()).or_default().push(KeyEvent {
                        op: i,
                        call: op.call_ns,
                        ret,
                        reg: RegOp::Write(value),
                    });
                }
            }
        }
    }
    keys
}

/// Removes unknown writes that no read could have observed. Exact: such a write can be
/// linearized after every other operation (its interval is open-ended), where it changes no
/// read's result; conversely removing it from a linearization leaves every read's value
/// unchanged, because no read returned its value. A delete is kept if any read returned
/// "absent" (absence is not unique). Compare-and-swaps count as observers: one that expected
/// the value, and a refused one that expected anything else (found in the brute-force test).
/// An unknown swap whose new value nobody observed is pruned the same way.
pub fn prune_unobserved(events: &[KeyEvent]) -> Vec<KeyEvent> {
    // Reads observe a value, and so does a compare-and-swap that expected it; a refused swap
    // observes "anything but its expected value", which `v` may be what provided.
    let observed = |v: Option<u64>| {
        events.iter().any(|e| match e.reg {
            RegOp::Read(r) => r == v,
            RegOp::Cas { expect, .. } | RegOp::CasMaybe { expect, .. } => expect == v,
            RegOp::CasRefused { expect } => expect != v,
            RegOp::Write(_) => false,
        })
    };
    events
        .iter()
        .filter(|e| match e.reg {
            RegOp::Write(v) if e.ret == NEVER => observed(v),
            RegOp::CasMaybe { new, .. } => observed(Some(new)),
            _ => true,
        })
        .copied()
        .collect()
}

/// Runs the search on one key's events.
pub fn check_events(events: &[KeyEvent], timeout: Duration) -> CheckResult {
    let ops: Vec<Operation<Register>> = events
        .iter()
        .map(|e| Operation {
            client_id: None,
            call_time: e.call,
            return_time: e.ret,
            op: e.reg,
            metadata: Some(e.op),
        })
        .collect();
    porcupine_rs::check_operations_timeout::<Register>(&ops, timeout)
}

/// A key whose sub-history is not linearizable, with a small witness.
#[derive(Clone, Debug)]
pub struct Violation {
    pub key: String,
    /// Events of the key (after pruning) that alone are not linearizable.
    pub witness: Vec<KeyEvent>,
    /// Size of the key's sub-history.
    pub events: usize,
}

#[derive(Clone, Debug, Default)]
pub struct LinReport {
    pub keys: usize,
    pub events: usize,
    pub violations: Vec<Violation>,
    /// Keys whose search did not finish in time (neither proven nor refuted).
    pub undecided: Vec<String>,
}

/// Checks every key of `history`; `timeout` bounds the search per key.
pub fn check_linearizable(history: &[Op], timeout: Duration) -> LinReport {
    let mut report = LinReport::default();
    for (key, events) in project(history) {
        let events = prune_unobserved(&events);
        report.keys += 1;
        report.events += events.len();
        match check_events(&events, timeout) {
            CheckResult::Ok => {}
            CheckResult::Unknown => report.undecided.push(key),
            CheckResult::Illegal => {
                let witness = shrink(&events, timeout);
                report.violations.push(Violation {
                    key,
                    witness,
                    events: events.len(),
                });
            }
        }
    }
    report
}

/// The history as it stood at time `t`: operations invoked later are dropped; writes still
/// pending at `t` become unknown, reads still pending are dropped. If the full history is
/// linearizable, so is every such prefix (pending writes may be linearized last, writes
/// invoked after `t` follow every kept read).
fn prefix(events: &[KeyEvent], t: i64) -> Vec<KeyEvent> {
    events
        .iter()
        .filter(|e| e.call <= t)
        .filter_map(|e| match (e.ret > t, e.is_read()) {
            (false, _) => Some(*e),
            (true, true) => None,
            (true, false) => Some(e.relaxed()),
        })
        .collect()
}

/// A small non-linearizable sub-history of `events` (which must be non-linearizable).
/// Every step only relaxes the history — cut at the earliest failing prefix, drop reads,
/// turn acknowledged writes into unknown ones, drop unobserved unknown writes — and is kept
/// only if the result still fails; since a relaxation of a linearizable history is
/// linearizable, the witness is a genuine proof of the violation.
pub fn shrink(events: &[KeyEvent], timeout: Duration) -> Vec<KeyEvent> {
    let budget = Instant::now() + timeout.max(Duration::from_secs(5)) * 3;
    let illegal = |ev: &[KeyEvent]| check_events(ev, timeout) == CheckResult::Illegal;

    // 1. The earliest prefix that fails (failure is monotone in the cut time).
    let mut times: Vec<i64> = events
        .iter()
        .flat_map(|e| [e.call, e.ret])
        .filter(|&t| t != NEVER)
        .collect();
    times.sort_unstable();
    times.dedup();
    let mut cur = events.to_vec();
    if let Some(&last) = times.last()
        && illegal(&prefix(events, last))
    {
        let (mut lo, mut hi) = (0usize, times.len() - 1); // prefix(times[hi]) fails
        while lo < hi && Instant::now() < budget {
            let mid = (lo + hi) / 2;
            if illegal(&prefix(events, times[mid])) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        cur = prefix(events, times[hi]);
    }

    // 2. Drop reads, latest first; 3. relax acknowledged writes; 4. prune.
    for pass in 0..2 {
        let mut i = cur.len();
        while i > 0 && Instant::now() < budget {
            i -= 1;
            let candidate = if cur[i].is_read() {
                let mut c = cur.clone();
                c.remove(i);
                c
            } else if pass == 1 && cur[i].ret != NEVER {
                let mut c = cur.clone();
                c[i] = c[i].relaxed();
                c
            } else {
                continue;
            };
            let candidate = prune_unobserved(&candidate);
            if illegal(&candidate) {
                cur = candidate;
                i = i.min(cur.len());
            }
        }
    }
    cur.sort_by_key(|e| (e.call, e.op));
    cur
}

/// Renders a violation for humans: the witness operations, the window they span, and a hint.
pub fn render_violation(v: &Violation, history: &[Op]) -> String {
    let mut out = String::new();
    let start = v.witness.iter().map(|e| e.call).min().unwrap_or(0);
    let end = v
        .witness
        .iter()
        .map(|e| if e.ret == NEVER { e.call } else { e.ret })
        .max()
        .unwrap_or(start);
    out.push_str(&format!(
        "key {}: not linearizable. Smallest failing window: {:.4}s .. {:.4}s, {} of the key's {} \
         operations (ops marked UNKNOWN may take effect at any time after their call; ops whose \
         outcome does not matter were left out):\n",
        v.key,
        start as f64 / 1e9,
        end as f64 / 1e9,
        v.witness.len(),
        v.events
    ));
    for e in &v.witness {
        let mut op = history[e.op].clone();
        if e.ret == NEVER && op.outcome == Outcome::Ok {
            op.note = "acknowledged, relaxed to unknown: its timing does not matter".into();
            op.outcome = Outcome::Unknown;
        }
        out.push_str(&format!("    {op}\n"));
    }
    for e in v.witness.iter().filter(|e| e.is_read()) {
        let RegOp::Read(seen) = e.reg else { continue };
        let writer = v.witness.iter().find(|w| w.reg == RegOp::Write(seen));
        if seen.is_some() && writer.is_none() {
            out.push_str(&format!(
                "    hint: the read at {:.4}s returned a value no successful or indeterminate \
                 write produced (never written, or written by a write that reported \
                 no_leader = certainly not applied)\n",
                e.call as f64 / 1e9
            ));
        } else if let Some(newer) = v.witness.iter().find(|w| {
            matches!(w.reg, RegOp::Write(x) if x != seen)
                && w.ret < e.call
                && writer.is_none_or(|wr| wr.ret != NEVER && wr.ret < w.call)
        }) {
            out.push_str(&format!(
                "    hint: stale read at {:.4}s: the write at {:.4}s completed before it began \
                 and after the write of the value it returned\n",
                e.call as f64 / 1e9,
                newer.call as f64 / 1e9
            ));
        }
    }
    out
}

/// An acknowledged write whose effect is not in the final state although nothing could have
/// overwritten it.
#[derive(Clone, Debug)]
pub struct LostWrite {
    pub key: String,
    pub op: usize,
    pub final_value: Option<u64>,
    pub why: String,
}

/// Checks the final value of each key (`finals`, read after healing and convergence) against
/// the acknowledged writes. The final value was produced by some write W (or is the initial
/// "absent"); an acknowledged write A on that key whose value differs is lost if W certainly
/// completed before A was invoked — then nothing that could follow A explains the final state.
pub fn lost_writes(history: &[Op], finals: &BTreeMap<String, Option<u64>>) -> Vec<LostWrite> {
    // (op index, call, ret or NEVER, value, outcome) of every write that may have taken effect.
    type Write = (usize, i64, i64, Option<u64>, Outcome);
    let mut writes: BTreeMap<&str, Vec<Write>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        if op.outcome == Outcome::Fail {
            continue;
        }
        let ret = if op.outcome == Outcome::Ok {
            op.ret_ns
        } else {
            NEVER
        };
        for (key, value) in op.action.writes() {
            writes
                .entry(key)
                .or_default()
                .push((i, op.call_ns, ret, value, op.outcome));
        }
    }
    let mut lost = Vec::new();
    for (key, &final_value) in finals {
        let ws = writes.get(key.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        // When did the last possible producer of the final value complete? (-inf: initial state)
        let producers: Vec<i64> = ws
            .iter()
            .filter(|w| w.3 == final_value)
            .map(|w| w.2)
            .chain(final_value.is_none().then_some(i64::MIN))
            .collect();
        let Some(&latest_producer) = producers.iter().max() else {
            lost.push(LostWrite {
                key: key.clone(),
                op: usize::MAX,
                final_value,
                why: "the final value was never written by a successful or indeterminate write"
                    .into(),
            });
            continue;
        };
        for w in ws
            .iter()
            .filter(|w| w.4 == Outcome::Ok && w.3 != final_value)
        {
            if latest_producer < w.1 {
                lost.push(LostWrite {
                    key: key.clone(),
                    op: w.0,
                    final_value,
                    why: format!(
                        "acknowledged write is not in the final state ({}), and every write that \
                         could have produced the final state completed before it began",
                        final_value.map_or("absent".to_owned(), |v| v.to_string())
                    ),
                });
            }
        }
    }
    lost
}
