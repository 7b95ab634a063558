//! Jepsen-style chaos tests: real `raftkv` processes on loopback, a fault proxy between them, a
//! nemesis that kills, pauses, partitions and replaces nodes, concurrent clients recording every
//! operation, and a linearizability + lost-write + convergence check of what they saw.
//!
//! Module map, in the order a schedule uses them:
//! - `rng`: the seeded PRNG every choice comes from (`RAFTKV_SEED`);
//! - `proxy`: the TCP fault proxy (per directed link: pass, blackhole, reset, delay, drop);
//! - `topology`: nodes behind the proxy (built on the cluster harness), health, convergence;
//! - `monitor`: replica digests compared while a schedule runs (divergence detector);
//! - `nemesis`: fault schedules and how each fault is done and undone;
//! - `workload` + `history`: the clients and the recorded operations;
//! - `writers`: closed-loop writers on keep-alive connections to the leader, each on a key of
//!   its own, so the leader's gathering (holding a batch for the writers it just answered) runs
//!   under the faults too;
//! - `watchers`: watchers of the schedule's keys on random nodes, reconnecting from their last
//!   revision across faults, checked against the cluster's history (once, in order, no gaps, no
//!   phantoms); half of them over etcd's gRPC Watch, half over the HTTP event stream;
//! - `leases`: lease keepers (etcd's LeaseGrant / LeaseKeepAlive on random nodes) and the check
//!   that no lease expired while its keep-alives were answered, and none came back;
//! - `checker`: per-key linearizability (porcupine-rs), shrinking to a witness, lost writes;
//! - `run`: one schedule start to verdict, and runs of many (`totals`: their sums);
//! - `checker_tests`, `checker_cas_tests`, `broken_build`, `regressions`: the checker's own tests, a broken build
//!   caught on the real cluster, and reproductions of the product bugs chaos found.
//!
//! Modes:
//! - `cargo test --test chaos`: a short run (about 20 s of schedules; under a minute for the whole
//!   binary in a debug build) plus the checker's own tests and the regressions;
//! - `RAFTKV_CHAOS_SECS=600 cargo test --release --test chaos -- --ignored --nocapture`: the long
//!   run, schedules back to back for that many seconds, with totals at the end.
//!
//! Knobs: `RAFTKV_SEED=<n>` replays a run's schedules and workload choices;
//! `RAFTKV_SCHEDULE=<n>` runs only schedule n of that seed; `RAFTKV_KEEP_TMP=1` keeps a failed
//! test's data dirs; `RAFTKV_CHAOS_FAULTS=kill-leader,pause-random,...` (names in
//! `nemesis::Kind::name`) restricts the fault kinds; `RAFTKV_CHAOS_HOLD_MS=lo-hi` sets how long
//! faults are held; `RUST_LOG` is passed on to the nodes; `RAFTKV_CHAOS_NO_PROXY=1` (diagnosis
//! only) lets nodes dial each other directly, disabling network faults. A failing schedule
//! always copies its history, nemesis timeline, verdict, node logs and data dirs to
//! `$TMPDIR/raftkv-chaos-failure-seed<S>-schedule<n>/`.

#[path = "../cluster/harness/mod.rs"]
mod harness;

#[cfg(test)]
mod broken_build;
mod checker;
#[cfg(test)]
mod checker_cas_tests;
#[cfg(test)]
mod checker_tests;
mod history;
mod leases;
#[cfg(test)]
mod leases_tests;
mod monitor;
mod nemesis;
mod proxy;
#[cfg(test)]
mod regressions;
mod rng;
mod run;
mod topology;
mod totals;
mod watchers;
mod workload;
mod writers;

use std::sync::Mutex;
use std::time::Duration;

use crate::nemesis::PlanOpts;
use crate::run::Opts;

/// Flags of every chaos node: a 2 s bound on writes and reads (so clients mostly get the
/// product's own verdict before their 3 s timeout), frequent snapshots, so restarted and
/// fresh nodes often catch up by snapshot, and holds of up to 20 ms for gathered writes (with
/// 2 ms, the default then, a debug short run filled no hold: the keep-alive writers come back
/// to a debug build more slowly), so held batches meet the faults; and the last 100,000
/// revisions kept (not 10,000), because with the keep-alive writers a schedule makes up to
/// ≈ 46,000 writes in a release build and the watchers' check reads the schedule's whole
/// history back (compaction still runs, on the revisions of earlier schedules).
pub const NODE_FLAGS: &str = "--timeout-ms 2000 --snapshot-every 200 --write-gather-ms 20 --auto-compaction-retention 100000";

