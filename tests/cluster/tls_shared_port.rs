//! Stories: TLS on one shared port (raftd's `-p`, here `-haddr` without `-raddr`), where the
//! public and the internal routes share a listener (README "Security").
//!
//! 1. Peer TLS + client TLS with `--client-cert-auth`: a client without a certificate cannot
//!    read, one with a client-CA certificate can (the raftd story), and that certificate does not
//!    open the internal routes.
//! 2. Peer TLS only: https with the peer certificate, client certificates optional at the TLS
//!    layer, the internal routes answer 403 without one.

use std::time::Duration;

use reqwest::Method;

use crate::tls_support::Pki;
use crate::tls_support::TlsCluster;
use crate::tls_support::https_client;
use crate::tls_support::run_script;
use crate::tls_support::send;

const FORM: &str = "application/x-www-form-urlencoded";

#[test]
fn tls_shared_port_with_client_cert_auth() {
    let mut c = TlsCluster::new("tls-raftd", |root| {
        let dir = root.join("pki");
        let pki = Pki::generate(&dir);
        run_script(&dir, crate::tls_support::CLIENT_SCRIPT);
        https_client(
            &pki.ca(),
            Some((&dir.join("alice.pem"), &dir.join("alice-key.pem"))),
        )
    });
    let pki = Pki {
        dir: c.root().join("pki"),
    };
    c.phase(
        "one shared port (-haddr 127.0.0.1:P, advertised as localhost:P) + peer TLS + client TLS \
         with --client-cert-auth (clients CA), three nodes",
    );
    let tls = |n: usize| {
        let mut f = [pki.peer_flags(n), pki.client_flags(n)].concat();
        f.push("--trusted-ca-file".into());
        f.push(pki.file("clients-ca.pem").display().to_string());
        f.push("--client-cert-auth".into());
        f
    };
    let t0 = tls(1);
    let shared = |h: u16| format!("-haddr 127.0.0.1:{h} -advertise-haddr localhost:{h}");
    let n0 = c.start(true, |h, _| [argv(&shared(h)), t0.clone()].concat());
    assert_eq!(c.leader(n0), n0);
    let p0 = c.ports(n0).http;
    let t1 = tls(2);
    let n1 = c.start(true, |h, _| {
        [
            argv(&format!("{} -join localhost:{p0}", shared(h))),
            t1.clone(),
        ]
        .concat()
    });
    let t2 = tls(3);
    let n2 = c.start(true, |h, _| {
        [
            argv(&format!("{} -join localhost:{p0}", shared(h))),
            t2.clone(),
        ]
        .concat()
    });
    let all = [n0, n1, n2];
    for &i in &all {
        c.wait_voters(i, 3);
    }
    let leader = c.leader(n0);
    let follower = all.into_iter().find(|&i| i != leader).expect("a follower");

    c.phase("raftd story with alice's certificate: POST /db/foo, GET /db/foo on every node");
    let alice = c.watcher.clone();
    let a = send(
        &alice,
        Method::POST,
        &c.url(leader, "/db/foo"),
        Some((b"bar", FORM)),
    )
    .expect("POST /db/foo");
    assert_eq!(a.status, 200, "{a:?}");
    for &i in &all {
        let a = send(&alice, Method::GET, &c.url(i, "/db/foo"), None).expect("GET /db/foo");
        assert_eq!((a.status, a.body.as_str()), (200, "bar"), "node {i}");
    }
    let a = send(
        &alice,
        Method::POST,
        &c.url(follower, "/db/foo"),
        Some((b"baz", FORM)),
    )
    .expect("POST /db/foo on a follower");
    assert_eq!(a.status, 200, "forwarded write: {a:?}");
    let a = send(&alice, Method::GET, &c.url(leader, "/db/foo"), None).expect("GET");
    assert_eq!((a.status, a.body.as_str()), (200, "baz"));

    c.phase("a client without a certificate cannot read (refused at the TLS layer)");
    let anonymous = https_client(&pki.ca(), None);
    for &i in &all {
        let a = send(&anonymous, Method::GET, &c.url(i, "/db/foo"), None);
        assert!(
            a.is_err(),
            "node {i} answered a client without a certificate: {a:?}"
        );
    }

    c.phase(
        "alice's certificate (clients CA) does not open the internal routes on the shared port",
    );
    let a = send(
        &alice,
        Method::POST,
        &c.url(leader, "/raft/vote"),
        Some((b"", "application/x-postcard")),
    )
    .expect("TLS accepts alice");
    assert_eq!(a.status, 403, "{a:?}");
    assert!(a.body.contains("peer CA"), "{a:?}");
}

#[test]
fn tls_shared_port_with_peer_tls_only() {
    let mut c = TlsCluster::new("tls-shared-peer", |root| {
        let pki = Pki::generate(&root.join("pki"));
        https_client(&pki.ca(), None)
    });
    let pki = Pki {
        dir: c.root().join("pki"),
    };
    c.phase(
        "one shared port with peer TLS only: the public API is https with the peer certificate",
    );
    let t = pki.peer_flags(1);
    let n0 = c.start(true, |h, _| {
        [argv(&format!("-haddr 127.0.0.1:{h}")), t.clone()].concat()
    });
    assert_eq!(c.leader(n0), n0);
    let anonymous = c.watcher.clone();
    let a = send(
        &anonymous,
        Method::POST,
        &c.url(n0, "/db/k"),
        Some((b"v", FORM)),
    )
    .expect("POST");
    assert_eq!(a.status, 200, "{a:?}");

    c.phase(
        "client certificates are optional at the TLS layer; the internal routes need one (403)",
    );
    let a = send(
        &anonymous,
        Method::POST,
        &c.url(n0, "/raft/append"),
        Some((b"", "application/x-postcard")),
    )
    .expect("TLS accepts a client without a certificate");
    assert_eq!(a.status, 403, "{a:?}");
    assert!(a.body.contains("certificate"), "{a:?}");
    let (cert, key) = pki.node(2);
    let member = https_client(&pki.ca(), Some((&cert, &key)));
    let a = send(
        &member,
        Method::POST,
        &c.url(n0, "/raft/append"),
        Some((b"", "application/x-postcard")),
    )
    .expect("a member's certificate is accepted");
    assert_eq!(a.status, 421, "{a:?}");

    c.phase("plain http to the TLS port gets no answer");
    let plain = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{}/db/k", c.ports(n0).http);
    let a = send(&plain, Method::GET, &url, None);
    assert!(a.as_ref().map_or(true, |a| a.status != 200), "{a:?}");
}

fn argv(line: &str) -> Vec<String> {
    crate::harness::argv(line)
}
