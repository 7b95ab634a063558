//! Test support for the TLS stories: certificates made with the README's `openssl` commands,
//! an https client (rustls; a CA to trust, optionally a client certificate), and a small set of
//! `raftkv` processes whose public API may be https (the shared harness polls `/status` over
//! plain http, so TLS nodes are started and awaited here).
//!
//! What it owns: the child processes it spawns (SIGKILLed through their `Child` handles on drop,
//! never by name), their temp dir, and log files. Every request has a timeout; every wait is a
//! condition with a deadline; every address is on 127.0.0.1.

#![allow(dead_code)] // not every story uses every helper

use std::fs;
use std::fs::OpenOptions;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use reqwest::Method;
use reqwest::blocking::Client;
use serde_json::Value;
use tempfile::TempDir;

use crate::harness::free_port;
use crate::harness::wait_until_with;

/// The README's commands for a CA and three node certificates (`ca.pem`, `node1.pem`,
/// `node1-key.pem`, ...), run with `sh` in an empty directory. `readme_shows_the_tls_commands`
/// checks the README holds exactly these lines.
pub const PKI_SCRIPT: &str = r#"printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' > node.ext
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 -subj '/CN=raftkv CA' -keyout ca-key.pem -out ca.pem
for n in 1 2 3; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=node$n" -keyout node$n-key.pem -out node$n.csr
  openssl x509 -req -in node$n.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 365 -extfile node.ext -out node$n.pem
done"#;

/// The README's commands for a separate client CA and a client certificate signed by it
/// (`clients-ca.pem`, `alice.pem`, `alice-key.pem`).
pub const CLIENT_SCRIPT: &str = r#"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 -subj '/CN=raftkv clients CA' -keyout clients-ca-key.pem -out clients-ca.pem
printf 'extendedKeyUsage=clientAuth\n' > client.ext
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj '/CN=alice' -keyout alice-key.pem -out alice.csr
openssl x509 -req -in alice.csr -CA clients-ca.pem -CAkey clients-ca-key.pem -CAcreateserial -days 365 -extfile client.ext -out alice.pem"#;

/// Timeout of every request made here.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node gets to answer `/status`; cluster-level waits get as long.
pub const WAIT: Duration = Duration::from_secs(20);
const START_ATTEMPTS_MAX: usize = 5;
const LOG_TAIL_LINES: usize = 60;

/// Runs `script` with `sh` in `dir` (created); panics with openssl's output on failure.
pub fn run_script(dir: &Path, script: &str) {
    fs::create_dir_all(dir).expect("create pki dir");
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("run sh (is openssl installed?)");
    assert!(
        out.status.success(),
        "openssl commands failed in {}: {}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory holding a CA and node certificates made by [`PKI_SCRIPT`].
#[derive(Clone, Debug)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn generate(dir: &Path) -> Pki {
        run_script(dir, PKI_SCRIPT);
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn ca(&self) -> PathBuf {
        self.file("ca.pem")
    }

    /// Node `n`'s (1..=3) certificate and key.
    pub fn node(&self, n: usize) -> (PathBuf, PathBuf) {
        (
            self.file(&format!("node{n}.pem")),
            self.file(&format!("node{n}-key.pem")),
        )
    }

    /// The peer TLS flags for node `n`.
    pub fn peer_flags(&self, n: usize) -> Vec<String> {
        let (cert, key) = self.node(n);
        flags(&[
            ("--peer-cert-file", &cert),
            ("--peer-key-file", &key),
            ("--peer-trusted-ca-file", &self.ca()),
        ])
    }

    /// The client TLS flags for node `n` (its node certificate serves the public API too).
    pub fn client_flags(&self, n: usize) -> Vec<String> {
        let (cert, key) = self.node(n);
        flags(&[("--cert-file", &cert), ("--key-file", &key)])
    }
}

fn flags(pairs: &[(&str, &Path)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect()
}

/// An https client trusting only `ca`, presenting `identity` (certificate, key) when given.
pub fn https_client(ca: &Path, identity: Option<(&Path, &Path)>) -> Client {
    let ca_pem = fs::read(ca).expect("read CA");
    let mut builder = Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).expect("CA pem"))
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0);
    if let Some((cert, key)) = identity {
        let mut pem = fs::read(cert).expect("read cert");
        pem.extend(fs::read(key).expect("read key"));
        builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("identity pem"));
    }
    builder.build().expect("build https client")
}

