//! When this node builds a snapshot (and so compacts its log): once `--snapshot-every` entries
//! were applied since the last one, or as many writes (store revisions: with write batching one
//! entry holds up to 512 writes, so counting entries alone let 1M writes go by in 17,130 entries
//! without a snapshot, and a restart replayed them all: 2.45 s, against 0.77 s from a snapshot
//! once writes counted, BENCHMARKS.md, "Follower writes gathered") — or, for a store of more than
//! `ENTRIES_PER_KEY_INVERSE` × that many keys, once a quarter as many as the store holds keys.
//! A snapshot rewrites the whole store, so at 5M keys a build every 100,000 writes never ended
//! before the next was due: the node was always writing 850 MB and writes slowed 5×
//! (BENCHMARKS.md, "The scale curve"). With the bound, a build's cost per applied write stays at
//! most that of rewriting 4 keys; the price is a longer log to replay at a restart (at most
//! keys / 4 writes).
//!
//! The members' first builds are staggered: a voter's first build after it starts is due
//! `threshold × position / voters` writes early (position in the sorted voter ids), so the
//! members of a cluster, which take the same writes, do not all rewrite their store at the same
//! moment (a commit needs a majority, and a member busy with a build answers appends later; on
//! one shared disk the builds also queue behind each other). From then on each counts from its
//! own newest snapshot, so the phases stay apart. Early, never late: the log after a snapshot
//! stays within one threshold.
//!
//! openraft's own policy counts entries only, so it is off (`SnapshotPolicy::Never`) and this
//! task triggers the builds; openraft drops a trigger while a build runs, and the next look
//! triggers again.

use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;

use crate::app::SharedApp;

/// A snapshot is due after at least keys / this many applied entries.
pub const ENTRIES_PER_KEY_INVERSE: u64 = 4;
/// How often the node looks whether a snapshot is due.
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// Applied entries (or writes) after which a snapshot is due, for a store of `keys` keys.
pub fn threshold(snapshot_every: u64, keys: u64) -> u64 {
    snapshot_every.max(keys / ENTRIES_PER_KEY_INVERSE)
}

/// Applied entries (or writes) after which this member's first build since it started is due:
/// `threshold` less `threshold × position / voters` (its position among the sorted voter ids; 0
/// for a non-voter), so at least `threshold / voters`.
pub fn first_due(threshold: u64, position: usize, voters: usize) -> u64 {
    if voters == 0 {
        return threshold;
    }
    let early = u128::from(threshold) * position as u128 / voters as u128;
    threshold - u64::try_from(early).unwrap_or(0).min(threshold)
}

/// Triggers a snapshot whenever one is due, until the Raft core stops.
pub async fn run(app: SharedApp, snapshot_every: u64) {
    let mut look = tokio::time::interval(LOOK_EVERY);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut first: Option<u64> = None; // the snapshot index this task started with
    loop {
        look.tick().await;
        let (applied, snapshot, position, voters) = {
            let m = app.raft.metrics();
            let m = m.borrow_watched();
            let mut ids: Vec<_> = m.membership_config.membership().voter_ids().collect();
            ids.sort_unstable();
            (
                m.last_applied.map_or(0, |l| l.index),
                m.snapshot.map_or(0, |l| l.index),
                ids.iter().position(|&id| id == app.node_id).unwrap_or(0),
                ids.len(),
            )
        };
        let started_with = *first.get_or_insert(snapshot);
        let (_, _, keys) = app.state_machine.digest();
        let sm = &app.state_machine;
        let writes = u64::try_from(sm.revision() - sm.snapshot_revision()).unwrap_or(0);
        let since = applied.saturating_sub(snapshot).max(writes);
        let mut due = threshold(snapshot_every, keys as u64);
        if snapshot == started_with {
            due = first_due(due, position, voters);
        }
        if since >= due && app.raft.trigger().snapshot().await.is_err() {
            return; // the Raft core stopped
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_stores_snapshot_after_a_quarter_of_their_keys() {
        assert_eq!(threshold(100_000, 0), 100_000);
        assert_eq!(threshold(100_000, 400_000), 100_000);
        assert_eq!(threshold(100_000, 1_000_000), 250_000);
        assert_eq!(threshold(100_000, 5_000_000), 1_250_000);
        assert_eq!(threshold(50, 300), 75);
        assert_eq!(threshold(50, 100), 50);
    }

    #[test]
    fn first_builds_are_spread_over_one_threshold() {
        let dues: Vec<u64> = (0..3).map(|p| first_due(90_000, p, 3)).collect();
        assert_eq!(dues, [90_000, 60_000, 30_000]);
        assert_eq!(
            first_due(100_000, 0, 1),
            100_000,
            "a single node: at the threshold"
        );
        assert_eq!(
            first_due(100_000, 0, 0),
            100_000,
            "a node outside the voters too"
        );
        assert_eq!(first_due(u64::MAX, 4, 5), u64::MAX / 5, "no overflow");
        assert_eq!(first_due(1, 2, 3), 1, "never 0");
    }
}
