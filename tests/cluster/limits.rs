//! Stories: a limit on everything, the same on every path (issue 7, item 4).
//!
//! 1. A follower that was down while large values were written catches up after a restart: the
//!    leader's appends are capped in bytes (below what the follower accepts), so catch-up
//!    proceeds in pieces instead of one oversized request retried forever.

use std::time::{Duration, Instant};

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
