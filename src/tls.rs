//! TLS material: reads the PEM files named by the TLS flags once at startup and builds every
//! rustls config the node needs — the peer listener's (mutual TLS), the public listener's (client
//! TLS, optionally with client certificates), and the outgoing peer client's. The ring provider
//! is passed explicitly to every builder; nothing relies on a process-wide default provider.
//!
//! What it does not own: serving (see `serve.rs`) and deciding whether a caller may use a route
//! (see `peer/auth.rs`, which re-verifies the client chain with [`PeerTls::verifier`]).
//!
//! Invariants: a file that is missing, unreadable or holds no usable PEM item stops the node at
//! startup with an error naming the flag and the file; with peer TLS the peer listener never
//! completes a handshake with a client lacking a certificate that chains to the peer CA.
//!
//! Which listener uses what (`-raddr` given, or one shared port):
//!
//! | listener | certificate | client certificates |
//! |---|---|---|
//! | `-raddr` (peer TLS) | `--peer-cert-file` | required, peer CA |
//! | public, `-raddr` given | `--cert-file` | see below |
//! | shared port | `--cert-file`, else `--peer-cert-file` | see below |
//!
//! Client certificates on the public (or shared) listener: with `--client-cert-auth` required,
//! chaining to `--trusted-ca-file` or, with peer TLS, to the peer CA (members use the port too:
//! every request on a shared port, a `-join` naming the public port); without it, with peer TLS
//! asked for but optional (peer CA), so the peer guard can see them; otherwise not asked for.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use tokio_rustls::TlsAcceptor;

use crate::config::ClientTlsFiles;
use crate::config::PeerTlsFiles;

