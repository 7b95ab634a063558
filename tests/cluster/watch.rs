//! Story: watching over plain HTTP, as a curl user would (README, "Watching keys over HTTP"):
//! a long poll on `GET /db/<key>?wait=<rev>` answers when the key changes (and at its timeout
//! otherwise); `GET /watch?prefix=` streams server-sent events, one per revision, from a past
//! revision or from now, and an `EventSource`-style reconnect with `Last-Event-ID` resumes
//! right after the last revision received; a start below the compacted revision gets an
//! `event: compacted`.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Cluster, Level, Resp};

fn rev(r: &Resp) -> i64 {
    r.header("x-raft-revision")
        .unwrap_or_else(|| panic!("{}: no X-Raft-Revision in {:?}", r.what, r.headers))
        .parse()
        .expect("a number")
}

/// One server-sent event: its `event:` name (empty for data), `id:` and parsed `data:`.
#[derive(Debug)]
pub struct Sse {
    pub name: String,
    pub id: Option<i64>,
    pub data: Value,
}

/// Opens `url` as an event stream (optionally resuming after `last_id`) and forwards its
/// events to the returned channel from a reader thread, until the stream ends.
pub fn open_events(url: &str, last_id: Option<i64>) -> mpsc::Receiver<Sse> {
    let client = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .expect("client");
    let mut req = client.get(url).header("accept", "text/event-stream");
    if let Some(id) = last_id {
        req = req.header("last-event-id", id.to_string());
    }
    let resp = req.send().expect("GET /watch");
    assert_eq!(resp.status().as_u16(), 200, "GET {url}");
    let content_type = resp.headers()["content-type"]
        .to_str()
        .expect("text")
        .to_string();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut name, mut id, mut data) = (String::new(), None, String::new());
        for line in BufReader::new(resp).lines() {
            let Ok(line) = line else { return };
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim());
            } else if line.is_empty() && !data.is_empty() {
                let event = Sse {
                    name: std::mem::take(&mut name),
                    id: id.take(),
                    data: serde_json::from_str(&std::mem::take(&mut data)).expect("JSON data"),
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The next `n` events, each within 10 s.
pub fn take(rx: &mpsc::Receiver<Sse>, n: usize) -> Vec<Sse> {
    (0..n)
        .map(|i| {
            rx.recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("event {i} of {n}: {e}"))
        })
        .collect()
}

/// `(type, key, value)` of every event of one SSE message.
fn changes(e: &Sse) -> Vec<(String, String, String)> {
    e.data["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|c| {
            let s = |f: &str| c[f].as_str().unwrap_or("").to_string();
            (s("type"), s("key"), s("value"))
        })
        .collect()
}

