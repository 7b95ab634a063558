//! etcd's gRPC over TLS on the shared port: with client TLS on, etcdctl (ALPN h2) and https
//! clients of the HTTP API use the same port and the same certificate.

use crate::harness::argv;
use crate::tls_support::{Pki, TlsCluster, https_client};

#[test]
fn etcdctl_over_tls_shares_the_https_port() {
    if !crate::etcd_tools_or_skip("etcdctl_over_tls_shares_the_https_port") {
        return;
    }
    let mut c = TlsCluster::new("etcd-tls", |root| {
        let pki = Pki::generate(&root.join("pki"));
        https_client(&pki.ca(), None)
    });
    let pki = Pki {
        dir: c.root().join("pki"),
    };
    c.phase("one node, peer and client TLS on one port");
    let flags = [pki.peer_flags(1), pki.client_flags(1)].concat();
    let n0 = c.start(true, |h, _| {
        [
            argv(&format!("-haddr 127.0.0.1:{h} -id tls0")),
            flags.clone(),
        ]
        .concat()
    });
    let endpoint = format!("https://127.0.0.1:{}", c.ports(n0).http);
    let ca = pki.ca().display().to_string();

    c.phase("etcdctl --cacert over https: member list and endpoint status");
    let cacert = format!("--cacert={ca}");
    let out = crate::etcdctl::run(
        std::slice::from_ref(&endpoint),
        &[cacert.as_str(), "member", "list"],
        None,
    );
    assert_eq!(out.code, 0, "{out:?}");
    let port = c.ports(n0).http;
    assert!(
        out.stdout.contains(&format!(
            ", started, tls0, https://127.0.0.1:{port}, https://127.0.0.1:{port}, false"
        )),
        "{out:?}"
    );
    let out = crate::etcdctl::run(
        std::slice::from_ref(&endpoint),
        &[cacert.as_str(), "endpoint", "status"],
        None,
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(", 3.4.23, "), "{out:?}");

    c.phase("the HTTP API answers https on the same port");
    let status = c.try_status(n0).expect("GET /status over https");
    assert_eq!(status["id"], "tls0");

    c.phase("plaintext gRPC to the TLS port gets no answer");
    let out = crate::etcdctl::run(
        &[format!("127.0.0.1:{port}")],
        &[
            "--dial-timeout=1s",
            "--command-timeout=2s",
            "member",
            "list",
        ],
        None,
    );
    assert_ne!(out.code, 0, "{out:?}");
}
