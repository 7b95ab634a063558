//! Command-line flags → validated [`Config`]. Accepts the seeds' Go-style single-dash long flags
//! (`-join`, `-haddr`, `-raddr`, `-id`, `-debug`, `-trace`) besides the usual `--join` spelling.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config;
use crate::config::Config;
use crate::limits::VALUE_BYTES_MAX_CEILING;

pub mod addr;
pub mod restore;
mod tls;
pub use restore::RestoreArgs;
pub use tls::TlsArgs;

/// Long flags that Go programs spell with one dash.
const GO_STYLE_FLAGS: &[&str] = &[
    "join",
    "haddr",
    "raddr",
    "id",
    "debug",
    "trace",
    "port",
    "host",
    "snapshot-every",
    "max-value-bytes",
    "timeout-ms",
    "flush-wait-us",
    "heartbeat-ms",
    "source-ip",
    "advertise-haddr",
    "advertise-raddr",
    "join-timeout-ms",
    "max-connections",
    "insecure-peers",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "peer-cert-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "cert-file",
    "key-file",
    "trusted-ca-file",
    "client-cert-auth",
    "from",
];

/// Largest `--write-gather-ms`.
const WRITE_GATHER_MS_MAX: u64 = 100;

#[derive(Parser, Debug)]
#[command(
    name = "raftkv",
    version,
    about = "A replicated key/value database on Raft (a successor of raftd and hraftd)",
    disable_help_flag = true,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true,
    subcommand_negates_reqs = true
)]
pub struct Args {
    /// Directory holding this node's Raft log, snapshots and identity.
    #[arg(required = true)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub addr: addr::AddrArgs,
    /// Node name; default: generated on first start and kept in DATA_DIR.
    #[arg(long)]
    pub id: Option<String>,
    /// HTTP address of any member to join (only used when DATA_DIR holds no cluster state).
    #[arg(long)]
    pub join: Option<String>,
    /// Verbose logging (info for raftkv, warnings for the Raft library).
    #[arg(short = 'v')]
    pub verbose: bool,
    /// Debug-level logging.
    #[arg(long)]
    pub debug: bool,
    /// Trace-level logging.
    #[arg(long)]
    pub trace: bool,
    /// Build a snapshot (and compact the log) every N applied entries or writes (store
    /// revisions), whichever comes first.
    #[arg(long, default_value_t = config::DEFAULT_SNAPSHOT_EVERY)]
    pub snapshot_every: u64,
    /// Largest accepted value in bytes (413 above it); at most 33554432 (32 MiB).
    #[arg(long, default_value_t = config::DEFAULT_MAX_VALUE_BYTES)]
    pub max_value_bytes: usize,
    /// How long a write or linearizable read may wait for the cluster before answering 503.
    #[arg(long, default_value_t = config::DEFAULT_TIMEOUT_MS)]
    pub timeout_ms: u64,
    /// Microseconds the log waits to gather more writes into one fsync. 0: no wait; writes that
    /// arrive during one fsync share the next.
    #[arg(long, default_value_t = 0)]
    pub flush_wait_us: u64,
    /// Propose each client write as a log entry of its own, instead of putting the writes that
    /// arrive while one is being committed in one entry (which the leader does only once every
    /// member has said it reads such entries).
    #[arg(long)]
    pub no_write_batching: bool,
    /// Milliseconds the leader may hold the next batch, after answering writes from 8 or more
    /// client connections, for those connections' next writes (closed-loop clients write again
    /// at once), so they share one entry instead of splitting into two groups that take turns;
    /// a follower holds the next batch it forwards to the leader the same way.
    /// Holds that run out pause holding (clients that pause between writes, or open a
    /// connection per request, are not held for often). 0: never hold.
    #[arg(long, default_value_t = 5)]
    pub write_gather_ms: u64,
    /// Raft heartbeat interval in ms; election timeout is 5–10 heartbeats.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Local IP address to dial peers from (e.g. 127.0.0.12, so a test proxy can tell nodes apart).
    #[arg(long)]
    pub source_ip: Option<std::net::IpAddr>,
    /// Connections each listener serves at once (clients and peers alike); more are closed on
    /// accept, with a warning in the log. At most 65536.
    #[arg(long, default_value_t = config::DEFAULT_CONNECTIONS_MAX)]
    pub max_connections: usize,
    /// Bound in ms on a whole join: handshake, learner catch-up, promotion.
    #[arg(long, default_value_t = config::DEFAULT_JOIN_TIMEOUT_MS)]
    pub join_timeout_ms: u64,
    /// Serve the internal and membership routes to any address without peer TLS (default:
    /// loopback callers only). Only on a network where every host is trusted.
    #[arg(long)]
    pub insecure_peers: bool,
    /// Automatic compaction of old revisions: `revision` (keep the last N revisions) or
    /// `periodic` (keep the revisions of the last hour, say), as etcd's flag.
    #[arg(long, default_value = "revision")]
    pub auto_compaction_mode: String,
    /// What auto-compaction keeps: revisions (revision mode, default 10000) or a duration
    /// (periodic mode: `1h`, `30m`, a bare number of hours; default 1h). 0 turns it off.
    #[arg(long)]
    pub auto_compaction_retention: Option<String>,
    /// How often a watch created with progress_notify hears the current revision when nothing
    /// changed (etcd's flag and default): a duration like `10m`, `5s` or `500ms`.
    #[arg(long, default_value = "10m")]
    pub experimental_watch_progress_notify_interval: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    #[command(subcommand)]
    pub command: Option<Subcommand>,
}

