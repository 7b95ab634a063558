//! Stories: backup and restore (README "Backup and restore"). A backup taken with
//! `GET /snapshot` from a loaded cluster holds every write acknowledged before it was asked for
//! (a linearizable read barrier, Raft thesis §6.4), `raftkv restore` turns it into a new one-node
//! cluster with the same keys and revisions, and fresh nodes join it as usual. Damaged files and
//! used data dirs are refused with messages that name the problem.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use reqwest::Method;
use reqwest::blocking::Client;
use sha2::{Digest, Sha256};

use crate::harness::{CONVERGE_TIMEOUT, Cluster, StartOpts, argv, free_port, wait_until};

/// Pause between the writer's writes: a steady load, not a flood.
const WRITE_EVERY: Duration = Duration::from_millis(5);
/// Writes acknowledged before the backup is asked for, and after it.
const ACKS_BEFORE: usize = 200;
const ACKS_AFTER: usize = 50;

/// key → (value, the write's `X-Raft-Revision`, which is the key's mod revision).
type Acked = Arc<Mutex<BTreeMap<String, (String, i64)>>>;

/// Writes unique keys `w/NNNNNN` round-robin to `bases` until `stop`, recording acknowledgements.
fn writer(bases: Vec<String>, stop: Arc<AtomicBool>, acked: Acked) {
    let http = Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let (key, value) = (format!("w/{n:06}"), format!("v{n}"));
        let base = &bases[n % bases.len()];
        n += 1;
        let sent = http
            .post(format!("{base}/db/{key}"))
            .body(value.clone())
            .send();
        if let Ok(r) = sent
            && r.status().is_success()
        {
            let revision = r
                .headers()
                .get("x-raft-revision")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .expect("a write answers X-Raft-Revision");
            acked.lock().expect("acked").insert(key, (value, revision));
        }
        thread::sleep(WRITE_EVERY); // pacing the load, not synchronisation
    }
}

/// `curl -D - -o <to> <node>/snapshot`: the response headers (lower-case names).
fn download(c: &Cluster, i: usize, to: &Path) -> BTreeMap<String, String> {
    download_at(c, i, "/snapshot", to)
}

/// `curl -D - -o <to> <node><path>`.
fn download_at(c: &Cluster, i: usize, path: &str, to: &Path) -> BTreeMap<String, String> {
    let mut r = c
        .client()
        .get(c.url(i, path))
        .timeout(Duration::from_secs(60))
        .send()
        .expect("GET /snapshot");
    assert_eq!(r.status().as_u16(), 200, "GET /snapshot answers 200");
    let headers = r
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect::<BTreeMap<_, _>>();
    let mut file = fs::File::create(to).expect("create backup file");
    r.copy_to(&mut file).expect("download the backup");
    headers
}

/// Checks what `GET /snapshot` promises: the length, and the sha256 in the header and in the
/// file's last 32 bytes.
fn check_download(path: &Path, headers: &BTreeMap<String, String>) -> Vec<u8> {
    let bytes = fs::read(path).expect("read backup");
    assert_eq!(
        headers.get("content-length").map(String::as_str),
        Some(bytes.len().to_string().as_str()),
        "Content-Length is the file's size"
    );
    assert_eq!(
        bytes.len() % 512,
        32,
        "etcd's shape: 512-byte blocks + sha256"
    );
    let (data, trailer) = bytes.split_at(bytes.len() - 32);
    let sha = hex(&Sha256::digest(data));
    assert_eq!(hex(trailer), sha, "the trailer is the sha256 of the data");
    assert_eq!(
        headers.get("x-raftkv-sha256"),
        Some(&sha),
        "and so is the header"
    );
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `raftkv restore <args>`; returns (exit success, stdout + stderr).
fn restore(args: &[String]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_raftkv"))
        .arg("restore")
        .args(args)
        .output()
        .expect("run raftkv restore");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "   raftkv restore {args:?} -> {}: {}",
        out.status,
        text.trim()
    );
    (out.status.success(), text)
}

fn restore_args(from: &Path, extra: &str, data_dir: &Path) -> Vec<String> {
    let mut args = vec!["--from".to_owned(), from.display().to_string()];
    args.extend(argv(extra));
    args.push(data_dir.display().to_string());
    args
}

