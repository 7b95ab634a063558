//! Tests of the checker's compare-and-swap model: swaps that saw what they expected pass (also
//! concurrent ones, and swaps of unknown outcome either way); a swap from an overwritten value,
//! a refusal while the expected value was certainly there, and a create-only swap of an
//! existing key are caught. (The brute-force cross-check in `checker_tests` covers swaps too.)

use crate::checker_tests::{get, linearizable, op, put};
use crate::history::{Action, Op, Outcome};

fn cas(c: u32, key: &str, expect: Option<u64>, v: u64, call: i64, ret: i64) -> Op {
    let action = Action::Cas {
        key: key.into(),
        expect,
        etag: 1,
        value: v,
    };
    op(c, action, call, ret, Outcome::Ok)
}

fn cas_refused(c: u32, key: &str, expect: Option<u64>, call: i64, ret: i64) -> Op {
    let action = Action::CasRefused {
        key: key.into(),
        expect,
    };
    op(c, action, call, ret, Outcome::Ok)
}

#[test]
fn compare_and_swap_histories_pass_when_each_swap_saw_what_it_expected() {
    assert!(linearizable(&[
        cas(1, "a", None, 1, 0, 1),
        cas(2, "a", Some(1), 2, 2, 3),
        cas_refused(3, "a", Some(1), 4, 5),
        get(1, "a", Some(2), 6, 7),
    ]));
    // Two concurrent swaps from the same value: one wins, the other is refused.
    assert!(linearizable(&[
        put(1, "a", 1, 0, 1),
        cas(2, "a", Some(1), 2, 2, 5),
        cas_refused(3, "a", Some(1), 3, 6),
        get(1, "a", Some(2), 7, 8),
    ]));
    // A swap of unknown outcome may have landed (observed by the read) ...
    let mut maybe = cas(2, "a", Some(1), 2, 2, 3);
    maybe.outcome = Outcome::Unknown;
    assert!(linearizable(&[
        put(1, "a", 1, 0, 1),
        maybe.clone(),
        get(1, "a", Some(2), 6, 7)
    ]));
    // ... or not.
    assert!(linearizable(&[
        put(1, "a", 1, 0, 1),
        maybe,
        get(1, "a", Some(1), 6, 7)
    ]));
}

#[test]
fn a_swap_from_a_value_that_was_already_overwritten_is_caught() {
    // Both writes completed before the swap began: the key held 3, so swapping from 1 (and
    // being acknowledged) is a lost update.
    assert!(!linearizable(&[
        put(1, "a", 1, 0, 1),
        put(1, "a", 3, 2, 3),
        cas(2, "a", Some(1), 2, 4, 5),
    ]));
    // A refusal while the key certainly held the expected value is wrong too.
    assert!(!linearizable(&[
        put(1, "a", 1, 0, 1),
        cas_refused(2, "a", Some(1), 2, 3),
    ]));
    // A create-only swap that succeeded on an existing key.
    assert!(!linearizable(&[
        put(1, "a", 1, 0, 1),
        cas(2, "a", None, 5, 2, 3),
    ]));
}
