//! Lease keepers under chaos: each keeper grants a short lease over the etcd API on a random
//! node, puts one key under it (`l<n>/<keeper>`, outside the checked keys), and keeps it alive
//! over a `LeaseKeepAlive` stream, reconnecting to a random node whenever a call fails or
//! stalls — what a service registering itself in etcd does. Every answer is recorded with the
//! time its request was sent and the time the answer arrived; [`check`] then asks of the
//! record what the lease contract promises:
//!
//! - a keep-alive (or grant) sent at `s` and answered with TTL `t > 0` means the lease lives
//!   until at least `s + t`: no observation that it is gone (a keep-alive answered TTL 0, its
//!   key absent from a linearizable read, a put under it refused "requested lease not found")
//!   may complete before then;
//! - a lease seen gone stays gone: no keep-alive sent after that is answered with a TTL.
//!
//! Leases that expire because no keep-alive got through for a whole TTL (the keeper's node cut
//! off, the cluster without a leader, or the keeper pausing on purpose every [`LAPSE_EVERY`]
//! keep-alives) are expected: they are counted, not violations.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions};

use crate::history::now_ns;
use crate::rng::Rng;
use crate::topology::Targets;

/// The TTL keepers ask for: the server's minimum, so faults often outlast it.
pub const LEASE_TTL_S: i64 = 2;
/// Between two keep-alives of one keeper.
const KEEP_ALIVE_EVERY: Duration = Duration::from_millis(300);
/// A call (connect, grant, put, keep-alive answer, get) that takes longer is abandoned, and the
/// keeper reconnects elsewhere.
const CALL_TIMEOUT: Duration = Duration::from_millis(1500);
/// Every this many keep-alives the keeper also reads its key.
const READ_EVERY: u32 = 3;
/// Every this many answered keep-alives a keeper stops renewing for [`LAPSE`], so its lease
/// expires (while faults go on) and it grants a fresh one.
const LAPSE_EVERY: u32 = 5;
/// Longer than the TTL and the expiry loop's tick together.
const LAPSE: Duration = Duration::from_millis(LEASE_TTL_S as u64 * 1000 + 1000);
/// In the error texts for a lease that does not exist (etcd's "requested lease not found", and
/// the client's own when a keep-alive stream opens with TTL 0).
const LEASE_NOT_FOUND: &str = "lease not found";

/// One answer a keeper got about a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseObs {
    /// A grant or keep-alive sent at `sent_ns`, answered at `done_ns` with TTL `ttl_s > 0`.
    Alive {
        lease: i64,
        sent_ns: i64,
        done_ns: i64,
        ttl_s: i64,
        how: &'static str,
    },
    /// An answer completed at `done_ns` saying the lease (or its key) is gone.
    Gone {
        lease: i64,
        sent_ns: i64,
        done_ns: i64,
        how: &'static str,
    },
}

/// The violations of the lease contract in `obs` (any order, any leases).
pub fn check(obs: &[LeaseObs]) -> Vec<String> {
    let mut violations = Vec::new();
    for gone in obs {
        let LeaseObs::Gone {
            lease,
            done_ns: gone_at,
            how: gone_how,
            ..
        } = gone
        else {
            continue;
        };
        for alive in obs {
            let LeaseObs::Alive {
                lease: l,
                sent_ns,
                ttl_s,
                how,
                ..
            } = alive
            else {
                continue;
            };
            if l != lease {
                continue;
            }
            let owed_until = sent_ns + ttl_s * 1_000_000_000;
            if *gone_at < owed_until {
                violations.push(format!(
                    "lease {lease:x} expired early: seen gone ({gone_how}) at {:.3}s, but a {how} sent at {:.3}s was answered with TTL {ttl_s}s (owed until {:.3}s)",
                    secs(*gone_at),
                    secs(*sent_ns),
                    secs(owed_until)
                ));
            }
            if sent_ns > gone_at {
                violations.push(format!(
                    "lease {lease:x} came back: seen gone ({gone_how}) at {:.3}s, then a {how} sent at {:.3}s was answered with TTL {ttl_s}s",
                    secs(*gone_at),
                    secs(*sent_ns)
                ));
            }
        }
    }
    violations
}

fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