/// `raftkv <subcommand>`; without one, `raftkv [flags] DATA_DIR` runs a node.
#[derive(clap::Subcommand, Debug)]
pub enum Subcommand {
    /// Make a new data dir from a backup (GET /snapshot, etcdctl snapshot save): a one-node
    /// cluster holding the backup's data; then join other nodes to it with -join.
    Restore(RestoreArgs),
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error("invalid {flag}: {source}")]
    Addr {
        flag: &'static str,
        source: config::AddrError,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Rewrites `-join x` / `-join=x` into `--join x` / `--join=x` so clap accepts Go-style flags.
pub fn normalize_go_flags<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    args.into_iter()
        .map(|arg| {
            let Some(s) = arg.to_str() else { return arg };
            let Some(rest) = s.strip_prefix('-') else {
                return arg;
            };
            if rest.starts_with('-') {
                return arg;
            }
            let name = rest.split('=').next().unwrap_or(rest);
            if GO_STYLE_FLAGS.contains(&name) {
                OsString::from(format!("-{s}"))
            } else {
                arg
            }
        })
        .collect()
}

/// Log filter for the verbosity flags; `RUST_LOG` (handled by the caller) wins over it.
pub fn log_filter(args: &Args) -> &'static str {
    if args.trace {
        "trace"
    } else if args.debug {
        "raftkv=debug,openraft=info,info"
    } else if args.verbose {
        "raftkv=info,openraft=warn,warn"
    } else {
        "raftkv=info,openraft=error,warn"
    }
}

impl Args {
    pub fn parse_from_env() -> Result<Args, CliError> {
        Ok(Args::try_parse_from(normalize_go_flags(
            std::env::args_os(),
        ))?)
    }

