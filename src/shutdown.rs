//! Graceful shutdown (SIGTERM / SIGINT): the node's lifecycle phase, the count of public requests
//! in flight, and the ordered steps `node.rs` runs once its shutdown future resolves.
//!
//! The steps, in this order (each logged with its duration):
//! 1. **Not ready**: `/readyz` and `/health` answer `503 shutting_down` at once, so load
//!    balancers stop sending traffic; requests are still served.
//! 2. **Hand-off**: a leader with other voters transfers leadership to the most caught-up one and
//!    waits (at most [`HANDOFF_MAX`]) until the metrics show another leader. Writes arriving
//!    meanwhile are not lost: openraft refuses them before appending (`ForwardToLeader`) and the
//!    write path forwards them to the new leader.
//! 3. **Drain**: the listeners stop accepting connections; a public request that arrives on an
//!    open connection gets `503 shutting_down`; the ones in flight, and write batches and
//!    read-index requests forwarded by followers, finish (at most [`DRAIN_MAX`]). A proposal
//!    still pending when Raft stops answers `503 timeout` (outcome unknown), never a 500.
//! 4. **Stop Raft**: `raft.shutdown()` (in `node.rs`).
//! 5. **Flush the log**: every record written to the WAL is fsynced ([`flush_log`]).
//!
//! A follower or learner skips step 2. The whole sequence is bounded (about 8 s plus the Raft
//! core's own shutdown), below the 10 s an orchestrator usually waits before SIGKILL.

use std::sync::atomic::AtomicU8;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::app::App;
use crate::store::log::LogStore;

/// Bound on the leadership hand-off (step 2): about three election timeouts at the default
/// heartbeat, enough for the target to catch up, win its election and be seen.
pub const HANDOFF_MAX: Duration = Duration::from_secs(3);
/// Bound on waiting for in-flight public requests (step 3).
pub const DRAIN_MAX: Duration = Duration::from_secs(5);
/// Bound on the final fsync of the log (step 5).
pub const FLUSH_MAX: Duration = Duration::from_secs(2);

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// Shutdown began: not ready, handing leadership off, still serving requests.
    Stopping,
    /// New public requests are refused with 503; in-flight ones finish.
    Draining,
}

/// The lifecycle phase and the requests in flight. One per node, in `App`.
#[derive(Debug, Default)]
pub struct Lifecycle {
    phase: AtomicU8,
    in_flight: AtomicUsize,
    idle: Notify,
    /// Woken when shutdown begins.
    stop: Notify,
}

/// A public request being served; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Lifecycle);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Lifecycle {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Serving,
            1 => Phase::Stopping,
            _ => Phase::Draining,
        }
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.phase() != Phase::Serving
    }

    fn enter_phase(&self, phase: Phase) {
        let value = match phase {
            Phase::Serving => 0,
            Phase::Stopping => 1,
            Phase::Draining => 2,
        };
        self.phase.fetch_max(value, Ordering::SeqCst);
        if value > 0 {
            self.stop.notify_waiters();
        }
    }

    /// Returns once shutdown has begun (at once if it has).
    pub async fn stopping(&self) {
        loop {
            let notified = self.stop.notified();
            tokio::pin!(notified);
            // Registered before the phase is read, so a shutdown in between is not missed.
            notified.as_mut().enable();
            if self.is_stopping() {
                return;
            }
            notified.await;
        }
    }

    /// Admits a public request, or `None` once draining (the caller answers 503).
    pub fn enter(&self) -> Option<InFlight<'_>> {
        // The count must be raised before the phase is read: `wait_idle` reads them in the
        // opposite order, so either it sees this request or this request sees `Draining`.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self);
        (self.phase() != Phase::Draining).then_some(guard)
    }

    /// Counts a request that is never refused (a write batch or read-index request a follower
    /// forwarded here): the drain waits for it too.
    pub fn track(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self)
    }

    /// Requests in flight (public ones and tracked forwarded ones).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no public request is in flight, at most `bound`; whether it got there.
    async fn wait_idle(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the count is read, so a drop to zero in between is not missed.
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }
}