/// What one keeper did.
#[derive(Debug, Default)]
struct Track {
    obs: Vec<LeaseObs>,
    granted: u64,
    renewed: u64,
    gone: u64,
    reconnects: u64,
    /// The first few distinct reasons a session ended (shown in the summary).
    errors: Vec<String>,
}

/// Distinct session errors kept per keeper.
const ERRORS_KEPT: usize = 3;
/// Each kept error is cut to this many characters.
const ERROR_CHARS_SHOWN: usize = 120;

pub struct Keepers {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<Track>>,
}

/// The lease a keeper holds now.
struct Held {
    id: i64,
    /// The TTL it was granted (what every keep-alive renews it to).
    ttl_s: i64,
    /// Its key was written under it (acknowledged), so a read that misses it means it is gone.
    key_written: bool,
}

/// Bounds an etcd-client call `f` by `limit`; its error, or the timeout, as text naming `what`.
pub async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(|e| format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {limit:?}")),
    }
}

impl Track {
    fn alive(&mut self, lease: i64, sent_ns: i64, ttl_s: i64, how: &'static str) {
        self.obs.push(LeaseObs::Alive {
            lease,
            sent_ns,
            done_ns: now_ns(),
            ttl_s,
            how,
        });
    }

    fn gone(&mut self, lease: i64, sent_ns: i64, how: &'static str) {
        self.gone += 1;
        self.obs.push(LeaseObs::Gone {
            lease,
            sent_ns,
            done_ns: now_ns(),
            how,
        });
    }