/// Every key under `w/` on node `i` (linearizable listing): key → (value, mod revision).
fn list_all(c: &Cluster, i: usize) -> BTreeMap<String, (String, i64)> {
    let mut out = BTreeMap::new();
    let mut after = String::new();
    loop {
        let r = c.request(
            i,
            Method::GET,
            &format!("/db?prefix=w/&limit=1000&after={after}"),
            None,
        );
        r.expect_status(200);
        let page = r.json();
        for kv in page["kvs"].as_array().expect("kvs") {
            let key = kv["key"].as_str().expect("key").to_owned();
            let value = kv["value"].as_str().expect("value").to_owned();
            out.insert(
                key,
                (value, kv["mod_revision"].as_i64().expect("mod_revision")),
            );
        }
        match page["next"].as_str() {
            Some(next) if page["more"] == true => after = next.to_owned(),
            _ => return out,
        }
    }
}

/// Where the harness puts the data dir of the next node it starts.
fn next_data_dir(c: &Cluster) -> PathBuf {
    c.root().join(format!("n{}", c.len())).join("data")
}

#[test]
fn backup_under_load_restores_into_a_new_cluster() {
    let mut c = Cluster::three_raftd("backup", "");
    let old_cluster_id = c.status(0)["cluster_id"].clone();
    let bases: Vec<String> = (0..3).map(|i| c.url(i, "")).collect();
    let (stop, acked): (Arc<AtomicBool>, Acked) = Default::default();
    let count = |acked: &Acked| acked.lock().expect("acked").len();

    c.phase("a writer runs round-robin over the three nodes");
    let w = {
        let (bases, stop, acked) = (bases.clone(), stop.clone(), acked.clone());
        thread::spawn(move || writer(bases, stop, acked))
    };
    wait_until(CONVERGE_TIMEOUT, "the writer is acknowledged", || {
        count(&acked) >= ACKS_BEFORE
    });

    c.phase("GET /snapshot from a follower while the writer goes on");
    let follower = c.followers(c.leader())[0];
    let before = acked.lock().expect("acked").clone();
    let path = c.root().join("backup.snap");
    let headers = download(&c, follower, &path);
    let bytes = check_download(&path, &headers);
    let header = |name: &str| -> i64 {
        headers
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("header {name} in {headers:?}"))
    };
    let (revision, keys) = (header("x-raft-revision"), header("x-raftkv-keys"));
    eprintln!(
        "   backup: {} bytes, revision {revision}, {keys} keys, applied index {}, {} writes \
         acknowledged before it",
        bytes.len(),
        header("x-raft-index"),
        before.len()
    );
    let max_before = before.values().map(|(_, r)| *r).max().unwrap_or(0);
    assert!(
        revision >= max_before,
        "the backup's revision {revision} covers every acknowledged write (up to {max_before})"
    );
    let target = count(&acked) + ACKS_AFTER;
    wait_until(CONVERGE_TIMEOUT, "more writes after the backup", || {
        count(&acked) >= target
    });
    stop.store(true, Ordering::SeqCst);
    w.join().expect("writer");

    c.phase("2 of 3 old nodes die: a backup needs a quorum, unless ?level=stale");
    let survivor = follower;
    for i in (0..3).filter(|&i| i != survivor) {
        c.kill9(i);
    }
    c.request(survivor, Method::GET, "/snapshot", None)
        .expect_error(&[503], &["read_unavailable"]);
    let stale = c.root().join("stale.snap");
    let stale_headers = download_at(&c, survivor, "/snapshot?level=stale", &stale);
    check_download(&stale, &stale_headers);
    let (ok, out) = restore(&restore_args(&stale, "", &c.root().join("stale-restored")));
    assert!(ok, "a stale backup restores too: {out}");

    c.phase("the old cluster is gone; raftkv restore makes a new data dir from the file");
    c.kill9(survivor);
    let port = free_port();
    let data_dir = next_data_dir(&c);
    let (ok, out) = restore(&restore_args(
        &path,
        &format!("-id restored -p {port}"),
        &data_dir,
    ));
    assert!(ok, "restore succeeds: {out}");
    assert!(
        out.contains(&format!("{keys} keys, revision {revision}")),
        "{out}"
    );

    c.phase("start it: a one-node cluster of its own, with the backup's revision");
    let opts = StartOpts {
        http_port: Some(port),
        keep_data_dir: true,
        ..StartOpts::default()
    };
    let r = c.start_with(opts, |p| argv(&format!("-p {} -id restored", p.http)));
    c.wait_leader_is(r);
    let status = c.status(r);
    assert_ne!(status["cluster_id"], old_cluster_id, "a new cluster id");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(1));
    assert_eq!(status["revision"], revision, "{status}");
    assert_eq!(status["digest"]["keys"], keys, "exactly the backup's keys");

    c.phase("two fresh nodes join it with -join");
    c.start_raftd(Some(r), "");
    c.start_raftd(Some(r), "");
    c.wait_all_voters(3);
    let live = c.live();
    c.wait_digests_agree(&live, keys as u64);

    c.phase("every key acknowledged before the backup is on every node, with its mod revision");
    for &i in &live {
        let there = list_all(&c, i);
        assert_eq!(there.len() as i64, keys, "node {i} holds the backup's keys");
        let missing: Vec<_> = before
            .iter()
            .filter(|(k, v)| there.get(*k) != Some(v))
            .map(|(k, v)| (k, v, there.get(k)))
            .take(5)
            .collect();
        assert!(missing.is_empty(), "node {i} lacks or differs: {missing:?}");
    }
    for (key, (value, rev)) in before.iter().step_by(40) {
        for &i in &live {
            let got = c.get_db(i, key, crate::harness::Level::Linearizable);
            got.expect_body(value);
            assert_eq!(
                got.header("x-raft-revision"),
                Some(rev.to_string().as_str())
            );
        }
    }

    c.phase("the new cluster takes writes; revisions go on from the backup's");
    let w = c.put_db(live[1], "after-restore", "yes");
    w.expect_status(200);
    assert_eq!(
        w.header("x-raft-revision"),
        Some((revision + 1).to_string().as_str())
    );
    for &i in &live {
        c.wait_db_value(
            i,
            "after-restore",
            "yes",
            crate::harness::Level::Linearizable,
        );
    }
}

