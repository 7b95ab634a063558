//! Tests of the checker itself: histories it MUST reject (stale read, read of a value never
//! written, lost acknowledged write, the output of a "broken build" that serves reads from a
//! follower's local copy) and histories it must accept (concurrency, indeterminate writes that
//! land late or never). A brute-force oracle cross-checks porcupine-rs and our pruning on
//! thousands of small random histories.

use std::collections::BTreeMap;
use std::time::Duration;

use porcupine_rs::CheckResult;

use crate::checker::{
    KeyEvent, RegOp, check_events, check_linearizable, lost_writes, project, prune_unobserved,
    render_violation, shrink,
};
use crate::history::{Action, NEVER, Observed, Op, Outcome};
use crate::rng::Rng;

pub(crate) const T: Duration = Duration::from_secs(10);

// ----- building histories by hand (times in ms) ------------------------------------------------

pub(crate) fn op(client: u32, action: Action, call_ms: i64, ret_ms: i64, outcome: Outcome) -> Op {
    Op {
        client,
        node: 0,
        action,
        call_ns: call_ms * 1_000_000,
        ret_ns: ret_ms * 1_000_000,
        outcome,
        read: None,
        note: String::new(),
    }
}

pub(crate) fn put(c: u32, key: &str, v: u64, call: i64, ret: i64) -> Op {
    op(
        c,
        Action::Put {
            key: key.into(),
            value: v,
        },
        call,
        ret,
        Outcome::Ok,
    )
}

fn put_unknown(c: u32, key: &str, v: u64, call: i64, ret: i64) -> Op {
    let mut o = put(c, key, v, call, ret);
    o.outcome = Outcome::Unknown;
    o.note = "timeout".into();
    o
}

fn put_failed(c: u32, key: &str, v: u64, call: i64, ret: i64) -> Op {
    let mut o = put(c, key, v, call, ret);
    o.outcome = Outcome::Fail;
    o.note = "no_leader".into();
    o
}

fn del(c: u32, key: &str, call: i64, ret: i64) -> Op {
    op(
        c,
        Action::Delete { key: key.into() },
        call,
        ret,
        Outcome::Ok,
    )
}

fn put_many(c: u32, pairs: &[(&str, u64)], call: i64, ret: i64) -> Op {
    let pairs = pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
    op(c, Action::PutMany { pairs }, call, ret, Outcome::Ok)
}

pub(crate) fn get(c: u32, key: &str, seen: Option<u64>, call: i64, ret: i64) -> Op {
    let mut o = op(c, Action::Read { key: key.into() }, call, ret, Outcome::Ok);
    o.read = Some(seen.map_or(Observed::Absent, Observed::Value));
    o
}

pub(crate) fn linearizable(h: &[Op]) -> bool {
    let r = check_linearizable(h, T);
    assert!(r.undecided.is_empty(), "search did not finish");
    for v in &r.violations {
        eprintln!("{}", render_violation(v, h));
    }
    r.violations.is_empty()
}

// ----- must pass ---------------------------------------------------------------------------

#[test]
fn sequential_and_concurrent_histories_pass() {
    assert!(linearizable(&[
        get(1, "a", None, 0, 1),
        put(1, "a", 1, 2, 3),
        get(2, "a", Some(1), 4, 5),
        del(1, "a", 6, 7),
        get(2, "a", None, 8, 9),
    ]));
    // A read concurrent with a write may see either value; two overlapping reads may even
    // disagree in the order "new then old" only if both overlap the write.
    assert!(linearizable(&[
        put(1, "a", 1, 0, 10),
        put(2, "a", 2, 20, 40),
        get(3, "a", Some(2), 21, 25),
        get(4, "a", Some(1), 22, 30),
        get(5, "a", Some(2), 41, 45),
    ]));
}

#[test]
fn indeterminate_writes_may_land_late_or_never() {
    // Never seen: fine.
    assert!(linearizable(&[
        put_unknown(1, "a", 1, 0, 5),
        get(2, "a", None, 10, 11),
    ]));
    // Seen long after the client gave up, after another acknowledged write: fine (it was
    // applied last).
    assert!(linearizable(&[
        put_unknown(1, "a", 1, 0, 5),
        put(2, "a", 2, 10, 20),
        get(3, "a", Some(2), 25, 26),
        get(3, "a", Some(1), 30, 31),
        get(3, "a", Some(1), 40, 41),
    ]));
    // ...but once it was seen and overwritten it cannot come back.
    assert!(!linearizable(&[
        put_unknown(1, "a", 1, 0, 5),
        get(3, "a", Some(1), 30, 31),
        put(2, "a", 2, 40, 50),
        get(3, "a", Some(1), 60, 61),
    ]));
}

