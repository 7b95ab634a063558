//! Command-line flags → validated [`Config`]. Accepts the seeds' Go-style single-dash long flags
//! (`-join`, `-haddr`, `-raddr`, `-id`, `-debug`, `-trace`) besides the usual `--join` spelling.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config;
use crate::config::ClientTlsFiles;
use crate::config::Config;
use crate::config::Endpoint;
use crate::config::PeerTlsFiles;

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
    "insecure-peers",
    "peer-cert-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "cert-file",
    "key-file",
    "trusted-ca-file",
    "client-cert-auth",
];

#[derive(Parser, Debug)]
#[command(
    name = "raftkv",
    version,
    about = "A replicated key/value database on Raft (a successor of raftd and hraftd)",
    disable_help_flag = true
)]
pub struct Args {
    /// Directory holding this node's Raft log, snapshots and identity.
    pub data_dir: PathBuf,
    /// HTTP port; binds all interfaces. Raft RPC shares it unless --raddr is given.
    #[arg(short = 'p', long, default_value_t = config::DEFAULT_PORT)]
    pub port: u16,
    /// Host name advertised to peers and clients.
    #[arg(short = 'h', long, default_value = "localhost")]
    pub host: String,
    /// HTTP bind address, e.g. `:11000` or `127.0.0.1:11000` (overrides -p/-h).
    #[arg(long)]
    pub haddr: Option<String>,
    /// Separate Raft RPC listen address, e.g. `:12000`.
    #[arg(long)]
    pub raddr: Option<String>,
    /// HTTP address advertised to peers and clients, if not the bound one (e.g. behind a proxy).
    #[arg(long)]
    pub advertise_haddr: Option<String>,
    /// Raft address advertised to peers, if not the bound one.
    #[arg(long)]
    pub advertise_raddr: Option<String>,
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
    /// Build a snapshot (and compact the log) every N applied entries.
    #[arg(long, default_value_t = config::DEFAULT_SNAPSHOT_EVERY)]
    pub snapshot_every: u64,
    /// Largest accepted value in bytes (413 above it).
    #[arg(long, default_value_t = config::DEFAULT_MAX_VALUE_BYTES)]
    pub max_value_bytes: usize,
    /// How long a write or linearizable read may wait for the cluster before answering 503.
    #[arg(long, default_value_t = config::DEFAULT_TIMEOUT_MS)]
    pub timeout_ms: u64,
    /// Microseconds the log waits to gather more writes into one fsync (latency vs. batching).
    #[arg(long, default_value_t = 50)]
    pub flush_wait_us: u64,
    /// Raft heartbeat interval in ms; election timeout is 5–10 heartbeats.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Local IP address to dial peers from (e.g. 127.0.0.12, so a test proxy can tell nodes apart).
    #[arg(long)]
    pub source_ip: Option<std::net::IpAddr>,
    /// Bound in ms on a whole join: handshake, learner catch-up, promotion.
    #[arg(long, default_value_t = config::DEFAULT_JOIN_TIMEOUT_MS)]
    pub join_timeout_ms: u64,
    /// Serve the internal and membership routes to any address without peer TLS (default:
    /// loopback callers only). Only on a network where every host is trusted.
    #[arg(long)]
    pub insecure_peers: bool,
    /// Peer mutual TLS: this node's certificate (PEM), presented to peers as server and client.
    #[arg(long, value_name = "FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Peer mutual TLS: the private key of --peer-cert-file (PEM).
    #[arg(long, value_name = "FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// Peer mutual TLS: the CA (PEM) every peer's certificate must chain to.
    #[arg(long, value_name = "FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Client TLS: the certificate (PEM) the public API is served with over https.
    #[arg(long, value_name = "FILE")]
    pub cert_file: Option<PathBuf>,
    /// Client TLS: the private key of --cert-file (PEM).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Client TLS: the CA (PEM) client certificates must chain to (with --client-cert-auth).
    #[arg(long, value_name = "FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Client TLS: refuse clients without a certificate signed by --trusted-ca-file.
    #[arg(long)]
    pub client_cert_auth: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
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
        let endpoint = |flag: &'static str, value: &str| {
            config::parse_endpoint(value).map_err(|source| CliError::Addr { flag, source })
        };
        let peer = |flag: &'static str, value: &str| {
            config::normalize_peer_addr(value).map_err(|source| CliError::Addr { flag, source })
        };
        let mut http = match &self.haddr {
            Some(a) => endpoint("-haddr", a)?,
            None => Endpoint {
                bind: format!("0.0.0.0:{}", self.port),
                advertise: format!("{}:{}", self.host, self.port),
            },
        };
        let mut raft = self
            .raddr
            .as_deref()
            .map(|a| endpoint("-raddr", a))
            .transpose()?;
        if let Some(a) = &self.advertise_haddr {
            http.advertise = peer("-advertise-haddr", a)?;
        }
        if let Some(a) = &self.advertise_raddr {
            let Some(raft) = raft.as_mut() else {
                return Err(CliError::Invalid("-advertise-raddr needs -raddr".into()));
            };
            raft.advertise = peer("-advertise-raddr", a)?;
        }
        let join = self.join.as_deref().map(|j| peer("-join", j)).transpose()?;
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
        {
            return Err(CliError::Invalid(
                "--snapshot-every, --max-value-bytes, --timeout-ms, --heartbeat-ms and --join-timeout-ms must be positive".into(),
            ));
        }
        let (peer_tls, client_tls) = self.tls_files(raft.is_none())?;
        if peer_tls.is_some() && self.insecure_peers {
            return Err(CliError::Invalid(
                "--insecure-peers and peer TLS (--peer-cert-file ...) exclude each other: with \
                 peer TLS only nodes holding a peer certificate may use the internal routes"
                    .into(),
            ));
        }
        Ok(Config {
            data_dir: self.data_dir,
            http,
            raft,
            node_name: self.id,
            join,
            snapshot_every: self.snapshot_every,
            max_value_bytes: self.max_value_bytes,
            request_timeout: Duration::from_millis(self.timeout_ms),
            flush_batch_wait: Duration::from_micros(self.flush_wait_us),
            heartbeat_interval: Duration::from_millis(self.heartbeat_ms),
            source_ip: self.source_ip,
            join_timeout: Duration::from_millis(self.join_timeout_ms),
            insecure_peers: self.insecure_peers,
            peer_tls,
            client_tls,
        })
    }

    /// The TLS flags as file sets: the peer ones all three or none; `--client-cert-auth` and
    /// `--trusted-ca-file` together and only with `--cert-file`/`--key-file`. Client TLS alone on
    /// one shared port is refused: peers talk on that port too, and without peer TLS they would
    /// speak plain HTTP to a TLS listener.
    fn tls_files(
        &self,
        shared_port: bool,
    ) -> Result<(Option<PeerTlsFiles>, Option<ClientTlsFiles>), CliError> {
        let peer = match (
            &self.peer_cert_file,
            &self.peer_key_file,
            &self.peer_trusted_ca_file,
        ) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(PeerTlsFiles {
                cert_file: cert.clone(),
                key_file: key.clone(),
                trusted_ca_file: ca.clone(),
            }),
            _ => {
                return Err(CliError::Invalid(
                    "peer TLS needs all three of --peer-cert-file, --peer-key-file and \
                     --peer-trusted-ca-file"
                        .into(),
                ));
            }
        };
        let client_ca_file = match (&self.trusted_ca_file, self.client_cert_auth) {
            (None, false) => None,
            (Some(ca), true) => Some(ca.clone()),
            (None, true) => {
                return Err(CliError::Invalid(
                    "--client-cert-auth needs --trusted-ca-file (the CA client certificates must chain to)".into(),
                ));
            }
            (Some(_), false) => {
                return Err(CliError::Invalid(
                    "--trusted-ca-file has no effect without --client-cert-auth; add it to require client certificates".into(),
                ));
            }
        };
        let client = match (&self.cert_file, &self.key_file) {
            (None, None) if client_ca_file.is_some() => {
                return Err(CliError::Invalid(
                    "--client-cert-auth needs client TLS: --cert-file and --key-file".into(),
                ));
            }
            (None, None) => None,
            (Some(cert), Some(key)) => Some(ClientTlsFiles {
                cert_file: cert.clone(),
                key_file: key.clone(),
                client_ca_file,
            }),
            _ => {
                return Err(CliError::Invalid(
                    "client TLS needs both --cert-file and --key-file".into(),
                ));
            }
        };
        if shared_port && client.is_some() && peer.is_none() {
            return Err(CliError::Invalid(
                "--cert-file on one shared port (no -raddr) needs peer TLS too, since the nodes \
                 talk to each other on that port: add --peer-cert-file, --peer-key-file and \
                 --peer-trusted-ca-file, or give -raddr for a separate Raft listener"
                    .into(),
            ));
        }
        Ok((peer, client))
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

    fn parse_err(args: &[&str]) -> String {
        let argv = normalize_go_flags(args.iter().map(OsString::from));
        Args::try_parse_from(argv)
            .unwrap()
            .into_config()
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn tls_flags_in_etcd_and_go_spelling() {
        let c = parse(&[
            "raftkv",
            "-raddr",
            ":12000",
            "--peer-cert-file",
            "n.pem",
            "-peer-key-file",
            "n-key.pem",
            "-peer-trusted-ca-file=ca.pem",
            "--cert-file=c.pem",
            "-key-file",
            "c-key.pem",
            "-trusted-ca-file",
            "clients.pem",
            "-client-cert-auth",
            "d",
        ]);
        assert_eq!(
            c.peer_tls,
            Some(PeerTlsFiles {
                cert_file: "n.pem".into(),
                key_file: "n-key.pem".into(),
                trusted_ca_file: "ca.pem".into(),
            })
        );
        assert_eq!(
            c.client_tls,
            Some(ClientTlsFiles {
                cert_file: "c.pem".into(),
                key_file: "c-key.pem".into(),
                client_ca_file: Some("clients.pem".into()),
            })
        );
        let plain = parse(&["raftkv", "d"]);
        assert!(plain.peer_tls.is_none() && plain.client_tls.is_none());
    }

    #[test]
    fn incomplete_tls_flags_are_errors() {
        let e = parse_err(&[
            "raftkv",
            "--peer-cert-file",
            "a",
            "--peer-key-file",
            "b",
            "d",
        ]);
        assert!(e.contains("all three"), "{e}");
        let e = parse_err(&["raftkv", "-raddr", ":1", "--cert-file", "a", "d"]);
        assert!(e.contains("both --cert-file and --key-file"), "{e}");
        let e = parse_err(&[
            "raftkv",
            "-raddr",
            ":1",
            "--cert-file",
            "a",
            "--key-file",
            "b",
            "--client-cert-auth",
            "d",
        ]);
        assert!(e.contains("needs --trusted-ca-file"), "{e}");
        let e = parse_err(&["raftkv", "--trusted-ca-file", "a", "d"]);
        assert!(e.contains("without --client-cert-auth"), "{e}");
        let e = parse_err(&["raftkv", "--cert-file", "a", "--key-file", "b", "d"]);
        assert!(e.contains("needs peer TLS too"), "{e}");
        let e = parse_err(&[
            "raftkv",
            "--insecure-peers",
            "--peer-cert-file",
            "a",
            "--peer-key-file",
            "b",
            "--peer-trusted-ca-file",
            "c",
            "d",
        ]);
        assert!(e.contains("exclude each other"), "{e}");
    }

    #[test]
    fn bad_flags_are_errors() {
        let argv = normalize_go_flags(["raftkv", "-haddr", "nope", "d"].iter().map(OsString::from));
        assert!(Args::try_parse_from(argv).unwrap().into_config().is_err());
        let argv = normalize_go_flags(["raftkv"].iter().map(OsString::from));
        assert!(Args::try_parse_from(argv).is_err());
    }
}
