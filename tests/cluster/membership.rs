//! Stories: cluster administration (Raft §6). Re-joining an existing member is idempotent (200,
//! no change) and a join that reuses a name with another address is a 409 conflict; `POST
//! /remove` of a follower shrinks the cluster to two voters that keep accepting writes.

use serde_json::{Value, json};

use crate::harness::{CONVERGE_TIMEOUT, Cluster, Level, free_port, wait_until_with};

const NAMES: [&str; 3] = ["node0", "node1", "node2"];

/// Node `i`'s member record as the leader reports it.
fn member(c: &Cluster, leader: usize, name: &str) -> Value {
    let st = c.status(leader);
    let members = st["members"].as_array().expect("members");
    members
        .iter()
        .find(|m| m["id"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in {st}"))
}

#[test]
fn join_is_idempotent_and_a_reused_name_conflicts() {
    let c = Cluster::three_hraftd("join", "");
    let leader = c.leader();
    let f = c.followers(leader)[0];
    let fid = c.id(f);

    c.phase("members are node0..node2, all voters, with the addresses they were started with");
    assert_eq!(c.voters(leader).expect("status"), NAMES);
    for name in NAMES {
        let i = c.index_of(name).expect("one of ours");
        let m = member(&c, leader, name);
        assert_eq!(
            m["raft_addr"],
            format!("127.0.0.1:{}", c.node(i).ports.raft),
            "{m}"
        );
        assert_eq!(
            m["api_addr"],
            format!("127.0.0.1:{}", c.node(i).ports.http),
            "{m}"
        );
    }

    c.phase(&format!(
        "hraftd-style POST /join {{\"addr\": <{fid}'s raft addr>, \"id\": \"{fid}\"}} twice -> 200"
    ));
    let raft_addr = member(&c, leader, &fid)["raft_addr"]
        .as_str()
        .expect("raft_addr")
        .to_owned();
    for _ in 0..2 {
        c.post_json(leader, "/join", &json!({"addr": raft_addr, "id": fid}))
            .expect_status(200);
    }
    c.wait_all_voters(3);
    assert_eq!(c.voters(leader).expect("status"), NAMES);

    c.phase("the same re-join sent to a follower is forwarded and also answers 200");
    let other = c.followers(leader)[1];
    c.post_json(other, "/join", &json!({"addr": raft_addr, "id": fid}))
        .expect_status(200);
    assert_eq!(c.voters(leader).expect("status"), NAMES);

    c.phase("POST /join with an existing name but another address -> 409 conflict");
    let elsewhere = format!("127.0.0.1:{}", free_port());
    c.post_json(leader, "/join", &json!({"addr": elsewhere, "id": fid}))
        .expect_error(&[409], &["conflict"]);
    assert_eq!(c.voters(leader).expect("status"), NAMES);
    let m = member(&c, leader, &fid);
    assert_eq!(
        m["raft_addr"],
        raft_addr.as_str(),
        "the conflicting join must not change {fid}"
    );

    c.phase("the cluster still works");
    c.put_db(f, "after-joins", "ok").expect_status(200);
    for i in c.live() {
        c.get_db(i, "after-joins", Level::Linearizable)
            .expect_body("ok");
    }
}

#[test]
fn remove_a_follower_leaves_a_working_two_node_cluster() {
    let c = Cluster::three_hraftd("remove", "");
    let leader = c.leader();
    let f = c.followers(leader)[0];
    let fid = c.id(f);

    c.phase(&format!(
        "POST /remove {{\"id\": \"{fid}\"}} (a follower) -> 200"
    ));
    c.post_json(leader, "/remove", &json!({ "id": fid }))
        .expect_status(200);
    let remaining: Vec<usize> = c.live().into_iter().filter(|&i| i != f).collect();
    for &i in &remaining {
        wait_until_with(
            CONVERGE_TIMEOUT,
            &format!("node {i} shows 2 members without {fid}"),
            || {
                let s = c.try_status(i).ok_or("no status")?;
                let ms = s["members"].as_array().cloned().unwrap_or_default();
                let ok = ms.len() == 2
                    && ms
                        .iter()
                        .all(|m| m["id"] != fid.as_str() && m["voter"] == true);
                if ok {
                    Ok(())
                } else {
                    Err(s["members"].to_string())
                }
            },
        );
    }

    c.phase("writes still work on the two-node cluster (the removed node is left running)");
    let leader = c.leader_among(&remaining);
    for &i in &remaining {
        c.put_db(i, &format!("after-remove-{i}"), "ok")
            .expect_status(200);
    }
    for &i in &remaining {
        for &j in &remaining {
            c.get_db(i, &format!("after-remove-{j}"), Level::Linearizable)
                .expect_body("ok");
        }
    }
    assert_eq!(
        c.leader_among(&remaining),
        leader,
        "the removed node must not disturb the leader"
    );

    c.phase("removing the same node again is harmless and does not re-add it");
    let r = c.post_json(leader, "/remove", &json!({ "id": fid }));
    assert!(
        r.status == 200 || r.status == 404,
        "second remove: {} {}",
        r.status,
        r.body
    );
    assert_eq!(c.voters(leader).expect("status").len(), 2);
}
