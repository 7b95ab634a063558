//! A chaos cluster: real `raftkv` processes (started, killed, paused through the cluster
//! harness) wired through the fault proxy.
//!
//! Addressing (all on loopback): node `i` binds its API and Raft listeners on
//! `127.0.0.1:<free ports>` (where the test's clients and the harness reach it directly, never
//! faulted), dials its peers from its own IP `127.a.b.(10+i)` (`--source-ip`), and advertises two
//! proxy listeners on that IP (`--advertise-haddr`, `--advertise-raddr`). So every byte from node
//! `s` to node `d` — Raft RPC, forwarded writes, read-index requests, joins — crosses the proxy's
//! link `s → d`.
//!
//! What it owns: the harness `Cluster`, the `Proxy`, the list of current members and the
//! addresses the workload may use. What it does not own: fault choices (`nemesis.rs`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::{Value, json};

use crate::harness::{Cluster, NodeState, POLL_INTERVAL, argv, free_port};
use crate::proxy::{Proxy, ProxyPort};

/// Timeout of the topology's own status and admin requests (a paused node must not stall us).
const STATUS_TIMEOUT: Duration = Duration::from_millis(1000);
/// Bound on a membership change (remove or join + catch-up + promotion).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the workload may send requests: (node index, `host:port` of its API).
pub type Targets = Arc<RwLock<Vec<(usize, String)>>>;

/// Why the cluster did not converge.
#[derive(Debug)]
pub enum ConvergeError {
    /// Not all members reached the same applied index in time.
    Timeout(String),
    /// Two members reported different state digests at the same applied index: a safety bug.
    Diverged(String),
}

pub struct ChaosCluster {
    pub c: Cluster,
    pub proxy: Proxy,
    /// Second and third octet of this cluster's node IPs.
    net: (u8, u8),
    api_ports: Vec<ProxyPort>,
    raft_ports: Vec<ProxyPort>,
    /// Harness indices of the current members, in join order.
    pub members: Vec<usize>,
    /// Whether the product honoured `--advertise-*`, i.e. whether proxy faults reach it.
    pub net_faults: bool,
    pub targets: Targets,
    http: Client,
    node_flags: String,
}

impl ChaosCluster {
    /// Starts `n` nodes: the first bootstraps, the others join it; waits for a healthy cluster.
    pub fn start(test: &str, n: usize, seed: u64, node_flags: &str) -> ChaosCluster {
        let flags = vec![node_flags; n];
        ChaosCluster::start_with(test, seed, &flags)
    }

    /// Like `start`, with each node's own extra flags (`flags.len()` nodes).
    pub fn start_with(test: &str, seed: u64, flags: &[&str]) -> ChaosCluster {
        let n = flags.len();
        static INSTANCE: AtomicU8 = AtomicU8::new(0);
        let net = (
            20 + (std::process::id() % 200) as u8,
            INSTANCE.fetch_add(1, Ordering::Relaxed),
        );
        let mut cc = ChaosCluster {
            c: Cluster::new(test),
            proxy: Proxy::new(seed),
            net,
            api_ports: Vec::new(),
            raft_ports: Vec::new(),
            members: Vec::new(),
            net_faults: true,
            targets: Arc::default(),
            http: Client::builder()
                .no_proxy()
                .timeout(STATUS_TIMEOUT)
                .pool_max_idle_per_host(0)
                .build()
                .expect("build status client"),
            node_flags: flags[n - 1].to_owned(),
        };
        cc.c.phase(&format!("start a {n}-node cluster behind the fault proxy"));
        let first = cc.start_node_with(None, flags[0]);
        cc.net_faults = cc.advertises_proxy(first);
        if !cc.net_faults {
            eprintln!(
                "   WARNING: the node does not advertise the proxy addresses (--advertise-haddr / \
                 --advertise-raddr not honoured): network faults are disabled for this run"
            );
        }
        for f in &flags[1..] {
            cc.start_node_with(Some(first), f);
        }
        if let Err(e) = cc.wait_healthy(Duration::from_secs(30)) {
            panic!("the fresh cluster did not become healthy: {e}");
        }
        cc
    }

    fn ip(&self, i: usize) -> IpAddr {
        assert!(i < 240, "too many nodes");
        IpAddr::from([127, self.net.0, self.net.1, 10 + i as u8])
    }