/// ALPN protocols offered by our listeners (hyper-util's auto builder serves both).
const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// ALPN protocol of the outgoing peer client (reqwest is built without HTTP/2 here).
const CLIENT_ALPN: &[u8] = b"http/1.1";
/// Largest PEM file accepted (a certificate chain or a CA bundle).
const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} {path}: {error}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{flag} {path} is over {PEM_FILE_BYTES_MAX} bytes; is it a PEM file?")]
    TooLarge { flag: &'static str, path: PathBuf },
    #[error("{flag} {path} is not valid PEM: {reason}")]
    Pem {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{flag} {path} holds no PEM certificate (expected \"-----BEGIN CERTIFICATE-----\")")]
    NoCertificate { flag: &'static str, path: PathBuf },
    #[error("{flag} {path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { flag: &'static str, path: PathBuf },
    #[error("{flag} {path} holds a certificate that cannot be a trust anchor: {reason}")]
    BadCa {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what}: {reason}")]
    Config { what: String, reason: String },
}

/// Peer mutual TLS: what the peer listener, the peer client and the peer guard use.
#[derive(Clone)]
pub struct PeerTls {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    roots: Arc<RootCertStore>,
    /// Accepts only chains to the peer CA; `peer/auth.rs` re-checks callers with it.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// The outgoing peer client: presents our peer certificate, trusts only the peer CA.
    pub client: Arc<ClientConfig>,
    ca_file: PathBuf,
}

/// TLS on the public API.
#[derive(Clone)]
struct ClientTls {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    /// `--client-cert-auth`: the CA client certificates must chain to.
    client_roots: Option<Arc<RootCertStore>>,
}

/// All TLS material of a node, loaded and checked at startup.
#[derive(Clone, Default)]
pub struct NodeTls {
    pub peer: Option<PeerTls>,
    client: Option<ClientTls>,
}

impl NodeTls {
    /// Reads and checks every file named by the TLS flags.
    pub fn load(
        peer: Option<&PeerTlsFiles>,
        client: Option<&ClientTlsFiles>,
    ) -> Result<Self, TlsError> {
        let peer = peer.map(load_peer).transpose()?;
        let client = client
            .map(|files| -> Result<ClientTls, TlsError> {
                let chain = load_certs("--cert-file", &files.cert_file)?;
                let key = load_key("--key-file", &files.key_file)?;
                let client_roots = files
                    .client_ca_file
                    .as_deref()
                    .map(|ca| load_roots("--trusted-ca-file", ca).map(Arc::new))
                    .transpose()?;
                let tls = ClientTls {
                    chain,
                    key: Arc::new(key),
                    client_roots,
                };
                // Build once now, so a key that does not match its certificate fails at start.
                let what = format!(
                    "--cert-file {} with --key-file {}",
                    files.cert_file.display(),
                    files.key_file.display()
                );
                server_config(&tls.chain, &tls.key, None, &what)?;
                Ok(tls)
            })
            .transpose()?;
        Ok(Self { peer, client })
    }

    /// The outgoing peer client's TLS config; `None` = plain HTTP between nodes.
    pub fn peer_client(&self) -> Option<Arc<ClientConfig>> {
        self.peer.as_ref().map(|p| p.client.clone())
    }

    /// Whether the public API is served over https.
    pub fn public_https(&self) -> bool {
        self.client.is_some()
    }

    /// Whether the public listener refuses clients without a certificate at the TLS layer.
    pub fn client_cert_required(&self) -> bool {
        self.client
            .as_ref()
            .is_some_and(|c| c.client_roots.is_some())
    }

    /// The separate Raft listener's acceptor (`-raddr`): peer certificate, peer CA required.
    pub fn peer_acceptor(&self) -> Result<Option<TlsAcceptor>, TlsError> {
        let Some(peer) = &self.peer else {
            return Ok(None);
        };
        let config = server_config(
            &peer.chain,
            &peer.key,
            Some(peer.verifier.clone()),
            "peer listener",
        )?;
        Ok(Some(TlsAcceptor::from(config)))
    }

    /// The public listener's acceptor; `shared_port` when the peer routes are served on it too
    /// (no `-raddr`). See the table in the module docs.
    pub fn public_acceptor(&self, shared_port: bool) -> Result<Option<TlsAcceptor>, TlsError> {
        let peer = self.peer.as_ref();
        let (chain, key) = match (&self.client, peer) {
            (Some(c), _) => (&c.chain, &c.key),
            (None, Some(p)) if shared_port => (&p.chain, &p.key),
            (None, _) => return Ok(None),
        };
        let required = self.client.as_ref().and_then(|c| c.client_roots.clone());
        let verifier = match (required, peer) {
            (Some(clients), Some(p)) => {
                // Members dial this port with their peer certificates (a shared port's every
                // request, a `-join` naming the public port): accept either CA here; the peer
                // guard still requires the peer CA on the internal and membership routes.
                let mut both = (*clients).clone();
                both.roots.extend(p.roots.roots.iter().cloned());
                Some(client_verifier(Arc::new(both), false, "--trusted-ca-file")?)
            }
            (Some(clients), _) => Some(client_verifier(clients, false, "--trusted-ca-file")?),
            (None, Some(p)) => Some(client_verifier(
                p.roots.clone(),
                true,
                "--peer-trusted-ca-file",
            )?),
            (None, None) => None,
        };
        let config = server_config(chain, key, verifier, "public listener")?;
        Ok(Some(TlsAcceptor::from(config)))
    }

    /// How the public listener serves, for the start log (see [`Self::public_acceptor`]).
    pub fn public_mode(&self, shared_port: bool) -> &'static str {
        if self.client_cert_required() {
            "https, client certificate required"
        } else if self.client.is_some() || (self.peer.is_some() && shared_port) {
            "https"
        } else {
            "plain http"
        }
    }

    /// One line for the start log: how peers are authenticated.
    pub fn peer_mode(&self) -> String {
        match &self.peer {
            Some(p) => format!(
                "peer TLS: node-to-node links are mutual TLS; internal and membership routes need \
                 a certificate signed by {}",
                p.ca_file.display()
            ),
            None => "no peer TLS".to_string(),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_peer(files: &PeerTlsFiles) -> Result<PeerTls, TlsError> {
    let chain = load_certs("--peer-cert-file", &files.cert_file)?;
    let key = Arc::new(load_key("--peer-key-file", &files.key_file)?);
    let roots = Arc::new(load_roots(
        "--peer-trusted-ca-file",
        &files.trusted_ca_file,
    )?);
    let verifier = client_verifier(roots.clone(), false, "--peer-trusted-ca-file")?;
    let what = format!(
        "--peer-cert-file {} with --peer-key-file {}",
        files.cert_file.display(),
        files.key_file.display()
    );
    let config_err = |reason: rustls::Error| TlsError::Config {
        what: what.clone(),
        reason: reason.to_string(),
    };
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain.clone(), key.clone_key())
        .map_err(config_err)?;
    client.alpn_protocols = vec![CLIENT_ALPN.to_vec()];
    let peer = PeerTls {
        chain,
        key,
        roots,
        verifier,
        client: Arc::new(client),
        ca_file: files.trusted_ca_file.clone(),
    };
    // Build once now, so a key that does not match its certificate fails at start.
    server_config(&peer.chain, &peer.key, None, &what)?;
    Ok(peer)
}

fn client_verifier(
    roots: Arc<RootCertStore>,
    optional: bool,
    flag: &str,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder.build().map_err(|e| TlsError::Config {
        what: flag.to_string(),
        reason: e.to_string(),
    })
}

fn server_config(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    what: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let config_err = |reason: rustls::Error| TlsError::Config {
        what: what.to_string(),
        reason: reason.to_string(),
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain.to_vec(), key.clone_key())
        .map_err(config_err)?;
    config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn read_pem(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_err = |error| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        error,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > PEM_FILE_BYTES_MAX {
        return Err(TlsError::TooLarge {
            flag,
            path: path.to_path_buf(),
        });
    }
    std::fs::read(path).map_err(read_err)
}

/// The certificate chain in `path` (end entity first).
pub fn load_certs(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem(flag, path)?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            flag,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            flag,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key in `path`.
pub fn load_key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_pem(flag, path)?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .map_err(|e| TlsError::Pem {
            flag,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| TlsError::NoKey {
            flag,
            path: path.to_path_buf(),
        })
}

/// The CA certificates in `path` as trust anchors.
pub fn load_roots(flag: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(flag, path)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            flag,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn missing_file_is_named() {
        let e = load_certs("--peer-cert-file", Path::new("/nonexistent/node.pem")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("--peer-cert-file"), "{msg}");
        assert!(msg.contains("/nonexistent/node.pem"), "{msg}");
        assert!(matches!(e, TlsError::Read { .. }));
    }

    #[test]
    fn files_without_pem_items_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = write(dir.path(), "garbage.pem", "not a certificate\n");
        assert!(matches!(
            load_certs("--cert-file", &garbage),
            Err(TlsError::NoCertificate { .. })
        ));
        assert!(matches!(
            load_key("--key-file", &garbage),
            Err(TlsError::NoKey { .. })
        ));
        assert!(matches!(
            load_roots("--trusted-ca-file", &garbage),
            Err(TlsError::NoCertificate { .. })
        ));
    }

    #[test]
    fn a_certificate_with_broken_base64_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let broken = write(
            dir.path(),
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let e = load_certs("--cert-file", &broken).unwrap_err();
        assert!(matches!(e, TlsError::Pem { .. }), "{e}");
    }

    #[test]
    fn a_certificate_that_is_not_der_is_not_a_trust_anchor() {
        let dir = tempfile::tempdir().unwrap();
        // Valid PEM framing and base64, but not a certificate.
        let bogus = write(
            dir.path(),
            "bogus.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        );
        let e = load_roots("--peer-trusted-ca-file", &bogus).unwrap_err();
        assert!(matches!(e, TlsError::BadCa { .. }), "{e}");
        assert!(e.to_string().contains("bogus.pem"), "{e}");
    }

    #[test]
    fn no_tls_flags_means_no_acceptors() {
        let tls = NodeTls::load(None, None).unwrap();
        assert!(tls.peer_acceptor().unwrap().is_none());
        assert!(tls.public_acceptor(true).unwrap().is_none());
        assert!(tls.peer_client().is_none());
        assert!(!tls.public_https());
    }
}
