//! gRPC metrics in go-grpc-prometheus' shape (what etcd exports):
//! `raftkv_grpc_server_started_total{grpc_service,grpc_method}` and
//! `raftkv_grpc_server_handled_total{grpc_service,grpc_method,grpc_code}`, counted by the etcd
//! API's admission layer (`api::etcd::admit`).
//!
//! A call is "handled" when its status is known: at once when the answer carries
//! `grpc-status` in its headers (every error, and every refusal), else when the body's trailers
//! arrive (a unary success, the end of a stream); a body dropped before its trailers (the client
//! went away) counts as `Canceled`.
//!
//! Label cardinality: the service and method come from a fixed table of etcd's v3 API
//! ([`ETCD_METHODS`]); any other path is `unknown`/`unknown`, so a client sending random paths
//! cannot grow the families. Codes are gRPC's 17 names.

use axum::body::Body;
use axum::response::Response;
use http_body_util::BodyExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// etcd's v3 services and their methods (rpc.proto, v3lock, v3election).
pub const ETCD_METHODS: &[(&str, &[&str])] = &[
    (
        "etcdserverpb.KV",
        &[
            "Range",
            "RangeStream",
            "Put",
            "DeleteRange",
            "Txn",
            "Compact",
        ],
    ),
    ("etcdserverpb.Watch", &["Watch"]),
    (
        "etcdserverpb.Lease",
        &[
            "LeaseGrant",
            "LeaseRevoke",
            "LeaseKeepAlive",
            "LeaseTimeToLive",
            "LeaseLeases",
        ],
    ),
    (
        "etcdserverpb.Cluster",
        &[
            "MemberAdd",
            "MemberRemove",
            "MemberUpdate",
            "MemberList",
            "MemberPromote",
        ],
    ),
    (
        "etcdserverpb.Maintenance",
        &[
            "Alarm",
            "Status",
            "Defragment",
            "Hash",
            "HashKV",
            "Snapshot",
            "MoveLeader",
            "Downgrade",
        ],
    ),
    (
        "etcdserverpb.Auth",
        &[
            "AuthEnable",
            "AuthDisable",
            "AuthStatus",
            "Authenticate",
            "UserAdd",
            "UserGet",
            "UserList",
            "UserDelete",
            "UserChangePassword",
            "UserGrantRole",
            "UserRevokeRole",
            "RoleAdd",
            "RoleGet",
            "RoleList",
            "RoleDelete",
            "RoleGrantPermission",
            "RoleRevokePermission",
        ],
    ),
    ("v3lockpb.Lock", &["Lock", "Unlock"]),
    (
        "v3electionpb.Election",
        &["Campaign", "Proclaim", "Leader", "Observe", "Resign"],
    ),
];

/// The label of a service or method not in [`ETCD_METHODS`].
pub const UNKNOWN: &str = "unknown";

/// gRPC's status code names as grpc-go (and so etcd's metrics) spell them, by number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub grpc_service: &'static str,
    pub grpc_method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandledLabels {
    pub grpc_service: &'static str,
    pub grpc_method: &'static str,
    pub grpc_code: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct GrpcMetrics {
    pub started: Family<MethodLabels, Counter>,
    pub handled: Family<HandledLabels, Counter>,
}

/// `(service, method)` of a gRPC path `/<service>/<method>`, from the fixed table.
pub fn method_labels(path: &str) -> MethodLabels {
    let unknown = MethodLabels {
        grpc_service: UNKNOWN,
        grpc_method: UNKNOWN,
    };
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return unknown;
    };
    ETCD_METHODS
        .iter()
        .find(|(s, _)| *s == service)
        .and_then(|(s, methods)| {
            let m = methods.iter().find(|m| **m == method)?;
            Some(MethodLabels {
                grpc_service: s,
                grpc_method: m,
            })
        })
        .unwrap_or(unknown)
}

/// The name of a `grpc-status` value (`Unknown` for anything unparseable).
pub fn code_name(value: &[u8]) -> &'static str {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .and_then(|n| CODE_NAMES.get(n).copied())
        .unwrap_or("Unknown")
}

/// One call being counted: created when it is admitted (counted as started), finished by
/// [`Call::finish`] with its response.
pub struct Call {
    metrics: GrpcMetrics,
    labels: MethodLabels,
}

impl GrpcMetrics {
    /// Counts a call to `path` as started.
    pub fn start(&self, path: &str) -> Call {
        let labels = method_labels(path);
        self.started.get_or_create(&labels).inc();
        Call {
            metrics: self.clone(),
            labels,
        }
    }
}

/// Counts the call as handled with `code` once, when dropped (or when told the code).
struct Handled {
    call: Call,
    code: Option<&'static str>,
}

impl Handled {
    fn count(&mut self, code: &'static str) {
        if self.code.is_none() {
            self.code = Some(code);
            let labels = HandledLabels {
                grpc_service: self.call.labels.grpc_service,
                grpc_method: self.call.labels.grpc_method,
                grpc_code: code,
            };
            self.call.metrics.handled.get_or_create(&labels).inc();
        }
    }
}

impl Drop for Handled {
    fn drop(&mut self) {
        self.count("Canceled");
    }
}

impl Call {
    /// Counts the call as handled (now, or when its trailers pass) and returns the response.
    pub fn finish(self, response: Response) -> Response {
        let mut handled = Handled {
            call: self,
            code: None,
        };
        if let Some(status) = response.headers().get("grpc-status") {
            handled.count(code_name(status.as_bytes()));
            return response;
        }
        response.map(|body| {
            Body::new(body.map_frame(move |frame| {
                if let Some(status) = frame.trailers_ref().and_then(|t| t.get("grpc-status")) {
                    handled.count(code_name(status.as_bytes()));
                }
                frame
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_etcds_methods_get_their_own_labels() {
        let put = method_labels("/etcdserverpb.KV/Put");
        assert_eq!(
            (put.grpc_service, put.grpc_method),
            ("etcdserverpb.KV", "Put")
        );
        for path in ["/etcdserverpb.KV/Nope", "/x.Y/Put", "/", "", "/a/b/c"] {
            let l = method_labels(path);
            assert_eq!(
                (l.grpc_service, l.grpc_method),
                (UNKNOWN, UNKNOWN),
                "{path}"
            );
        }
    }

    #[test]
    fn codes_are_named_like_grpc_go() {
        assert_eq!(code_name(b"0"), "OK");
        assert_eq!(code_name(b"14"), "Unavailable");
        assert_eq!(code_name(b"99"), "Unknown");
        assert_eq!(code_name(b"x"), "Unknown");
    }

    #[test]
    fn a_refusal_counts_at_once_and_a_dropped_body_as_canceled() {
        let metrics = GrpcMetrics::default();
        let refused = axum::http::Response::builder()
            .header("grpc-status", "8")
            .body(Body::empty())
            .expect("response");
        drop(metrics.start("/etcdserverpb.KV/Put").finish(refused));
        let streaming = metrics
            .start("/etcdserverpb.KV/Range")
            .finish(Response::new(Body::empty()));
        drop(streaming);
        let get = |method, code| {
            let labels = HandledLabels {
                grpc_service: "etcdserverpb.KV",
                grpc_method: method,
                grpc_code: code,
            };
            metrics.handled.get(&labels).map(|c| c.get())
        };
        assert_eq!(get("Put", "ResourceExhausted"), Some(1));
        assert_eq!(get("Range", "Canceled"), Some(1));
    }
}
