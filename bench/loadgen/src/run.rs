//! `run`: the closed-loop measurement of one scenario (HTTP/1.1 or, with `--api grpc`, etcd's
//! gRPC API; `--op watch` hands over to `watch.rs`), printing `key=value` lines.
//!
//! With `--think-ms F` each client pauses an exponential time (mean F ms) after every operation:
//! clients that are idle between requests, as users of a service are, not back to back
//! (bench/openloop.sh, ab.sh's `owrite`). Latency is still request sent to answer received; the
//! pauses show only in `ops_per_s` (fewer ops) and `think_actual_ms`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::args::RunArgs;
use crate::cpu::{cpu_totals, proc_ticks, ticks_of};
use crate::die;
use crate::grpc;
use crate::watch;
use crate::wire::{
    b64, connect, key_name, one, outcome_name, value_bytes, Op, Outcome, Rng, Sender, System, Wire,
};

struct ClientResult {
    hist: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    cas_conflicts: u64,
    /// Pauses begun in the window and not cut short by its end: their count and total length.
    thinks: u64,
    think_total: Duration,
}

/// A think-time draw is capped at this many means, so one draw from the tail cannot idle a client
/// for a large part of the window (exp(-20): about one draw in 500 million reaches it).
const THINK_CAP_MEANS: f64 = 20.0;

/// One exponential think time with mean `mean_ms` (inverse CDF of a uniform draw).
fn think_time(rng: &mut Rng, mean_ms: f64) -> Duration {
    let draw = -(1.0 - rng.unit()).ln(); // 1 - unit is in (0, 1]: ln is finite
    Duration::from_secs_f64(draw.min(THINK_CAP_MEANS) * mean_ms / 1000.0)
}

/// A client's connection: HTTP/1.1 (the seed or etcd JSON APIs) or etcd's gRPC API.
enum Conn {
    Http {
        sender: Option<Sender>,
        addr: String,
        wire: Wire,
    },
    Grpc(Box<grpc::Conn>),
}

impl Conn {
    async fn call(
        &mut self,
        op: Op,
        key: &str,
        pick: u64,
        system: System,
        timeout: Duration,
    ) -> grpc::Done {
        match self {
            Conn::Grpc(c) => c.call(op, key, pick, timeout).await,
            Conn::Http { sender, addr, wire } => {
                let req = wire.request(op, key);
                match one(sender, addr, req, op, system, timeout).await {
                    Outcome::Ok => grpc::Done::Ok,
                    other => grpc::Done::Err(outcome_name(&other)),
                }
            }
        }
    }
}

