//! Stories: operating raftkv (README "Operating raftkv"). Health endpoints as a load balancer
//! and an orchestrator use them, `POST /leader`, graceful shutdown on SIGTERM, and a rolling
//! restart of all three nodes under a steady write load that loses no acknowledged write and
//! leaves the cluster without a leader only briefly (Raft §3.10 / thesis §3.10: leadership
//! transfer; §5.4: committed entries survive).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::blocking::Client;
use serde_json::{Value, json};

use crate::harness::{CONVERGE_TIMEOUT, Cluster, free_port, wait_until, wait_until_with};

/// `/health`'s read barrier bound (1 s) plus a margin for a loaded 2-core machine.
const HEALTH_503_WITHIN: Duration = Duration::from_secs(3);
/// A graceful shutdown must end (exit 0) within this.
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(10);
/// The longest leaderless window the rolling restart may show (generous for CI; the measured
/// figure is printed and reported in the README).
const LEADERLESS_MAX: Duration = Duration::from_secs(2);
/// How often the monitor polls every node's `/status`.
const MONITOR_EVERY: Duration = Duration::from_millis(20);
/// Pause between the writer's writes: a steady load (~100 writes/s), not a flood.
const WRITE_EVERY: Duration = Duration::from_millis(10);
/// Writes acknowledged before the first restart and after each one, before the next.
const ACKS_PER_STEP: usize = 150;

fn get(c: &Cluster, i: usize, path: &str) -> crate::harness::Resp {
    c.request(i, Method::GET, path, None)
}

#[test]
fn health_endpoints_follow_the_cluster() {
    let mut c = Cluster::three_raftd("health", "--timeout-ms 2000");

    c.phase("every node of a healthy cluster answers 200 on /livez, /readyz and /health");
    for i in c.live() {
        wait_until_with(CONVERGE_TIMEOUT, &format!("node {i} is healthy"), || {
            let r = get(&c, i, "/health");
            if r.status == 200 { Ok(()) } else { Err(r.body) }
        });
        get(&c, i, "/health").expect_json(&json!({ "health": "true", "reason": "" }));
        get(&c, i, "/livez").expect_status(200);
        let ready = get(&c, i, "/readyz");
        ready.expect_status(200);
        assert_eq!(ready.json()["ready"], true, "{}", ready.body);
    }

    c.phase(
        "kill -9 two of three nodes: the survivor's /health is 503 within the bound, /livez 200",
    );
    let leader = c.leader();
    let survivor = c.followers(leader)[0];
    for i in c.live().into_iter().filter(|&i| i != survivor) {
        c.kill9(i);
    }
    let r = get(&c, survivor, "/health");
    r.expect_error(&[503], &["not_ready"]);
    assert_eq!(r.json()["health"], "false", "{}", r.body);
    assert!(
        r.json()["reason"].as_str().is_some_and(|s| !s.is_empty()),
        "a reason is given: {}",
        r.body
    );
    assert!(
        r.elapsed < HEALTH_503_WITHIN,
        "/health took {:?} to answer 503",
        r.elapsed
    );
    eprintln!(
        "   survivor /health -> 503 after {:?}: {}",
        r.elapsed, r.body
    );
    get(&c, survivor, "/livez").expect_status(200);

    c.phase("restart the two killed nodes: the survivor's /health is 200 again");
    let killed: Vec<usize> = (0..3).filter(|&i| i != survivor).collect();
    for &i in &killed {
        c.restart(i);
    }
    for i in 0..3 {
        wait_until_with(
            CONVERGE_TIMEOUT,
            &format!("node {i} is healthy again"),
            || {
                let r = get(&c, i, "/health");
                if r.status == 200 { Ok(()) } else { Err(r.body) }
            },
        );
        c.wait_readyz(i);
    }

    c.phase("a node that never joined (its -join names a dead address) is live but not ready");
    let dead = format!("127.0.0.1:{}", free_port());
    let loner = c.start(move |p| {
        vec![
            "-p".into(),
            p.http.to_string(),
            "-join".into(),
            dead.clone(),
        ]
    });
    get(&c, loner, "/livez").expect_status(200);
    let r = get(&c, loner, "/readyz");
    r.expect_error(&[503], &["not_ready"]);
    assert!(r.body.contains("not a member"), "{}", r.body);
    get(&c, loner, "/health").expect_error(&[503], &["not_ready"]);

    c.phase("SIGTERM the never-joined node: it stops cleanly (exit 0)");
    let (status, took) = c.terminate(loner, SHUTDOWN_WITHIN);
    assert!(status.success(), "exit 0, got {status}");
    eprintln!("   never-joined node shut down in {took:?}");
}

