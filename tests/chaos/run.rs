//! One chaos schedule, start to verdict, and runs of many schedules.
//!
//! A schedule: (1) the cluster is healthy; (2) clients start on fresh keys `s<n>k00..`; (3) the
//! nemesis applies its steps; (4) everything is healed and traffic continues a little, so the
//! cluster must recover; (5) clients stop; the cluster must become healthy again and converge
//! (all members at one applied index with equal digests); (6) every key is read on every
//! member (linearizable reads, part of the checked history); (7) the history is checked for
//! linearizability and lost writes. Keys are fresh per schedule, so each schedule's history
//! starts from an empty state and schedules can share a cluster.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::checker::{self, LinReport};
use crate::history::{Action, Observed, Op, Outcome, Tally};
use crate::leases::{Keepers, LeaseCounts};
use crate::monitor::DigestMonitor;
use crate::nemesis::{self, PlanOpts, Timeline};
use crate::rng::Rng;
use crate::topology::{ChaosCluster, ConvergeError};
use crate::totals::Totals;
use crate::watchers::{WatchCounts, Watchers};
use crate::workload::{self, Clients, FINAL_READER};
use crate::writers::{self, KeepAliveWriters};

/// Answers outside the documented contract printed per schedule (all are counted).
const UNEXPECTED_SHOWN: usize = 3;

/// Everything that shapes a run.
#[derive(Clone, Debug)]
pub struct Opts {
    pub name: &'static str,
    pub nodes: usize,
    pub keys: usize,
    pub clients: u32,
    /// Closed-loop writers on keep-alive connections to the leader (`writers.rs`), each on a
    /// key of its own: the load under which the leader gathers writes.
    pub keepalive_writers: u32,
    /// Watchers of the schedule's keys (`watchers.rs`), reconnecting across faults.
    pub watchers: u32,
    /// Lease keepers (`leases.rs`), keeping short leases alive across faults.
    pub lease_keepers: u32,
    pub plan: PlanOpts,
    pub warmup: Duration,
    /// Traffic after healing, before the clients stop.
    pub recovery: Duration,
    pub request_timeout: Duration,
    /// Bound on the linearizability search per key.
    pub check_timeout: Duration,
    /// Bound on becoming healthy and converging after healing.
    pub heal_timeout: Duration,
    /// Flags every node gets besides addresses.
    pub node_flags: &'static str,
    /// A fresh cluster every this many schedules.
    pub recycle_every: u64,
    /// Run schedules until this much time has passed (and at least `min_schedules`).
    pub budget: Duration,
    pub min_schedules: u64,
}

/// The verdict of one schedule.
#[derive(Debug, Default)]
pub struct ScheduleResult {
    pub n: u64,
    pub tally: Tally,
    pub faults: Vec<String>,
    pub violations: Vec<String>,
    pub lost: Vec<String>,
    pub undecided: Vec<String>,
    /// The cluster did not recover after healing (no leader / no convergence / no final reads).
    pub liveness: Option<String>,
    pub diverged: Option<String>,
    pub unexpected: Vec<String>,
    pub checked_events: usize,
    /// Cross-node digest comparisons at equal applied indexes made while the schedule ran.
    pub digest_comparisons: u64,
    /// Writes the members alive at the schedule's end proposed in shared log entries since
    /// they started (write batching): shows batches were under test.
    pub batched_writes: u64,
    /// Held batches released because their writers came back, and holds that ran out, summed
    /// the same way (gathering): shows holds were under test.
    pub holds_filled: u64,
    pub holds_expired: u64,
    pub watch: WatchCounts,
    pub leases: LeaseCounts,
    pub artifacts: Option<PathBuf>,
}

impl ScheduleResult {
    pub fn failed(&self) -> bool {
        !self.violations.is_empty()
            || !self.lost.is_empty()
            || self.liveness.is_some()
            || self.diverged.is_some()
    }
}

