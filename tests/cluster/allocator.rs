//! Story: the operator reads in the README that raftkv asks for transparent huge pages for its
//! heap (jemalloc `thp:always`, for fast restarts) and that `_RJEM_MALLOC_CONF=thp:default` in
//! its environment turns that off. Both are checked on the running process: the kernel marks a
//! mapping advised for huge pages with `hg` in `/proc/<pid>/smaps` (whether or not the kernel
//! then finds free huge pages, which depends on the host).

use serde_json::json;

use crate::harness::{Cluster, StartOpts, argv};

/// Anonymous mappings of process `pid` advised for huge pages (`VmFlags` containing `hg`).
fn huge_page_advised_mappings(pid: u32) -> usize {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    smaps
        .lines()
        .filter_map(|l| l.strip_prefix("VmFlags:"))
        .filter(|flags| flags.split_whitespace().any(|f| f == "hg"))
        .count()
}

#[test]
fn the_heap_asks_for_huge_pages_unless_the_environment_says_otherwise() {
    // The kernel's switch: only a kernel without THP, or with it set to never, has nothing to
    // check (jemalloc then leaves its memory alone).
    let Ok(mode) = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled") else {
        eprintln!("no transparent huge pages on this kernel: nothing to check");
        return;
    };
    if mode.contains("[never]") {
        eprintln!("transparent huge pages are off on this host ({mode:?}): nothing to check");
        return;
    }
    let mut c = Cluster::new("allocator");

    c.phase("a node with the default settings, and one with _RJEM_MALLOC_CONF=thp:default");
    let default = c.start_raftd(None, "");
    let off = c.start_with(
        StartOpts {
            env: vec![("_RJEM_MALLOC_CONF".into(), "thp:default".into())],
            ..StartOpts::default()
        },
        |p| argv(&format!("-p {}", p.http)),
    );
    for i in [default, off] {
        for n in 0..50 {
            let value = "v".repeat(10_000);
            c.post_key(i, &json!({ format!("k{n}"): value }))
                .expect_status(200);
        }
    }

    let pid = |i: usize| c.node(i).pid().expect("running");
    let advised = huge_page_advised_mappings(pid(default));
    assert!(
        advised > 0,
        "the default node's heap is not advised for huge pages (jemalloc's malloc_conf not read?)"
    );
    assert_eq!(
        huge_page_advised_mappings(pid(off)),
        0,
        "thp:default in the environment still left mappings advised for huge pages"
    );
}
