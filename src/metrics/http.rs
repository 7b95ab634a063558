//! HTTP request metrics: a tower layer ([`TrackLayer`]) counting every request of the HTTP API
//! by route template, method and status code (`raftkv_http_requests_total`), with a latency
//! histogram by route and method (`raftkv_http_request_duration_seconds`, until the response
//! head is ready); and the `GET /metrics` handler ([`scrape`]).
//!
//! Label cardinality is bounded: `route` is axum's `MatchedPath` (the template, e.g.
//! `/db/{*key}`, never the raw URL) or [`UNMATCHED`] for a request no route matched; `method` is
//! one of the standard methods or `other`; `code` is a status code. gRPC calls never pass here
//! (the dispatcher sends them to the etcd services, counted in `metrics::grpc`).

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::extract::Request;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::Method;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;
use tower::Layer;
use tower::Service;

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

/// The middleware: add with `Router::layer` (it then wraps every route, sees its `MatchedPath`,
/// and runs for the fallbacks too). A hand-written tower layer holding a `&'static` reference,
/// not `from_fn` with an `Arc` state: axum clones every route's service per request, and an
/// `Arc` clone there is an atomic read-modify-write on a cache line all worker threads share.
#[derive(Clone, Copy)]
pub struct TrackLayer {
    metrics: &'static Metrics,
}

impl TrackLayer {
    /// `metrics` lives as long as the process (the node's, see `http::router`).
    pub fn new(metrics: &'static Metrics) -> TrackLayer {
        TrackLayer { metrics }
    }
}

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            metrics: self.metrics,
        }
    }
}

/// [`TrackLayer`]'s service around one route.
#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    metrics: &'static Metrics,
}

impl<S> Service<Request> for Track<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or(UNMATCHED, MatchedPath::as_str)
            .to_string();
        let method = method_label(request.method());
        TrackFuture {
            inner: self.inner.call(request),
            metrics: self.metrics,
            labels: Some(RouteLabels { route, method }),
            started: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The route's future, counted when it answers (until the response head is ready).
    pub struct TrackFuture<F> {
        #[pin]
        inner: F,
        metrics: &'static Metrics,
        labels: Option<RouteLabels>,
        started: Instant,
    }
}

impl<F, E> Future for TrackFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some(labels)) = (&result, this.labels.take()) {
            let http = &this.metrics.http;
            let took = this.started.elapsed().as_secs_f64();
            http.duration.get_or_create(&labels).observe(took);
            let labels = RequestLabels {
                route: labels.route,
                method: labels.method,
                code: response.status().as_u16(),
            };
            http.requests.get_or_create(&labels).inc();
        }
        Poll::Ready(result)
    }
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
        let metrics: &'static Metrics = Box::leak(Box::new(Metrics::unregistered()));
        let router = Router::new()
            .route("/db/{*key}", get(|| async { "v" }))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(TrackLayer::new(metrics));
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
