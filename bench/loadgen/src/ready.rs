//! The cluster helpers of the bench scripts: wait until a raftkv or etcd cluster is ready
//! (printing its leader and followers), put a marker, poll a stale read until it shows.

use std::time::Duration;
use std::time::Instant;

use crate::args::{EtcdReadyArgs, KeyArgs, RaftkvReadyArgs};
use crate::die;
use crate::wire::{b64, contains, simple, small_rt, System};

pub fn cmd_raftkv_ready(a: &RaftkvReadyArgs) {
    let addr = a.target.clone();
    let voters: usize = a.voters;
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let rt = small_rt();
    rt.block_on(async {
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok((200, body)) = simple(&addr, "GET", "/status", String::new()).await {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                    let members = v["members"].as_array().cloned().unwrap_or_default();
                    let nvoters = members
                        .iter()
                        .filter(|m| m["voter"] == serde_json::Value::Bool(true))
                        .count();
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
        die(&format!(
            "raftkv cluster at {addr} not ready in time ({last})"
        ));
    });
}

pub fn cmd_etcd_ready(a: &EtcdReadyArgs) {
    let targets: Vec<String> = a.target.clone().split(',').map(|s| s.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let rt = small_rt();
    rt.block_on(async {
        while Instant::now() < deadline {
            let mut ids = Vec::new();
            let mut leader_id = None;
            for t in &targets {
                match simple(t, "POST", "/v3/maintenance/status", "{}".into()).await {
                    Ok((200, body)) => {
                        let v: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
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
                        let body = format!(
                            "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                            b64(b"bench-ready"),
                            b64(b"1")
                        );
                        if let Ok((200, _)) = simple(leader, "POST", "/v3/kv/put", body).await {
                            let followers: Vec<String> = ids
                                .iter()
                                .filter(|(_, id)| *id != l)
                                .map(|(t, _)| t.clone())
                                .collect();
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

pub fn cmd_put(a: &KeyArgs) {
    let system = a.system;
    let addr = a.target.clone();
    let (key, value) = (a.key.clone(), a.value.clone());
    let rt = small_rt();
    let r = rt.block_on(async {
        match system {
            System::Raftkv => simple(&addr, "PUT", &format!("/db/{key}"), value).await,
            System::Etcd => {
                simple(
                    &addr,
                    "POST",
                    "/v3/kv/put",
                    format!(
                        "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                        b64(key.as_bytes()),
                        b64(value.as_bytes())
                    ),
                )
                .await
            }
        }
    });
    match r {
        Ok((200, _)) => {}
        other => die(&format!("put failed: {other:?}")),
    }
}

/// Polls a stale/serializable read until it returns `value`; prints the ms it took.
pub fn cmd_wait_read(a: &KeyArgs, timeout_s: u64) {
    let system = a.system;
    let addr = a.target.clone();
    let (key, value) = (a.key.clone(), a.value.clone());
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(timeout_s);
    let rt = small_rt();
    rt.block_on(async {
        while Instant::now() < deadline {
            let r = match system {
                System::Raftkv => {
                    simple(
                        &addr,
                        "GET",
                        &format!("/db/{key}?level=stale"),
                        String::new(),
                    )
                    .await
                }
                System::Etcd => {
                    simple(
                        &addr,
                        "POST",
                        "/v3/kv/range",
                        format!(
                            "{{\"key\":\"{}\",\"serializable\":true}}",
                            b64(key.as_bytes())
                        ),
                    )
                    .await
                }
            };
            if let Ok((200, body)) = r {
                let hit = match system {
                    System::Raftkv => body.as_ref() == value.as_bytes(),
                    System::Etcd => contains(
                        &body,
                        format!("\"value\":\"{}\"", b64(value.as_bytes())).as_bytes(),
                    ),
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
