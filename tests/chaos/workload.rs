//! The workload: concurrent clients (one OS thread each, blocking HTTP) issuing get / put /
//! delete / multi-key `POST /key` / compare-and-swap (a read, then `PUT` with `If-Match` its
//! ETag, or `If-None-Match: *` when absent) on a small key set, each request to a random current member,
//! every operation recorded with monotonic invocation and completion times and its outcome
//! (see `history.rs` for how answers map to ok / failed / indeterminate).
//!
//! Reads use the default (linearizable) level only: they are checked. Values are unique
//! decimal numbers from one process-wide counter. Every choice comes from the client's own
//! seeded `Rng`, so a seed replays the same sequence of choices (not the same timing).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use serde_json::Value;

use crate::history::{Action, Observed, Op, Outcome, now_ns};
use crate::rng::Rng;
use crate::topology::Targets;

/// Client id used for the final reads after healing.
pub const FINAL_READER: u32 = 9999;
/// Pause after a failed or indeterminate operation, in ms (range).
const FAIL_BACKOFF_MS: (u64, u64) = (50, 150);
/// Pairs in one multi-key write.
const PUT_MANY_PAIRS_MAX: u64 = 4;

/// A fresh value, unique in this test process.
pub fn next_value() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub fn http_client(timeout: Duration) -> Client {
    Client::builder()
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(Duration::from_millis(500))
        // A fresh connection per request: a refused connect then proves the request was never
        // sent (a certain failure), instead of a dead pooled connection looking ambiguous.
        .pool_max_idle_per_host(0)
        .build()
        .expect("build client")
}

/// Running clients; `stop` ends them and returns the history sorted by invocation time.
pub struct Clients {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<Vec<Op>>>,
}

impl Clients {
    pub fn start(
        n: u32,
        keys: &[String],
        targets: &Targets,
        request_timeout: Duration,
        rng: &Rng,
    ) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..n)
            .map(|c| {
                let (stop, keys, targets) = (Arc::clone(&stop), keys.to_vec(), Arc::clone(targets));
                let rng = rng.fork(1000 + u64::from(c));
                std::thread::Builder::new()
                    .name(format!("chaos-client-{c}"))
                    .spawn(move || client_loop(c, &keys, &targets, request_timeout, rng, &stop))
                    .expect("spawn client")
            })
            .collect();
        Clients { stop, handles }
    }

    pub fn stop(self) -> Vec<Op> {
        self.stop.store(true, Ordering::Relaxed);
        let mut ops: Vec<Op> = self
            .handles
            .into_iter()
            .flat_map(|h| h.join().expect("client thread panicked"))
            .collect();
        ops.sort_by_key(|o| (o.call_ns, o.client));
        ops
    }
}

fn client_loop(
    client: u32,
    keys: &[String],
    targets: &Targets,
    timeout: Duration,
    mut rng: Rng,
    stop: &AtomicBool,
) -> Vec<Op> {
    let http = http_client(timeout);
    let mut ops = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let nodes = targets.read().unwrap_or_else(|e| e.into_inner()).clone();
        if nodes.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let (node, addr) = rng.pick(&nodes).clone();
        let action = match choose(&mut rng, keys) {
            Plan::Op(action) => action,
            Plan::Cas(key) => {
                // Read first (a checked read like any other), then swap what it saw.
                let (read, etag) = read_with_etag(&http, client, node, &addr, &key);
                let expect = match (&read.outcome, &read.read, etag) {
                    (Outcome::Ok, Some(Observed::Absent), _) => Some((None, 0)),
                    (Outcome::Ok, Some(Observed::Value(v)), Some(etag)) => Some((Some(*v), etag)),
                    _ => None,
                };
                ops.push(read);
                let Some((expect, etag)) = expect else {
                    continue;
                };
                Action::Cas {
                    key,
                    expect,
                    etag,
                    value: next_value(),
                }
            }
        };
        let api = rng.below(2);
        let op = execute(&http, client, node, &addr, action, api);
        record(&mut ops, op, &mut rng);
    }
    ops
}

/// Keeps `op` in the history; after a failed or indeterminate one, backs off like a real client
/// before the next (a refused connection or a quick 503 would otherwise turn into a tight loop
/// of thousands of failed requests).
pub fn record(ops: &mut Vec<Op>, op: Op, rng: &mut Rng) {
    let failed = op.outcome != Outcome::Ok;
    ops.push(op);
    if failed {
        std::thread::sleep(Duration::from_millis(
            rng.range(FAIL_BACKOFF_MS.0, FAIL_BACKOFF_MS.1),
        ));
    }
}

/// What a client does next: one operation, or a compare-and-swap (a read, then the swap).
enum Plan {
    Op(Action),
    Cas(String),
}

fn choose(rng: &mut Rng, keys: &[String]) -> Plan {
    let key = rng.pick(keys).clone();
    Plan::Op(match rng.below(100) {
        0..45 => Action::Read { key },
        45..65 => Action::Put {
            key,
            value: next_value(),
        },
        65..73 => Action::Delete { key },
        73..88 => return Plan::Cas(key),
        _ => {
            let n = rng.range(2, PUT_MANY_PAIRS_MAX) as usize;
            let mut pairs: Vec<(String, u64)> = Vec::new();
            while pairs.len() < n {
                let k = rng.pick(keys).clone();
                if !pairs.iter().any(|(p, _)| *p == k) {
                    pairs.push((k, next_value()));
                }
            }
            Action::PutMany { pairs }
        }
    })
}

