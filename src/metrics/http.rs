//! HTTP request metrics: an axum middleware ([`track`]) counting every request of the HTTP API
//! by route template, method and status code (`raftkv_http_requests_total`), with a latency
//! histogram by route and method (`raftkv_http_request_duration_seconds`, until the response
//! head is ready); and the `GET /metrics` handler ([`scrape`]).
//!
//! Label cardinality is bounded: `route` is axum's `MatchedPath` (the template, e.g.
//! `/db/{*key}`, never the raw URL) or [`UNMATCHED`] for a request no route matched; `method` is
//! one of the standard methods or `other`; `code` is a status code. gRPC calls never pass here
//! (the dispatcher sends them to the etcd services, counted in `metrics::grpc`).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::extract::Request;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::Method;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;

use crate::app::SharedApp;
use crate::metrics::Metrics;

/// The `route` of a request that matched no route (404s of any path).
pub const UNMATCHED: &str = "unmatched";

/// OpenMetrics' text format, what prometheus-client writes (Prometheus scrapes it natively).
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: &'static str,
}

/// Latency buckets: 0.25 ms to ~8 s, doubling.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

#[derive(Clone, Debug)]
pub struct HttpMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_buckets),
        }
    }
}

/// The `method` label: a standard method's name, else `other`.
pub fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        _ => "other",
    }
}

/// The middleware: add with `Router::layer` (it then sees the `MatchedPath` of every route and
/// runs for the fallbacks too).
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_string();
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let took = started.elapsed().as_secs_f64();
    let code = response.status().as_u16();
    let labels = RouteLabels { route, method };
    metrics.http.duration.get_or_create(&labels).observe(took);
    let labels = RequestLabels {
        route: labels.route,
        method,
        code,
    };
    metrics.http.requests.get_or_create(&labels).inc();
    response
}

/// `GET /metrics`: this node's metrics in the OpenMetrics text format. No auth (like etcd's);
/// encoded off the executor (the collectors read `/proc` and walk the data dir).
pub async fn scrape(State(app): State<SharedApp>) -> Response {
    let metrics = app.metrics.clone();
    match tokio::task::spawn_blocking(move || metrics.encode()).await {
        Ok(Ok(text)) => {
            let mut response = text.into_response();
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS),
            );
            response
        }
        // Encoding writes to a String: it cannot fail short of a bug in a collector.
        Ok(Err(_)) | Err(_) => {
            tracing::warn!("metrics encoding failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics encoding failed\n",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn routes_are_labelled_by_template_and_unknown_paths_by_a_placeholder() {
        let metrics = Arc::new(Metrics::unregistered());
        let router = Router::new()
            .route("/db/{*key}", get(|| async { "v" }))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(axum::middleware::from_fn_with_state(metrics.clone(), track));
        let paths = ["/db/a", "/db/b/c", "/nope/1", "/nope/2", "/x?y=z", "/db/a"];
        for path in paths {
            let request = Request::builder()
                .uri(path)
                .body(Body::empty())
                .expect("request");
            router.clone().oneshot(request).await.expect("response");
        }
        let request = Request::builder()
            .method("BREW")
            .uri("/db/a")
            .body(Body::empty())
            .expect("request");
        router.clone().oneshot(request).await.expect("response");

        let count = |route: &str, method, code| {
            let labels = RequestLabels {
                route: route.to_string(),
                method,
                code,
            };
            metrics.http.requests.get(&labels).map(|c| c.get())
        };
        assert_eq!(count("/db/{*key}", "GET", 200), Some(3));
        assert_eq!(count(UNMATCHED, "GET", 404), Some(3));
        // An unknown method on a known route: 405, method `other`.
        assert_eq!(count("/db/{*key}", "other", 405), Some(1));
        // Seven requests to six different URLs: three series.
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("requests", "", metrics.http.requests.clone());
        registry.register("latency", "", metrics.http.duration.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        let series = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(series("requests_total{"), 3, "{text}");
        assert_eq!(series("latency_count{"), 3, "{text}");
    }
}
