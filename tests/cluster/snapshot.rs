//! Story: a node that joins after the log was compacted must be brought up to date by a snapshot
//! (Raft §7: InstallSnapshot), then serve every key. The snapshot (2 MB or more) travels over the
//! leader's snapshot link in 1 MiB chunks, as its metrics show.

use reqwest::Method;

use crate::harness::{CONVERGE_TIMEOUT, Cluster, Level, wait_until};

const KEYS: usize = 300;
const SNAP: &str = "--snapshot-every 50";
/// Padding of every value: 300 keys make a snapshot of several chunks.
const PAD_BYTES: usize = 8000;

fn value(n: usize) -> String {
    format!("value-{n}-{}", "p".repeat(PAD_BYTES))
}

/// The sum of `raftkv_network_peer_requests_total` samples of node `i` with `labels`.
fn link_requests(c: &Cluster, i: usize, labels: &[&str]) -> f64 {
    let r = c.request(i, Method::GET, "/metrics", None);
    r.expect_status(200);
    r.body
        .lines()
        .filter(|l| l.starts_with("raftkv_network_peer_requests_total{"))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

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
        c.put_db(a, &format!("s{n:03}"), &value(n))
            .expect_status(200);
    }
    let applied = c.status(a)["applied_index"]
        .as_u64()
        .expect("applied_index");
    assert!(applied >= KEYS as u64, "applied_index {applied} < {KEYS}");
    // Snapshots are built in the background once due: here after 75 entries (the larger of
    // `--snapshot-every 50` and 300 keys / 4, `raft::snapshot_policy`). Wait until the one due
    // is built: at least 225 keys (≈ 1.7 MiB), which the joiners get (their log is compacted).
    let due_by = applied - 75;
    wait_until(
        CONVERGE_TIMEOUT,
        &format!("A built a snapshot at index {due_by} or later"),
        || {
            c.status(a)["snapshot_index"]
                .as_u64()
                .is_some_and(|s| s >= due_by)
        },
    );

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
                snap >= due_by,
                "node {i} caught up without a recent snapshot: snapshot_index {snap}"
            );
        }
    }
    c.wait_digests_agree(&[a, b, d], KEYS as u64);
    for i in [b, d] {
        c.wait_db_value(i, "s299", &value(299), Level::Stale);
        for n in 0..KEYS {
            c.get_db(i, &format!("s{n:03}"), Level::Stale)
                .expect_body(&value(n));
        }
    }

    c.phase("the snapshots went over A's snapshot links, in 1 MiB chunks");
    for i in [b, d] {
        let peer = format!("peer=\"{}\"", c.id(i));
        let chunks = link_requests(&c, a, &[&peer, "lane=\"snapshot\""]);
        // A snapshot of 225 keys or more (≈ 1.7 MiB and up) takes at least 2 chunks.
        assert!(chunks >= 2.0, "{chunks} snapshot chunks to node {i}");
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
    c.wait_db_value(b, "s000", &value(0), Level::Stale);
    c.wait_db_value(b, "t59", "more", Level::Stale);
    c.wait_digests_agree(&[a, b, d], KEYS as u64 + 60);
}
