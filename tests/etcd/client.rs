//! The `etcd-client` crate (a Rust etcd v3 client, like the Go one) against raftkv: connect,
//! `member_list`, `status`, put/get, through a follower and after the leader is killed.

use etcd_client::Client;

use crate::harness::Cluster;

fn node_id(c: &Cluster, i: usize) -> u64 {
    c.status(i)["node_id"].as_u64().expect("node_id")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `(leader id, this member's id, cluster id, version, member ids)` as node `i` reports them.
fn view(rt: &tokio::runtime::Runtime, c: &Cluster, i: usize) -> (u64, u64, u64, String, Vec<u64>) {
    rt.block_on(async {
        let mut client = Client::connect([c.node(i).http_addr()], None)
            .await
            .expect("connect");
        let status = client.status().await.expect("status");
        let header = status.header().expect("header");
        let mut members: Vec<u64> = client
            .member_list()
            .await
            .expect("member_list")
            .members()
            .iter()
            .map(|m| m.id())
            .collect();
        members.sort_unstable();
        (
            status.leader(),
            header.member_id(),
            header.cluster_id(),
            status.version().to_string(),
            members,
        )
    })
}

#[test]
fn etcd_client_crate_through_a_follower_and_a_leader_kill() {
    let mut c = Cluster::three_raftd("etcd-client", "");
    let rt = runtime();
    let leader = c.leader();
    let ids: Vec<u64> = (0..3).map(|i| node_id(&c, i)).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();

    c.phase("member_list and status through the leader and a follower");
    let follower = c.followers(leader)[0];
    let on_leader = view(&rt, &c, leader);
    let on_follower = view(&rt, &c, follower);
    assert_eq!(on_leader.0, ids[leader]);
    assert_eq!(on_follower.0, ids[leader], "a follower names the leader");
    assert_eq!(
        on_follower.1, ids[follower],
        "header.member_id is the answering node"
    );
    assert_eq!(on_leader.2, on_follower.2, "one cluster id");
    assert_ne!(on_leader.2, 0);
    assert_eq!(on_follower.3, "3.4.23");
    assert_eq!(on_follower.4, sorted);

    c.phase("KV calls work through a follower (forwarded to the leader)");
    let got = rt.block_on(async {
        let mut client = Client::connect([c.node(follower).http_addr()], None)
            .await
            .expect("connect");
        client.put("k", "v", None).await.expect("put");
        client.get("k", None).await.expect("get")
    });
    assert_eq!(got.kvs()[0].value(), b"v");

    c.phase("a message over the request limit is refused before it is decoded");
    // The default --max-value-bytes is 1 MiB; the limit is that plus 64 KiB.
    let huge = format!("http://{}:1", "h".repeat(2 << 20));
    let err = rt.block_on(async {
        let mut client = Client::connect([c.node(follower).http_addr()], None)
            .await
            .expect("connect");
        client
            .member_add([huge], None)
            .await
            .expect_err("over the limit")
    });
    match err {
        etcd_client::Error::GRpcStatus(s) => {
            assert_eq!(s.code(), tonic::Code::OutOfRange, "{s:?}");
            assert!(s.message().contains("message length too large"), "{s:?}");
        }
        other => panic!("expected a gRPC status, got {other:?}"),
    }

    c.phase("kill -9 the leader: the survivors report the new leader, members unchanged");
    c.kill9(leader);
    let new_leader = c.leader();
    assert_ne!(new_leader, leader);
    for i in c.live() {
        let (reported, _, _, _, members) = view(&rt, &c, i);
        assert_eq!(reported, ids[new_leader]);
        assert_eq!(members, sorted, "a killed member is still a member");
    }
}
