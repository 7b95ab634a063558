//! loadgen: the load generator and helper of `bench/run.sh` (raftkv vs etcd, same generator).
//!
//! Closed loop: each client owns ONE HTTP/1.1 keep-alive connection and sends its next request
//! only after the previous one was answered (or timed out). Warm-up requests are not recorded:
//! a request counts only if it STARTED after the warm-up and FINISHED before the end of the
//! measured window. Latency = send of the request until the whole response body is read, in µs,
//! into an HdrHistogram (3 significant digits). Non-2xx answers, timeouts, I/O errors and (etcd)
//! range answers without `kvs` are errors, counted apart and never in the latency histogram.
//!
//! Subcommands (all talk to 127.0.0.1 only; every loop is bounded in time):
//!   run      --system raftkv|etcd --target H:P[,H:P..] --op write|lread|sread|mixed ...
//!            [--api http|grpc]  grpc: etcd's v3 gRPC API (both systems), also --op cas (grpc.rs),
//!            --op lease (l1) and --op watch [--watchers W --watch-conns C --watch-target H:P,..] (w1, watch.rs)
//!   load     --system raftkv|etcd --target H:P --keys N [--clients C]   (writes keys 0..N once)
//!   rtt      [--seconds S]          loopback TCP ping-pong and HTTP round trip
//!   idle     [--ms MS]              idle CPU % of the machine from /proc/stat
//!   raftkv-ready --target H:P --voters N [--timeout S]   prints "LEADER FOLLOWER1 FOLLOWER2.."
//!   etcd-ready   --target H:P,H:P,.. [--timeout S]       prints "LEADER FOLLOWER1 FOLLOWER2.."
//!   put      --system S --target H:P --key K --value V
//!   wait-read --system S --target H:P --key K --value V [--timeout S]  (stale read; prints ms)
//!   fio      FILE.json              summary of a fio --output-format=json run
//!   report   --dir RESULTS          the table (medians over runs)

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io::Read;
use std::io::Write;
use std::time::Duration;
use std::time::Instant;

mod grpc;
mod watch;

use base64::Engine;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::Request;
use hyper_util::rt::TokioIo;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type AnyErr = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// arguments

struct Args {
    map: HashMap<String, String>,
    positional: Vec<String>,
}

impl Args {
    fn parse(raw: &[String]) -> Args {
        let mut map = HashMap::new();
        let mut positional = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            let a = &raw[i];
            if let Some(name) = a.strip_prefix("--") {
                if let Some((k, v)) = name.split_once('=') {
                    map.insert(k.to_string(), v.to_string());
                } else if i + 1 < raw.len() && !raw[i + 1].starts_with("--") {
                    map.insert(name.to_string(), raw[i + 1].clone());
                    i += 1;
                } else {
                    map.insert(name.to_string(), "true".to_string());
                }
            } else {
                positional.push(a.clone());
            }
            i += 1;
        }
        Args { map, positional }
    }
    fn str(&self, k: &str, default: &str) -> String {
        self.map.get(k).cloned().unwrap_or_else(|| default.to_string())
    }
    fn req(&self, k: &str) -> String {
        match self.map.get(k) {
            Some(v) => v.clone(),
            None => die(&format!("missing --{k}")),
        }
    }
    fn num<T: std::str::FromStr>(&self, k: &str, default: T) -> T {
        match self.map.get(k) {
            Some(v) => v.parse().unwrap_or_else(|_| die(&format!("bad --{k} {v}"))),
            None => default,
        }
    }
}

fn die(msg: &str) -> ! {
    eprintln!("loadgen: {msg}");
    std::process::exit(2)
}

// ---------------------------------------------------------------------------------------------
// requests

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Raftkv,
    Etcd,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Write,
    LinRead,
    StaleRead,
    /// A compare-and-swap txn (gRPC only, see grpc.rs).
    Cas,
    /// Lease grant + put with the lease + revoke (gRPC only, scenario l1, see watch.rs).
    Lease,
}

fn parse_system(s: &str) -> System {
    match s {
        "raftkv" => System::Raftkv,
        "etcd" => System::Etcd,
        _ => die(&format!("unknown system {s}")),
    }
}

