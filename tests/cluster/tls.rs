//! Stories: peer mutual TLS and client TLS (README "Security"). Certificates are made with the
//! README's own `openssl` commands (`tls_support::PKI_SCRIPT`); a second, unrelated CA made with
//! the same commands plays the stranger.
//!
//! 1. hraftd-style (`-raddr` apart), peer mTLS + client TLS: both seed stories over https;
//!    the peer port refuses a caller without a certificate or with one from the other CA; a
//!    node holding the other CA's certificates cannot join.
//! 2. Bad TLS files stop the node at startup, naming the file.
//!
//! One shared port (raftd's `-p`) is in `tls_shared_port.rs`.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::tls_support::Pki;
use crate::tls_support::TlsCluster;
use crate::tls_support::WAIT;
use crate::tls_support::https_client;
use crate::tls_support::run_expecting_exit;
use crate::tls_support::send;

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

#[test]
fn tls_peer_mtls_and_client_tls_hraftd_style() {
    let mut c = TlsCluster::new("tls-hraftd", |root| {
        let pki = Pki::generate(&root.join("pki"));
        https_client(&pki.ca(), None)
    });
    let pki = Pki {
        dir: c.root().join("pki"),
    };
    c.phase(
        "a CA and three node certificates made with the README's openssl commands, and another CA",
    );
    let other = Pki::generate(&c.root().join("other"));

    c.phase("node0: -haddr 127.0.0.1:P0 -raddr 127.0.0.1:R0 -id node0 + peer TLS + client TLS");
    // Snapshots every 5 entries: the joiners catch up by a snapshot streamed over peer TLS.
    let tls = |n: usize| {
        [
            pki.peer_flags(n),
            pki.client_flags(n),
            argv("--snapshot-every 5"),
        ]
        .concat()
    };
    let t0 = tls(1);
    let n0 = c.start(true, |h, r| {
        let mut a = argv(&format!(
            "-haddr 127.0.0.1:{h} -raddr 127.0.0.1:{r} -id node0"
        ));
        a.extend(t0.clone());
        a
    });
    assert_eq!(c.leader(n0), n0);
    let (p0, r0) = (c.ports(n0).http, c.ports(n0).raft);
    let client = c.watcher.clone();
    for i in 0..12 {
        let url = c.url(n0, &format!("/db/early{i}"));
        let a = send(&client, Method::POST, &url, Some((b"x", FORM))).expect("POST");
        assert_eq!(a.status, 200, "{a:?}");
    }
    // Snapshots are built in the background once due (`raft::snapshot_policy`).
    crate::harness::wait_until_with(WAIT, "node0 built a snapshot", || {
        let snap = c.try_status(n0).expect("status")["snapshot_index"].as_u64();
        match snap {
            Some(s) if s >= 5 => Ok(()),
            other => Err(format!("snapshot_index {other:?}")),
        }
    });

    c.phase("node1 joins via node0's public https port, node2 via its peer port; both catch up by snapshot");
    let t1 = tls(2);
    let n1 = c.start(true, |h, r| {
        let mut a = argv(&format!(
            "-haddr 127.0.0.1:{h} -raddr 127.0.0.1:{r} -id node1 -join 127.0.0.1:{p0}"
        ));
        a.extend(t1.clone());
        a
    });
    let t2 = tls(3);
    let n2 = c.start(true, |h, r| {
        let mut a = argv(&format!(
            "-haddr 127.0.0.1:{h} -raddr 127.0.0.1:{r} -id node2 -join 127.0.0.1:{r0}"
        ));
        a.extend(t2.clone());
        a
    });
    let all = [n0, n1, n2];
    for &i in &all {
        assert_eq!(c.wait_voters(i, 3), ["node0", "node1", "node2"]);
    }
    let leader = c.leader(n0);
    let follower = all.into_iter().find(|&i| i != leader).expect("a follower");
    for &i in &all {
        let a = send(&client, Method::GET, &c.url(i, "/db/early0"), None).expect("GET");
        assert_eq!(
            (a.status, a.body.as_str()),
            (200, "x"),
            "node {i} after catch-up"
        );
    }

    c.phase("hraftd story over https: POST /key, GET /key/k on every node, DELETE /key/k");
    let body = json!({"user1": "batman"}).to_string();
    let a = send(
        &client,
        Method::POST,
        &c.url(leader, "/key"),
        Some((body.as_bytes(), JSON)),
    )
    .expect("POST /key over https");
    assert_eq!(a.status, 200, "{a:?}");
    for &i in &all {
        let a = send(&client, Method::GET, &c.url(i, "/key/user1"), None).expect("GET /key");
        assert_eq!(a.status, 200, "node {i}: {a:?}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&a.body).expect("json"),
            json!({"user1": "batman"})
        );
    }
    let a = send(&client, Method::DELETE, &c.url(leader, "/key/user1"), None).expect("DELETE");
    assert_eq!(a.status, 200, "{a:?}");
    for &i in &all {
        let a = send(&client, Method::GET, &c.url(i, "/key/user1"), None).expect("GET /key");
        assert_eq!(a.status, 404, "node {i}: {a:?}");
    }

    c.phase(
        "raftd story over https: POST /db/foo on a follower (forwarded), GET /db/foo everywhere",
    );
    let a = send(
        &client,
        Method::POST,
        &c.url(follower, "/db/foo"),
        Some((b"bar", FORM)),
    )
    .expect("POST /db/foo");
    assert_eq!(a.status, 200, "{a:?}");
    for &i in &all {
        let a = send(&client, Method::GET, &c.url(i, "/db/foo"), None).expect("GET /db/foo");
        assert_eq!((a.status, a.body.as_str()), (200, "bar"), "node {i}");
    }

    c.phase("the public port offers h2 and http/1.1 (ALPN), checked with openssl s_client");
    let alpn = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{p0}"),
            "-alpn",
            "h2,http/1.1",
        ])
        .arg("-CAfile")
        .arg(pki.ca())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    let alpn = String::from_utf8_lossy(&alpn.stdout);
    assert!(alpn.contains("ALPN protocol: h2"), "s_client: {alpn}");

    c.phase("the peer port refuses an internal route without a client certificate");
    let vote = c.raft_url(n0, "/raft/vote");
    let refused = |a: &Result<crate::tls_support::Answer, String>| match a {
        Err(_) => true,
        Ok(a) => a.status == 403,
    };
    let a = send(
        &client,
        Method::POST,
        &vote,
        Some((b"", "application/x-postcard")),
    );
    assert!(refused(&a), "no cert: {a:?}");
    let join = c.raft_url(n0, "/join");
    let evil = json!({"id": "evil", "addr": "127.0.0.1:1"}).to_string();
    let a = send(&client, Method::POST, &join, Some((evil.as_bytes(), JSON)));
    assert!(refused(&a), "no cert /join: {a:?}");

    c.phase("... and with a certificate from the other CA");
    let (ocert, okey) = other.node(1);
    let stranger = https_client(&pki.ca(), Some((&ocert, &okey)));
    let a = send(
        &stranger,
        Method::POST,
        &vote,
        Some((b"", "application/x-postcard")),
    );
    assert!(refused(&a), "other CA: {a:?}");

    c.phase("a peer-CA certificate gets past TLS and the guard (refused only for lacking identity headers)");
    let (cert, key) = pki.node(1);
    let member = https_client(&pki.ca(), Some((&cert, &key)));
    let a = send(
        &member,
        Method::POST,
        &vote,
        Some((b"", "application/x-postcard")),
    )
    .expect("a member's certificate is accepted at the TLS layer");
    assert_eq!(a.status, 421, "{a:?}");

    c.phase("a node whose certificate does not name its address (127.0.0.2) is not added; the answer says why");
    let t3 = tls(3);
    let misnamed = c.start(false, |h, r| {
        let mut a = argv(&format!(
            "-haddr 127.0.0.2:{h} -raddr 127.0.0.2:{r} -id misnamed -join 127.0.0.1:{r0}"
        ));
        a.extend(t3.clone());
        a
    });
    crate::harness::wait_until_with(WAIT, "the misnamed node's log says why", || {
        let log = c.log_tail(misnamed, 20);
        if log.contains("certificate not valid for name") {
            Ok(())
        } else {
            Err(log)
        }
    });
    assert_eq!(c.wait_voters(leader, 3), ["node0", "node1", "node2"]);

    c.phase("a node holding the other CA's certificates cannot join; the voters stay three");
    let evil_tls = [other.peer_flags(1), other.client_flags(1)].concat();
    let rogue = c.start(false, |h, r| {
        let mut a = argv(&format!(
            "-haddr 127.0.0.1:{h} -raddr 127.0.0.1:{r} -id rogue -join 127.0.0.1:{r0}"
        ));
        a.extend(evil_tls.clone());
        a
    });
    crate::harness::wait_until_with(WAIT, "the rogue's log says why it cannot join", || {
        let log = c.log_tail(rogue, 20);
        if log.contains("cannot reach member to join") && log.contains("invalid peer certificate") {
            Ok(())
        } else {
            Err(log)
        }
    });
    // Give it a few more attempts (it retries every second), then look at the membership.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        assert_eq!(c.wait_voters(leader, 3), ["node0", "node1", "node2"]);
        std::thread::sleep(Duration::from_millis(250)); // polling period of a negative check
    }
    assert!(
        !c.log_tail(rogue, 200).contains("joined the cluster"),
        "the rogue joined: {}",
        c.log_tail(rogue, 20)
    );
}

