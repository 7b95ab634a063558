//! The scripted `etcdctl lease` session, as data, and how one cluster runs it. The same session
//! runs on a real etcd 3.4 and on raftkv (`differential.rs` compares the two):
//! grant (text and `-w json`), `put --lease`, `get -w json` (the keys' lease field),
//! `timetolive` with and without `--keys` (text and JSON), `keep-alive --once` (text and
//! JSON), `list` (text and JSON), `revoke` (its keys gone, its revision), the error answers
//! for a revoked lease and for one never granted (timetolive, revoke, keep-alive --once,
//! `put --lease`), TTLs raised to the minimum and refused above the maximum, and a key under a
//! 2 s lease that disappears after its TTL.
//!
//! Placeholders in arguments: `{L1}`, `{L2}`, ... are the ids the cluster itself printed when
//! a step captured them (a grant, text or JSON); `{unknown}` is an id no cluster granted.
//! Each step goes to the cluster's leader or to a follower (found with `endpoint status`), so
//! both the leader's own answers and a follower's relays are compared.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::etcdctl::{self, LeaseIds, Out};
use crate::sessions::Context;

/// Which member a step talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Leader,
    Follower,
}

#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// One etcdctl command; `capture` names the lease id a grant printed.
    Run {
        args: &'static [&'static str],
        via: Via,
        capture: Option<&'static str>,
    },
    /// Polls `get key` (with a deadline) until the key is gone; the answer says whether that
    /// happened within [`EXPIRY_LATE`] of the TTL of the lease `lease` captured, counted from
    /// just before its grant, and never before the TTL.
    UntilGone {
        key: &'static str,
        lease: &'static str,
        ttl: Duration,
    },
}

const fn leader(args: &'static [&'static str]) -> Step {
    Step::Run {
        args,
        via: Via::Leader,
        capture: None,
    }
}

const fn follower(args: &'static [&'static str]) -> Step {
    Step::Run {
        args,
        via: Via::Follower,
        capture: None,
    }
}

const fn grant(args: &'static [&'static str], via: Via, name: &'static str) -> Step {
    Step::Run {
        args,
        via,
        capture: Some(name),
    }
}

/// How late after its TTL an unrenewed lease's key may still be there: etcd looks for expired
/// leases every 500 ms and revokes them through Raft, raftkv every 250 ms.
pub const EXPIRY_LATE: Duration = Duration::from_millis(1800);
/// Bound on waiting for an expiry (then the step reports the key still there).
const EXPIRY_DEADLINE: Duration = Duration::from_secs(15);

/// An id neither cluster grants (ids are random 63-bit numbers).
pub const UNKNOWN: &str = "1234abcd";

pub const SESSION: &[Step] = &[
    grant(&["lease", "grant", "60"], Via::Follower, "L1"),
    grant(&["lease", "grant", "60", "-w", "json"], Via::Leader, "L2"),
    follower(&["put", "svc/a", "10.0.0.1", "--lease={L1}"]),
    leader(&["put", "svc/b", "10.0.0.2", "--lease={L1}"]),
    follower(&["put", "cfg", "x", "--lease={L2}"]),
    follower(&["get", "svc", "--prefix", "-w", "json"]),
    follower(&["lease", "timetolive", "{L1}"]),
    leader(&["lease", "timetolive", "{L1}"]),
    follower(&["lease", "timetolive", "{L1}", "--keys"]),
    leader(&["lease", "timetolive", "{L1}", "--keys", "-w", "json"]),
    follower(&["lease", "timetolive", "{L2}", "-w", "json"]),
    follower(&["lease", "keep-alive", "--once", "{L1}"]),
    leader(&["lease", "keep-alive", "--once", "{L2}", "-w", "json"]),
    follower(&["lease", "timetolive", "{L1}", "--keys"]),
    follower(&["lease", "list"]),
    leader(&["lease", "list", "-w", "json"]),
    // Revoke: the lease's keys go in one revision; the lease is gone everywhere.
    follower(&["lease", "revoke", "{L1}"]),
    follower(&["get", "svc", "--prefix"]),
    leader(&["get", "", "--from-key", "-w", "json"]),
    follower(&["lease", "timetolive", "{L1}"]),
    leader(&["lease", "timetolive", "{L1}", "--keys"]),
    follower(&["lease", "timetolive", "{L1}", "-w", "json"]),
    follower(&["lease", "keep-alive", "--once", "{L1}"]),
    leader(&["lease", "keep-alive", "--once", "{L1}"]),
    follower(&["lease", "revoke", "{L1}"]),
    follower(&["put", "svc/c", "v", "--lease={L1}"]),
    follower(&["lease", "list"]),
    // A lease never granted.
    follower(&["lease", "timetolive", "{unknown}"]),
    follower(&["lease", "timetolive", "{unknown}", "--keys", "-w", "json"]),
    follower(&["lease", "revoke", "{unknown}"]),
    leader(&["lease", "keep-alive", "--once", "{unknown}"]),
    follower(&["lease", "keep-alive", "--once", "{unknown}", "-w", "json"]),
    leader(&["put", "k", "v", "--lease={unknown}"]),
    // Revoke as JSON (a header only), then an empty list.
    leader(&["lease", "revoke", "{L2}", "-w", "json"]),
    follower(&["get", "cfg"]),
    follower(&["lease", "list", "-w", "json"]),
    // TTLs: raised to the minimum (2 s), refused above the maximum.
    follower(&["lease", "grant", "9000000001"]),
    leader(&["lease", "grant", "9000000000", "-w", "json"]),
    grant(&["lease", "grant", "1"], Via::Follower, "L4"),
    follower(&["lease", "timetolive", "{L4}"]),
    // A key under a 2 s lease nobody keeps alive: gone after its TTL, in one revision.
    grant(&["lease", "grant", "2"], Via::Follower, "L5"),
    follower(&["put", "tmp", "x", "--lease={L5}"]),
    Step::UntilGone {
        key: "tmp",
        lease: "L5",
        ttl: Duration::from_secs(2),
    },
    leader(&["get", "tmp", "-w", "json"]),
    follower(&["lease", "timetolive", "{L5}", "--keys"]),
    follower(&["lease", "keep-alive", "--once", "{L5}"]),
];

