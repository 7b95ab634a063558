//! etcdctl 3.4 against a 3-node raftkv, the way the README shows it: what works today
//! (member list, endpoint status and health, `--cluster` and `http://` endpoints included,
//! put/get, defrag (a snapshot now), move-leader, member remove and add through a follower), and
//! what answers `Unimplemented` (Auth).

use serde_json::Value;

use crate::etcdctl;
use crate::harness::{CONVERGE_TIMEOUT, Cluster, Level, argv, wait_until};

fn endpoints(c: &Cluster, nodes: &[usize]) -> Vec<String> {
    nodes.iter().map(|&i| c.node(i).http_addr()).collect()
}

/// The last index a member's newest snapshot covers (0 before its first).
const SNAPSHOT_INDEX: &str = "raftkv_raft_snapshot_index";

fn node_id(c: &Cluster, i: usize) -> u64 {
    c.status(i)["node_id"].as_u64().expect("node_id")
}

#[test]
fn etcdctl_sees_the_raftkv_cluster() {
    if !crate::etcd_tools_or_skip("etcdctl_sees_the_raftkv_cluster") {
        return;
    }
    let mut c = Cluster::three_raftd("etcdctl", "");
    let all = endpoints(&c, &[0, 1, 2]);
    let leader = c.leader();
    let ids: Vec<u64> = (0..3).map(|i| node_id(&c, i)).collect();

    c.phase("etcdctl member list -w table: one row per member, raftkv's ids and addresses");
    let out = etcdctl::run(&all, &["member", "list", "-w", "table"], None);
    assert_eq!(out.code, 0, "{out:?}");
    for (i, id) in ids.iter().enumerate() {
        let port = c.node(i).ports.http;
        let row = format!(
            "| {id:x} | started | {} | http://localhost:{port} | http://localhost:{port} | false |",
            c.id(i)
        );
        let squeezed: Vec<String> = out
            .stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert!(squeezed.contains(&row), "no row {row:?} in\n{}", out.stdout);
    }

    c.phase("etcdctl endpoint status -w json: the leader, version, terms and indexes");
    let out = etcdctl::run(&all, &["endpoint", "status", "-w", "json"], None);
    assert_eq!(out.code, 0, "{out:?}");
    let statuses: Value = serde_json::from_str(&out.stdout).expect("json");
    let statuses = statuses.as_array().expect("array");
    assert_eq!(statuses.len(), 3);
    let cluster_ids: Vec<&Value> = statuses
        .iter()
        .map(|s| &s["Status"]["header"]["cluster_id"])
        .collect();
    assert!(
        cluster_ids
            .iter()
            .all(|id| *id == cluster_ids[0] && id.is_u64())
    );
    for (i, s) in statuses.iter().enumerate() {
        let s = &s["Status"];
        assert_eq!(s["version"], "3.4.23");
        assert_eq!(s["header"]["member_id"].as_u64(), Some(ids[i]));
        assert_eq!(s["leader"].as_u64(), Some(ids[leader]), "{s}");
        assert!(
            s["raftAppliedIndex"].as_u64().is_some_and(|n| n >= 1),
            "{s}"
        );
        assert!(s["dbSize"].as_u64().is_some_and(|n| n > 0), "{s}");
    }

    c.phase(
        "etcdctl endpoint status --cluster, and with http:// endpoints: etcdctl sends the URL \
         as the HTTP/2 :authority (mended; h2 alone refuses it)",
    );
    let out = etcdctl::run(
        &all[..1],
        &["endpoint", "status", "--cluster", "-w", "json"],
        None,
    );
    assert_eq!(out.code, 0, "{out:?}");
    let statuses: Value = serde_json::from_str(&out.stdout).expect("json");
    let mut seen: Vec<(String, u64)> = statuses
        .as_array()
        .expect("array")
        .iter()
        .map(|s| {
            let ep = s["Endpoint"].as_str().expect("Endpoint").to_string();
            (ep, s["Status"]["header"]["member_id"].as_u64().expect("id"))
        })
        .collect();
    seen.sort();
    let mut want: Vec<(String, u64)> = (0..3)
        .map(|i| (format!("http://localhost:{}", c.node(i).ports.http), ids[i]))
        .collect();
    want.sort();
    assert_eq!(seen, want, "{out:?}");
    let urls: Vec<String> = all.iter().map(|ep| format!("http://{ep}")).collect();
    let out = etcdctl::run(&urls, &["endpoint", "status"], None);
    assert_eq!((out.code, out.stdout.lines().count()), (0, 3), "{out:?}");
    let out = etcdctl::run(&urls, &["endpoint", "hashkv"], None);
    assert_eq!((out.code, out.stdout.lines().count()), (0, 3), "{out:?}");
    let out = etcdctl::run(&all[..1], &["endpoint", "health", "--cluster"], None);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stderr.matches("is healthy").count(), 3, "{out:?}");

    c.phase("etcdctl endpoint health (a linearizable Range of the key 'health') on every member");
    let out = etcdctl::run(&all, &["endpoint", "health"], None);
    assert_eq!(out.code, 0, "{out:?}");
    for ep in &all {
        let line = format!("{ep} is healthy: successfully committed proposal");
        assert!(out.stderr.contains(&line), "no {line:?} in {}", out.stderr);
    }

    c.phase("etcdctl put / get on different members; Auth answers Unimplemented");
    let out = etcdctl::run(&all[1..2], &["put", "foo", "bar"], None);
    assert_eq!((out.code, out.stdout.trim()), (0, "OK"), "{out:?}");
    let out = etcdctl::run(&all[2..3], &["get", "foo"], None);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "foo\nbar\n"),
        "{out:?}"
    );

    let out = etcdctl::run(&all[..1], &["user", "list"], None);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.error,
        "Error: rpc error: code = Unimplemented desc = raftkv: \
         etcdserverpb.Auth/UserList is not implemented"
    );

    c.phase("etcdctl defrag --cluster: each member builds a snapshot now, covering all it applied");
    let applied: Vec<u64> = (0..3)
        .map(|i| {
            c.status(i)["applied_index"]
                .as_u64()
                .expect("applied_index")
        })
        .collect();
    assert!(
        (0..3).all(|i| c.metric(i, SNAPSHOT_INDEX) < applied[i]),
        "a snapshot already covers the log: nothing to check ({applied:?})"
    );
    let out = etcdctl::run(&all[..1], &["defrag", "--cluster"], None);
    assert_eq!(out.code, 0, "{out:?}");
    for i in 0..3 {
        let line = format!(
            "Finished defragmenting etcd member[http://localhost:{}]",
            c.node(i).ports.http
        );
        assert!(out.stdout.contains(&line), "no {line:?} in {out:?}");
        let built = c.metric(i, SNAPSHOT_INDEX);
        assert!(
            built >= applied[i],
            "node {i}: snapshot {built} < {applied:?}"
        );
    }

    c.phase("the HTTP API still answers on the same port, JSON errors included");
    c.put_db(0, "foo", "bar").expect_status(200);
    c.post_json(0, "/etcdserverpb.KV/Range", &serde_json::json!({}))
        .expect_error(&[404], &["not_found"]);
    c.wait_db_value(1, "foo", "bar", Level::Linearizable);

    c.phase("etcdctl move-leader (endpoints given as URLs): openraft's leader transfer");
    let target = c.followers(leader)[0];
    let out = etcdctl::run(&urls, &["move-leader", &format!("{:x}", ids[target])], None);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!(
            "Leadership transferred from {:x} to {:x}",
            ids[leader], ids[target]
        )
    );
    c.wait_leader_is(target);

    c.phase("etcdctl member remove, sent to a follower: relayed to the leader");
    let leader = c.leader();
    let (via, gone) = {
        let f = c.followers(leader);
        (f[0], f[1])
    };
    let out = etcdctl::run(
        &endpoints(&c, &[via]),
        &["member", "remove", &format!("{:x}", ids[gone])],
        None,
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            // etcdctl prints ids with %16x: space-padded to 16.
            .starts_with(&format!("Member {:16x} removed from cluster ", ids[gone])),
        "{out:?}"
    );
    wait_until(CONVERGE_TIMEOUT, "two members left", || {
        let out = etcdctl::run(&endpoints(&c, &[leader]), &["member", "list"], None);
        out.code == 0 && out.stdout.lines().count() == 2
    });
    c.kill9(gone);

    c.phase("etcdctl member add of a running node that belongs to no cluster yet");
    // A node started with -join waits, uninitialised, until some leader adds it (its own join
    // goes to a dead address here); MemberAdd reads its name from its /status.
    let newbie = c.start(|p| argv(&format!("-p {} -id newbie -join 127.0.0.1:1", p.http)));
    let url = format!("--peer-urls=http://localhost:{}", c.node(newbie).ports.http);
    let out = etcdctl::run(
        &endpoints(&c, &[via]),
        &["member", "add", "newbie", &url],
        None,
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("Member "), "{out:?}");
    assert!(out.stdout.contains(" added to cluster "), "{out:?}");
    wait_until(
        CONVERGE_TIMEOUT,
        "newbie is a voter on every member",
        || {
            [leader, via, newbie].iter().all(|&i| {
                let out = etcdctl::run(&endpoints(&c, &[i]), &["member", "list"], None);
                out.stdout.lines().count() == 3
                    && out.stdout.contains(", started, newbie, ")
                    && !out.stdout.contains(", true")
            })
        },
    );
}
