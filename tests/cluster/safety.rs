//! Stories: no typo or misconfiguration breaks a cluster (issue 7). A join to an address where
//! nothing listens is refused and changes nothing, on one node and on three; a joiner whose
//! advertised address reaches another member is refused (no phantom quorum); a peer request
//! or peer link meant for another node or cluster is refused; a node whose log store fails exits
//! non-zero.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::harness::{Cluster, Level, StartOpts, argv, free_port, wait_until, wait_until_with};

/// Join timeout the stories start nodes with (the default is 60 s).
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

fn join_timeout_flag() -> String {
    format!("--join-timeout-ms {}", JOIN_TIMEOUT.as_millis())
}

/// `POST /join` of a node named `typo` at a loopback port where nothing listens: answers an error
/// well within the join timeout, and the voters are unchanged.
fn join_dead_address(c: &Cluster, leader: usize, voters_before: &[String]) {
    let dead = format!("127.0.0.1:{}", free_port());
    c.phase(&format!(
        "POST /join {{\"id\": \"typo\", \"addr\": \"{dead}\"}} (nothing listens there), twice"
    ));
    for _ in 0..2 {
        let r = c.post_json(leader, "/join", &json!({"id": "typo", "addr": dead}));
        r.expect_error(&[503], &["join_failed"]);
        assert!(
            r.body.contains(&dead),
            "the error names the address: {}",
            r.body
        );
        assert!(
            r.elapsed < JOIN_TIMEOUT + Duration::from_secs(2),
            "answered after {:?}",
            r.elapsed
        );
    }
    assert_eq!(
        c.voters(leader).expect("status"),
        voters_before,
        "voters unchanged"
    );
    c.phase("the typo is no member: POST /remove answers 404, writes keep working");
    c.post_json(leader, "/remove", &json!({"id": "typo"}))
        .expect_error(&[404], &["not_found"]);
    c.put_db(leader, "after-typo", "ok").expect_status(200);
    c.get_db(leader, "after-typo", Level::Linearizable)
        .expect_body("ok");
}

#[test]
fn a_join_to_a_dead_address_changes_nothing_on_one_and_three_nodes() {
    let mut c = Cluster::new("dead-join");
    c.phase("a one-node cluster");
    let a = c.start_hraftd("solo", None, &join_timeout_flag());
    c.wait_leader_is(a);
    join_dead_address(&c, a, &["solo".to_owned()]);
    drop(c);

    let mut c = Cluster::three_hraftd("dead-join-3", &join_timeout_flag());
    let leader = c.leader();
    let voters = c.voters(leader).expect("status");
    join_dead_address(&c, leader, &voters);

    let follower = c.followers(leader)[0];
    c.phase(&format!(
        "kill -9 one real follower (node {follower}): two of three voters still take writes"
    ));
    c.kill9(follower);
    let r = c.put_db(leader, "one-down", "still-writable");
    r.expect_status(200);
    for i in c.live() {
        c.wait_db_value(i, "one-down", "still-writable", Level::Stale);
    }
}

#[test]
fn a_joiner_whose_address_reaches_another_member_is_refused() {
    let mut c = Cluster::new("phantom");
    c.phase("node a binds 127.0.0.1:P (API and Raft on one port)");
    let a = c.start(|p| argv(&format!("-haddr 127.0.0.1:{} -id a", p.http)));
    c.wait_leader_is(a);
    let p = c.node(a).ports.http;

    c.phase(&format!(
        "node b binds 127.0.0.2:{p} but advertises localhost:{p} (which reaches a) and joins a"
    ));
    let b = c.start_with(
        StartOpts {
            ip: "127.0.0.2".to_owned(),
            http_port: Some(p),
            ..StartOpts::default()
        },
        |_| {
            argv(&format!(
                "-haddr 127.0.0.2:{p} --advertise-haddr localhost:{p} -id b -join 127.0.0.1:{p}"
            ))
        },
    );
    wait_until(
        Duration::from_secs(20),
        "b's log says its join was refused",
        || c.log_tail(b, 50).contains("join refused"),
    );
    assert_eq!(c.voters(a).expect("status"), ["a"], "b is not a member");
    let b_status = c.status(b);
    assert!(
        b_status["members"].as_array().is_none_or(Vec::is_empty)
            || b_status["members"]
                .as_array()
                .is_some_and(|m| m.iter().all(|m| m["id"] != "a")),
        "b is in no cluster with a: {b_status}"
    );

    c.phase("the same join sent by hand answers 409 naming the address");
    let r = c.post_json(
        a,
        "/join",
        &json!({"id": "b", "addr": format!("localhost:{p}")}),
    );
    r.expect_error(&[409], &["conflict"]);
    assert!(r.body.contains(&format!("localhost:{p}")), "{}", r.body);

    c.phase("b paused: a write on a is acknowledged by the one real voter, a");
    c.pause(b);
    c.put_db(a, "k", "v").expect_status(200);
    assert_eq!(c.voters(a).expect("status"), ["a"]);
    c.resume(b);
}

