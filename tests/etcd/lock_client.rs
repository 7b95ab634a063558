//! The `etcd-client` crate's server-side Lock and Election helpers (`lock`/`unlock`,
//! `campaign`/`proclaim`/`leader`/`observe`/`resign`, which call etcd's `v3lockpb.Lock` and
//! `v3electionpb.Election` services) against a 3-node raftkv, through followers and the leader
//! as a job scheduler or a primary election would use them: one holder at a time, a waiter that
//! gets the lock when the holder unlocks or its lease is revoked, a dropped waiter's key
//! removed, the leader's value followed by an observer across a resign; and the error answers,
//! compared with a real etcd's when it is installed.

use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Error, LeaderKey, LockOptions, ProclaimOptions, ResignOptions, ResponseHeader,
};
use tokio::task::JoinHandle;

use crate::harness::Cluster;

/// How long a test waits for something that must happen.
const WITHIN: Duration = Duration::from_secs(10);
/// How long a test waits to see that something does not happen.
const NOT_WITHIN: Duration = Duration::from_millis(700);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn connect(addr: String) -> Client {
    Client::connect([addr], None).await.expect("connect")
}

fn revision(header: Option<&ResponseHeader>) -> i64 {
    header.expect("header").revision()
}

/// `task`'s result, which must come within [`WITHIN`].
async fn finishes<T>(task: &mut JoinHandle<T>, what: &str) -> T {
    match tokio::time::timeout(WITHIN, task).await {
        Ok(done) => done.expect("task"),
        Err(_) => panic!("{what}: not done within {WITHIN:?}"),
    }
}

/// Asserts `task` is still waiting after [`NOT_WITHIN`].
async fn still_waits<T>(task: &mut JoinHandle<T>, what: &str) {
    let early = tokio::time::timeout(NOT_WITHIN, task).await;
    assert!(early.is_err(), "{what}: done before it should have been");
}

/// Spawns `client.lock(name)` with `lease`; answers the key.
fn spawn_lock(client: &Client, name: &str, lease: i64) -> JoinHandle<Result<Vec<u8>, Error>> {
    let mut client = client.clone();
    let name = name.to_string();
    tokio::spawn(async move {
        let options = LockOptions::new().with_lease(lease);
        let r = client.lock(name, Some(options)).await?;
        Ok(r.key().to_vec())
    })
}

/// The keys under `prefix` now.
async fn keys(client: &mut Client, prefix: &str) -> Vec<String> {
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_keys_only();
    let r = client.get(prefix, Some(options)).await.expect("get");
    r.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

/// Polls `check` until it holds, within [`WITHIN`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // polling period
    }
}

