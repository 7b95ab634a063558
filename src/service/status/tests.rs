//! The merge of members' answers into the cluster view: leader choice, lag, reachability.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::raft::types::Node;

fn member(name: &str, id: NodeId, voter: bool) -> Member {
    Member {
        id,
        node: Node {
            name: name.to_string(),
            api_addr: format!("127.0.0.1:{}", 4000 + id),
            raft_addr: format!("127.0.0.1:{}", 5000 + id),
        },
        voter,
    }
}

fn report(role: &str, term: u64, leader: Option<&str>, last: u64) -> Report {
    Report {
        role: role.to_string(),
        term,
        leader: leader.map(str::to_string),
        last_log_index: Some(last),
        commit_index: Some(last),
        applied_index: Some(last),
        revision: Some(i64::try_from(last).unwrap_or(0)),
    }
}

fn ok(id: NodeId, r: Report) -> Answer {
    Answer {
        id,
        report: Ok(r),
        rtt: Some(Duration::from_millis(3)),
    }
}

fn three() -> Vec<Member> {
    vec![
        member("n1", 1, true),
        member("n2", 2, true),
        member("n3", 3, true),
    ]
}

fn by_name<'a>(v: &'a ClusterView, name: &str) -> &'a MemberView {
    v.members
        .iter()
        .find(|m| m.id == name)
        .unwrap_or_else(|| panic!("{name} is in the view"))
}

#[test]
fn a_healthy_cluster_has_one_leader_and_reported_lag() {
    let answers = vec![
        ok(1, report("leader", 3, Some("n1"), 100)),
        ok(2, report("follower", 3, Some("n1"), 98)),
        ok(3, report("follower", 3, Some("n1"), 100)),
    ];
    let v = merge(2, &three(), &answers, None);
    assert_eq!(v.node, "n2");
    assert_eq!(v.leader.as_deref(), Some("n1"));
    assert_eq!(v.term, 3);
    assert_eq!(v.revision, Some(100));
    let names: Vec<&str> = v.members.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(names, ["n1", "n2", "n3"]);
    assert_eq!(by_name(&v, "n1").lag, Some(0));
    assert_eq!(by_name(&v, "n1").lag_source, Some("leader"));
    assert_eq!(by_name(&v, "n2").lag, Some(2));
    assert_eq!(by_name(&v, "n2").lag_source, Some("reported"));
    assert!(by_name(&v, "n2").is_self);
    assert!(v.members.iter().all(|m| m.reachable && !m.stale));
    assert_eq!(by_name(&v, "n3").rtt_ms, Some(3));
}

#[test]
fn the_leaders_replication_state_beats_what_followers_report() {
    let answers = vec![
        ok(1, report("leader", 3, Some("n1"), 100)),
        ok(2, report("follower", 3, Some("n1"), 100)),
        ok(3, report("follower", 3, Some("n1"), 100)),
    ];
    let matched: BTreeMap<NodeId, u64> = [(1, 100), (2, 90), (3, 100)].into();
    let v = merge(1, &three(), &answers, Some(&matched));
    assert_eq!(by_name(&v, "n2").lag, Some(10));
    assert_eq!(by_name(&v, "n2").lag_source, Some("replication"));
    assert_eq!(by_name(&v, "n3").lag, Some(0));
}

#[test]
fn a_member_that_does_not_answer_is_unreachable_with_the_reason() {
    let answers = vec![
        ok(2, report("leader", 4, Some("n2"), 50)),
        Answer {
            id: 1,
            report: Err(FetchError::Unreachable("connection refused".into())),
            rtt: None,
        },
        Answer {
            id: 3,
            report: Err(FetchError::Timeout(500)),
            rtt: None,
        },
    ];
    let v = merge(2, &three(), &answers, None);
    assert_eq!(v.leader.as_deref(), Some("n2"));
    let n1 = by_name(&v, "n1");
    assert!(!n1.reachable);
    assert!(n1.status.is_none() && n1.lag.is_none() && n1.rtt_ms.is_none());
    assert_eq!(n1.error.as_deref(), Some("unreachable: connection refused"));
    assert_eq!(
        by_name(&v, "n3").error.as_deref(),
        Some("no answer within 500 ms")
    );
}

#[test]
fn a_deposed_leader_in_an_older_term_is_stale_not_the_leader() {
    // n1 was cut off while leading term 3; n2 and n3 elected n2 in term 4.
    let answers = vec![
        ok(1, report("leader", 3, Some("n1"), 100)),
        ok(2, report("leader", 4, Some("n2"), 104)),
        ok(3, report("follower", 4, Some("n2"), 104)),
    ];
    let v = merge(3, &three(), &answers, None);
    assert_eq!(v.leader.as_deref(), Some("n2"));
    assert_eq!(v.term, 4);
    assert!(by_name(&v, "n1").stale);
    assert!(!by_name(&v, "n3").stale);
    assert_eq!(by_name(&v, "n1").lag, Some(4));
}

#[test]
fn no_leader_when_nobody_reachable_leads() {
    let answers = vec![
        ok(1, report("candidate", 5, None, 10)),
        Answer {
            id: 2,
            report: Err(FetchError::Status(503)),
            rtt: None,
        },
    ];
    let v = merge(1, &three(), &answers, None);
    assert_eq!(v.leader, None);
    assert!(v.members.iter().all(|m| m.lag.is_none()));
    assert_eq!(
        by_name(&v, "n2").error.as_deref(),
        Some("answered HTTP 503")
    );
    assert_eq!(by_name(&v, "n3").error.as_deref(), Some("not asked"));
    assert!(
        !by_name(&v, "n1").stale,
        "no leader known by anyone: not stale"
    );
}

#[test]
fn learners_are_shown_as_non_voters() {
    let mut members = three();
    members.push(member("n4", 4, false));
    let answers = vec![
        ok(1, report("leader", 2, Some("n1"), 7)),
        ok(4, report("learner", 2, Some("n1"), 3)),
    ];
    let v = merge(1, &members, &answers, None);
    let n4 = by_name(&v, "n4");
    assert!(!n4.voter);
    assert_eq!(n4.status.as_ref().map(|r| r.role.as_str()), Some("learner"));
    assert_eq!(n4.lag, Some(4));
}

#[test]
fn a_status_body_is_read_for_the_fields_the_view_uses() {
    let body = br#"{"id":"n2","role":"follower","term":7,"leader":{"id":"n1","node_id":1},
        "last_log_index":12,"commit_index":11,"applied_index":10,"revision":9,"members":[]}"#;
    let r = Report::from_status_json(body).expect("a /status body parses");
    assert_eq!(
        r,
        Report {
            role: "follower".into(),
            term: 7,
            leader: Some("n1".into()),
            last_log_index: Some(12),
            commit_index: Some(11),
            applied_index: Some(10),
            revision: Some(9),
        }
    );
    let no_leader = br#"{"role":"candidate","term":8,"leader":null,"last_log_index":null,
        "commit_index":null,"applied_index":null}"#;
    let r = Report::from_status_json(no_leader).expect("null fields parse");
    assert_eq!(r.leader, None);
    assert_eq!(r.revision, None);
    assert!(matches!(
        Report::from_status_json(b"<html>"),
        Err(FetchError::BadBody(_))
    ));
}
