//! Cluster test harness: starts real `raftkv` processes on loopback, owns their data directories
//! (all inside one `TempDir` per test), captures each node's stdout/stderr to a log file next to
//! its data dir, and talks HTTP to the nodes the way a user with curl would.
//!
//! What it owns: child processes, ports, temp dirs, one HTTP client. What it does not own: any
//! knowledge of the product's internals; everything goes through the command line and HTTP.
//!
//! Invariants:
//! - every wait is a condition polled until a deadline (`wait_until`), never a fixed sleep;
//! - every HTTP request has a timeout (`HTTP_TIMEOUT`) and only ever goes to 127.0.0.1;
//! - on Drop every child is SIGKILLed through its own `Child` handle (never by name) and reaped;
//!   if the test is panicking, the tail of every node's log is printed first, then the temp dir
//!   is removed (set `RAFTKV_KEEP_TMP=1` to keep it for inspection).

#![allow(dead_code)] // not every story uses every helper

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::blocking::Client;
use serde_json::Value;
use tempfile::TempDir;

/// Timeout of every single HTTP request the harness makes.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a freshly spawned node gets to answer `GET /status`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long live nodes get to agree on a leader.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long replication / catch-up / membership changes get to become visible.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);
/// Polling period of `wait_until`.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How many times `start` retries with fresh ports when the node could not bind.
const START_ATTEMPTS_MAX: usize = 5;
/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES: usize = 80;
/// Content type `curl -d` sends; the README commands use it for both APIs.
const CURL_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// Something a `wait_until` probe may return: `bool` (done or not) or `Option<T>` (done with T).
pub trait Probe {
    type Out;
    fn done(self) -> Option<Self::Out>;
}
impl Probe for bool {
    type Out = ();
    fn done(self) -> Option<()> {
        self.then_some(())
    }
}
impl<T> Probe for Option<T> {
    type Out = T;
    fn done(self) -> Option<T> {
        self
    }
}

/// Polls `probe` every `POLL_INTERVAL` until it reports done; panics naming `what` at the deadline.
pub fn wait_until<P: Probe>(timeout: Duration, what: &str, mut probe: impl FnMut() -> P) -> P::Out {
    wait_until_with(timeout, what, || probe().done().ok_or_else(String::new))
}

/// Like `wait_until`, but the probe explains what it saw (`Err(observation)`); the last
/// observation is part of the panic message, so a timeout says *why* it was not done.
pub fn wait_until_with<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(seen) => {
                if Instant::now() >= deadline {
                    panic!(
                        "timed out after {:.1}s waiting until {what}; last seen: {}",
                        start.elapsed().as_secs_f64(),
                        if seen.is_empty() { "-" } else { &seen }
                    );
                }
            }
        }
        std::thread::sleep(POLL_INTERVAL); // polling period, not synchronisation
    }
}

// ---------------------------------------------------------------------------------------------
// Ports and arguments
// ---------------------------------------------------------------------------------------------

/// Ports handed out in this test process, so parallel tests never pick the same one.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A loopback port that was free a moment ago and was not handed out before in this process.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        let mut taken = handed_out().lock().unwrap_or_else(|e| e.into_inner());
        if taken.insert(port) {
            return port;
        }
    }
}

/// The ports offered to a node being started: `http` for the API, `raft` for `-raddr` (unused
/// when the node's flags don't mention it).
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub http: u16,
    pub raft: u16,
}

/// Splits a command line written like the README (`"-p 4002 -join localhost:4001"`) into args.
pub fn argv(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

/// The flags with any `-join X` / `--join X` / `-join=X` removed: how a node is restarted.
fn without_join(flags: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_next = false;
    for f in flags {
        if skip_next {
            skip_next = false;
        } else if f == "-join" || f == "--join" {
            skip_next = true;
        } else if !(f.starts_with("-join=") || f.starts_with("--join=")) {
            out.push(f.clone());
        }
    }
    out
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_raftkv")
}

// ---------------------------------------------------------------------------------------------
// HTTP responses
// ---------------------------------------------------------------------------------------------

/// Read consistency of a GET.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// No query parameter: the product's default, linearizable.
    Linearizable,
    /// `?level=stale`: answered from the local replica.
    Stale,
}

