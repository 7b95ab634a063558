use openraft::Membership;
use openraft::StoredMembership;
use openraft::impls::leader_id_adv::LeaderId;

use super::*;
use crate::raft::types::Command;
use crate::raft::types::Node;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(LeaderId { term, node_id: 1 }, index)
}

/// A store of `keys` keys (values of 0..97 bytes, every 10th overwritten and every 13th
/// deleted, so there is history) and its meta at (term 3, index `keys`).
fn sample(keys: u64) -> (SnapshotMeta, KvState) {
    let mut map = KvState::new();
    for i in 0..keys {
        let (key, value) = (format!("key-{i:05}"), vec![i as u8; (i % 97) as usize]);
        map.apply_owned(Command::Set { key, value });
        if i % 10 == 0 {
            let (key, value) = (format!("key-{:05}", i / 2), b"again".to_vec());
            map.apply_owned(Command::Set { key, value });
        }
        if i % 13 == 0 {
            let key = format!("key-{:05}", i / 3);
            map.apply_owned(Command::Delete { key });
        }
    }
    // Leases ride in the snapshot too: one holding keys, one holding none.
    map.apply_owned(Command::LeaseGrant { id: 5, ttl: 30 });
    map.apply_owned(Command::LeaseGrant { id: 9, ttl: 60 });
    for key in ["leased-a", "leased-b"] {
        map.apply_owned(Command::Put(crate::mvcc::PutRequest {
            key: bytes::Bytes::from_static(key.as_bytes()),
            value: bytes::Bytes::from_static(b"v"),
            lease: 5,
            ..Default::default()
        }));
    }
    assert_eq!(map.leases().keys(5).len(), 2);
    let members = Membership::<u64, Node>::new_with_defaults(vec![[1, 2, 3].into()], [4]);
    let last_membership = StoredMembership::new(Some(log_id(1, 1)), members);
    let last_log_id = Some(log_id(3, keys));
    (
        SnapshotMeta {
            last_log_id,
            last_membership,
        },
        map,
    )
}

fn names(dir: &Path) -> Vec<String> {
    let entries = fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name());
    let mut names: Vec<_> = entries.map(|n| n.to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn assert_corrupt(err: io::Error, file: &str, want: &str) {
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    let inner = CorruptSnapshot::inside(&err).unwrap_or_else(|| panic!("not corrupt: {err}"));
    let ok = inner.file.contains(file) && inner.detail.contains(want);
    assert!(ok, "{inner}");
}

#[test]
fn round_trip_thousands_of_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (meta, map) = sample(5000);
    let path = write_snapshot(dir.path(), &meta, &map).expect("write");
    assert!(path.ends_with("snapshot-3-5000.bin"), "{}", path.display());
    let (meta2, map2) = read_snapshot(&path).expect("read");
    assert_eq!((&meta2, &map2), (&meta, &map));
    assert_eq!(map2.digest(), map.digest());
    assert_eq!(find_latest(dir.path()).expect("find"), Some(path));
}

#[test]
fn every_truncation_and_every_flipped_byte_is_rejected() {
    let ((meta, map), mut good) = (sample(100), Vec::new());
    encode(&mut good, &meta, &map).expect("encode");
    assert!(decode(&good[..], "good").is_ok());
    for len in 0..good.len() {
        let err = decode(&good[..len], "mem").expect_err("truncated");
        assert_corrupt(err, "mem", "truncated");
    }
    for at in 0..good.len() {
        let mut bytes = good.clone();
        bytes[at] ^= 0x01;
        let err = decode(&bytes[..], "mem").expect_err("flipped byte accepted");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "byte {at}: {err}");
    }
    type Damage = fn(&mut Vec<u8>);
    let cases: [(&str, Damage); 4] = [
        ("checksum mismatch", |b| {
            let last = b.len() - 1;
            b[last] ^= 0x10
        }),
        ("bad magic", |b| b[0] = b'X'),
        ("version 9", |b| b[8] = 9),
        ("trailing bytes", |b| b.push(0)),
    ];
    for (want, damage) in cases {
        let mut bytes = good.clone();
        damage(&mut bytes);
        assert_corrupt(decode(&bytes[..], "mem").expect_err(want), "mem", want);
    }
}

