//! The etcd gRPC scenarios w1 (watch fan-out) and l1 (lease churn), run the same way against
//! raftkv and etcd with the same `etcd-client` calls.
//!
//! **w1** (`run --api grpc --op watch`): `--watchers` watches (1000) of one fresh prefix, spread
//! over `--watch-conns` gRPC connections (10) with one watch stream each, the connections
//! round-robin over `--watch-target` (all nodes). Then `--clients` closed-loop writers (64, one
//! connection each, round-robin over `--target`) put keys under that prefix. Each value starts
//! with the write's send time: 16 hex digits of nanoseconds since this process's start instant
//! (one monotonic clock for writers and watchers). After the window the writers stop and the
//! watchers drain until each has seen the highest revision acknowledged in the window (at most
//! `--drain-s`). Results:
//! - writes/s and put latency, as any other scenario (`ops_per_s`, `p50_us`, ...);
//! - `events_per_s`: events (over all watchers) that arrived inside the measured window;
//! - exactly-once, by revision: every revision acknowledged in the window must reach every watcher
//!   once. `missed` = (watcher, revision) pairs never delivered by the end of the drain;
//!   `duplicated` = events of a revision the watcher had already seen;
//! - `delivery_*_us`: arrival at a watcher minus the write's SEND time (from the value), for the
//!   writes sent in the window: it includes the put's own commit latency;
//! - `ack_delivery_*_us`: arrival minus the write's ACKNOWLEDGEMENT (put answer received), on the
//!   first watch of each connection only (a sample); an event that arrives before its put's answer
//!   counts as 0 (`events_before_ack_pct`).
//!
//! **l1** (`run --api grpc --op lease`, one closed-loop op in grpc.rs): `LeaseGrant(ttl 10)`, a
//! `Put` of one of the client's 16 keys with that lease, `LeaseRevoke`: see [`lease_churn`].

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;
use std::time::Instant;

use etcd_client::Client;
use etcd_client::ConnectOptions;
use etcd_client::KvClient;
use etcd_client::LeaseClient;
use etcd_client::PutOptions;
use etcd_client::WatchOptions;
use etcd_client::WatchStream;
use hdrhistogram::Histogram;

use crate::args::RunArgs;

/// One l1 op: grant a 10 s lease, put `key` attached to it, revoke it (which deletes the key).
pub async fn lease_churn(
    kv: &mut KvClient,
    lease: &mut LeaseClient,
    key: &str,
    value: Vec<u8>,
) -> Result<(), etcd_client::Error> {
    let id = lease.grant(10, None).await?.id();
    kv.put(key, value, Some(PutOptions::new().with_lease(id)))
        .await?;
    lease.revoke(id).await?;
    Ok(())
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("hist")
}

/// Revisions after the base one a watcher can track (a bitmap each).
const REV_SPAN_MAX: i64 = 1 << 26;

/// One watch's record: which revisions (relative to the base) it got.
#[derive(Default)]
struct Seen {
    bits: Vec<u64>,
    dups: u64,
    max_rev: i64,
    done: bool,
}

impl Seen {
    /// Marks `rel`; false if it was already marked.
    fn mark(&mut self, rel: i64) -> bool {
        let (w, b) = ((rel / 64) as usize, rel % 64);
        if w >= self.bits.len() {
            self.bits.resize(w + 1024, 0);
        }
        let had = self.bits[w] & (1 << b) != 0;
        self.bits[w] |= 1 << b;
        !had
    }
    fn has(&self, rel: i64) -> bool {
        let w = (rel / 64) as usize;
        w < self.bits.len() && self.bits[w] & (1 << (rel % 64)) != 0
    }
}

/// What one watch connection (one stream, many watches) saw.
struct ConnResult {
    seen: Vec<Seen>,
    delivery: Histogram<u64>,
    /// (revision, arrival ns) of every event of this connection's first watch.
    sample: Vec<(i64, u64)>,
    events: u64,
    /// Watch responses that carried events.
    responses: u64,
    events_in_window: u64,
    out_of_range: u64,
    errors: BTreeMap<String, u64>,
}

