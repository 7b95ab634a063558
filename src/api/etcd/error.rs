//! The one place errors become gRPC statuses. etcd's clients (clientv3's `rpctypes`, and so
//! etcdctl) recognise errors by their **exact message text**, so every error etcd also has is
//! answered with etcd's code and text (etcd v3.4.23, `etcdserver/api/v3rpc/rpctypes/error.go`);
//! raftkv's own outcomes without an etcd counterpart keep raftkv's message under the closest code.

use tonic::Code;
use tonic::Status;

use crate::error::KvError;
use crate::service::lock::LockError;

/// etcd's texts (v3.4.23 `rpctypes/error.go`; the leader-transfer timeout is from
/// `etcdserver/errors.go`), each with its code in [`EtcdError::code`]. Checked against the tag.
pub mod text {
    pub const NO_LEADER: &str = "etcdserver: no leader";
    pub const NOT_LEADER: &str = "etcdserver: not leader";
    pub const TIMEOUT: &str = "etcdserver: request timed out";
    pub const TIMEOUT_LEADER_TRANSFER: &str =
        "etcdserver: request timed out, leader transfer took too long";
    pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
    pub const TOO_MANY_REQUESTS: &str = "etcdserver: too many requests";
    pub const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
    pub const PEER_URL_EXIST: &str = "etcdserver: Peer URLs already exists";
    pub const MEMBER_BAD_URLS: &str = "etcdserver: given member URLs are invalid";
    pub const MEMBER_NOT_LEARNER: &str = "etcdserver: can only promote a learner member";
    pub const LEARNER_NOT_READY: &str =
        "etcdserver: can only promote a learner member which is in sync with leader";
    pub const BAD_LEADER_TRANSFEREE: &str = "etcdserver: bad leader transferee";
    /// etcd's `ErrGRPCStopped`: clients retry on another endpoint.
    pub const STOPPED: &str = "etcdserver: server stopped";
    /// etcd's v3election `ErrMissingLeaderKey` (a Proclaim or Resign without `leader`).
    pub const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";
}

/// An outcome of an etcd RPC that is not a success.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// An error of the layers below, shared with the HTTP API.
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("{}", text::NOT_LEADER)]
    NotLeader,
    #[error("{}", text::TIMEOUT_LEADER_TRANSFER)]
    LeaderTransferTimeout,
    #[error("{}", text::MEMBER_NOT_FOUND)]
    MemberNotFound,
    #[error("{}", text::PEER_URL_EXIST)]
    PeerUrlExists,
    #[error("{}", text::MEMBER_BAD_URLS)]
    BadUrls,
    #[error("{}", text::MEMBER_NOT_LEARNER)]
    NotLearner,
    #[error("{}", text::LEARNER_NOT_READY)]
    LearnerNotReady,
    #[error("{}", text::BAD_LEADER_TRANSFEREE)]
    BadLeaderTransferee,
    #[error("{}", text::TOO_MANY_REQUESTS)]
    TooManyRequests,
    /// A precondition of raftkv's own that etcd does not have (the message says what to do).
    #[error("{0}")]
    Unsupported(String),
    /// An RPC raftkv does not implement (yet); never a wrong success.
    #[error("raftkv: {0} is not implemented")]
    Unimplemented(&'static str),
    /// Any failure of the Lock and Election services (see [`EtcdError::code`]).
    #[error(transparent)]
    Lock(LockError),
    #[error("{}", text::MISSING_LEADER_KEY)]
    MissingLeaderKey,
}

impl From<LockError> for EtcdError {
    fn from(e: LockError) -> EtcdError {
        EtcdError::Lock(e)
    }
}

/// Text prefix of every error etcd's clientv3 recognises (`rpctypes.errStringToError`).
const ETCD_TEXT_PREFIX: &str = "etcdserver: ";

impl EtcdError {
    pub fn code(&self) -> Code {
        match self {
            EtcdError::Kv(e) => kv_code(e),
            EtcdError::NotLeader
            | EtcdError::PeerUrlExists
            | EtcdError::NotLearner
            | EtcdError::LearnerNotReady
            | EtcdError::BadLeaderTransferee
            | EtcdError::Unsupported(_) => Code::FailedPrecondition,
            // etcd has no gRPC error for it: its `togRPCError` answers Unknown with the text.
            EtcdError::LeaderTransferTimeout => Code::Unknown,
            EtcdError::MemberNotFound => Code::NotFound,
            EtcdError::BadUrls => Code::InvalidArgument,
            EtcdError::TooManyRequests => Code::ResourceExhausted,
            EtcdError::Unimplemented(_) => Code::Unimplemented,
            // etcd 3.4's lock and election servers run clientv3, which turns an error it
            // knows by its text into a plain `rpctypes.EtcdError`; that and their own plain Go
            // errors ("election: not leader", …) reach the wire as Unknown with the text. Our
            // own outcomes without an etcd text keep their code, and so does a wait ended by
            // this node's shutdown (`Unavailable`, as a stopping etcd's closed connection).
            EtcdError::Lock(LockError::Kv(e))
                if matches!(e, KvError::ShuttingDown)
                    || !kv_message(e).starts_with(ETCD_TEXT_PREFIX) =>
            {
                kv_code(e)
            }
            EtcdError::Lock(_) | EtcdError::MissingLeaderKey => Code::Unknown,
        }
    }

