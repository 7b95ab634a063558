//! `report`: the BENCHMARKS table (medians over runs) from a results directory.

use std::collections::HashMap;

use crate::watch;

pub fn read_kv(path: &std::path::Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub fn ms(us: Option<f64>) -> String {
    match us {
        None => "–".into(),
        Some(u) if u < 10_000.0 => format!("{:.2}", u / 1000.0),
        Some(u) => format!("{:.1}", u / 1000.0),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

pub fn opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "–".into())
}

const SCENARIOS: [(&str, &str); 13] = [
    ("a", "a. sequential write, 1 client"),
    ("b", "b. write, 64 clients"),
    ("c", "c. linearizable read, 64 clients"),
    ("d", "d. stale/serializable read, 64 clients"),
    ("e", "e. write via a follower, 64 clients"),
    ("f", "f. mixed 90% lin. read / 10% write, 64 clients"),
    ("g1", "g1. etcd gRPC: put, 1 client"),
    ("g2", "g2. etcd gRPC: put, 64 clients"),
    ("g3", "g3. etcd gRPC: linearizable range, 64 clients"),
    ("g4", "g4. etcd gRPC: serializable range, 64 clients"),
    (
        "g5",
        "g5. etcd gRPC: CAS txn (compare mod_revision, put), 64 clients",
    ),
    (
        "w1",
        "w1. etcd gRPC: put under a prefix with 1000 watchers of it, 64 clients (writes)",
    ),
    (
        "l1",
        "l1. etcd gRPC: lease churn (grant + put with lease + revoke), 64 clients",
    ),
];

pub fn cmd_report(dir: &str) {
    let dir = std::path::PathBuf::from(dir);
    let mut runs: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .map(|n| n.to_string_lossy().starts_with("run"))
                            .unwrap_or(false)
                })
                .collect()
        })
        .unwrap_or_default();
    runs.sort();
    let n = runs.len();
    // median of one metric over the runs that have it
    let med = |sys: &str, sc: &str, key: &str| -> Option<f64> {
        median(
            runs.iter()
                .filter_map(|r| {
                    read_kv(&r.join(format!("{sys}_{sc}.txt")))
                        .get(key)
                        .and_then(|v| v.parse().ok())
                })
                .collect(),
        )
    };
    let floor = read_kv(&dir.join("floor.txt"));
    let f = |k: &str| floor.get(k).cloned().unwrap_or_else(|| "?".into());
    println!();
    println!("Command: `{}` — {} s measured after {} s warm-up per scenario, {} clients (b–f), {} keys, clients of a–d/f sent to: {}, etcd {}, extra raftkv flags: `{}`",
        f("command"), f("duration_s"), f("warmup_s"), f("clients"), f("keys"), f("reads_to"), f("etcd_version"), f("raftkv_args"));
    println!();
    println!("## Physical floor");
    println!();
    println!("- fio, 4 KiB sequential appends each followed by fdatasync, one job, on the benchmark's disk ({}): {} appends/s; fdatasync p50 {} µs, p99 {} µs; write+fdatasync cycle {} µs",
        f("fs"), f("fio_iops"), f("fio_sync_p50_us"), f("fio_sync_p99_us"), f("fio_cycle_us"));
    println!("- loopback round trip: TCP 1-byte ping-pong p50 {} µs (p99 {}); HTTP/1.1 keep-alive request to a trivial hyper server p50 {} µs (p99 {})",
        f("tcp_rtt_p50_us"), f("tcp_rtt_p99_us"), f("http_rtt_p50_us"), f("http_rtt_p99_us"));
    println!(
        "- cores: {}; idle CPU before each run: {}",
        f("nproc"),
        runs.iter()
            .map(|r| {
                let k = read_kv(&r.join("idle.txt"));
                format!(
                    "{}: raftkv {}% / etcd {}%",
                    r.file_name()
                        .map(|s| s.to_string_lossy().to_string())
                        .unwrap_or_default(),
                    k.get("raftkv").cloned().unwrap_or("?".into()),
                    k.get("etcd").cloned().unwrap_or("?".into())
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!();
    println!(
        "## Scenarios ({} run{}{}; closed loop; latency in ms; ratio = raftkv / etcd)",
        n,
        if n == 1 { "" } else { "s" },
        if n > 1 {
            ", each cell is the median of that cell over the runs"
        } else {
            ""
        }
    );
    println!();
    println!("| scenario | raftkv ops/s | etcd ops/s | ops/s ratio | raftkv p50 / p99 / p99.9 | etcd p50 / p99 / p99.9 | p50 ratio | p99 ratio | CPU s per 1k ops raftkv / etcd | others' CPU, cores raftkv / etcd | notes |");
    println!("|---|---:|---:|---:|---|---|---:|---:|---|---|---|");
    for (sc, name) in SCENARIOS {
        let (ro, eo) = (med("raftkv", sc, "ops_per_s"), med("etcd", sc, "ops_per_s"));
        if ro.is_none() && eo.is_none() {
            continue;
        }
        let lat = |s: &str| {
            format!(
                "{} / {} / {}",
                ms(med(s, sc, "p50_us")),
                ms(med(s, sc, "p99_us")),
                ms(med(s, sc, "p999_us"))
            )
        };
        let mut notes = Vec::new();
        for s in ["raftkv", "etcd"] {
            // flag any single run with > 1% errors
            for r in &runs {
                let kv = read_kv(&r.join(format!("{s}_{sc}.txt")));
                let pct: f64 = kv
                    .get("error_pct")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
                let errs: u64 = kv.get("errors").and_then(|v| v.parse().ok()).unwrap_or(0);
                let conflicts: u64 = kv
                    .get("cas_conflicts")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if conflicts > 0 {
                    notes.push(format!("{s}: {conflicts} CAS conflicts"));
                }
                if sc == "w1" {
                    notes.extend(watch::notes(
                        s,
                        &r.file_name()
                            .map(|x| x.to_string_lossy().to_string())
                            .unwrap_or_default(),
                        &kv,
                    ));
                }
                if pct > 1.0 {
                    notes.push(format!(
                        "**!! {s} {}: {pct:.1}% errors ({})**",
                        r.file_name()
                            .map(|x| x.to_string_lossy().to_string())
                            .unwrap_or_default(),
                        kv.get("error_kinds").cloned().unwrap_or_default()
                    ));
                } else if errs > 0 {
                    notes.push(format!(
                        "{s}: {errs} errors ({})",
                        kv.get("error_kinds").cloned().unwrap_or_default()
                    ));
                }
            }
        }
        if sc == "w1" {
            // medians over runs; missed/duplicated: the sum over runs (must be 0)
            let sum = |s: &str, k: &str| -> u64 {
                runs.iter()
                    .filter_map(|r| {
                        read_kv(&r.join(format!("{s}_w1.txt")))
                            .get(k)
                            .and_then(|v| v.parse::<u64>().ok())
                    })
                    .sum()
            };
            for s in ["raftkv", "etcd"] {
                if med(s, sc, "ops_per_s").is_some() {
                    notes.push(format!("{s}: {} events/s, delivery p50 / p99 {} / {} ms after send, missed {} / duplicated {}",
                        opt(med(s, sc, "events_per_s"), 0), ms(med(s, sc, "delivery_p50_us")), ms(med(s, sc, "delivery_p99_us")),
                        sum(s, "missed"), sum(s, "duplicated")));
                }
            }
        }
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} |",
            opt(ro, 0),
            opt(eo, 0),
            ratio(ro, eo),
            lat("raftkv"),
            lat("etcd"),
            ratio(med("raftkv", sc, "p50_us"), med("etcd", sc, "p50_us")),
            ratio(med("raftkv", sc, "p99_us"), med("etcd", sc, "p99_us")),
            opt(med("raftkv", sc, "cpu_s_per_1k"), 3),
            opt(med("etcd", sc, "cpu_s_per_1k"), 3),
            opt(med("raftkv", sc, "other_cores"), 2),
            opt(med("etcd", sc, "other_cores"), 2),
            notes.join("; ")
        );
    }
    println!();
    println!("CPU s per 1k ops: utime+stime of the 3 server processes over the measured window, per 1000 successful ops. \
Others' CPU: cores busy during the window with anything but the servers and the load generator (other users' jobs, \
kernel I/O threads) — the noise of that cell. Errors (non-2xx, timeouts, I/O, etcd reads without kvs) are never in the latencies; \
a run with more than 1% errors is flagged **!!** in notes.");
    watch::report_table(&runs);
    // goals of issue 4 that the table answers directly
    let fl: Option<f64> = floor.get("fio_sync_p50_us").and_then(|v| v.parse().ok());
    let rtt: Option<f64> = floor.get("tcp_rtt_p50_us").and_then(|v| v.parse().ok());
    if let (Some(fl), Some(rtt), Some(a50)) = (fl, rtt, med("raftkv", "a", "p50_us")) {
        println!();
        println!("raftkv sequential-write p50 / (fio fdatasync p50 + loopback RTT p50) = {:.0} / ({fl:.0} + {rtt:.0}) µs = {:.2}", a50, a50 / (fl + rtt));
    }
    if let (Some(e), Some(b)) = (
        med("raftkv", "e", "ops_per_s"),
        med("raftkv", "b", "ops_per_s"),
    ) {
        println!(
            "raftkv follower writes / leader writes (e / b ops/s) = {:.2}",
            e / b
        );
    }
    // optional parts
    let big: Vec<(String, HashMap<String, String>)> = ["raftkv", "etcd"]
        .iter()
        .map(|s| (s.to_string(), read_kv(&dir.join(format!("big_{s}.txt")))))
        .filter(|(_, kv)| !kv.is_empty())
        .collect();
    if !big.is_empty() {
        println!();
        println!("## Big state (--big)");
        println!();
        println!("| system | keys | load, ops/s (64 clients) | RSS per node after load, MiB | data on disk, MiB | restart of one node (kill -9) until it serves the last write, s |");
        println!("|---|---:|---:|---|---:|---:|");
        for (s, kv) in &big {
            let g = |k: &str| kv.get(k).cloned().unwrap_or_else(|| "?".into());
            println!(
                "| {s} | {} | {} | {} | {} | {} |",
                g("keys"),
                g("load_ops_per_s"),
                g("rss_mib"),
                g("data_mib"),
                g("restart_s")
            );
        }
    }
    let sweep_dir = dir.join("sweep");
    if sweep_dir.is_dir() {
        let mut ws: Vec<u64> = std::fs::read_dir(&sweep_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .strip_prefix("fw")
                            .and_then(|s| s.strip_suffix("_a.txt"))
                            .and_then(|s| s.parse().ok())
                    })
                    .collect()
            })
            .unwrap_or_default();
        ws.sort();
        println!();
        println!("## raftkv --flush-wait-us sweep");
        println!();
        println!("| --flush-wait-us | a. seq. write ops/s | a. p50 / p99 (ms) | b. 64-client write ops/s | b. p50 / p99 (ms) |");
        println!("|---:|---:|---|---:|---|");
        for w in ws {
            let a = read_kv(&sweep_dir.join(format!("fw{w}_a.txt")));
            let b = read_kv(&sweep_dir.join(format!("fw{w}_b.txt")));
            let g = |kv: &HashMap<String, String>, k: &str| {
                kv.get(k).and_then(|v| v.parse::<f64>().ok())
            };
            println!(
                "| {w} | {} | {} / {} | {} | {} / {} |",
                opt(g(&a, "ops_per_s"), 0),
                ms(g(&a, "p50_us")),
                ms(g(&a, "p99_us")),
                opt(g(&b, "ops_per_s"), 0),
                ms(g(&b, "p50_us")),
                ms(g(&b, "p99_us"))
            );
        }
    }
}
