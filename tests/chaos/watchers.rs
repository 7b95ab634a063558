//! Watchers under chaos: each watcher follows the schedule's keys on a random node — half of
//! them through etcd's gRPC `Watch` (the `etcd-client` crate, as an etcd user's program), the
//! other half through `GET /watch` (the server-sent event stream on the same watcher core) —
//! and whenever its stream breaks, stalls or the node dies it reconnects to a random node from
//! the revision after the last one it saw — what an etcd client does. After the schedule each
//! watcher drains up to the end mark (a last write under the prefix), and the check compares what it saw with
//! the cluster's own history of those keys (read once more, from a converged node):
//! every change exactly once, in revision order, no gaps, and no event whose value no client
//! ever wrote (a phantom).

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, EventType, WatchOptions};
use serde_json::Value;

use crate::history::{Action, Op};
use crate::leases::within;
use crate::rng::Rng;
use crate::topology::Targets;

/// A stream that delivers nothing for this long is dropped and reopened elsewhere.
const STALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on a watcher's drain to the final revision after the schedule.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// One change as a watcher saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub rev: i64,
    pub key: String,
    /// `None` for a delete.
    pub value: Option<String>,
}

struct Track {
    seen: Vec<Seen>,
    reconnects: u64,
    /// Revisions delivered twice or out of order (a violation, kept verbatim).
    repeated: Vec<String>,
    compacted: Option<String>,
}

pub struct Watchers {
    stop: Arc<AtomicBool>,
    /// The revision to drain up to (0 until the schedule's end is known).
    until: Arc<AtomicI64>,
    handles: Vec<JoinHandle<Track>>,
    prefix: String,
    from: i64,
}

/// Opens `url` as an event stream and hands each event's `id` and data to `each` until the
/// stream ends, fails, or `each` says stop; errors are the caller's cue to reconnect.
fn follow(url: &str, mut each: impl FnMut(i64, &Value) -> bool) -> Result<(), String> {
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(STALL_TIMEOUT)
        .timeout(STALL_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client.get(url).send().map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let (mut event, mut id, mut data) = (String::new(), 0i64, String::new());
    for line in BufReader::new(resp).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim());
        } else if line.is_empty() && !data.is_empty() {
            let json: Value = serde_json::from_str(&data).map_err(|e| e.to_string())?;
            data.clear();
            if event == "compacted" {
                return Err(format!("compacted: {json}"));
            }
            if !each(id, &json) {
                return Ok(());
            }
        }
    }
    Err("stream ended".into())
}

/// Follows `prefix` from revision `from` through etcd's gRPC Watch on `addr`, handing each
/// revision's changes to `each` (as [`follow`] does for the event stream). A watch cancelled
/// because `from` was compacted is an error starting with "compacted".
fn follow_grpc(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    prefix: &str,
    from: i64,
    mut each: impl FnMut(i64, Vec<Seen>) -> bool,
) -> Result<(), String> {
    rt.block_on(async {
        let opts = ConnectOptions::new().with_connect_timeout(STALL_TIMEOUT);
        let mut client = within(
            STALL_TIMEOUT,
            "connect",
            Client::connect([addr], Some(opts)),
        )
        .await?;
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let mut stream =
            within(STALL_TIMEOUT, "watch", client.watch(prefix, Some(options))).await?;
        loop {
            let r = within(STALL_TIMEOUT, "watch stream", stream.message())
                .await?
                .ok_or("watch stream ended")?;
            if r.canceled() {
                return Err(if r.compact_revision() > 0 {
                    format!("compacted: revision {}", r.compact_revision())
                } else {
                    format!("watch canceled: {}", r.cancel_reason())
                });
            }
            // One response may carry several revisions: each is handed on whole.
            let mut batch: Vec<Seen> = Vec::new();
            for e in r.events() {
                let Some(kv) = e.kv() else {
                    return Err(format!("an event without a key: {e:?}"));
                };
                let seen = Seen {
                    rev: kv.mod_revision(),
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    value: (e.event_type() == EventType::Put)
                        .then(|| String::from_utf8_lossy(kv.value()).into_owned()),
                };
                if let Some(last) = batch.last()
                    && last.rev != seen.rev
                {
                    let rev = last.rev;
                    if !each(rev, std::mem::take(&mut batch)) {
                        return Ok(());
                    }
                }
                batch.push(seen);
            }
            if let Some(rev) = batch.first().map(|s| s.rev)
                && !each(rev, batch)
            {
                return Ok(());
            }
        }
    })
}

