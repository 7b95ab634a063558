//! The validated node configuration: addresses resolved, limits and timeouts as typed values.
//! Built from command-line flags by `cli.rs`; everything else reads only this.

use std::path::PathBuf;
use std::time::Duration;

/// Default HTTP port (raftd's).
pub const DEFAULT_PORT: u16 = 4001;
/// Default largest accepted value (and `POST /key` body).
/// Default `--max-connections`: connections each listener serves at once.
pub const DEFAULT_CONNECTIONS_MAX: usize = 1024;
/// The largest `--max-connections` accepted (each connection holds a file descriptor and
/// buffers; the process's descriptor limit must allow it too).
pub const CONNECTIONS_MAX_CEILING: usize = 65536;
pub const DEFAULT_MAX_VALUE_BYTES: usize = crate::limits::VALUE_BYTES_MAX_DEFAULT;
/// Default bound on how long a write or linearizable read may wait before answering 503.
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;
/// Default number of applied entries between two snapshots (etcd's default too). At 10,000 a
/// node at ~17k writes/s snapshotted every 0.6 s and the builds set the write p99 (28 ms → 5 ms
/// at 100,000; BENCHMARKS.md).
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 100_000;
/// Default bound on a whole join (handshake, learner catch-up, promotion).
pub const DEFAULT_JOIN_TIMEOUT_MS: u64 = 60_000;

/// A listen address and the address peers and clients should use to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// What we bind, e.g. `0.0.0.0:4001`.
    pub bind: String,
    /// What we advertise, e.g. `localhost:4001`.
    pub advertise: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub http: Endpoint,
    /// A separate Raft RPC listener (hraftd's `-raddr`); `None` serves Raft RPC on the HTTP port.
    pub raft: Option<Endpoint>,
    /// Node name requested on the command line; `None` means "the stored one, or a new one".
    pub node_name: Option<String>,
    /// HTTP address of a member to join when the data dir holds no cluster state.
    pub join: Option<String>,
    pub snapshot_every: u64,
    pub max_value_bytes: usize,
    pub request_timeout: Duration,
    /// How long the log's flush worker waits to gather more writes into one fsync.
    pub flush_batch_wait: Duration,
    /// Whether the leader puts concurrent client writes in one log entry (`raft/propose.rs`).
    pub write_batching: bool,
    /// How long the leader may hold the next batch for the writers of the one it just answered
    /// ("Gathering" in `raft/propose.rs`); zero: never.
    pub write_gather: Duration,
    /// Raft heartbeat interval; election timeouts are derived from it.
    pub heartbeat_interval: Duration,
    /// Local address outgoing peer connections are bound to; `None` lets the OS choose.
    pub source_ip: Option<std::net::IpAddr>,
    /// Bound on a whole join (handshake, learner catch-up, promotion).
    pub join_timeout: Duration,
    /// Connections each listener serves at once (`--max-connections`).
    pub connections_max: usize,
    /// Serve the internal and membership routes to any address without peer TLS.
    pub insecure_peers: bool,
    /// Peer mutual TLS (`--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`).
    pub peer_tls: Option<PeerTlsFiles>,
    /// TLS on the public API (`--cert-file`, `--key-file`, and with `--client-cert-auth`
    /// `--trusted-ca-file`).
    pub client_tls: Option<ClientTlsFiles>,
    /// `--auto-compaction-mode` / `--auto-compaction-retention`.
    pub auto_compaction: crate::compaction::AutoCompaction,
    /// `--experimental-watch-progress-notify-interval` (etcd's flag; default 10 minutes).
    pub watch_progress_interval: Duration,
}

/// The files of peer mutual TLS: this node's certificate and key, and the CA every peer's
/// certificate must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub trusted_ca_file: PathBuf,
}

/// The files of TLS on the public API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// `--client-cert-auth`: clients must present a certificate chaining to this CA.
    pub client_ca_file: Option<PathBuf>,
}

impl Config {
    /// Where Raft RPC is reached: the separate Raft endpoint if given, else the HTTP one.
    pub fn raft_advertise(&self) -> &str {
        self.raft
            .as_ref()
            .map_or(&self.http.advertise, |r| &r.advertise)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    #[error("address {0:?} has no port (expected HOST:PORT or :PORT)")]
    NoPort(String),
    #[error("address {0:?} has an invalid port")]
    BadPort(String),
}

/// Parses hraftd-style addresses: `:11000` binds all interfaces and is advertised as
/// `localhost:11000`; `host:port` binds and advertises as given (`0.0.0.0`/`[::]` advertise as
/// localhost, since a wildcard address cannot be dialled).
pub fn parse_endpoint(addr: &str) -> Result<Endpoint, AddrError> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| AddrError::NoPort(addr.to_string()))?;
    let port: u16 = port
        .parse()
        .map_err(|_| AddrError::BadPort(addr.to_string()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let (bind_host, advertise_host) = match host {
        "" | "0.0.0.0" => ("0.0.0.0", "localhost"),
        "::" => ("::", "localhost"),
        h => (h, h),
    };
    let bind = if bind_host.contains(':') {
        format!("[{bind_host}]:{port}")
    } else {
        format!("{bind_host}:{port}")
    };
    Ok(Endpoint {
        bind,
        advertise: format!("{advertise_host}:{port}"),
    })
}

/// Normalises an address given to `-join` or in a join request: accepts `:P`, `host:P` and
/// `http://host:P[/]`; returns `host:P` (with `localhost` for an empty host).
pub fn normalize_peer_addr(addr: &str) -> Result<String, AddrError> {
    let trimmed = addr.trim();
    let without_scheme = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .unwrap_or(trimmed)
        .trim_end_matches('/');
    Ok(parse_endpoint(without_scheme)?.advertise)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hraftd_style_addresses() {
        let e = parse_endpoint(":11000").unwrap();
        assert_eq!(e.bind, "0.0.0.0:11000");
        assert_eq!(e.advertise, "localhost:11000");
        let e = parse_endpoint("127.0.0.2:12000").unwrap();
        assert_eq!(e.bind, "127.0.0.2:12000");
        assert_eq!(e.advertise, "127.0.0.2:12000");
        assert_eq!(
            parse_endpoint("nohost"),
            Err(AddrError::NoPort("nohost".into()))
        );
        assert_eq!(parse_endpoint(":x"), Err(AddrError::BadPort(":x".into())));
    }

    #[test]
    fn peer_addresses() {
        assert_eq!(
            normalize_peer_addr("http://localhost:4001").unwrap(),
            "localhost:4001"
        );
        assert_eq!(normalize_peer_addr(":11000").unwrap(), "localhost:11000");
        assert_eq!(normalize_peer_addr("10.1.2.3:5/").unwrap(), "10.1.2.3:5");
    }
}