    /// The message clients see: etcd's text where etcd has the error.
    pub fn message(&self) -> String {
        match self {
            EtcdError::Kv(e) | EtcdError::Lock(LockError::Kv(e)) => kv_message(e),
            other => other.to_string(),
        }
    }
}

fn kv_code(e: &KvError) -> Code {
    match e {
        KvError::BadRequest(_) | KvError::TooLarge { .. } => Code::InvalidArgument,
        KvError::NotFound | KvError::NoSuchMember(_) => Code::NotFound,
        // Membership safety rules (address clash, quorum would be lost): etcd answers its
        // equivalents (Peer URLs exist, not enough started members) with FailedPrecondition.
        KvError::Conflict(_) => Code::FailedPrecondition,
        KvError::NoLeader(_)
        | KvError::Timeout(_)
        | KvError::ReadUnavailable(_)
        | KvError::JoinFailed(_)
        | KvError::Busy(_)
        | KvError::NotReady(_)
        | KvError::ShuttingDown => Code::Unavailable,
        KvError::Forbidden(_) => Code::PermissionDenied,
        // The store's refusals carry etcd's own code (and text, see `kv_message`).
        KvError::Store(e) => match e.grpc_code() {
            crate::mvcc::GrpcCode::InvalidArgument => Code::InvalidArgument,
            crate::mvcc::GrpcCode::NotFound => Code::NotFound,
            crate::mvcc::GrpcCode::OutOfRange => Code::OutOfRange,
            crate::mvcc::GrpcCode::FailedPrecondition => Code::FailedPrecondition,
        },
        KvError::Internal(_) => Code::Internal,
    }
}

fn kv_message(e: &KvError) -> String {
    match e {
        KvError::NoLeader(_) => text::NO_LEADER.to_string(),
        // etcd has one text for a proposal or a read index not confirmed in time.
        KvError::Timeout(_) | KvError::ReadUnavailable(_) => text::TIMEOUT.to_string(),
        KvError::TooLarge { .. } => text::REQUEST_TOO_LARGE.to_string(),
        KvError::NoSuchMember(_) => text::MEMBER_NOT_FOUND.to_string(),
        KvError::ShuttingDown => text::STOPPED.to_string(),
        other => other.to_string(),
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        Status::new(e.code(), e.message())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn status(e: impl Into<EtcdError>) -> (Code, String) {
        let s = Status::from(e.into());
        (s.code(), s.message().to_string())
    }

    #[test]
    fn etcd_errors_keep_etcds_code_and_text() {
        let cases = [
            (
                status(KvError::NoLeader("x".into())),
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                status(KvError::Timeout(Duration::from_secs(5))),
                Code::Unavailable,
                "etcdserver: request timed out",
            ),
            (
                status(KvError::NoSuchMember("n".into())),
                Code::NotFound,
                "etcdserver: member not found",
            ),
            (
                status(EtcdError::PeerUrlExists),
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            (
                status(EtcdError::NotLeader),
                Code::FailedPrecondition,
                "etcdserver: not leader",
            ),
            (
                status(EtcdError::TooManyRequests),
                Code::ResourceExhausted,
                "etcdserver: too many requests",
            ),
            (
                status(KvError::TooLarge {
                    what: "value".into(),
                    size: 2,
                    limit: 1,
                }),
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
        ];
        for ((code, message), want_code, want_message) in cases {
            assert_eq!((code, message.as_str()), (want_code, want_message));
        }
    }

    #[test]
    fn our_own_outcomes_keep_our_message() {
        let (code, message) = status(KvError::Conflict("quorum would be lost".into()));
        assert_eq!(code, Code::FailedPrecondition);
        assert_eq!(message, "quorum would be lost");
        let (code, _) = status(EtcdError::Unimplemented("KV.Range"));
        assert_eq!(code, Code::Unimplemented);
    }

    #[test]
    fn lock_and_election_errors_are_etcds() {
        use crate::mvcc::MvccError;
        let cases = [
            (
                status(LockError::NotLeader),
                Code::Unknown,
                "election: not leader",
            ),
            (
                status(LockError::NoLeader),
                Code::Unknown,
                "election: no leader",
            ),
            (
                status(EtcdError::MissingLeaderKey),
                Code::Unknown,
                "\"leader\" field must be provided",
            ),
            (
                status(LockError::from(KvError::Store(MvccError::LeaseNotFound {
                    lease: 7,
                }))),
                Code::Unknown,
                "etcdserver: requested lease not found",
            ),
            (
                status(LockError::from(KvError::NoLeader("x".into()))),
                Code::Unknown,
                "etcdserver: no leader",
            ),
            (
                status(LockError::from(KvError::ShuttingDown)),
                Code::Unavailable,
                "etcdserver: server stopped",
            ),
            (
                status(LockError::from(KvError::Internal("x".into()))),
                Code::Internal,
                "internal error: x",
            ),
        ];
        for ((code, message), want_code, want_message) in cases {
            assert_eq!((code, message.as_str()), (want_code, want_message));
        }
    }
}