/// One cluster running the session: its members, the ids it granted, its id names.
pub struct Runner {
    leader: String,
    follower: String,
    captured: HashMap<&'static str, (String, Instant)>,
    ids: LeaseIds,
}

impl Runner {
    pub fn new(ctx: &Context) -> Runner {
        let leader = leader_of(ctx);
        let follower = ctx
            .endpoints
            .iter()
            .find(|e| **e != leader)
            .expect("a follower")
            .clone();
        Runner {
            leader,
            follower,
            captured: HashMap::new(),
            ids: LeaseIds::default(),
        }
    }

    /// A step as the session shows it (placeholders unfilled).
    pub fn describe(step: &Step) -> String {
        match step {
            Step::Run { args, via, .. } => format!("etcdctl {} (via the {via:?})", args.join(" ")),
            Step::UntilGone { key, lease, ttl } => {
                format!("wait until {key} is gone ({lease}'s TTL {ttl:?})")
            }
        }
    }

    /// Runs one step; its output normalised (ids named in this cluster's order).
    pub fn run(&mut self, step: &Step) -> Out {
        match *step {
            Step::Run { args, via, capture } => {
                let args: Vec<String> = args.iter().map(|a| self.fill(a)).collect();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let endpoint = match via {
                    Via::Leader => self.leader.clone(),
                    Via::Follower => self.follower.clone(),
                };
                let started = Instant::now();
                let out = etcdctl::run(&[endpoint], &args, None);
                if let Some(name) = capture {
                    let id = granted_id(&out.stdout)
                        .unwrap_or_else(|| panic!("etcdctl {args:?} granted no lease: {out:?}"));
                    self.captured.insert(name, (id, started));
                }
                etcdctl::normalize_lease(&out, &mut self.ids)
            }
            Step::UntilGone { key, lease, ttl } => {
                let granted_at = self.captured.get(lease).expect("captured lease").1;
                self.until_gone(key, granted_at, ttl)
            }
        }
    }

    fn fill(&self, arg: &str) -> String {
        let mut arg = arg.replace("{unknown}", UNKNOWN);
        for (name, (id, _)) in &self.captured {
            arg = arg.replace(&format!("{{{name}}}"), id);
        }
        arg
    }

    fn until_gone(&self, key: &str, granted_at: Instant, ttl: Duration) -> Out {
        let eps = [self.follower.clone()];
        let deadline = Instant::now() + EXPIRY_DEADLINE;
        let gone = loop {
            let out = etcdctl::run(&eps, &["get", key, "--print-value-only"], None);
            if out.code == 0 && out.stdout.trim().is_empty() {
                break Some(granted_at.elapsed());
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(100)); // poll period
        };
        let stdout = match gone {
            // Measured from before the grant: a key gone this early expired before its TTL.
            Some(t) if t < ttl => format!("{key} gone after {t:?}, before its TTL"),
            Some(t) if t <= ttl + EXPIRY_LATE => format!("{key} gone after its TTL, in time"),
            Some(t) => format!("{key} gone only after {t:?}"),
            None => format!("{key} still there after {EXPIRY_DEADLINE:?}"),
        };
        eprintln!("   {stdout} ({:?} after its grant)", granted_at.elapsed());
        Out {
            code: 0,
            stdout,
            error: String::new(),
            stderr: String::new(),
        }
    }
}

/// The lease id a `lease grant` printed (`lease <hex> granted ...` or `-w json`'s `ID`), in hex.
fn granted_id(stdout: &str) -> Option<String> {
    if let Ok(json) = serde_json::from_str::<Value>(stdout.trim()) {
        return json["ID"].as_i64().map(|id| format!("{id:x}"));
    }
    stdout
        .trim()
        .strip_prefix("lease ")?
        .split_whitespace()
        .next()
        .map(str::to_string)
}

/// The endpoint of `ctx`'s leader, as `endpoint status` tells.
fn leader_of(ctx: &Context) -> String {
    let out = etcdctl::run(&ctx.endpoints, &["endpoint", "status", "-w", "json"], None);
    let statuses: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("endpoint status -w json: {e}: {out:?}"));
    statuses
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| {
            let s = &s["Status"];
            s["leader"].as_u64().is_some() && s["leader"] == s["header"]["member_id"]
        })
        .and_then(|s| s["Endpoint"].as_str())
        .unwrap_or_else(|| panic!("no leader in {}", out.stdout))
        .to_string()
}