/// Opens a connection and a stream with `n` watches of `prefix` from `start_rev`, and waits
/// (bounded) for all of them to be created. Returns the stream and the watch ids in order.
async fn open_watches(
    addr: &str,
    prefix: &str,
    start_rev: i64,
    n: usize,
) -> Result<(WatchStream, HashMap<i64, usize>), crate::AnyErr> {
    // No per-request timeout here: it would apply to the long-lived watch call.
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(10));
    let client = Client::connect([format!("http://{addr}")], Some(options)).await?;
    let opts = || {
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_start_revision(start_rev),
        )
    };
    let mut stream = client.watch_client().watch(prefix, opts()).await?;
    for _ in 1..n {
        stream.watch(prefix, opts()).await?;
    }
    let mut ids = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ids.len() < n {
        let m = tokio::time::timeout_at(deadline, stream.message()).await;
        match m {
            Ok(Ok(Some(r))) if r.created() && !r.canceled() => {
                let i = ids.len();
                ids.insert(r.watch_id(), i);
            }
            Ok(Ok(Some(r))) if r.canceled() => {
                return Err(format!("watch refused: {}", r.cancel_reason()).into())
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return Err("watch stream closed".into()),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(format!("{} of {n} watches created in 30 s", ids.len()).into()),
        }
    }
    Ok((stream, ids))
}

/// Reads one watch stream until every watch reached the target revision (sent once the writers
/// are done) or `hard_end`.
#[allow(clippy::too_many_arguments)]
async fn watch_loop(
    mut stream: WatchStream,
    ids: HashMap<i64, usize>,
    base_rev: i64,
    t0: Instant,
    window_ns: (u64, u64),
    mut target: tokio::sync::watch::Receiver<i64>,
    hard_end: Instant,
) -> ConnResult {
    let mut r = ConnResult {
        seen: (0..ids.len()).map(|_| Seen::default()).collect(),
        delivery: hist(),
        sample: Vec::new(),
        events: 0,
        responses: 0,
        events_in_window: 0,
        out_of_range: 0,
        errors: BTreeMap::new(),
    };
    let all_done =
        |r: &ConnResult, goal: i64| goal > 0 && r.seen.iter().all(|s| s.done || s.max_rev >= goal);
    loop {
        let goal = *target.borrow();
        if all_done(&r, goal) {
            break;
        }
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = target.changed() => continue,
            _ = tokio::time::sleep_until(hard_end.into()) => break,
        };
        let resp = match msg {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                *r.errors.entry("stream_closed".into()).or_default() += 1;
                break;
            }
            Err(e) => {
                *r.errors.entry(crate::grpc::error_kind(&e)).or_default() += 1;
                break;
            }
        };
        let arrival = (Instant::now() - t0).as_nanos() as u64;
        let Some(&w) = ids.get(&resp.watch_id()) else {
            continue;
        };
        if resp.canceled() {
            *r.errors.entry("watch_canceled".into()).or_default() += 1;
            r.seen[w].done = true;
            continue;
        }
        r.responses += u64::from(!resp.events().is_empty());
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let rev = kv.mod_revision();
            let rel = rev - base_rev;
            r.events += 1;
            if !(1..REV_SPAN_MAX).contains(&rel) {
                r.out_of_range += 1;
                continue;
            }
            let s = &mut r.seen[w];
            if !s.mark(rel) {
                s.dups += 1;
            }
            s.max_rev = s.max_rev.max(rev);
            if (window_ns.0..=window_ns.1).contains(&arrival) {
                r.events_in_window += 1;
            }
            if w == 0 {
                r.sample.push((rev, arrival));
            }
            let sent = kv
                .value()
                .get(..16)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u64::from_str_radix(h, 16).ok());
            if let Some(sent) = sent {
                if (window_ns.0..=window_ns.1).contains(&sent) {
                    let us = arrival.saturating_sub(sent) / 1000;
                    let _ = r.delivery.record(us.max(1));
                }
            }
        }
    }
    r
}

/// One writer's results: put latencies and the (revision, ack ns) of its puts in the window.
struct WriterResult {
    hist: Histogram<u64>,
    acked: Vec<(i64, u64)>,
    errors: BTreeMap<String, u64>,
}

fn split_targets(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.to_string())
        .collect()
}