#[test]
fn etcd_client_lock_one_holder_until_unlock_or_revoke() {
    let c = Cluster::three_raftd("etcd-client-lock", "");
    let leader = c.leader();
    let followers = c.followers(leader);
    let rt = runtime();
    rt.block_on(async {
        let mut a = connect(c.node(followers[0]).http_addr()).await;
        let b = connect(c.node(followers[1]).http_addr()).await;
        let mut on_leader = connect(c.node(leader).http_addr()).await;
        let granter = a.clone();
        let lease = || {
            let mut client = granter.clone();
            async move { client.lease_grant(30, None).await.expect("grant").id() }
        };
        let (la, lb, lc, ld) = (lease().await, lease().await, lease().await, lease().await);

        c.phase("A locks through a follower: key jobs/<lease hex>; again with its lease: the same");
        let held = a
            .lock("jobs", Some(LockOptions::new().with_lease(la)))
            .await
            .expect("lock A");
        let key_a = held.key().to_vec();
        assert_eq!(key_a, format!("jobs/{la:x}").into_bytes());
        let again = a
            .lock("jobs", Some(LockOptions::new().with_lease(la)))
            .await
            .expect("lock A again");
        assert_eq!(again.key(), &key_a[..], "one lease, one place in the queue");

        c.phase("B (another follower) waits while A holds; gets it once A unlocks");
        let mut wait_b = spawn_lock(&b, "jobs", lb);
        still_waits(&mut wait_b, "B's lock while A holds").await;
        let unlocked = a.unlock(key_a.clone()).await.expect("unlock A");
        let key_b = finishes(&mut wait_b, "B's lock after A's unlock")
            .await
            .expect("lock B");
        assert_eq!(key_b, format!("jobs/{lb:x}").into_bytes());
        assert!(revision(unlocked.header()) > 0);

        c.phase("C waits behind B; revoking B's lease releases the lock to C");
        let mut wait_c = spawn_lock(&b, "jobs", lc);
        still_waits(&mut wait_c, "C's lock while B holds").await;
        on_leader.lease_revoke(lb).await.expect("revoke B's lease");
        let key_c = finishes(&mut wait_c, "C's lock after B's lease was revoked")
            .await
            .expect("lock C");
        assert_eq!(key_c, format!("jobs/{lc:x}").into_bytes());

        c.phase("D waits behind C, then gives up: its queued key is deleted");
        let mut wait_d = spawn_lock(&b, "jobs", ld);
        let key_d = format!("jobs/{ld:x}");
        let mut reader = on_leader.clone();
        eventually("D's key queued", || {
            let mut r = reader.clone();
            let key_d = key_d.clone();
            async move { keys(&mut r, "jobs/").await.contains(&key_d) }
        })
        .await;
        still_waits(&mut wait_d, "D's lock while C holds").await;
        wait_d.abort();
        eventually("the abandoned key deleted", || {
            let mut r = reader.clone();
            let key_d = key_d.clone();
            async move { !keys(&mut r, "jobs/").await.contains(&key_d) }
        })
        .await;
        assert_eq!(
            keys(&mut reader, "jobs/").await,
            vec![String::from_utf8_lossy(&key_c).into_owned()]
        );

        c.phase("a waiter whose own lease is revoked gets etcd's lease-not-found");
        let le = lease().await;
        let mut wait_e = spawn_lock(&b, "jobs", le);
        still_waits(&mut wait_e, "E's lock while C holds").await;
        on_leader.lease_revoke(le).await.expect("revoke E's lease");
        let err = finishes(&mut wait_e, "E's lock after its lease went")
            .await
            .expect_err("E's lease is gone");
        assert_status(
            &err,
            tonic::Code::Unknown,
            "etcdserver: requested lease not found",
        );
        reader.unlock(key_c).await.expect("unlock C");
        assert!(keys(&mut reader, "jobs/").await.is_empty());
    });
}

#[test]
fn etcd_client_election_campaign_proclaim_observe_resign() {
    let c = Cluster::three_raftd("etcd-client-election", "");
    let leader = c.leader();
    let followers = c.followers(leader);
    let rt = runtime();
    rt.block_on(async {
        let mut a = connect(c.node(followers[0]).http_addr()).await;
        let b = connect(c.node(leader).http_addr()).await;
        let mut watcher = connect(c.node(followers[1]).http_addr()).await;
        let l1 = a.lease_grant(30, None).await.expect("grant").id();
        let l2 = a.lease_grant(30, None).await.expect("grant").id();

        c.phase("an observer on a follower, before anyone campaigns");
        let mut observed = watcher.observe("primary").await.expect("observe");
        let mut next_value = async || {
            let r = tokio::time::timeout(WITHIN, observed.message())
                .await
                .expect("an observed leader in time")
                .expect("observe stream")
                .expect("observe ended");
            let kv = r.kv().expect("kv");
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        };

        c.phase("campaign 1 wins at once; Leader and the observer name it");
        let won = a
            .campaign("primary", "node-1", l1)
            .await
            .expect("campaign 1");
        let key1: LeaderKey = won.leader().expect("leader key").clone();
        assert_eq!(key1.name(), b"primary");
        assert_eq!(key1.key(), format!("primary/{l1:x}").as_bytes());
        assert_eq!(key1.lease(), l1);
        assert_eq!(
            key1.rev(),
            revision(won.header()),
            "created by the campaign's txn"
        );
        let k1 = format!("primary/{l1:x}");
        assert_eq!(next_value().await, (k1.clone(), "node-1".to_string()));
        let now = watcher.leader("primary").await.expect("leader");
        let kv = now.kv().expect("kv");
        assert_eq!((kv.key(), kv.value()), (k1.as_bytes(), &b"node-1"[..]));
        assert_eq!(kv.create_revision(), key1.rev());

        c.phase("proclaim a new value: the observer sees it");
        let with_key1 = || Some(ProclaimOptions::new().with_leader(key1.clone()));
        a.proclaim("node-1b", with_key1()).await.expect("proclaim");
        assert_eq!(next_value().await, (k1.clone(), "node-1b".to_string()));

        c.phase("campaign 2 waits; after the resign it leads and the observer follows");
        let mut second = {
            let mut b = b.clone();
            tokio::spawn(async move { b.campaign("primary", "node-2", l2).await })
        };
        still_waits(&mut second, "campaign 2 while 1 leads").await;
        let resign = ResignOptions::new().with_leader(key1.clone());
        a.resign(Some(resign)).await.expect("resign");
        let won2 = finishes(&mut second, "campaign 2 after the resign")
            .await
            .expect("campaign 2");
        let key2 = won2.leader().expect("leader key");
        assert_eq!(key2.key(), format!("primary/{l2:x}").as_bytes());
        assert!(key2.rev() > key1.rev());
        let k2 = format!("primary/{l2:x}");
        assert_eq!(next_value().await, (k2, "node-2".to_string()));

        c.phase("the old leader key can no longer proclaim; resigning it again is quiet");
        let err = a
            .proclaim("stale", with_key1())
            .await
            .expect_err("not leader");
        assert_status(&err, tonic::Code::Unknown, "election: not leader");
        let resign = ResignOptions::new().with_leader(key1.clone());
        a.resign(Some(resign))
            .await
            .expect("a stale resign is no error");
    });
}