#[test]
fn a_format_1_snapshot_is_refused_as_old_not_as_corrupt() {
    let mut old = MAGIC.to_vec();
    old.extend_from_slice(&1u32.to_le_bytes());
    old.extend_from_slice(&[0; 16]);
    let err = decode(&old[..], "snapshot-1-9.bin").expect_err("format 1");
    let inner = OldFormat::inside(&err).unwrap_or_else(|| panic!("not OldFormat: {err}"));
    assert_eq!(inner.version, 1);
    let text = err.to_string();
    assert!(
        text.contains("empty data dir") && text.contains("format 3"),
        "{text}"
    );
}

#[test]
fn damaged_files_are_rejected_with_the_file_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (meta, map) = sample(300);
    let path = write_snapshot(dir.path(), &meta, &map).expect("write");
    let good = fs::read(&path).expect("read");
    fs::write(&path, &good[..good.len() - 10]).expect("truncate");
    let err = read_snapshot(&path).expect_err("truncated");
    assert_corrupt(err, "snapshot-3-300.bin", "truncated");
    // A valid snapshot under another snapshot's name is refused too.
    let renamed = dir.path().join("snapshot-3-301.bin");
    fs::write(&renamed, &good).expect("write");
    let err = read_snapshot(&renamed).expect_err("misnamed");
    assert_corrupt(
        err,
        "snapshot-3-301.bin",
        "holds the snapshot of snapshot-3-300",
    );
}

#[test]
fn import_validates_before_publishing_and_latest_wins() {
    let src_dir = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let (meta, map) = sample(300);
    let src = write_snapshot(src_dir.path(), &meta, &map).expect("write");
    // Received the way the network does it: bytes copied into an incoming file.
    let mut file = incoming_file(dir.path()).expect("incoming");
    io::copy(&mut File::open(&src).expect("open"), &mut file).expect("copy");

    let mut wrong = meta.clone();
    wrong.last_log_id = Some(log_id(3, 299));
    let err = import_snapshot(dir.path(), &mut file, &wrong).expect_err("meta mismatch");
    assert_corrupt(err, "received snapshot", "expected");
    assert!(names(dir.path()).is_empty(), "nothing left behind");

    let (path, map2) = import_snapshot(dir.path(), &mut file, &meta).expect("import");
    assert_eq!(map2, map);
    assert_eq!(
        fs::read(&path).expect("read"),
        fs::read(&src).expect("read")
    );

    // Older snapshots, the empty one and temp leftovers go; foreign files stay.
    let (old_meta, old_map) = sample(10);
    write_snapshot(dir.path(), &old_meta, &old_map).expect("old");
    write_snapshot(dir.path(), &SnapshotMeta::default(), &KvState::new()).expect("empty");
    fs::write(dir.path().join("snapshot-9-9.bin.tmp"), b"partial").expect("tmp");
    fs::write(dir.path().join("notes.txt"), b"mine").expect("foreign");
    assert_eq!(find_latest(dir.path()).expect("find"), Some(path.clone()));
    assert_eq!(remove_others(dir.path(), Some(&path)).expect("prune"), 3);
    assert_eq!(names(dir.path()), ["notes.txt", "snapshot-3-300.bin"]);
}

/// Measurement (ignored by default): how long a node's restart spends reading its snapshot.
/// `cargo test --release --lib store::snapshot::tests::read_a_1m_key_snapshot -- --ignored --nocapture`
#[test]
#[ignore = "measurement: run alone with --ignored --nocapture"]
fn read_a_1m_key_snapshot() {
    let keys = 1_000_000u64;
    let mut map = KvState::new();
    for i in 0..keys {
        let (key, value) = (format!("key-{i:08}"), vec![b'v'; 100]);
        map.apply_owned(Command::Set { key, value });
    }
    let members = Membership::<u64, Node>::new_with_defaults(vec![[1, 2, 3].into()], []);
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(3, keys)),
        last_membership: StoredMembership::new(Some(log_id(1, 1)), members),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_snapshot(dir.path(), &meta, &map).expect("write");
    drop(map);
    for round in 1..=3 {
        let started = std::time::Instant::now();
        let (_, read) = read_snapshot(&path).expect("read");
        let ms = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(read.store().key_count(), keys as usize);
        eprintln!(
            "read_snapshot of {keys} keys: {ms:.0} ms ({:.2} µs a key), round {round}",
            ms * 1e3 / keys as f64
        );
    }
}
