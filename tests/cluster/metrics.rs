//! Story: scraping raftkv (README "Operating raftkv" → "Metrics"). A three-node cluster is
//! scraped as Prometheus would: every node's `GET /metrics` parses (openmetrics-parser, strict:
//! types, label sets, `# EOF`), the
//! Raft gauges agree with `/status` (one leader, everyone knows it), and the values move as the
//! story writes through both APIs: the request counter of the put route, the applied index, the
//! WAL fsync histogram, the MVCC and gRPC counters, snapshot builds. The leader reports a lag
//! gauge per peer and counts its peer links' requests, bytes and round trips per member and lane
//! (and their failures while a follower is down); unknown URLs share one placeholder route label. A restarted follower logs its
//! recovery in steps.

use std::collections::HashMap;

use openmetrics_parser::OpenMetricsValue;
use reqwest::Method;

use crate::harness::{CONVERGE_TIMEOUT, Cluster, READY_TIMEOUT, wait_until, wait_until_with};

/// Writes the story makes through the HTTP API.
const WRITES: u64 = 60;
/// Small, so the writes build a snapshot on every node.
const FLAGS: &str = "--snapshot-every 40";

/// One sample, flattened as Prometheus stores it: a counter family `f` gives `f_total`, a
/// histogram `f_count` and `f_sum`, a gauge `f`.
struct Sample {
    metric: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// One node's scrape, parsed.
struct Scrape {
    samples: Vec<Sample>,
    text: String,
}

impl Scrape {
    /// Parses OpenMetrics text strictly (types, label sets, `# EOF`; any error fails the test).
    fn parse(text: String) -> Scrape {
        let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&text)
            .unwrap_or_else(|e| panic!("the scrape does not parse: {e:?}\n{text}"));
        let mut samples = Vec::new();
        for family in parsed.families.values() {
            let names = family.get_label_names().to_vec();
            for sample in family.iter_samples() {
                let set = sample.get_labelset().expect("label set");
                let labels: HashMap<String, String> = names
                    .iter()
                    .filter_map(|n| Some((n.clone(), set.get_label_value(n)?.to_owned())))
                    .collect();
                let name = &family.family_name;
                let mut push = |suffix: &str, value: f64| {
                    samples.push(Sample {
                        metric: format!("{name}{suffix}"),
                        labels: labels.clone(),
                        value,
                    })
                };
                match &sample.value {
                    OpenMetricsValue::Counter(c) => push("_total", c.value.as_f64()),
                    OpenMetricsValue::Gauge(v) | OpenMetricsValue::Unknown(v) => {
                        push("", v.as_f64())
                    }
                    OpenMetricsValue::Histogram(h) => {
                        push("_count", h.count.unwrap_or(0) as f64);
                        push("_sum", h.sum.as_ref().map_or(0.0, |s| s.as_f64()));
                    }
                    _ => {}
                }
            }
        }
        Scrape { samples, text }
    }

    /// The value of the sample `name` whose labels include `labels` (the sum if several match).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in:\n{}", self.text))
    }

    /// Label values of `label` over the samples of `name`.
    fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect();
        values.sort();
        values.dedup();
        values
    }
}

/// `GET /metrics` of node `i`, checked and parsed.
fn scrape(c: &Cluster, i: usize) -> Scrape {
    let r = c.request(i, Method::GET, "/metrics", None);
    r.expect_status(200);
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/openmetrics-text"),
        "node {i}: content type {ct:?}"
    );
    assert!(r.body.ends_with("# EOF\n"), "node {i}: no # EOF at the end");
    Scrape::parse(r.body)
}

const PUT_ROUTE: [(&str, &str); 3] = [("route", "/db/{*key}"), ("method", "POST"), ("code", "200")];
const APPLIED: &str = "raftkv_server_proposals_applied_total";
const FSYNCS: &str = "raftkv_disk_wal_fsync_duration_seconds_count";