/// One answer: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// Sends one request; `Err` with the error's whole cause chain on transport failure.
pub fn send(
    client: &Client,
    method: Method,
    url: &str,
    body: Option<(&[u8], &str)>,
) -> Result<Answer, String> {
    let mut req = client.request(method.clone(), url);
    if let Some((bytes, content_type)) = body {
        req = req
            .header("content-type", content_type)
            .body(bytes.to_vec());
    }
    let resp = req.send().map_err(|e| chain(&e))?;
    let status = resp.status().as_u16();
    let body = resp.text().map_err(|e| chain(&e))?;
    Ok(Answer { status, body })
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// One `raftkv` process.
pub struct TlsNode {
    pub http: u16,
    pub raft: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

/// The nodes of one TLS story and the https client used to watch them.
pub struct TlsCluster {
    test: String,
    started: Instant,
    tmp: Option<TempDir>,
    pub nodes: Vec<TlsNode>,
    /// The client readiness and status probes use.
    pub watcher: Client,
}

impl TlsCluster {
    pub fn new(test: &str, watcher: impl FnOnce(&Path) -> Client) -> TlsCluster {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("raftkv-{test}-"))
            .tempdir()
            .expect("create temp dir");
        eprintln!("== cluster {test}: temp dir {}", tmp.path().display());
        let watcher = watcher(tmp.path());
        TlsCluster {
            test: test.to_owned(),
            started: Instant::now(),
            tmp: Some(tmp),
            nodes: Vec::new(),
            watcher,
        }
    }

    pub fn root(&self) -> &Path {
        self.tmp.as_ref().expect("temp dir").path()
    }

    pub fn phase(&self, what: &str) {
        eprintln!(
            "== phase: {what}   [{} +{:.1}s]",
            self.test,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// `https://127.0.0.1:<http port of node i><path>`.
    pub fn url(&self, i: usize, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.nodes[i].http)
    }

    /// `https://127.0.0.1:<raft port of node i><path>`.
    pub fn raft_url(&self, i: usize, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.nodes[i].raft)
    }

    /// Starts a node with flags `args(http, raft)` (the data dir is appended); with `ready`,
    /// waits until `/status` answers over https, retrying with fresh ports on a port clash.
    pub fn start(&mut self, ready: bool, args: impl Fn(u16, u16) -> Vec<String>) -> usize {
        let index = self.nodes.len();
        let data_dir = self.root().join(format!("n{index}"));
        let log = self.root().join(format!("n{index}.log"));
        for attempt in 1..=START_ATTEMPTS_MAX {
            let (http, raft) = (free_port(), free_port());
            let flags = args(http, raft);
            let _ = fs::remove_dir_all(&data_dir);
            let child = spawn(&flags, &data_dir, &log);
            self.nodes.push(TlsNode {
                http,
                raft,
                log: log.clone(),
                child: Some(child),
            });
            if !ready {
                eprintln!("   node {index} started (not awaited): flags {flags:?}");
                return index;
            }
            match self.await_ready(index) {
                Ok(()) => {
                    eprintln!("   node {index} up: http {http}, flags {flags:?}");
                    return index;
                }
                Err(why) if why.contains("in use") && attempt < START_ATTEMPTS_MAX => {
                    eprintln!("   node {index}: port clash; retrying with fresh ports");
                    let mut node = self.nodes.pop().expect("node just pushed");
                    reap(&mut node);
                }
                Err(why) => panic!("node {index} did not start: {why}"),
            }
        }
        unreachable!("start loop returns or panics")
    }

    fn await_ready(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let node = &mut self.nodes[i];
            let child = node.child.as_mut().expect("child");
            if let Some(exit) = child.try_wait().expect("try_wait") {
                node.child = None;
                let tail = tail(&node.log, 15);
                let why = if tail.contains("Address already in use") {
                    "address in use".to_string()
                } else {
                    String::new()
                };
                return Err(format!("exited with {exit} {why}; log tail:\n{tail}"));
            }
            if self.try_status(i).is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "GET /status over https did not answer within {WAIT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50)); // polling period
        }
    }

    /// `GET /status` of node `i` (with the watcher client), if it answers 200 JSON.
    pub fn try_status(&self, i: usize) -> Option<Value> {
        let a = send(&self.watcher, Method::GET, &self.url(i, "/status"), None).ok()?;
        (a.status == 200)
            .then(|| serde_json::from_str(&a.body).ok())
            .flatten()
    }

    /// Waits until node `i` reports `n` members, all voters; returns their names, sorted.
    pub fn wait_voters(&self, i: usize, n: usize) -> Vec<String> {
        wait_until_with(WAIT, &format!("node {i} sees {n} voters"), || {
            let s = self.try_status(i).ok_or("no status")?;
            let members = s["members"].as_array().cloned().unwrap_or_default();
            let mut voters: Vec<String> = members
                .iter()
                .filter(|m| m["voter"] == true)
                .filter_map(|m| m["id"].as_str().map(str::to_owned))
                .collect();
            voters.sort();
            if members.len() == n && voters.len() == n {
                Ok(voters)
            } else {
                Err(format!("members {}", s["members"]))
            }
        })
    }

    /// Waits until node `i` names a leader that is one of the nodes here; returns its index.
    pub fn leader(&self, i: usize) -> usize {
        wait_until_with(WAIT, &format!("node {i} knows a leader"), || {
            let s = self.try_status(i).ok_or("no status")?;
            let api = s
                .pointer("/leader/api_addr")
                .and_then(Value::as_str)
                .ok_or(format!("leader {}", s["leader"]))?
                .to_owned();
            let port = api.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
            let leader = self
                .nodes
                .iter()
                .position(|n| Some(n.http) == port)
                .ok_or(format!("leader {api} is not one of ours"))?;
            match self.try_status(leader) {
                Some(l) if l["role"] == "leader" => Ok(leader),
                _ => Err(format!("{api} does not say it is leader")),
            }
        })
    }

    /// The last lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, n: usize) -> String {
        tail(&self.nodes[i].log, n)
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed || std::env::var_os("RAFTKV_TEST_LOGS").is_some() {
            for (i, node) in self.nodes.iter().enumerate() {
                eprintln!(
                    "---- [{}] node {i} log tail: {} ----\n{}",
                    self.test,
                    node.log.display(),
                    tail(&node.log, LOG_TAIL_LINES)
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

fn spawn(flags: &[String], data_dir: &Path, log_path: &Path) -> Child {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("open node log");
    let err = log.try_clone().expect("clone log handle");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftkv"));
    cmd.args(flags)
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
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
    cmd.spawn().expect("spawn raftkv")
}

/// SIGKILL through the child's own handle, then wait (no zombie).
fn reap(node: &mut TlsNode) {
    if let Some(mut child) = node.child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `raftkv` with `args` expecting it to exit on its own within `timeout`; returns the exit
/// code and stderr. Kills it (and panics) if it is still running at the deadline.
pub fn run_expecting_exit(args: &[String], timeout: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_raftkv"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn raftkv");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            return (status.code(), stderr);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "raftkv {args:?} was still running after {timeout:?}; it should have refused to start"
            );
        }
        std::thread::sleep(Duration::from_millis(20)); // polling period
    }
}
