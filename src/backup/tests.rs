//! The backup file format: round trip, etcd's size rule, and every kind of damage refused with
//! the error that names it (truncation at every block boundary and inside the trailer, flipped
//! bytes anywhere, trailing bytes, foreign files, unknown versions).

use std::io::Cursor;
use std::io::Read;

use openraft::Membership;
use openraft::StoredMembership;
use openraft::impls::leader_id_adv::LeaderId;

use super::*;
use crate::raft::types::Command;
use crate::raft::types::LogId;
use crate::raft::types::Node;

fn sample(keys: u64) -> (SnapshotMeta, KvState) {
    let mut kv = KvState::new();
    for i in 0..keys {
        let (key, value) = (format!("k{i:04}"), vec![b'v'; (i % 300) as usize]);
        kv.apply_owned(Command::Set { key, value });
        if i % 7 == 0 {
            kv.apply_owned(Command::Delete {
                key: format!("k{:04}", i / 2),
            });
        }
    }
    let log_id = LogId::new(
        LeaderId {
            term: 3,
            node_id: 1,
        },
        40 + keys,
    );
    let members = Membership::<u64, Node>::new_with_defaults(vec![[1, 2, 3].into()], []);
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), members),
    };
    (meta, kv)
}

fn backup_bytes(keys: u64) -> (Vec<u8>, SnapshotMeta, KvState) {
    let (meta, kv) = sample(keys);
    let file = tempfile::tempfile().expect("tempfile");
    let (mut file, bytes, sha) =
        write(file, |out| snapshot::encode(out, &meta, &kv)).expect("write");
    let mut out = Vec::new();
    file.read_to_end(&mut out).expect("read");
    assert_eq!(out.len() as u64, bytes);
    assert_eq!(
        &out[out.len() - 32..],
        &sha[..],
        "the trailer is the sha256"
    );
    (out, meta, kv)
}

fn verify_bytes(bytes: &[u8]) -> Result<Verified, BackupError> {
    verify(Cursor::new(bytes.to_vec()), "test.snap")
}

#[test]
fn round_trip_keeps_meta_keys_and_revisions() {
    for keys in [0, 1, 200] {
        let (bytes, meta, kv) = backup_bytes(keys);
        // etcdctl's `snapshot save` check: a sha256 after a multiple of 512 bytes.
        assert_eq!(bytes.len() % 512, 32, "{keys} keys");
        assert_eq!(&bytes[..8], b"RAFTKVBK");
        let v = verify_bytes(&bytes).expect("valid");
        assert_eq!(v.meta, meta);
        assert_eq!(v.kv, kv);
        assert_eq!(v.kv.revision(), kv.revision());
        assert!(v.sha256.is_some());
    }
}

#[test]
fn a_bare_snapshot_file_is_accepted_by_its_crc32() {
    let (meta, kv) = sample(50);
    let mut bare = Vec::new();
    snapshot::encode(&mut bare, &meta, &kv).expect("encode");
    let v = verify_bytes(&bare).expect("bare snapshot");
    assert!(v.sha256.is_none());
    assert_eq!(v.kv, kv);
    bare.truncate(bare.len() - 1);
    let e = verify_bytes(&bare).expect_err("truncated bare snapshot");
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn every_truncation_is_refused_as_truncated() {
    let (bytes, _, _) = backup_bytes(120);
    let mut cuts: Vec<usize> = (0..bytes.len()).step_by(97).collect();
    cuts.extend([8, 19, 20, bytes.len() - 32, bytes.len() - 1]);
    for cut in cuts {
        let e = verify_bytes(&bytes[..cut]).expect_err("truncated");
        let ok = match &e {
            BackupError::Truncated { found, .. } => *found == cut as u64,
            BackupError::NotABackup { .. } => cut < 8,
            _ => false,
        };
        assert!(ok, "cut at {cut}: {e}");
        if cut >= 20 {
            assert!(e.to_string().contains("is truncated"), "{e}");
        }
    }
}

#[test]
fn every_flipped_byte_is_refused() {
    let (bytes, _, _) = backup_bytes(60);
    for at in (0..bytes.len()).step_by(13).chain([bytes.len() - 1]) {
        let mut bad = bytes.clone();
        bad[at] ^= 0x20;
        let e = verify_bytes(&bad).expect_err("flipped");
        let named = match &e {
            BackupError::Checksum { .. } => at >= 20,
            BackupError::NotABackup { .. } => at < 8,
            BackupError::Version { .. } => (8..12).contains(&at),
            // A damaged length: the size no longer matches (or is over the limit).
            BackupError::Truncated { .. }
            | BackupError::TrailingBytes { .. }
            | BackupError::Corrupt { .. } => (12..20).contains(&at),
            BackupError::Io { .. } => false,
        };
        assert!(named, "flip at {at}: {e}");
    }
    let mut bad = bytes.clone();
    bad[bytes.len() / 2] ^= 1;
    let e = verify_bytes(&bad).expect_err("flipped").to_string();
    assert!(e.contains("is damaged") && e.contains("sha256"), "{e}");
}

#[test]
fn trailing_bytes_foreign_files_and_versions_are_named() {
    let (bytes, _, _) = backup_bytes(10);
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"x");
    let e = verify_bytes(&longer).expect_err("longer");
    assert!(matches!(e, BackupError::TrailingBytes { .. }), "{e}");

    let e = verify_bytes(b"").expect_err("empty");
    assert!(e.to_string().contains("empty"), "{e}");
    let e = verify_bytes(&[0u8; 4096]).expect_err("foreign");
    assert!(e.to_string().contains("not a raftkv backup"), "{e}");

    let mut v2 = bytes.clone();
    v2[8] = 2;
    let e = verify_bytes(&v2).expect_err("version 2");
    assert!(matches!(e, BackupError::Version { found: 2, .. }), "{e}");
}

