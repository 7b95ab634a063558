//! Story: a node that joins after the log was compacted must be brought up to date by a snapshot
//! (Raft §7: InstallSnapshot), then serve every key.

use crate::harness::{Cluster, Level};

const KEYS: usize = 300;
const SNAP: &str = "--snapshot-every 50";

#[test]
fn late_joiners_catch_up_from_a_snapshot() {
    let mut c = Cluster::new("snapshot");

    c.phase(&format!("start node A alone with {SNAP}"));
    let a = c.start_raftd(None, SNAP);
    c.wait_leader_is(a);

    c.phase(&format!(
        "write {KEYS} keys to A, so its log is compacted several times"
    ));
    for n in 0..KEYS {
        c.put_db(a, &format!("s{n:03}"), &format!("value-{n}"))
            .expect_status(200);
    }
    let applied = c.status(a)["applied_index"]
        .as_u64()
        .expect("applied_index");
    assert!(applied >= KEYS as u64, "applied_index {applied} < {KEYS}");

    c.phase(&format!("join B and C (also {SNAP})"));
    let b = c.start_raftd(Some(a), SNAP);
    let d = c.start_raftd(Some(a), SNAP);
    c.wait_all_voters(3);
    c.leader();

    c.phase("B and C converge to A's state and serve every key (stale reads)");
    // `/status` may also report `snapshot_index` (not part of the documented fields): when it
    // does, the joiners must have started from a snapshot, not from a replayed log.
    for i in [b, d] {
        c.wait_digests_agree(&[a, i], KEYS as u64);
        if let Some(snap) = c.status(i)["snapshot_index"].as_u64() {
            assert!(
                snap >= 250,
                "node {i} caught up without a recent snapshot: snapshot_index {snap}"
            );
        }
    }
    c.wait_digests_agree(&[a, b, d], KEYS as u64);
    for i in [b, d] {
        c.wait_db_value(i, "s299", "value-299", Level::Stale);
        for n in 0..KEYS {
            c.get_db(i, &format!("s{n:03}"), Level::Stale)
                .expect_body(&format!("value-{n}"));
        }
    }

    c.phase("the cluster keeps replicating (and snapshotting) after the catch-up");
    let leader = c.leader();
    for n in 0..60 {
        c.put_db(leader, &format!("t{n:02}"), "more")
            .expect_status(200);
    }
    c.wait_digests_agree(&[a, b, d], KEYS as u64 + 60);

    c.phase("a joiner restarted after the snapshot still has everything");
    c.kill9(b);
    c.restart(b);
    c.wait_db_value(b, "s000", "value-0", Level::Stale);
    c.wait_db_value(b, "t59", "more", Level::Stale);
    c.wait_digests_agree(&[a, b, d], KEYS as u64 + 60);
}