    /// Starts a new node (joining member `join`'s advertised API if given); returns its index.
    pub fn start_node(&mut self, join: Option<usize>) -> usize {
        let flags = self.node_flags.clone();
        self.start_node_with(join, &flags)
    }

    fn start_node_with(&mut self, join: Option<usize>, node_flags: &str) -> usize {
        let i = self.c.len();
        let ip = self.ip(i);
        self.proxy.add_source(ip, i);
        let api = self.proxy.listen(i, ip).expect("proxy listen (api)");
        let raft = self.proxy.listen(i, ip).expect("proxy listen (raft)");
        let join = join
            .map(|j| match std::env::var_os("RAFTKV_CHAOS_NO_PROXY") {
                Some(_) => format!("-join {}", self.c.node(j).http_addr()),
                None => format!("-join {}", self.api_ports[j].listen),
            })
            .unwrap_or_default();
        let (api2, raft2, extra) = (api.clone(), raft.clone(), node_flags.to_owned());
        let direct = std::env::var_os("RAFTKV_CHAOS_NO_PROXY").is_some();
        let index = self.c.start(move |p| {
            let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
            api2.set_upstream(local(p.http));
            raft2.set_upstream(local(p.raft));
            let advertise = if direct {
                String::new() // diagnosis only: peers dial the bound addresses, bypassing the proxy
            } else {
                format!("--advertise-haddr {} --advertise-raddr {}", api2.listen, raft2.listen)
            };
            argv(&format!(
                "-haddr 127.0.0.1:{} -raddr 127.0.0.1:{} -id n{i} --source-ip {ip} {advertise} {join} {extra}",
                p.http, p.raft
            ))
        });
        assert_eq!(index, i, "harness numbering");
        self.api_ports.push(api);
        self.raft_ports.push(raft);
        self.members.push(i);
        self.publish_targets();
        i
    }

    fn advertises_proxy(&self, i: usize) -> bool {
        let Some(s) = self.status(i) else {
            return false;
        };
        s["raft_addr"].as_str() == Some(&self.raft_ports[i].listen.to_string())
            && s["api_addr"].as_str() == Some(&self.api_ports[i].listen.to_string())
    }

    /// Tells the workload which nodes to use (all current members, whatever their state: real
    /// clients do not know a node is down).
    fn publish_targets(&self) {
        let t: Vec<(usize, String)> = self
            .members
            .iter()
            .map(|&i| (i, self.c.node(i).http_addr()))
            .collect();
        *self.targets.write().unwrap_or_else(|e| e.into_inner()) = t;
    }

    pub fn name(&self, i: usize) -> String {
        format!("n{i}")
    }

    pub fn state(&self, i: usize) -> NodeState {
        self.c.node(i).state
    }

    /// `GET /status` with a short timeout; `None` if no answer.
    pub fn status(&self, i: usize) -> Option<Value> {
        let url = format!("http://{}/status", self.c.node(i).http_addr());
        let r = self.http.get(url).send().ok()?;
        if r.status().as_u16() != 200 {
            return None;
        }
        r.json().ok()
    }

    /// The member that says it leads in the highest term, right now (no waiting).
    pub fn leader_now(&self) -> Option<usize> {
        self.members
            .iter()
            .filter(|&&i| self.state(i) == NodeState::Running)
            .filter_map(|&i| {
                let s = self.status(i)?;
                (s["role"] == "leader").then(|| (s["term"].as_u64().unwrap_or(0), i))
            })
            .max()
            .map(|(_, i)| i)
    }

