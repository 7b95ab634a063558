//! The live cluster page: `GET /` and `GET /ui` serve one self-contained HTML page (inline CSS
//! and JS, compiled in from `ui/cluster.html`), and `GET /status/cluster` the merged view it
//! polls every second (built by `service::status`).
//!
//! What it owns: the page's bytes and the headers it is served with. What it does not: how the
//! view is gathered (`service::status`), `/health` and `/metrics` (their own handlers).
//!
//! Invariant: the page loads nothing from anywhere and runs only its own inline script and
//! style: its Content-Security-Policy allows exactly those two blocks (by SHA-256), requests to
//! this origin, and nothing else.

use std::sync::OnceLock;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use base64::Engine;

use crate::app::SharedApp;
use crate::http::error::ApiError;
use crate::service::status::ClusterView;

/// The page, as served.
pub const PAGE: &str = include_str!("ui/cluster.html");

/// The text between the first `<open>` and the next `</close>` of `page` (an inline block).
fn inline_block<'a>(page: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = page.find(open)? + open.len();
    let len = page[start..].find(close)?;
    Some(&page[start..start + len])
}

/// CSP's `'sha256-…'` source of `text`.
fn sha256_source(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

/// The Content-Security-Policy of `page`: its one inline script and style block by hash, fetches
/// to this origin only, nothing else (no frames, forms, plugins, other origins).
pub fn content_security_policy(page: &str) -> String {
    let hash = |open, close| {
        inline_block(page, open, close).map_or_else(|| "'none'".to_string(), sha256_source)
    };
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash("<script>", "</script>"),
        hash("<style>", "</style>"),
    )
}

fn page_csp() -> &'static HeaderValue {
    static CSP: OnceLock<HeaderValue> = OnceLock::new();
    CSP.get_or_init(|| {
        HeaderValue::from_str(&content_security_policy(PAGE))
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
    })
}

/// `GET /` and `GET /ui`: the cluster page.
pub async fn page() -> Response {
    let mut response = PAGE.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CONTENT_SECURITY_POLICY, page_csp().clone());
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /status/cluster`: every member's status as this node gathers it (answers within the
/// per-member timeout even when members are down; `503 busy` past the views in flight limit).
pub async fn cluster_status(State(app): State<SharedApp>) -> Result<Response, ApiError> {
    let view: ClusterView = crate::service::status::cluster(&app).await?;
    let mut response = Json(view).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_exactly_the_inline_blocks() {
        let csp = content_security_policy(PAGE);
        let script = inline_block(PAGE, "<script>", "</script>").expect("an inline script");
        let style = inline_block(PAGE, "<style>", "</style>").expect("an inline style");
        assert!(
            csp.contains(&format!("script-src {};", sha256_source(script))),
            "{csp}"
        );
        assert!(
            csp.contains(&format!("style-src {};", sha256_source(style))),
            "{csp}"
        );
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        // A known vector: SHA-256 of "" is 47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=.
        assert_eq!(
            sha256_source(""),
            "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
        );
    }

    #[test]
    fn the_page_is_self_contained_and_never_builds_html_from_strings() {
        assert_eq!(PAGE.matches("<script").count(), 1, "one inline script");
        assert_eq!(PAGE.matches("<style").count(), 1, "one inline style");
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            " style=",
            " onclick=",
            " onload=",
            "src=\"http",
            "href=\"http",
            "@import",
        ] {
            assert!(!PAGE.contains(banned), "the page contains {banned:?}");
        }
        assert!(PAGE.lines().count() < 400, "the page stays small");
        for hook in [
            "id=\"leader\"",
            "id=\"members\"",
            "id=\"health\"",
            "id=\"changes\"",
            "data-member",
            "data-role",
            "data-reachable",
        ] {
            assert!(PAGE.contains(hook), "the page carries the test hook {hook}");
        }
    }
}
