//! Totals over a run of many schedules, and how they are printed.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::history::Tally;
use crate::leases::LeaseCounts;
use crate::run::ScheduleResult;
use crate::watchers::WatchCounts;

/// Totals over a run.
#[derive(Debug, Default)]
pub struct Totals {
    pub schedules: u64,
    pub clusters: u64,
    pub tally: Tally,
    pub events_checked: u64,
    pub digest_comparisons: u64,
    /// The largest [`ScheduleResult::batched_writes`] (the counters are per cluster, cumulative).
    pub batched_writes: u64,
    /// The largest [`ScheduleResult::holds_filled`] and [`ScheduleResult::holds_expired`] (as
    /// `batched_writes`).
    pub holds_filled: u64,
    pub holds_expired: u64,
    pub watch: WatchCounts,
    pub leases: LeaseCounts,
    pub faults: BTreeMap<String, u64>,
    pub failed: Vec<String>,
    pub violations: u64,
    pub lost: u64,
    pub undecided: u64,
    pub unexpected: u64,
}

impl Totals {
    pub fn add(&mut self, r: &ScheduleResult) {
        self.schedules += 1;
        self.tally.add(&r.tally);
        self.events_checked += r.checked_events as u64;
        for f in &r.faults {
            *self.faults.entry(f.clone()).or_default() += 1;
        }
        self.digest_comparisons += r.digest_comparisons;
        self.batched_writes = self.batched_writes.max(r.batched_writes);
        self.holds_filled = self.holds_filled.max(r.holds_filled);
        self.holds_expired = self.holds_expired.max(r.holds_expired);
        self.watch.add(&r.watch);
        self.leases.add(&r.leases);
        self.violations += r.violations.len() as u64;
        self.lost += r.lost.len() as u64;
        self.undecided += r.undecided.len() as u64;
        self.unexpected += r.unexpected.len() as u64;
        if r.failed() {
            self.failed.push(format!(
                "schedule {}: {} violations, {} lost, diverged: {:?}, liveness: {:?}, artifacts: {:?}",
                r.n,
                r.violations.len(),
                r.lost.len(),
                r.diverged,
                r.liveness,
                r.artifacts
            ));
        }
    }

    pub fn print(&self, name: &str, seed: u64, elapsed: Duration) {
        eprintln!(
            "==== chaos {name} totals (seed {seed}, {:.0}s) ====",
            elapsed.as_secs_f64()
        );
        eprintln!(
            "  schedules:  {} on {} clusters",
            self.schedules, self.clusters
        );
        eprintln!("  operations: {}", self.tally);
        eprintln!(
            "  checked:    {} key events for linearizability, {} replica digest comparisons",
            self.events_checked, self.digest_comparisons
        );
        eprintln!(
            "  batching:   up to {} writes proposed in shared log entries on one cluster (its members' counters at a schedule's end)",
            self.batched_writes
        );
        eprintln!(
            "  gathering:  up to {} held batches released by their writers and {} holds run out on one cluster (same)",
            self.holds_filled, self.holds_expired
        );
        let (w, l) = (&self.watch, &self.leases);
        eprintln!(
            "  watchers:   {} events seen, {} reconnects",
            w.events, w.reconnects
        );
        eprintln!(
            "  leases:     {} granted, {} keep-alives answered, {} seen gone, {} reconnects",
            l.granted, l.renewed, l.gone, l.reconnects
        );
        eprintln!("  faults:     {:?}", self.faults);
        eprintln!(
            "  verdict:    {} linearizability violations, {} lost writes, {} failed schedules, {} undecided keys, {} unexpected answers",
            self.violations,
            self.lost,
            self.failed.len(),
            self.undecided,
            self.unexpected
        );
        for f in &self.failed {
            eprintln!("  FAILED {f}");
        }
    }
}
