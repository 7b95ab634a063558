//! The `etcd-client` crate's Watch against a 3-node raftkv, as a config watcher or a cache
//! would use it: a prefix watched on a follower, a replay from a past revision with previous
//! values, filters, a progress request, cancel, a compacted start; then watches that span a
//! leader kill — one on a surviving follower that carries on, one on the killed leader that
//! reconnects from the last revision it saw — each seeing every acknowledged write exactly
//! once, in revision order.

use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, WatchFilterType, WatchOptions, WatchResponse, WatchStream};

use crate::harness::Cluster;

/// One event as a test compares it: kind, key, value, mod revision, previous value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    put: bool,
    key: String,
    value: String,
    rev: i64,
    prev: Option<String>,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn seen(r: &WatchResponse) -> Vec<Seen> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().expect("event kv");
            Seen {
                put: e.event_type() == EventType::Put,
                key: text(kv.key()),
                value: text(kv.value()),
                rev: kv.mod_revision(),
                prev: e.prev_kv().map(|p| text(p.value())),
            }
        })
        .collect()
}

/// The next response on `stream`, within `within`.
async fn next(stream: &mut WatchStream, within: Duration) -> WatchResponse {
    match tokio::time::timeout(within, stream.message()).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => panic!("watch stream ended"),
        Ok(Err(e)) => panic!("watch stream failed: {e:?}"),
        Err(_) => panic!("no watch response within {within:?}"),
    }
}

/// Events from `stream` until `n` arrived (responses without events are skipped).
async fn events(stream: &mut WatchStream, n: usize) -> Vec<Seen> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = next(stream, left).await;
        assert!(!r.canceled(), "watch canceled: {:?}", r.cancel_reason());
        out.extend(seen(&r));
    }
    assert_eq!(out.len(), n, "more events than written: {out:?}");
    out
}

