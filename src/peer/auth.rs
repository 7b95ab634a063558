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
    #[error(
        "peer TLS: from another host this route needs TLS with a peer certificate, and this port \
         speaks plain HTTP; send it over https to a member's Raft address (-raddr)"
    )]
    NotTls,
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
        PeerAuth::Tls(_) if !conn.tls => Err(Forbidden::NotTls),
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

#[cfg(test)]
mod tests {
    use rustls::pki_types::CertificateDer;

    use super::*;

    /// A CA certificate (its key is not kept): enough to build a verifier.
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBfDCCASOgAwIBAgIUVAJAOKDBO99rirvdHQsYdiwA+QIwCgYIKoZIzj0EAwIw\nFDESMBAGA1UEAwwJcmFmdGt2IENBMB4XDTI2MTIwMjA1MzcwM1oXDTI3MTIwMjA1\nMzcwM1owFDESMBAGA1UEAwwJcmFmdGt2IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0D\nAQcDQgAE7SuFA67oBB/xVrjtheGDYQEvE8gCpmuooEttQSYEE4o329GrsAZ2AnpM\nChj8EGtlIwCy1oX6UY4s15H96SOn+qNTMFEwHQYDVR0OBBYEFAXptNcU/2eHxX3A\nBnhpOAGlyfc2MB8GA1UdIwQYMBaAFAXptNcU/2eHxX3ABnhpOAGlyfc2MA8GA1Ud\nEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIgKeZJzTI9KDqJuvbqdCZgg4FW\nhZSpwNuKbhlU9QOEAcICIFBdoNcWzZfx4LP94/xdFG6wshKCgAqA+P0YSnuzGsjC\n-----END CERTIFICATE-----\n";

    fn tls_auth() -> PeerAuth {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut TEST_CA.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        PeerAuth::Tls(verifier)
    }

    fn conn(remote: &str, tls: bool, certs: Vec<CertificateDer<'static>>) -> ConnInfo {
        ConnInfo {
            remote: remote.parse().unwrap(),
            tls,
            client_certs: Arc::new(certs),
        }
    }

    #[test]
    fn protected_mode_answers_loopback_only() {
        let auth = PeerAuth::LoopbackOnly;
        assert_eq!(
            authorize_peer(&auth, &conn("127.0.0.9:1", false, vec![])),
            Ok(())
        );
        assert_eq!(
            authorize_peer(&auth, &conn("[::1]:1", false, vec![])),
            Ok(())
        );
        assert!(matches!(
            authorize_peer(&auth, &conn("10.0.0.1:1", false, vec![])),
            Err(Forbidden::NotLoopback(_))
        ));
        assert_eq!(
            authorize_peer(&PeerAuth::Insecure, &conn("10.0.0.1:1", false, vec![])),
            Ok(())
        );
    }

    #[test]
    fn peer_tls_needs_a_certificate_even_from_loopback() {
        let auth = tls_auth();
        assert_eq!(
            authorize_peer(&auth, &conn("127.0.0.1:1", false, vec![])),
            Err(Forbidden::NotTls)
        );
        assert_eq!(
            authorize_peer(&auth, &conn("127.0.0.1:1", true, vec![])),
            Err(Forbidden::NoCertificate)
        );
        let junk = CertificateDer::from(b"not a certificate".to_vec());
        assert!(matches!(
            authorize_peer(&auth, &conn("127.0.0.1:1", true, vec![junk])),
            Err(Forbidden::BadCertificate(_))
        ));
    }

    #[test]
    fn membership_routes_trust_loopback_in_every_mode() {
        let auth = tls_auth();
        assert_eq!(
            authorize_admin(&auth, &conn("127.0.0.1:1", false, vec![])),
            Ok(())
        );
        assert_eq!(
            authorize_admin(&auth, &conn("10.0.0.1:1", false, vec![])),
            Err(Forbidden::NotTls)
        );
    }
}
