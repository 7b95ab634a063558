//! Closed-loop writers on keep-alive connections, most sent to the leader: the load under which
//! the leader gathers writes (it holds the next batch until the connections it just answered
//! write again, `src/raft/propose/queue.rs`), so that holds fill, run out and get cut short by
//! faults while the nemesis works. The workload's own clients (`workload.rs`) open a connection
//! per request, so the leader never sees them come back and never fills a hold for them. One
//! writer in [`VIA_FOLLOWER_EVERY`] writes to a follower instead, so that batches a follower
//! forwards (`src/raft/forward_batch.rs`, several writes each) meet the faults too, beside the
//! leader's held ones.
//!
//! Writer `w` owns one key (`s<n>w<w>`, outside the watchers' prefix) and writes fresh values to
//! it back to back over one pooled connection; one operation in [`READ_EVERY`] is a
//! linearizable read of it. Every operation goes into the schedule's history like the other
//! clients' (ids from [`CLIENT_ID_BASE`]), so the checker covers these keys for
//! linearizability and lost writes, and the final reads include them.
//!
//! Where the leader and a follower are comes from a hint thread polling the members'
//! `GET /status` every [`HINT_POLL`]; a writer whose request failed backs off
//! (`workload::record`) and takes the hint again (a write to a node whose role changed meanwhile
//! is forwarded or answered by it, as for any client).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use reqwest::blocking::Client;
use serde_json::Value;

use crate::history::{Action, Op};
use crate::rng::Rng;
use crate::topology::Targets;
use crate::workload::{execute, next_value, record};

/// Client ids of the writers: this plus the writer's number.
pub const CLIENT_ID_BASE: u32 = 100;
/// One operation in this many is a read of the writer's key.
const READ_EVERY: u64 = 32;
/// One writer in this many writes to a follower (writers `3, 7, 11, ...`): 4 of 16, so the
/// leader still answers 12 keep-alive writers itself, more than a hold needs (8).
const VIA_FOLLOWER_EVERY: u32 = 4;
/// How often the leader hint is refreshed (a polling period, not a synchronisation).
const HINT_POLL: Duration = Duration::from_millis(50);
/// Timeout of one `GET /status` of the hint thread (a paused node must not stall it long).
const STATUS_TIMEOUT: Duration = Duration::from_millis(300);

/// A member (harness index, API address).
type Member = (usize, String);

/// Where the writers send: the member that last said it leads, and one that last said it
/// follows it.
#[derive(Default)]
struct Hints {
    leader: Option<Member>,
    follower: Option<Member>,
}

type Hint = Arc<RwLock<Hints>>;

/// The keys of `n` writers in schedule `schedule`.
pub fn keys(schedule: u64, n: u32) -> Vec<String> {
    (0..n).map(|w| format!("s{schedule}w{w:02}")).collect()
}

/// Running writers and their hint thread; `stop` ends them and returns their operations.
pub struct KeepAliveWriters {
    stop: Arc<AtomicBool>,
    hint: Option<JoinHandle<()>>,
    handles: Vec<JoinHandle<Vec<Op>>>,
}

impl KeepAliveWriters {
    pub fn start(
        keys: &[String],
        targets: &Targets,
        request_timeout: Duration,
        rng: &Rng,
    ) -> KeepAliveWriters {
        let stop = Arc::new(AtomicBool::new(false));
        if keys.is_empty() {
            return KeepAliveWriters {
                stop,
                hint: None,
                handles: Vec::new(),
            };
        }
        let hint: Hint = Arc::default();
        let hint_thread = {
            let (stop, hint, targets) = (Arc::clone(&stop), Arc::clone(&hint), Arc::clone(targets));
            std::thread::Builder::new()
                .name("chaos-leader-hint".into())
                .spawn(move || follow_leader(&targets, &hint, &stop))
                .expect("spawn hint thread")
        };
        let handles = keys
            .iter()
            .zip(CLIENT_ID_BASE..)
            .map(|(key, client)| {
                let (stop, hint, key) = (Arc::clone(&stop), Arc::clone(&hint), key.clone());
                let rng = rng.fork(2000 + u64::from(client));
                let w = Writer {
                    client,
                    key,
                    via_follower: (client - CLIENT_ID_BASE) % VIA_FOLLOWER_EVERY
                        == VIA_FOLLOWER_EVERY - 1,
                };
                std::thread::Builder::new()
                    .name(format!("chaos-writer-{client}"))
                    .spawn(move || w.write_loop(&hint, request_timeout, rng, &stop))
                    .expect("spawn writer")
            })
            .collect();
        KeepAliveWriters {
            stop,
            hint: Some(hint_thread),
            handles,
        }
    }

