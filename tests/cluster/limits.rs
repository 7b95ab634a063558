//! Stories: a limit on everything, the same on every path (issue 7, item 4).
//!
//! 1. A follower that was down while large values were written catches up after a restart: the
//!    leader's appends are capped in bytes (below what the follower accepts), so catch-up
//!    proceeds in pieces instead of one oversized request retried forever.
//! 2. A command sent straight to the leader's internal write path (`/raft/write_batch`, as a
//!    forwarding follower would) with an oversized key or value is refused before it is
//!    proposed; the cluster keeps serving and snapshotting, and a restarted node comes up.

use std::time::{Duration, Instant};

use raftkv::error::KvError;
use raftkv::raft::forward::WriteOk;
use raftkv::raft::types::{Command, node_id_from_name};
use reqwest::Method;

use crate::harness::{Cluster, Level, wait_until_with};

/// Values written while the follower is down: 340 × 900 KiB (under the 1 MiB default limit).
const LARGE_VALUES: usize = 340;
const LARGE_VALUE_BYTES: usize = 900 * 1024;
/// How long the restarted follower gets to serve every value.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// Value `n` of the catch-up story: distinct content per key, checkable by content.
fn large_value(n: usize) -> String {
    let head = format!("value-{n:04}-");
    let fill = char::from(b'a' + u8::try_from(n % 26).expect("n % 26 fits"));
    let mut v = String::with_capacity(LARGE_VALUE_BYTES);
    v.push_str(&head);
    v.extend(std::iter::repeat_n(fill, LARGE_VALUE_BYTES - head.len()));
    v
}