pub fn cmd_run(a: &RunArgs) {
    let system = a.system;
    let targets: Vec<String> = a.target.clone().split(',').map(|s| s.to_string()).collect();
    let op_name = a.op.clone();
    let clients: usize = a.clients;
    let duration = Duration::from_secs_f64(a.duration);
    let warmup = Duration::from_secs_f64(a.warmup);
    let keys: u64 = a.keys;
    let read_pct: u64 = a.read_pct;
    let timeout = Duration::from_millis(a.req_timeout_ms);
    let pids: Vec<String> = a
        .pids
        .clone()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.to_string())
        .collect();
    let value_size: usize = a.value_size;
    let threads: usize = a.threads;
    let think_ms = a.think_ms;
    if !(think_ms.is_finite() && think_ms >= 0.0) {
        die(&format!("--think-ms {think_ms}: a mean in ms, 0 or more"));
    }
    if think_ms > 0.0 && a.op == "watch" {
        die("--think-ms does not apply to --op watch (its writers are watch.rs's own closed loop)");
    }
    let grpc_api = match a.api.clone().as_str() {
        "http" => false,
        "grpc" => true,
        other => die(&format!("unknown --api {other}")),
    };
    let (read_op, write_pct) = match op_name.as_str() {
        "write" => (Op::Write, 100),
        "cas" if grpc_api => (Op::Cas, 0),
        "lease" if grpc_api => (Op::Lease, 0),
        // w1: watchers + writers, its own driver and output (watch.rs)
        "watch" if grpc_api => return watch::run(a),
        "lread" => (Op::LinRead, 0),
        "sread" => (Op::StaleRead, 0),
        "mixed" => (Op::LinRead, 100 - read_pct.min(100)),
        _ => die(&format!("unknown --op {op_name}")),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    let value = value_bytes(value_size);
    let value_b64 = b64(&value);
    let pids2 = pids.clone();
    let res = rt.block_on(async move {
        let pids = pids2;
        // Open every connection first; the clock starts when all are open.
        let mut conns = Vec::with_capacity(clients);
        for c in 0..clients {
            let addr = targets[c % targets.len()].clone();
            let conn = if grpc_api {
                match grpc::connect(&addr, c, value.to_vec(), Duration::from_secs(10)).await {
                    Ok(g) => Conn::Grpc(Box::new(g)),
                    Err(e) => die(&format!("cannot connect to {addr} (gRPC): {e}")),
                }
            } else {
                let s = match tokio::time::timeout(Duration::from_secs(10), connect(&addr)).await {
                    Ok(Ok(s)) => Some(s),
                    _ => die(&format!("cannot connect to {addr}")),
                };
                let wire = Wire {
                    system,
                    host: addr.clone(),
                    value: value.clone(),
                    value_b64: value_b64.clone(),
                };
                Conn::Http {
                    sender: s,
                    addr,
                    wire,
                }
            };
            conns.push(conn);
        }
        let t0 = Instant::now();
        let warm_end = t0 + warmup;
        let end = warm_end + duration;
        let mut handles = Vec::new();
        for (c, conn) in conns.into_iter().enumerate() {
            handles.push(tokio::spawn(async move {
                let mut conn = conn;
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((c as u64 + 1) * 0x1000_0000_01B3));
                // The pauses have their own stream: the keys and ops drawn stay the closed loop's.
                let mut think_rng =
                    Rng(0xD1B5_4A32_D192_ED03 ^ ((c as u64 + 1) * 0x1000_0000_01B3));
                let mut owed = Duration::ZERO; // pausing time overslept so far, not yet given back
                let mut r = ClientResult {
                    hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("hist"),
                    ok: 0,
                    errors: BTreeMap::new(),
                    cas_conflicts: 0,
                    thinks: 0,
                    think_total: Duration::ZERO,
                };
                loop {
                    let start = Instant::now();
                    if start >= end {
                        break;
                    }
                    let x = rng.next();
                    let key = key_name(x % keys);
                    let op = if (x >> 40) % 100 < write_pct {
                        Op::Write
                    } else {
                        read_op
                    };
                    let out = conn.call(op, &key, x >> 20, system, timeout).await;
                    let done = Instant::now();
                    // An op counts if it was sent and answered inside the window, pauses or not:
                    // ops_per_s is those ops / the window's seconds, and no latency includes a
                    // pause (`start` is taken after it).
                    let counted = start >= warm_end && done <= end;
                    match out {
                        grpc::Done::Ok | grpc::Done::Conflict => {
                            if counted {
                                r.ok += 1;
                                r.cas_conflicts += u64::from(matches!(out, grpc::Done::Conflict));
                                let us = (done - start).as_micros() as u64;
                                let _ = r.hist.record(us.max(1));
                            }
                        }
                        grpc::Done::Err(kind) => {
                            if start >= warm_end {
                                *r.errors.entry(kind.clone()).or_default() += 1;
                            }
                            if kind == "io" {
                                // do not spin on a refused connection
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                    if think_ms > 0.0 {
                        // tokio's timer wakes on a 1 ms tick, after the deadline: a pause runs
                        // ~1 ms longer than drawn (5.97 ms for a 5 ms mean). The overshoot is
                        // owed and taken off the next pauses, so their mean is the one asked for
                        // (think_actual_ms shows it); single pauses are off by up to a tick.
                        let drawn = think_time(&mut think_rng, think_ms);
                        let paused = Instant::now();
                        let until = paused + drawn.saturating_sub(owed);
                        if until > paused {
                            // Never past the window's end: a pause there would only delay the result.
                            tokio::time::sleep_until(until.min(end).into()).await;
                        }
                        let took = paused.elapsed();
                        owed = (owed + took).saturating_sub(drawn);
                        if paused >= warm_end && until <= end {
                            r.thinks += 1;
                            r.think_total += took;
                        }
                    }
                }
                r
            }));
        }
        // CPU of the servers (and of this process) over the measured window.
        tokio::time::sleep_until(warm_end.into()).await;
        let me = std::process::id().to_string();
        let (srv0, me0, m0) = (ticks_of(&pids), proc_ticks(&me).unwrap_or(0), cpu_totals());
        tokio::time::sleep_until(end.into()).await;
        let (srv1, me1, m1) = (ticks_of(&pids), proc_ticks(&me).unwrap_or(0), cpu_totals());
        let mut hist: Histogram<u64> = Histogram::new_with_bounds(1, 120_000_000, 3).expect("hist");
        let mut ok = 0;
        let mut cas_conflicts = 0;
        let (mut thinks, mut think_total) = (0u64, Duration::ZERO);
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        for h in handles {
            let r = h.await.expect("client task");
            hist.add(&r.hist).expect("merge");
            ok += r.ok;
            cas_conflicts += r.cas_conflicts;
            thinks += r.thinks;
            think_total += r.think_total;
            for (k, v) in r.errors {
                *errors.entry(k).or_default() += v;
            }
        }
        let busy = {
            let dt = m1.0.saturating_sub(m0.0).max(1);
            let di = m1.1.saturating_sub(m0.1);
            100.0 * (1.0 - di as f64 / dt as f64)
        };
        // CPU used on the machine by everything that is neither the servers nor this process
        // (other people's jobs, kernel threads), in cores: the noise indicator of the run.
        let other_ticks = (m1.0.saturating_sub(m0.0)).saturating_sub(m1.1.saturating_sub(m0.1))
            as f64
            - srv1.saturating_sub(srv0) as f64
            - me1.saturating_sub(me0) as f64;
        let other_cores = (other_ticks / 100.0 / duration.as_secs_f64()).max(0.0);
        let think_actual_ms = think_total.as_secs_f64() * 1000.0 / thinks.max(1) as f64;
        (
            hist,
            ok,
            errors,
            srv1.saturating_sub(srv0),
            me1.saturating_sub(me0),
            busy,
            other_cores,
            cas_conflicts,
            think_actual_ms,
        )
    });
    let (hist, ok, errors, srv_ticks, me_ticks, busy, other_cores, cas_conflicts, think_actual_ms) =
        res;
    let nerr: u64 = errors.values().sum();
    let secs = duration.as_secs_f64();
    let mut out = String::new();
    let ops = ok as f64 / secs;
    out += &format!("ops={ok}\nops_per_s={ops:.1}\n");
    out += &format!(
        "p50_us={}\np90_us={}\np99_us={}\np999_us={}\nmax_us={}\nmean_us={:.1}\n",
        hist.value_at_quantile(0.50),
        hist.value_at_quantile(0.90),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max(),
        hist.mean()
    );
    out += &format!(
        "errors={nerr}\nerror_pct={:.3}\n",
        if ok + nerr > 0 {
            100.0 * nerr as f64 / (ok + nerr) as f64
        } else {
            0.0
        }
    );
    if read_op == Op::Cas {
        out += &format!("cas_conflicts={cas_conflicts}\n");
    }
    out += &format!(
        "error_kinds={}\n",
        errors
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    if !pids.is_empty() {
        let cpu_s = srv_ticks as f64 / 100.0;
        out += &format!("server_cpu_s={cpu_s:.2}\n");
        if ok > 0 {
            out += &format!("cpu_s_per_1k={:.4}\n", cpu_s * 1000.0 / ok as f64);
        }
    }
    out += &format!("loadgen_cpu_s={:.2}\nmachine_busy_pct={busy:.1}\nother_cores={other_cores:.2}\nclients={clients}\nduration_s={secs}\n", me_ticks as f64 / 100.0);
    out += &format!("think_ms={think_ms}\n");
    if think_ms > 0.0 {
        out += &format!("think_actual_ms={think_actual_ms:.3}\n");
    }
    print!("{out}");
    if let Some(path) = &a.out {
        let mut f = std::fs::File::create(path).unwrap_or_else(|e| die(&format!("{path}: {e}")));
        let _ = f.write_all(out.as_bytes());
    }
}