    /// One connection's worth of keeping `held` alive through `addr`, until a call fails (the
    /// error) or `stop` is set. A keep-alive whose answer is late ends the session, so a late
    /// answer is never taken for the next request's.
    async fn session(
        &mut self,
        addr: &str,
        key: &str,
        held: &mut Option<Held>,
        stop: &AtomicBool,
    ) -> Result<(), String> {
        let opts = ConnectOptions::new().with_connect_timeout(CALL_TIMEOUT);
        let mut client =
            within(CALL_TIMEOUT, "connect", Client::connect([addr], Some(opts))).await?;
        let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
        let mut round = 0u32;
        while !stop.load(Ordering::SeqCst) {
            let Some(h) = held.as_mut() else {
                let sent = now_ns();
                let g =
                    within(CALL_TIMEOUT, "grant", client.lease_grant(LEASE_TTL_S, None)).await?;
                self.granted += 1;
                self.alive(g.id(), sent, g.ttl(), "grant");
                *held = Some(Held {
                    id: g.id(),
                    ttl_s: g.ttl(),
                    key_written: false,
                });
                continue;
            };
            let (id, granted) = (h.id, h.ttl_s);
            if !h.key_written {
                let sent = now_ns();
                let put = client.put(
                    key,
                    format!("{id:x}"),
                    Some(PutOptions::new().with_lease(id)),
                );
                match within(CALL_TIMEOUT, "put under the lease", put).await {
                    Ok(_) => h.key_written = true,
                    Err(e) if e.contains(LEASE_NOT_FOUND) => {
                        self.gone(id, sent, "put refused: lease not found");
                        (*held, stream) = (None, None);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let sent = now_ns();
            let ttl = match &mut stream {
                Some((keeper, answers)) => {
                    within(CALL_TIMEOUT, "keep-alive send", keeper.keep_alive()).await?;
                    within(CALL_TIMEOUT, "keep-alive answer", answers.message())
                        .await?
                        .ok_or("keep-alive stream ended")?
                        .ttl()
                }
                // Opening the stream sends the first keep-alive and reads its answer: TTL 0 is
                // refused as "lease not found", any other is the lease's granted TTL.
                None => match within(CALL_TIMEOUT, "keep-alive open", client.lease_keep_alive(id))
                    .await
                {
                    Ok(s) => {
                        stream = Some(s);
                        granted
                    }
                    Err(e) if e.contains(LEASE_NOT_FOUND) => 0,
                    Err(e) => return Err(e),
                },
            };
            if ttl <= 0 {
                self.gone(id, sent, "keep-alive answered TTL 0");
                (*held, stream) = (None, None);
                continue;
            }
            self.renewed += 1;
            self.alive(id, sent, ttl, "keep-alive");
            round += 1;
            if round.is_multiple_of(READ_EVERY) {
                let sent = now_ns();
                let r = within(CALL_TIMEOUT, "read the lease's key", client.get(key, None)).await?;
                if r.kvs().is_empty() {
                    self.gone(id, sent, "its key is gone");
                    (*held, stream) = (None, None);
                    continue;
                }
            }
            if round.is_multiple_of(LAPSE_EVERY) {
                // Let the lease lapse on purpose, so expiry itself runs under the faults too.
                let until = tokio::time::Instant::now() + LAPSE;
                while !stop.load(Ordering::SeqCst) && tokio::time::Instant::now() < until {
                    tokio::time::sleep(KEEP_ALIVE_EVERY).await;
                }
            }
            tokio::time::sleep(KEEP_ALIVE_EVERY).await;
        }
        // Tidy: the lease would expire by itself a TTL later.
        if let Some(h) = held.take() {
            let _ = within(CALL_TIMEOUT, "revoke", client.lease_revoke(h.id)).await;
        }
        Ok(())
    }
}

fn keep_loop(key: &str, targets: &Targets, mut rng: Rng, stop: &AtomicBool) -> Track {
    let mut t = Track::default();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("lease keeper runtime: {e}"),
    };
    let mut held = None;
    while !stop.load(Ordering::SeqCst) {
        let nodes = targets.read().unwrap_or_else(|e| e.into_inner()).clone();
        if nodes.is_empty() {
            std::thread::sleep(Duration::from_millis(50)); // no members published yet
            continue;
        }
        let addr = nodes[rng.below(nodes.len() as u64) as usize].1.clone();
        if let Err(e) = rt.block_on(t.session(&addr, key, &mut held, stop)) {
            let e: String = e.chars().take(ERROR_CHARS_SHOWN).collect();
            if t.errors.len() < ERRORS_KEPT && !t.errors.contains(&e) {
                t.errors.push(e);
            }
            t.reconnects += 1;
            std::thread::sleep(Duration::from_millis(100)); // reconnect pause
        }
    }
    t
}

impl Keepers {
    /// `n` keepers of schedule `schedule`'s leases, on random members of `targets`.
    pub fn start(n: u32, schedule: u64, targets: &Targets, rng: &Rng) -> Keepers {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..n)
            .map(|k| {
                let (stop, targets) = (stop.clone(), Arc::clone(targets));
                let (key, rng) = (format!("l{schedule}/{k}"), rng.fork(7000 + u64::from(k)));
                std::thread::Builder::new()
                    .name(format!("chaos-lease-keeper-{k}"))
                    .spawn(move || keep_loop(&key, &targets, rng, &stop))
                    .expect("spawn lease keeper")
            })
            .collect();
        Keepers { stop, handles }
    }

    /// Stops the keepers and checks what they saw: the violations, a one-line summary and the
    /// counts.
    pub fn finish(self) -> (Vec<String>, String, LeaseCounts) {
        self.stop.store(true, Ordering::SeqCst);
        let tracks: Vec<Track> = self
            .handles
            .into_iter()
            .map(|h| h.join().expect("lease keeper thread"))
            .collect();
        let obs: Vec<LeaseObs> = tracks.iter().flat_map(|t| t.obs.clone()).collect();
        let violations = check(&obs);
        let sum = |f: fn(&Track) -> u64| tracks.iter().map(f).sum::<u64>();
        let mut errors: Vec<&String> = tracks.iter().flat_map(|t| &t.errors).collect();
        errors.dedup();
        let summary = format!(
            "{} lease keepers: {} leases granted, {} keep-alives answered, {} seen gone (expired unrenewed), {} reconnects {errors:?}, {} violations",
            tracks.len(),
            sum(|t| t.granted),
            sum(|t| t.renewed),
            sum(|t| t.gone),
            sum(|t| t.reconnects),
            violations.len()
        );
        let counts = LeaseCounts {
            granted: sum(|t| t.granted),
            renewed: sum(|t| t.renewed),
            gone: sum(|t| t.gone),
            reconnects: sum(|t| t.reconnects),
        };
        (violations, summary, counts)
    }
}

/// What the lease keepers of a schedule (or a run) did.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeaseCounts {
    pub granted: u64,
    pub renewed: u64,
    pub gone: u64,
    pub reconnects: u64,
}

impl LeaseCounts {
    pub fn add(&mut self, o: &LeaseCounts) {
        self.granted += o.granted;
        self.renewed += o.renewed;
        self.gone += o.gone;
        self.reconnects += o.reconnects;
    }
}
