//! The TLS flags (etcd's names) and their checks: which combinations make sense, before any
//! file is read (reading and parsing the PEM files is `tls.rs`'s job, at node start).

use std::path::PathBuf;

use crate::cli::CliError;
use crate::config::ClientTlsFiles;
use crate::config::PeerTlsFiles;

/// Peer mutual TLS and client TLS flags, flattened into [`crate::cli::Args`].
#[derive(clap::Args, Debug, Default)]
pub struct TlsArgs {
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
}

impl TlsArgs {
    /// The TLS flags as file sets: the peer ones all three or none; `--client-cert-auth` and
    /// `--trusted-ca-file` together and only with `--cert-file`/`--key-file`. Client TLS alone on
    /// one shared port is refused: peers talk on that port too, and without peer TLS they would
    /// speak plain HTTP to a TLS listener.
    pub(super) fn files(
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
    use std::ffi::OsString;

    use clap::Parser;

    use super::*;
    use crate::cli::Args;
    use crate::cli::normalize_go_flags;
    use crate::config::Config;

    fn parse_ok(args: &[&str]) -> Config {
        let argv = normalize_go_flags(args.iter().map(OsString::from));
        Args::try_parse_from(argv).unwrap().into_config().unwrap()
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
        let c = parse_ok(&[
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
        let plain = parse_ok(&["raftkv", "d"]);
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
}
