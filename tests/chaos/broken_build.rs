//! A "broken build" caught on the real cluster: a follower cut off by the proxy still answers
//! `?level=stale` reads from its old copy. Recorded as if they were default (linearizable)
//! reads — what a build serving default reads locally would answer — the history is rejected;
//! the real default-level read of the same follower is not stale and the real history passes.

use std::time::Duration;

use crate::checker;
use crate::history::{Action, Observed, Op, Outcome, now_ns};
use crate::proxy::LinkFault;
use crate::topology::ChaosCluster;
use crate::{NODE_FLAGS, workload};

#[test]
fn stale_reads_posing_as_linearizable_are_caught() {
    let _serial = crate::serial();
    let cc = ChaosCluster::start("chaos-stale", 3, 1, NODE_FLAGS);
    assert!(
        cc.net_faults,
        "needs --advertise-haddr/--advertise-raddr in the product"
    );
    let leader = cc.wait_healthy(Duration::from_secs(30)).expect("healthy");
    let f = *cc
        .members
        .iter()
        .find(|&&i| i != leader)
        .expect("a follower");
    let http = workload::http_client(Duration::from_secs(5));
    let exec = |node: usize, action: Action| {
        let addr = cc.c.node(node).http_addr();
        workload::execute(&http, 1, node, &addr, action, 0)
    };
    let key = "stale-k".to_owned();
    let put = |v: u64| Action::Put {
        key: key.clone(),
        value: v,
    };
    let stale_read = |node: usize| -> Op {
        let call_ns = now_ns();
        let url = format!(
            "http://{}/db/{key}?level=stale",
            cc.c.node(node).http_addr()
        );
        let r = http.get(url).send().expect("stale read");
        let body = r.text().expect("body");
        Op {
            client: 2,
            node,
            action: Action::Read { key: key.clone() },
            call_ns,
            ret_ns: now_ns(),
            outcome: Outcome::Ok,
            read: Some(
                body.parse()
                    .map_or(Observed::Garbage(body), Observed::Value),
            ),
            note: "?level=stale, recorded as linearizable".into(),
        }
    };

    cc.c.phase("write 1 and wait until the follower's local copy has it");
    let mut real = vec![exec(leader, put(1))];
    assert_eq!(real[0].outcome, Outcome::Ok, "{}", real[0]);
    crate::harness::wait_until(Duration::from_secs(10), "follower has 1", || {
        stale_read(f).read == Some(Observed::Value(1))
    });

    cc.c.phase(&format!(
        "cut the follower n{f} off, then write 2 through the leader"
    ));
    for &j in cc.members.iter().filter(|&&j| j != f) {
        cc.proxy.set_both(f, j, LinkFault::Blackhole);
    }
    let w2 = exec(leader, put(2));
    assert_eq!(w2.outcome, Outcome::Ok, "{w2}");
    real.push(w2);

    cc.c.phase("the follower's local copy is stale; a default read there must not be");
    let broken = stale_read(f);
    assert_eq!(broken.read, Some(Observed::Value(1)), "{broken}");
    let honest = exec(f, Action::Read { key: key.clone() });
    eprintln!("   default-level read on the cut-off follower: {honest}");
    assert_ne!(
        honest.read,
        Some(Observed::Value(1)),
        "the product served a stale read: {honest}"
    );
    real.push(honest);
    cc.proxy.heal();

    let mut broken_history = real.clone();
    broken_history.push(broken);
    broken_history.sort_by_key(|o| o.call_ns);
    let r = checker::check_linearizable(&broken_history, Duration::from_secs(10));
    assert_eq!(r.violations.len(), 1, "the stale read must be caught");
    eprintln!(
        "{}",
        checker::render_violation(&r.violations[0], &broken_history)
    );

    real.sort_by_key(|o| o.call_ns);
    let r = checker::check_linearizable(&real, Duration::from_secs(10));
    assert!(r.violations.is_empty(), "the real history must pass");
}