#[test]
fn peer_requests_meant_for_another_node_or_cluster_are_refused() {
    let c = Cluster::three_hraftd("misdirected", "");
    let leader = c.leader();
    let st = c.status(leader);
    let cluster_id = st["cluster_id"].as_str().expect("cluster_id").to_owned();
    assert_eq!(cluster_id.len(), 32, "a 128-bit hex cluster id: {st}");
    let me = st["node_id"].as_u64().expect("node_id");
    for i in 0..3 {
        assert_eq!(c.status(i)["cluster_id"], cluster_id.as_str(), "one id");
    }
    let raft_url = format!("http://127.0.0.1:{}/raft/vote", c.node(leader).ports.raft);
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let send = |cluster: &str, from: u64, to: u64| {
        let r = http
            .post(&raft_url)
            .header("raftkv-cluster-id", cluster)
            .header("raftkv-from", from.to_string())
            .header("raftkv-to", to.to_string())
            .header("content-type", "application/postcard")
            .body(Vec::new())
            .send()
            .expect("send");
        (r.status().as_u16(), r.text().unwrap_or_default())
    };
    c.phase("a vote request meant for another node id: 421");
    let (status, text) = send(&cluster_id, 1, me + 1);
    assert_eq!(status, 421, "{text}");
    c.phase("a vote request from another cluster: 421");
    let (status, text) = send("0123456789abcdef0123456789abcdef", 1, me);
    assert_eq!(status, 421, "{text}");
    c.phase("a request claiming to come from the receiver itself: 421");
    let (status, text) = send(&cluster_id, me, me);
    assert_eq!(status, 421, "{text}");
    c.phase("with -raddr, the public port no longer serves the internal routes");
    let r = c.request(leader, Method::POST, "/raft/vote", Some((Vec::new(), "x")));
    assert_eq!(r.status, 404, "{}", r.body);

    // The same checks on the peer links the nodes themselves use (one hello per link).
    let raft_addr = format!("127.0.0.1:{}", c.node(leader).ports.raft);
    let refused = |cluster: &str, from: u64, to: u64| {
        let (answer, _) = open_link(&raft_addr, cluster, from, to);
        answer.expect_err("refused").status
    };
    c.phase("a peer link meant for another node id: 421");
    assert_eq!(refused(&cluster_id, 1, me + 1), 421);
    c.phase("a peer link from another cluster: 421");
    assert_eq!(refused("0123456789abcdef0123456789abcdef", 1, me), 421);
    c.phase("a peer link claiming to come from the receiver itself: 421");
    assert_eq!(refused(&cluster_id, me, me), 421);
    c.phase("the public port speaks no peer links with -raddr (HTTP answers the stranger)");
    let mut public = std::net::TcpStream::connect(c.node(leader).http_addr()).expect("connect");
    public.write_all(raftkv::peer::wire::MAGIC).expect("write");
    let mut buf = [0u8; 12];
    let _ = public.read(&mut buf);
    assert!(
        buf.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );

    c.phase("an accepted link: an undecodable vote is refused, not handled; the link stays up");
    let (answer, mut link) = open_link(&raft_addr, &cluster_id, me + 100, me);
    answer.expect("accepted");
    let frame = |id: u64, rpc: u8, body: &[u8]| {
        let mut f = raftkv::peer::wire::head(body.len(), id, rpc).to_vec();
        f.extend_from_slice(body);
        f
    };
    link.write_all(&frame(7, raftkv::peer::wire::Rpc::Vote as u8, b"\xff\xff"))
        .expect("write");
    let (id, status, text) = read_answer(&mut link);
    assert_eq!(
        (id, status),
        (7, raftkv::peer::wire::Status::Refused as u8),
        "{text}"
    );
    assert!(text.contains("decode"), "{text}");
    link.write_all(&frame(8, 200, b"")).expect("write");
    let (id, status, text) = read_answer(&mut link);
    assert_eq!(
        (id, status),
        (8, raftkv::peer::wire::Status::Refused as u8),
        "{text}"
    );
    c.phase("a snapshot chunk of no transfer in progress is refused, not installed");
    snapshot_chunks_are_checked(&mut link, me + 100, frame);
    c.phase("a frame over the limit closes the link");
    link.write_all(&u32::MAX.to_le_bytes()).expect("write");
    let mut rest = Vec::new();
    let closed = link.read_to_end(&mut rest);
    assert!(
        matches!(closed, Ok(0)) || closed.is_err(),
        "closed: {closed:?}"
    );

    c.phase("the cluster is unharmed");
    c.put_db(leader, "still", "fine").expect_status(200);
}

