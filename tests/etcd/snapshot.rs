//! `etcdctl snapshot save` against raftkv (Maintenance.Snapshot) writes a file that
//! `raftkv restore` accepts: the same bytes as `GET /snapshot`, ending in etcd's sha256 trailer.
//! The restored node serves the keys to etcdctl with their revisions.

use std::process::Command;

use serde_json::Value;

use crate::etcdctl;
use crate::harness::{Cluster, StartOpts, argv, free_port};

fn at(c: &Cluster, i: usize) -> Vec<String> {
    vec![c.node(i).http_addr()]
}

#[test]
fn etcdctl_snapshot_save_makes_a_file_raftkv_restore_accepts() {
    if !crate::etcd_tools_or_skip("etcdctl_snapshot_save_makes_a_file_raftkv_restore_accepts") {
        return;
    }
    let mut c = Cluster::three_raftd("etcdctl-snapshot", "");
    let follower = c.followers(c.leader())[0];

    c.phase("etcdctl put three keys; snapshot save from a follower");
    for (k, v) in [("a", "1"), ("b", "2"), ("a", "3")] {
        let out = etcdctl::run(&at(&c, follower), &["put", k, v], None);
        assert_eq!(out.code, 0, "{out:?}");
    }
    let get_a = etcdctl::run(&at(&c, follower), &["get", "a", "-w", "json"], None);
    let before: Value = serde_json::from_str(&get_a.stdout).expect("json");
    let file = c.root().join("backup.db");
    let file_arg = file.display().to_string();
    let out = etcdctl::run(&at(&c, follower), &["snapshot", "save", &file_arg], None);
    assert_eq!(out.code, 0, "snapshot save: {out:?}");
    assert!(out.stdout.contains("Snapshot saved at"), "{out:?}");
    let bytes = std::fs::read(&file).expect("saved file");
    assert_eq!(&bytes[..8], b"RAFTKVBK", "a raftkv backup");

    c.phase("raftkv restore accepts it (sha256 trailer verified); the node serves the keys");
    let port = free_port();
    let data_dir = c.root().join(format!("n{}", c.len())).join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_raftkv"))
        .args([
            "restore",
            "--from",
            &file_arg,
            "-id",
            "r",
            "-p",
            &port.to_string(),
        ])
        .arg(&data_dir)
        .output()
        .expect("raftkv restore");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("sha256") && text.contains("verified") && text.contains("2 keys"),
        "{text}"
    );
    for i in 0..3 {
        c.kill9(i);
    }
    let opts = StartOpts {
        http_port: Some(port),
        keep_data_dir: true,
        ..StartOpts::default()
    };
    let r = c.start_with(opts, |p| argv(&format!("-p {} -id r", p.http)));
    c.wait_leader_is(r);
    let out = etcdctl::run(&at(&c, r), &["get", "a", "-w", "json"], None);
    assert_eq!(out.code, 0, "{out:?}");
    let after: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(
        after["kvs"], before["kvs"],
        "same value, versions and revisions"
    );
    assert_eq!(after["header"]["revision"], before["header"]["revision"]);
}

/// etcd's stream shape, checked with the `etcd-client` crate: blobs of at most 32 KiB with
/// `remaining_bytes` counting down to 0, then one 32-byte message with the sha256; the bytes are
/// those of `GET /snapshot` at the same state.
#[test]
fn maintenance_snapshot_streams_etcd_chunks_then_the_sha256() {
    let mut c = Cluster::new("grpc-snapshot");
    // No auto-compaction: nothing but the test changes the state between the two downloads.
    let a = c.start_raftd(None, "--auto-compaction-retention 0");
    c.wait_leader_is(a);
    let value = "v".repeat(1000);
    for i in 0..120 {
        c.put_db(a, &format!("k{i:03}"), &value).expect_status(200);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let messages = rt.block_on(async {
        let mut client = etcd_client::Client::connect([c.node(a).http_addr()], None)
            .await
            .expect("connect");
        let mut stream = client.snapshot().await.expect("snapshot");
        let mut messages = Vec::new();
        while let Some(m) = stream.message().await.expect("message") {
            messages.push((m.remaining_bytes(), m.blob().to_vec()));
        }
        messages
    });
    let (data, last) = messages.split_at(messages.len() - 1);
    assert!(data.len() >= 4, "{} data messages for ~130 KB", data.len());
    let mut sent = 0u64;
    let total: u64 = data.iter().map(|(_, b)| b.len() as u64).sum();
    for (remaining, blob) in data {
        assert!(
            !blob.is_empty() && blob.len() <= 32 * 1024,
            "{} bytes",
            blob.len()
        );
        sent += blob.len() as u64;
        assert_eq!(*remaining, total - sent, "remaining_bytes after {sent}");
    }
    assert_eq!(last[0].0, 0);
    assert_eq!(last[0].1.len(), 32, "the last message is the sha256");
    let mut streamed: Vec<u8> = data.iter().flat_map(|(_, b)| b.clone()).collect();
    streamed.extend_from_slice(&last[0].1);

    let r = c
        .client()
        .get(c.url(a, "/snapshot"))
        .send()
        .expect("GET /snapshot");
    assert_eq!(r.status().as_u16(), 200);
    let body = r.bytes().expect("body");
    assert_eq!(streamed, body.to_vec(), "the same bytes as GET /snapshot");
}
