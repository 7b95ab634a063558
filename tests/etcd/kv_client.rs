//! The `etcd-client` crate's KV and Txn calls against a 3-node raftkv, as an application using
//! etcd would make them: revisions, prefix reads, a compare-and-swap txn in both branches, a
//! read at a past revision, compaction — then the same through a leader kill (the client given
//! every endpoint, retrying while the cluster elects, as clients do).

use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, Error, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};

use crate::harness::Cluster;

/// Retries `op` (on a clone of `client`) while the cluster answers Unavailable (no leader
/// yet), up to `within`.
async fn retrying<T, F, Fut>(client: &Client, within: Duration, op: F) -> T
where
    F: Fn(Client) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    match answer(client, within, op).await {
        Ok(v) => v,
        Err(e) => panic!("etcd call failed: {e:?}"),
    }
}

/// Like `retrying`, but hands back an error that is not Unavailable (e.g. to check it).
/// Unavailable is what the client reports for a dead endpoint (connection refused) and what
/// raftkv answers while there is no leader.
async fn answer<T, F, Fut>(client: &Client, within: Duration, op: F) -> Result<T, Error>
where
    F: Fn(Client) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + within;
    loop {
        match op(client.clone()).await {
            // A request on the killed leader's broken connection fails as Unknown "transport
            // error"; every call retried here is idempotent or checked for a repeat (`cas`).
            Err(Error::GRpcStatus(s))
                if (s.code() == tonic::Code::Unavailable
                    || (s.code() == tonic::Code::Unknown && s.message() == "transport error"))
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await; // retry period
            }
            other => return other,
        }
    }
}

/// A compare-and-swap: `key` from `from` to `to`; answers whether it swapped and, if not, the
/// value the failure branch read.
async fn cas(client: &mut Client, key: &str, from: &str, to: &str) -> (bool, Option<Vec<u8>>) {
    let txn = Txn::new()
        .when([Compare::value(key, CompareOp::Equal, from)])
        .and_then([TxnOp::put(key, to, None)])
        .or_else([TxnOp::get(key, None)]);
    let r = retrying(client, Duration::from_secs(20), |mut c| {
        let txn = txn.clone();
        async move { c.txn(txn).await }
    })
    .await;
    let seen = r.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
        _ => None,
    });
    (r.succeeded(), seen)
}

#[test]
fn etcd_client_kv_and_txn_through_a_leader_kill() {
    let mut c = Cluster::three_raftd("etcd-client-kv", "");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let endpoints: Vec<String> = (0..3).map(|i| c.node(i).http_addr()).collect();
    let mut client =
        rt.block_on(async { Client::connect(&endpoints, None).await.expect("connect") });

    c.phase("puts answer increasing revisions; a prefix get sees them with versions");
    let (r1, r2) = rt.block_on(async {
        let a = client.put("app/a", "1", None).await.expect("put");
        let b = client
            .put("app/a", "2", Some(PutOptions::new().with_prev_key()))
            .await
            .expect("put");
        assert_eq!(b.prev_key().map(|kv| kv.value()), Some(&b"1"[..]));
        client.put("app/b", "x", None).await.expect("put");
        let rev = |h: Option<&etcd_client::ResponseHeader>| h.expect("header").revision();
        (rev(a.header()), rev(b.header()))
    });
    assert_eq!(r2, r1 + 1, "one revision per put");
    rt.block_on(async {
        let r = client
            .get("app/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("get");
        let kvs = r.kvs();
        assert_eq!(kvs.len(), 2);
        assert_eq!((kvs[0].key(), kvs[0].value()), (&b"app/a"[..], &b"2"[..]));
        assert_eq!((kvs[0].version(), kvs[0].mod_revision()), (2, r2));
        assert_eq!(kvs[0].create_revision(), r1);
        let past = client
            .get("app/a", Some(GetOptions::new().with_revision(r1)))
            .await
            .expect("get at a past revision");
        assert_eq!(past.kvs()[0].value(), b"1");
    });

    c.phase("a compare-and-swap txn: swaps from the right value, reads it back otherwise");
    rt.block_on(async {
        assert_eq!(cas(&mut client, "app/a", "2", "3").await, (true, None));
        assert_eq!(
            cas(&mut client, "app/a", "2", "4").await,
            (false, Some(b"3".to_vec()))
        );
    });

    let leader = c.leader();
    c.phase(&format!(
        "kill -9 the leader (node {leader}); the client carries on"
    ));
    c.kill9(leader);
    rt.block_on(async {
        let within = Duration::from_secs(20);
        retrying(&client, within, |mut c| async move {
            c.put("app/after", "ok", None).await
        })
        .await;
        // Swapped — or, if a retry repeated a swap whose answer was lost, refused having read
        // the value it wrote.
        let swap = cas(&mut client, "app/a", "3", "5").await;
        assert!(
            matches!(&swap, (true, None)) || swap == (false, Some(b"5".to_vec())),
            "{swap:?}"
        );
        let r = retrying(&client, within, |mut c| async move {
            c.get("app/a", None).await
        })
        .await;
        assert_eq!(r.kvs()[0].value(), b"5");
        assert_eq!(
            r.kvs()[0].version(),
            4,
            "puts 1, 2 and the swaps to 3 and 5"
        );
    });

    c.phase("compaction: a read below it fails with etcd's error, above it works");
    rt.block_on(async {
        let now = retrying(&client, Duration::from_secs(20), |mut c| async move {
            c.get("app/a", None).await
        })
        .await
        .header()
        .expect("header")
        .revision();
        let within = Duration::from_secs(20);
        retrying(&client, within, |mut c| async move {
            c.compact(now - 1, None).await
        })
        .await;
        let below = answer(&client, within, |mut c| async move {
            c.get("app/a", Some(GetOptions::new().with_revision(r1)))
                .await
        })
        .await;
        match below {
            Err(Error::GRpcStatus(s)) => {
                assert_eq!(s.code(), tonic::Code::OutOfRange);
                assert_eq!(
                    s.message(),
                    "etcdserver: mvcc: required revision has been compacted"
                );
            }
            other => panic!("expected Compacted, got {other:?}"),
        }
        let r = retrying(&client, within, |mut c| async move {
            c.get("app/a", Some(GetOptions::new().with_revision(now)))
                .await
        })
        .await;
        assert_eq!(r.kvs()[0].value(), b"5");
    });
}
