//! The node-to-node surface: identity (cluster id, who sends, who is meant), authentication
//! (peer TLS or protected mode), the peer links (`wire` format, outbound `link`, inbound
//! `link_server`), the pooled outbound HTTP clients, the internal RPCs' handlers (`rpc`,
//! carried by links and by the HTTP routes of `server`), and snapshot transfer (`snapshot`).
//!
//! Used by `raft/` (outbound RPC, forwarding, read index) and served by `node.rs`: on the Raft
//! listener when `-raddr` is given, else on the one shared port.
pub mod auth;
pub mod client;
pub mod features;
pub mod identity;
pub mod link;
pub mod link_server;
pub mod rpc;
pub mod server;
pub mod snapshot;
pub mod wire;

/// Logs at most one line per `period` for a repeated warning (a misdirected heartbeat arrives
/// ten times a second); returns whether this call may log.
pub(crate) fn log_gate(last_ms: &std::sync::atomic::AtomicU64, period_ms: u64) -> bool {
    use std::sync::atomic::Ordering;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let last = last_ms.load(Ordering::Relaxed);
    now.saturating_sub(last) >= period_ms
        && last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}
