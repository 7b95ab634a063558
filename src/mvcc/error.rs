//! The MVCC store's typed errors and etcd's exact message texts.
//!
//! clientv3 recognises errors by their message (`rpctypes/error.go`), so the texts live here as
//! constants, once; the gRPC layer maps each [`MvccError`] to a gRPC code with
//! [`MvccError::etcd_message`] as the status message. `Display` is that same text.

/// etcd's `rpctypes.ErrGRPCCompacted` (gRPC code OutOfRange).
pub const MSG_COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
/// etcd's `rpctypes.ErrGRPCFutureRev` (gRPC code OutOfRange).
pub const MSG_FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
/// etcd's `rpctypes.ErrGRPCKeyNotFound` (gRPC code InvalidArgument).
pub const MSG_KEY_NOT_FOUND: &str = "etcdserver: key not found";
/// etcd's `rpctypes.ErrGRPCDuplicateKey` (gRPC code InvalidArgument).
pub const MSG_DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
/// etcd's `rpctypes.ErrGRPCTooManyOps` (gRPC code InvalidArgument).
pub const MSG_TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
/// etcd's `rpctypes.ErrGRPCEmptyKey` (gRPC code InvalidArgument).
pub const MSG_EMPTY_KEY: &str = "etcdserver: key is not provided";
/// etcd's `rpctypes.ErrGRPCValueProvided` (gRPC code InvalidArgument).
pub const MSG_VALUE_PROVIDED: &str = "etcdserver: value is provided";
/// etcd's `rpctypes.ErrGRPCLeaseProvided` (gRPC code InvalidArgument).
pub const MSG_LEASE_PROVIDED: &str = "etcdserver: lease is provided";
/// etcd's `rpctypes.ErrGRPCLeaseNotFound` (gRPC code NotFound).
pub const MSG_LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
/// etcd's `rpctypes.ErrGRPCLeaseExist` (gRPC code FailedPrecondition).
pub const MSG_LEASE_EXISTS: &str = "etcdserver: lease already exists";
/// etcd's `rpctypes.ErrGRPCLeaseTTLTooLarge` (gRPC code OutOfRange).
pub const MSG_LEASE_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
/// etcd's `rpctypes.ErrGRPCRequestTooLarge` (gRPC code InvalidArgument).
pub const MSG_REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";

/// The gRPC status code etcd answers an error with (names as in `tonic::Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcCode {
    InvalidArgument,
    NotFound,
    OutOfRange,
    FailedPrecondition,
}

/// Every way an MVCC operation can fail. All are deterministic functions of the request and the
/// store's state, so every replica fails the same entry the same way and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum MvccError {
    /// A read or compaction at or below the compacted revision.
    #[error("{}", MSG_COMPACTED)]
    Compacted { compact_revision: i64 },
    /// A read, compaction or hash above the current revision.
    #[error("{}", MSG_FUTURE_REV)]
    FutureRevision { current_revision: i64 },
    /// `ignore_value`/`ignore_lease` on a key that does not exist.
    #[error("{}", MSG_KEY_NOT_FOUND)]
    KeyNotFound,
    /// Two puts of one key, or a put inside a delete's range, in one txn branch.
    #[error("{}", MSG_DUPLICATE_KEY)]
    DuplicateKey,
    /// More compares or ops in one txn (or nested txn) than the store's limit.
    #[error("{}", MSG_TOO_MANY_OPS)]
    TooManyOps { max: usize },
    #[error("{}", MSG_EMPTY_KEY)]
    EmptyKey,
    /// `ignore_value` together with a non-empty value.
    #[error("{}", MSG_VALUE_PROVIDED)]
    ValueProvided,
    /// `ignore_lease` together with a non-zero lease.
    #[error("{}", MSG_LEASE_PROVIDED)]
    LeaseProvided,
    /// A put names a lease the caller's [`crate::mvcc::LeaseCheck`] does not know.
    #[error("{}", MSG_LEASE_NOT_FOUND)]
    LeaseNotFound { lease: i64 },
    /// A key or value over the store's size limits (they keep every snapshot decodable).
    #[error("{}", MSG_REQUEST_TOO_LARGE)]
    TooLarge {
        what: String,
        bytes: usize,
        max: usize,
    },
    /// A grant of a lease id that exists.
    #[error("{}", MSG_LEASE_EXISTS)]
    LeaseExists,
    /// A grant with a TTL over [`crate::mvcc::lease::LEASE_TTL_MAX_S`].
    #[error("{}", MSG_LEASE_TTL_TOO_LARGE)]
    LeaseTtlTooLarge,
}

impl MvccError {
    /// The exact text etcd puts in the gRPC status message.
    pub fn etcd_message(&self) -> &'static str {
        match self {
            MvccError::Compacted { .. } => MSG_COMPACTED,
            MvccError::FutureRevision { .. } => MSG_FUTURE_REV,
            MvccError::KeyNotFound => MSG_KEY_NOT_FOUND,
            MvccError::DuplicateKey => MSG_DUPLICATE_KEY,
            MvccError::TooManyOps { .. } => MSG_TOO_MANY_OPS,
            MvccError::EmptyKey => MSG_EMPTY_KEY,
            MvccError::ValueProvided => MSG_VALUE_PROVIDED,
            MvccError::LeaseProvided => MSG_LEASE_PROVIDED,
            MvccError::LeaseNotFound { .. } => MSG_LEASE_NOT_FOUND,
            MvccError::TooLarge { .. } => MSG_REQUEST_TOO_LARGE,
            MvccError::LeaseExists => MSG_LEASE_EXISTS,
            MvccError::LeaseTtlTooLarge => MSG_LEASE_TTL_TOO_LARGE,
        }
    }

    /// The gRPC code etcd 3.4 answers this error with.
    pub fn grpc_code(&self) -> GrpcCode {
        match self {
            MvccError::Compacted { .. }
            | MvccError::FutureRevision { .. }
            | MvccError::LeaseTtlTooLarge => GrpcCode::OutOfRange,
            MvccError::LeaseExists => GrpcCode::FailedPrecondition,
            MvccError::LeaseNotFound { .. } => GrpcCode::NotFound,
            _ => GrpcCode::InvalidArgument,
        }
    }
}
