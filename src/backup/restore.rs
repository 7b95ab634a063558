//! `raftkv restore`: makes a data dir from a backup that starts as a new one-node cluster
//! holding exactly the backup's keys, revisions and history (like `etcdctl snapshot restore`).
//!
//! Owns: the restored data dir's contents. Does not own: validating the file ([`super::verify`]),
//! the flags (`cli/restore.rs`), what the node does with the data dir when it starts
//! (`node.rs`, `cluster::bootstrap`: an initialised dir is "restarted from the data dir").
//!
//! What is written: `format`, `node-name`, a new `cluster-id`, and `snapshots/` with one
//! snapshot of the backup's store whose Raft meta is that of a freshly initialised cluster: log
//! id (term 0, this node, index 0) and a membership of this node alone, as `initialize` would
//! write it. No `raft-log/`: on start openraft finds the state machine ahead of the empty log and
//! purges the log up to the snapshot, so this node's first election is term 1 and joiners get
//! the data by snapshot. The backup's own log ids and membership are dropped (they belong to the
//! old cluster); its revisions are kept (they are the data).
//!
//! Invariant: the data dir appears complete or not at all. Everything is written into a temp
//! dir beside it, each file fsynced, the temp dir fsynced, then renamed onto DATA_DIR (an absent
//! or empty dir) and the parent fsynced before success is reported.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fs;
use std::fs::File;
use std::io;
use std::path::Path;
use std::path::PathBuf;

use openraft::Membership;
use openraft::impls::leader_id_adv::LeaderId;

use crate::backup::BackupError;
use crate::peer::identity::Identity;
use crate::raft::types::LogId;
use crate::raft::types::Node;
use crate::raft::types::NodeId;
use crate::raft::types::SnapshotMeta;
use crate::raft::types::StoredMembership;
use crate::raft::types::node_id_from_name;
use crate::store::error::StoreError;
use crate::store::small_file;
use crate::store::snapshot;

/// Entries of a non-empty DATA_DIR named in the refusal.
const ENTRIES_SHOWN_MAX: usize = 5;

/// What to restore where, as the node will be started.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub from: PathBuf,
    pub data_dir: PathBuf,
    /// The node's name (`--id`); default: generated like a first start's.
    pub name: Option<String>,
    /// The addresses the node will advertise (the same flags must be given when it starts).
    pub api_addr: String,
    pub raft_addr: String,
}

