//! The errors a client can see. Every layer below the HTTP API reports one of these; the HTTP
//! layer maps them to status codes in one place (`http/error.rs`).
//!
//! The distinction between [`KvError::NoLeader`] and [`KvError::Timeout`] matters to clients:
//! `NoLeader` means the write was certainly not applied (it never reached a leader's log), while
//! `Timeout` means it may or may not have been applied (it was proposed, the outcome is unknown).

use std::time::Duration;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KvError {
    #[error("{0}")]
    BadRequest(String),
    #[error("key not found")]
    NotFound,
    #[error("no member named {0:?}")]
    NoSuchMember(String),
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },
    #[error("{0}")]
    Conflict(String),
    /// No leader is known, or the leader could not be reached before proposing: not applied.
    #[error("no leader: {0}; the request was not applied, retry later")]
    NoLeader(String),
    /// Proposed but not confirmed within the timeout (e.g. no quorum): outcome unknown.
    #[error("not confirmed within {0:?} (no quorum?); the outcome is unknown")]
    Timeout(Duration),
    /// A linearizable read could not be confirmed; nothing was changed.
    #[error("read not confirmed within {0:?}: no leader or no quorum; retry or use ?level=stale")]
    ReadUnavailable(Duration),
    #[error("internal error: {0}")]
    Internal(String),
    // New variants go last: this enum crosses the wire in postcard (by variant index).
    /// The caller may not use this route (protected mode, missing peer certificate).
    #[error("{0}")]
    Forbidden(String),
    /// A join could not be completed; the voters are unchanged.
    #[error("join failed: {0}")]
    JoinFailed(String),
    /// Another operation that must not overlap (a membership change) is under way: not applied.
    #[error("busy: {0}; the request was not applied, retry in a moment")]
    Busy(String),
    /// The multi-version store refused the operation (etcd's error and message).
    #[error("{0}")]
    Store(crate::mvcc::MvccError),
    /// This node is not ready to serve (`/readyz`, `/health`): the reason.
    #[error("not ready: {0}")]
    NotReady(String),
    /// This node is shutting down: the request was not handled; send it to another member.
    #[error("this node is shutting down; the request was not handled, send it to another member")]
    ShuttingDown,
}