/// The changes of one SSE message.
fn changes(rev: i64, json: &Value) -> Vec<Seen> {
    json["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| Seen {
                    rev,
                    key: e["key"].as_str().unwrap_or("").to_string(),
                    value: (e["type"] == "put")
                        .then(|| e["value"].as_str().unwrap_or("").to_string()),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How a watcher watches.
#[derive(Clone, Copy, Debug)]
enum Via {
    Grpc,
    Sse,
}

fn watch_loop(
    via: Via,
    prefix: &str,
    from: i64,
    targets: &Targets,
    rng: Rng,
    stop: &AtomicBool,
    until: &AtomicI64,
) -> Track {
    let mut rng = rng;
    let mut t = Track {
        seen: Vec::new(),
        reconnects: 0,
        repeated: Vec::new(),
        compacted: None,
    };
    let mut next = from;
    let mut drain_deadline = None;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("watcher runtime: {e}"),
    };
    loop {
        let target = {
            let nodes = targets.read().unwrap_or_else(|e| e.into_inner()).clone();
            if nodes.is_empty() {
                std::thread::sleep(Duration::from_millis(50)); // no members published yet
                continue;
            }
            nodes[rng.below(nodes.len() as u64) as usize].1.clone()
        };
        let done = |next: i64| {
            let until = until.load(Ordering::SeqCst);
            stop.load(Ordering::SeqCst) && until > 0 && next > until
        };
        let start = next;
        let mut take = |rev: i64, seen: Vec<Seen>| {
            if rev < next {
                t.repeated.push(format!(
                    "revision {rev} delivered again (expected ≥ {next}) by {target} ({via:?})"
                ));
            } else {
                next = rev + 1;
                t.seen.extend(seen);
            }
            !done(next)
        };
        let r = match via {
            Via::Grpc => follow_grpc(&rt, &target, prefix, start, take),
            Via::Sse => {
                let url = format!("http://{target}/watch?prefix={prefix}&from={start}");
                follow(&url, |rev, json| take(rev, changes(rev, json)))
            }
        };
        if let Err(e) = &r
            && e.starts_with("compacted")
        {
            t.compacted = Some(e.clone());
            return t;
        }
        if done(next) {
            return t;
        }
        if stop.load(Ordering::SeqCst) {
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
            if Instant::now() > deadline {
                return t;
            }
        }
        t.reconnects += 1;
        std::thread::sleep(Duration::from_millis(100)); // reconnect pause
    }
}

impl Watchers {
    /// `n` watchers of `prefix` from revision `from`, on random members of `targets`.
    pub fn start(n: u32, prefix: &str, from: i64, targets: &Targets, rng: &Rng) -> Watchers {
        let stop = Arc::new(AtomicBool::new(false));
        let until = Arc::new(AtomicI64::new(0));
        let handles = (0..n)
            .map(|w| {
                let (stop, until, targets) = (stop.clone(), until.clone(), Arc::clone(targets));
                let (prefix, rng) = (prefix.to_string(), rng.fork(5000 + u64::from(w)));
                let via = if w % 2 == 0 { Via::Grpc } else { Via::Sse };
                std::thread::Builder::new()
                    .name(format!("chaos-watcher-{w}"))
                    .spawn(move || watch_loop(via, &prefix, from, &targets, rng, &stop, &until))
                    .expect("spawn watcher")
            })
            .collect();
        Watchers {
            stop,
            until,
            handles,
            prefix: prefix.to_string(),
            from,
        }
    }

    /// Drains every watcher to `final_rev` (the revision of `end_mark`, the last write under the
    /// prefix) and checks each against the cluster's history of the prefix read from
    /// `reference_node`, and that history against the writes `history` attempted. Answers the violations, a one-line summary and the counts.
    pub fn finish(
        self,
        final_rev: i64,
        reference_node: &str,
        history: &[Op],
        end_mark: (String, String),
    ) -> (Vec<String>, String, WatchCounts) {
        self.until.store(final_rev.max(1), Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        let tracks: Vec<Track> = self
            .handles
            .into_iter()
            .map(|h| h.join().expect("watcher thread"))
            .collect();
        let mut violations = Vec::new();
        let mut reference = Vec::new();
        if final_rev >= self.from {
            let url = format!(
                "http://{reference_node}/watch?prefix={}&from={}",
                self.prefix, self.from
            );
            let mut last = 0;
            let r = follow(&url, |rev, json| {
                last = rev;
                reference.extend(changes(rev, json));
                rev < final_rev
            });
            if r.is_err() && last < final_rev {
                violations.push(format!(
                    "the reference history stopped at revision {last} of {final_rev}: {r:?}"
                ));
            }
        }
        let mut written: HashSet<(String, String)> = history
            .iter()
            .flat_map(|o| match &o.action {
                Action::Put { key, value } | Action::Cas { key, value, .. } => {
                    vec![(key.clone(), value.to_string())]
                }
                Action::PutMany { pairs } => pairs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_string()))
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        written.insert(end_mark);
        violations.extend(compare(&tracks, &reference, &written));
        let events: usize = tracks.iter().map(|t| t.seen.len()).sum();
        let reconnects: u64 = tracks.iter().map(|t| t.reconnects).sum();
        let summary = format!(
            "{} watchers: {events} events seen ({} changes each), {reconnects} reconnects, {} violations",
            tracks.len(),
            reference.len(),
            violations.len()
        );
        let counts = WatchCounts {
            events: events as u64,
            reconnects,
        };
        (violations, summary, counts)
    }
}

/// What the watchers of a schedule (or a run) did.
#[derive(Debug, Default, Clone, Copy)]
pub struct WatchCounts {
    pub events: u64,
    pub reconnects: u64,
}

impl WatchCounts {
    pub fn add(&mut self, o: &WatchCounts) {
        self.events += o.events;
        self.reconnects += o.reconnects;
    }
}

/// What each watcher saw against the cluster's history (`reference`), and that history
/// against what clients wrote: the violations.
fn compare(
    tracks: &[Track],
    reference: &[Seen],
    written: &HashSet<(String, String)>,
) -> Vec<String> {
    let mut violations = Vec::new();
    for s in reference {
        if let Some(v) = &s.value
            && !written.contains(&(s.key.clone(), v.clone()))
        {
            violations.push(format!(
                "phantom event: {s:?} was never written by a client"
            ));
        }
    }
    for (w, t) in tracks.iter().enumerate() {
        for r in &t.repeated {
            violations.push(format!("watcher {w}: {r}"));
        }
        if let Some(c) = &t.compacted {
            violations.push(format!("watcher {w} could not catch up: {c}"));
        }
        if t.seen != reference {
            let first = t.seen.iter().zip(reference).position(|(a, b)| a != b);
            violations.push(format!(
                    "watcher {w} saw {} changes, the cluster made {}; first difference at {first:?}: saw {:?}, made {:?}",
                    t.seen.len(),
                    reference.len(),
                    first.and_then(|i| t.seen.get(i)),
                    first.and_then(|i| reference.get(i)),
                ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(rev: i64, key: &str, value: &str) -> Seen {
        Seen {
            rev,
            key: key.into(),
            value: Some(value.into()),
        }
    }

    fn track(seen: Vec<Seen>) -> Track {
        Track {
            seen,
            reconnects: 0,
            repeated: Vec::new(),
            compacted: None,
        }
    }

    #[test]
    fn the_watch_check_catches_gaps_duplicates_reordering_and_phantoms() {
        let reference = vec![seen(2, "a", "1"), seen(3, "b", "2"), seen(4, "a", "3")];
        let written: HashSet<(String, String)> = [("a", "1"), ("b", "2"), ("a", "3")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let good = track(reference.clone());
        assert!(compare(&[good], &reference, &written).is_empty());
        let gap = track(vec![reference[0].clone(), reference[2].clone()]);
        let dup = track(vec![
            reference[0].clone(),
            reference[0].clone(),
            reference[1].clone(),
            reference[2].clone(),
        ]);
        let reordered = track(vec![
            reference[1].clone(),
            reference[0].clone(),
            reference[2].clone(),
        ]);
        for bad in [gap, dup, reordered] {
            assert_eq!(compare(&[bad], &reference, &written).len(), 1);
        }
        let phantom = vec![seen(2, "a", "9")];
        let v = compare(&[track(phantom.clone())], &phantom, &written);
        assert!(v.iter().any(|v| v.starts_with("phantom")), "{v:?}");
    }
}