/// A default-level read of `key` via `/db` that also returns the key's ETag (its mod revision).
fn read_with_etag(
    http: &Client,
    client: u32,
    node: usize,
    addr: &str,
    key: &str,
) -> (Op, Option<i64>) {
    let call_ns = now_ns();
    let sent = http.get(format!("http://{addr}/db/{key}")).send();
    let etag = sent.as_ref().ok().and_then(|r| {
        r.headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_matches('"').parse().ok())
    });
    let (outcome, read, note) = classify_read(sent, key, false);
    let action = Action::Read {
        key: key.to_owned(),
    };
    let op = Op {
        client,
        node,
        action,
        call_ns,
        ret_ns: now_ns(),
        outcome,
        read,
        note,
    };
    (op, etag)
}

/// Sends one operation to node `node` at `addr` and records it. `api` picks between the two
/// API styles (raftd's `/db`, hraftd's `/key`) where both exist.
pub fn execute(
    http: &Client,
    client: u32,
    node: usize,
    addr: &str,
    action: Action,
    api: u64,
) -> Op {
    let base = format!("http://{addr}");
    let call_ns = now_ns();
    let sent = match &action {
        Action::Read { key } if api == 0 => http.get(format!("{base}/db/{key}")).send(),
        Action::Read { key } => http.get(format!("{base}/key/{key}")).send(),
        Action::Put { key, value } if api == 0 => http
            .put(format!("{base}/db/{key}"))
            .body(value.to_string())
            .send(),
        Action::Put { key, value } => http
            .post(format!("{base}/db/{key}"))
            .body(value.to_string())
            .send(),
        Action::Delete { key } if api == 0 => http.delete(format!("{base}/db/{key}")).send(),
        Action::Delete { key } => http.delete(format!("{base}/key/{key}")).send(),
        Action::Cas {
            key, expect, etag, ..
        } if expect.is_none() || *etag == 0 => http
            .put(format!("{base}/db/{key}"))
            .header("if-none-match", "*")
            .body(cas_value(&action))
            .send(),
        Action::Cas { key, etag, .. } => http
            .put(format!("{base}/db/{key}"))
            .header("if-match", format!("\"{etag}\""))
            .body(cas_value(&action))
            .send(),
        Action::CasRefused { .. } => unreachable!("a refused swap is recorded, never sent"),
        Action::PutMany { pairs } => {
            let obj: serde_json::Map<String, Value> = pairs
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
                .collect();
            http.post(format!("{base}/key"))
                .header("content-type", "application/json")
                .body(Value::Object(obj).to_string())
                .send()
        }
    };
    let (outcome, read, note) = match &action {
        Action::Read { key } => classify_read(sent, key, api == 1),
        _ => classify_write(sent),
    };
    // A 412 is a successful observation that the key moved on, not a write.
    let action = match (&action, note.as_str()) {
        (Action::Cas { key, expect, .. }, PRECONDITION_FAILED) => Action::CasRefused {
            key: key.clone(),
            expect: *expect,
        },
        _ => action,
    };
    Op {
        client,
        node,
        action,
        call_ns,
        ret_ns: now_ns(),
        outcome,
        read,
        note,
    }
}

/// `classify_write`'s note for a `412 precondition_failed` (the outcome is `Ok`).
const PRECONDITION_FAILED: &str = "412 precondition_failed";

fn cas_value(action: &Action) -> String {
    match action {
        Action::Cas { value, .. } => value.to_string(),
        _ => String::new(),
    }
}

/// Error code of a JSON error body.
fn code_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default()
}

fn classify_write(sent: reqwest::Result<Response>) -> (Outcome, Option<Observed>, String) {
    let r = match sent {
        // Never connected: the request was never sent.
        Err(e) if e.is_connect() => return (Outcome::Fail, None, format!("connect: {e}")),
        Err(e) => return (Outcome::Unknown, None, format!("transport: {e}")),
        Ok(r) => r,
    };
    let status = r.status().as_u16();
    let index = r
        .headers()
        .get("x-raft-index")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = r.text().unwrap_or_default();
    match (status, code_of(&body).as_str()) {
        (200, _) => (
            Outcome::Ok,
            None,
            format!("index {}", index.unwrap_or_default()),
        ),
        (412, "precondition_failed") => (Outcome::Ok, None, PRECONDITION_FAILED.into()),
        (503, "no_leader") => (Outcome::Fail, None, "503 no_leader".into()),
        (503, "timeout") => (Outcome::Unknown, None, "503 timeout".into()),
        (s, c) => (Outcome::Unknown, None, format!("UNEXPECTED {s} {c} {body}")),
    }
}

fn classify_read(
    sent: reqwest::Result<Response>,
    key: &str,
    json: bool,
) -> (Outcome, Option<Observed>, String) {
    let r = match sent {
        Err(e) => return (Outcome::Fail, None, format!("transport: {e}")),
        Ok(r) => r,
    };
    let status = r.status().as_u16();
    let Ok(body) = r.text() else {
        return (Outcome::Fail, None, format!("{status}, body unreadable"));
    };
    match status {
        200 => {
            let text = if json {
                serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get(key).and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_else(|| format!("<not {{\"{key}\": value}}: {body}>"))
            } else {
                body
            };
            let seen = text
                .parse::<u64>()
                .map_or(Observed::Garbage(text), Observed::Value);
            (Outcome::Ok, Some(seen), "200".into())
        }
        404 if code_of(&body) == "not_found" => (Outcome::Ok, Some(Observed::Absent), "404".into()),
        503 if code_of(&body) == "read_unavailable" => {
            (Outcome::Fail, None, "503 read_unavailable".into())
        }
        // A failed read changed nothing, but this answer is outside the documented contract.
        s => (
            Outcome::Fail,
            None,
            format!("UNEXPECTED {s} {}", code_of(&body)),
        ),
    }
}
