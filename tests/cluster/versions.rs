//! Story: the HTTP API's revisions, as a curl user sees them (README, "Revisions,
//! compare-and-swap, listing"): every read answers the key's mod revision (`X-Raft-Revision`,
//! `ETag`), every write the new revision; `If-Match` / `If-None-Match` make writes a
//! compare-and-swap (`412` when the key moved on); `?revision=` reads history; `GET /db?prefix=`
//! lists a prefix in pages at one revision.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Cluster, Level, Resp};

const CURL: &str = "application/x-www-form-urlencoded";

fn rev(r: &Resp) -> i64 {
    r.header("x-raft-revision")
        .unwrap_or_else(|| panic!("{}: no X-Raft-Revision in {:?}", r.what, r.headers))
        .parse()
        .expect("a number")
}

fn put_if(c: &Cluster, i: usize, key: &str, value: &str, header: (&str, &str)) -> Resp {
    c.request_with(
        i,
        Method::PUT,
        &format!("/db/{key}"),
        &[header],
        Some((value.as_bytes().to_vec(), CURL)),
    )
}

fn list(c: &Cluster, i: usize, query: &str) -> Value {
    let r = c.request(i, Method::GET, &format!("/db?{query}"), None);
    r.expect_status(200);
    r.json()
}

fn keys_of(page: &Value) -> Vec<String> {
    page["kvs"]
        .as_array()
        .expect("kvs")
        .iter()
        .map(|kv| kv["key"].as_str().expect("key").to_owned())
        .collect()
}

#[test]
fn revisions_compare_and_swap_history_and_listing_over_http() {
    let c = Cluster::three_raftd("versions", "");
    let leader = c.leader();
    let f = c.followers(leader)[0];

    c.phase("a write answers its revision; a read answers the key's mod revision and ETag");
    let w1 = c.put_db(leader, "a", "one");
    w1.expect_status(200);
    let r1 = rev(&w1);
    let read = c.get_db(leader, "a", Level::Linearizable);
    read.expect_body("one");
    assert_eq!(rev(&read), r1);
    assert_eq!(read.header("etag"), Some(format!("\"{r1}\"").as_str()));

    c.phase("If-Match with the current revision (sent to a follower) writes; a stale one gets 412");
    let w2 = put_if(&c, f, "a", "two", ("if-match", &format!("\"{r1}\"")));
    w2.expect_status(200);
    let r2 = rev(&w2);
    assert!(r2 > r1, "{r2} > {r1}");
    let stale = put_if(&c, leader, "a", "lost", ("if-match", &r1.to_string()));
    stale.expect_error(&[412], &["precondition_failed"]);
    assert_eq!(rev(&stale), r2, "the 412 names the revision now");
    assert_eq!(stale.json()["revision"], r2);
    c.get_db(leader, "a", Level::Linearizable)
        .expect_body("two");

    c.phase("If-None-Match: * creates only if absent; If-Match: * writes only if present");
    put_if(&c, leader, "a", "x", ("if-none-match", "*"))
        .expect_error(&[412], &["precondition_failed"]);
    put_if(&c, leader, "b", "new", ("if-none-match", "*")).expect_status(200);
    put_if(&c, leader, "b", "again", ("if-none-match", "*"))
        .expect_error(&[412], &["precondition_failed"]);
    put_if(&c, leader, "nope", "x", ("if-match", "*"))
        .expect_error(&[412], &["precondition_failed"]);
    c.get_db(leader, "nope", Level::Linearizable)
        .expect_error(&[404], &["not_found"]);
    put_if(&c, leader, "a", "y", ("if-match", "banana")).expect_error(&[400], &["bad_request"]);

    c.phase("a conditional DELETE: a wrong revision is refused, the right one deletes");
    let del = |value: &str| {
        c.request_with(
            leader,
            Method::DELETE,
            "/db/a",
            &[("if-match", value)],
            None,
        )
    };
    del("999").expect_error(&[412], &["precondition_failed"]);
    let d = del(&r2.to_string());
    d.expect_status(200);
    let r_del = rev(&d);
    c.get_db(leader, "a", Level::Linearizable)
        .expect_error(&[404], &["not_found"]);

    c.phase("?revision= reads history: each value as of its revision, 404 before and after");
    let at = |r: i64| c.request(f, Method::GET, &format!("/db/a?revision={r}"), None);
    at(r1).expect_body("one");
    at(r2).expect_body("two");
    assert_eq!(rev(&at(r2)), r2);
    at(r1 - 1).expect_error(&[404], &["not_found"]);
    at(r_del).expect_error(&[404], &["not_found"]);
    at(r_del + 1000).expect_error(&[400], &["future_revision"]);

    c.phase("POST /key of two keys is one revision");
    let w = c.post_key(leader, &json!({"m1": "x", "m2": "y"}));
    w.expect_status(200);
    let rm = rev(&w);
    let page = list(&c, leader, "prefix=m");
    let mods: Vec<i64> = page["kvs"]
        .as_array()
        .expect("kvs")
        .iter()
        .map(|kv| kv["mod_revision"].as_i64().expect("mod"))
        .collect();
    assert_eq!(mods, [rm, rm], "{page}");

    c.phase("listing p/ in pages of 2 at one revision, while p/3 changes meanwhile");
    for i in 1..=5 {
        c.put_db(leader, &format!("p/{i}"), &format!("v{i}"))
            .expect_status(200);
    }
    c.put_db(leader, "q", "other").expect_status(200);
    let first = list(&c, f, "prefix=p/&limit=2");
    assert_eq!(keys_of(&first), ["p/1", "p/2"], "{first}");
    assert_eq!(
        (first["more"].clone(), first["count"].clone()),
        (json!(true), json!(5))
    );
    assert_eq!(first["next"], "p/2");
    let at_rev = first["revision"].as_i64().expect("revision");
    c.put_db(leader, "p/3", "changed").expect_status(200);
    let second = list(
        &c,
        f,
        &format!("prefix=p/&limit=2&after=p/2&revision={at_rev}"),
    );
    assert_eq!(keys_of(&second), ["p/3", "p/4"], "{second}");
    assert_eq!(
        second["kvs"][0]["value"], "v3",
        "the page is read at the first page's revision"
    );
    let last = list(
        &c,
        f,
        &format!("prefix=p/&limit=2&after=p/4&revision={at_rev}"),
    );
    assert_eq!(keys_of(&last), ["p/5"], "{last}");
    assert_eq!(
        (last["more"].clone(), last["next"].clone()),
        (json!(false), Value::Null)
    );
    let now = list(&c, f, "prefix=p/3");
    assert_eq!(now["kvs"][0]["value"], "changed");
    assert_eq!(now["kvs"][0]["version"], 2);
    c.request(leader, Method::GET, "/db?limit=0", None)
        .expect_error(&[400], &["bad_request"]);

    c.phase("every replica holds the same revisions");
    for i in 0..3 {
        let s = list(&c, i, &format!("prefix=p/&revision={at_rev}"));
        assert_eq!(keys_of(&s).len(), 5);
    }
    let statuses: Vec<Value> = (0..3).map(|i| c.status(i)).collect();
    c.wait_digests_agree(
        &[0, 1, 2],
        statuses[leader]["digest"]["keys"].as_u64().expect("keys"),
    );
}