pub fn run_schedule(cc: &mut ChaosCluster, opts: &Opts, seed: u64, n: u64) -> ScheduleResult {
    let mut res = ScheduleResult {
        n,
        ..Default::default()
    };
    let mut plan_opts = opts.plan.clone();
    plan_opts.net_faults &= cc.net_faults;
    let plan = nemesis::plan(seed, n, &plan_opts);
    res.faults = plan.iter().map(|s| s.fault.kind()).collect();
    cc.c.phase(&format!(
        "schedule {n} (seed {seed}): {}",
        plan.iter()
            .map(|s| format!(
                "{} for {}ms, then {}ms",
                s.fault,
                s.hold.as_millis(),
                s.gap.as_millis()
            ))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    if let Err(e) = cc.wait_healthy(opts.heal_timeout) {
        res.liveness = Some(format!("not healthy before the schedule: {e}"));
        return res;
    }

    let keys: Vec<String> = (0..opts.keys).map(|k| format!("s{n}k{k:02}")).collect();
    let rng = Rng::new(seed).fork(n);
    let monitor = DigestMonitor::start(&cc.targets);
    let prefix = format!("s{n}k");
    let from = revision_now(cc) + 1;
    let watchers = Watchers::start(opts.watchers, &prefix, from, &cc.targets, &rng);
    let keepers = Keepers::start(opts.lease_keepers, n, &cc.targets, &rng);
    let clients = Clients::start(opts.clients, &keys, &cc.targets, opts.request_timeout, &rng);
    let writer_keys = writers::keys(n, opts.keepalive_writers);
    let writers = KeepAliveWriters::start(&writer_keys, &cc.targets, opts.request_timeout, &rng);
    let mut timeline = Timeline::new();
    std::thread::sleep(opts.warmup);
    for step in &plan {
        let done = nemesis::apply(cc, &step.fault, &mut timeline).and_then(|undo| {
            std::thread::sleep(step.hold);
            nemesis::undo(cc, undo, &mut timeline)
        });
        if let Err(e) = done {
            res.liveness = Some(format!("{}: {e}", step.fault));
            break;
        }
        std::thread::sleep(step.gap);
    }
    if let Err(e) = cc.heal_all() {
        res.liveness.get_or_insert(e);
    }
    timeline.push((crate::history::now_ns(), "healed".into()));
    std::thread::sleep(opts.recovery);
    let mut history = clients.stop();
    history.extend(writers.stop());
    let (lease_violations, lease_summary, lease_counts) = keepers.finish();
    res.leases = lease_counts;
    eprintln!("   {lease_summary}");
    res.violations
        .extend(lease_violations.into_iter().map(|v| format!("lease: {v}")));

    // Recovery: healthy, converged, and every key readable everywhere.
    let t0 = Instant::now();
    if let Err(e) = cc.wait_healthy(opts.heal_timeout) {
        res.liveness
            .get_or_insert(format!("no recovery after healing: {e}"));
    }
    match cc.wait_converged(opts.heal_timeout) {
        Ok((index, digest)) => {
            res.batched_writes = metric_sum(cc, opts, "raftkv_server_batched_writes_total");
            res.holds_filled = metric_sum(cc, opts, "raftkv_server_write_holds_filled_total");
            res.holds_expired = metric_sum(cc, opts, "raftkv_server_write_holds_expired_total");
            eprintln!(
                "   converged: all members at applied index {index}, digest {digest} ({:.1}s after healing); {} writes batched, holds {} filled / {} ran out",
                t0.elapsed().as_secs_f64() + opts.recovery.as_secs_f64(),
                res.batched_writes,
                res.holds_filled,
                res.holds_expired
            )
        }
        Err(ConvergeError::Diverged(e)) => res.diverged = Some(e),
        Err(ConvergeError::Timeout(e)) => {
            res.liveness
                .get_or_insert(format!("no convergence after healing: {e}"));
        }
    }
    let all_keys: Vec<String> = keys.iter().chain(&writer_keys).cloned().collect();
    let finals = final_reads(cc, &all_keys, opts, &mut history, &mut res);
    // Every watcher drains to a last write under the prefix, made now that the clients have
    // stopped and the cluster converged, and must have seen exactly the cluster's history of
    // the schedule's keys up to it. (The store's revision is no end mark: lease keepers and
    // lease expiries write revisions outside the prefix, at any time.)
    let reference = cc.leader_now().unwrap_or(0);
    let end_key = format!("{prefix}~end");
    let end_rev = match end_mark(cc, reference, &end_key, opts) {
        Ok(rev) => rev,
        Err(e) => {
            res.liveness
                .get_or_insert(format!("the watchers' end mark was not written: {e}"));
            revision_of(cc, reference)
        }
    };
    let (watch_violations, watch_summary, watch_counts) = watchers.finish(
        end_rev,
        &cc.c.node(reference).http_addr(),
        &history,
        (end_key, END_MARK.to_string()),
    );
    eprintln!("   {watch_summary}");
    res.watch = watch_counts;
    res.violations
        .extend(watch_violations.into_iter().map(|v| format!("watch: {v}")));
    let (comparisons, diverged) = monitor.stop();
    if let Some(d) = diverged {
        res.diverged
            .get_or_insert(format!("during the schedule: {d}"));
    }
    res.digest_comparisons = comparisons;
    history.sort_by_key(|o| (o.call_ns, o.client));

    // Verdict.
    res.tally = Tally::of(&history);
    res.unexpected = history
        .iter()
        .filter(|o| o.note.starts_with("UNEXPECTED"))
        .map(|o| o.to_string())
        .collect();
    for u in res.unexpected.iter().take(UNEXPECTED_SHOWN) {
        eprintln!("   unexpected answer (outside the documented error contract): {u}");
    }
    let t_check = Instant::now();
    let lin: LinReport = checker::check_linearizable(&history, opts.check_timeout);
    res.checked_events = lin.events;
    res.undecided = lin.undecided.clone();
    for v in &lin.violations {
        let mut text = checker::render_violation(v, &history);
        text.push_str(&timeline_around(&timeline, &v.witness, &history));
        res.violations.push(text);
    }
    for l in checker::lost_writes(&history, &finals) {
        let op = history.get(l.op).map_or("-".to_owned(), |o| o.to_string());
        res.lost.push(format!(
            "key {} (final {:?}): {} — {op}",
            l.key, l.final_value, l.why
        ));
    }
    eprintln!(
        "   schedule {n}: {} | {} digest comparisons | checked {} events on {} keys in {:.1}s: {} violations, {} lost writes, {} undecided",
        res.tally,
        res.digest_comparisons,
        lin.events,
        lin.keys,
        t_check.elapsed().as_secs_f64(),
        res.violations.len(),
        res.lost.len(),
        res.undecided.len()
    );
    if res.failed() {
        res.artifacts = save_artifacts(cc, seed, n, &history, &timeline, &res);
        report_failure(&res, seed);
    }
    res
}

/// The value of the watchers' end mark.
const END_MARK: &str = "end";

/// Writes the watchers' end mark `key` through member `i`; answers its revision.
fn end_mark(cc: &ChaosCluster, i: usize, key: &str, opts: &Opts) -> Result<i64, String> {
    let url = format!("http://{}/db/{key}", cc.c.node(i).http_addr());
    let resp = workload::http_client(opts.request_timeout)
        .put(url)
        .body(END_MARK)
        .send()
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    resp.headers()
        .get("x-raft-revision")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .ok_or_else(|| "no X-Raft-Revision in the answer".to_string())
}

/// The store revision of a healthy member now (0 if none answers).
fn revision_now(cc: &ChaosCluster) -> i64 {
    cc.leader_now().map_or(0, |i| revision_of(cc, i))
}

/// Counter `name` summed over the members (0 for one that does not answer).
fn metric_sum(cc: &ChaosCluster, opts: &Opts, name: &str) -> u64 {
    let prefix = format!("{name} ");
    let http = workload::http_client(opts.request_timeout);
    let count = |i: usize| -> Option<u64> {
        let url = format!("http://{}/metrics", cc.c.node(i).http_addr());
        let body = http.get(url).send().ok()?.text().ok()?;
        body.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
    };
    cc.members.iter().filter_map(|&i| count(i)).sum()
}

fn revision_of(cc: &ChaosCluster, i: usize) -> i64 {
    cc.status(i)
        .and_then(|s| s["revision"].as_i64())
        .unwrap_or(0)
}

/// Linearizable reads of every key on every member, recorded in the history; returns the final
/// value of each key (the first successful read's).
fn final_reads(
    cc: &ChaosCluster,
    keys: &[String],
    opts: &Opts,
    history: &mut Vec<Op>,
    res: &mut ScheduleResult,
) -> BTreeMap<String, Option<u64>> {
    let http = workload::http_client(opts.request_timeout);
    let mut finals = BTreeMap::new();
    for key in keys {
        let mut seen: Vec<(usize, Option<Observed>)> = Vec::new();
        for &i in &cc.members {
            let addr = cc.c.node(i).http_addr();
            let op = workload::execute(
                &http,
                FINAL_READER,
                i,
                &addr,
                Action::Read { key: key.clone() },
                0,
            );
            if op.outcome == Outcome::Ok {
                seen.push((i, op.read.clone()));
            }
            history.push(op);
        }
        match seen.first() {
            Some((_, Some(obs))) => {
                finals.insert(key.clone(), obs.as_register());
            }
            _ => {
                res.liveness
                    .get_or_insert(format!("no member served a final read of {key}"));
            }
        }
    }
    finals
}

/// Nemesis events from shortly before the witness's window to its end.
fn timeline_around(tl: &Timeline, witness: &[checker::KeyEvent], history: &[Op]) -> String {
    let start = witness.iter().map(|e| e.call).min().unwrap_or(0) - 3_000_000_000;
    let end = witness
        .iter()
        .map(|e| history[e.op].ret_ns)
        .max()
        .unwrap_or(i64::MAX);
    let mut out = String::from("    nemesis around the window:\n");
    for (t, what) in tl.iter().filter(|(t, _)| *t >= start && *t <= end) {
        let _ = writeln!(out, "      [{:9.4}s] {what}", *t as f64 / 1e9);
    }
    out
}

fn report_failure(res: &ScheduleResult, seed: u64) {
    eprintln!(
        "!!!! schedule {} FAILED (seed {seed}) — faults: {:?}",
        res.n, res.faults
    );
    for v in &res.violations {
        eprintln!("!!!! LINEARIZABILITY VIOLATION\n{v}");
    }
    for l in &res.lost {
        eprintln!("!!!! LOST WRITE: {l}");
    }
    if let Some(d) = &res.diverged {
        eprintln!("!!!! REPLICAS DIVERGED: {d}");
    }
    if let Some(l) = &res.liveness {
        eprintln!("!!!! NO RECOVERY: {l}");
    }
    if let Some(p) = &res.artifacts {
        eprintln!(
            "!!!! history, nemesis timeline and node logs kept in {}",
            p.display()
        );
    }
    eprintln!(
        "!!!! replay: RAFTKV_SEED={seed} RAFTKV_SCHEDULE={} cargo test --test chaos -- --nocapture",
        res.n
    );
}

/// Copies the history, the nemesis timeline, the verdict and every node's log to a directory
/// that outlives the test.
fn save_artifacts(
    cc: &ChaosCluster,
    seed: u64,
    n: u64,
    history: &[Op],
    tl: &Timeline,
    res: &ScheduleResult,
) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("raftkv-chaos-failure-seed{seed}-schedule{n}"));
    std::fs::create_dir_all(&dir).ok()?;
    let mut h = String::new();
    for (i, op) in history.iter().enumerate() {
        let _ = writeln!(h, "{i:6} {op}");
    }
    std::fs::write(dir.join("history.txt"), h).ok()?;
    let t: String = tl
        .iter()
        .map(|(t, w)| format!("[{:9.4}s] {w}\n", *t as f64 / 1e9))
        .collect();
    std::fs::write(dir.join("nemesis.txt"), t).ok()?;
    std::fs::write(dir.join("verdict.txt"), format!("{res:#?}\n")).ok()?;
    for (i, path) in cc.log_paths() {
        let _ = std::fs::copy(path, dir.join(format!("n{i}.log")));
    }
    for i in 0..cc.c.len() {
        copy_dir(&cc.c.node(i).data_dir, &dir.join(format!("n{i}-data")));
    }
    Some(dir)
}