/// One error case: what it asks, and its (code, message) on a cluster at `addr`.
async fn error_cases(addr: String) -> Vec<(&'static str, tonic::Code, String)> {
    let mut client = connect(addr).await;
    let status = |what: &'static str, r: Result<(), Error>| match r {
        Err(Error::GRpcStatus(s)) => (what, s.code(), s.message().to_string()),
        other => panic!("{what}: expected a gRPC status, got {other:?}"),
    };
    let missing = 0x7777_0000_0001_i64;
    let stale = LeaderKey::new()
        .with_name("nobody")
        .with_key("nobody/1")
        .with_rev(2);
    let lock = client
        .lock("x", Some(LockOptions::new().with_lease(missing)))
        .await;
    let campaign = client.campaign("e", "v", missing).await;
    let proclaim = client
        .proclaim("v", Some(ProclaimOptions::new().with_leader(stale)))
        .await;
    let leader = client.leader("nobody").await;
    let no_key = client.proclaim("v", None).await;
    let resign_no_key = client.resign(None).await;
    vec![
        status("lock, unknown lease", lock.map(|_| ())),
        status("campaign, unknown lease", campaign.map(|_| ())),
        status("proclaim, not leader", proclaim.map(|_| ())),
        status("leader of an empty election", leader.map(|_| ())),
        status("proclaim without a leader key", no_key.map(|_| ())),
        status("resign without a leader key", resign_no_key.map(|_| ())),
    ]
}

fn assert_status(err: &Error, code: tonic::Code, message: &str) {
    match err {
        Error::GRpcStatus(s) => assert_eq!((s.code(), s.message()), (code, message), "{s:?}"),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

#[test]
fn lock_and_election_errors_are_etcds() {
    let c = Cluster::three_raftd("etcd-client-lock-errors", "");
    let follower = c.followers(c.leader())[0];
    let rt = runtime();
    let ours = rt.block_on(error_cases(c.node(follower).http_addr()));
    let lease_gone = "etcdserver: requested lease not found".to_string();
    let missing = "\"leader\" field must be provided".to_string();
    let want = vec![
        (
            "lock, unknown lease",
            tonic::Code::Unknown,
            lease_gone.clone(),
        ),
        ("campaign, unknown lease", tonic::Code::Unknown, lease_gone),
        (
            "proclaim, not leader",
            tonic::Code::Unknown,
            "election: not leader".into(),
        ),
        (
            "leader of an empty election",
            tonic::Code::Unknown,
            "election: no leader".into(),
        ),
        (
            "proclaim without a leader key",
            tonic::Code::Unknown,
            missing.clone(),
        ),
        ("resign without a leader key", tonic::Code::Unknown, missing),
    ];
    assert_eq!(ours, want);
    if !crate::etcd_tools_or_skip("lock_and_election_errors_are_etcds (the etcd half)") {
        return;
    }
    c.phase("the same calls on a real etcd answer the same codes and texts");
    let etcd = crate::reference::EtcdCluster::start(1);
    let theirs = rt.block_on(error_cases(etcd.endpoints()[0].clone()));
    assert_eq!(theirs, ours, "etcd's answers (left) differ from raftkv's");
}
