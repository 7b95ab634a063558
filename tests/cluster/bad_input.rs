//! Story: a user sends garbage. Every mistake gets the documented status and a JSON error body
//! `{"error": "...", "code": "..."}`, nothing bad is stored, and the node keeps serving.

use reqwest::Method;
use serde_json::json;

use crate::harness::{Cluster, Level};

const MAX_VALUE_BYTES: usize = 1024;

#[test]
fn bad_requests_get_clear_errors_and_the_node_keeps_working() {
    let mut c = Cluster::new("bad-input");

    c.phase(&format!(
        "start one node with --max-value-bytes {MAX_VALUE_BYTES}"
    ));
    let n = c.start_raftd(None, &format!("--max-value-bytes {MAX_VALUE_BYTES}"));
    c.wait_leader_is(n);

    c.phase("invalid JSON to /key -> 400 bad_request");
    c.post_raw(n, "/key", b"{not json")
        .expect_error(&[400], &["bad_request"]);
    c.post_raw(n, "/key", b"")
        .expect_error(&[400], &["bad_request"]);

    c.phase("JSON that is not an object of strings -> 400 bad_request");
    c.post_raw(n, "/key", br#"["user1","batman"]"#)
        .expect_error(&[400], &["bad_request"]);
    c.post_raw(n, "/key", br#""batman""#)
        .expect_error(&[400], &["bad_request"]);
    c.post_raw(n, "/key", br#"{"user1": 1}"#)
        .expect_error(&[400], &["bad_request"]);
    c.post_raw(n, "/key", br#"{"user1": null}"#)
        .expect_error(&[400], &["bad_request"]);
    c.post_raw(n, "/key", br#"{"user1": {"a": "b"}}"#)
        .expect_error(&[400], &["bad_request"]);
    c.post_raw(n, "/key", br#"{"ok": "fine", "user1": ["x"]}"#)
        .expect_error(&[400], &["bad_request"]);
    c.get_key(n, "ok", Level::Linearizable)
        .expect_error(&[404], &["not_found"]); // batch is atomic

    c.phase("empty keys -> 400 (or 404 for an empty path segment), always a JSON error");
    c.post_raw(n, "/db/", b"value")
        .expect_error(&[400, 404], &[]);
    c.get_db(n, "", Level::Linearizable)
        .expect_error(&[400, 404], &[]);
    c.post_raw(n, "/key", br#"{"": "value"}"#)
        .expect_error(&[400], &["bad_request"]);
    c.get_key(n, "", Level::Linearizable)
        .expect_error(&[400, 404], &[]);

    c.phase(&format!(
        "a value over {MAX_VALUE_BYTES} bytes -> 413 too_large; exactly the limit is fine"
    ));
    let big = "x".repeat(MAX_VALUE_BYTES + 1);
    c.put_db(n, "big", &big)
        .expect_error(&[413], &["too_large"]);
    c.post_key(n, &json!({ "bigk": big }))
        .expect_error(&[413], &["too_large"]);
    c.get_db(n, "big", Level::Linearizable)
        .expect_error(&[404], &["not_found"]);
    c.get_key(n, "bigk", Level::Linearizable)
        .expect_error(&[404], &["not_found"]);
    let edge = "y".repeat(MAX_VALUE_BYTES);
    c.put_db(n, "edge", &edge).expect_status(200);
    c.get_db(n, "edge", Level::Linearizable).expect_body(&edge);

    c.phase("unknown routes -> 404 not_found");
    c.request(n, Method::GET, "/nope", None)
        .expect_error(&[404], &["not_found"]);
    c.post_raw(n, "/dbx/k", b"v")
        .expect_error(&[404], &["not_found"]);

    c.phase("wrong methods -> 405 method_not_allowed");
    c.request(
        n,
        Method::PATCH,
        "/db/x",
        Some((b"v".to_vec(), "text/plain")),
    )
    .expect_error(&[405], &["method_not_allowed"]);
    c.request(n, Method::PUT, "/status", None)
        .expect_error(&[405], &["method_not_allowed"]);
    c.request(n, Method::GET, "/join", None)
        .expect_error(&[405], &["method_not_allowed"]);

    c.phase("admin endpoints reject garbage with 400");
    c.post_raw(n, "/join", b"{not json")
        .expect_error(&[400], &["bad_request"]);
    c.post_json(n, "/join", &json!({}))
        .expect_error(&[400], &["bad_request"]);
    c.post_raw(n, "/remove", b"[1]")
        .expect_error(&[400], &["bad_request"]);

    c.phase("after all that the node still serves normal writes and reads, and is still leader");
    c.put_db(n, "x", "still-fine").expect_status(200);
    c.get_db(n, "x", Level::Linearizable)
        .expect_body("still-fine");
    c.post_key(n, &json!({"user1": "batman"}))
        .expect_status(200);
    c.get_key(n, "user1", Level::Stale)
        .expect_json(&json!({"user1": "batman"}));
    c.wait_leader_is(n);
    assert_eq!(
        c.status(n)["digest"]["keys"],
        3,
        "only edge, x and user1 were stored"
    );
}
