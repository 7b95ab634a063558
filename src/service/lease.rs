//! Leases, the part that needs a clock: when each lease expires, decided by the leader alone.
//!
//! Owns: the leader's deadlines (in memory, never replicated), keep-alives and time-to-live
//! (answered by the leader; a follower relays them to it over the peer link), choosing lease
//! ids, and the expiry loop that revokes expired leases through the log. Does not own: which
//! leases exist and which keys they hold (`mvcc::lease`, replicated and deterministic).
//!
//! Rules:
//! - a lease ends only by a `LeaseRevoke` entry (a client's revoke or the leader's expiry), so
//!   every replica deletes its keys at the same revision;
//! - a node starts its deadlines afresh whenever it becomes leader: every lease gets its full
//!   TTL plus [`LEADER_CHANGE_EXTENSION`] from then (as etcd's `Promote` does), so a leader
//!   change never expires a lease whose keep-alives were being answered;
//! - at most [`REVOKES_PER_TICK_MAX`] expiries are proposed per [`EXPIRY_TICK`] (etcd revokes at
//!   most 1,000 a second), so a mass expiry cannot flood the log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;

use crate::app::App;
use crate::error::KvError;
use crate::mvcc::MvccError;
use crate::raft::forward::leading_term;
use crate::raft::types::Command;
use crate::raft::types::Outcome;

/// How often the leader looks for expired leases.
pub const EXPIRY_TICK: Duration = Duration::from_millis(250);
/// Expired leases revoked per tick at most.
pub const REVOKES_PER_TICK_MAX: usize = 250;
/// What a new leader adds to every lease's TTL (etcd adds its election timeout).
pub const LEADER_CHANGE_EXTENSION: Duration = Duration::from_secs(2);
/// Tries to grant with a fresh id when a chosen id exists already.
const GRANT_ATTEMPTS_MAX: usize = 3;

/// What a follower asks the leader (over `/raft/lease`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum LeaseAsk {
    KeepAlive { id: i64 },
    TimeToLive { id: i64 },
}

/// A lease's TTLs as the leader sees them, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTtl {
    pub granted: i64,
    /// Whole seconds left before it expires (truncated, as etcd's `TTL` field).
    pub remaining: i64,
}

/// The leader's deadlines; one per node, in `App`.
#[derive(Debug, Default)]
pub struct Lessor {
    timers: Mutex<Timers>,
    /// A counter mixed into chosen lease ids.
    grants: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Timers {
    /// The term these deadlines belong to (`None`: not leading).
    term: Option<u64>,
    deadlines: HashMap<i64, Instant>,
}

impl Lessor {
    fn lock(&self) -> std::sync::MutexGuard<'_, Timers> {
        // Deadlines are plain data, consistent after every statement: a poisoned lock's data
        // is still good.
        self.timers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A lease id nobody chose before with high probability (collisions are refused by the
    /// log and retried).
    fn choose_id(&self, node_id: u64) -> i64 {
        let n = self
            .grants
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut x = nanos ^ node_id.rotate_left(32) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // splitmix64's finalizer spreads the bits.
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        ((x >> 1) as i64).max(1)
    }

    /// Sets `id`'s deadline to `ttl` from now (only meaningful while leading).
    fn refresh(&self, id: i64, ttl: i64) {
        let deadline = Instant::now() + Duration::from_secs(ttl.max(0) as u64);
        self.lock().deadlines.insert(id, deadline);
    }

    /// The deadlines of `term` (the term this node leads now, `None`: not leading); `leases`
    /// (every `(id, ttl)`) is asked only when a new term starts.
    fn for_term(
        &self,
        term: Option<u64>,
        now: Instant,
        leases: impl FnOnce() -> Vec<(i64, i64)>,
    ) -> std::sync::MutexGuard<'_, Timers> {
        let mut timers = self.lock();
        if timers.term != term {
            timers.start(term, now, term.map(|_| leases()).unwrap_or_default());
        }
        timers
    }
}

impl Timers {
    /// A new term: as etcd's `Promote`, every lease that exists now gets its full TTL plus
    /// [`LEADER_CHANGE_EXTENSION`]; one granted later gets its TTL from when this leader first
    /// sees it ([`Timers::deadline`]).
    fn start(&mut self, term: Option<u64>, now: Instant, leases: Vec<(i64, i64)>) {
        self.term = term;
        self.deadlines = leases
            .into_iter()
            .map(|(id, ttl)| (id, now + ttl_duration(ttl) + LEADER_CHANGE_EXTENSION))
            .collect();
    }

    /// `id`'s deadline; a lease granted in this term that has none yet gets its TTL from now
    /// (it was applied just before: a grant through a follower sets no deadline here).
    fn deadline(&mut self, id: i64, ttl: i64, now: Instant) -> Instant {
        *self
            .deadlines
            .entry(id)
            .or_insert_with(|| now + ttl_duration(ttl))
    }