/// Best-effort recursive copy (node data dirs are small in these tests).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    let _ = std::fs::create_dir_all(to);
    for e in entries.flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            let _ = std::fs::copy(&src, &dst);
        }
    }
}

/// Runs schedules until the budget is spent (or only `RAFTKV_SCHEDULE` if set), recycling the
/// cluster now and then and after a schedule that left it unhealthy.
pub fn run_many(opts: &Opts, seed: u64) -> Totals {
    let started = Instant::now();
    let only: Option<u64> = std::env::var("RAFTKV_SCHEDULE")
        .ok()
        .and_then(|s| s.parse().ok());
    eprintln!(
        "==== chaos {}: seed {seed} (replay with RAFTKV_SEED={seed}; one schedule with RAFTKV_SCHEDULE=<n>)",
        opts.name
    );
    let mut totals = Totals::default();
    let mut cc: Option<ChaosCluster> = None;
    let mut n = only.unwrap_or(0);
    loop {
        let done = match only {
            Some(o) => n > o,
            None => started.elapsed() >= opts.budget && totals.schedules >= opts.min_schedules,
        };
        if done {
            break;
        }
        if cc.is_none() || (n.is_multiple_of(opts.recycle_every) && totals.schedules > 0) {
            drop(cc.take()); // kill the previous cluster first
            totals.clusters += 1;
            cc = Some(ChaosCluster::start(
                &format!("chaos-{}-{n}", opts.name),
                opts.nodes,
                Rng::new(seed).fork(n).next_u64(),
                opts.node_flags,
            ));
        }
        let c = cc.as_mut().expect("cluster");
        let r = run_schedule(c, opts, seed, n);
        if r.liveness.is_some() || r.diverged.is_some() {
            cc = None;
        }
        totals.add(&r);
        n += 1;
    }
    totals.print(opts.name, seed, started.elapsed());
    totals
}