/// On an accepted link from `from`: a chunk that continues no transfer is answered with an
/// error; a snapshot whose sender's vote is older than the receiver's is answered at once with
/// the receiver's (newer) vote, so the stale leader steps down.
fn snapshot_chunks_are_checked(
    link: &mut std::net::TcpStream,
    from: u64,
    frame: impl Fn(u64, u8, &[u8]) -> Vec<u8>,
) {
    use raftkv::peer::snapshot::{ChunkAnswer, ChunkHead};
    use raftkv::peer::wire::{Rpc, Status};
    let mut ask = |id: u64, head: ChunkHead, data: &[u8]| {
        let mut body = postcard::to_stdvec(&head).expect("encode");
        body.extend_from_slice(data);
        link.write_all(&frame(id, Rpc::Snapshot as u8, &body))
            .expect("write");
        let payload = read_payload(link);
        let (got, status, answer) = raftkv::peer::wire::split(&payload).expect("answer");
        assert_eq!((got, status), (id, Status::Ok as u8));
        postcard::from_bytes::<Result<ChunkAnswer, String>>(answer).expect("decode")
    };
    let out_of_turn = ChunkHead {
        session: 1,
        offset: 4096,
        header: None,
        last: false,
    };
    let err = ask(9, out_of_turn, b"bytes").expect_err("no transfer in progress");
    assert!(err.contains("not in progress"), "{err}");
    let stale = raftkv::raft::types::Vote::new_committed(0, from);
    let meta = raftkv::raft::types::SnapshotMeta::default();
    let header = postcard::to_stdvec(&(&stale, &meta)).expect("encode");
    let from_a_stale_leader = ChunkHead {
        session: 2,
        offset: 0,
        header: Some(header),
        last: true,
    };
    match ask(10, from_a_stale_leader, b"") {
        Ok(ChunkAnswer::Done(response)) => assert_eq!(
            response.vote.partial_cmp(&stale),
            Some(std::cmp::Ordering::Greater),
            "the receiver's vote {} answers the stale {stale}",
            response.vote
        ),
        other => panic!("a stale leader's snapshot: {other:?}"),
    }
}

/// Opens a peer link to `addr` saying hello as `from` of `cluster`, meant for `to`: the
/// receiver's answer and the connection.
fn open_link(
    addr: &str,
    cluster: &str,
    from: u64,
    to: u64,
) -> (
    Result<(), raftkv::peer::wire::HelloRefusal>,
    std::net::TcpStream,
) {
    use raftkv::peer::wire;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let hello = wire::Hello {
        cluster_id: cluster.to_string(),
        from,
        to,
    };
    s.write_all(wire::MAGIC).expect("magic");
    let hello = postcard::to_stdvec(&hello).expect("encode");
    s.write_all(&wire::plain_frame(&hello)).expect("hello");
    let answer = read_payload(&mut s);
    (postcard::from_bytes(&answer).expect("decode answer"), s)
}

fn read_payload(s: &mut std::net::TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("frame length");
    let mut payload = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut payload).expect("frame");
    payload
}

/// One answer on a link: its id, status and body as text.
fn read_answer(s: &mut std::net::TcpStream) -> (u64, u8, String) {
    let payload = read_payload(s);
    let (id, status, body) = raftkv::peer::wire::split(&payload).expect("answer");
    (id, status, String::from_utf8_lossy(body).into_owned())
}

#[test]
fn a_node_whose_log_store_fails_exits_non_zero() {
    let mut c = Cluster::new("fail-stop");
    c.phase("three nodes; node2's log store fails after 30 appends (test-only fault hook)");
    let a = c.start_hraftd("node0", None, "");
    c.wait_leader_is(a);
    c.start_hraftd("node1", Some(a), "");
    let join = c.node(a).ports.http;
    let f = c.start_with(
        StartOpts {
            env: vec![(
                "RAFTKV_FAULT_WAL_FAIL_AFTER_APPENDS".to_owned(),
                "30".to_owned(),
            )],
            ..StartOpts::default()
        },
        |p| {
            argv(&format!(
                "-haddr 127.0.0.1:{} -raddr 127.0.0.1:{} -id node2 -join 127.0.0.1:{join}",
                p.http, p.raft
            ))
        },
    );
    c.wait_voters(a, 3);

    c.phase("write until node2's store fails; node2 must exit non-zero, not keep serving");
    let t0 = Instant::now();
    let mut written = 0;
    wait_until_with(Duration::from_secs(60), "node2 exits", || {
        written += 1;
        c.put_db(a, &format!("k{written}"), "v").expect_status(200);
        match c.try_status(f) {
            None => Ok(()),
            Some(s) => Err(format!("node2 still answers: role {}", s["role"])),
        }
    });
    let status = c.wait_exit(f, Duration::from_secs(30));
    assert!(!status.success(), "exit status {status}");
    let log = c.log_tail(f, 40);
    assert!(
        log.contains("the Raft core stopped") && log.contains("injected WAL failure"),
        "the log says why:\n{log}"
    );
    eprintln!(
        "   node2 exited {status} after {written} writes, {:?}",
        t0.elapsed()
    );

    c.phase("the two others keep taking writes");
    c.put_db(a, "after", "ok").expect_status(200);

    c.phase("node2 restarted without the fault catches up");
    c.node_env_clear(f);
    c.restart(f);
    c.wait_db_value(f, "after", "ok", Level::Stale);
    c.wait_db_value(f, &format!("k{written}"), "v", Level::Stale);
}
