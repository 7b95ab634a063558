//! The nemesis: fault schedules and how each fault is done to real processes and to the proxy.
//!
//! A schedule is a short list of steps; each step applies one fault, holds it, undoes it, and
//! waits a gap. Fault kinds are dealt from a seeded, reshuffled deck so that every kind comes up
//! equally often and a short run still sees many kinds. Targets are drawn as numbers when the
//! schedule is made and resolved against the current members when applied ("the leader" is
//! whoever leads at that moment).
//!
//! | fault          | done by                                                       | undone by |
//! |----------------|---------------------------------------------------------------|-----------|
//! | kill           | SIGKILL a node (random or the leader)                         | restart without `-join` |
//! | pause          | SIGSTOP a node (random or the leader): a "GC pause"          | SIGCONT |
//! | isolate        | proxy: all links to and from one node blackholed or reset; with the leader as target this is the 2|1 split with the leader in the minority | heal |
//! | mute-leader    | proxy: the leader's outgoing links blackholed (one-way: it still hears the others) | heal |
//! | one-way        | proxy: one random directed link blackholed                    | heal |
//! | delay          | proxy: every link delayed 20–150 ms per chunk                 | heal |
//! | lossy          | proxy: every link reset once, then 20–50 % of new connections reset | heal |
//! | crash-all      | SIGKILL every node                                            | restart all without `-join` |
//! | replace        | remove a member (`POST /remove`), kill it, join a fresh node  | — |

use std::fmt;
use std::time::Duration;

use crate::history::now_ns;
use crate::proxy::LinkFault;
use crate::rng::Rng;
use crate::topology::ChaosCluster;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Leader,
    /// `members[r % members.len()]` at the time the fault is applied.
    Random(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    KillRandom,
    KillLeader,
    PauseRandom,
    PauseLeader,
    IsolateLeader,
    IsolateRandom,
    MuteLeader,
    OneWay,
    Delay,
    Lossy,
    CrashAll,
    Replace,
    BadJoin,
}

impl Kind {
    const ALL: [Kind; 13] = [
        Kind::KillRandom,
        Kind::KillLeader,
        Kind::PauseRandom,
        Kind::PauseLeader,
        Kind::IsolateLeader,
        Kind::IsolateRandom,
        Kind::MuteLeader,
        Kind::OneWay,
        Kind::Delay,
        Kind::Lossy,
        Kind::CrashAll,
        Kind::Replace,
        Kind::BadJoin,
    ];