    /// Waits until every member runs, one of them leads, all members follow it, and its
    /// membership is exactly our members, all voters. Returns the leader.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = match self.health() {
                Ok(l) => return Ok(l),
                Err(seen) => seen,
            };
            if Instant::now() >= deadline {
                return Err(format!("cluster not healthy after {timeout:?}: {seen}"));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn health(&self) -> Result<usize, String> {
        let mut statuses = BTreeMap::new();
        for &i in &self.members {
            if self.state(i) != NodeState::Running {
                return Err(format!("n{i} is {:?}", self.state(i)));
            }
            let s = self.status(i).ok_or(format!("n{i}: no status"))?;
            statuses.insert(i, s);
        }
        let leader = self.leader_now().ok_or("no leader")?;
        let leader_name = self.name(leader);
        for (i, s) in &statuses {
            if s.pointer("/leader/id").and_then(Value::as_str) != Some(&leader_name) {
                return Err(format!("n{i} follows {}, not {leader_name}", s["leader"]));
            }
        }
        let mut voters: Vec<String> = statuses[&leader]["members"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| {
                format!(
                    "{}{}",
                    m["id"].as_str().unwrap_or("?"),
                    if m["voter"] == true { "" } else { "(learner)" }
                )
            })
            .collect();
        voters.sort();
        let mut want: Vec<String> = self.members.iter().map(|&i| self.name(i)).collect();
        want.sort();
        if voters != want {
            return Err(format!(
                "leader's members {voters:?}, expected voters {want:?}"
            ));
        }
        Ok(leader)
    }

    /// Waits until all members report the same applied index, then compares their state
    /// digests. Also fails at once if two members ever report different digests at the same
    /// applied index. Returns (applied index, digest).
    pub fn wait_converged(&self, timeout: Duration) -> Result<(u64, String), ConvergeError> {
        let deadline = Instant::now() + timeout;
        let mut seen_at: BTreeMap<u64, (usize, String)> = BTreeMap::new();
        loop {
            let mut now = Vec::new();
            for &i in &self.members {
                let Some(s) = self.status(i) else { continue };
                let d = &s["digest"];
                let (Some(idx), Some(value)) = (d["applied_index"].as_u64(), d["value"].as_str())
                else {
                    continue;
                };
                if let Some((j, other)) = seen_at.get(&idx)
                    && other != value
                {
                    return Err(ConvergeError::Diverged(format!(
                        "at applied index {idx}: n{j} has digest {other}, n{i} has {value}"
                    )));
                }
                seen_at.entry(idx).or_insert((i, value.to_owned()));
                now.push((i, idx, value.to_owned()));
            }
            if now.len() == self.members.len() && now.iter().all(|n| n.1 == now[0].1) {
                return Ok((now[0].1, now[0].2.clone()));
            }
            if Instant::now() >= deadline {
                return Err(ConvergeError::Timeout(format!(
                    "(node, applied index, digest): {now:?}"
                )));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    // ----- process faults (through the harness) ---------------------------------------------

    pub fn kill(&mut self, i: usize) {
        self.c.kill9(i);
    }

    /// Restarts a killed node without `-join` and waits until it answers. A node that does not
    /// come back (the harness panics, e.g. the node refuses to open its data dir) is an error,
    /// not a test crash, so the schedule can keep the evidence.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.c.restart(i)))
            .map_err(|e| format!("n{i} did not restart: {}", panic_text(&e)))
    }

    pub fn pause(&mut self, i: usize) {
        self.c.pause(i);
    }

    pub fn resume(&mut self, i: usize) {
        self.c.resume(i);
    }

    /// Resumes paused members, restarts dead ones, heals the network.
    pub fn heal_all(&mut self) -> Result<(), String> {
        self.proxy.heal();
        let mut result = Ok(());
        for i in self.members.clone() {
            match self.state(i) {
                NodeState::Paused => self.resume(i),
                NodeState::Dead => {
                    if let Err(e) = self.restart(i) {
                        result = Err(e);
                    }
                }
                NodeState::Running => {}
            }
        }
        result
    }

    // ----- membership -----------------------------------------------------------------------

    /// Removes member `victim` (asking another running member, which forwards to the leader),
    /// then kills it and stops sending it traffic. An attempt may time out with the change
    /// still going through (503 `timeout` = outcome unknown), so after a failed attempt the
    /// leader's membership decides whether the victim is already gone.
    pub fn remove_member(&mut self, victim: usize) -> Result<(), String> {
        let name = self.name(victim);
        let deadline = Instant::now() + MEMBERSHIP_TIMEOUT;
        let via: Vec<usize> = self
            .members
            .iter()
            .copied()
            .filter(|&i| i != victim && self.state(i) == NodeState::Running)
            .collect();
        let mut last = String::new();
        'retry: loop {
            for &v in &via {
                let url = format!("http://{}/remove", self.c.node(v).http_addr());
                match self
                    .http
                    .post(url)
                    .timeout(Duration::from_secs(10))
                    .json(&json!({ "id": name }))
                    .send()
                {
                    Ok(r) if r.status().is_success() => break 'retry,
                    Ok(r) => {
                        last = format!("n{v}: {} {}", r.status(), r.text().unwrap_or_default())
                    }
                    Err(e) => last = format!("n{v}: {e}"),
                }
                if self.leader_lists(&name) == Some(false) {
                    eprintln!("   remove {name}: an earlier attempt went through ({last})");
                    break 'retry;
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("remove {name} failed: {last}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.members.retain(|&i| i != victim);
        self.publish_targets();
        if self.state(victim) != NodeState::Dead {
            self.kill(victim);
        }
        Ok(())
    }

    /// Whether the current leader's membership lists `name` (`None`: no leader right now).
    fn leader_lists(&self, name: &str) -> Option<bool> {
        let s = self.status(self.leader_now()?)?;
        let members = s["members"].as_array()?;
        Some(members.iter().any(|m| m["id"] == name))
    }

    /// Starts a fresh node joining through a running member and waits until the leader lists
    /// it as a voter; returns its index.
    pub fn add_fresh_member(&mut self) -> Result<usize, String> {
        let i = self.start_fresh_node()?;
        self.wait_voter(i)?;
        Ok(i)
    }

    /// Starts a fresh node with `-join` through the leader (or any running member); returns
    /// once it answers `/status`, usually before it has joined.
    pub fn start_fresh_node(&mut self) -> Result<usize, String> {
        let via = self
            .leader_now()
            .or_else(|| {
                self.members
                    .iter()
                    .copied()
                    .find(|&i| self.state(i) == NodeState::Running)
            })
            .ok_or("no running member to join through")?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.start_node(Some(via))))
            .map_err(|e| format!("a fresh node did not start: {}", panic_text(&e)))
    }

    /// Waits until the leader lists node `i` as a voter.
    pub fn wait_voter(&self, i: usize) -> Result<(), String> {
        let name = self.name(i);
        let deadline = Instant::now() + MEMBERSHIP_TIMEOUT;
        loop {
            if let Some(l) = self.leader_now()
                && let Some(s) = self.status(l)
                && s["members"].as_array().is_some_and(|ms| {
                    ms.iter()
                        .any(|m| m["id"] == name.as_str() && m["voter"] == true)
                })
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{name} did not become a voter within {MEMBERSHIP_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// A join that must be refused: node `ghost` at an address where nothing listens (`dead`),
    /// or at member `reach`'s real Raft address (which reaches that member, not the joiner).
    /// Sent to a running member; `Err` if it was accepted or `ghost` shows up in the membership.
    pub fn bad_join(
        &self,
        ghost: &str,
        dead: bool,
        via: u64,
        reach: u64,
    ) -> Result<String, String> {
        let running: Vec<usize> = self
            .members
            .iter()
            .copied()
            .filter(|&i| self.state(i) == NodeState::Running)
            .collect();
        let Some(&v) = running.get((via % running.len().max(1) as u64) as usize) else {
            return Ok("no running member to send it to".into());
        };
        let addr = if dead {
            format!("127.{}.{}.250:{}", self.net.0, self.net.1, free_port())
        } else {
            let m = self.members[(reach % self.members.len() as u64) as usize];
            format!("127.0.0.1:{}", self.c.node(m).ports.raft)
        };
        let url = format!("http://{}/join", self.c.node(v).http_addr());
        let answer = match self
            .http
            .post(url)
            .timeout(MEMBERSHIP_TIMEOUT)
            .json(&json!({ "id": ghost, "addr": addr }))
            .send()
        {
            Ok(r) if r.status().is_success() => {
                return Err(format!(
                    "bad join of {ghost} at {addr} via n{v} was accepted"
                ));
            }
            Ok(r) => format!(
                "n{v} answered {} {}",
                r.status(),
                r.text().unwrap_or_default()
            ),
            Err(e) => format!("n{v}: {e}"),
        };
        if self.leader_lists(ghost) == Some(true) {
            return Err(format!("{ghost} at {addr} became a member ({answer})"));
        }
        Ok(format!("{addr}: {answer}"))
    }

    /// Paths of every node's log (members and former members).
    pub fn log_paths(&self) -> Vec<(usize, std::path::PathBuf)> {
        (0..self.c.len())
            .map(|i| (i, self.c.node(i).log_path.clone()))
            .collect()
    }
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".into())
}