    /// A keep-alive: `id`'s deadline moves to `granted` from now, unless it has passed already
    /// (then `None`: the revoke is on its way). Checked and moved under one lock, so the expiry
    /// loop never revokes a lease whose keep-alive was answered.
    fn renew(&mut self, id: i64, granted: i64, now: Instant) -> Option<LeaseTtl> {
        if self.deadline(id, granted, now) <= now {
            return None;
        }
        self.deadlines.insert(id, now + ttl_duration(granted));
        Some(LeaseTtl {
            granted,
            remaining: granted,
        })
    }

    /// `id`'s TTLs at `now`: the whole seconds left, truncated as etcd's
    /// `int64(Remaining().Seconds())`, and strictly below the TTL (a lease renewed or granted
    /// "now" was renewed or granted an instant before), so a fresh 60 s lease answers 59.
    fn ttl_of(&mut self, id: i64, granted: i64, now: Instant) -> LeaseTtl {
        let left = self
            .deadline(id, granted, now)
            .saturating_duration_since(now);
        let remaining = left.saturating_sub(Duration::from_nanos(1)).as_secs() as i64;
        LeaseTtl { granted, remaining }
    }
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

/// etcd's LeaseGrant: `id` 0 lets this node choose one. Answers the id and granted TTL.
pub async fn grant(app: &App, id: i64, ttl: i64) -> Result<(i64, i64), KvError> {
    for _ in 0..GRANT_ATTEMPTS_MAX {
        let chosen = if id == 0 {
            app.lessor.choose_id(app.node_id)
        } else {
            id
        };
        let cmd = Command::LeaseGrant { id: chosen, ttl };
        let ok = crate::raft::forward::write(app, cmd).await?;
        match ok.response.outcome {
            Some(Outcome::LeaseGranted { ttl }) => {
                app.lessor.refresh(chosen, ttl);
                return Ok((chosen, ttl));
            }
            Some(Outcome::Refused(MvccError::LeaseExists)) if id == 0 => continue,
            Some(Outcome::Refused(e)) => return Err(KvError::Store(e)),
            other => return Err(KvError::Internal(format!("LeaseGrant answered {other:?}"))),
        }
    }
    Err(KvError::Store(MvccError::LeaseExists))
}

/// etcd's LeaseRevoke: the lease ends and its keys are deleted (one revision). Answers the
/// revision after it.
pub async fn revoke(app: &App, id: i64) -> Result<i64, KvError> {
    match crate::raft::forward::propose(app, Command::LeaseRevoke { id }).await? {
        (revision, Outcome::LeaseRevoked) => Ok(revision),
        (_, other) => Err(KvError::Internal(format!("LeaseRevoke answered {other:?}"))),
    }
}

/// A keep-alive or time-to-live, answered by the leader (relayed there from a follower).
pub async fn ask(app: &App, ask: LeaseAsk) -> Result<LeaseTtl, KvError> {
    match app.leader() {
        Some((id, _)) if id == app.node_id => answer(app, ask).await,
        Some((leader_id, leader)) => {
            let link = app.peers.link(
                leader_id,
                &leader.raft_addr,
                crate::peer::link::Lane::Forward,
            );
            let answer: Result<LeaseTtl, KvError> = link
                .call(crate::peer::wire::Rpc::Lease, &ask, app.request_timeout)
                .await
                .map_err(|e| {
                    KvError::NoLeader(format!("the leader did not answer the lease request: {e}"))
                })?;
            answer
        }
        None => Err(KvError::NoLeader("no leader is known".into())),
    }
}

/// The leader's answer to `ask` (`/raft/lease` calls this). A node that is not the leader
/// refuses with `NoLeader` (the asker retries with the next leader).
pub async fn answer(app: &App, ask: LeaseAsk) -> Result<LeaseTtl, KvError> {
    if app.leader().map(|(id, _)| id) != Some(app.node_id) {
        return Err(KvError::NoLeader("the asked node is not the leader".into()));
    }
    let id = match ask {
        LeaseAsk::KeepAlive { id } | LeaseAsk::TimeToLive { id } => id,
    };
    // Must read the lease after a read barrier: a lease revoked by an entry this leader
    // committed but did not apply yet would otherwise be kept alive.
    crate::raft::read::read_barrier(app, crate::raft::read::ReadLevel::Linearizable).await?;
    let granted = app
        .state_machine
        .lease_ttl(id)
        .ok_or(KvError::Store(MvccError::LeaseNotFound { lease: id }))?;
    let term = leading_term(app)
        .ok_or_else(|| KvError::NoLeader("the asked node is not the leader".into()))?;
    // The deadlines of this term (started afresh here if the expiry loop has not seen the
    // term yet, never a previous term's).
    let now = Instant::now();
    let mut timers = app
        .lessor
        .for_term(Some(term), now, || app.state_machine.lease_ttls());
    match ask {
        // A lease past its deadline is as good as revoked (the revoke is on its way): refusing
        // it means no keep-alive is ever answered for a lease that then expires (etcd too).
        LeaseAsk::KeepAlive { .. } => timers
            .renew(id, granted, now)
            .ok_or(KvError::Store(MvccError::LeaseNotFound { lease: id })),
        LeaseAsk::TimeToLive { .. } => Ok(timers.ttl_of(id, granted, now)),
    }
}

/// The expiry loop: runs on every node for its whole life, acts while it leads.
pub async fn run_expiry(app: std::sync::Arc<App>) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some((term, expired)) = expired_now(&app) else {
            continue;
        };
        for id in expired {
            // Must be proposed here, by the leader whose timers ran out, and only in the term
            // they belong to (never forwarded): a leader paused past an election would
            // otherwise wake up and have the new leader revoke leases it keeps alive.
            let cmd = Command::LeaseRevoke { id };
            match crate::raft::forward::propose_as_leader(&app, cmd, term).await {
                Ok((revision, Outcome::LeaseRevoked)) => tracing::info!(
                    lease = format!("{id:x}"),
                    revision,
                    "lease expired: revoked"
                ),
                Ok((_, other)) => {
                    tracing::warn!(lease = format!("{id:x}"), outcome = ?other, "an expiry answered an unexpected outcome");
                }
                // Revoked meanwhile by a client: nothing to do.
                Err(KvError::Store(MvccError::LeaseNotFound { .. })) => {}
                Err(e) => {
                    tracing::warn!(lease = format!("{id:x}"), error = %e, "could not revoke an expired lease; retrying");
                    break;
                }
            }
        }
    }
}

