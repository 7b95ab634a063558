//! The digest monitor: while a schedule runs, samples every member's `/status` state digest
//! and compares members that report the same applied index. Two replicas that applied the same
//! log prefix must hold the same map, so different digests at one applied index mean the
//! replicas diverged — a safety bug, caught even if later writes overwrite the difference
//! before the final convergence check.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::blocking::Client;
use serde_json::Value;

use crate::topology::Targets;

/// Samples every member's `/status` digest in the background during a schedule: two members
/// reporting different digests at the same applied index have diverged (a safety bug), even
/// if later writes overwrite the difference before the final convergence check.
pub struct DigestMonitor {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(u64, Option<String>)>,
}

/// Period of the digest monitor's sampling.
const MONITOR_PERIOD: Duration = Duration::from_millis(50);

impl DigestMonitor {
    pub fn start(targets: &Targets) -> DigestMonitor {
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, targets) = (Arc::clone(&stop), Arc::clone(targets));
        let handle = std::thread::spawn(move || {
            let http = Client::builder()
                .no_proxy()
                .timeout(Duration::from_millis(300))
                .build()
                .expect("monitor client");
            let mut seen: BTreeMap<u64, (usize, String)> = BTreeMap::new();
            let mut matches = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let nodes = targets.read().unwrap_or_else(|e| e.into_inner()).clone();
                for (i, addr) in nodes {
                    let Some(s) = http
                        .get(format!("http://{addr}/status"))
                        .send()
                        .ok()
                        .and_then(|r| r.json::<Value>().ok())
                    else {
                        continue;
                    };
                    let d = &s["digest"];
                    let (Some(idx), Some(value)) =
                        (d["applied_index"].as_u64(), d["value"].as_str())
                    else {
                        continue;
                    };
                    match seen.get(&idx) {
                        Some((j, other)) if other != value => {
                            return (
                                matches,
                                Some(format!(
                                    "at applied index {idx}: n{j} had digest {other}, n{i} has {value}"
                                )),
                            );
                        }
                        Some((j, _)) if *j != i => matches += 1,
                        Some(_) => {}
                        None => {
                            seen.insert(idx, (i, value.to_owned()));
                        }
                    }
                }
                std::thread::sleep(MONITOR_PERIOD);
            }
            (matches, None)
        });
        DigestMonitor { stop, handle }
    }

    /// Stops sampling; returns how many cross-node comparisons were made and the divergence
    /// seen, if any.
    pub fn stop(self) -> (u64, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("digest monitor panicked")
    }
}
