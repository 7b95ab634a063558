//! etcd v3 API tests: real `raftkv` processes on loopback (the cluster harness, included by
//! path) driven by etcd's own tools and clients, and a differential run against a real etcd.
//!
//! - `etcdctl`: runs Debian's `etcdctl` 3.4 and normalises what differs between two clusters
//!   by construction (ids, names, addresses, terms, indexes, sizes);
//! - `reference`: a real 3-member etcd 3.4 on loopback (Debian's `etcd`);
//! - `sessions`: the scripted etcdctl sessions, as data (the KV session joins them after the
//!   multi-version store lands);
//! - `differential`: the same session on etcd and on raftkv, outputs compared;
//! - `etcdctl_raftkv`: etcdctl against raftkv alone — what works today, what answers
//!   `Unimplemented`;
//! - `client`: the `etcd-client` crate against raftkv, through a follower and a leader kill;
//! - `kv_client`: its KV and Txn calls (revisions, CAS, compaction) through a leader kill;
//! - `lease_client`, `watch_client`: its Lease and Watch calls (keep-alive stream, watches
//!   across a leader kill); `lease_etcdctl`, `watch_session`: etcdctl's lease, lock, elect and
//!   watch commands (watch differential against etcd); `lease_session`: the etcdctl lease
//!   session the lease differential runs on etcd and on raftkv;
//! - `lock_session`: etcdctl's `lock` and `elect` (contention, hand-over, an observer), the
//!   transcripts of etcd and raftkv compared;
//! - `lock_client`: its server-side Lock and Election calls (etcd's `v3lock` / `v3election`
//!   services), their error answers compared with etcd's;
//! - `snapshot`: `etcdctl snapshot save` writes a backup that `raftkv restore` accepts;
//! - `tls`: etcdctl over TLS on the shared https port (certificates from the cluster tests'
//!   `tls_support`, made with the README's `openssl` commands).
//!
//! Without `etcd`/`etcdctl` installed the tests that need them skip with a loud message, except
//! when `CI` is set: then they fail (`.ci/run` installs Debian's `etcd-server etcd-client`).

#[path = "../cluster/harness/mod.rs"]
mod harness;

mod client;
mod differential;
mod etcdctl;
mod etcdctl_raftkv;
mod kv_client;
mod lease_client;
mod lease_etcdctl;
mod lease_session;
mod lock_client;
mod lock_session;
mod reference;
mod sessions;
mod snapshot;
mod tls;
#[path = "../cluster/tls_support.rs"]
mod tls_support;
mod watch_client;
mod watch_session;

/// Whether the etcd tools are there; without them a test returns early after saying so loudly,
/// and fails instead when `CI` is set (CI must never skip these tests).
pub fn etcd_tools_or_skip(test: &str) -> bool {
    if reference::installed() {
        return true;
    }
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    assert!(
        !ci,
        "{test}: etcd/etcdctl are not installed, and CI never skips this test \
         (apt-get install etcd-server etcd-client)"
    );
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! SKIPPED {test}: etcd/etcdctl 3.4 are not installed.\n\
         !!! Install them with: apt-get install etcd-server etcd-client\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
    false
}
