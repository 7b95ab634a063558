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
use crate::config;

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
    /// HTTP port the node will listen on (as the node's -p).
    #[arg(short = 'p', long, default_value_t = config::DEFAULT_PORT)]
    pub port: u16,
    /// Host name the node will advertise (as the node's -h).
    #[arg(short = 'h', long, default_value = "localhost")]
    pub host: String,
    /// HTTP address (as the node's -haddr).
    #[arg(long)]
    pub haddr: Option<String>,
    /// Separate Raft address (as the node's -raddr).
    #[arg(long)]
    pub raddr: Option<String>,
    /// As the node's -advertise-haddr.
    #[arg(long)]
    pub advertise_haddr: Option<String>,
    /// As the node's -advertise-raddr.
    #[arg(long)]
    pub advertise_raddr: Option<String>,
    /// The data dir to create: absent or empty.
    pub data_dir: PathBuf,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

impl RestoreArgs {
    /// The validated options: the advertised addresses resolved as `Args::into_config` does.
    pub fn into_options(self) -> Result<RestoreOptions, CliError> {
        let endpoint = |flag: &'static str, value: &str| {
            config::parse_endpoint(value).map_err(|source| CliError::Addr { flag, source })
        };
        let peer = |flag: &'static str, value: &str| {
            config::normalize_peer_addr(value).map_err(|source| CliError::Addr { flag, source })
        };
        let mut api_addr = match &self.haddr {
            Some(a) => endpoint("-haddr", a)?.advertise,
            None => format!("{}:{}", self.host, self.port),
        };
        if let Some(a) = &self.advertise_haddr {
            api_addr = peer("-advertise-haddr", a)?;
        }
        let mut raft_addr = match &self.raddr {
            Some(a) => Some(endpoint("-raddr", a)?.advertise),
            None => None,
        };
        if let Some(a) = &self.advertise_raddr {
            if raft_addr.is_none() {
                return Err(CliError::Invalid("-advertise-raddr needs -raddr".into()));
            }
            raft_addr = Some(peer("-advertise-raddr", a)?);
        }
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
