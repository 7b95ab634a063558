//! Story: damage on disk after a crash. A torn (partly written) record at the end of the Raft log
//! is dropped on restart and every acknowledged write is still served; a damaged record in the
//! middle of the log stops the node at startup with an error naming the file, and nothing is
//! served from a log that cannot be trusted.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Cluster, Level, argv};

const KEYS: usize = 30;

fn wal_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(data_dir.join("raft-log"))
        .expect("read raft-log dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

/// Runs the binary on `data_dir` and returns (exit success, stderr) once it exits by itself.
fn run_until_exit(data_dir: &Path, port: u16) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_raftkv"))
        .args(argv(&format!("-haddr 127.0.0.1:{port}")))
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn raftkv");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut stderr = String::new();
            if let Some(mut s) = child.stderr.take() {
                std::io::Read::read_to_string(&mut s, &mut stderr).expect("read stderr");
            }
            return (status.success(), stderr);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("raftkv kept running on a corrupt log instead of refusing to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn torn_tail_is_repaired_and_corruption_refuses_to_start() {
    let mut c = Cluster::new("crash_safety");

    c.phase("one node, 30 acknowledged writes, then kill -9");
    let a = c.start(|p| argv(&format!("-haddr 127.0.0.1:{}", p.http)));
    c.wait_leader_is(a);
    for i in 0..KEYS {
        c.put_db(a, &format!("k{i}"), &format!("v{i}"))
            .expect_status(200);
    }
    c.kill9(a);
    let data_dir = c.node(a).data_dir.clone();
    let last_wal = wal_files(&data_dir).pop().expect("a WAL file");

    c.phase("a torn record at the end of the log (crash mid-write): restart, all keys served");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&last_wal)
        .expect("open WAL");
    f.write_all(&[0u8; 13]).expect("append torn bytes");
    f.sync_all().expect("sync");
    drop(f);
    c.restart(a);
    c.wait_leader_is(a);
    for i in 0..KEYS {
        c.get_db(a, &format!("k{i}"), Level::Linearizable)
            .expect_body(&format!("v{i}"));
    }
    c.put_db(a, "after_repair", "ok").expect_status(200);
    c.kill9(a);

    c.phase("a flipped byte in the middle of the log: startup refuses, naming the file");
    let wal = wal_files(&data_dir).pop().expect("a WAL file");
    let mut bytes = fs::read(&wal).expect("read WAL");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    fs::write(&wal, &bytes).expect("write damaged WAL");
    let port = c.node(a).ports.http;
    let (ok, stderr) = run_until_exit(&data_dir, port);
    assert!(
        !ok,
        "raftkv must exit with an error on a corrupt log; stderr:\n{stderr}"
    );
    let file_name = wal
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        stderr.contains(&file_name) && stderr.to_lowercase().contains("corrupt"),
        "the error must name the damaged file {file_name}; stderr:\n{stderr}"
    );

    c.phase("the operator restores the byte: the node starts and serves everything");
    bytes[middle] ^= 0x5a;
    fs::write(&wal, &bytes).expect("restore WAL");
    c.restart(a);
    c.wait_leader_is(a);
    c.get_db(a, "after_repair", Level::Linearizable)
        .expect_body("ok");
    c.get_db(a, &format!("k{}", KEYS - 1), Level::Linearizable)
        .expect_body(&format!("v{}", KEYS - 1));
}

#[test]
fn a_data_dir_of_another_format_is_refused_untouched() {
    let mut c = Cluster::new("data_format");
    c.phase("a node records its data format (2) in DATA_DIR/format");
    let a = c.start(|p| argv(&format!("-haddr 127.0.0.1:{}", p.http)));
    c.wait_leader_is(a);
    c.put_db(a, "k", "v").expect_status(200);
    c.kill9(a);
    let data_dir = c.node(a).data_dir.clone();
    let format = data_dir.join("format");
    assert_eq!(
        fs::read_to_string(&format).expect("format file").trim(),
        "2"
    );

    c.phase("a data dir claiming format 9 is refused at start, naming both formats");
    fs::write(&format, "9\n").expect("write format");
    let log_before = wal_files(&data_dir);
    let (ok, stderr) = run_until_exit(&data_dir, c.node(a).ports.http);
    assert!(!ok, "must refuse; stderr:\n{stderr}");
    assert!(
        stderr.contains("data format \"9\"") && stderr.contains("format 2"),
        "{stderr}"
    );
    assert_eq!(wal_files(&data_dir), log_before, "nothing was changed");

    c.phase("format 2 again: the node starts and serves its data");
    fs::write(&format, "2\n").expect("write format");
    c.restart(a);
    c.wait_leader_is(a);
    c.get_db(a, "k", Level::Linearizable).expect_body("v");
}