#[test]
fn damaged_backups_and_used_data_dirs_are_refused() {
    let mut c = Cluster::new("backup-refusals");
    c.phase("one node with a few keys; GET /snapshot");
    let a = c.start_raftd(None, "");
    c.wait_leader_is(a);
    for i in 0..20 {
        c.put_db(a, &format!("w/{i:06}"), &format!("v{i}"))
            .expect_status(200);
    }
    let good = c.root().join("good.snap");
    let headers = download(&c, a, &good);
    let bytes = check_download(&good, &headers);
    let empty_dir = |name: &str| c.root().join(name).join("data");

    c.phase("a truncated file is refused: exit code 1, says truncated, writes nothing");
    let cut = c.root().join("cut.snap");
    fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let (ok, out) = restore(&restore_args(&cut, "", &empty_dir("cut")));
    assert!(!ok && out.contains("is truncated"), "{out}");
    assert!(!empty_dir("cut").exists(), "nothing was written");

    c.phase("a flipped byte is refused: the sha256 does not match");
    let flipped = c.root().join("flipped.snap");
    let mut bad = bytes.clone();
    bad[bytes.len() / 3] ^= 0x10;
    fs::write(&flipped, &bad).expect("write");
    let (ok, out) = restore(&restore_args(&flipped, "", &empty_dir("flipped")));
    assert!(
        !ok && out.contains("is damaged") && out.contains("sha256"),
        "{out}"
    );

    c.phase("a file that is no backup is refused");
    let junk = c.root().join("junk.snap");
    fs::write(&junk, vec![b'x'; 4096]).expect("write");
    let (ok, out) = restore(&restore_args(&junk, "", &empty_dir("junk")));
    assert!(!ok && out.contains("not a raftkv backup"), "{out}");

    c.phase("a data dir in use is refused and left as it was");
    let used = c.node(a).data_dir.clone();
    let name = fs::read_to_string(used.join("node-name")).expect("node-name");
    let (ok, out) = restore(&restore_args(&good, "", &used));
    assert!(!ok && out.contains("is not empty"), "{out}");
    assert_eq!(
        fs::read_to_string(used.join("node-name")).expect("node-name"),
        name
    );
    c.get_db(a, "w/000001", crate::harness::Level::Linearizable)
        .expect_body("v1");

    c.phase("the good file restores into an empty directory");
    let fresh = empty_dir("fresh");
    fs::create_dir_all(&fresh).expect("mkdir");
    let (ok, out) = restore(&restore_args(&good, "-id fresh", &fresh));
    assert!(ok && out.contains("20 keys"), "{out}");
    let name = fs::read_to_string(fresh.join("node-name")).expect("node-name");
    assert_eq!(name.trim(), "fresh");
}