#[test]
fn tls_bad_files_stop_the_node_naming_the_file() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let pki = Pki::generate(&tmp.path().join("pki"));
    let garbage = tmp.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let data = tmp.path().join("data").display().to_string();
    let s = |p: &std::path::Path| p.display().to_string();
    let (cert, key) = pki.node(1);
    let (_, other_key) = pki.node(2);
    let missing = tmp.path().join("missing.pem");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec![
                "--peer-cert-file".into(),
                s(&missing),
                "--peer-key-file".into(),
                s(&key),
                "--peer-trusted-ca-file".into(),
                s(&pki.ca()),
            ],
            s(&missing),
        ),
        (
            vec![
                "--peer-cert-file".into(),
                s(&cert),
                "--peer-key-file".into(),
                s(&key),
                "--peer-trusted-ca-file".into(),
                s(&garbage),
            ],
            s(&garbage),
        ),
        (
            vec![
                "-raddr".into(),
                "127.0.0.1:1".into(),
                "--cert-file".into(),
                s(&cert),
                "--key-file".into(),
                s(&other_key),
            ],
            s(&other_key),
        ),
        (
            vec![
                "--peer-cert-file".into(),
                s(&cert),
                "--peer-key-file".into(),
                s(&key),
            ],
            "--peer-trusted-ca-file".into(),
        ),
    ];
    for (flags, named) in cases {
        let args = [
            argv("-haddr 127.0.0.1:1"),
            flags.clone(),
            vec![data.clone()],
        ]
        .concat();
        let (code, stderr) = run_expecting_exit(&args, Duration::from_secs(20));
        assert!(code.is_some_and(|c| c != 0), "{flags:?}: exit {code:?}");
        assert!(
            stderr.contains(&named),
            "{flags:?}: stderr should name {named}: {stderr}"
        );
    }
}

#[test]
fn readme_shows_the_tls_commands() {
    let readme = include_str!("../../README.md");
    for script in [
        crate::tls_support::PKI_SCRIPT,
        crate::tls_support::CLIENT_SCRIPT,
    ] {
        assert!(
            readme.contains(script),
            "README.md must show these commands verbatim:\n{script}"
        );
    }
}

fn argv(line: &str) -> Vec<String> {
    crate::harness::argv(line)
}
