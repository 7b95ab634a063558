//! Story: full-cluster crash. Every write that was acknowledged (200) survives kill -9 of all
//! three nodes and a restart without -join ("When you restart the node, it's already been joined
//! to the cluster so you can remove the -join argument", raftd README). Raft §5.4 (safety):
//! committed entries are durable on a majority before the client is told.

use std::collections::BTreeMap;

use serde_json::json;

use crate::harness::{Cluster, Level};

const KEYS: usize = 200;

#[test]
fn acknowledged_writes_survive_kill9_of_all_nodes() {
    let mut c = Cluster::three_raftd("restart", "");
    let leader = c.leader();
    let followers = c.followers(leader);

    c.phase(&format!(
        "write {KEYS} keys, alternating leader/follower and both APIs"
    ));
    let mut acked = BTreeMap::new();
    for n in 0..KEYS {
        let key = format!("k{n:03}");
        let value = format!("v{n}-{}", "x".repeat(n % 17));
        let via = if n % 3 == 0 { followers[n % 2] } else { leader };
        let r = if n % 2 == 0 {
            c.put_db(via, &key, &value)
        } else {
            c.post_key(via, &json!({ &key: &value }))
        };
        r.expect_status(200);
        acked.insert(key, value);
    }
    // Overwrite and delete some keys: the final state, not the first write, must survive.
    for n in (0..KEYS).step_by(10) {
        let key = format!("k{n:03}");
        c.put_db(leader, &key, "overwritten").expect_status(200);
        acked.insert(key, "overwritten".to_owned());
    }
    for n in (5..KEYS).step_by(50) {
        let key = format!("k{n:03}");
        c.delete_db(leader, &key).expect_status(200);
        acked.remove(&key);
    }
    let all = c.live();
    let digest_before = c.wait_digests_agree(&all, acked.len() as u64);

    c.phase("kill -9 all three nodes");
    for &i in &all {
        c.kill9(i);
    }
    assert!(c.live().is_empty());

    c.phase("start all three again without -join");
    for &i in &all {
        c.respawn(i);
    }
    for &i in &all {
        c.wait_ready(i);
    }
    let leader = c.leader();
    c.wait_all_voters(3);

    c.phase("every acknowledged key is there (linearizable reads on the leader)");
    for (k, v) in &acked {
        c.get_db(leader, k, Level::Linearizable).expect_body(v);
    }
    for n in (5..KEYS).step_by(50) {
        c.get_db(leader, &format!("k{n:03}"), Level::Linearizable)
            .expect_error(&[404], &["not_found"]);
    }

    c.phase("every replica converges to the same state (digest) and serves every key stale");
    let digest_after = c.wait_digests_agree(&all, acked.len() as u64);
    assert_eq!(
        digest_after, digest_before,
        "state digest changed across the restart"
    );
    for &i in &all {
        for (k, v) in &acked {
            c.get_db(i, k, Level::Stale).expect_body(v);
        }
    }

    c.phase("the restarted cluster accepts new writes");
    c.put_db(followers[0], "after-restart", "ok")
        .expect_status(200);
    for &i in &all {
        c.get_db(i, "after-restart", Level::Linearizable)
            .expect_body("ok");
    }
}