/// Opens a watch and checks its creation answer; the stream and the created header revision.
async fn watch(client: &mut Client, key: &str, options: WatchOptions) -> (WatchStream, i64) {
    let mut stream = client.watch(key, Some(options)).await.expect("watch");
    let created = next(&mut stream, Duration::from_secs(10)).await;
    assert!(created.created() && !created.canceled(), "{created:?}");
    let rev = created.header().expect("header").revision();
    (stream, rev)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn etcd_client_watch_prefix_history_filters_progress_and_compaction() {
    let c = Cluster::three_raftd("etcd-client-watch", "");
    let rt = runtime();
    let leader = c.leader();
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let (mut writer, mut reader) = rt.block_on(async {
        let w = Client::connect([c.node(leader).http_addr()], None).await;
        let r = Client::connect([c.node(follower).http_addr()], None).await;
        (w.expect("connect leader"), r.expect("connect follower"))
    });

    c.phase("a prefix watch on a follower sees puts and deletes under it, nothing else");
    let (r1, first) = rt.block_on(async {
        let (mut stream, created) =
            watch(&mut reader, "cfg/", WatchOptions::new().with_prefix()).await;
        let r1 = writer
            .put("cfg/a", "1", None)
            .await
            .expect("put")
            .header()
            .expect("h")
            .revision();
        writer.put("other/x", "no", None).await.expect("put");
        writer.put("cfg/b", "2", None).await.expect("put");
        writer.delete("cfg/a", None).await.expect("delete");
        assert!(
            created < r1,
            "created at {created}, before the first write {r1}"
        );
        (r1, events(&mut stream, 3).await)
    });
    let keys: Vec<_> = first
        .iter()
        .map(|s| (s.put, s.key.as_str(), s.value.as_str()))
        .collect();
    assert_eq!(
        keys,
        vec![
            (true, "cfg/a", "1"),
            (true, "cfg/b", "2"),
            (false, "cfg/a", "")
        ],
        "{first:?}"
    );
    assert_eq!(first[0].rev, r1);
    assert_eq!(first[1].rev, r1 + 2, "other/x took a revision in between");
    assert_eq!(first[2].rev, r1 + 3);

    c.phase("a watch from a past revision replays history, with previous values when asked");
    rt.block_on(async {
        writer.put("cfg/b", "3", None).await.expect("put");
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(r1)
            .with_prev_key();
        let (mut stream, _) = watch(&mut reader, "cfg/", options).await;
        let replay = events(&mut stream, 4).await;
        let got: Vec<_> = replay
            .iter()
            .map(|s| (s.key.as_str(), s.prev.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("cfg/a", None),
                ("cfg/b", None),
                ("cfg/a", Some("1")),
                ("cfg/b", Some("2"))
            ],
            "{replay:?}"
        );
    });

    c.phase("a NOPUT filter delivers deletes only; a progress request answers the revision");
    rt.block_on(async {
        let options = WatchOptions::new()
            .with_prefix()
            .with_filters([WatchFilterType::NoPut]);
        let (mut stream, _) = watch(&mut reader, "cfg/", options).await;
        writer.put("cfg/c", "4", None).await.expect("put");
        let del = writer.delete("cfg/c", None).await.expect("delete");
        let del_rev = del.header().expect("h").revision();
        let only = events(&mut stream, 1).await;
        assert_eq!(
            (only[0].put, only[0].key.as_str(), only[0].rev),
            (false, "cfg/c", del_rev)
        );
        stream.request_progress().await.expect("progress request");
        let progress = next(&mut stream, Duration::from_secs(10)).await;
        assert_eq!(
            progress.watch_id(),
            -1,
            "a progress answer belongs to no watch"
        );
        assert!(progress.events().is_empty());
        assert_eq!(progress.header().expect("h").revision(), del_rev);

        c.phase("cancel: answered, and no event follows it");
        let id = only_watch_id(&mut stream, &mut writer).await;
        stream.cancel(id).await.expect("cancel");
        let canceled = next(&mut stream, Duration::from_secs(10)).await;
        assert!(
            canceled.canceled() && canceled.watch_id() == id,
            "{canceled:?}"
        );
        writer.delete("cfg/b", None).await.expect("delete");
        let quiet = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
        assert!(quiet.is_err(), "an event after the cancel: {quiet:?}");
    });

    c.phase("a watch from a compacted revision is canceled with the compact revision");
    rt.block_on(async {
        let now = writer
            .put("cfg/d", "5", None)
            .await
            .expect("put")
            .header()
            .expect("h")
            .revision();
        writer.compact(now, None).await.expect("compact");
        // A linearizable read on the follower returns once it applied the compaction too.
        reader.get("cfg/d", None).await.expect("get");
        let options = WatchOptions::new().with_prefix().with_start_revision(r1);
        let mut stream = reader.watch("cfg/", Some(options)).await.expect("watch");
        let created = next(&mut stream, Duration::from_secs(10)).await;
        assert!(created.created(), "{created:?}");
        let canceled = next(&mut stream, Duration::from_secs(10)).await;
        assert!(canceled.canceled(), "{canceled:?}");
        assert_eq!(canceled.compact_revision(), now);
        assert_eq!(canceled.watch_id(), created.watch_id());
    });

    c.phase("a range ending before its key is refused the etcd way");
    rt.block_on(async {
        let options = WatchOptions::new().with_range("a");
        let mut stream = reader.watch("b", Some(options)).await.expect("watch");
        let refused = next(&mut stream, Duration::from_secs(10)).await;
        assert!(refused.created() && refused.canceled(), "{refused:?}");
        assert_eq!(refused.cancel_reason(), "mvcc: watcher range is empty");
    });
}

/// The id of the one watch on `stream` (learned from an event it delivers).
async fn only_watch_id(stream: &mut WatchStream, writer: &mut Client) -> i64 {
    writer.put("cfg/e", "6", None).await.expect("put");
    writer.delete("cfg/e", None).await.expect("delete");
    let r = next(stream, Duration::from_secs(10)).await;
    assert_eq!(r.events().len(), 1, "{r:?}");
    r.watch_id()
}

#[test]
fn etcd_client_watch_spans_a_leader_kill() {
    let mut c = Cluster::three_raftd("etcd-client-watch-failover", "");
    let rt = runtime();
    let leader = c.leader();
    let survivor = (0..3).find(|&i| i != leader).expect("a follower");
    let endpoints: Vec<String> = (0..3).map(|i| c.node(i).http_addr()).collect();
    const WRITES: usize = 60;

    c.phase("watches on a follower and on the leader; writes from a client of every node");
    let (mut on_follower, mut on_leader, start) = rt.block_on(async {
        let mut f = Client::connect([c.node(survivor).http_addr()], None)
            .await
            .expect("connect");
        let mut l = Client::connect([c.node(leader).http_addr()], None)
            .await
            .expect("connect");
        let (a, rev) = watch(&mut f, "seq/", WatchOptions::new().with_prefix()).await;
        let (b, _) = watch(&mut l, "seq/", WatchOptions::new().with_prefix()).await;
        (a, b, rev + 1)
    });
    let mut writer =
        rt.block_on(async { Client::connect(&endpoints, None).await.expect("connect") });
    let mut acknowledged = Vec::new();
    let mut leader_seen = Vec::new();
    for i in 0..WRITES {
        if i == WRITES / 2 {
            c.phase(&format!("kill -9 the leader (node {leader}) halfway"));
            c.kill9(leader);
        }
        let key = format!("seq/{i:03}");
        let deadline = Instant::now() + Duration::from_secs(20);
        // A write whose answer was lost in the kill may have been applied; its retry writes
        // the key again, so a key may be delivered at two revisions (never after the
        // acknowledged one: `check_delivery`).
        let rev = loop {
            match rt.block_on(writer.put(key.clone(), format!("{i}"), None)) {
                Ok(r) => break r.header().expect("h").revision(),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("put {key}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(100)); // retry period
                }
                Err(e) => panic!("put {key}: {e:?}"),
            }
        };
        acknowledged.push((key, rev));
    }

    c.phase("the follower's watch carried on: every write, once, in order");
    let got = rt.block_on(events_until(&mut on_follower, &acknowledged));
    check_delivery(&got, &acknowledged, start);

    c.phase("the killed leader's watch broke; reconnected elsewhere from the last revision seen");
    rt.block_on(async {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), on_leader.message()).await {
                Ok(Ok(Some(r))) => leader_seen.extend(seen(&r)),
                Ok(Ok(None)) | Ok(Err(_)) => break,
                Err(_) => panic!("the killed leader's watch neither ended nor answered"),
            }
        }
        let from = leader_seen.last().map_or(start, |s| s.rev + 1);
        let mut again = Client::connect([c.node(survivor).http_addr()], None)
            .await
            .expect("connect");
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let (mut resumed, _) = watch(&mut again, "seq/", options).await;
        let rest = acknowledged
            .iter()
            .filter(|(_, r)| *r >= from)
            .cloned()
            .collect::<Vec<_>>();
        leader_seen.extend(events_until(&mut resumed, &rest).await);
    });
    check_delivery(&leader_seen, &acknowledged, start);
}

