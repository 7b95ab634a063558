//! Story: writes sent to a follower are forwarded to the leader (unlike raftd/hraftd, which
//! refused them) and answer exactly as the leader would; the result is visible on all nodes,
//! through both the raftd (`/db`) and the hraftd (`/key`) API.

use serde_json::json;

use crate::harness::{Cluster, Level};

#[test]
fn writes_via_followers_are_forwarded() {
    let c = Cluster::three_raftd("forwarding", "");
    let leader = c.leader();
    let followers = c.followers(leader);
    assert_eq!(followers.len(), 2);
    let (f1, f2) = (followers[0], followers[1]);
    let all = c.live();

    c.phase("raftd API: POST /db/fwd on follower 1 answers 200");
    c.put_db(f1, "fwd", "via-follower").expect_status(200);
    for &i in &all {
        c.get_db(i, "fwd", Level::Linearizable)
            .expect_body("via-follower");
        c.wait_db_value(i, "fwd", "via-follower", Level::Stale);
    }

    c.phase("hraftd API: POST /key on follower 2 answers 200");
    c.post_key(f2, &json!({"fk": "fv", "fk2": "fv2"}))
        .expect_status(200);
    for &i in &all {
        c.get_key(i, "fk", Level::Linearizable)
            .expect_json(&json!({"fk": "fv"}));
        c.wait_key_value(i, "fk2", "fv2", Level::Stale);
    }

    c.phase("both APIs see the same keys: /db/fk and /key/fwd");
    c.get_db(f1, "fk", Level::Linearizable).expect_body("fv");
    c.get_key(f2, "fwd", Level::Linearizable)
        .expect_json(&json!({"fwd": "via-follower"}));

    c.phase("deletes via followers are forwarded too");
    c.delete_db(f2, "fwd").expect_status(200);
    c.delete_key(f1, "fk").expect_status(200);
    for &i in &all {
        c.get_db(i, "fwd", Level::Linearizable)
            .expect_error(&[404], &["not_found"]);
        c.get_key(i, "fk", Level::Linearizable)
            .expect_error(&[404], &["not_found"]);
    }

    c.phase("a bad request via a follower answers like the leader would (400)");
    c.post_raw(f1, "/key", b"{not json")
        .expect_error(&[400], &["bad_request"]);
    c.leader(); // the cluster is still healthy and agrees on the same leader
    assert_eq!(
        c.leader(),
        leader,
        "nothing here should have changed the leader"
    );
}