    pub fn stop(self) -> Vec<Op> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.hint {
            h.join().expect("hint thread panicked");
        }
        self.handles
            .into_iter()
            .flat_map(|h| h.join().expect("writer thread panicked"))
            .collect()
    }
}

/// Keeps `hint` at the member that says it leads in the highest term (unchanged while none
/// does: a write to a former leader is forwarded or fails, and the writer retries), and at the
/// first other member that says it follows (unchanged while none does).
fn follow_leader(targets: &Targets, hint: &Hint, stop: &AtomicBool) {
    let http = Client::builder()
        .no_proxy()
        .timeout(STATUS_TIMEOUT)
        .build()
        .expect("build client");
    while !stop.load(Ordering::Relaxed) {
        let nodes = targets.read().unwrap_or_else(|e| e.into_inner()).clone();
        let roles: Vec<(String, u64, &Member)> = nodes
            .iter()
            .filter_map(|member| {
                let s: Value = http
                    .get(format!("http://{}/status", member.1))
                    .send()
                    .ok()?
                    .json()
                    .ok()?;
                let role = s["role"].as_str()?.to_owned();
                Some((role, s["term"].as_u64().unwrap_or(0), member))
            })
            .collect();
        let leader = roles
            .iter()
            .filter(|(role, _, _)| role == "leader")
            .max_by_key(|&&(_, term, member)| (term, member.0))
            .map(|(_, _, member)| (*member).clone());
        let follower = roles
            .iter()
            .find(|(role, _, member)| {
                role == "follower" && Some(member.0) != leader.as_ref().map(|l| l.0)
            })
            .map(|(_, _, member)| (*member).clone());
        {
            let mut hints = hint.write().unwrap_or_else(|e| e.into_inner());
            if leader.is_some() {
                hints.leader = leader;
            }
            if follower.is_some() {
                hints.follower = follower;
            }
        }
        std::thread::sleep(HINT_POLL);
    }
}

/// One keep-alive writer: its client id, its key, and whether it writes to a follower.
struct Writer {
    client: u32,
    key: String,
    via_follower: bool,
}

impl Writer {
    fn write_loop(
        self,
        hint: &Hint,
        timeout: Duration,
        mut rng: Rng,
        stop: &AtomicBool,
    ) -> Vec<Op> {
        // Pooled (keep-alive) connections: the point of these writers. A request that fails on
        // a pooled connection after it may have been sent is indeterminate (`workload::execute`).
        let http = Client::builder()
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(Duration::from_millis(500))
            .build()
            .expect("build client");
        let mut ops = Vec::new();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let target = {
                let hints = hint.read().unwrap_or_else(|e| e.into_inner());
                if self.via_follower {
                    hints.follower.clone()
                } else {
                    hints.leader.clone()
                }
            };
            let Some((node, addr)) = target else {
                std::thread::sleep(HINT_POLL);
                continue;
            };
            n += 1;
            let key = self.key.clone();
            let action = if n.is_multiple_of(READ_EVERY) {
                Action::Read { key }
            } else {
                Action::Put {
                    key,
                    value: next_value(),
                }
            };
            let op = execute(&http, self.client, node, &addr, action, rng.below(2));
            record(&mut ops, op, &mut rng);
        }
        ops
    }
}
