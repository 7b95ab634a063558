//! Stories: the live cluster page (README "The cluster page"). `GET /status/cluster` as curl
//! sees it — every member's status merged, a dead or frozen member reported unreachable within
//! the per-member timeout — and the page itself in Debian's headless Chromium: the members and
//! leader it renders (read from its DOM with `--dump-dom`) match `/status`, a screenshot is kept
//! under `target/tmp/cluster-page/`, and after the leader is killed the page loaded from a
//! survivor shows the new leader and the dead node unreachable (Raft §5.2: a new leader is
//! elected once the old one stops sending heartbeats).
//! Over https (peer mutual TLS and client TLS from one CA) the view reaches every member too.
//!
//! Without `/usr/bin/chromium` the browser story skips with a loud message, except when `CI` is
//! set: then it fails (`.ci/run` installs Debian's `chromium`). `RAFTKV_UPDATE_SCREENSHOT=1`
//! also copies the screenshot to `docs/cluster-page.png` (the README's picture).

mod browser;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::harness::{CONVERGE_TIMEOUT, Cluster, LEADER_TIMEOUT, wait_until_with};
use browser::{Browser, Shown, chromium_or_skip, shown};

/// How long the page gets to show what the test waits for.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);
/// The server's per-member bound (`service::status::MEMBER_STATUS_TIMEOUT`) plus a margin for
/// a loaded 2-core machine.
const VIEW_WITHIN: Duration = Duration::from_millis(500 + 1500);
/// Writes sent while the screenshot is taken, so its charts have something to show.
const SCREENSHOT_WRITES: usize = 200;

/// Member names as node `i`'s `/status` lists them, sorted.
fn member_names(c: &Cluster, i: usize) -> Vec<String> {
    let mut names: Vec<String> = c.status(i)["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn cluster_view(c: &Cluster, i: usize) -> (Value, Duration) {
    let r = c.request(i, Method::GET, "/status/cluster", None);
    r.expect_status(200);
    (r.json(), r.elapsed)
}

fn view_member<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["id"] == name))
        .unwrap_or_else(|| panic!("{name} in the view: {view}"))
}