impl Level {
    fn query(self) -> &'static str {
        match self {
            Level::Linearizable => "",
            Level::Stale => "?level=stale",
        }
    }
}

/// One HTTP answer, with what was asked (for messages) and how long it took.
#[derive(Debug, Clone)]
pub struct Resp {
    pub what: String,
    pub status: u16,
    pub body: String,
    pub elapsed: Duration,
}

impl Resp {
    /// The body as JSON; panics (showing the body) when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {:?}", self.what, self.body))
    }

    /// Asserts the status code.
    pub fn expect_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status, status,
            "{}: expected HTTP {status}, got {} with body {:?}",
            self.what, self.status, self.body
        );
        self
    }

    /// Asserts 200 and the exact body.
    pub fn expect_body(&self, body: &str) -> &Self {
        self.expect_status(200);
        assert_eq!(self.body, body, "{}: unexpected body", self.what);
        self
    }

    /// Asserts 200 and a JSON body equal to `expected`.
    pub fn expect_json(&self, expected: &Value) -> &Self {
        self.expect_status(200);
        assert_eq!(
            &self.json(),
            expected,
            "{}: unexpected JSON body",
            self.what
        );
        self
    }

    /// The `code` field of a JSON error body, if any.
    pub fn error_code(&self) -> Option<String> {
        let v: Value = serde_json::from_str(&self.body).ok()?;
        v.get("code")?.as_str().map(str::to_owned)
    }

    /// Asserts the status is one of `statuses` and the body is a JSON error
    /// `{"error": "<message>", "code": "<code>"}` whose code is one of `codes` (any if empty).
    pub fn expect_error(&self, statuses: &[u16], codes: &[&str]) -> &Self {
        assert!(
            statuses.contains(&self.status),
            "{}: expected HTTP {statuses:?}, got {} with body {:?}",
            self.what,
            self.status,
            self.body
        );
        let v = self.json();
        let msg = v.get("error").and_then(Value::as_str);
        assert!(
            msg.is_some_and(|m| !m.is_empty()),
            "{}: error body lacks a non-empty \"error\" string: {}",
            self.what,
            self.body
        );
        if !codes.is_empty() {
            let code = v.get("code").and_then(Value::as_str).unwrap_or("<missing>");
            assert!(
                codes.contains(&code),
                "{}: expected error code {codes:?}, got {code:?} (body {})",
                self.what,
                self.body
            );
        }
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    Running,
    Paused,
    Dead,
}

/// One `raftkv` process slot: how it was started, where its files are, and its child (if any).
#[derive(Debug)]
pub struct NodeProc {
    pub index: usize,
    pub ports: Ports,
    /// Flags as first given (without the data dir, which is always the last argument).
    pub flags: Vec<String>,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// The node's name as reported by `/status` (`id`), known once it answered once.
    pub id: Option<String>,
    pub state: NodeState,
    child: Option<Child>,
}

impl NodeProc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
    /// `127.0.0.1:<http port>`: where the harness talks to this node.
    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.http)
    }
}

enum StartFailure {
    PortInUse(String),
    Exited(String),
    Timeout(String),
}

/// A set of `raftkv` nodes belonging to one test.
pub struct Cluster {
    test: String,
    started: Instant,
    tmp: Option<TempDir>,
    nodes: Vec<NodeProc>,
    http: Client,
}

