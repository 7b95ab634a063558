//! Tests of the lease check: a lease renewed and later seen gone a TTL after its last answered
//! keep-alive passes (also when it expired because keep-alives went unanswered); one seen gone
//! before a TTL had passed since an answered keep-alive, or answered alive again after it was
//! seen gone, is caught; leases are told apart by id.

use crate::leases::{LeaseObs, check};

const S: i64 = 1_000_000_000;

fn alive(lease: i64, sent_ns: i64, ttl_s: i64) -> LeaseObs {
    LeaseObs::Alive {
        lease,
        sent_ns,
        done_ns: sent_ns + S / 100,
        ttl_s,
        how: "keep-alive",
    }
}

fn gone(lease: i64, done_ns: i64) -> LeaseObs {
    LeaseObs::Gone {
        lease,
        sent_ns: done_ns - S / 100,
        done_ns,
        how: "keep-alive answered TTL 0",
    }
}

#[test]
fn a_lease_seen_gone_a_ttl_after_its_last_answered_keep_alive_passes() {
    // Granted at 0, renewed at 1 s and 2 s (TTL 2 s), then the keeper was cut off: gone at 4.5 s.
    let obs = [
        alive(7, 0, 2),
        alive(7, S, 2),
        alive(7, 2 * S, 2),
        gone(7, 4 * S + S / 2),
    ];
    assert!(check(&obs).is_empty(), "{:?}", check(&obs));
    // Exactly at the deadline is in time.
    assert!(check(&[alive(7, 0, 2), gone(7, 2 * S)]).is_empty());
    // No observations, or only live ones, pass.
    assert!(check(&[]).is_empty());
    assert!(check(&[alive(7, 0, 2), alive(7, S, 2)]).is_empty());
}

#[test]
fn a_lease_gone_before_its_ttl_ran_out_is_caught() {
    // Renewed at 2 s with TTL 2 s, seen gone at 3.5 s: it was owed until 4 s.
    let v = check(&[alive(7, 0, 2), alive(7, 2 * S, 2), gone(7, 3 * S + S / 2)]);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("expired early"), "{v:?}");
    // The order of the record does not matter.
    let v = check(&[gone(7, 3 * S + S / 2), alive(7, 2 * S, 2)]);
    assert_eq!(v.len(), 1, "{v:?}");
}

#[test]
fn a_lease_answered_alive_after_it_was_seen_gone_is_caught() {
    let v = check(&[alive(7, 0, 2), gone(7, 3 * S), alive(7, 4 * S, 2)]);
    assert!(v.iter().any(|v| v.contains("came back")), "{v:?}");
}

#[test]
fn leases_are_checked_by_id() {
    // Lease 8 renewed at 2 s says nothing about lease 7, gone at 3 s after its grant at 0.
    assert!(check(&[alive(7, 0, 2), alive(8, 2 * S, 2), gone(7, 3 * S)]).is_empty());
    let v = check(&[alive(7, 0, 2), alive(8, 2 * S, 2), gone(8, 3 * S)]);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("lease 8"), "{v:?}");
}