#[test]
fn status_cluster_reports_every_member_and_the_ones_that_are_down() {
    let mut c = Cluster::three_raftd("status-cluster", "");
    let leader = c.leader();
    let leader_name = c.id(leader);
    for k in 0..5 {
        c.put_db(leader, &format!("k{k}"), "v").expect_status(200);
    }

    c.phase("GET /status/cluster on every node: three reachable members, one leader, lag known");
    for i in c.live() {
        wait_until_with(
            CONVERGE_TIMEOUT,
            &format!("node {i}'s view is whole"),
            || {
                let (view, _) = cluster_view(&c, i);
                let whole = view["leader"] == leader_name.as_str()
                    && view["members"].as_array().is_some_and(|ms| {
                        ms.len() == 3 && ms.iter().all(|m| m["reachable"] == true && m["lag"] == 0)
                    });
                if whole {
                    Ok(view)
                } else {
                    Err(view.to_string())
                }
            },
        );
        let (view, _) = cluster_view(&c, i);
        assert_eq!(view["node"], c.id(i).as_str());
        let names: Vec<&str> = view["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(|m| m["id"].as_str())
            .collect();
        assert_eq!(
            names,
            member_names(&c, i),
            "the view lists /status's members"
        );
        let me = view_member(&view, &c.id(i));
        assert_eq!(me["self"], true);
        let lead = view_member(&view, &leader_name);
        assert_eq!(lead["status"]["role"], "leader");
        assert_eq!(view["revision"], c.status(leader)["revision"]);
    }

    let [down, frozen] = [c.followers(leader)[0], c.followers(leader)[1]];
    c.phase("kill -9 a follower: the leader's view reports it unreachable, at once");
    let down_name = c.id(down);
    c.kill9(down);
    let (view, took) = cluster_view(&c, leader);
    let m = view_member(&view, &down_name);
    assert_eq!(m["reachable"], false, "{view}");
    assert!(m["status"].is_null(), "{m}");
    // The leader still knows how far its replication to the dead member got.
    assert_eq!(m["lag_source"], "replication", "{m}");
    assert!(
        m["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("unreachable")),
        "{m}"
    );
    assert!(took < VIEW_WITHIN, "the view took {took:?}");
    eprintln!("   {down_name}: {} (view in {took:?})", m["error"]);

    c.phase("SIGSTOP the other follower: reported as not answering within the member timeout");
    let frozen_name = c.id(frozen);
    c.pause(frozen);
    let (view, took) = cluster_view(&c, leader);
    let m = view_member(&view, &frozen_name);
    assert_eq!(m["reachable"], false, "{view}");
    assert_eq!(
        m["error"].as_str(),
        Some(format!("no answer within {} ms", view["member_timeout_ms"]).as_str()),
        "{m}"
    );
    assert!(
        took < VIEW_WITHIN,
        "the view took {took:?} with a frozen member"
    );
    assert_eq!(view_member(&view, &leader_name)["reachable"], true);
    eprintln!("   {frozen_name}: {} (view in {took:?})", m["error"]);
    c.resume(frozen);
}

/// Screenshots the page at `url` into `path` while `SCREENSHOT_WRITES` writes go to node
/// `writes_to`, so its charts have something to show.
fn screenshot_under_load(c: &Cluster, b: &mut Browser, writes_to: usize, url: &str, path: &Path) {
    let writer = {
        let url = c.url(writes_to, "/db/page-");
        let client = c.client().clone();
        std::thread::spawn(move || {
            for k in 0..SCREENSHOT_WRITES {
                let _ = client.post(format!("{url}{k}")).body("v").send();
            }
        })
    };
    b.screenshot(url, path)
        .unwrap_or_else(|e| panic!("screenshot: {e}"));
    let _ = writer.join();
    eprintln!("   screenshot: {}", path.display());
}

/// Polls the page at `url` until `want` accepts what it shows; returns that.
fn wait_page(
    b: &mut Browser,
    url: &str,
    what: &str,
    want: impl Fn(&Shown) -> Result<(), String>,
) -> Shown {
    wait_until_with(PAGE_TIMEOUT, what, || {
        let dom = b.dump_dom(url)?;
        let seen = shown(&dom).ok_or("the page has not rendered a view yet")?;
        want(&seen).map_err(|why| format!("{why}; page shows {seen:?}"))?;
        Ok(seen)
    })
}

#[test]
fn the_cluster_page_shows_the_members_and_follows_a_failover() {
    if !chromium_or_skip("the_cluster_page_shows_the_members_and_follows_a_failover") {
        return;
    }
    let mut c = Cluster::three_raftd("page", "");
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cluster-page");
    fs::create_dir_all(&artifacts).expect("create the artifact dir");
    let mut b = Browser::new(&c.root().join("chromium"));
    let leader = c.leader();
    let leader_name = c.id(leader);
    let names = member_names(&c, leader);

    c.phase("headless Chromium loads GET / of a follower: 3 members, the leader highlighted");
    let follower = c.followers(leader)[0];
    let url = c.url(follower, "/");
    let page = wait_page(
        &mut b,
        &url,
        "the page shows 3 members and the leader",
        |s| {
            if s.members.len() != 3 || s.leader != leader_name {
                return Err("not yet 3 members and the leader".into());
            }
            if s.writes_rate.parse::<f64>().is_err() {
                return Err("no writes/s yet (fewer than two updates)".into());
            }
            let all_reachable = s.members.values().all(|m| m["data-reachable"] == "true");
            if all_reachable {
                Ok(())
            } else {
                Err("a member unreachable".into())
            }
        },
    );
    assert_eq!(page.members.keys().cloned().collect::<Vec<_>>(), names);
    assert_eq!(
        page.health, "true",
        "the follower's /health is 200: {page:?}"
    );
    assert!(page.writes_rate.parse::<f64>().is_ok(), "{page:?}");
    // Reads per second come from /metrics; without it the page says so.
    let metrics = c.request(follower, Method::GET, "/metrics", None);
    if metrics.status == 200 && metrics.body.contains("raftkv_mvcc_range_total") {
        assert!(page.reads_rate.parse::<f64>().is_ok(), "{page:?}");
    } else {
        assert_eq!(page.reads_rate, "n/a", "no reads counter: {page:?}");
    }
    for (name, attrs) in &page.members {
        let role = c.status(c.index_of(name).expect("a started node"))["role"].clone();
        assert_eq!(
            attrs["data-role"],
            role.as_str().unwrap_or(""),
            "{name}: {attrs:?}"
        );
        let highlighted = attrs.get("class").is_some_and(|cl| cl.contains("leader"));
        assert_eq!(highlighted, *name == leader_name, "{name}: {attrs:?}");
    }
    screenshot_under_load(
        &c,
        &mut b,
        leader,
        &url,
        &artifacts.join("cluster-page.png"),
    );

    c.phase(
        "kill -9 the leader: the page (from a survivor) shows the new leader, the old one down",
    );
    c.kill9(leader);
    let new_leader = c.leader();
    let new_name = c.id(new_leader);
    assert!(new_name != leader_name);
    // The same survivor as before: the page's origin, whose storage keeps its leader changes.
    let url = c.url(follower, "/");
    let t0 = Instant::now();
    let page = wait_page(&mut b, &url, "the page shows the new leader", |s| {
        if s.leader != new_name {
            return Err(format!("leader {} (want {new_name})", s.leader));
        }
        match s.members.get(&leader_name) {
            Some(old) if old["data-reachable"] == "false" => Ok(()),
            _ => Err(format!("{leader_name} not shown unreachable")),
        }
    });
    assert!(t0.elapsed() < LEADER_TIMEOUT + PAGE_TIMEOUT);
    assert_eq!(page.members[&new_name]["data-role"], "leader");
    assert_eq!(page.members.len(), 3, "the dead node is still a member");
    let news: Vec<&str> = page.changes.iter().map(|(_, new)| new.as_str()).collect();
    assert_eq!(news.first(), Some(&new_name.as_str()), "{:?}", page.changes);
    assert!(
        news.contains(&leader_name.as_str()),
        "the change from {leader_name} is listed: {:?}",
        page.changes
    );
    eprintln!(
        "   leader changes listed (newest first): {:?}",
        page.changes
    );
    eprintln!("   page shows {new_name} leading and {leader_name} unreachable");
    let shot = artifacts.join("cluster-page-after-failover.png");
    screenshot_under_load(&c, &mut b, new_leader, &url, &shot);
    if std::env::var_os("RAFTKV_UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cluster-page.png");
        fs::copy(&shot, &docs).expect("copy the screenshot to docs/");
        eprintln!("   copied to {}", docs.display());
    }
}

#[test]
fn status_cluster_over_https_asks_the_members_with_the_peer_tls_settings() {
    use crate::tls_support::{Pki, TlsCluster, https_client};
    let mut c = TlsCluster::new("status-cluster-tls", |root| {
        https_client(&Pki::generate(&root.join("pki")).ca(), None)
    });
    let pki = Pki {
        dir: c.root().join("pki"),
    };
    c.phase("two hraftd-style nodes with peer mutual TLS and an https public API (one CA)");
    let tls = |n: usize| [pki.peer_flags(n), pki.client_flags(n)].concat();
    let mut names = Vec::new();
    let mut first_http = None;
    for n in 0..2 {
        let flags = tls(n + 1);
        let join = first_http.map_or_else(String::new, |p| format!(" -join 127.0.0.1:{p}"));
        let i = c.start(true, |h, r| {
            let mut a = crate::harness::argv(&format!(
                "-haddr 127.0.0.1:{h} -raddr 127.0.0.1:{r} -id node{n}{join}"
            ));
            a.extend(flags.clone());
            a
        });
        first_http.get_or_insert(c.ports(i).http);
        names.push(format!("node{n}"));
    }
    assert_eq!(c.wait_voters(1, 2), names);

    c.phase("GET /status/cluster over https on the joiner: both members reachable");
    wait_until_with(
        CONVERGE_TIMEOUT,
        "both members reachable over https",
        || {
            let r = c.c.try_request(1, Method::GET, "/status/cluster", None)?;
            let view: Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
            let reachable = view["members"]
                .as_array()
                .is_some_and(|ms| ms.len() == 2 && ms.iter().all(|m| m["reachable"] == true));
            if r.status == 200 && reachable && view["leader"] == "node0" {
                Ok(())
            } else {
                Err(r.body)
            }
        },
    );
}
