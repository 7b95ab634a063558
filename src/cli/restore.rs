//! `raftkv restore --from FILE [--id NAME] [address flags] DATA_DIR`: the flags of the restore
//! subcommand → [`RestoreOptions`], and the command's run and report (`main.rs` calls [`run`]).
//!
//! The address flags are the node's (`-p`/`-h`, `-haddr`, `-raddr`, `-advertise-*`), resolved
//! the same way, because the restored membership records this node's advertised addresses:
//! start the node with the same flags afterwards.

use std::path::PathBuf;

use crate::backup::restore::RestoreOptions;
use crate::backup::restore::Restored;
use crate::cli::CliError;

/// Make a new data dir from a backup: a one-node cluster holding the backup's data (then join
/// other nodes to it with -join).
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
pub struct RestoreArgs {
    /// The backup file: from `GET /snapshot` or `etcdctl snapshot save` against raftkv.
    #[arg(long)]
    pub from: PathBuf,
    /// Name of the restored node; default: generated.
    #[arg(long)]
    pub id: Option<String>,
    #[command(flatten)]
    pub addr: crate::cli::addr::AddrArgs,
    /// The data dir to create: absent or empty.
    pub data_dir: PathBuf,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

impl RestoreArgs {
    /// The validated options: the advertised addresses resolved as `Args::into_config` does.
    pub fn into_options(self) -> Result<RestoreOptions, CliError> {
        let (http, raft) = self.addr.resolve()?;
        let api_addr = http.advertise;
        let raft_addr = raft.map(|r| r.advertise);
        if let Some(name) = &self.id
            && (name.is_empty() || name.len() > 128)
        {
            return Err(CliError::Invalid("-id must be 1 to 128 characters".into()));
        }
        Ok(RestoreOptions {
            from: self.from,
            data_dir: self.data_dir,
            name: self.id,
            raft_addr: raft_addr.unwrap_or_else(|| api_addr.clone()),
            api_addr,
        })
    }
}

/// Runs `raftkv restore` and prints what it did; `Err` is the message for stderr.
pub fn run(args: RestoreArgs) -> Result<String, String> {
    let opts = args.into_options().map_err(|e| e.to_string())?;
    let restored = crate::backup::restore::restore(&opts).map_err(|e| e.to_string())?;
    Ok(report(&opts, &restored))
}

fn report(opts: &RestoreOptions, r: &Restored) -> String {
    let check = match &r.sha256 {
        Some(sha) => format!("sha256 {sha} verified"),
        None => "a bare snapshot file: its crc32 verified (no sha256 trailer)".to_string(),
    };
    let index = r
        .source_index
        .map_or_else(|| "none".to_string(), |i| i.to_string());
    format!(
        "restored {} ({} bytes, {check}): {} keys, revision {}, compacted at {}, taken at \
         applied index {index} of the old cluster\n\
         data dir {}: node {} ({}), the only voter of new cluster {}, advertising api {} raft {}\n\
         start it with the same address flags, then join other nodes to it with -join",
        opts.from.display(),
        r.bytes,
        r.keys,
        r.revision,
        r.compact_revision,
        opts.data_dir.display(),
        r.node.name,
        r.node_id,
        r.cluster_id,
        r.node.api_addr,
        r.node.raft_addr,
    )
}
