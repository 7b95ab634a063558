//! Closed-loop writers on keep-alive connections, sent to the leader: the load under which the
//! leader gathers writes (it holds the next batch until the connections it just answered write
//! again, `src/raft/propose/queue.rs`), so that holds fill, run out and get cut short by faults
//! while the nemesis works. The workload's own clients (`workload.rs`) open a connection per
//! request, so the leader never sees them come back and never fills a hold for them.
//!
//! Writer `w` owns one key (`s<n>w<w>`, outside the watchers' prefix) and writes fresh values to
//! it back to back over one pooled connection; one operation in [`READ_EVERY`] is a
//! linearizable read of it. Every operation goes into the schedule's history like the other
//! clients' (ids from [`CLIENT_ID_BASE`]), so the checker covers these keys for
//! linearizability and lost writes, and the final reads include them.
//!
//! Where the leader is comes from a hint thread polling the members' `GET /status` every
//! [`HINT_POLL`]; a writer whose request failed backs off (`workload::record`) and takes the hint again (a write to
//! a node that no longer leads is forwarded, as for any client).

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
/// How often the leader hint is refreshed (a polling period, not a synchronisation).
const HINT_POLL: Duration = Duration::from_millis(50);
/// Timeout of one `GET /status` of the hint thread (a paused node must not stall it long).
const STATUS_TIMEOUT: Duration = Duration::from_millis(300);

/// The member that last said it leads (harness index, API address).
type Hint = Arc<RwLock<Option<(usize, String)>>>;

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
                std::thread::Builder::new()
                    .name(format!("chaos-writer-{client}"))
                    .spawn(move || write_loop(client, &key, &hint, request_timeout, rng, &stop))
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
/// does: a write to a former leader is forwarded or fails, and the writer retries).
fn follow_leader(targets: &Targets, hint: &Hint, stop: &AtomicBool) {
    let http = Client::builder()
        .no_proxy()
        .timeout(STATUS_TIMEOUT)
        .build()
        .expect("build client");
    while !stop.load(Ordering::Relaxed) {
        let nodes = targets.read().unwrap_or_else(|e| e.into_inner()).clone();
        let leader = nodes
            .iter()
            .filter_map(|(i, addr)| {
                let s: Value = http
                    .get(format!("http://{addr}/status"))
                    .send()
                    .ok()?
                    .json()
                    .ok()?;
                (s["role"] == "leader").then(|| (s["term"].as_u64().unwrap_or(0), *i, addr))
            })
            .max_by_key(|&(term, i, _)| (term, i));
        if let Some((_, i, addr)) = leader {
            *hint.write().unwrap_or_else(|e| e.into_inner()) = Some((i, addr.clone()));
        }
        std::thread::sleep(HINT_POLL);
    }
}

fn write_loop(
    client: u32,
    key: &str,
    hint: &Hint,
    timeout: Duration,
    mut rng: Rng,
    stop: &AtomicBool,
) -> Vec<Op> {
    // Pooled (keep-alive) connections: the point of these writers. A request that fails on a
    // pooled connection after it may have been sent is indeterminate (`workload::execute`).
    let http = Client::builder()
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(Duration::from_millis(500))
        .build()
        .expect("build client");
    let mut ops = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let target = hint.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some((node, addr)) = target else {
            std::thread::sleep(HINT_POLL);
            continue;
        };
        n += 1;
        let key = key.to_owned();
        let action = if n.is_multiple_of(READ_EVERY) {
            Action::Read { key }
        } else {
            Action::Put {
                key,
                value: next_value(),
            }
        };
        let op = execute(&http, client, node, &addr, action, rng.below(2));
        record(&mut ops, op, &mut rng);
    }
    ops
}
