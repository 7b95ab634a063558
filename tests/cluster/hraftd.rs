//! Story: the hraftd README (seed 001), with hraftd's exact single-dash flag spelling:
//! `-haddr :11001 -raddr :12001 -join :11000 ~/node1`, `curl -XPOST localhost:11000/key -d
//! '{"user1": "batman"}'`, reads from every node, a second key, and a delete.

use serde_json::json;

use crate::harness::{Cluster, Level, argv};

#[test]
fn hraftd_readme_three_nodes_set_get_delete() {
    let mut c = Cluster::new("hraftd");

    c.phase("run the first node: hraftd -haddr 127.0.0.1:P0 -raddr 127.0.0.1:R0 -id node0 ~/node0");
    let n0 = c.start(|p| {
        argv(&format!(
            "-haddr 127.0.0.1:{} -raddr 127.0.0.1:{} -id node0",
            p.http, p.raft
        ))
    });
    c.wait_leader_is(n0);
    assert_eq!(c.id(n0), "node0");

    c.phase("set a key and read it back on the single node");
    c.post_key(n0, &json!({"user1": "batman"}))
        .expect_status(200);
    c.get_key(n0, "user1", Level::Linearizable)
        .expect_json(&json!({"user1": "batman"}));

    c.phase(
        "bring up two more: hraftd -haddr :P1 -raddr :R1 -id node1 -join :P0 ~/node1 (and node2)",
    );
    let p0 = c.node(n0).ports.http;
    let n1 = c.start(move |p| {
        argv(&format!(
            "-haddr :{} -raddr :{} -id node1 -join :{p0}",
            p.http, p.raft
        ))
    });
    let n2 = c.start(move |p| {
        argv(&format!(
            "-haddr :{} -raddr :{} -id node2 -join :{p0}",
            p.http, p.raft
        ))
    });
    let all = [n0, n1, n2];

    c.phase("the cluster has three voters: node0, node1, node2");
    c.wait_all_voters(3);
    for &i in &all {
        assert_eq!(
            c.voters(i).expect("status"),
            ["node0", "node1", "node2"],
            "members seen by node {i}"
        );
    }
    let leader = c.leader();

    c.phase("once joined, each node knows about user1");
    for &i in &all {
        c.get_key(i, "user1", Level::Linearizable)
            .expect_json(&json!({"user1": "batman"}));
        c.wait_key_value(i, "user1", "batman", Level::Stale);
    }

    c.phase("add a second key: curl -XPOST <leader>/key -d '{\"user2\": \"robin\"}'");
    c.post_key(leader, &json!({"user2": "robin"}))
        .expect_status(200);
    for &i in &all {
        c.get_key(i, "user2", Level::Linearizable)
            .expect_json(&json!({"user2": "robin"}));
        c.wait_key_value(i, "user2", "robin", Level::Stale);
    }

    c.phase("a multi-key POST sets all keys at once");
    c.post_key(leader, &json!({"user3": "alfred", "user4": "joker"}))
        .expect_status(200);
    for &i in &all {
        c.get_key(i, "user3", Level::Linearizable)
            .expect_json(&json!({"user3": "alfred"}));
        c.get_key(i, "user4", Level::Linearizable)
            .expect_json(&json!({"user4": "joker"}));
    }

    c.phase("DELETE /key/user2; afterwards GET /key/user2 is 404 on every node, user1 remains");
    c.delete_key(leader, "user2").expect_status(200);
    for &i in &all {
        c.get_key(i, "user2", Level::Linearizable)
            .expect_error(&[404], &["not_found"]);
        c.get_key(i, "user1", Level::Linearizable)
            .expect_json(&json!({"user1": "batman"}));
    }
}