    pub fn into_config(self) -> Result<Config, CliError> {
        let (http, raft) = self.addr.resolve()?;
        let join = self
            .join
            .as_deref()
            .map(|j| addr::peer_addr("-join", j))
            .transpose()?;
        if let Some(name) = &self.id
            && (name.is_empty() || name.len() > 128)
        {
            return Err(CliError::Invalid("-id must be 1 to 128 characters".into()));
        }
        if self.snapshot_every == 0
            || self.max_value_bytes == 0
            || self.timeout_ms == 0
            || self.heartbeat_ms == 0
            || self.join_timeout_ms == 0
            || self.max_connections == 0
        {
            return Err(CliError::Invalid(
                "--snapshot-every, --max-value-bytes, --timeout-ms, --heartbeat-ms, --join-timeout-ms and --max-connections must be positive".into(),
            ));
        }
        let (peer_tls, client_tls) = self.tls.files(raft.is_none())?;
        if peer_tls.is_some() && self.insecure_peers {
            return Err(CliError::Invalid(
                "--insecure-peers and peer TLS (--peer-cert-file ...) exclude each other: with \
                 peer TLS only nodes holding a peer certificate may use the internal routes"
                    .into(),
            ));
        }
        if self.max_value_bytes > VALUE_BYTES_MAX_CEILING {
            return Err(CliError::Invalid(format!(
                "--max-value-bytes {} is over the maximum of {VALUE_BYTES_MAX_CEILING} (32 MiB): \
                 one log entry must fit one replication request and the snapshot format",
                self.max_value_bytes
            )));
        }
        if self.write_gather_ms > WRITE_GATHER_MS_MAX {
            return Err(CliError::Invalid(format!(
                "--write-gather-ms {} is over the maximum of {WRITE_GATHER_MS_MAX}: a batch held \
                 that long would be a stall, not a gathering",
                self.write_gather_ms
            )));
        }
        if self.max_connections > config::CONNECTIONS_MAX_CEILING {
            return Err(CliError::Invalid(format!(
                "--max-connections {} is over the maximum of {}",
                self.max_connections,
                config::CONNECTIONS_MAX_CEILING
            )));
        }
        let auto_compaction = crate::compaction::AutoCompaction::parse(
            &self.auto_compaction_mode,
            self.auto_compaction_retention.as_deref(),
        )
        .map_err(CliError::Invalid)?;
        let watch_progress_interval = crate::compaction::parse_duration(
            "--experimental-watch-progress-notify-interval",
            &self.experimental_watch_progress_notify_interval,
        )
        .and_then(|d| {
            if d.is_zero() {
                Err("--experimental-watch-progress-notify-interval must be above 0".into())
            } else {
                Ok(d)
            }
        })
        .map_err(CliError::Invalid)?;
        let Some(data_dir) = self.data_dir else {
            return Err(CliError::Invalid("DATA_DIR is required".into()));
        };
        Ok(Config {
            auto_compaction,
            watch_progress_interval,
            data_dir,
            http,
            raft,
            node_name: self.id,
            join,
            snapshot_every: self.snapshot_every,
            max_value_bytes: self.max_value_bytes,
            request_timeout: Duration::from_millis(self.timeout_ms),
            flush_batch_wait: Duration::from_micros(self.flush_wait_us),
            write_batching: !self.no_write_batching,
            write_gather: Duration::from_millis(self.write_gather_ms),
            heartbeat_interval: Duration::from_millis(self.heartbeat_ms),
            source_ip: self.source_ip,
            join_timeout: Duration::from_millis(self.join_timeout_ms),
            connections_max: self.max_connections,
            insecure_peers: self.insecure_peers,
            peer_tls,
            client_tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let argv = normalize_go_flags(args.iter().map(OsString::from));
        Args::try_parse_from(argv).unwrap().into_config().unwrap()
    }

    #[test]
    fn raftd_readme_commands() {
        let c = parse(&["raftkv", "-p", "4002", "-join", "localhost:4001", "/tmp/n2"]);
        assert_eq!(c.http.bind, "0.0.0.0:4002");
        assert_eq!(c.http.advertise, "localhost:4002");
        assert_eq!(c.join.as_deref(), Some("localhost:4001"));
        assert_eq!(c.data_dir, PathBuf::from("/tmp/n2"));
        assert!(c.raft.is_none());
        assert_eq!(c.raft_advertise(), "localhost:4002");
    }

    #[test]
    fn hraftd_readme_commands() {
        let c = parse(&[
            "raftkv", "-haddr", ":11001", "-raddr", ":12001", "-join", ":11000", "-id", "node1",
            "d",
        ]);
        assert_eq!(c.http.advertise, "localhost:11001");
        assert_eq!(c.raft_advertise(), "localhost:12001");
        assert_eq!(c.join.as_deref(), Some("localhost:11000"));
        assert_eq!(c.node_name.as_deref(), Some("node1"));
    }

    #[test]
    fn double_dash_and_equals_forms() {
        let c = parse(&[
            "raftkv",
            "--join=localhost:1",
            "-haddr=127.0.0.1:5",
            "-debug",
            "d",
        ]);
        assert_eq!(c.join.as_deref(), Some("localhost:1"));
        assert_eq!(c.http.bind, "127.0.0.1:5");
    }

    #[test]
    fn advertised_addresses_can_differ_from_bound_ones() {
        let c = parse(&[
            "raftkv",
            "-haddr",
            "127.0.0.11:5000",
            "-raddr",
            "127.0.0.11:6000",
            "-advertise-haddr",
            "127.0.0.11:5100",
            "-advertise-raddr",
            "127.0.0.11:6100",
            "d",
        ]);
        assert_eq!(c.http.bind, "127.0.0.11:5000");
        assert_eq!(c.http.advertise, "127.0.0.11:5100");
        assert_eq!(c.raft_advertise(), "127.0.0.11:6100");
    }

    #[test]
    fn max_connections_is_bounded() {
        assert_eq!(
            parse(&["raftkv", "d"]).connections_max,
            config::DEFAULT_CONNECTIONS_MAX
        );
        assert_eq!(
            parse(&["raftkv", "-max-connections", "4096", "d"]).connections_max,
            4096
        );
        for bad in ["0", "65537"] {
            let argv = normalize_go_flags(
                ["raftkv", "--max-connections", bad, "d"]
                    .iter()
                    .map(OsString::from),
            );
            let err = Args::try_parse_from(argv)
                .expect("flags parse")
                .into_config()
                .expect_err("out of bounds");
            assert!(err.to_string().contains("--max-connections"), "{err}");
        }
    }

    #[test]
    fn max_value_bytes_has_a_ceiling() {
        let at = VALUE_BYTES_MAX_CEILING.to_string();
        assert_eq!(
            parse(&["raftkv", "--max-value-bytes", &at, "d"]).max_value_bytes,
            VALUE_BYTES_MAX_CEILING
        );
        let over = (VALUE_BYTES_MAX_CEILING + 1).to_string();
        let argv = normalize_go_flags(
            ["raftkv", "-max-value-bytes", &over, "d"]
                .iter()
                .map(OsString::from),
        );
        let err = Args::try_parse_from(argv)
            .unwrap()
            .into_config()
            .unwrap_err();
        assert!(err.to_string().contains("maximum"), "{err}");
    }

    #[test]
    fn restore_is_a_subcommand_and_node_flags_still_parse() {
        let argv = normalize_go_flags(
            [
                "raftkv", "restore", "-from", "b.snap", "-id", "r1", "-haddr", ":11000", "-raddr",
                ":12000", "d",
            ]
            .iter()
            .map(OsString::from),
        );
        let args = Args::try_parse_from(argv).unwrap();
        let Some(Subcommand::Restore(r)) = args.command else {
            panic!("restore subcommand expected");
        };
        let opts = r.into_options().unwrap();
        assert_eq!(opts.from, PathBuf::from("b.snap"));
        assert_eq!(opts.name.as_deref(), Some("r1"));
        assert_eq!(opts.api_addr, "localhost:11000");
        assert_eq!(opts.raft_addr, "localhost:12000");
        assert_eq!(opts.data_dir, PathBuf::from("d"));
        let argv = normalize_go_flags(
            ["raftkv", "restore", "--from", "b", "-p", "4002", "d"]
                .iter()
                .map(OsString::from),
        );
        let Some(Subcommand::Restore(r)) = Args::try_parse_from(argv).unwrap().command else {
            panic!("restore subcommand expected");
        };
        let opts = r.into_options().unwrap();
        assert_eq!(
            (opts.api_addr.as_str(), opts.raft_addr.as_str()),
            ("localhost:4002", "localhost:4002")
        );
        // A data dir named like the subcommand still works as a path.
        let c = parse(&["raftkv", "-p", "4001", "./restore"]);
        assert_eq!(c.data_dir, PathBuf::from("./restore"));
        let argv = normalize_go_flags(["raftkv", "restore", "d"].iter().map(OsString::from));
        assert!(Args::try_parse_from(argv).is_err(), "--from is required");
    }

    #[test]
    fn bad_flags_are_errors() {
        let argv = normalize_go_flags(["raftkv", "-haddr", "nope", "d"].iter().map(OsString::from));
        assert!(Args::try_parse_from(argv).unwrap().into_config().is_err());
        let argv = normalize_go_flags(["raftkv"].iter().map(OsString::from));
        assert!(Args::try_parse_from(argv).is_err());
    }
}