/// Cluster-using tests run one at a time (two cores are shared with everything else).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn base_opts(name: &'static str) -> Opts {
    Opts {
        name,
        nodes: 3,
        keys: 24,
        clients: 5,
        keepalive_writers: 16,
        watchers: 4,
        lease_keepers: 2,
        plan: PlanOpts {
            steps_min: 2,
            steps_max: 3,
            hold_ms: (800, 2000),
            gap_ms: (200, 800),
            net_faults: true,
            membership: true,
            only: std::env::var("RAFTKV_CHAOS_FAULTS")
                .ok()
                .map(|s| s.split(',').map(|k| k.trim().to_owned()).collect()),
            lead_with: None,
        },
        warmup: Duration::from_millis(500),
        recovery: Duration::from_millis(1000),
        request_timeout: Duration::from_secs(3),
        check_timeout: Duration::from_secs(20),
        heal_timeout: Duration::from_secs(30),
        node_flags: NODE_FLAGS,
        recycle_every: u64::MAX,
        budget: Duration::from_secs(20),
        min_schedules: 2,
    }
}

/// `RAFTKV_CHAOS_HOLD_MS=lo-hi` overrides how long each fault is held.
fn hold_override(opts: &mut Opts) {
    if let Ok(s) = std::env::var("RAFTKV_CHAOS_HOLD_MS")
        && let Some((lo, hi)) = s.split_once('-')
        && let (Ok(lo), Ok(hi)) = (lo.parse(), hi.parse())
    {
        opts.plan.hold_ms = (lo, hi);
    }
}

fn assert_clean(t: &totals::Totals, min_write_ratio: f64) {
    assert!(
        t.failed.is_empty() && t.violations == 0 && t.lost == 0,
        "chaos found problems (see the FAILED lines and the !!!! reports above)"
    );
    // The keep-alive writers are there so that held batches meet the faults: a run in which no
    // hold was ever released by its writers did not test that.
    assert!(
        t.holds_filled > 0,
        "no held batch was released by its writers ({} holds ran out): gathering went untested",
        t.holds_expired
    );
    let ratio = t.tally.write_success_ratio();
    assert!(
        ratio >= min_write_ratio,
        "only {:.1} % of attempted writes succeeded (need {:.0} %): {}",
        100.0 * ratio,
        100.0 * min_write_ratio,
        t.tally
    );
}

/// The default run: a few schedules on one cluster, every fault kind over a few seeds.
#[test]
fn short_chaos() {
    let _serial = serial();
    let seed = rng::seed_from_env();
    let mut opts = base_opts("short");
    // Issue 7: the default run always includes a bad join (the rest is dealt by the seed).
    opts.plan.lead_with = Some("bad-join");
    hold_override(&mut opts);
    let totals = run::run_many(&opts, seed);
    assert_clean(&totals, 0.5);
}

/// The long run: `RAFTKV_CHAOS_SECS` (default 600) of schedules back to back (1–3 faults each,
/// about 4.5 s per schedule in a release build), a fresh cluster every 10 schedules; at least
/// 60 % of attempted writes must succeed.
#[test]
#[ignore = "long: RAFTKV_CHAOS_SECS=600 cargo test --release --test chaos -- --ignored --nocapture"]
fn long_chaos() {
    let _serial = serial();
    let seed = rng::seed_from_env();
    let secs: u64 = std::env::var("RAFTKV_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let mut opts = base_opts("long");
    opts.budget = Duration::from_secs(secs);
    opts.min_schedules = 1;
    opts.recycle_every = 10;
    opts.plan.steps_min = 1;
    opts.plan.hold_ms = (700, 2200);
    opts.plan.gap_ms = (100, 500);
    opts.warmup = Duration::from_millis(300);
    opts.recovery = Duration::from_millis(700);
    hold_override(&mut opts);
    let totals = run::run_many(&opts, seed);
    assert_clean(&totals, 0.6);
}