#[test]
fn auto_compaction_drops_old_revisions_in_both_modes() {
    let mut c = Cluster::new("auto-compaction");
    c.phase("revision mode keeping 5 revisions: 20 writes, then old revisions answer 410");
    let a = c.start_raftd(None, "--auto-compaction-retention 5");
    c.wait_leader_is(a);
    let mut last = 0;
    for i in 0..20 {
        last = rev(&c.put_db(a, "k", &format!("v{i}")));
    }
    let old = |c: &Cluster, i: usize, r: i64| {
        c.request(i, Method::GET, &format!("/db/k?revision={r}"), None)
    };
    crate::harness::wait_until(
        std::time::Duration::from_secs(20),
        "revision 2 is compacted",
        || old(&c, a, 2).status == 410,
    );
    old(&c, a, 2).expect_error(&[410], &["compacted"]);
    old(&c, a, last - 2).expect_body("v17");
    c.get_db(a, "k", Level::Linearizable).expect_body("v19");

    c.phase("periodic mode keeping 1 s: a revision older than that is compacted");
    let b = c.start_raftd(
        None,
        "--auto-compaction-mode periodic --auto-compaction-retention 1s",
    );
    c.wait_leader_is(b);
    let first = rev(&c.put_db(b, "k", "first"));
    crate::harness::wait_until(
        std::time::Duration::from_secs(20),
        "the first revision is compacted",
        || {
            c.put_db(b, "k", "later").expect_status(200);
            old(&c, b, first).status == 410
        },
    );
    c.get_db(b, "k", Level::Linearizable).expect_body("later");
}