    /// Name used by `RAFTKV_CHAOS_FAULTS` (e.g. `kill-leader,pause-random`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::KillRandom => "kill-random",
            Kind::KillLeader => "kill-leader",
            Kind::PauseRandom => "pause-random",
            Kind::PauseLeader => "pause-leader",
            Kind::IsolateLeader => "isolate-leader",
            Kind::IsolateRandom => "isolate-random",
            Kind::MuteLeader => "mute-leader",
            Kind::OneWay => "one-way",
            Kind::Delay => "delay",
            Kind::Lossy => "lossy",
            Kind::CrashAll => "crash-all",
            Kind::Replace => "replace",
            Kind::BadJoin => "bad-join",
        }
    }

    fn needs_proxy(self) -> bool {
        matches!(
            self,
            Kind::IsolateLeader
                | Kind::IsolateRandom
                | Kind::MuteLeader
                | Kind::OneWay
                | Kind::Delay
                | Kind::Lossy
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    Kill(Target),
    Pause(Target),
    Isolate(Target, LinkFault),
    MuteLeader,
    OneWay {
        from: u64,
        to: u64,
    },
    Delay(Duration),
    Lossy(u8),
    CrashAll,
    Replace(Target),
    /// A join that must be refused (`dead`: nothing listens at the address; else the address
    /// reaches another member); sent via member `via`.
    BadJoin {
        dead: bool,
        via: u64,
        reach: u64,
    },
}

impl Fault {
    /// A short name of the fault's kind, for totals.
    pub fn kind(&self) -> String {
        let t = |t: &Target| match t {
            Target::Leader => "leader",
            Target::Random(_) => "random",
        };
        match self {
            Fault::Kill(x) => format!("kill-{}", t(x)),
            Fault::Pause(x) => format!("pause-{}", t(x)),
            Fault::Isolate(x, how) => {
                format!("isolate-{}-{}", t(x), format!("{how:?}").to_lowercase())
            }
            Fault::MuteLeader => "mute-leader".into(),
            Fault::OneWay { .. } => "one-way".into(),
            Fault::Delay(_) => "delay".into(),
            Fault::Lossy(_) => "lossy".into(),
            Fault::CrashAll => "crash-all".into(),
            Fault::Replace(x) => format!("replace-{}", t(x)),
            Fault::BadJoin { dead: true, .. } => "bad-join-dead".into(),
            Fault::BadJoin { dead: false, .. } => "bad-join-other-member".into(),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = |t: &Target| match t {
            Target::Leader => "leader".to_owned(),
            Target::Random(r) => format!("random#{}", r % 1000),
        };
        match self {
            Fault::Kill(x) => write!(f, "kill -9 {}", t(x)),
            Fault::Pause(x) => write!(f, "pause {}", t(x)),
            Fault::Isolate(x, how) => write!(f, "isolate {} ({how:?})", t(x)),
            Fault::MuteLeader => write!(f, "mute leader (one-way)"),
            Fault::OneWay { .. } => write!(f, "one-way loss on a random link"),
            Fault::Delay(d) => write!(f, "delay {}ms on all links", d.as_millis()),
            Fault::Lossy(p) => write!(f, "reset then drop {p}% of new connections"),
            Fault::CrashAll => write!(f, "crash all nodes"),
            Fault::Replace(x) => write!(f, "replace {} with a fresh node", t(x)),
            Fault::BadJoin { dead: true, .. } => write!(f, "join a node at a dead address"),
            Fault::BadJoin { dead: false, .. } => {
                write!(f, "join a node at an address that reaches another member")
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Step {
    pub fault: Fault,
    pub hold: Duration,
    pub gap: Duration,
}

/// Shape of schedules.
#[derive(Clone, Debug)]
pub struct PlanOpts {
    pub steps_min: u64,
    pub steps_max: u64,
    pub hold_ms: (u64, u64),
    pub gap_ms: (u64, u64),
    pub net_faults: bool,
    pub membership: bool,
    /// Only these kinds (by `Kind::name`), if given.
    pub only: Option<Vec<String>>,
    /// The first step of schedule 0 is this kind (by `Kind::name`), so a short run surely
    /// includes it.
    pub lead_with: Option<&'static str>,
}

/// Fault kind at position `p` of the run's endless deck: every `Kind::ALL.len()` positions are
/// one seeded shuffle of all (enabled) kinds. Pure in (seed, p), so schedule `n` can be
/// replayed alone.
fn dealt(seed: u64, p: u64, opts: &PlanOpts) -> Kind {
    let mut kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| opts.net_faults || !k.needs_proxy())
        .filter(|k| opts.membership || !matches!(k, Kind::Replace | Kind::BadJoin))
        .filter(|k| {
            opts.only
                .as_ref()
                .is_none_or(|o| o.iter().any(|n| n == k.name()))
        })
        .collect();
    assert!(!kinds.is_empty(), "no fault kind enabled");
    let len = kinds.len() as u64;
    Rng::new(seed).fork(0xDEC0 + p / len).shuffle(&mut kinds);
    kinds[(p % len) as usize]
}

/// The schedule of run `seed`, number `n`: `steps_max` deck positions are reserved per
/// schedule, of which a random number (`steps_min..=steps_max`) is used.
pub fn plan(seed: u64, n: u64, opts: &PlanOpts) -> Vec<Step> {
    let mut rng = Rng::new(seed).fork(n).fork(0x9E5);
    let steps = rng.range(opts.steps_min, opts.steps_max);
    (0..steps)
        .map(|s| {
            let lead = (n == 0 && s == 0)
                .then_some(opts.lead_with)
                .flatten()
                .and_then(|name| Kind::ALL.into_iter().find(|k| k.name() == name))
                .filter(|k| {
                    opts.only
                        .as_ref()
                        .is_none_or(|o| o.iter().any(|n| n == k.name()))
                });
            let kind = lead.unwrap_or_else(|| dealt(seed, n * opts.steps_max + s, opts));
            let target = Target::Random(rng.next_u64());
            let fault = match kind {
                Kind::KillRandom => Fault::Kill(target),
                Kind::KillLeader => Fault::Kill(Target::Leader),
                Kind::PauseRandom => Fault::Pause(target),
                Kind::PauseLeader => Fault::Pause(Target::Leader),
                Kind::IsolateLeader => Fault::Isolate(Target::Leader, LinkFault::Blackhole),
                Kind::IsolateRandom => Fault::Isolate(
                    target,
                    if rng.percent(50) {
                        LinkFault::Reset
                    } else {
                        LinkFault::Blackhole
                    },
                ),
                Kind::MuteLeader => Fault::MuteLeader,
                Kind::OneWay => Fault::OneWay {
                    from: rng.next_u64(),
                    to: rng.next_u64(),
                },
                Kind::Delay => Fault::Delay(Duration::from_millis(rng.range(20, 150))),
                Kind::Lossy => Fault::Lossy(rng.range(20, 50) as u8),
                Kind::CrashAll => Fault::CrashAll,
                Kind::Replace => Fault::Replace(if rng.percent(25) {
                    Target::Leader
                } else {
                    target
                }),
                Kind::BadJoin => Fault::BadJoin {
                    dead: rng.percent(50),
                    via: rng.next_u64(),
                    reach: rng.next_u64(),
                },
            };
            Step {
                fault,
                hold: Duration::from_millis(rng.range(opts.hold_ms.0, opts.hold_ms.1)),
                gap: Duration::from_millis(rng.range(opts.gap_ms.0, opts.gap_ms.1)),
            }
        })
        .collect()
}

/// What must be done to undo an applied fault.
#[derive(Debug, Default)]
pub struct Undo {
    restart: Vec<usize>,
    resume: Vec<usize>,
    heal_net: bool,
}

/// A timeline of what the nemesis did (monotonic ns, text), printed next to violations.
pub type Timeline = Vec<(i64, String)>;

fn note(timeline: &mut Timeline, what: String) {
    eprintln!("   [{:9.4}s] nemesis: {what}", now_ns() as f64 / 1e9);
    timeline.push((now_ns(), what));
}

fn resolve(cc: &ChaosCluster, t: Target) -> usize {
    let random = |r: u64| cc.members[(r % cc.members.len() as u64) as usize];
    match t {
        Target::Leader => cc.leader_now().unwrap_or_else(|| random(0)),
        Target::Random(r) => random(r),
    }
}

/// Applies `fault`; returns how to undo it.
pub fn apply(cc: &mut ChaosCluster, fault: &Fault, tl: &mut Timeline) -> Result<Undo, String> {
    let mut undo = Undo::default();
    match fault {
        Fault::Kill(t) => {
            let i = resolve(cc, *t);
            note(tl, format!("{fault}: kill -9 n{i}"));
            cc.kill(i);
            undo.restart.push(i);
        }
        Fault::Pause(t) => {
            let i = resolve(cc, *t);
            note(tl, format!("{fault}: SIGSTOP n{i}"));
            cc.pause(i);
            undo.resume.push(i);
        }
        Fault::Isolate(t, how) => {
            let i = resolve(cc, *t);
            note(
                tl,
                format!("{fault}: n{i} cut off from {:?}", others(cc, i)),
            );
            for j in others(cc, i) {
                cc.proxy.set_both(i, j, *how);
            }
            undo.heal_net = true;
        }
        Fault::MuteLeader => {
            let i = resolve(cc, Target::Leader);
            note(
                tl,
                format!("{fault}: n{i} → {:?} blackholed", others(cc, i)),
            );
            for j in others(cc, i) {
                cc.proxy.set(i, j, LinkFault::Blackhole);
            }
            undo.heal_net = true;
        }
        Fault::OneWay { from, to } => {
            let a = resolve(cc, Target::Random(*from));
            let rest = others(cc, a);
            let b = rest[(to % rest.len() as u64) as usize];
            note(tl, format!("{fault}: n{a} → n{b} blackholed"));
            cc.proxy.set(a, b, LinkFault::Blackhole);
            undo.heal_net = true;
        }
        Fault::Delay(d) => {
            note(tl, fault.to_string());
            all_links(cc, LinkFault::Delay(*d));
            undo.heal_net = true;
        }
        Fault::Lossy(p) => {
            note(tl, fault.to_string());
            all_links(cc, LinkFault::Reset);
            std::thread::sleep(Duration::from_millis(50));
            all_links(cc, LinkFault::Drop(*p));
            undo.heal_net = true;
        }
        Fault::CrashAll => {
            note(tl, fault.to_string());
            for i in cc.members.clone() {
                cc.kill(i);
                undo.restart.push(i);
            }
        }
        Fault::Replace(t) => {
            let victim = resolve(cc, *t);
            note(tl, format!("{fault}: remove n{victim}"));
            cc.remove_member(victim)?;
            note(
                tl,
                format!("n{victim} removed and killed; joining a fresh node"),
            );
            let fresh = cc.add_fresh_member()?;
            note(tl, format!("n{fresh} joined as a voter"));
        }
        Fault::BadJoin { dead, via, reach } => {
            let ghost = format!("ghost-{}", now_ns());
            note(tl, format!("{fault}: {ghost}"));
            let answer = cc.bad_join(&ghost, *dead, *via, *reach)?;
            note(tl, format!("{ghost} refused: {answer}"));
        }
    }
    Ok(undo)
}

pub fn undo(cc: &mut ChaosCluster, undo: Undo, tl: &mut Timeline) -> Result<(), String> {
    if undo.heal_net {
        note(tl, "heal network".into());
        cc.proxy.heal();
    }
    for i in undo.resume {
        note(tl, format!("SIGCONT n{i}"));
        cc.resume(i);
    }
    for i in undo.restart {
        note(tl, format!("restart n{i} (no -join)"));
        cc.restart(i)?;
    }
    Ok(())
}

fn others(cc: &ChaosCluster, i: usize) -> Vec<usize> {
    cc.members.iter().copied().filter(|&j| j != i).collect()
}

fn all_links(cc: &ChaosCluster, f: LinkFault) {
    for &a in &cc.members {
        for &b in &cc.members {
            if a != b {
                cc.proxy.set(a, b, f);
            }
        }
    }
}
