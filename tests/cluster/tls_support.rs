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
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use reqwest::Method;
use reqwest::blocking::Client;
use serde_json::Value;

use crate::harness::Cluster;
use crate::harness::Ports;
use crate::harness::StartOpts;
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

/// The nodes of one TLS story (the shared harness, talking https) and the https client used to
/// watch them.
pub struct TlsCluster {
    pub c: Cluster,
    /// The client readiness and status probes use.
    pub watcher: Client,
}

impl TlsCluster {
    pub fn new(test: &str, watcher: impl FnOnce(&Path) -> Client) -> TlsCluster {
        let c = Cluster::with_client(test, "https", watcher);
        let watcher = c.client().clone();
        TlsCluster { c, watcher }
    }

    pub fn root(&self) -> &Path {
        self.c.root()
    }

    pub fn phase(&self, what: &str) {
        self.c.phase(what);
    }

    /// The ports node `i` was started with.
    pub fn ports(&self, i: usize) -> Ports {
        self.c.node(i).ports
    }

    /// `https://127.0.0.1:<http port of node i><path>`.
    pub fn url(&self, i: usize, path: &str) -> String {
        self.c.url(i, path)
    }

    /// `https://127.0.0.1:<raft port of node i><path>`.
    pub fn raft_url(&self, i: usize, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.ports(i).raft)
    }

    /// Starts a node with flags `args(http, raft)` (the data dir is appended); with `ready`,
    /// waits until `/status` answers over https.
    pub fn start(&mut self, ready: bool, args: impl Fn(u16, u16) -> Vec<String>) -> usize {
        let opts = StartOpts {
            await_ready: ready,
            ..StartOpts::default()
        };
        self.c.start_with(opts, |p| args(p.http, p.raft))
    }

    /// `GET /status` of node `i` (with the watcher client), if it answers 200 JSON.
    pub fn try_status(&self, i: usize) -> Option<Value> {
        self.c.try_status(i)
    }

    /// Waits until node `i` reports `n` members, all voters; returns their names, sorted.
    pub fn wait_voters(&self, i: usize, n: usize) -> Vec<String> {
        self.c.wait_voters(i, n);
        self.c.voters(i).unwrap_or_default()
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
            let leader = (0..self.c.len())
                .find(|&n| Some(self.ports(n).http) == port)
                .ok_or(format!("leader {api} is not one of ours"))?;
            match self.try_status(leader) {
                Some(l) if l["role"] == "leader" => Ok(leader),
                _ => Err(format!("{api} does not say it is leader")),
            }
        })
    }

    /// The last lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, n: usize) -> String {
        self.c.log_tail(i, n)
    }
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
