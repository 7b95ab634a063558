//! Automatic compaction with etcd's flags: the leader decides when and at which revision, and
//! proposes `Compact { revision }` through the log, so applying it stays deterministic on every
//! node (no clock in apply).
//!
//! - `--auto-compaction-mode revision --auto-compaction-retention N` (raftkv's default, N =
//!   10,000): every [`REVISION_CHECK_INTERVAL`], compact at `current revision − N`. This bounds
//!   the retained history by revisions, whatever the write rate (etcd checks every 5 minutes;
//!   checking more often keeps the bound tight under heavy writes).
//! - `--auto-compaction-mode periodic --auto-compaction-retention 1h` (or `30m`, `90s`, a bare
//!   number of hours as in etcd): the leader samples the current revision every tenth of the
//!   retention and compacts at the revision that was current one retention ago.
//! - A retention of `0` turns it off (etcd's default; raftkv keeps it on so memory stays bounded).
//!
//! A new leader starts sampling afresh (as etcd's compactor does after a leader change).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::app::SharedApp;
use crate::error::KvError;
use crate::raft::types::Command;
use crate::raft::types::Outcome;

/// How often the leader checks in revision mode.
pub const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Shortest sampling interval in periodic mode.
const PERIODIC_SAMPLE_MIN: Duration = Duration::from_millis(100);
/// Default `--auto-compaction-retention` in revision mode.
pub const DEFAULT_REVISION_RETENTION: i64 = 10_000;

/// The auto-compaction policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    /// Keep the last `retain` revisions.
    Revision {
        retain: i64,
    },
    /// Keep the revisions of the last `retain`.
    Periodic {
        retain: Duration,
    },
}

impl AutoCompaction {
    /// From `--auto-compaction-mode` and `--auto-compaction-retention` (etcd's spellings).
    pub fn parse(mode: &str, retention: Option<&str>) -> Result<AutoCompaction, String> {
        match mode {
            "revision" => {
                let retain = match retention {
                    None => DEFAULT_REVISION_RETENTION,
                    Some(r) => r.trim().parse::<i64>().map_err(|_| {
                        format!("--auto-compaction-retention {r:?}: revision mode takes a number of revisions")
                    })?,
                };
                match retain {
                    0 => Ok(AutoCompaction::Off),
                    r if r > 0 => Ok(AutoCompaction::Revision { retain: r }),
                    r => Err(format!(
                        "--auto-compaction-retention {r} must not be negative"
                    )),
                }
            }
            "periodic" => {
                let retain =
                    parse_duration("--auto-compaction-retention", retention.unwrap_or("1h"))?;
                if retain.is_zero() {
                    Ok(AutoCompaction::Off)
                } else {
                    Ok(AutoCompaction::Periodic { retain })
                }
            }
            other => Err(format!(
                "--auto-compaction-mode {other:?}: use revision or periodic"
            )),
        }
    }
}

/// A duration flag's value: a duration like `1h30m`, `5m`, `90s` or `500ms`, or a bare number
/// of hours (etcd's periodic retention); errors name `flag`.
pub fn parse_duration(flag: &str, text: &str) -> Result<Duration, String> {
    let bad = || format!("{flag} {text:?}: use e.g. 1h, 30m, 90s or 2 (hours)");
    let t = text.trim();
    if let Ok(hours) = t.parse::<u64>() {
        return hours
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(bad);
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let after = &rest[digits..];
        let (unit, len) = ["ms", "h", "m", "s"]
            .iter()
            .find(|u| after.starts_with(*u))
            .map(|u| (*u, u.len()))
            .ok_or_else(bad)?;
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
            _ => Duration::from_secs(n),
        };
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = &after[len..];
    }
    Ok(total)
}

/// The leader's compactor: runs until the node stops.
pub async fn run(app: SharedApp, policy: AutoCompaction) {
    let interval = match policy {
        AutoCompaction::Off => return,
        AutoCompaction::Revision { .. } => REVISION_CHECK_INTERVAL,
        AutoCompaction::Periodic { retain } => (retain / 10).max(PERIODIC_SAMPLE_MIN),
    };
    tracing::info!(?policy, ?interval, "auto-compaction on");
    // (when, revision then), oldest first; only while this node leads.
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if !matches!(app.leader(), Some((id, _)) if id == app.node_id) {
            samples.clear();
            continue;
        }
        let current = app.state_machine.revision();
        let compacted = app.state_machine.compact_revision();
        let target = match policy {
            AutoCompaction::Off => None,
            AutoCompaction::Revision { retain } => {
                crate::mvcc::revision_compaction_target(current, retain, compacted)
            }
            AutoCompaction::Periodic { retain } => {
                let now = Instant::now();
                samples.push_back((now, current));
                // The newest sample at least one retention old is the revision to keep from.
                let mut target = None;
                while let Some(&(at, rev)) = samples.front() {
                    if now.duration_since(at) < retain {
                        break;
                    }
                    target = Some(rev);
                    samples.pop_front();
                }
                target.filter(|&t| t > compacted && t > 0)
            }
        };
        if let Some(revision) = target {
            compact(&app, revision).await;
        }
    }
}

async fn compact(app: &SharedApp, revision: i64) {
    match crate::raft::forward::write(app, Command::Compact { revision }).await {
        Ok(ok) => match ok.response.outcome {
            Some(Outcome::Compact) => tracing::info!(revision, "auto-compacted history"),
            Some(Outcome::Refused(e)) => {
                tracing::debug!(revision, error = %e, "auto-compaction not needed")
            }
            other => tracing::warn!(revision, ?other, "auto-compaction: unexpected answer"),
        },
        Err(KvError::NoLeader(_)) => {}
        Err(e) => tracing::warn!(revision, error = %e, "auto-compaction failed; retrying later"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_like_etcd() {
        use AutoCompaction as A;
        assert_eq!(
            A::parse("revision", None),
            Ok(A::Revision { retain: 10_000 })
        );
        assert_eq!(
            A::parse("revision", Some("500")),
            Ok(A::Revision { retain: 500 })
        );
        assert_eq!(A::parse("revision", Some("0")), Ok(A::Off));
        assert!(A::parse("revision", Some("1h")).is_err());
        assert!(A::parse("revision", Some("-3")).is_err());
        let hours = |h: u64| Duration::from_secs(h * 3600);
        assert_eq!(
            A::parse("periodic", None),
            Ok(A::Periodic { retain: hours(1) })
        );
        assert_eq!(
            A::parse("periodic", Some("2")),
            Ok(A::Periodic { retain: hours(2) })
        );
        assert_eq!(
            A::parse("periodic", Some("1h30m")),
            Ok(A::Periodic {
                retain: Duration::from_secs(5400)
            })
        );
        assert_eq!(
            A::parse("periodic", Some("1500ms")),
            Ok(A::Periodic {
                retain: Duration::from_millis(1500)
            })
        );
        assert_eq!(A::parse("periodic", Some("0")), Ok(A::Off));
        for bad in ["1x", "h", "1h3", ""] {
            assert!(
                A::parse("periodic", Some(bad)).is_err() || bad.is_empty(),
                "{bad}"
            );
        }
        assert!(A::parse("sometimes", None).is_err());
    }
}