/// 16-byte key: `k` + 15 digits.
fn key_name(i: u64) -> String {
    format!("k{i:015}")
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

struct Wire {
    system: System,
    host: String,
    value: Bytes,
    value_b64: String,
}

impl Wire {
    fn request(&self, op: Op, key: &str) -> Request<Full<Bytes>> {
        let b = Request::builder().header(hyper::header::HOST, &self.host);
        match (self.system, op) {
            (System::Raftkv, Op::Write) => b
                .method("PUT")
                .uri(format!("/db/{key}"))
                .body(Full::new(self.value.clone())),
            (System::Raftkv, Op::LinRead) => b.method("GET").uri(format!("/db/{key}")).body(Full::new(Bytes::new())),
            (System::Raftkv, Op::StaleRead) => {
                b.method("GET").uri(format!("/db/{key}?level=stale")).body(Full::new(Bytes::new()))
            }
            (System::Etcd, Op::Write) => b
                .method("POST")
                .uri("/v3/kv/put")
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(format!(
                    "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                    b64(key.as_bytes()),
                    self.value_b64
                )))),
            (System::Etcd, Op::LinRead) => b
                .method("POST")
                .uri("/v3/kv/range")
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(format!("{{\"key\":\"{}\"}}", b64(key.as_bytes()))))),
            (_, Op::Cas | Op::Lease) => die("--op cas/lease needs --api grpc"),
            (System::Etcd, Op::StaleRead) => b
                .method("POST")
                .uri("/v3/kv/range")
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(format!(
                    "{{\"key\":\"{}\",\"serializable\":true}}",
                    b64(key.as_bytes())
                )))),
        }
        .expect("valid request")
    }
}

#[derive(Debug)]
enum Outcome {
    Ok,
    Status(u16),
    Miss,
    Timeout,
    Io,
}