#[test]
fn damage_inside_a_rehashed_file_is_still_caught_by_the_snapshot_checks() {
    // Someone "fixes" the sha256 after damaging the payload: the crc32 inside still refuses it.
    let (mut bytes, _, _) = backup_bytes(30);
    bytes[40] ^= 0xff;
    let data = bytes.len() - 32;
    let sha: [u8; 32] = Sha256::digest(&bytes[..data]).into();
    bytes[data..].copy_from_slice(&sha);
    let e = verify_bytes(&bytes).expect_err("payload damage");
    assert!(matches!(e, BackupError::Corrupt { .. }), "{e}");
}

#[test]
fn restore_writes_a_new_one_node_data_dir_and_refuses_a_used_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (bytes, _, kv) = backup_bytes(80);
    let from = tmp.path().join("b.snap");
    std::fs::write(&from, &bytes).expect("write backup");
    let opts = restore::RestoreOptions {
        from: from.clone(),
        data_dir: tmp.path().join("new").join("d"),
        name: Some("r1".into()),
        api_addr: "localhost:4001".into(),
        raft_addr: "localhost:4001".into(),
    };
    let done = restore::restore(&opts).expect("restore");
    assert_eq!((done.keys, done.revision), (kv.len(), kv.revision()));
    assert_eq!(done.node.name, "r1");
    let dir = &opts.data_dir;
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect(name);
    assert_eq!(read("node-name"), "r1");
    assert_eq!(read("format"), crate::node::DATA_FORMAT);
    assert_eq!(read("cluster-id"), done.cluster_id);
    let sm = crate::store::state_machine::StateMachineStore::open(&dir.join("snapshots"))
        .expect("the restored snapshot loads");
    let (meta, restored) = sm.copy_state();
    assert_eq!(restored, kv, "the same keys, revisions and history");
    assert_eq!(meta.last_log_id.map(|id| id.index), Some(0));
    let voters: Vec<u64> = meta.last_membership.membership().voter_ids().collect();
    assert_eq!(voters, vec![done.node_id], "this node is the only voter");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("new"))
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("restore"))
        .collect();
    assert!(leftovers.is_empty(), "no temp dir left: {leftovers:?}");

    let e = restore::restore(&opts)
        .expect_err("used data dir")
        .to_string();
    assert!(e.contains("is not empty") && e.contains("node-name"), "{e}");

    // An empty directory is fine; a damaged file leaves it untouched and empty.
    let empty = tmp.path().join("e");
    std::fs::create_dir(&empty).expect("mkdir");
    let mut bad = bytes.clone();
    bad[100] ^= 1;
    std::fs::write(&from, &bad).expect("write damaged");
    let opts = restore::RestoreOptions {
        data_dir: empty.clone(),
        ..opts
    };
    let e = restore::restore(&opts).expect_err("damaged").to_string();
    assert!(e.contains("sha256"), "{e}");
    assert_eq!(std::fs::read_dir(&empty).expect("ls").count(), 0);
    std::fs::write(&from, &bytes).expect("write good");
    restore::restore(&opts).expect("restore into an empty dir");
}