/// `run --api grpc --op watch`: scenario w1.
pub fn run(a: &RunArgs) {
    let targets = split_targets(&a.target);
    let watch_targets = split_targets(a.watch_target.as_deref().unwrap_or(&a.target));
    let clients: usize = a.clients;
    let watchers: usize = a.watchers;
    let conns: usize = a.watch_conns.clamp(1, watchers.max(1));
    let duration = Duration::from_secs_f64(a.duration);
    let warmup = Duration::from_secs_f64(a.warmup);
    let drain = Duration::from_secs_f64(a.drain_s);
    let keys: u64 = a.keys;
    let timeout = Duration::from_millis(a.req_timeout_ms);
    let pids: Vec<String> = split_targets(&a.pids);
    let value_size: usize = a.value_size.max(16);
    let threads: usize = a.threads;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    let t0 = Instant::now();
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let prefix = format!("w1/{epoch:x}/");
    let out = rt.block_on(async move {
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        // The store's revision now: the watches start right after it, so none can miss a write.
        let mut ctl = match Client::connect([format!("http://{}", targets[0])], Some(options.clone())).await {
            Ok(c) => c.kv_client(),
            Err(e) => crate::die(&format!("cannot connect to {} (gRPC): {e}", targets[0])),
        };
        let base_rev = match ctl.get("w1-base", None).await {
            Ok(r) => r.header().map(|h| h.revision()).unwrap_or(0),
            Err(e) => crate::die(&format!("base revision: {e}")),
        };
        let mut streams = Vec::new();
        for c in 0..conns {
            let n = watchers / conns + usize::from(c < watchers % conns);
            let addr = &watch_targets[c % watch_targets.len()];
            match open_watches(addr, &prefix, base_rev + 1, n).await {
                Ok(s) => streams.push(s),
                Err(e) => crate::die(&format!("watches on {addr}: {e}")),
            }
        }
        let mut kvs = Vec::new();
        for c in 0..clients {
            let addr = &targets[c % targets.len()];
            match Client::connect([format!("http://{addr}")], Some(options.clone())).await {
                Ok(cl) => kvs.push(cl.kv_client()),
                Err(e) => crate::die(&format!("cannot connect to {addr} (gRPC): {e}")),
            }
        }
        // The clock starts once every watch exists and every writer is connected.
        let warm_end = Instant::now() + warmup;
        let end = warm_end + duration;
        let ns = move |i: Instant| (i - t0).as_nanos() as u64;
        let window_ns = (ns(warm_end), ns(end));
        let hard_end = end + drain;
        let (goal_tx, goal_rx) = tokio::sync::watch::channel(0i64);
        let watch_tasks: Vec<_> = streams
            .into_iter()
            .map(|(stream, ids)| tokio::spawn(watch_loop(stream, ids, base_rev, t0, window_ns, goal_rx.clone(), hard_end)))
            .collect();
        let mut writers = Vec::new();
        for (c, mut kv) in kvs.into_iter().enumerate() {
            let prefix = prefix.clone();
            writers.push(tokio::spawn(async move {
                let mut rng = crate::wire::Rng(0x9E37_79B9_7F4A_7C15 ^ ((c as u64 + 1) * 0x1000_0000_01B3));
                let mut r = WriterResult { hist: hist(), acked: Vec::new(), errors: BTreeMap::new() };
                let pad: Vec<u8> = (16..value_size).map(|i| b'a' + (i % 26) as u8).collect();
                loop {
                    let start = Instant::now();
                    if start >= end {
                        break;
                    }
                    let key = format!("{prefix}{}", crate::wire::key_name(rng.next() % keys));
                    let mut value = format!("{:016x}", ns(start)).into_bytes();
                    value.extend_from_slice(&pad);
                    let res = tokio::time::timeout(timeout, kv.put(key, value, None)).await;
                    let done = Instant::now();
                    let kind = match res {
                        Ok(Ok(p)) => {
                            if start >= warm_end && done <= end {
                                let _ = r.hist.record(((done - start).as_micros() as u64).max(1));
                                r.acked.push((p.header().map(|h| h.revision()).unwrap_or(0), ns(done)));
                            }
                            continue;
                        }
                        Ok(Err(e)) => crate::grpc::error_kind(&e),
                        Err(_) => "timeout".to_string(),
                    };
                    if start >= warm_end {
                        *r.errors.entry(kind.clone()).or_default() += 1;
                    }
                    if kind == "io" {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                r
            }));
        }
        tokio::time::sleep_until(warm_end.into()).await;
        let me = std::process::id().to_string();
        let (srv0, me0, m0) = (crate::cpu::ticks_of(&pids), crate::cpu::proc_ticks(&me).unwrap_or(0), crate::cpu::cpu_totals());
        tokio::time::sleep_until(end.into()).await;
        let (srv1, me1, m1) = (crate::cpu::ticks_of(&pids), crate::cpu::proc_ticks(&me).unwrap_or(0), crate::cpu::cpu_totals());
        let mut put_hist = hist();
        let mut acked: Vec<(i64, u64)> = Vec::new();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        for w in writers {
            let r = w.await.expect("writer task");
            put_hist.add(&r.hist).expect("merge");
            acked.extend(r.acked);
            for (k, v) in r.errors {
                *errors.entry(k).or_default() += v;
            }
        }
        let goal = acked.iter().map(|x| x.0).max().unwrap_or(0);
        let drain_t0 = Instant::now();
        let _ = goal_tx.send(goal.max(1));
        let mut results = Vec::new();
        for t in watch_tasks {
            results.push(t.await.expect("watch task"));
        }
        let drain_s = drain_t0.elapsed().as_secs_f64();
        // exactly once, by revision
        let mut revs: Vec<i64> = acked.iter().map(|x| x.0).collect();
        revs.sort_unstable();
        let n_acked = revs.len();
        revs.dedup();
        let ack_dup_revs = n_acked - revs.len();
        let (mut missed, mut duplicated, mut lagging, mut complete) = (0u64, 0u64, 0u64, 0u64);
        let (mut events, mut responses, mut events_in_window, mut out_of_range) = (0u64, 0u64, 0u64, 0u64);
        let mut delivery = hist();
        let mut ack_delivery = hist();
        let mut before_ack = 0u64;
        let mut watch_errors: BTreeMap<String, u64> = BTreeMap::new();
        let ack_of: HashMap<i64, u64> = acked.iter().copied().collect();
        for r in &results {
            for s in &r.seen {
                let m = revs.iter().filter(|&&rev| rev > base_rev && !s.has(rev - base_rev)).count() as u64;
                missed += m;
                duplicated += s.dups;
                lagging += u64::from(s.max_rev < goal);
                complete += u64::from(m == 0 && s.dups == 0);
            }
            events += r.events;
            responses += r.responses;
            events_in_window += r.events_in_window;
            out_of_range += r.out_of_range;
            delivery.add(&r.delivery).expect("merge");
            for (k, v) in &r.errors {
                *watch_errors.entry(k.clone()).or_default() += v;
            }
            for (rev, arrival) in &r.sample {
                if let Some(&ack) = ack_of.get(rev) {
                    before_ack += u64::from(*arrival < ack);
                    let _ = ack_delivery.record((arrival.saturating_sub(ack) / 1000).max(1));
                }
            }
        }
        let secs = duration.as_secs_f64();
        let ok = put_hist.len();
        let nerr: u64 = errors.values().sum();
        let kinds = |m: &BTreeMap<String, u64>| m.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(",");
        let q = |h: &Histogram<u64>| {
            format!("{} {} {} {}", h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.value_at_quantile(0.999), h.max())
        };
        let mut o = String::new();
        o += &format!("ops={ok}\nops_per_s={:.1}\n", ok as f64 / secs);
        let p: Vec<String> = q(&put_hist).split(' ').map(String::from).collect();
        o += &format!("p50_us={}\np99_us={}\np999_us={}\nmax_us={}\nmean_us={:.1}\n", p[0], p[1], p[2], p[3], put_hist.mean());
        o += &format!("errors={nerr}\nerror_pct={:.3}\nerror_kinds={}\n",
            if ok + nerr > 0 { 100.0 * nerr as f64 / (ok + nerr) as f64 } else { 0.0 }, kinds(&errors));
        o += &format!("watchers={watchers}\nwatch_conns={conns}\nwatch_targets={}\nbase_revision={base_rev}\n", watch_targets.join(","));
        o += &format!("events={events}\nevents_in_window={events_in_window}\nevents_per_s={:.1}\n", events_in_window as f64 / secs);
        o += &format!("watch_responses={responses}\nevents_per_response={:.2}\n", events as f64 / responses.max(1) as f64);
        o += &format!("checked_revisions={}\nmissed={missed}\nduplicated={duplicated}\nwatchers_complete={complete}\n", revs.len());
        o += &format!("lagging_watchers={lagging}\nack_duplicate_revisions={ack_dup_revs}\nevents_out_of_range={out_of_range}\n");
        o += &format!("drain_s={drain_s:.2}\nwatch_errors={}\nwatch_error_kinds={}\n", watch_errors.values().sum::<u64>(), kinds(&watch_errors));
        let d: Vec<String> = q(&delivery).split(' ').map(String::from).collect();
        o += &format!("delivery_count={}\ndelivery_p50_us={}\ndelivery_p99_us={}\ndelivery_p999_us={}\ndelivery_max_us={}\n", delivery.len(), d[0], d[1], d[2], d[3]);
        let d: Vec<String> = q(&ack_delivery).split(' ').map(String::from).collect();
        o += &format!("ack_delivery_count={}\nack_delivery_p50_us={}\nack_delivery_p99_us={}\nack_delivery_max_us={}\n", ack_delivery.len(), d[0], d[1], d[3]);
        o += &format!("events_before_ack_pct={:.1}\n", 100.0 * before_ack as f64 / ack_delivery.len().max(1) as f64);
        let cpu_s = srv1.saturating_sub(srv0) as f64 / 100.0;
        if !pids.is_empty() {
            o += &format!("server_cpu_s={cpu_s:.2}\n");
            if ok > 0 {
                o += &format!("cpu_s_per_1k={:.4}\n", cpu_s * 1000.0 / ok as f64);
            }
        }
        let (dt, di) = (m1.0.saturating_sub(m0.0), m1.1.saturating_sub(m0.1));
        let me_ticks = me1.saturating_sub(me0);
        let other = (dt.saturating_sub(di) as f64 - srv1.saturating_sub(srv0) as f64 - me_ticks as f64) / 100.0 / secs;
        o += &format!("loadgen_cpu_s={:.2}\nmachine_busy_pct={:.1}\nother_cores={:.2}\nclients={clients}\nduration_s={secs}\n",
            me_ticks as f64 / 100.0, 100.0 * (1.0 - di as f64 / dt.max(1) as f64), other.max(0.0));
        o
    });
    print!("{out}");
    if let Some(path) = &a.out {
        let mut f =
            std::fs::File::create(path).unwrap_or_else(|e| crate::die(&format!("{path}: {e}")));
        let _ = f.write_all(out.as_bytes());
    }
}

/// The report's notes for a w1 file: exactly-once result, events/s, delivery latency.
pub fn notes(sys: &str, run: &str, kv: &HashMap<String, String>) -> Vec<String> {
    let g = |k: &str| kv.get(k).cloned().unwrap_or_else(|| "?".into());
    let n = |k: &str| kv.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let mut v = Vec::new();
    if n("missed") > 0 || n("duplicated") > 0 || n("lagging_watchers") > 0 || n("watch_errors") > 0
    {
        v.push(format!(
            "**!! {sys} {run}: missed {}, duplicated {}, lagging watchers {}, watch errors {} ({})**",
            g("missed"), g("duplicated"), g("lagging_watchers"), g("watch_errors"), g("watch_error_kinds")
        ));
    }
    v
}

/// The extra w1 table: one row per system and run.
pub fn report_table(runs: &[std::path::PathBuf]) {
    let mut rows = Vec::new();
    for r in runs {
        let run = r
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        for sys in ["raftkv", "etcd"] {
            let kv = crate::report::read_kv(&r.join(format!("{sys}_w1.txt")));
            if kv.is_empty() {
                continue;
            }
            let g = |k: &str| kv.get(k).cloned().unwrap_or_else(|| "?".into());
            let us = |k: &str| crate::report::ms(kv.get(k).and_then(|v| v.parse().ok()));
            let f0 = |k: &str| crate::report::opt(kv.get(k).and_then(|v| v.parse().ok()), 0);
            rows.push(format!(
                "| {sys} | {run} | {} × {} | {} | {} | {} | {} / {} | {} | {} / {} | {} / {} | {} | {} | {} |",
                g("watchers"), g("checked_revisions"), f0("ops_per_s"), f0("events_per_s"),
                g("events_per_response"),
                g("missed"), g("duplicated"), g("lagging_watchers"),
                us("delivery_p50_us"), us("delivery_p99_us"),
                us("ack_delivery_p50_us"), us("ack_delivery_p99_us"), g("events_before_ack_pct"),
                g("drain_s"), g("watch_errors"),
            ));
        }
    }
    if rows.is_empty() {
        return;
    }
    println!();
    println!("## w1. watch fan-out (per run)");
    println!();
    println!("Exactly once, by revision: every revision acknowledged in the window must reach every watcher once (missed / duplicated must be 0). \
Delivery from send = event arrival − the put's send time (carried in the value; includes the put's commit); from ack = arrival − the put's answer, \
on the first watch of each connection (an event before its put's answer counts 0).");
    println!();
    println!("| system | run | watchers × revisions checked | writes/s | events/s | events per response | missed / duplicated | lagging watchers | delivery from send p50 / p99 (ms) | from ack p50 / p99 (ms) | events before ack % | drain s | watch errors |");
    println!("|---|---|---|---:|---:|---:|---|---:|---|---|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
}
