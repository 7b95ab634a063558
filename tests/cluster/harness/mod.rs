//! Cluster test harness: starts real `raftkv` processes on loopback, owns their data directories
//! (all inside one `TempDir` per test), captures each node's stdout/stderr to a log file next to
//! its data dir, and talks HTTP to the nodes the way a user with curl would.
//!
//! What it owns: child processes, ports, temp dirs, one HTTP client. What it does not own: any
//! knowledge of the product's internals; everything goes through the command line and HTTP.
//!
//! Invariants:
//! - every wait is a condition polled until a deadline (`wait_until`), never a fixed sleep;
//! - every HTTP request has a timeout (`HTTP_TIMEOUT`) and only ever goes to a loopback address (127.0.0.0/8);
//! - on Drop every child is SIGKILLed through its own `Child` handle (never by name) and reaped;
//!   if the test is panicking, the tail of every node's log is printed first, then the temp dir
//!   is removed (set `RAFTKV_KEEP_TMP=1` to keep it for inspection).

//!
//! Layout: `process` (ports, spawning, signals, restarts), `http` (requests and answers, the
//! curl-style calls of the seed READMEs), `wait` (polling with deadlines, cluster-level waits).

#![allow(dead_code, unused_imports)] // not every story uses every helper

mod http;
mod process;
mod wait;

pub use http::{Level, Resp};
pub use process::{NodeProc, NodeState, Ports, StartOpts, argv, free_port};
pub use wait::{Probe, wait_until, wait_until_with};

use std::fs;

use process::reap;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
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
/// A set of `raftkv` nodes belonging to one test.
pub struct Cluster {
    test: String,
    started: Instant,
    tmp: Option<TempDir>,
    nodes: Vec<NodeProc>,
    http: Client,
    /// `http`, or `https` for clusters whose public API is TLS (`with_client`).
    scheme: &'static str,
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
            scheme: "http",
        }
    }

    /// A cluster whose nodes the harness talks to over `scheme` with the client `make` builds
    /// (given the temp dir, e.g. to trust a CA made there): the TLS stories.
    pub fn with_client(
        test: &str,
        scheme: &'static str,
        make: impl FnOnce(&Path) -> Client,
    ) -> Cluster {
        let mut c = Cluster::new(test);
        c.http = make(c.root());
        c.scheme = scheme;
        c
    }

    /// The client the harness uses.
    pub fn client(&self) -> &Client {
        &self.http
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

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