#[test]
fn metrics_parse_and_move_as_the_cluster_works() {
    let mut c = Cluster::three_raftd("metrics", FLAGS);
    let leader = c.leader();

    c.phase("every node's scrape parses; all know a leader, exactly one is it");
    let scrapes: Vec<Scrape> = (0..3).map(|i| scrape(&c, i)).collect();
    for (i, s) in scrapes.iter().enumerate() {
        assert_eq!(s.value("raftkv_server_has_leader", &[]), 1.0, "node {i}");
        assert!(s.value("raftkv_raft_term", &[]) >= 1.0, "node {i}");
        assert!(s.value("raftkv_server_leader_changes_seen_total", &[]) >= 1.0);
    }
    let leaders: Vec<usize> = (0..3)
        .filter(|&i| scrapes[i].value("raftkv_server_is_leader", &[]) == 1.0)
        .collect();
    assert_eq!(leaders, vec![leader], "is_leader=1 on the leader only");

    c.phase(&format!(
        "write {WRITES} keys: put counter, applied index and fsyncs move"
    ));
    let before: Vec<Scrape> = (0..3).map(|i| scrape(&c, i)).collect();
    for k in 0..WRITES {
        c.put_db(leader, &format!("k{k}"), "v").expect_status(200);
    }
    let after = scrape(&c, leader);
    let moved = |s: &Scrape, b: &Scrape, name: &str, labels: &[(&str, &str)]| {
        s.get(name, labels).unwrap_or(0.0) - b.get(name, labels).unwrap_or(0.0)
    };
    let b = &before[leader];
    let n = WRITES as f64;
    assert!(moved(&after, b, "raftkv_http_requests_total", &PUT_ROUTE) >= n);
    assert!(moved(&after, b, "raftkv_mvcc_put_total", &[]) >= n);
    assert!(moved(&after, b, APPLIED, &[]) >= n);
    assert!(
        moved(&after, b, FSYNCS, &[]) >= 1.0,
        "the leader's WAL fsyncs"
    );
    let latency = "raftkv_http_request_duration_seconds_count";
    let post = [("route", "/db/{*key}"), ("method", "POST")];
    assert!(moved(&after, b, latency, &post) >= n);
    for f in c.followers(leader) {
        wait_until_with(
            CONVERGE_TIMEOUT,
            &format!("node {f} applied the writes"),
            || {
                let s = scrape(&c, f);
                let (applied, fsyncs) = (
                    moved(&s, &before[f], APPLIED, &[]),
                    moved(&s, &before[f], FSYNCS, &[]),
                );
                if applied >= n && fsyncs >= 1.0 {
                    Ok(())
                } else {
                    Err(format!("applied +{applied}, fsyncs +{fsyncs}"))
                }
            },
        );
    }

    c.phase("the leader reports matched index and lag per peer; the lag drains to 0");
    let mut peers: Vec<String> = c.followers(leader).into_iter().map(|f| c.id(f)).collect();
    peers.sort();
    wait_until_with(CONVERGE_TIMEOUT, "the leader's per-peer lag is 0", || {
        let s = scrape(&c, leader);
        let lag = "raftkv_raft_replication_lag_entries";
        let seen = s.label_values(lag, "peer");
        let lags: HashMap<String, f64> = peers
            .iter()
            .map(|p| (p.clone(), s.get(lag, &[("peer", p)]).unwrap_or(-1.0)))
            .collect();
        if seen == peers && lags.values().all(|l| *l == 0.0) {
            Ok(())
        } else {
            Err(format!("peers {seen:?}, lags {lags:?}"))
        }
    });
    let s = scrape(&c, leader);
    let last = s.value("raftkv_raft_last_log_index", &[]);
    for p in &peers {
        let matched = s.value("raftkv_raft_replication_matched_index", &[("peer", p)]);
        assert_eq!(matched, last, "peer {p}");
    }

    c.phase(
        "the leader's peer links: answered requests, bytes and round trips per member and lane",
    );
    let s = scrape(&c, leader);
    for p in &peers {
        for lane in ["replication", "heartbeat"] {
            let at = [("peer", p.as_str()), ("lane", lane)];
            let requests = s.value("raftkv_network_peer_requests_total", &at);
            assert!(requests >= 1.0, "{p} {lane}: {requests} requests");
            assert!(s.value("raftkv_network_peer_sent_bytes_total", &at) > requests);
            assert!(s.value("raftkv_network_peer_received_bytes_total", &at) > requests);
            let round_trips = s.value("raftkv_network_peer_round_trip_time_seconds_count", &at);
            assert!(
                round_trips >= requests,
                "{p} {lane}: {round_trips} round trips"
            );
            assert_eq!(
                s.value("raftkv_network_peer_links_open", &at),
                1.0,
                "{p} {lane}"
            );
            assert!(s.value("raftkv_network_peer_link_opens_total", &at) >= 1.0);
        }
    }
    assert_eq!(
        s.label_values("raftkv_network_peer_sent_failures_total", "reason"),
        ["lost", "refused", "rejected", "remote", "unreachable"]
    );

    c.phase("unknown URLs get 404 and share the placeholder route label");
    for path in ["/no/such/thing/1", "/no/such/thing/2", "/x?y=z"] {
        c.request(leader, Method::GET, path, None)
            .expect_status(404);
    }
    let s = scrape(&c, leader);
    let unmatched = [("route", "unmatched"), ("method", "GET"), ("code", "404")];
    assert!(s.value("raftkv_http_requests_total", &unmatched) >= 3.0);
    let routes = s.label_values("raftkv_http_requests_total", "route");
    assert!(
        routes.iter().all(|r| !r.contains("no/such")),
        "routes: {routes:?}"
    );

    c.phase("etcd's API through a follower: gRPC handled counts by method and code");
    let follower = c.followers(leader)[0];
    let before = scrape(&c, follower);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let mut client = etcd_client::Client::connect([c.node(follower).http_addr()], None)
            .await
            .expect("connect");
        for k in 0..3 {
            client.put(format!("g{k}"), "v", None).await.expect("put");
        }
        client.get("g0", None).await.expect("get");
        // A refused call is counted with its code: revoking an unknown lease is NotFound.
        assert!(client.lease_revoke(12345).await.is_err());
    });
    let s = scrape(&c, follower);
    let handled = "raftkv_grpc_server_handled_total";
    let kv_put = [
        ("grpc_service", "etcdserverpb.KV"),
        ("grpc_method", "Put"),
        ("grpc_code", "OK"),
    ];
    assert!(moved(&s, &before, handled, &kv_put) >= 3.0, "{}", s.text);
    let lease = [("grpc_method", "LeaseRevoke"), ("grpc_code", "NotFound")];
    assert!(moved(&s, &before, handled, &lease) >= 1.0, "{}", s.text);
    assert!(moved(&s, &before, "raftkv_grpc_server_started_total", &[]) >= 5.0);
    assert!(moved(&s, &before, "raftkv_mvcc_put_total", &[]) >= 3.0);
    assert!(moved(&s, &before, "raftkv_mvcc_range_total", &[]) >= 1.0);

    c.phase("snapshots were built; disk and process figures are there");
    wait_until(CONVERGE_TIMEOUT, "every node built a snapshot", || {
        (0..3).all(|i| {
            scrape(&c, i)
                .get("raftkv_disk_backend_snapshot_duration_seconds_count", &[])
                .is_some_and(|n| n >= 1.0)
        })
    });
    let s = scrape(&c, leader);
    assert!(s.value("raftkv_snapshot_built_bytes_total", &[]) > 0.0);
    assert!(s.value("raftkv_raft_snapshot_index", &[]) > 0.0);
    assert!(s.value("raftkv_disk_wal_size_bytes", &[]) > 0.0);
    assert!(s.value("raftkv_disk_snapshot_size_bytes", &[]) > 0.0);
    if cfg!(target_os = "linux") {
        assert!(s.value("process_resident_memory_bytes", &[]) > 1e6);
        assert!(s.value("process_open_fds", &[]) >= 3.0);
    }

    c.phase("kill -9 a follower and restart it: its log shows the recovery in steps");
    let f = c.followers(leader)[1];
    let name = c.id(f);
    let failures = "raftkv_network_peer_sent_failures_total";
    let failed_before = scrape(&c, leader).value(failures, &[("peer", &name)]);
    c.kill9(f);
    wait_until_with(
        CONVERGE_TIMEOUT,
        "the leader's links to the killed follower close and its requests fail",
        || {
            let s = scrape(&c, leader);
            let open = s.value("raftkv_network_peer_links_open", &[("peer", &name)]);
            let failed = s.value(failures, &[("peer", &name)]) - failed_before;
            if open == 0.0 && failed >= 1.0 {
                Ok(())
            } else {
                Err(format!("{open} links open, {failed} more failures"))
            }
        },
    );
    c.restart(f);
    let log_has_all = |f: usize| {
        let log = std::fs::read_to_string(&c.node(f).log_path).unwrap_or_default();
        let restarted = log
            .rsplit("==== harness: start")
            .next()
            .unwrap_or("")
            .to_owned();
        [
            "loaded snapshot",
            "recovery 1/3",
            "recovery 2/3: log replayed",
            "recovery 3/3: node serving",
        ]
        .iter()
        .all(|line| restarted.contains(line))
        .then_some(restarted)
    };
    let restarted = wait_until(
        READY_TIMEOUT,
        "the restart's recovery lines are logged",
        || log_has_all(f),
    );
    for line in restarted
        .lines()
        .filter(|l| l.contains("recovery") || l.contains("loaded snapshot"))
    {
        eprintln!("   node {f}: {}", line.trim());
    }
    let field = |name: &str| -> u64 {
        let at = restarted.find(&format!("{name}=")).expect(name) + name.len() + 1;
        let digits: String = restarted[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().expect("a number")
    };
    assert!(
        field("entries_to_replay") > 0,
        "the writes after the snapshot are replayed"
    );
    assert_eq!(field("replayed_entries"), field("entries_to_replay"));
    wait_until(
        CONVERGE_TIMEOUT,
        "the restarted follower knows the leader again",
        || scrape(&c, f).get("raftkv_server_has_leader", &[]) == Some(1.0),
    );
    wait_until(
        CONVERGE_TIMEOUT,
        "the leader's heartbeat link to the restarted follower is open again",
        || {
            let at = [("peer", name.as_str()), ("lane", "heartbeat")];
            scrape(&c, leader).get("raftkv_network_peer_links_open", &at) == Some(1.0)
        },
    );
}