#[test]
fn multi_key_writes_are_writes_to_each_key() {
    let h = [
        put_many(1, &[("a", 1), ("b", 2)], 0, 10),
        get(2, "a", Some(1), 11, 12),
        get(2, "b", Some(2), 11, 12),
    ];
    assert!(linearizable(&h));
    let h = [
        put_many(1, &[("a", 1), ("b", 2)], 0, 10),
        get(2, "a", Some(1), 11, 12),
        get(2, "b", None, 13, 14), // b's part of the acknowledged write is missing
    ];
    assert!(!linearizable(&h));
}

// ----- must be rejected ----------------------------------------------------------------------

#[test]
fn stale_read_after_a_completed_write_is_rejected() {
    let h = [
        put(1, "a", 1, 0, 10),
        put(1, "a", 2, 20, 30),
        get(2, "a", Some(1), 40, 50), // began after 2 was acknowledged
    ];
    assert!(!linearizable(&h));
    let r = check_linearizable(&h, T);
    let text = render_violation(&r.violations[0], &h);
    assert!(text.contains("stale read"), "{text}");
    // Stale "absent" after an acknowledged write is just as wrong.
    assert!(!linearizable(&[
        put(1, "a", 1, 0, 10),
        get(2, "a", None, 11, 12)
    ]));
}

#[test]
fn read_of_a_value_never_written_is_rejected() {
    let h = [put(1, "a", 1, 0, 10), get(2, "a", Some(7), 20, 30)];
    assert!(!linearizable(&h));
    let r = check_linearizable(&h, T);
    assert!(render_violation(&r.violations[0], &h).contains("never written"));
    // A read of a garbage body.
    let mut g = get(2, "a", None, 20, 30);
    g.read = Some(Observed::Garbage("zzz".into()));
    assert!(!linearizable(&[put(1, "a", 1, 0, 10), g]));
}

#[test]
fn a_write_that_reported_certain_failure_must_not_appear() {
    // 503 no_leader promises "not applied"; a read seeing it is a violation.
    assert!(!linearizable(&[
        put_failed(1, "a", 1, 0, 10),
        get(2, "a", Some(1), 20, 30),
    ]));
}

#[test]
fn lost_acknowledged_write_is_rejected_by_both_checks() {
    let h = [
        put(1, "a", 1, 0, 10),
        put(1, "a", 2, 20, 30),
        get(9, "a", Some(1), 100, 110), // the final read after healing
    ];
    assert!(!linearizable(&h));
    let finals = BTreeMap::from([("a".to_owned(), Some(1))]);
    let lost = lost_writes(&h, &finals);
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].op, 1);
    // Vanished key: acknowledged put, no delete, final state absent.
    let h = [put(1, "b", 5, 0, 10)];
    let lost = lost_writes(&h, &BTreeMap::from([("b".to_owned(), None)]));
    assert_eq!(lost.len(), 1);
}

#[test]
fn lost_write_check_accepts_overwrites_deletes_and_indeterminate_writes() {
    let h = [
        put(1, "a", 1, 0, 10),
        put(2, "a", 2, 5, 15), // concurrent: either may be last
        del(1, "b", 0, 1),
        put(1, "b", 3, 2, 3),
        del(1, "b", 4, 5),
        put(1, "c", 4, 0, 10),
        put_unknown(2, "c", 5, 20, 25), // may have overwritten 4 at any time after 20
    ];
    for (a, c) in [(1, 4), (2, 4), (1, 5), (2, 5)] {
        let finals = BTreeMap::from([
            ("a".to_owned(), Some(a)),
            ("b".to_owned(), None),
            ("c".to_owned(), Some(c)),
        ]);
        assert!(lost_writes(&h, &finals).is_empty(), "a={a} c={c}");
    }
    // A final value nobody wrote (or only a failed write wrote) is reported.
    let h = [put_failed(1, "d", 8, 0, 1)];
    assert_eq!(
        lost_writes(&h, &BTreeMap::from([("d".to_owned(), Some(8))])).len(),
        1
    );
}