#[test]
fn post_leader_moves_leadership_and_sigterm_hands_it_off() {
    let mut c = Cluster::three_raftd("leader-transfer", "");
    let leader = c.leader();
    let followers = c.followers(leader);
    let (via, target) = (followers[0], followers[1]);

    c.phase("POST /leader to a follower, naming the other follower: 200 once it leads");
    let r = c.post_json(via, "/leader", &json!({ "id": c.id(target) }));
    r.expect_status(200);
    assert_eq!(r.json()["leader"], c.id(target).as_str(), "{}", r.body);
    eprintln!("   transfer answered after {:?}: {}", r.elapsed, r.body);
    assert_eq!(c.leader(), target, "the named node leads");

    c.phase("unknown member: 404; no body: 400; naming the leader itself: 200 at once");
    c.post_json(via, "/leader", &json!({ "id": "nobody" }))
        .expect_error(&[404], &["not_found"]);
    c.post_json(via, "/leader", &json!({}))
        .expect_error(&[400], &["bad_request"]);
    c.post_json(via, "/leader", &json!({ "id": c.id(target) }))
        .expect_status(200);

    c.phase("SIGTERM the leader: it hands leadership off, exits 0, the others keep a leader");
    c.put_db(target, "before", "sigterm").expect_status(200);
    let (status, took) = c.terminate(target, SHUTDOWN_WITHIN);
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    eprintln!("   leader shut down in {took:?}");
    let log = std::fs::read_to_string(&c.node(target).log_path).unwrap_or_default();
    assert!(
        log.contains("leadership handed off"),
        "the log says the hand-off happened"
    );
    assert!(
        log.contains("raft log flushed"),
        "the log says the WAL was flushed"
    );
    let new_leader = c.leader();
    assert_ne!(new_leader, target);
    c.put_db(via, "after", "sigterm").expect_status(200);

    c.phase("restart it from its data dir: ready again, nothing lost");
    c.restart(target);
    c.wait_readyz(target);
    c.wait_db_value(
        target,
        "before",
        "sigterm",
        crate::harness::Level::Linearizable,
    );
    c.wait_db_value(
        target,
        "after",
        "sigterm",
        crate::harness::Level::Linearizable,
    );
}

/// What the writer thread saw: acknowledged writes (key → value), failures, and the longest
/// time between two acknowledgements.
struct WriterLog {
    acked: BTreeMap<String, String>,
    /// Failed writes by kind (`503 <code>`, `no connection`, ...): not acknowledged.
    failed: BTreeMap<String, usize>,
    longest_gap: Duration,
}

/// Writes unique keys `w/NNNNNN` round-robin to the nodes at `bases` until `stop`; a write
/// that fails is retried as a new key on the next node.
fn writer(
    http: Client,
    bases: Vec<String>,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicUsize>,
) -> WriterLog {
    let mut log = WriterLog {
        acked: BTreeMap::new(),
        failed: BTreeMap::new(),
        longest_gap: Duration::ZERO,
    };
    let mut last_ack = Instant::now();
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let (key, value) = (format!("w/{n:06}"), format!("v{n}"));
        let base = &bases[n % bases.len()];
        n += 1;
        let sent = http
            .post(format!("{base}/db/{key}"))
            .body(value.clone())
            .send();
        match sent {
            Ok(r) if r.status().is_success() => {
                log.longest_gap = log.longest_gap.max(last_ack.elapsed());
                last_ack = Instant::now();
                log.acked.insert(key, value);
                acks.fetch_add(1, Ordering::SeqCst);
            }
            Ok(r) => {
                let status = r.status().as_u16();
                let code = r
                    .json::<Value>()
                    .ok()
                    .and_then(|v| v["code"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                *log.failed.entry(format!("{status} {code}")).or_default() += 1;
            }
            Err(e) => {
                let kind = if e.is_connect() {
                    "no connection"
                } else {
                    "transport error"
                };
                *log.failed.entry(kind.to_owned()).or_default() += 1;
            }
        }
        thread::sleep(WRITE_EVERY); // pacing the load, not synchronisation
    }
    log
}

/// Polls every node's `/status` every `MONITOR_EVERY` until `stop`; returns the longest window
/// in which no node said it was the leader (measured between samples).
fn monitor(http: Client, bases: Vec<String>, stop: Arc<AtomicBool>) -> Duration {
    let mut last_with_leader = Instant::now();
    let mut longest = Duration::ZERO;
    while !stop.load(Ordering::SeqCst) {
        let has_leader = bases.iter().any(|base| {
            http.get(format!("{base}/status"))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|s| s["role"] == "leader")
        });
        if has_leader {
            longest = longest.max(last_with_leader.elapsed());
            last_with_leader = Instant::now();
        }
        thread::sleep(MONITOR_EVERY); // the polling period
    }
    longest.max(last_with_leader.elapsed())
}

