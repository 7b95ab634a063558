//! etcdctl's lease commands against a 3-node raftkv, as a user types them: grant, put with the
//! lease, time-to-live with keys, keep-alive once, list, revoke (its keys deleted), the quiet
//! answers for an unknown lease; a key that disappears after its TTL; a lease kept alive by
//! `etcdctl lease keep-alive` across a leader kill that does not expire; and `etcdctl lock`,
//! which is built from leases, transactions and watches on the client side.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::etcdctl;
use crate::harness::Cluster;

fn endpoints(c: &Cluster) -> Vec<String> {
    (0..c.len()).map(|i| c.node(i).http_addr()).collect()
}

fn ok(eps: &[String], args: &[&str]) -> String {
    let out = etcdctl::run(eps, args, None);
    assert_eq!(out.code, 0, "etcdctl {args:?}: {out:?}");
    out.stdout.trim().to_string()
}

/// `lease grant` → the lease id in hex, as etcdctl prints it.
fn grant(eps: &[String], ttl: &str) -> String {
    let line = ok(eps, &["lease", "grant", ttl]);
    let id = line
        .strip_prefix("lease ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("lease grant printed {line:?}"))
        .to_string();
    assert_eq!(line, format!("lease {id} granted with TTL({ttl}s)"));
    id
}

fn value_of(eps: &[String], key: &str) -> String {
    ok(eps, &["get", key, "--print-value-only"])
}

#[test]
fn etcdctl_lease_commands_expiry_and_keep_alive_across_a_leader_kill() {
    if !crate::etcd_tools_or_skip("etcdctl_lease_commands") {
        return;
    }
    let mut c = Cluster::three_raftd("etcdctl-lease", "");
    let all = endpoints(&c);
    let leader = c.leader();
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let on_follower = vec![c.node(follower).http_addr()];

    c.phase("grant, put with the lease, time-to-live with keys, keep-alive, list (via a follower)");
    let id = grant(&on_follower, "60");
    assert_eq!(
        ok(
            &on_follower,
            &["put", "svc/a", "10.0.0.1", &format!("--lease={id}")]
        ),
        "OK"
    );
    let ttl = ok(&on_follower, &["lease", "timetolive", &id, "--keys"]);
    let prefix = format!("lease {id} granted with TTL(60s), remaining(");
    assert!(ttl.starts_with(&prefix), "{ttl}");
    assert!(ttl.ends_with("s), attached keys([svc/a])"), "{ttl}");
    assert_eq!(
        ok(&on_follower, &["lease", "keep-alive", "--once", &id]),
        format!("lease {id} keepalived with TTL(60)")
    );
    assert_eq!(
        ok(&all, &["lease", "list"]),
        format!("found 1 leases\n{id}")
    );

    c.phase("revoke: the lease's keys are deleted; the lease is gone");
    assert_eq!(
        ok(&on_follower, &["lease", "revoke", &id]),
        format!("lease {id} revoked")
    );
    assert_eq!(value_of(&all, "svc/a"), "");
    assert_eq!(
        ok(&all, &["lease", "timetolive", &id]),
        format!("lease {id} already expired")
    );
    // The server answers TTL 0 (etcd's quiet answer); clientv3's KeepAliveOnce turns that
    // into its "lease not found" error.
    let out = etcdctl::run(&all, &["lease", "keep-alive", "--once", &id], None);
    assert_ne!(out.code, 0, "{out:?}");
    assert_eq!(out.error, "Error: etcdserver: requested lease not found");
    let out = etcdctl::run(&all, &["lease", "revoke", &id], None);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.error,
        "Error: failed to revoke lease (etcdserver: requested lease not found)"
    );
    let out = etcdctl::run(&all, &["put", "k", "v", &format!("--lease={id}")], None);
    assert_eq!(out.error, "Error: etcdserver: requested lease not found");

    c.phase("a key under a 2 s lease with no keep-alive is gone after its TTL");
    let short = grant(&all, "2");
    let granted_at = Instant::now();
    ok(&all, &["put", "tmp", "x", &format!("--lease={short}")]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while value_of(&all, "tmp") == "x" {
        assert!(
            Instant::now() < deadline,
            "the key outlived its lease by far"
        );
        std::thread::sleep(Duration::from_millis(200)); // poll period
    }
    let lived = granted_at.elapsed();
    assert!(
        lived >= Duration::from_millis(1900),
        "expired early: {lived:?}"
    );

    c.phase("etcdctl lease keep-alive holds a 3 s lease through a leader kill");
    let kept = grant(&all, "3");
    ok(&all, &["put", "svc/b", "alive", &format!("--lease={kept}")]);
    let mut keeper = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", all.join(",")))
        .args(["lease", "keep-alive", &kept])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn etcdctl lease keep-alive");
    c.kill9(leader);
    let survivors: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| c.node(i).http_addr())
        .collect();
    // Hold it for three TTLs: every poll must still see the key.
    let until = Instant::now() + Duration::from_secs(9);
    while Instant::now() < until {
        let out = etcdctl::run(&survivors, &["get", "svc/b", "--print-value-only"], None);
        if out.code == 0 {
            assert_eq!(out.stdout.trim(), "alive", "the kept-alive lease expired");
        }
        std::thread::sleep(Duration::from_millis(300)); // poll period
    }
    assert_eq!(value_of(&survivors, "svc/b"), "alive");
    let _ = keeper.kill();
    let _ = keeper.wait();

    c.phase("without its keep-alive it expires (the new leader's timer)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while value_of(&survivors, "svc/b") == "alive" {
        assert!(
            Instant::now() < deadline,
            "the lease never expired after its keep-alive stopped"
        );
        std::thread::sleep(Duration::from_millis(200)); // poll period
    }

    c.phase("etcdctl lock: one holder at a time, released when its command ends");
    let out = etcdctl::run(
        &survivors,
        &["lock", "jobs", "echo", "holding the lock"],
        None,
    );
    assert_eq!(
        (out.code, out.stdout.trim()),
        (0, "holding the lock"),
        "{out:?}"
    );
    assert_eq!(
        ok(&survivors, &["get", "jobs", "--prefix", "--keys-only"]),
        "",
        "released"
    );
}
