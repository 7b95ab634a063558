//! Story: the raftd README (seed 000), command by command. `raftd -p 4001 ~/node.1`, two more
//! nodes with `-join localhost:4001`, `curl -XPOST localhost:4001/db/foo -d 'bar'`, and the value
//! can be read back from all three nodes.

use crate::harness::{Cluster, Level, argv};

#[test]
fn raftd_readme_three_nodes_replicate_a_write() {
    let mut c = Cluster::new("raftd");

    c.phase("start the first node: raftd -p 4001 ~/node.1");
    let a = c.start(|p| argv(&format!("-p {}", p.http)));
    c.wait_leader_is(a);

    c.phase("single node: curl -X POST localhost:4001/db/my_key -d 'FOO'; curl localhost:4001/db/my_key");
    c.put_db(a, "my_key", "FOO").expect_status(200);
    c.get_db(a, "my_key", Level::Linearizable)
        .expect_body("FOO");
    c.get_db(a, "no_such_key", Level::Linearizable)
        .expect_error(&[404], &["not_found"]);

    c.phase("add two nodes: raftd -p 4002 -join localhost:4001 ~/node.2 (and node.3 likewise)");
    let pa = c.node(a).ports.http;
    let b = c.start(move |p| argv(&format!("-p {} -join localhost:{pa}", p.http)));
    let d = c.start(move |p| argv(&format!("-p {} -join localhost:{pa}", p.http)));
    let all = [a, b, d];

    c.phase("every node sees three voters and they agree on a leader");
    c.wait_all_voters(3);
    let leader = c.leader();
    let ids: Vec<String> = all.iter().map(|&i| c.id(i)).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 3, "node names must be distinct: {ids:?}");
    for &i in &all {
        assert_eq!(
            c.voters(i).expect("status"),
            sorted,
            "node {i} member names"
        );
    }

    c.phase("curl -XPOST <leader>/db/foo -d 'bar'");
    c.put_db(leader, "foo", "bar").expect_status(200);

    c.phase("curl localhost:400{1,2,3}/db/foo returns bar (linearizable, the default)");
    for &i in &all {
        c.get_db(i, "foo", Level::Linearizable).expect_body("bar");
    }

    c.phase("?level=stale on every node returns bar once replicated");
    for &i in &all {
        c.wait_db_value(i, "foo", "bar", Level::Stale);
        c.wait_db_value(i, "my_key", "FOO", Level::Stale);
    }

    c.phase("DELETE /db/foo on the leader; the key is gone everywhere");
    c.delete_db(leader, "foo").expect_status(200);
    for &i in &all {
        c.get_db(i, "foo", Level::Linearizable)
            .expect_error(&[404], &["not_found"]);
    }
}