/// What was restored.
#[derive(Debug, Clone)]
pub struct Restored {
    pub node: Node,
    pub node_id: NodeId,
    pub cluster_id: String,
    pub keys: usize,
    pub revision: i64,
    pub compact_revision: i64,
    /// The applied index of the backed-up node (in the old cluster's log).
    pub source_index: Option<u64>,
    /// The verified sha256 trailer, `None` for a bare snapshot file.
    pub sha256: Option<String>,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(
        "data dir {dir} is not empty (it holds {entries}); restore into a new or empty \
         directory: nothing was changed"
    )]
    NotEmpty { dir: String, entries: String },
    #[error("data dir {0} exists and is not a directory")]
    NotADirectory(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Validates the backup, then writes the new data dir (see the module docs).
pub fn restore(opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    check_empty(&opts.data_dir)?;
    let label = opts.from.display().to_string();
    let file = File::open(&opts.from).map_err(|source| BackupError::Io {
        file: label.clone(),
        source,
    })?;
    let verified = super::verify(file, &label)?;
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| format!("node-{}", &small_file::random_hex(1)[..8]));
    let node_id = node_id_from_name(&name);
    let node = Node {
        name,
        api_addr: opts.api_addr.clone(),
        raft_addr: opts.raft_addr.clone(),
    };
    let log_id = LogId::new(LeaderId { term: 0, node_id }, 0);
    let members = BTreeMap::from([(node_id, node.clone())]);
    let membership = Membership::new(vec![BTreeSet::from([node_id])], members).map_err(|e| {
        RestoreError::Io {
            path: opts.data_dir.clone(),
            source: io::Error::other(e.to_string()),
        }
    })?;
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), membership),
    };

    let parent = parent_of(&opts.data_dir);
    create_dirs_durably(&parent).map_err(io_at(&parent))?;
    let tmp = parent.join(format!(
        ".{}.restore-{}",
        opts.data_dir
            .file_name()
            .map_or_else(|| "data".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    fs::create_dir(&tmp).map_err(io_at(&tmp))?;
    let written = write_dir(&tmp, &node, node_id, &meta, &verified.kv);
    let cluster_id = match written {
        Ok(id) => id,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp); // best effort: nothing under DATA_DIR yet
            return Err(e);
        }
    };
    // Must come after every file and the temp dir are fsynced: the rename publishes them whole.
    // rename(2) replaces an empty directory, so an empty DATA_DIR (checked above) is fine.
    if let Err(source) = fs::rename(&tmp, &opts.data_dir) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(RestoreError::Io {
            path: opts.data_dir.clone(),
            source,
        });
    }
    // Must be fsynced before success is reported: the rename lives in the parent directory.
    snapshot::sync_dir(&parent).map_err(io_at(&parent))?;
    let store = verified.kv.store();
    Ok(Restored {
        node,
        node_id,
        cluster_id,
        keys: verified.kv.len(),
        revision: verified.kv.revision(),
        compact_revision: store.compact_revision(),
        source_index: verified.meta.last_log_id.map(|id| id.index),
        sha256: verified.sha256.map(|s| super::hex(&s)),
        bytes: verified.bytes,
    })
}

/// Writes the data dir's files into `dir`, each durably; returns the new cluster id.
fn write_dir(
    dir: &Path,
    node: &Node,
    node_id: NodeId,
    meta: &SnapshotMeta,
    kv: &crate::store::kv::KvState,
) -> Result<String, RestoreError> {
    small_file::write(dir, crate::node::DATA_FORMAT_FILE, crate::node::DATA_FORMAT)?;
    small_file::write(dir, crate::node::NODE_NAME_FILE, &node.name)?;
    let cluster_id = Identity::open(dir, node_id, node.name.clone())?.create_cluster_id()?;
    let snapshots = dir.join("snapshots");
    fs::create_dir(&snapshots).map_err(io_at(&snapshots))?;
    // Must be fsynced before the snapshot is written into it: its entry lives in `dir`.
    snapshot::sync_dir(dir).map_err(io_at(dir))?;
    // Fsyncs the file and `snapshots/` (store/snapshot.rs, steps 1-4).
    snapshot::write_snapshot(&snapshots, meta, kv).map_err(io_at(&snapshots))?;
    Ok(cluster_id)
}

/// Refuses a DATA_DIR that exists and is not an empty directory.
fn check_empty(dir: &Path) -> Result<(), RestoreError> {
    let label = dir.display().to_string();
    match fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(RestoreError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
        Ok(m) if !m.is_dir() => return Err(RestoreError::NotADirectory(label)),
        Ok(_) => {}
    }
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(io_at(dir))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    let more = names.len().saturating_sub(ENTRIES_SHOWN_MAX);
    names.truncate(ENTRIES_SHOWN_MAX);
    let mut entries = names.join(", ");
    if more > 0 {
        entries.push_str(&format!(" and {more} more"));
    }
    Err(RestoreError::NotEmpty {
        dir: label,
        entries,
    })
}

/// `mkdir -p dir`, fsyncing the parent of every directory it creates (each entry must be on
/// disk before anything written inside it is reported durable).
fn create_dirs_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = parent_of(dir);
    if parent != dir {
        create_dirs_durably(&parent)?;
    }
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    snapshot::sync_dir(&parent)
}

/// The directory holding `dir` (`.` for a bare relative name).
fn parent_of(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