/// Steps 1–3: not ready, hand leadership off, stop the listeners (`stop_listeners`) and drain.
pub async fn hand_off_and_drain(app: &App, stop_listeners: impl FnOnce()) {
    let t0 = Instant::now();
    app.lifecycle.enter_phase(Phase::Stopping);
    tracing::info!("shutdown step 1/5: not ready (/readyz and /health answer 503)");

    // Must hand leadership off before the listeners stop: the transfer and the new leader's
    // election travel over this node's peer routes.
    let step = Instant::now();
    match crate::cluster::leader::hand_off(app, HANDOFF_MAX).await {
        Ok(Some(new_leader)) => tracing::info!(
            new_leader,
            took_ms = step.elapsed().as_millis(),
            "shutdown step 2/5: leadership handed off"
        ),
        Ok(None) => {
            tracing::info!("shutdown step 2/5: not the leader (or no other voter): no hand-off")
        }
        Err(e) => tracing::warn!(
            error = %e,
            took_ms = step.elapsed().as_millis(),
            "shutdown step 2/5: leadership hand-off did not complete; stopping anyway \
             (the others elect a leader after an election timeout)"
        ),
    }

    let step = Instant::now();
    app.lifecycle.enter_phase(Phase::Draining);
    stop_listeners();
    let drained = app.lifecycle.wait_idle(DRAIN_MAX).await;
    if drained {
        tracing::info!(
            took_ms = step.elapsed().as_millis(),
            "shutdown step 3/5: listeners stopped, in-flight requests finished"
        );
    } else {
        tracing::warn!(
            in_flight = app.lifecycle.in_flight(),
            bound_ms = DRAIN_MAX.as_millis(),
            "shutdown step 3/5: requests still in flight at the bound; they are cut off"
        );
    }
    tracing::info!(
        took_ms = t0.elapsed().as_millis(),
        "shutdown: hand-off and drain done"
    );
}

/// Step 5: makes every record written to the WAL durable. Must run after `raft.shutdown()`: no
/// append may be issued after this flush.
pub async fn flush_log(log: &LogStore) -> Result<(), std::io::Error> {
    let step = Instant::now();
    let result = match tokio::time::timeout(FLUSH_MAX, log.sync()).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::other(format!(
            "log flush not done within {FLUSH_MAX:?}"
        ))),
    };
    match &result {
        Ok(()) => tracing::info!(
            took_ms = step.elapsed().as_millis(),
            "shutdown step 5/5: raft log flushed (fsync)"
        ),
        Err(e) => tracing::error!(error = %e, "shutdown step 5/5: raft log flush failed"),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn draining_refuses_new_requests_and_waits_for_the_ones_in_flight() {
        let life = std::sync::Arc::new(Lifecycle::default());
        assert_eq!(life.phase(), Phase::Serving);
        let held = life.enter().expect("admitted while serving");
        life.enter_phase(Phase::Stopping);
        assert!(life.enter().is_some(), "still admitted while handing off");
        life.enter_phase(Phase::Draining);
        assert!(life.enter().is_none(), "refused while draining");
        assert_eq!(life.in_flight(), 1, "a refused request is not counted");
        assert!(!life.wait_idle(Duration::from_millis(50)).await);
        let waiter = {
            let life = life.clone();
            tokio::spawn(async move { life.wait_idle(Duration::from_secs(5)).await })
        };
        drop(held);
        assert!(
            waiter.await.expect("join"),
            "idle once the last request ended"
        );
        // Phases never go back.
        life.enter_phase(Phase::Serving);
        assert_eq!(life.phase(), Phase::Draining);
    }

    #[tokio::test]
    async fn waiters_learn_at_once_that_shutdown_began() {
        let life = std::sync::Arc::new(Lifecycle::default());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let life = life.clone();
                tokio::spawn(async move { life.stopping().await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(waiters.iter().all(|w| !w.is_finished()), "still serving");
        life.enter_phase(Phase::Stopping);
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("woken")
                .expect("join");
        }
        // Once stopping, it returns at once.
        tokio::time::timeout(Duration::from_millis(100), life.stopping())
            .await
            .expect("at once");
    }
}
