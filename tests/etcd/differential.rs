//! The differential test: the same etcdctl session against a real 3-member etcd 3.4 and a
//! 3-node raftkv, outputs compared after normalising what differs by construction.

use crate::harness::Cluster;
use crate::reference::EtcdCluster;
use crate::sessions;
use crate::sessions::Context;

/// raftkv's endpoints and names, from the harness.
pub fn raftkv_context(c: &Cluster) -> Context {
    let endpoints = (0..c.len()).map(|i| c.node(i).http_addr()).collect();
    let names = (0..c.len()).map(|i| c.id(i)).collect();
    Context::new(endpoints, names)
}

/// Runs `session` on both clusters; returns the steps whose normalised outputs differ.
fn differences(session: &[sessions::Step], etcd: &Context, ours: &Context) -> Vec<String> {
    let mut diffs = Vec::new();
    for step in session {
        let theirs = etcd.run(step);
        let mine = ours.run(step);
        eprintln!(
            "   etcdctl {} -> etcd exit {}, raftkv exit {}",
            step.args.join(" "),
            theirs.code,
            mine.code
        );
        if theirs != mine {
            diffs.push(format!(
                "etcdctl {}:\n--- etcd (exit {}):\n{}\n{}\n--- raftkv (exit {}):\n{}\n{}",
                step.args.join(" "),
                theirs.code,
                theirs.stdout,
                theirs.error,
                mine.code,
                mine.stdout,
                mine.error
            ));
        }
    }
    diffs
}

#[test]
fn cluster_session_prints_what_etcd_prints() {
    if !crate::etcd_tools_or_skip("cluster_session_prints_what_etcd_prints") {
        return;
    }
    let etcd_cluster = EtcdCluster::start(3);
    let etcd = Context::new(etcd_cluster.endpoints(), etcd_cluster.names());
    let raftkv = Cluster::three_raftd("etcd-differential", "");
    raftkv.phase("run the cluster session on etcd and on raftkv");
    let ours = raftkv_context(&raftkv);
    let diffs = differences(sessions::CLUSTER, &etcd, &ours);
    assert!(
        diffs.is_empty(),
        "{} of {} steps differ from etcd:\n\n{}",
        diffs.len(),
        sessions::CLUSTER.len(),
        diffs.join("\n\n")
    );
}

#[test]
fn kv_session_prints_what_etcd_prints() {
    if !crate::etcd_tools_or_skip("kv_session_prints_what_etcd_prints") {
        return;
    }
    let etcd_cluster = EtcdCluster::start(3);
    let etcd = Context::new(etcd_cluster.endpoints(), etcd_cluster.names());
    let raftkv = Cluster::three_raftd("etcd-differential-kv", "");
    raftkv.phase("run the key/value session on etcd and on raftkv");
    let ours = raftkv_context(&raftkv);
    let diffs = differences(sessions::KV, &etcd, &ours);
    assert!(
        diffs.is_empty(),
        "{} of {} steps differ from etcd:\n\n{}",
        diffs.len(),
        sessions::KV.len(),
        diffs.join("\n\n")
    );
}

#[test]
fn watch_session_prints_what_etcd_prints() {
    use crate::watch_session;
    if !crate::etcd_tools_or_skip("watch_session_prints_what_etcd_prints") {
        return;
    }
    let etcd_cluster = EtcdCluster::start(3);
    let etcd = Context::new(etcd_cluster.endpoints(), etcd_cluster.names());
    let raftkv = Cluster::three_raftd("etcd-differential-watch", "");
    let ours = raftkv_context(&raftkv);
    raftkv.phase("the same writes on both (revisions 2 to 5)");
    for write in watch_session::SETUP {
        for ctx in [&etcd, &ours] {
            let out = crate::etcdctl::run(&ctx.endpoints[..1], write, None);
            assert_eq!(out.code, 0, "etcdctl {write:?}: {out:?}");
        }
    }
    raftkv.phase("etcdctl watch in the background on both, outputs compared");
    let mut diffs = Vec::new();
    let mut compare = |case: &watch_session::WatchCase| {
        let theirs = watch_session::run(&etcd, case);
        let mine = watch_session::run(&ours, case);
        eprintln!(
            "   etcdctl {} -> etcd {:?}, raftkv {:?}",
            case.watch.join(" "),
            theirs.code,
            mine.code
        );
        if theirs != mine {
            diffs.push(format!(
                "etcdctl {} (typed {:?}, then {:?}):\n--- etcd:\n{theirs:#?}\n--- raftkv:\n{mine:#?}",
                case.watch.join(" "),
                case.typed,
                case.typed_after
            ));
        }
    };
    for case in watch_session::WATCH {
        compare(case);
    }
    raftkv.phase("compaction 4 on both; a watch from revision 2 is canceled");
    for ctx in [&etcd, &ours] {
        let out = crate::etcdctl::run(&ctx.endpoints[..1], &["compaction", "4"], None);
        assert_eq!(out.code, 0, "compaction: {out:?}");
        // A linearizable read through the same member returns once it applied the compaction.
        let out = crate::etcdctl::run(&ctx.endpoints[..1], &["get", "foo"], None);
        assert_eq!(out.code, 0, "get: {out:?}");
    }
    compare(&watch_session::COMPACTED);
    assert!(
        diffs.is_empty(),
        "{} watch cases differ from etcd:\n\n{}",
        diffs.len(),
        diffs.join("\n\n")
    );
}

#[test]
fn lease_session_prints_what_etcd_prints() {
    use crate::lease_session::{Runner, SESSION};
    if !crate::etcd_tools_or_skip("lease_session_prints_what_etcd_prints") {
        return;
    }
    let etcd_cluster = EtcdCluster::start(3);
    let etcd = Context::new(etcd_cluster.endpoints(), etcd_cluster.names());
    let raftkv = Cluster::three_raftd("etcd-differential-lease", "");
    let ours = raftkv_context(&raftkv);
    raftkv.phase("run the lease session on etcd and on raftkv, step by step");
    let (mut theirs, mut mine) = (Runner::new(&etcd), Runner::new(&ours));
    let mut diffs = Vec::new();
    for step in SESSION {
        let (a, b) = (theirs.run(step), mine.run(step));
        let what = Runner::describe(step);
        eprintln!("   {what} -> etcd exit {}, raftkv exit {}", a.code, b.code);
        if a != b {
            diffs.push(format!(
                "{what}:\n--- etcd (exit {}):\n{}\n{}\n--- raftkv (exit {}):\n{}\n{}",
                a.code, a.stdout, a.error, b.code, b.stdout, b.error
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} steps differ from etcd:\n\n{}",
        diffs.len(),
        SESSION.len(),
        diffs.join("\n\n")
    );
}

#[test]
fn lock_and_elect_sessions_print_what_etcd_prints() {
    if !crate::etcd_tools_or_skip("lock_and_elect_sessions_print_what_etcd_prints") {
        return;
    }
    let etcd_cluster = EtcdCluster::start(3);
    let raftkv = Cluster::three_raftd("etcd-differential-lock", "");
    raftkv.phase("etcdctl lock and elect on etcd");
    let theirs = crate::lock_session::run(&etcd_cluster.endpoints());
    raftkv.phase("the same on raftkv");
    let mine = crate::lock_session::run(&raftkv_context(&raftkv).endpoints);
    for line in &mine {
        eprintln!("   raftkv: {line}");
    }
    assert_eq!(
        mine, theirs,
        "raftkv's lock / elect transcript differs from etcd's"
    );
}
