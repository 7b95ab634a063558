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
//! openraft's own policy counts entries only, so it is off (`SnapshotPolicy::Never`) and this
//! task triggers the builds; openraft drops a trigger while a build runs, and the next look
//! triggers again.

use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use tokio::time::Instant;

use crate::app::App;
use crate::app::SharedApp;
use crate::error::KvError;

/// A snapshot is due after at least keys / this many applied entries.
pub const ENTRIES_PER_KEY_INVERSE: u64 = 4;
/// How often the node looks whether a snapshot is due.
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// Applied entries (or writes) after which a snapshot is due, for a store of `keys` keys.
pub fn threshold(snapshot_every: u64, keys: u64) -> u64 {
    snapshot_every.max(keys / ENTRIES_PER_KEY_INVERSE)
}

/// Triggers a snapshot whenever one is due, until the Raft core stops.
pub async fn run(app: SharedApp, snapshot_every: u64) {
    let mut look = tokio::time::interval(LOOK_EVERY);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        look.tick().await;
        let (applied, snapshot) = {
            let m = app.raft.metrics();
            let m = m.borrow_watched();
            (
                m.last_applied.map_or(0, |l| l.index),
                m.snapshot.map_or(0, |l| l.index),
            )
        };
        let (_, _, keys) = app.state_machine.digest();
        let sm = &app.state_machine;
        let writes = u64::try_from(sm.revision() - sm.snapshot_revision()).unwrap_or(0);
        let since = applied.saturating_sub(snapshot).max(writes);
        if since >= threshold(snapshot_every, keys as u64)
            && app.raft.trigger().snapshot().await.is_err()
        {
            return; // the Raft core stopped
        }
    }
}

/// How long [`build_now`] waits for the snapshot it asked for before asking again (openraft
/// drops a trigger while a build runs, and that build may cover less than wanted).
const ASK_AGAIN_AFTER: Duration = Duration::from_millis(500);

/// Builds a snapshot now (etcd's `Defragment`): one covering at least every entry this node had
/// applied at the call, after which openraft purges the log it covers (but the last
/// `max_in_snapshot_log_to_keep` entries). Answers at once when the newest snapshot already
/// covers them. Waits at most `timeout` (a build at millions of keys takes seconds; it goes on
/// after a timeout). Returns the snapshot's last index.
pub async fn build_now(app: &App, timeout: Duration) -> Result<u64, KvError> {
    let deadline = Instant::now() + timeout;
    let target = app
        .raft
        .metrics()
        .borrow_watched()
        .last_applied
        .map_or(0, |l| l.index);
    let covered = |m: &openraft::RaftMetrics<crate::raft::types::TypeConfig>| {
        m.snapshot.map_or(0, |l| l.index)
    };
    loop {
        let now_covered = covered(&app.raft.metrics().borrow_watched());
        if now_covered >= target {
            return Ok(now_covered);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(KvError::Timeout(timeout));
        }
        app.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| KvError::Internal(e.to_string()))?;
        // A timeout here only means: look and ask again.
        let _ = app
            .raft
            .wait(Some(remaining.min(ASK_AGAIN_AFTER)))
            .metrics(
                |m| covered(m) >= target,
                "a snapshot covering the applied log",
            )
            .await;
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
}
