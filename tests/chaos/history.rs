//! The recorded history of a chaos schedule: every client operation with its invocation and
//! completion time (monotonic nanoseconds since the test process started) and its outcome.
//!
//! Outcomes follow the product's error contract (README "Errors"):
//! - `Ok`: 200 (or 404 `not_found` for a read: the key is absent);
//! - `Fail`: certainly had no effect — 503 `no_leader` for a write, a refused connection (the
//!   request was never sent), any failed read (reads change nothing);
//! - `Unknown`: may or may not have taken effect — 503 `timeout`, a client-side timeout or a
//!   connection broken after the request was sent, any unexpected answer to a write.
//!
//! Values are unique per write (a process-wide counter), so a read names the write it observed.

use std::fmt;
use std::sync::OnceLock;
use std::time::Instant;

/// Return time of an operation whose outcome is unknown: it may take effect at any time after
/// its invocation (porcupine's convention for indeterminate operations).
pub const NEVER: i64 = i64::MAX;

/// Monotonic nanoseconds since the first call in this process.
pub fn now_ns() -> i64 {
    static T0: OnceLock<Instant> = OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_nanos() as i64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Fail,
    Unknown,
}

/// What a successful read saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    Absent,
    Value(u64),
    /// A body that is not one of our values (never written by this test).
    Garbage(String),
}

impl Observed {
    /// As a register value for the checker: garbage maps to a value no write ever had.
    pub fn as_register(&self) -> Option<u64> {
        match self {
            Observed::Absent => None,
            Observed::Value(v) => Some(*v),
            Observed::Garbage(_) => Some(u64::MAX),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Read {
        key: String,
    },
    Put {
        key: String,
        value: u64,
    },
    Delete {
        key: String,
    },
    /// `POST /key` with several pairs, applied atomically by the product.
    PutMany {
        pairs: Vec<(String, u64)>,
    },
    /// Compare-and-swap: `PUT /db/<key>` with `If-Match: <etag>` (the ETag a read of `expect`
    /// answered) or, when `expect` is absent, `If-None-Match: *`. Values are unique, so "the key
    /// still has the mod revision of the read" is "the key still holds `expect`".
    Cas {
        key: String,
        expect: Option<u64>,
        etag: i64,
        value: u64,
    },
    /// A `Cas` answered `412 precondition_failed`: it observed that `key` did not hold `expect`.
    CasRefused {
        key: String,
        expect: Option<u64>,
    },
}

impl Action {
    pub fn is_write(&self) -> bool {
        !matches!(self, Action::Read { .. } | Action::CasRefused { .. })
    }

    /// The (key, new value) pairs this action writes; `None` = delete.
    pub fn writes(&self) -> Vec<(&str, Option<u64>)> {
        match self {
            Action::Read { .. } | Action::CasRefused { .. } => Vec::new(),
            Action::Cas { key, value, .. } => vec![(key.as_str(), Some(*value))],
            Action::Put { key, value } => vec![(key.as_str(), Some(*value))],
            Action::Delete { key } => vec![(key.as_str(), None)],
            Action::PutMany { pairs } => {
                pairs.iter().map(|(k, v)| (k.as_str(), Some(*v))).collect()
            }
        }
    }
}

/// One client operation.
#[derive(Clone, Debug)]
pub struct Op {
    pub client: u32,
    /// Index of the node (harness numbering) the request was sent to.
    pub node: usize,
    pub action: Action,
    pub call_ns: i64,
    /// When the answer (or the failure) was seen; the checker uses `NEVER` for `Unknown` writes.
    pub ret_ns: i64,
    pub outcome: Outcome,
    /// For a successful read: what it saw.
    pub read: Option<Observed>,
    /// Status / error code / transport error, for humans.
    pub note: String,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |ns: i64| ns as f64 / 1e9;
        write!(
            f,
            "[{:9.4}s .. {:9.4}s] client {:>4} → n{} ",
            secs(self.call_ns),
            secs(self.ret_ns),
            self.client,
            self.node
        )?;
        match &self.action {
            Action::Read { key } => write!(f, "read {key}")?,
            Action::Put { key, value } => write!(f, "put {key}={value}")?,
            Action::Delete { key } => write!(f, "delete {key}")?,
            Action::PutMany { pairs } => {
                let p: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "put-many {{{}}}", p.join(", "))?
            }
            Action::Cas {
                key, expect, value, ..
            } => write!(f, "cas {key}: {} -> {value}", show(*expect))?,
            Action::CasRefused { key, expect } => {
                write!(f, "cas {key} refused: not {}", show(*expect))?
            }
        }
        match (&self.outcome, &self.read) {
            (Outcome::Ok, Some(Observed::Absent)) => write!(f, " → absent"),
            (Outcome::Ok, Some(Observed::Value(v))) => write!(f, " → {v}"),
            (Outcome::Ok, Some(Observed::Garbage(g))) => write!(f, " → GARBAGE {g:?}"),
            (Outcome::Ok, None) => write!(f, " → ok"),
            (Outcome::Fail, _) => write!(f, " → failed ({})", self.note),
            (Outcome::Unknown, _) => write!(f, " → UNKNOWN ({})", self.note),
        }
    }
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "absent".to_owned(), |v| v.to_string())
}

/// Counts over a history.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub ops: u64,
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
    pub writes: u64,
    pub writes_ok: u64,
    pub reads: u64,
    pub reads_ok: u64,
    /// Compare-and-swaps acknowledged (swapped) and refused (412).
    pub cas_swapped: u64,
    pub cas_refused: u64,
}

impl Tally {
    pub fn of(history: &[Op]) -> Tally {
        let mut t = Tally::default();
        for op in history {
            t.ops += 1;
            match op.outcome {
                Outcome::Ok => t.ok += 1,
                Outcome::Fail => t.failed += 1,
                Outcome::Unknown => t.unknown += 1,
            }
            match (&op.action, op.outcome) {
                (Action::Cas { .. }, Outcome::Ok) => t.cas_swapped += 1,
                (Action::CasRefused { .. }, _) => t.cas_refused += 1,
                _ => {}
            }
            if op.action.is_write() {
                t.writes += 1;
                t.writes_ok += u64::from(op.outcome == Outcome::Ok);
            } else {
                t.reads += 1;
                t.reads_ok += u64::from(op.outcome == Outcome::Ok);
            }
        }
        t
    }

    pub fn add(&mut self, o: &Tally) {
        self.ops += o.ops;
        self.ok += o.ok;
        self.failed += o.failed;
        self.unknown += o.unknown;
        self.writes += o.writes;
        self.writes_ok += o.writes_ok;
        self.reads += o.reads;
        self.reads_ok += o.reads_ok;
        self.cas_swapped += o.cas_swapped;
        self.cas_refused += o.cas_refused;
    }

    pub fn write_success_ratio(&self) -> f64 {
        if self.writes == 0 {
            0.0
        } else {
            self.writes_ok as f64 / self.writes as f64
        }
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops: {} ok, {} failed, {} indeterminate; writes {}/{} ok ({:.1} %), reads {}/{} ok, \
             compare-and-swaps {} swapped / {} refused",
            self.ops,
            self.ok,
            self.failed,
            self.unknown,
            self.writes_ok,
            self.writes,
            100.0 * self.write_success_ratio(),
            self.reads_ok,
            self.reads,
            self.cas_swapped,
            self.cas_refused
        )
    }
}