#[test]
fn http_long_poll_and_event_stream() {
    let c = Cluster::three_raftd("http-watch", "");
    let leader = c.leader();
    let follower = (0..3).find(|&i| i != leader).expect("a follower");

    c.phase("a long poll on a follower answers when the key changes");
    let r0 = rev(&c.put_db(leader, "cfg/mode", "blue"));
    let url = c.url(follower, &format!("/db/cfg/mode?wait={r0}&timeout=20s"));
    let poll = std::thread::spawn(move || {
        let started = Instant::now();
        let r = reqwest::blocking::Client::new()
            .get(&url)
            .send()
            .expect("long poll");
        let revision = r.headers()["x-raft-revision"]
            .to_str()
            .expect("text")
            .to_string();
        (
            r.status().as_u16(),
            revision,
            r.text().expect("body"),
            started.elapsed(),
        )
    });
    // The poll is waiting on the follower; a write then ends it. (If the write came first the
    // poll answers at once, with the same value: the assertions hold either way.)
    let r1 = rev(&c.put_db(leader, "cfg/mode", "green"));
    let (status, revision, body, took) = poll.join().expect("poll thread");
    assert_eq!((status, body.as_str()), (200, "green"));
    assert_eq!(revision, r1.to_string());
    assert!(
        took < Duration::from_secs(15),
        "answered at the change, not the timeout: {took:?}"
    );

    c.phase("with no change, it answers the current value at its timeout");
    let started = Instant::now();
    let r = c.get_db(
        follower,
        &format!("cfg/mode?wait={r1}&timeout=1s"),
        Level::Linearizable,
    );
    r.expect_status(200).expect_body("green");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "waited for the timeout: {took:?}"
    );
    c.get_db(follower, "cfg/mode?wait=-1", Level::Linearizable)
        .expect_error(&[400], &["bad_request"]);

    c.phase("an event stream from a past revision replays it, one event per revision");
    let events = open_events(
        &c.url(follower, &format!("/watch?prefix=cfg/&from={r0}")),
        None,
    );
    let got = take(&events, 2);
    assert_eq!(got[0].id, Some(r0));
    assert_eq!(
        changes(&got[0]),
        vec![("put".into(), "cfg/mode".into(), "blue".into())]
    );
    assert_eq!(got[1].id, Some(r1));
    assert_eq!(got[1].data["revision"], r1);

    c.phase("then live: a put, an atomic multi-key write (one revision), a delete");
    c.put_db(leader, "other/x", "not watched");
    let multi = c.post_key(leader, &serde_json::json!({"cfg/a": "1", "cfg/b": "2"}));
    multi.expect_status(200);
    let r3 = rev(&c.delete_db(leader, "cfg/mode"));
    let live = take(&events, 2);
    assert_eq!(
        changes(&live[0]),
        vec![
            ("put".into(), "cfg/a".into(), "1".into()),
            ("put".into(), "cfg/b".into(), "2".into())
        ],
        "one message for the revision of the multi-key write"
    );
    assert_eq!(
        changes(&live[1]),
        vec![("delete".into(), "cfg/mode".into(), String::new())]
    );
    assert_eq!(live[1].id, Some(r3));
    drop(events);

    c.phase("a reconnect with Last-Event-ID resumes right after that revision");
    let r4 = rev(&c.put_db(leader, "cfg/c", "3"));
    let resumed = open_events(&c.url(follower, "/watch?prefix=cfg/"), live[0].id);
    let again = take(&resumed, 2);
    assert_eq!(
        (again[0].id, again[1].id),
        (Some(r3), Some(r4)),
        "{again:?}"
    );

    c.phase("a start below the compacted revision gets event: compacted");
    etcd_compact(&c, leader, r4);
    // A linearizable read on the follower returns once it applied the compaction.
    c.get_db(follower, "cfg/c", Level::Linearizable)
        .expect_status(200);
    let old = open_events(
        &c.url(follower, &format!("/watch?prefix=cfg/&from={r0}")),
        None,
    );
    let end = take(&old, 1);
    assert_eq!(end[0].name, "compacted");
    assert_eq!(end[0].data["compact_revision"], r4);

    c.phase("PUT ?ttl=2s attaches a fresh lease: the key is gone after it, a long poll sees it go");
    let started = Instant::now();
    let r = c.request_with(
        leader,
        reqwest::Method::PUT,
        "/db/session/1?ttl=2s",
        &[],
        Some((b"here".to_vec(), "application/octet-stream")),
    );
    r.expect_status(200);
    let lease = r.header("x-raft-lease").expect("X-Raft-Lease").to_string();
    assert!(
        i64::from_str_radix(&lease, 16).is_ok_and(|id| id > 0),
        "{lease}"
    );
    let put_rev = rev(&r);
    let gone = c.get_db(
        follower,
        &format!("session/1?wait={put_rev}&timeout=20s"),
        Level::Linearizable,
    );
    gone.expect_error(&[404], &["not_found"]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "expired early: {took:?}"
    );
    assert!(took < Duration::from_secs(15), "expired late: {took:?}");
    c.request_with(
        leader,
        reqwest::Method::PUT,
        "/db/x?ttl=0s",
        &[],
        Some((b"v".to_vec(), "text/plain")),
    )
    .expect_error(&[400], &["bad_request"]);

    c.phase("a ?ttl= write whose If-Match fails writes nothing and leaves no lease behind");
    let leases_before = etcd_lease_ids(&c, leader);
    c.request_with(
        leader,
        reqwest::Method::PUT,
        "/db/never/written?ttl=60s",
        &[("If-Match", "1")],
        Some((b"v".to_vec(), "text/plain")),
    )
    .expect_error(&[412], &["precondition_failed"]);
    assert_eq!(etcd_lease_ids(&c, leader), leases_before);
    c.get_db(leader, "never/written", Level::Linearizable)
        .expect_error(&[404], &["not_found"]);

    c.phase("a watch needs a key or a prefix");
    let r = c.request(follower, reqwest::Method::GET, "/watch", None);
    r.expect_error(&[400], &["bad_request"]);
}

/// Runs `call` with an etcd client connected to node `i` (on a runtime of its own).
fn with_etcd<T>(c: &Cluster, i: usize, call: impl AsyncFnOnce(&mut etcd_client::Client) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut client = etcd_client::Client::connect([c.node(i).http_addr()], None)
            .await
            .expect("connect");
        call(&mut client).await
    })
}

/// Compacts at `revision` through etcd's gRPC API (the HTTP API has no compaction route).
fn etcd_compact(c: &Cluster, i: usize, revision: i64) {
    with_etcd(c, i, async |client| {
        client.compact(revision, None).await.expect("compact");
    });
}

/// The ids of the leases alive now (etcd's `LeaseLeases`, as `etcdctl lease list`), sorted.
fn etcd_lease_ids(c: &Cluster, i: usize) -> Vec<i64> {
    with_etcd(c, i, async |client| {
        let leases = client.leases().await.expect("lease list");
        let mut ids: Vec<i64> = leases.leases().iter().map(|l| l.id()).collect();
        ids.sort_unstable();
        ids
    })
}