async fn connect(addr: &str) -> Result<Sender, AnyErr> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One request on the connection; `None` in `sender` afterwards means it must be reopened.
async fn one(sender: &mut Option<Sender>, addr: &str, req: Request<Full<Bytes>>, op: Op, system: System, timeout: Duration) -> Outcome {
    if sender.is_none() {
        match tokio::time::timeout(timeout, connect(addr)).await {
            Ok(Ok(s)) => *sender = Some(s),
            _ => return Outcome::Io,
        }
    }
    let Some(s) = sender.as_mut() else { return Outcome::Io };
    let fut = async {
        s.ready().await?;
        let resp = s.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, AnyErr>((status, body))
    };
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => {
            *sender = None;
            Outcome::Timeout
        }
        Ok(Err(_)) => {
            *sender = None;
            Outcome::Io
        }
        Ok(Ok((status, body))) => {
            if !(200..300).contains(&status) {
                Outcome::Status(status)
            } else if system == System::Etcd && op != Op::Write && !contains(&body, b"\"kvs\"") {
                Outcome::Miss
            } else {
                Outcome::Ok
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn outcome_name(o: &Outcome) -> String {
    match o {
        Outcome::Ok => "ok".into(),
        Outcome::Status(s) => format!("http{s}"),
        Outcome::Miss => "miss".into(),
        Outcome::Timeout => "timeout".into(),
        Outcome::Io => "io".into(),
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn value_bytes(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>())
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc

/// utime+stime of a process, in clock ticks (USER_HZ, 100 on Linux).
fn proc_ticks(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn ticks_of(pids: &[String]) -> u64 {
    pids.iter().filter_map(|p| proc_ticks(p)).sum()
}

fn cpu_totals() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = s.lines().next().unwrap_or("");
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total, idle)
}

// ---------------------------------------------------------------------------------------------
// run

struct ClientResult {
    hist: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    cas_conflicts: u64,
}

/// A client's connection: HTTP/1.1 (the seed or etcd JSON APIs) or etcd's gRPC API.
enum Conn {
    Http { sender: Option<Sender>, addr: String, wire: Wire },
    Grpc(Box<grpc::Conn>),
}

impl Conn {
    async fn call(&mut self, op: Op, key: &str, pick: u64, system: System, timeout: Duration) -> grpc::Done {
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

fn cmd_run(a: &Args) {
    let system = parse_system(&a.req("system"));
    let targets: Vec<String> = a.req("target").split(',').map(|s| s.to_string()).collect();
    let op_name = a.req("op");
    let clients: usize = a.num("clients", 64);
    let duration = Duration::from_secs_f64(a.num("duration", 15.0));
    let warmup = Duration::from_secs_f64(a.num("warmup", 3.0));
    let keys: u64 = a.num("keys", 100_000);
    let read_pct: u64 = a.num("read-pct", 90);
    let timeout = Duration::from_millis(a.num("req-timeout-ms", 10_000));
    let pids: Vec<String> = a.str("pids", "").split(',').filter(|s| !s.is_empty()).map(|s| s.to_string()).collect();
    let value_size: usize = a.num("value-size", 100);
    let threads: usize = a.num("threads", 2);
    let grpc_api = match a.str("api", "http").as_str() {
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
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().expect("runtime");
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
                let wire = Wire { system, host: addr.clone(), value: value.clone(), value_b64: value_b64.clone() };
                Conn::Http { sender: s, addr, wire }
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
                let mut r = ClientResult {
                    hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("hist"),
                    ok: 0,
                    errors: BTreeMap::new(),
                    cas_conflicts: 0,
                };
                loop {
                    let start = Instant::now();
                    if start >= end {
                        break;
                    }
                    let x = rng.next();
                    let key = key_name(x % keys);
                    let op = if (x >> 40) % 100 < write_pct { Op::Write } else { read_op };
                    let out = conn.call(op, &key, x >> 20, system, timeout).await;
                    let done = Instant::now();
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
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        for h in handles {
            let r = h.await.expect("client task");
            hist.add(&r.hist).expect("merge");
            ok += r.ok;
            cas_conflicts += r.cas_conflicts;
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
        let other_ticks = (m1.0.saturating_sub(m0.0)).saturating_sub(m1.1.saturating_sub(m0.1)) as f64
            - srv1.saturating_sub(srv0) as f64
            - me1.saturating_sub(me0) as f64;
        let other_cores = (other_ticks / 100.0 / duration.as_secs_f64()).max(0.0);
        (hist, ok, errors, srv1.saturating_sub(srv0), me1.saturating_sub(me0), busy, other_cores, cas_conflicts)
    });
    let (hist, ok, errors, srv_ticks, me_ticks, busy, other_cores, cas_conflicts) = res;
    let nerr: u64 = errors.values().sum();
    let secs = duration.as_secs_f64();
    let mut out = String::new();
    let ops = ok as f64 / secs;
    out += &format!("ops={ok}\nops_per_s={ops:.1}\n");
    out += &format!("p50_us={}\np99_us={}\np999_us={}\nmax_us={}\nmean_us={:.1}\n",
        hist.value_at_quantile(0.50), hist.value_at_quantile(0.99), hist.value_at_quantile(0.999), hist.max(), hist.mean());
    out += &format!("errors={nerr}\nerror_pct={:.3}\n", if ok + nerr > 0 { 100.0 * nerr as f64 / (ok + nerr) as f64 } else { 0.0 });
    if read_op == Op::Cas {
        out += &format!("cas_conflicts={cas_conflicts}\n");
    }
    out += &format!("error_kinds={}\n", errors.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(","));
    if !pids.is_empty() {
        let cpu_s = srv_ticks as f64 / 100.0;
        out += &format!("server_cpu_s={cpu_s:.2}\n");
        if ok > 0 {
            out += &format!("cpu_s_per_1k={:.4}\n", cpu_s * 1000.0 / ok as f64);
        }
    }
    out += &format!("loadgen_cpu_s={:.2}\nmachine_busy_pct={busy:.1}\nother_cores={other_cores:.2}\nclients={clients}\nduration_s={secs}\n", me_ticks as f64 / 100.0);
    print!("{out}");
    if let Some(path) = a.map.get("out") {
        let mut f = std::fs::File::create(path).unwrap_or_else(|e| die(&format!("{path}: {e}")));
        let _ = f.write_all(out.as_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// load

fn cmd_load(a: &Args) {
    let system = parse_system(&a.req("system"));
    let addr = a.req("target");
    let keys: u64 = a.num("keys", 100_000);
    let clients: u64 = a.num("clients", 64);
    let value_size: usize = a.num("value-size", 100);
    let limit = Duration::from_secs(a.num("max-seconds", 3600));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(a.num("threads", 2)).enable_all().build().expect("runtime");
    let value = value_bytes(value_size);
    let value_b64 = b64(&value);
    let t0 = Instant::now();
    let (ok, failed) = rt.block_on(async move {
        let deadline = t0 + limit;
        let mut hs = Vec::new();
        for c in 0..clients {
            let wire = Wire { system, host: addr.clone(), value: value.clone(), value_b64: value_b64.clone() };
            let addr = addr.clone();
            hs.push(tokio::spawn(async move {
                let mut sender = None;
                let (mut ok, mut failed) = (0u64, 0u64);
                let mut i = c;
                while i < keys && Instant::now() < deadline {
                    let key = key_name(i);
                    let mut done = false;
                    for attempt in 0..5 {
                        let out = one(&mut sender, &addr, wire.request(Op::Write, &key), Op::Write, system, Duration::from_secs(10)).await;
                        if matches!(out, Outcome::Ok) {
                            done = true;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                    }
                    if done { ok += 1 } else { failed += 1 }
                    i += clients;
                }
                (ok, failed)
            }));
        }
        let (mut ok, mut failed) = (0, 0);
        for h in hs {
            let (o, f) = h.await.expect("load task");
            ok += o;
            failed += f;
        }
        (ok, failed)
    });
    let secs = t0.elapsed().as_secs_f64();
    println!("loaded={ok}\nload_failed={failed}\nload_s={secs:.1}\nload_ops_per_s={:.0}", ok as f64 / secs);
    if failed > 0 || ok < keys {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// small helpers: one request with a fresh connection

async fn simple(addr: &str, method: &str, path: &str, body: String) -> Result<(u16, Bytes), AnyErr> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), connect(addr)).await??;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let fut = async {
        let resp = s.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, AnyErr>((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut).await?
}

fn small_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn cmd_raftkv_ready(a: &Args) {
    let addr = a.req("target");
    let voters: usize = a.num("voters", 3);
    let deadline = Instant::now() + Duration::from_secs(a.num("timeout", 60));
    let rt = small_rt();
    rt.block_on(async {
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok((200, body)) = simple(&addr, "GET", "/status", String::new()).await {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                    let members = v["members"].as_array().cloned().unwrap_or_default();
                    let nvoters = members.iter().filter(|m| m["voter"] == serde_json::Value::Bool(true)).count();
                    let leader = v["leader"]["api_addr"].as_str().unwrap_or("").to_string();
                    if nvoters >= voters && !leader.is_empty() {
                        let followers: Vec<String> = members
                            .iter()
                            .filter_map(|m| m["api_addr"].as_str().map(|s| s.to_string()))
                            .filter(|s| *s != leader)
                            .collect();
                        println!("{} {}", leader, followers.join(" "));
                        return;
                    }
                    last = format!("voters={nvoters} leader={leader:?}");
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        die(&format!("raftkv cluster at {addr} not ready in time ({last})"));
    });
}

fn cmd_etcd_ready(a: &Args) {
    let targets: Vec<String> = a.req("target").split(',').map(|s| s.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(a.num("timeout", 60));
    let rt = small_rt();
    rt.block_on(async {
        while Instant::now() < deadline {
            let mut ids = Vec::new();
            let mut leader_id = None;
            for t in &targets {
                match simple(t, "POST", "/v3/maintenance/status", "{}".into()).await {
                    Ok((200, body)) => {
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                        let me = v["header"]["member_id"].as_str().unwrap_or("").to_string();
                        let l = v["leader"].as_str().unwrap_or("").to_string();
                        if !l.is_empty() && l != "0" {
                            leader_id = Some(l);
                        }
                        ids.push((t.clone(), me));
                    }
                    _ => break,
                }
            }
            if ids.len() == targets.len() {
                if let Some(l) = leader_id {
                    if let Some((leader, _)) = ids.iter().find(|(_, id)| *id == l) {
                        // a write must succeed before the cluster counts as ready
                        let body = format!("{{\"key\":\"{}\",\"value\":\"{}\"}}", b64(b"bench-ready"), b64(b"1"));
                        if let Ok((200, _)) = simple(leader, "POST", "/v3/kv/put", body).await {
                            let followers: Vec<String> = ids.iter().filter(|(_, id)| *id != l).map(|(t, _)| t.clone()).collect();
                            println!("{} {}", leader, followers.join(" "));
                            return;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        die("etcd cluster not ready in time");
    });
}

fn cmd_put(a: &Args) {
    let system = parse_system(&a.req("system"));
    let addr = a.req("target");
    let (key, value) = (a.req("key"), a.req("value"));
    let rt = small_rt();
    let r = rt.block_on(async {
        match system {
            System::Raftkv => simple(&addr, "PUT", &format!("/db/{key}"), value).await,
            System::Etcd => {
                simple(&addr, "POST", "/v3/kv/put", format!("{{\"key\":\"{}\",\"value\":\"{}\"}}", b64(key.as_bytes()), b64(value.as_bytes()))).await
            }
        }
    });
    match r {
        Ok((200, _)) => {}
        other => die(&format!("put failed: {other:?}")),
    }
}

/// Polls a stale/serializable read until it returns `value`; prints the ms it took.
fn cmd_wait_read(a: &Args) {
    let system = parse_system(&a.req("system"));
    let addr = a.req("target");
    let (key, value) = (a.req("key"), a.req("value"));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(a.num("timeout", 300));
    let rt = small_rt();
    rt.block_on(async {
        while Instant::now() < deadline {
            let r = match system {
                System::Raftkv => simple(&addr, "GET", &format!("/db/{key}?level=stale"), String::new()).await,
                System::Etcd => {
                    simple(&addr, "POST", "/v3/kv/range", format!("{{\"key\":\"{}\",\"serializable\":true}}", b64(key.as_bytes()))).await
                }
            };
            if let Ok((200, body)) = r {
                let hit = match system {
                    System::Raftkv => body.as_ref() == value.as_bytes(),
                    System::Etcd => contains(&body, format!("\"value\":\"{}\"", b64(value.as_bytes())).as_bytes()),
                };
                if hit {
                    println!("{}", t0.elapsed().as_millis());
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        die(&format!("{key} never read back from {addr}"));
    });
}

// ---------------------------------------------------------------------------------------------
// physical floor: loopback round trips, idle CPU, fio

fn cmd_rtt(a: &Args) {
    let secs: f64 = a.num("seconds", 2.0);
    // 1. TCP ping-pong of one byte between two threads (blocking sockets).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut b = [0u8; 1];
            while s.read_exact(&mut b).is_ok() {
                if s.write_all(&b).is_err() {
                    break;
                }
            }
        }
    });
    let mut hist: Histogram<u64> = Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("hist");
    {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.set_nodelay(true).expect("nodelay");
        c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut b = [7u8; 1];
        while Instant::now() < end {
            let t = Instant::now();
            if c.write_all(&b).is_err() || c.read_exact(&mut b).is_err() {
                break;
            }
            let _ = hist.record(t.elapsed().as_nanos() as u64);
        }
    }
    let _ = server.join();
    let tcp = (hist.len(), hist.value_at_quantile(0.5), hist.value_at_quantile(0.99));

    // 2. HTTP/1.1 round trip (the loadgen's own client, one keep-alive connection) against a
    //    trivial hyper server answering 200 "ok", each on its own thread.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr").to_string();
    let server_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        server_rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).expect("listener");
            let serve = async {
                loop {
                    let Ok((s, _)) = l.accept().await else { continue };
                    let _ = s.set_nodelay(true);
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(|_req| async {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                        });
                        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
                    });
                }
            };
            tokio::select! { _ = serve => {}, _ = stop_rx => {} }
        });
    });
    let client_rt = small_rt();
    let http = client_rt.block_on(async {
        let mut h: Histogram<u64> = Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("hist");
        let mut s = Some(connect(&addr).await.expect("connect"));
        let end = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < end {
            let req = Request::builder().uri("/").header(hyper::header::HOST, &addr).body(Full::new(Bytes::new())).expect("req");
            let t = Instant::now();
            match one(&mut s, &addr, req, Op::Write, System::Raftkv, Duration::from_secs(5)).await {
                Outcome::Ok => {
                    let _ = h.record(t.elapsed().as_nanos() as u64);
                }
                _ => break,
            }
        }
        (h.len(), h.value_at_quantile(0.5), h.value_at_quantile(0.99))
    });
    let _ = stop_tx.send(());
    let _ = server.join();
    println!("tcp_rtt_count={}\ntcp_rtt_p50_us={:.1}\ntcp_rtt_p99_us={:.1}", tcp.0, tcp.1 as f64 / 1000.0, tcp.2 as f64 / 1000.0);
    println!("http_rtt_count={}\nhttp_rtt_p50_us={:.1}\nhttp_rtt_p99_us={:.1}", http.0, http.1 as f64 / 1000.0, http.2 as f64 / 1000.0);
}

fn cmd_idle(a: &Args) {
    let ms: u64 = a.num("ms", 1000);
    let (t0, i0) = cpu_totals();
    std::thread::sleep(Duration::from_millis(ms));
    let (t1, i1) = cpu_totals();
    let idle = 100.0 * (i1 - i0) as f64 / (t1 - t0).max(1) as f64;
    println!("{idle:.1}");
}

fn cmd_fio(a: &Args) {
    let path = a.positional.get(1).cloned().unwrap_or_else(|| die("fio FILE.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| die(&format!("{path}: {e}")));
    // fio may print warnings before the JSON object
    let text = &text[text.find('{').unwrap_or(0)..];
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| die(&format!("{path}: {e}")));
    let job = &v["jobs"][0];
    let iops = job["write"]["iops"].as_f64().unwrap_or(0.0);
    let pct = |sect: &serde_json::Value, p: &str| sect["percentile"][p].as_f64().unwrap_or(0.0) / 1000.0;
    let sync = &job["sync"]["lat_ns"];
    let wr = &job["write"]["clat_ns"];
    println!("fio_iops={iops:.0}");
    println!("fio_sync_p50_us={:.0}\nfio_sync_p99_us={:.0}", pct(sync, "50.000000"), pct(sync, "99.000000"));
    println!("fio_write_p50_us={:.0}\nfio_write_p99_us={:.0}", pct(wr, "50.000000"), pct(wr, "99.000000"));
    // whole append+fdatasync cycle: 1/iops on one sync job
    if iops > 0.0 {
        println!("fio_cycle_us={:.0}", 1e6 / iops);
    }
}

// ---------------------------------------------------------------------------------------------
// report

fn read_kv(path: &std::path::Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect()
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

fn ms(us: Option<f64>) -> String {
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

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}")).unwrap_or_else(|| "–".into())
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
    ("g5", "g5. etcd gRPC: CAS txn (compare mod_revision, put), 64 clients"),
    ("w1", "w1. etcd gRPC: put under a prefix with 1000 watchers of it, 64 clients (writes)"),
    ("l1", "l1. etcd gRPC: lease churn (grant + put with lease + revoke), 64 clients"),
];

fn cmd_report(a: &Args) {
    let dir = std::path::PathBuf::from(a.req("dir"));
    let mut runs: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir() && p.file_name().map(|n| n.to_string_lossy().starts_with("run")).unwrap_or(false)).collect())
        .unwrap_or_default();
    runs.sort();
    let n = runs.len();
    // median of one metric over the runs that have it
    let med = |sys: &str, sc: &str, key: &str| -> Option<f64> {
        median(runs.iter().filter_map(|r| read_kv(&r.join(format!("{sys}_{sc}.txt"))).get(key).and_then(|v| v.parse().ok())).collect())
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
    println!("- cores: {}; idle CPU before each run: {}", f("nproc"),
        runs.iter().map(|r| {
            let k = read_kv(&r.join("idle.txt"));
            format!("{}: raftkv {}% / etcd {}%", r.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default(),
                k.get("raftkv").cloned().unwrap_or("?".into()), k.get("etcd").cloned().unwrap_or("?".into()))
        }).collect::<Vec<_>>().join("; "));
    println!();
    println!("## Scenarios ({} run{}{}; closed loop; latency in ms; ratio = raftkv / etcd)", n, if n == 1 { "" } else { "s" },
        if n > 1 { ", each cell is the median of that cell over the runs" } else { "" });
    println!();
    println!("| scenario | raftkv ops/s | etcd ops/s | ops/s ratio | raftkv p50 / p99 / p99.9 | etcd p50 / p99 / p99.9 | p50 ratio | p99 ratio | CPU s per 1k ops raftkv / etcd | others' CPU, cores raftkv / etcd | notes |");
    println!("|---|---:|---:|---:|---|---|---:|---:|---|---|---|");
    for (sc, name) in SCENARIOS {
        let (ro, eo) = (med("raftkv", sc, "ops_per_s"), med("etcd", sc, "ops_per_s"));
        if ro.is_none() && eo.is_none() {
            continue;
        }
        let lat = |s: &str| format!("{} / {} / {}", ms(med(s, sc, "p50_us")), ms(med(s, sc, "p99_us")), ms(med(s, sc, "p999_us")));
        let mut notes = Vec::new();
        for s in ["raftkv", "etcd"] {
            // flag any single run with > 1% errors
            for r in &runs {
                let kv = read_kv(&r.join(format!("{s}_{sc}.txt")));
                let pct: f64 = kv.get("error_pct").and_then(|v| v.parse().ok()).unwrap_or(0.0);
                let errs: u64 = kv.get("errors").and_then(|v| v.parse().ok()).unwrap_or(0);
                let conflicts: u64 = kv.get("cas_conflicts").and_then(|v| v.parse().ok()).unwrap_or(0);
                if conflicts > 0 {
                    notes.push(format!("{s}: {conflicts} CAS conflicts"));
                }
                if sc == "w1" {
                    notes.extend(watch::notes(s, &r.file_name().map(|x| x.to_string_lossy().to_string()).unwrap_or_default(), &kv));
                }
                if pct > 1.0 {
                    notes.push(format!("**!! {s} {}: {pct:.1}% errors ({})**", r.file_name().map(|x| x.to_string_lossy().to_string()).unwrap_or_default(), kv.get("error_kinds").cloned().unwrap_or_default()));
                } else if errs > 0 {
                    notes.push(format!("{s}: {errs} errors ({})", kv.get("error_kinds").cloned().unwrap_or_default()));
                }
            }
        }
        if sc == "w1" {
            // medians over runs; missed/duplicated: the sum over runs (must be 0)
            let sum = |s: &str, k: &str| -> u64 { runs.iter().filter_map(|r| read_kv(&r.join(format!("{s}_w1.txt"))).get(k).and_then(|v| v.parse::<u64>().ok())).sum() };
            for s in ["raftkv", "etcd"] {
                if med(s, sc, "ops_per_s").is_some() {
                    notes.push(format!("{s}: {} events/s, delivery p50 / p99 {} / {} ms after send, missed {} / duplicated {}",
                        opt(med(s, sc, "events_per_s"), 0), ms(med(s, sc, "delivery_p50_us")), ms(med(s, sc, "delivery_p99_us")),
                        sum(s, "missed"), sum(s, "duplicated")));
                }
            }
        }
        println!("| {name} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} |",
            opt(ro, 0), opt(eo, 0), ratio(ro, eo), lat("raftkv"), lat("etcd"),
            ratio(med("raftkv", sc, "p50_us"), med("etcd", sc, "p50_us")),
            ratio(med("raftkv", sc, "p99_us"), med("etcd", sc, "p99_us")),
            opt(med("raftkv", sc, "cpu_s_per_1k"), 3), opt(med("etcd", sc, "cpu_s_per_1k"), 3),
            opt(med("raftkv", sc, "other_cores"), 2), opt(med("etcd", sc, "other_cores"), 2),
            notes.join("; "));
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
    if let (Some(e), Some(b)) = (med("raftkv", "e", "ops_per_s"), med("raftkv", "b", "ops_per_s")) {
        println!("raftkv follower writes / leader writes (e / b ops/s) = {:.2}", e / b);
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
            println!("| {s} | {} | {} | {} | {} | {} |", g("keys"), g("load_ops_per_s"), g("rss_mib"), g("data_mib"), g("restart_s"));
        }
    }
    let sweep_dir = dir.join("sweep");
    if sweep_dir.is_dir() {
        let mut ws: Vec<u64> = std::fs::read_dir(&sweep_dir)
            .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_string_lossy().strip_prefix("fw").and_then(|s| s.strip_suffix("_a.txt")).and_then(|s| s.parse().ok())).collect())
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
            let g = |kv: &HashMap<String, String>, k: &str| kv.get(k).and_then(|v| v.parse::<f64>().ok());
            println!("| {w} | {} | {} / {} | {} | {} / {} |", opt(g(&a, "ops_per_s"), 0), ms(g(&a, "p50_us")), ms(g(&a, "p99_us")),
                opt(g(&b, "ops_per_s"), 0), ms(g(&b, "p50_us")), ms(g(&b, "p99_us")));
        }
    }
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let a = Args::parse(&raw);
    match a.positional.first().map(|s| s.as_str()) {
        Some("run") => cmd_run(&a),
        Some("load") => cmd_load(&a),
        Some("rtt") => cmd_rtt(&a),
        Some("idle") => cmd_idle(&a),
        Some("raftkv-ready") => cmd_raftkv_ready(&a),
        Some("etcd-ready") => cmd_etcd_ready(&a),
        Some("put") => cmd_put(&a),
        Some("wait-read") => cmd_wait_read(&a),
        Some("fio") => cmd_fio(&a),
        Some("report") => cmd_report(&a),
        _ => die("usage: loadgen run|load|rtt|idle|raftkv-ready|etcd-ready|put|wait-read|fio|report [--flags]; see src/main.rs"),
    }
}
