//! The address flags a node and `raftkv restore` share (`-p`/`-h`, `-haddr`, `-raddr`,
//! `-advertise-haddr`, `-advertise-raddr`), and their one resolution into endpoints: the
//! restored membership must record exactly the addresses the node will advertise.

use crate::cli::CliError;
use crate::config;
use crate::config::Endpoint;

#[derive(clap::Args, Debug, Clone)]
pub struct AddrArgs {
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
}

impl AddrArgs {
    /// The HTTP endpoint and the separate Raft endpoint (if `-raddr`), advertised addresses
    /// overridden by `-advertise-*`.
    pub fn resolve(&self) -> Result<(Endpoint, Option<Endpoint>), CliError> {
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
            http.advertise = peer_addr("-advertise-haddr", a)?;
        }
        if let Some(a) = &self.advertise_raddr {
            let Some(raft) = raft.as_mut() else {
                return Err(CliError::Invalid("-advertise-raddr needs -raddr".into()));
            };
            raft.advertise = peer_addr("-advertise-raddr", a)?;
        }
        Ok((http, raft))
    }
}

fn endpoint(flag: &'static str, value: &str) -> Result<Endpoint, CliError> {
    config::parse_endpoint(value).map_err(|source| CliError::Addr { flag, source })
}

/// A peer address flag's value, normalised (`:P` → `localhost:P`).
pub fn peer_addr(flag: &'static str, value: &str) -> Result<String, CliError> {
    config::normalize_peer_addr(value).map_err(|source| CliError::Addr { flag, source })
}
