//! The `etcd-client` crate's Lease calls against a 3-node raftkv, through a follower, as a
//! service registry would make them: grant, a put under the lease, a keep-alive stream renewing
//! it several times, time-to-live with keys, the list, revoke (its key deleted), and the
//! answers for a lease that is gone (keep-alive TTL 0, time-to-live TTL -1).

use std::time::Duration;

use etcd_client::{Client, LeaseTimeToLiveOptions, PutOptions};

use crate::harness::Cluster;

#[test]
fn etcd_client_lease_keep_alive_stream_and_revoke_through_a_follower() {
    let c = Cluster::three_raftd("etcd-client-lease", "");
    let leader = c.leader();
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    c.phase("grant and put under the lease via a follower; keep-alives renew it");
    rt.block_on(async {
        let mut client = Client::connect([c.node(follower).http_addr()], None)
            .await
            .expect("connect");
        let lease = client.lease_grant(30, None).await.expect("grant");
        let id = lease.id();
        assert!(id > 0);
        assert_eq!(lease.ttl(), 30);
        client
            .put("svc/x", "10.0.0.9", Some(PutOptions::new().with_lease(id)))
            .await
            .expect("put with lease");
        let (mut keeper, mut answers) = client.lease_keep_alive(id).await.expect("keep-alive");
        for _ in 0..3 {
            keeper.keep_alive().await.expect("send keep-alive");
            let answer = tokio::time::timeout(Duration::from_secs(10), answers.message())
                .await
                .expect("a keep-alive answer in time")
                .expect("stream")
                .expect("an answer");
            assert_eq!((answer.id(), answer.ttl()), (id, 30));
        }
        let ttl = client
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("time to live");
        assert_eq!(ttl.granted_ttl(), 30);
        assert!((28..=30).contains(&ttl.ttl()), "{}", ttl.ttl());
        assert_eq!(ttl.keys(), &[b"svc/x".to_vec()]);
        let ids: Vec<i64> = client
            .leases()
            .await
            .expect("leases")
            .leases()
            .iter()
            .map(|l| l.id())
            .collect();
        assert_eq!(ids, vec![id]);

        c.phase("revoke: the key is gone; keep-alive answers TTL 0, time-to-live -1");
        client.lease_revoke(id).await.expect("revoke");
        let r = client.get("svc/x", None).await.expect("get");
        assert!(r.kvs().is_empty(), "the lease's key outlived it");
        keeper.keep_alive().await.expect("send keep-alive");
        let answer = tokio::time::timeout(Duration::from_secs(10), answers.message())
            .await
            .expect("answer in time")
            .expect("stream")
            .expect("an answer");
        assert_eq!(answer.ttl(), 0);
        let gone = client
            .lease_time_to_live(id, None)
            .await
            .expect("time to live");
        assert_eq!(gone.ttl(), -1);
        let err = client.lease_revoke(id).await.expect_err("revoked twice");
        assert!(
            err.to_string()
                .contains("etcdserver: requested lease not found"),
            "{err}"
        );
    });
}