/// Events from `stream` until the last acknowledged write's revision was delivered.
async fn events_until(stream: &mut WatchStream, acknowledged: &[(String, i64)]) -> Vec<Seen> {
    let last = acknowledged.iter().map(|(_, r)| *r).max().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out: Vec<Seen> = Vec::new();
    while out.last().is_none_or(|s| s.rev < last) {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = next(stream, left).await;
        assert!(!r.canceled(), "watch canceled: {r:?}");
        out.extend(seen(&r));
    }
    out
}

/// Exactly once, in revision order, no gaps: revisions strictly increase from `start`, each
/// acknowledged write appears at its revision, and nothing else but retried duplicates of
/// writes whose first answer was lost (same key and value, before the acknowledged one).
fn check_delivery(got: &[Seen], acknowledged: &[(String, i64)], start: i64) {
    for pair in got.windows(2) {
        assert!(
            pair[0].rev < pair[1].rev,
            "out of order or repeated: {pair:?}"
        );
    }
    assert!(
        got.first().is_none_or(|s| s.rev >= start),
        "an event before the watch started"
    );
    for (key, rev) in acknowledged {
        let at = got.iter().find(|s| s.rev == *rev);
        assert_eq!(
            at.map(|s| s.key.as_str()),
            Some(key.as_str()),
            "write {key}@{rev} not delivered at its revision: {got:?}"
        );
    }
    for s in got {
        assert!(s.put, "a delete nobody wrote: {s:?}");
        let acked = acknowledged.iter().find(|(k, _)| *k == s.key);
        let (_, acked_rev) = acked.unwrap_or_else(|| panic!("a phantom event: {s:?}"));
        assert!(
            s.rev <= *acked_rev,
            "an event after its write was acknowledged: {s:?}"
        );
    }
}