/// The term this node leads in and the leases past their deadline in it (at most
/// [`REVOKES_PER_TICK_MAX`]; `None` when not leading); keeps the deadlines in step with
/// leadership and with the leases that exist.
fn expired_now(app: &App) -> Option<(u64, Vec<i64>)> {
    let term = leading_term(app);
    let now = Instant::now();
    let leases = app.state_machine.lease_ttls();
    let mut timers = app.lessor.for_term(term, now, || leases.clone());
    let Some(term) = term else {
        timers.deadlines.clear();
        return None;
    };
    let mut live = HashMap::with_capacity(leases.len());
    let mut expired = Vec::new();
    for (id, ttl) in leases {
        let deadline = timers.deadline(id, ttl, now);
        if deadline <= now && expired.len() < REVOKES_PER_TICK_MAX {
            expired.push(id);
        }
        live.insert(id, deadline);
    }
    timers.deadlines = live;
    Some((term, expired))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_ids_are_positive_and_distinct() {
        let lessor = Lessor::default();
        let ids: std::collections::HashSet<i64> =
            (0..10_000).map(|_| lessor.choose_id(7)).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| *id > 0));
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_keep_alive_past_the_deadline_is_refused_and_moves_nothing() {
        let lessor = Lessor::default();
        let now = Instant::now();
        let mut t = lessor.for_term(Some(3), now, || vec![(2, 10)]);
        assert!(
            t.renew(1, 10, now).is_some(),
            "granted in this term: renewed"
        );
        t.deadlines.insert(2, now); // a deadline of now: passed at once
        assert_eq!(t.renew(2, 10, now), None);
        assert_eq!(
            t.ttl_of(2, 10, now).remaining,
            0,
            "the passed deadline stays"
        );
    }

    #[test]
    fn remaining_ttl_is_truncated_below_the_ttl_as_etcd_answers() {
        let mut t = Timers::default();
        let now = Instant::now();
        // A lease this leader has not seen yet starts now: 59 of 60 s left, as etcd answers
        // right after a grant (never 60).
        assert_eq!(
            t.ttl_of(1, 60, now),
            LeaseTtl {
                granted: 60,
                remaining: 59
            }
        );
        assert_eq!(t.ttl_of(1, 60, now + S / 2).remaining, 59);
        assert_eq!(t.ttl_of(1, 60, now + S).remaining, 58);
        assert_eq!(t.ttl_of(1, 60, now + 70 * S).remaining, 0);
        assert!(t.renew(1, 60, now + 10 * S).is_some());
        assert_eq!(t.ttl_of(1, 60, now + 10 * S).remaining, 59);
    }

    #[test]
    fn a_new_term_extends_existing_leases_only() {
        let lessor = Lessor::default();
        let now = Instant::now();
        {
            let mut t = lessor.for_term(Some(4), now, || vec![(1, 10)]);
            // Existing at promotion: TTL + the extension; granted later: its TTL.
            assert_eq!(
                t.deadline(1, 10, now),
                now + 10 * S + LEADER_CHANGE_EXTENSION
            );
            assert_eq!(t.deadline(2, 10, now + S), now + 11 * S);
        }
        // The same term again keeps the deadlines; a later term starts afresh, with no
        // deadline of the earlier term left (a node that leads again never reuses them).
        let mut t = lessor.for_term(Some(4), now + 5 * S, || unreachable!("same term"));
        assert_eq!(t.deadline(2, 10, now + 5 * S), now + 11 * S);
        drop(t);
        let later = now + 30 * S;
        let mut t = lessor.for_term(Some(6), later, || vec![(1, 10)]);
        assert_eq!(
            t.deadline(1, 10, later),
            later + 10 * S + LEADER_CHANGE_EXTENSION
        );
        assert!(!t.deadlines.contains_key(&2), "lease 2 is gone");
        drop(t);
        assert!(lessor.for_term(None, later, Vec::new).deadlines.is_empty());
    }
}
