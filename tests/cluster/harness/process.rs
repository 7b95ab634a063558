//! Processes: ports, spawning `raftkv` with its log captured, readiness, signals, restarts.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::Value;

use super::{Cluster, POLL_INTERVAL, READY_TIMEOUT, START_ATTEMPTS_MAX, tail_lines};

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
    /// The loopback IP the node's API is bound to (where the harness talks to it).
    pub ip: String,
    /// Extra environment variables of the process (e.g. test-only fault hooks).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

/// How `Cluster::start_with` places a node: its API IP, a fixed API port, extra environment.
#[derive(Clone, Debug)]
pub struct StartOpts {
    pub ip: String,
    /// A fixed API port (no retry on a port clash); `None` picks free ones.
    pub http_port: Option<u16>,
    pub env: Vec<(String, String)>,
    /// Wait until the node answers `/status` (false: return once it is spawned).
    pub await_ready: bool,
    /// Start on what `<tmp>/n<i>/data` already holds (e.g. a `raftkv restore`) instead of an
    /// empty data dir.
    pub keep_data_dir: bool,
}

impl Default for StartOpts {
    fn default() -> Self {
        StartOpts {
            ip: "127.0.0.1".to_owned(),
            http_port: None,
            env: Vec::new(),
            await_ready: true,
            keep_data_dir: false,
        }
    }
}

impl NodeProc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
    /// `<ip>:<http port>` (ip 127.0.0.1 unless started elsewhere): where the harness talks to
    /// this node.
    pub fn http_addr(&self) -> String {
        format!("{}:{}", self.ip, self.ports.http)
    }
}

enum StartFailure {
    PortInUse(String),
    Exited(String),
    Timeout(String),
}

impl Cluster {
    /// Starts a new node: `args(ports)` gives its flags, the harness appends its data dir
    /// (`<tmp>/n<i>/data`) and waits until `GET /status` answers. Retries with fresh ports if the
    /// node could not bind. Returns the node's index.
    pub fn start(&mut self, args: impl Fn(&Ports) -> Vec<String>) -> usize {
        self.start_with(StartOpts::default(), args)
    }

    /// `start` with the node placed by `opts`.
    pub fn start_with(&mut self, opts: StartOpts, args: impl Fn(&Ports) -> Vec<String>) -> usize {
        let index = self.nodes.len();
        let data_dir = self.root().join(format!("n{index}")).join("data");
        let log_path = self.root().join(format!("n{index}.log"));
        for attempt in 1..=START_ATTEMPTS_MAX {
            let ports = Ports {
                http: opts.http_port.unwrap_or_else(free_port),
                raft: free_port(),
            };
            let flags = args(&ports);
            if !opts.keep_data_dir {
                let _ = fs::remove_dir_all(&data_dir); // a failed attempt may have written to it
            }
            fs::create_dir_all(&data_dir).expect("create data dir");
            let mut node = NodeProc {
                index,
                ports,
                flags,
                data_dir: data_dir.clone(),
                log_path: log_path.clone(),
                id: None,
                state: NodeState::Running,
                ip: opts.ip.clone(),
                env: opts.env.clone(),
                child: None,
            };
            node.child = Some(spawn(&node));
            if !opts.await_ready {
                eprintln!(
                    "   node {index} started (not awaited): flags {:?}",
                    node.flags
                );
                self.nodes.push(node);
                return index;
            }
            match await_ready(&self.http, self.scheme, &mut node, READY_TIMEOUT) {
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
                Err(StartFailure::PortInUse(why))
                    if attempt < START_ATTEMPTS_MAX && opts.http_port.is_none() =>
                {
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
        match await_ready(&self.http, self.scheme, &mut self.nodes[i], READY_TIMEOUT) {
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

    /// Waits until node `i`'s process exits on its own; returns its exit status (panics at the
    /// deadline).
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        let node = &mut self.nodes[i];
        loop {
            let child = node
                .child
                .as_mut()
                .unwrap_or_else(|| panic!("node {i} has no process"));
            if let Some(status) = child.try_wait().expect("try_wait") {
                node.child = None;
                node.state = NodeState::Dead;
                eprintln!("   node {i} exited on its own: {status}");
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} still runs after {timeout:?}"
            );
            std::thread::sleep(POLL_INTERVAL); // polling period, not synchronisation
        }
    }

    /// Sends SIGTERM to node `i` (a graceful shutdown) and waits, at most `within`, until it
    /// exits on its own; returns its exit status and how long that took (panics at the deadline).
    pub fn terminate(
        &mut self,
        i: usize,
        within: Duration,
    ) -> (std::process::ExitStatus, Duration) {
        let t0 = Instant::now();
        self.signal(i, "-TERM");
        let status = self.wait_exit(i, within);
        (status, t0.elapsed())
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

    /// Drops node `i`'s extra environment (e.g. a fault hook) for its next start.
    pub fn node_env_clear(&mut self, i: usize) {
        self.nodes[i].env.clear();
    }

    /// `respawn` and wait until it answers `/status`.
    pub fn restart(&mut self, i: usize) {
        self.respawn(i);
        self.wait_ready(i);
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
    cmd.envs(node.env.iter().map(|(k, v)| (k, v)));
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
fn await_ready(
    http: &Client,
    scheme: &str,
    node: &mut NodeProc,
    timeout: Duration,
) -> Result<(), StartFailure> {
    let deadline = Instant::now() + timeout;
    let url = format!("{scheme}://{}/status", node.http_addr());
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
pub(super) fn reap(node: &mut NodeProc) {
    if let Some(mut child) = node.child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    node.state = NodeState::Dead;
}
