//! Story: "Kill the leader process and watch one of the other nodes be elected leader ... when
//! the first node is restarted, it will rejoin the cluster and learn about any updates that
//! occurred while it was down" (hraftd README). Raft §5.2 (election) and §5.3 (log catch-up).

use serde_json::json;

use crate::harness::{CONVERGE_TIMEOUT, Cluster, Level, wait_until_with};

#[test]
fn leader_kill9_then_restart_without_join_catches_up() {
    let mut c = Cluster::three_raftd("failover", "");
    let old = c.leader();
    let old_id = c.id(old);

    c.phase("write before the failure");
    c.put_db(old, "before", "1").expect_status(200);
    for i in c.live() {
        c.wait_db_value(i, "before", "1", Level::Stale);
    }

    c.phase(&format!("kill -9 the leader (node {old}, {old_id})"));
    c.kill9(old);

    c.phase("a new leader is elected among the survivors");
    let new = c.leader();
    assert_ne!(new, old, "the killed node cannot be leader");
    let survivors = c.live();
    assert_eq!(survivors.len(), 2);
    let term = |i: usize| c.status(i)["term"].as_u64().expect("term");
    eprintln!(
        "   new leader: node {new} ({}) in term {}",
        c.id(new),
        term(new)
    );

    c.phase("writes succeed via every surviving node (both APIs)");
    for &i in &survivors {
        c.put_db(i, &format!("during-db-{i}"), "x")
            .expect_status(200);
        c.post_key(i, &json!({ format!("during-key-{i}"): "y" }))
            .expect_status(200);
    }
    for &i in &survivors {
        c.get_db(i, "before", Level::Linearizable).expect_body("1");
        for &j in &survivors {
            c.get_db(i, &format!("during-db-{j}"), Level::Linearizable)
                .expect_body("x");
            c.get_key(i, &format!("during-key-{j}"), Level::Linearizable)
                .expect_json(&json!({ format!("during-key-{j}"): "y" }));
        }
    }

    c.phase(&format!(
        "restart the old leader WITHOUT -join: {:?}",
        c.node(old).flags
    ));
    c.restart(old);
    assert_eq!(c.id(old), old_id, "a restarted node keeps its name");
    assert!(!c.node(old).flags.iter().any(|f| f.contains("join")));

    c.phase("it catches up on the writes made while it was down (stale reads on it)");
    c.wait_db_value(old, "before", "1", Level::Stale);
    for &j in &survivors {
        c.wait_db_value(old, &format!("during-db-{j}"), "x", Level::Stale);
        c.wait_key_value(old, &format!("during-key-{j}"), "y", Level::Stale);
    }

    c.phase("it is a voter again, knows the leader, and all digests agree");
    c.wait_all_voters(3);
    let leader = c.leader();
    let all = c.live();
    c.wait_digests_agree(&all, 5);
    wait_until_with(
        CONVERGE_TIMEOUT,
        "restarted node reports the current leader",
        || {
            let s = c.status(old);
            match s.pointer("/leader/id").and_then(|v| v.as_str()) {
                Some(id) if id == c.id(leader) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    );

    c.phase("a write via the restarted node (forwarded) is visible everywhere");
    c.put_db(old, "after", "2").expect_status(200);
    for &i in &all {
        c.get_db(i, "after", Level::Linearizable).expect_body("2");
    }
}