impl Cluster {
    /// An empty cluster for test `test`; nodes are added with `start`.
    pub fn new(test: &str) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("raftkv-{test}-"))
            .tempdir()
            .expect("create temp dir");
        let http = Client::builder()
            .no_proxy() // only ever loopback
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(0) // nodes get killed and restarted: never reuse a connection
            .build()
            .expect("build HTTP client");
        eprintln!("== cluster {test}: temp dir {}", tmp.path().display());
        Cluster {
            test: test.to_owned(),
            started: Instant::now(),
            tmp: Some(tmp),
            nodes: Vec::new(),
            http,
        }
    }

    /// Announces a phase of the story.
    pub fn phase(&self, what: &str) {
        eprintln!(
            "== phase: {what}   [{} +{:.1}s]",
            self.test,
            self.started.elapsed().as_secs_f64()
        );
    }

    pub fn root(&self) -> &Path {
        self.tmp.as_ref().expect("temp dir").path()
    }

    pub fn node(&self, i: usize) -> &NodeProc {
        &self.nodes[i]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`'s name (`/status` id).
    pub fn id(&self, i: usize) -> String {
        self.nodes[i]
            .id
            .clone()
            .unwrap_or_else(|| panic!("node {i} never reported its id"))
    }

    /// Index of the node whose name is `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id.as_deref() == Some(id))
    }

    /// Indices of nodes that are running (not paused, not dead).
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].state == NodeState::Running)
            .collect()
    }

    // ----- process control ------------------------------------------------------------------

    /// Starts a new node: `args(ports)` gives its flags, the harness appends its data dir
    /// (`<tmp>/n<i>/data`) and waits until `GET /status` answers. Retries with fresh ports if the
    /// node could not bind. Returns the node's index.
    pub fn start(&mut self, args: impl Fn(&Ports) -> Vec<String>) -> usize {
        let index = self.nodes.len();
        let data_dir = self.root().join(format!("n{index}")).join("data");
        let log_path = self.root().join(format!("n{index}.log"));
        for attempt in 1..=START_ATTEMPTS_MAX {
            let ports = Ports {
                http: free_port(),
                raft: free_port(),
            };
            let flags = args(&ports);
            let _ = fs::remove_dir_all(&data_dir); // a failed attempt may have written to it
            fs::create_dir_all(&data_dir).expect("create data dir");
            let mut node = NodeProc {
                index,
                ports,
                flags,
                data_dir: data_dir.clone(),
                log_path: log_path.clone(),
                id: None,
                state: NodeState::Running,
                child: None,
            };
            node.child = Some(spawn(&node));
            match await_ready(&self.http, &mut node, READY_TIMEOUT) {
                Ok(()) => {
                    eprintln!(
                        "   node {index} ({}) up: pid {:?}, http {}, flags {:?}",
                        node.id.as_deref().unwrap_or("?"),
                        node.pid(),
                        node.http_addr(),
                        node.flags
                    );
                    self.nodes.push(node);
                    return index;
                }
                Err(StartFailure::PortInUse(why)) if attempt < START_ATTEMPTS_MAX => {
                    eprintln!("   node {index}: port clash ({why}); retrying with fresh ports");
                    reap(&mut node);
                }
                Err(
                    StartFailure::PortInUse(why)
                    | StartFailure::Exited(why)
                    | StartFailure::Timeout(why),
                ) => {
                    self.nodes.push(node); // so Drop kills it and prints its log
                    panic!("node {index} did not start: {why}");
                }
            }
        }
        unreachable!("start loop returns or panics")
    }

    /// Starts a node raftd-style: `-p <port> [-join localhost:<port of node j>] <extra>`.
    pub fn start_raftd(&mut self, join: Option<usize>, extra: &str) -> usize {
        let join = join
            .map(|j| format!("-join localhost:{}", self.nodes[j].ports.http))
            .unwrap_or_default();
        let extra = extra.to_owned();
        self.start(move |p| argv(&format!("-p {} {join} {extra}", p.http)))
    }

    /// Starts a node hraftd-style: `-haddr 127.0.0.1:<p> -raddr 127.0.0.1:<r> -id <id>
    /// [-join 127.0.0.1:<http port of node j>] <extra>`.
    pub fn start_hraftd(&mut self, id: &str, join: Option<usize>, extra: &str) -> usize {
        let join = join
            .map(|j| format!("-join 127.0.0.1:{}", self.nodes[j].ports.http))
            .unwrap_or_default();
        let (id, extra) = (id.to_owned(), extra.to_owned());
        self.start(move |p| {
            argv(&format!(
                "-haddr 127.0.0.1:{} -raddr 127.0.0.1:{} -id {id} {join} {extra}",
                p.http, p.raft
            ))
        })
    }

    /// Three raftd-style nodes (the second and third join the first), each with `extra` flags;
    /// returns once every node sees three voters and all agree on a leader.
    pub fn three_raftd(test: &str, extra: &str) -> Cluster {
        let mut c = Cluster::new(test);
        c.phase(&format!(
            "start a three-node cluster (raftd flags, extra: {extra:?})"
        ));
        let a = c.start_raftd(None, extra);
        c.wait_leader_is(a);
        c.start_raftd(Some(a), extra);
        c.start_raftd(Some(a), extra);
        c.wait_all_voters(3);
        c.leader();
        c
    }

    /// Three hraftd-style nodes named `node0..node2` (node1 and node2 join node0).
    pub fn three_hraftd(test: &str, extra: &str) -> Cluster {
        let mut c = Cluster::new(test);
        c.phase(&format!(
            "start a three-node cluster (hraftd flags, extra: {extra:?})"
        ));
        let a = c.start_hraftd("node0", None, extra);
        c.wait_leader_is(a);
        c.start_hraftd("node1", Some(a), extra);
        c.start_hraftd("node2", Some(a), extra);
        c.wait_all_voters(3);
        c.leader();
        c
    }

    /// Waits until node `i` answers `GET /status` (panics if it exits or the deadline passes).
    pub fn wait_ready(&mut self, i: usize) {
        match await_ready(&self.http, &mut self.nodes[i], READY_TIMEOUT) {
            Ok(()) => {}
            Err(
                StartFailure::PortInUse(w) | StartFailure::Exited(w) | StartFailure::Timeout(w),
            ) => {
                panic!("node {i} is not ready: {w}")
            }
        }
    }

    /// SIGKILLs node `i` (through its Child handle) and reaps it.
    pub fn kill9(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        eprintln!("   kill -9 node {i} (pid {:?})", node.pid());
        reap(node);
    }

    /// SIGSTOPs node `i`: it keeps its sockets but answers nothing.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, "-STOP");
        self.nodes[i].state = NodeState::Paused;
    }

    /// SIGCONTs a paused node `i`.
    pub fn resume(&mut self, i: usize) {
        self.signal(i, "-CONT");
        self.nodes[i].state = NodeState::Running;
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self.nodes[i]
            .pid()
            .unwrap_or_else(|| panic!("node {i} has no process"));
        eprintln!("   kill {sig} node {i} (pid {pid})");
        let ok = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("run kill {sig} {pid}: {e}"))
            .success();
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// Starts node `i` again with its original flags minus `-join`, keeping its data dir and
    /// ports (kills it first if it is still running). Does not wait for readiness.
    pub fn respawn(&mut self, i: usize) {
        if self.nodes[i].child.is_some() {
            self.kill9(i);
        }
        let node = &mut self.nodes[i];
        node.flags = without_join(&node.flags);
        node.child = Some(spawn(node));
        node.state = NodeState::Running;
        eprintln!(
            "   restarted node {i} (pid {:?}) with {:?}",
            node.pid(),
            node.flags
        );
    }

    /// `respawn` and wait until it answers `/status`.
    pub fn restart(&mut self, i: usize) {
        self.respawn(i);
        self.wait_ready(i);
    }

    // ----- HTTP -----------------------------------------------------------------------------

    pub fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}{path}", self.nodes[i].http_addr())
    }

    /// Sends one request to node `i`; `Err` on transport failure (refused, timeout, reset).
    pub fn try_request(
        &self,
        i: usize,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Resp, String> {
        let what = format!("{method} {path} on node {i}");
        let mut req = self.http.request(method, self.url(i, path));
        if let Some((bytes, content_type)) = body {
            req = req.header("content-type", content_type).body(bytes);
        }
        let t0 = Instant::now();
        let r = req.send().map_err(|e| format!("{what}: {e}"))?;
        let status = r.status().as_u16();
        let body = r.text().map_err(|e| format!("{what}: reading body: {e}"))?;
        Ok(Resp {
            what,
            status,
            body,
            elapsed: t0.elapsed(),
        })
    }

    /// Like `try_request` but panics on transport failure (every request must get an answer).
    pub fn request(
        &self,
        i: usize,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Resp {
        self.try_request(i, method, path, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `curl -XPOST <node>/db/<key> -d '<value>'` (raftd API; key must be URL-safe).
    pub fn put_db(&self, i: usize, key: &str, value: &str) -> Resp {
        self.post_raw(i, &format!("/db/{key}"), value.as_bytes())
    }

    /// `curl <node>/db/<key>[?level=stale]`.
    pub fn get_db(&self, i: usize, key: &str, level: Level) -> Resp {
        self.request(i, Method::GET, &format!("/db/{key}{}", level.query()), None)
    }

    /// `curl -XDELETE <node>/db/<key>`.
    pub fn delete_db(&self, i: usize, key: &str) -> Resp {
        self.request(i, Method::DELETE, &format!("/db/{key}"), None)
    }

    /// `curl -XPOST <node>/key -d '<json>'` (hraftd API), sent with curl's content type.
    pub fn post_key(&self, i: usize, kv: &Value) -> Resp {
        self.post_raw(i, "/key", kv.to_string().as_bytes())
    }

    /// `curl <node>/key/<key>[?level=stale]`.
    pub fn get_key(&self, i: usize, key: &str, level: Level) -> Resp {
        self.request(
            i,
            Method::GET,
            &format!("/key/{key}{}", level.query()),
            None,
        )
    }

    /// `curl -XDELETE <node>/key/<key>`.
    pub fn delete_key(&self, i: usize, key: &str) -> Resp {
        self.request(i, Method::DELETE, &format!("/key/{key}"), None)
    }

    /// POSTs raw bytes as `curl -d` would (content type application/x-www-form-urlencoded).
    pub fn post_raw(&self, i: usize, path: &str, body: &[u8]) -> Resp {
        self.request(
            i,
            Method::POST,
            path,
            Some((body.to_vec(), CURL_CONTENT_TYPE)),
        )
    }

    /// POSTs JSON with `content-type: application/json` (admin calls: /join, /remove).
    pub fn post_json(&self, i: usize, path: &str, body: &Value) -> Resp {
        self.request(
            i,
            Method::POST,
            path,
            Some((body.to_string().into_bytes(), "application/json")),
        )
    }

    /// `GET /status` of node `i` as JSON; `None` if it does not answer 200 with JSON.
    pub fn try_status(&self, i: usize) -> Option<Value> {
        let r = self.try_request(i, Method::GET, "/status", None).ok()?;
        if r.status != 200 {
            return None;
        }
        serde_json::from_str(&r.body).ok()
    }

    /// `GET /status` of node `i`; panics if it does not answer.
    pub fn status(&self, i: usize) -> Value {
        let r = self.request(i, Method::GET, "/status", None);
        r.expect_status(200);
        r.json()
    }

    // ----- cluster-level waits --------------------------------------------------------------

    /// Waits until all live nodes agree on a leader that is itself live and says it is the
    /// leader; returns its index.
    pub fn leader(&self) -> usize {
        self.leader_among(&self.live())
    }

    /// Like `leader`, considering only `nodes`.
    pub fn leader_among(&self, nodes: &[usize]) -> usize {
        wait_until_with(
            LEADER_TIMEOUT,
            &format!("nodes {nodes:?} agree on a leader"),
            || {
                let mut seen = Vec::new();
                let mut leader_ids = HashSet::new();
                for &i in nodes {
                    let Some(s) = self.try_status(i) else {
                        seen.push(format!("n{i}: no status"));
                        leader_ids.insert(None);
                        continue;
                    };
                    let l = s
                        .pointer("/leader/id")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    seen.push(format!(
                        "n{i}: role={} term={} leader={:?}",
                        s["role"], s["term"], l
                    ));
                    leader_ids.insert(l);
                }
                let seen = seen.join("; ");
                if leader_ids.len() != 1 {
                    return Err(seen);
                }
                let Some(Some(id)) = leader_ids.into_iter().next() else {
                    return Err(seen);
                };
                let Some(li) = self.index_of(&id).filter(|li| nodes.contains(li)) else {
                    return Err(format!("{seen} (leader {id} is not among them)"));
                };
                match self.try_status(li) {
                    Some(s) if s["role"] == "leader" => Ok(li),
                    _ => Err(format!("{seen} ({id} does not say it is leader)")),
                }
            },
        )
    }

    /// Waits until node `i` alone is leader of its (one-node) cluster.
    pub fn wait_leader_is(&self, i: usize) {
        let got = self.leader_among(&[i]);
        assert_eq!(got, i, "node {i} should lead its own cluster");
    }

    /// Live nodes other than `leader`.
    pub fn followers(&self, leader: usize) -> Vec<usize> {
        self.live().into_iter().filter(|&i| i != leader).collect()
    }

    /// Names of the voters in node `i`'s `/status` members.
    pub fn voters(&self, i: usize) -> Option<Vec<String>> {
        let s = self.try_status(i)?;
        let members = s.get("members")?.as_array()?;
        let mut v: Vec<String> = members
            .iter()
            .filter(|m| m["voter"] == true)
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect();
        v.sort();
        Some(v)
    }

    /// Waits until node `i` reports exactly `n` members, all voters.
    pub fn wait_voters(&self, i: usize, n: usize) {
        wait_until_with(
            CONVERGE_TIMEOUT,
            &format!("node {i} sees {n} voters"),
            || {
                let s = self.try_status(i).ok_or("no status")?;
                let members = s["members"].as_array().cloned().unwrap_or_default();
                let voters = members.iter().filter(|m| m["voter"] == true).count();
                if members.len() == n && voters == n {
                    Ok(())
                } else {
                    Err(format!("members {}", s["members"]))
                }
            },
        )
    }

    /// `wait_voters(i, n)` for every live node.
    pub fn wait_all_voters(&self, n: usize) {
        for i in self.live() {
            self.wait_voters(i, n);
        }
    }

    /// Waits until a `/db` read of `key` at `level` on node `i` returns 200 `value`.
    pub fn wait_db_value(&self, i: usize, key: &str, value: &str, level: Level) {
        wait_until_with(
            CONVERGE_TIMEOUT,
            &format!("node {i} serves /db/{key} = {value:?} ({level:?})"),
            || {
                let r =
                    self.try_request(i, Method::GET, &format!("/db/{key}{}", level.query()), None)?;
                if r.status == 200 && r.body == value {
                    Ok(())
                } else {
                    Err(format!("{} {:?}", r.status, truncate(&r.body)))
                }
            },
        )
    }

    /// Waits until a `/key` read of `key` at `level` on node `i` returns `{"key": "value"}`.
    pub fn wait_key_value(&self, i: usize, key: &str, value: &str, level: Level) {
        let expected = serde_json::json!({ key: value });
        wait_until_with(
            CONVERGE_TIMEOUT,
            &format!("node {i} serves /key/{key} = {value:?} ({level:?})"),
            || {
                let r = self.try_request(
                    i,
                    Method::GET,
                    &format!("/key/{key}{}", level.query()),
                    None,
                )?;
                if r.status == 200
                    && serde_json::from_str::<Value>(&r.body).ok() == Some(expected.clone())
                {
                    Ok(())
                } else {
                    Err(format!("{} {:?}", r.status, truncate(&r.body)))
                }
            },
        )
    }

    /// Waits until every node in `nodes` reports the same state digest holding `keys` keys;
    /// returns the digest value.
    pub fn wait_digests_agree(&self, nodes: &[usize], keys: u64) -> String {
        wait_until_with(
            CONVERGE_TIMEOUT,
            &format!("nodes {nodes:?} report equal digests of {keys} keys"),
            || {
                let mut digests = Vec::new();
                for &i in nodes {
                    let s = self.try_status(i).ok_or(format!("n{i}: no status"))?;
                    let d = &s["digest"];
                    digests.push((
                        i,
                        d["keys"].as_u64(),
                        d["value"].as_str().unwrap_or("").to_owned(),
                    ));
                }
                let seen = format!("{digests:?}");
                let first = &digests[0];
                if digests
                    .iter()
                    .all(|d| d.1 == Some(keys) && d.2 == first.2 && !d.2.is_empty())
                {
                    Ok(first.2.clone())
                } else {
                    Err(seen)
                }
            },
        )
    }

    // ----- diagnostics ----------------------------------------------------------------------

    /// The last `n` lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, n: usize) -> String {
        tail_lines(
            &fs::read_to_string(&self.nodes[i].log_path).unwrap_or_default(),
            n,
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed || std::env::var_os("RAFTKV_TEST_LOGS").is_some() {
            for i in 0..self.nodes.len() {
                eprintln!(
                    "---- [{}] node {i} ({}) log tail: {} ----\n{}",
                    self.test,
                    self.nodes[i].id.as_deref().unwrap_or("?"),
                    self.nodes[i].log_path.display(),
                    self.log_tail(i, LOG_TAIL_LINES)
                );
            }
        }
        for node in &mut self.nodes {
            reap(node);
        }
        if failed
            && std::env::var_os("RAFTKV_KEEP_TMP").is_some()
            && let Some(tmp) = self.tmp.take()
        {
            eprintln!("---- [{}] keeping {}", self.test, tmp.keep().display());
        }
    }
}

/// Spawns the node's process with stdout/stderr appended to its log file.
fn spawn(node: &NodeProc) -> Child {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log_path)
        .expect("open node log");
    let _ = writeln!(
        log,
        "==== harness: start {} {} {}",
        bin(),
        node.flags.join(" "),
        node.data_dir.display()
    );
    let err = log.try_clone().expect("clone log handle");
    let mut cmd = Command::new(bin());
    cmd.args(&node.flags)
        .arg(&node.data_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    // Inter-node traffic must stay on loopback: no proxies inherited from the environment.
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_PROXY", "*");
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin()))
}

/// Waits until the node answers `GET /status` with 200 while its process is still alive.
fn await_ready(http: &Client, node: &mut NodeProc, timeout: Duration) -> Result<(), StartFailure> {
    let deadline = Instant::now() + timeout;
    let url = format!("http://{}/status", node.http_addr());
    loop {
        let child = node.child.as_mut().expect("child");
        if let Some(exit) = child.try_wait().expect("try_wait") {
            node.state = NodeState::Dead;
            node.child = None;
            let log = fs::read_to_string(&node.log_path).unwrap_or_default();
            let tail = tail_lines(&log, 15);
            let lower = tail.to_lowercase();
            let why = format!("process exited with {exit}; log tail:\n{tail}");
            if lower.contains("address already in use")
                || lower.contains("addrinuse")
                || lower.contains("os error 98")
            {
                return Err(StartFailure::PortInUse(why));
            }
            return Err(StartFailure::Exited(why));
        }
        if let Ok(r) = http.get(&url).send()
            && r.status().as_u16() == 200
            && let Ok(v) = r.json::<Value>()
        {
            // Re-check the process: the answer must come from *our* node, not from
            // another process that happens to hold the port.
            if child.try_wait().expect("try_wait").is_none() {
                node.id = v.get("id").and_then(Value::as_str).map(str::to_owned);
                return Ok(());
            }
            continue;
        }
        if Instant::now() >= deadline {
            return Err(StartFailure::Timeout(format!(
                "GET {url} did not answer 200 within {timeout:?}"
            )));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// SIGKILL (also works on a stopped process) and wait, so no zombie or orphan is left.
fn reap(node: &mut NodeProc) {
    if let Some(mut child) = node.child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    node.state = NodeState::Dead;
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn truncate(s: &str) -> String {
    if s.len() <= 200 {
        s.to_owned()
    } else {
        format!("{}…", &s[..s.floor_char_boundary(200)])
    }
}
