//! Who may call the internal routes and the membership routes (`/join`, `/remove`).
//!
//! - Peer TLS configured: the caller must present a certificate that chains to the peer CA
//!   (`--peer-trusted-ca-file`), verified again here whatever the listener's own TLS settings.
//! - `--insecure-peers`: anyone who can reach the port (the seeds' behaviour; warned at start).
//! - Otherwise (protected mode, the default): only callers on a loopback address.
//!
//! The membership routes on the public port also accept a loopback caller in every mode (an
//! operator on the node's own machine).

use std::sync::Arc;

use rustls::pki_types::UnixTime;
use rustls::server::danger::ClientCertVerifier;

use crate::serve::ConnInfo;

/// How peers are authenticated.
#[derive(Clone)]
pub enum PeerAuth {
    /// Protected mode: loopback callers only.
    LoopbackOnly,
    /// `--insecure-peers`: no check.
    Insecure,
    /// Peer TLS: a certificate chaining to the peer CA.
    Tls(Arc<dyn ClientCertVerifier>),
}

impl std::fmt::Debug for PeerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeerAuth::LoopbackOnly => "loopback-only",
            PeerAuth::Insecure => "insecure",
            PeerAuth::Tls(_) => "peer-tls",
        })
    }
}

/// Why a caller was refused (answered 403).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Forbidden {
    #[error(
        "protected mode: internal and membership routes answer only loopback clients ({0} is not); \
         to run a cluster across machines start every node with --peer-cert-file, --peer-key-file \
         and --peer-trusted-ca-file (peer TLS), or with --insecure-peers on a trusted network"
    )]
    NotLoopback(std::net::IpAddr),
    #[error(
        "this route needs a client certificate signed by the peer CA (--peer-trusted-ca-file); none was presented"
    )]
    NoCertificate,
    #[error("the client certificate is not accepted by the peer CA: {0}")]
    BadCertificate(String),
}

/// Whether `conn` may use the internal API.
pub fn authorize_peer(auth: &PeerAuth, conn: &ConnInfo) -> Result<(), Forbidden> {
    match auth {
        PeerAuth::Insecure => Ok(()),
        PeerAuth::LoopbackOnly => {
            let ip = conn.remote.ip();
            if is_loopback(ip) {
                Ok(())
            } else {
                Err(Forbidden::NotLoopback(ip))
            }
        }
        PeerAuth::Tls(verifier) => {
            let Some((end_entity, intermediates)) = conn.client_certs.split_first() else {
                return Err(Forbidden::NoCertificate);
            };
            verifier
                .verify_client_cert(end_entity, intermediates, UnixTime::now())
                .map(|_| ())
                .map_err(|e| Forbidden::BadCertificate(e.to_string()))
        }
    }
}

/// Whether `conn` may change the membership through the public port.
pub fn authorize_admin(auth: &PeerAuth, conn: &ConnInfo) -> Result<(), Forbidden> {
    if is_loopback(conn.remote.ip()) {
        return Ok(());
    }
    authorize_peer(auth, conn)
}

fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}
