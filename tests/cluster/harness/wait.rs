//! Waiting: a condition polled until a deadline, never a fixed sleep; and the cluster-level
//! waits built on it (leader agreement, membership, replicated values, digests).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use super::{CONVERGE_TIMEOUT, Cluster, LEADER_TIMEOUT, Level, POLL_INTERVAL};

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

impl Cluster {
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

    /// Waits until node `i` answers `GET /readyz` with 200 (a member, caught up, knowing a leader).
    pub fn wait_readyz(&self, i: usize) {
        wait_until_with(
            CONVERGE_TIMEOUT,
            &format!("node {i} is ready (/readyz)"),
            || {
                let r = self.try_request(i, Method::GET, "/readyz", None)?;
                if r.status == 200 {
                    Ok(())
                } else {
                    Err(format!("{} {}", r.status, truncate(&r.body)))
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
}

fn truncate(s: &str) -> String {
    if s.len() <= 200 {
        s.to_owned()
    } else {
        format!("{}…", &s[..s.floor_char_boundary(200)])
    }
}