#[test]
fn shrink_finds_the_three_operations_of_a_stale_read() {
    let mut h = Vec::new();
    // Noise on the same key: a few reads and writes that are fine.
    for i in 0..20 {
        h.push(put(1, "a", 100 + i, i as i64 * 10, i as i64 * 10 + 5));
        h.push(get(
            2,
            "a",
            Some(100 + i),
            i as i64 * 10 + 6,
            i as i64 * 10 + 7,
        ));
    }
    h.push(put(1, "a", 1, 300, 310));
    h.push(put(1, "a", 2, 320, 330));
    h.push(get(2, "a", Some(1), 340, 350));
    for i in 0..10 {
        h.push(put(
            1,
            "a",
            200 + i,
            400 + i as i64 * 10,
            405 + i as i64 * 10,
        ));
    }
    let r = check_linearizable(&h, T);
    assert_eq!(r.violations.len(), 1);
    let w = &r.violations[0].witness;
    eprintln!("{}", render_violation(&r.violations[0], &h));
    assert!(w.len() <= 3, "witness too large: {w:?}");
    assert_eq!(check_events(w, T), CheckResult::Illegal);
    assert!(w.iter().any(|e| e.reg == RegOp::Read(Some(1))));
    assert!(
        w.iter().all(|e| e.call >= 300 * 1_000_000),
        "window starts at the bug"
    );
}

// ----- the checker against a brute-force oracle ------------------------------------------------

/// Tries every order of `events` consistent with real time (a before b if a.ret < b.call).
fn brute_force(events: &[KeyEvent]) -> bool {
    fn go(rest: &mut Vec<KeyEvent>, state: Option<u64>) -> bool {
        if rest.is_empty() {
            return true;
        }
        for i in 0..rest.len() {
            let e = rest[i];
            if rest.iter().any(|p| p.ret < e.call) {
                continue; // someone must come first
            }
            let next = match e.reg {
                RegOp::Write(v) => v,
                RegOp::Read(v) if v == state => state,
                RegOp::Read(_) => continue,
                RegOp::Cas { expect, new } if expect == state => Some(new),
                RegOp::Cas { .. } => continue,
                RegOp::CasRefused { expect } if expect != state => state,
                RegOp::CasRefused { .. } => continue,
                RegOp::CasMaybe { expect, new } if expect == state => Some(new),
                RegOp::CasMaybe { .. } => state,
            };
            rest.remove(i);
            let ok = go(rest, next);
            rest.insert(i, e);
            if ok {
                return true;
            }
        }
        false
    }
    go(&mut events.to_vec(), None)
}

fn random_events(rng: &mut Rng) -> Vec<KeyEvent> {
    let n = rng.range(1, 7) as usize;
    (0..n)
        .map(|op| {
            let call = rng.range(0, 30) as i64;
            let ret = call + rng.range(0, 10) as i64;
            let v = match rng.below(4) {
                0 => None,
                x => Some(x),
            };
            // Values 1..=3 (and absent) so that compare-and-swaps often find what they expect.
            let new = rng.range(1, 3);
            let cas = rng.percent(30);
            if rng.percent(50) {
                let unknown = rng.percent(25);
                let ret = if unknown { NEVER } else { ret };
                let reg = match (cas, unknown) {
                    (false, _) => RegOp::Write(v),
                    (true, false) => RegOp::Cas { expect: v, new },
                    (true, true) => RegOp::CasMaybe { expect: v, new },
                };
                KeyEvent { op, call, ret, reg }
            } else if cas {
                KeyEvent {
                    op,
                    call,
                    ret,
                    reg: RegOp::CasRefused { expect: v },
                }
            } else {
                KeyEvent {
                    op,
                    call,
                    ret,
                    reg: RegOp::Read(v),
                }
            }
        })
        .collect()
}

#[test]
fn porcupine_pruning_and_shrinking_agree_with_brute_force() {
    let mut rng = Rng::new(0xC0FFEE);
    let (mut legal, mut illegal) = (0, 0);
    for _ in 0..3000 {
        let ev = random_events(&mut rng);
        let expect = brute_force(&ev);
        let got = check_events(&ev, T);
        assert_eq!(
            got == CheckResult::Ok,
            expect,
            "porcupine disagrees on {ev:?}"
        );
        assert_eq!(
            brute_force(&prune_unobserved(&ev)),
            expect,
            "pruning changed {ev:?}"
        );
        if expect {
            legal += 1;
        } else {
            illegal += 1;
            let w = shrink(&ev, T);
            assert!(!brute_force(&w), "witness {w:?} of {ev:?} is linearizable");
        }
    }
    assert!(
        legal > 300 && illegal > 300,
        "unbalanced sample: {legal} / {illegal}"
    );
}

