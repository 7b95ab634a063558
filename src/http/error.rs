//! The one place where errors become HTTP statuses. Every error body is JSON:
//! `{"error": "<message>", "code": "<code>"}`; the codes are documented in the README.

use axum::Json;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;

use crate::error::KvError;

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError(pub KvError);

impl From<KvError> for ApiError {
    fn from(e: KvError) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match &self.0 {
            KvError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            KvError::NotFound | KvError::NoSuchMember(_) => (StatusCode::NOT_FOUND, "not_found"),
            KvError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            KvError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            KvError::NoLeader(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_leader"),
            KvError::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            KvError::ReadUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "read_unavailable"),
            KvError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            KvError::JoinFailed(_) => (StatusCode::SERVICE_UNAVAILABLE, "join_failed"),
            KvError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            KvError::Store(e) => store_status(e),
            KvError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            KvError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            KvError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        }
    }
}

/// The status of an etcd store refusal on the HTTP API.
fn store_status(e: &crate::mvcc::MvccError) -> (StatusCode, &'static str) {
    use crate::mvcc::MvccError as M;
    match e {
        M::Compacted { .. } => (StatusCode::GONE, "compacted"),
        M::FutureRevision { .. } => (StatusCode::BAD_REQUEST, "future_revision"),
        M::KeyNotFound | M::LeaseNotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        M::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        M::LeaseExists => (StatusCode::CONFLICT, "lease_exists"),
        M::LeaseTtlTooLarge => (StatusCode::BAD_REQUEST, "bad_request"),
        M::DuplicateKey
        | M::TooManyOps { .. }
        | M::EmptyKey
        | M::ValueProvided
        | M::LeaseProvided => (StatusCode::BAD_REQUEST, "bad_request"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({ "error": self.0.to_string(), "code": code });
        (status, Json(body)).into_response()
    }
}

/// Fallback for unknown routes.
pub async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let body = serde_json::json!({ "error": format!("no route for {method} {}", uri.path()), "code": "not_found" });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// Fallback for known routes called with the wrong method.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let body = serde_json::json!({
        "error": format!("method {method} not allowed on {}", uri.path()),
        "code": "method_not_allowed",
    });
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}