/// Reads `key` (linearizable) round-robin from the nodes at `bases` until `stop`; returns the
/// count of 200 answers and the failures by kind.
fn reader(
    http: Client,
    bases: Vec<String>,
    key: &str,
    stop: Arc<AtomicBool>,
) -> (usize, BTreeMap<String, usize>) {
    let (mut ok, mut failed) = (0, BTreeMap::new());
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let base = &bases[n % bases.len()];
        n += 1;
        let kind = match http.get(format!("{base}/db/{key}")).send() {
            Ok(r) if r.status().is_success() => {
                ok += 1;
                None
            }
            Ok(r) => {
                let status = r.status().as_u16();
                let v = r.json::<Value>().ok().unwrap_or_default();
                Some(format!("{status} {}", v["code"].as_str().unwrap_or("")))
            }
            Err(e) if e.is_connect() => Some("no connection".to_owned()),
            Err(_) => Some("transport error".to_owned()),
        };
        if let Some(kind) = kind {
            *failed.entry(kind).or_default() += 1;
        }
        thread::sleep(WRITE_EVERY); // pacing the load, not synchronisation
    }
    (ok, failed)
}

fn client(timeout: Duration) -> Client {
    Client::builder()
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(Duration::from_millis(500))
        .build()
        .expect("client")
}

/// Reads every key under `w/` from node `i` with linearizable listings, page by page.
fn list_all(c: &Cluster, i: usize) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut after = String::new();
    loop {
        let r = get(c, i, &format!("/db?prefix=w/&limit=1000&after={after}"));
        r.expect_status(200);
        let page = r.json();
        for kv in page["kvs"].as_array().expect("kvs") {
            let key = kv["key"].as_str().expect("key").to_owned();
            out.insert(key, kv["value"].as_str().expect("value").to_owned());
        }
        match page["next"].as_str() {
            Some(next) if page["more"] == true => after = next.to_owned(),
            _ => return out,
        }
    }
}

#[test]
fn rolling_restart_under_load_loses_nothing() {
    let t0 = Instant::now();
    let mut c = Cluster::three_raftd("rolling-restart", "");
    let bases: Vec<String> = (0..3).map(|i| c.url(i, "")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let acked_more = |what: &str| {
        let target = acks.load(Ordering::SeqCst) + ACKS_PER_STEP;
        wait_until(CONVERGE_TIMEOUT, what, || {
            acks.load(Ordering::SeqCst) >= target
        });
    };

    c.phase("start a steady write load and a leader monitor (every 20 ms)");
    let w = {
        let (bases, stop, acks) = (bases.clone(), stop.clone(), acks.clone());
        thread::spawn(move || writer(client(Duration::from_secs(10)), bases, stop, acks))
    };
    let m = {
        let (bases, stop) = (bases.clone(), stop.clone());
        thread::spawn(move || monitor(client(Duration::from_millis(300)), bases, stop))
    };
    acked_more("the load runs");
    let r = {
        let (bases, stop) = (bases.clone(), stop.clone());
        thread::spawn(move || reader(client(Duration::from_secs(10)), bases, "w/000001", stop))
    };

    let mut shutdowns = Vec::new();
    let mut leaders_stopped = 0;
    for i in 0..3 {
        let was_leader = c.status(i)["role"] == "leader";
        leaders_stopped += usize::from(was_leader);
        c.phase(&format!(
            "SIGTERM node {i} (leader: {was_leader}), restart it, wait until ready"
        ));
        let (status, took) = c.terminate(i, SHUTDOWN_WITHIN);
        assert!(
            status.success(),
            "node {i} exits 0 on SIGTERM, got {status}"
        );
        shutdowns.push(took);
        c.restart(i);
        c.wait_readyz(i);
        acked_more("the load goes on after the restart");
    }
    assert!(leaders_stopped >= 1, "the leader was restarted too");

    c.phase("stop the load; every acknowledged write is on every node (linearizable)");
    stop.store(true, Ordering::SeqCst);
    let written = w.join().expect("writer");
    let leaderless = m.join().expect("monitor");
    let (reads_ok, reads_failed) = r.join().expect("reader");
    assert!(
        written.acked.len() > 100,
        "the load ran: {} acked",
        written.acked.len()
    );
    for i in 0..3 {
        let there = list_all(&c, i);
        let lost: Vec<&String> = written
            .acked
            .iter()
            .filter(|(k, v)| there.get(*k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        assert!(
            lost.is_empty(),
            "node {i} lacks {} acknowledged writes: {lost:?}",
            lost.len()
        );
    }
    eprintln!(
        "   rolling restart: {} writes acked, failed {:?}, longest gap between acks {:?}, \
         {reads_ok} linearizable reads ok, failed {reads_failed:?}, \
         longest leaderless window {leaderless:?}, shutdowns {shutdowns:?}, test took {:?}",
        written.acked.len(),
        written.failed,
        written.longest_gap,
        t0.elapsed()
    );
    assert!(
        leaderless < LEADERLESS_MAX,
        "leaderless for {leaderless:?} (bound {LEADERLESS_MAX:?})"
    );
}