// ----- a broken build is caught ---------------------------------------------------------------

/// A simulated 3-replica cluster driven by 4 clients over 3 keys. Each write commits at a
/// random instant inside its interval (or, for an indeterminate one, at any time later, or
/// never); followers apply committed entries 20–60 ms late. The correct build serves a read at
/// the leader's state at an instant inside the read's interval; the broken build serves reads
/// sent to a follower from that follower's local copy while claiming linearizability — the
/// "stale read from a lagging follower" bug.
fn simulate(seed: u64, broken: bool) -> Vec<Op> {
    let mut rng = Rng::new(seed);
    let lag_us = [0i64, 20_000, 60_000];
    let keys = ["a", "b", "c"];
    let mut next_value = 1u64;
    // (commit time µs, key, value) of every applied write.
    let mut commits: Vec<(i64, String, Option<u64>)> = Vec::new();
    let mut reads: Vec<(usize, i64, usize)> = Vec::new(); // (op index, instant, node)
    let mut history = Vec::new();
    for client in 0..4u32 {
        let mut t = rng.range(0, 1000) as i64;
        for _ in 0..150 {
            let call = t;
            let ret = call + rng.range(200, 8_000) as i64;
            let instant = call + rng.range(0, (ret - call) as u64) as i64;
            let node = rng.below(3) as usize;
            let key = (*rng.pick(&keys)).to_owned();
            let mut o = op(client, Action::Read { key: key.clone() }, 0, 0, Outcome::Ok);
            o.call_ns = call * 1000;
            o.ret_ns = ret * 1000;
            o.node = node;
            match rng.below(10) {
                0..=4 => reads.push((history.len(), instant, node)),
                x => {
                    let value = (x != 9).then(|| {
                        next_value += 1;
                        next_value
                    });
                    o.action = match value {
                        Some(v) => Action::Put {
                            key: key.clone(),
                            value: v,
                        },
                        None => Action::Delete { key: key.clone() },
                    };
                    match rng.below(10) {
                        0 => {
                            o.outcome = Outcome::Unknown;
                            if rng.percent(50) {
                                let late = call + rng.range(0, 100_000) as i64;
                                commits.push((late, key, value));
                            }
                        }
                        1 => o.outcome = Outcome::Fail,
                        _ => commits.push((instant, key, value)),
                    }
                }
            }
            history.push(o);
            t = ret + rng.range(0, 3_000) as i64;
        }
    }
    commits.sort_by_key(|c| c.0);
    for (i, instant, node) in reads {
        let lag = if broken { lag_us[node] } else { 0 };
        let key = match &history[i].action {
            Action::Read { key } => key.clone(),
            _ => unreachable!(),
        };
        let seen = commits
            .iter()
            .rfind(|c| c.1 == key && c.0 + lag <= instant)
            .and_then(|c| c.2);
        history[i].read = Some(seen.map_or(Observed::Absent, Observed::Value));
    }
    history
}

#[test]
fn correct_build_passes_and_broken_build_with_local_follower_reads_is_caught() {
    for seed in 0..5 {
        let good = simulate(seed, false);
        let r = check_linearizable(&good, T);
        assert!(r.undecided.is_empty());
        assert!(
            r.violations.is_empty(),
            "seed {seed}: correct build rejected:\n{}",
            render_violation(&r.violations[0], &good)
        );

        let bad = simulate(seed, true);
        let r = check_linearizable(&bad, T);
        assert!(
            !r.violations.is_empty(),
            "seed {seed}: broken build not caught"
        );
        let v = &r.violations[0];
        if seed == 0 {
            eprintln!("broken build, seed 0:\n{}", render_violation(v, &bad));
        }
        assert_eq!(check_events(&v.witness, T), CheckResult::Illegal);
        assert!(
            v.witness
                .iter()
                .any(|e| matches!(e.reg, RegOp::Read(_)) && bad[e.op].node != 0),
            "the witness shows a read served by a follower"
        );
    }
}

#[test]
fn projection_drops_failures_and_opens_unknown_writes() {
    let h = [
        put_failed(1, "a", 1, 0, 1),
        put_unknown(1, "a", 2, 2, 3),
        put(1, "a", 3, 4, 5),
    ];
    let p = project(&h);
    let a = &p["a"];
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].ret, NEVER);
    assert_eq!(a[1].ret, 5_000_000);
}
