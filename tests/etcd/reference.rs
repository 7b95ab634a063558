//! A real etcd 3.4 cluster for differential tests: `n` members on loopback ports in one temp
//! dir, started with Debian's `etcd` binary; every member is SIGKILLed through its own `Child`
//! handle (never by name) and reaped on Drop, and its log tail printed if the test failed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{POLL_INTERVAL, free_port};

/// How long a fresh etcd cluster gets to become healthy.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct EtcdCluster {
    dir: tempfile::TempDir,
    /// (name, client port, peer port, process)
    members: Vec<(String, u16, u16, Child)>,
}

/// Whether the etcd binaries are installed.
pub fn installed() -> bool {
    // `etcd --version`, but `etcdctl version` (etcdctl 3.4 has no --version flag).
    [("etcd", "--version"), ("etcdctl", "version")]
        .iter()
        .all(|(b, arg)| {
            Command::new(b)
                .arg(arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

impl EtcdCluster {
    /// Starts `n` members named `etcd-member-<i>` and waits until all are healthy.
    pub fn start(n: usize) -> EtcdCluster {
        let dir = tempfile::Builder::new()
            .prefix("raftkv-etcd-ref-")
            .tempdir()
            .expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("{}=http://127.0.0.1:{peer}", member_name(i)))
            .collect();
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = member_name(i);
            let data: PathBuf = dir.path().join(&name);
            let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).expect("log");
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = Command::new("etcd")
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "raftkv-differential"])
                .args(["--logger", "zap"])
                // etcd's strict check refuses any change for the first 5 s after its peers
                // connected ("unhealthy cluster"); without it the answers are deterministic,
                // and duplicate peer URLs are still refused (raftkv's rules are always on).
                .arg("--strict-reconfig-check=false")
                .env_remove("ETCD_NAME")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn etcd");
            eprintln!("   etcd {name} up: pid {}, client {client_url}", child.id());
            members.push((name, *client, *peer, child));
        }
        let c = EtcdCluster { dir, members };
        c.wait_healthy(HEALTHY_TIMEOUT);
        c
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|(_, port, _, _)| format!("127.0.0.1:{port}"))
            .collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.members.iter().map(|(n, ..)| n.clone()).collect()
    }

    fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = crate::etcdctl::run(&self.endpoints(), &["endpoint", "health"], None);
            if out.code == 0 {
                return;
            }
            if Instant::now() >= deadline {
                self.print_logs();
                panic!("etcd reference cluster not healthy after {timeout:?}: {out:?}");
            }
            std::thread::sleep(POLL_INTERVAL); // polling period, not synchronisation
        }
    }

    fn print_logs(&self) {
        for (name, ..) in &self.members {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "---- etcd {name} log tail ----\n{}",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
    }
}

fn member_name(i: usize) -> String {
    format!("etcd-member-{i}")
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        for (_, _, _, child) in &mut self.members {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