#[test]
fn a_follower_down_during_large_writes_catches_up_after_restart() {
    let mut c = Cluster::three_raftd("limits-catch-up", "");
    let leader = c.leader();
    let follower = c.followers(leader)[0];

    c.phase("kill -9 one follower");
    c.kill9(follower);

    c.phase(&format!(
        "write {LARGE_VALUES} values of {LARGE_VALUE_BYTES} bytes through the leader"
    ));
    let t0 = Instant::now();
    for n in 0..LARGE_VALUES {
        c.put_db(leader, &format!("big{n:04}"), &large_value(n))
            .expect_status(200);
    }
    eprintln!(
        "   wrote {LARGE_VALUES} values in {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    c.phase("restart the follower without -join; it catches up and serves every value");
    let t0 = Instant::now();
    c.restart(follower);
    let last = LARGE_VALUES - 1;
    let last_key = format!("big{last:04}");
    wait_until_with(
        CATCH_UP_TIMEOUT,
        &format!("the restarted follower serves /db/{last_key} (stale)"),
        || {
            let r = c.try_request(
                follower,
                Method::GET,
                &format!("/db/{last_key}?level=stale"),
                None,
            )?;
            if r.status == 200 && r.body == large_value(last) {
                Ok(())
            } else {
                Err(format!("HTTP {}, {} bytes", r.status, r.body.len()))
            }
        },
    );
    eprintln!("   caught up in {:.1}s", t0.elapsed().as_secs_f64());
    let sample = (0..LARGE_VALUES)
        .step_by(17)
        .chain(LARGE_VALUES - 5..LARGE_VALUES);
    for n in sample {
        let r = c.get_db(follower, &format!("big{n:04}"), Level::Stale);
        assert!(
            r.status == 200 && r.body == large_value(n),
            "follower: big{n:04} is HTTP {} with {} bytes, not value {n}",
            r.status,
            r.body.len()
        );
    }

    c.phase("the cluster still takes writes, and the follower gets them");
    let leader = c.leader();
    c.put_db(leader, "after", "caught-up").expect_status(200);
    c.wait_db_value(follower, "after", "caught-up", Level::Stale);
}

/// What the leader's `/raft/write_batch` answers.
type BatchAnswer = Result<Vec<Result<WriteOk, KvError>>, String>;

/// POSTs `cmds` to node `to`'s internal write path as a forwarding peer (`from`) would: postcard
/// body, identity headers naming this cluster, the sender and the receiver.
fn post_write_batch(c: &Cluster, to: usize, from: usize, cmds: &[Command]) -> BatchAnswer {
    let cluster_id = std::fs::read_to_string(c.node(to).data_dir.join("cluster-id"))
        .expect("read cluster-id")
        .trim()
        .to_owned();
    let body = postcard::to_stdvec(cmds).expect("encode commands");
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let r = http
        .post(c.url(to, "/raft/write_batch"))
        .header("content-type", "application/x-postcard")
        .header("raftkv-cluster-id", cluster_id)
        .header("raftkv-from", node_id_from_name(&c.id(from)).to_string())
        .header("raftkv-to", node_id_from_name(&c.id(to)).to_string())
        .body(body)
        .send()
        .expect("POST /raft/write_batch");
    let status = r.status().as_u16();
    let bytes = r.bytes().expect("read answer");
    assert_eq!(
        status,
        200,
        "write_batch answered HTTP {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    postcard::from_bytes(&bytes).expect("decode write_batch answer")
}

/// Asserts that a write_batch answer refused every command as too large or invalid.
fn assert_refused(answer: &BatchAnswer, count: usize, what: &str) {
    let results = answer
        .as_ref()
        .unwrap_or_else(|e| panic!("{what}: batch refused as a whole ({e}), wanted per command"));
    assert_eq!(results.len(), count, "{what}: answered {results:?}");
    for r in results {
        assert!(
            matches!(r, Err(KvError::TooLarge { .. } | KvError::BadRequest(_))),
            "{what}: expected TooLarge or BadRequest, got {r:?}"
        );
    }
}

const SNAP: &str = "--snapshot-every 20";

#[test]
fn an_oversized_command_on_the_internal_write_path_is_refused() {
    let mut c = Cluster::three_raftd("limits-write-batch", SNAP);
    let leader = c.leader();
    let follower = c.followers(leader)[0];
    for n in 0..10 {
        c.put_db(leader, &format!("k{n:02}"), "v")
            .expect_status(200);
    }

    c.phase("a key over the snapshot format's limit (1 MiB + 1) straight to /raft/write_batch");
    let huge_key = "k".repeat((1 << 20) + 1);
    let answer = post_write_batch(
        &c,
        leader,
        follower,
        &[Command::Set {
            key: huge_key.clone(),
            value: b"x".to_vec(),
        }],
    );
    assert_refused(&answer, 1, "oversized key");

    c.phase("a key just over 4096 bytes, an empty key, a value over --max-value-bytes");
    let answer = post_write_batch(
        &c,
        leader,
        follower,
        &[
            Command::Delete {
                key: "d".repeat(4097),
            },
            Command::SetMany {
                pairs: vec![("ok".into(), b"1".to_vec()), (String::new(), b"2".to_vec())],
            },
            Command::Set {
                key: "big-value".into(),
                value: vec![b'v'; (1 << 20) + 1],
            },
        ],
    );
    assert_refused(&answer, 3, "invalid commands");

    c.phase("a valid command in the same batch as an invalid one is still applied");
    let answer = post_write_batch(
        &c,
        leader,
        follower,
        &[
            Command::Set {
                key: "batch-ok".into(),
                value: b"yes".to_vec(),
            },
            Command::Set {
                key: huge_key,
                value: Vec::new(),
            },
        ],
    );
    let results = answer.expect("batch answered");
    assert!(results[0].is_ok(), "valid command: {:?}", results[0]);
    assert!(
        matches!(
            results[1],
            Err(KvError::TooLarge { .. } | KvError::BadRequest(_))
        ),
        "oversized key: {:?}",
        results[1]
    );

    c.phase("nothing invalid was stored: 11 keys everywhere, big-value absent");
    c.wait_digests_agree(&[0, 1, 2], 11);
    for i in 0..3 {
        c.get_db(i, "big-value", Level::Stale).expect_status(404);
        c.get_db(i, "batch-ok", Level::Stale).expect_body("yes");
    }

    c.phase(&format!(
        "the cluster keeps serving and snapshotting ({SNAP}): 60 more writes"
    ));
    let before = c.status(leader)["snapshot_index"].as_u64().unwrap_or(0);
    for n in 0..60 {
        c.put_db(leader, &format!("m{n:02}"), "more")
            .expect_status(200);
    }
    for i in 0..3 {
        wait_until_with(
            Duration::from_secs(20),
            &format!("node {i} built a snapshot after the refused commands"),
            || {
                let s = c.try_status(i).ok_or_else(|| "no status".to_owned())?;
                match s["snapshot_index"].as_u64() {
                    Some(snap) if snap > before => Ok(()),
                    other => Err(format!("snapshot_index {other:?}, was {before}")),
                }
            },
        );
    }
    c.wait_digests_agree(&[0, 1, 2], 71);

    c.phase("a restarted node comes up from its snapshot and serves");
    c.kill9(follower);
    c.restart(follower);
    c.wait_db_value(follower, "m59", "more", Level::Stale);
    c.wait_digests_agree(&[0, 1, 2], 71);
    let leader = c.leader();
    c.put_db(leader, "last", "ok").expect_status(200);
    c.get_db(leader, "last", Level::Linearizable)
        .expect_body("ok");
}
