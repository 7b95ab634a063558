//! HTTP to the nodes, the way a user with curl would: every request has a timeout and only
//! ever goes to 127.0.0.1.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use super::{CURL_CONTENT_TYPE, Cluster};

/// Read consistency of a GET.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// No query parameter: the product's default, linearizable.
    Linearizable,
    /// `?level=stale`: answered from the local replica.
    Stale,
}

impl Level {
    pub(super) fn query(self) -> &'static str {
        match self {
            Level::Linearizable => "",
            Level::Stale => "?level=stale",
        }
    }
}

/// One HTTP answer, with what was asked (for messages) and how long it took.
#[derive(Debug, Clone)]
pub struct Resp {
    pub what: String,
    pub status: u16,
    pub body: String,
    pub elapsed: Duration,
    /// Response headers (names lower-case).
    pub headers: Vec<(String, String)>,
}

impl Resp {
    /// The value of response header `name` (lower-case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics (showing the body) when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {:?}", self.what, self.body))
    }

    /// Asserts the status code.
    pub fn expect_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status, status,
            "{}: expected HTTP {status}, got {} with body {:?}",
            self.what, self.status, self.body
        );
        self
    }

    /// Asserts 200 and the exact body.
    pub fn expect_body(&self, body: &str) -> &Self {
        self.expect_status(200);
        assert_eq!(self.body, body, "{}: unexpected body", self.what);
        self
    }

    /// Asserts 200 and a JSON body equal to `expected`.
    pub fn expect_json(&self, expected: &Value) -> &Self {
        self.expect_status(200);
        assert_eq!(
            &self.json(),
            expected,
            "{}: unexpected JSON body",
            self.what
        );
        self
    }

    /// The `code` field of a JSON error body, if any.
    pub fn error_code(&self) -> Option<String> {
        let v: Value = serde_json::from_str(&self.body).ok()?;
        v.get("code")?.as_str().map(str::to_owned)
    }

    /// Asserts the status is one of `statuses` and the body is a JSON error
    /// `{"error": "<message>", "code": "<code>"}` whose code is one of `codes` (any if empty).
    pub fn expect_error(&self, statuses: &[u16], codes: &[&str]) -> &Self {
        assert!(
            statuses.contains(&self.status),
            "{}: expected HTTP {statuses:?}, got {} with body {:?}",
            self.what,
            self.status,
            self.body
        );
        let v = self.json();
        let msg = v.get("error").and_then(Value::as_str);
        assert!(
            msg.is_some_and(|m| !m.is_empty()),
            "{}: error body lacks a non-empty \"error\" string: {}",
            self.what,
            self.body
        );
        if !codes.is_empty() {
            let code = v.get("code").and_then(Value::as_str).unwrap_or("<missing>");
            assert!(
                codes.contains(&code),
                "{}: expected error code {codes:?}, got {code:?} (body {})",
                self.what,
                self.body
            );
        }
        self
    }
}

impl Cluster {
    pub fn url(&self, i: usize, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.nodes[i].http_addr())
    }

    /// Sends one request to node `i`; `Err` on transport failure (refused, timeout, reset).
    pub fn try_request(
        &self,
        i: usize,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Resp, String> {
        self.try_request_with(i, method, path, &[], body)
    }

    /// `try_request` with extra request headers (`curl -H 'name: value'`).
    pub fn try_request_with(
        &self,
        i: usize,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Resp, String> {
        let what = format!("{method} {path} {headers:?} on node {i}");
        let mut req = self.http.request(method, self.url(i, path));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some((bytes, content_type)) = body {
            req = req.header("content-type", content_type).body(bytes);
        }
        let t0 = Instant::now();
        let r = req.send().map_err(|e| format!("{what}: {e}"))?;
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = r.text().map_err(|e| format!("{what}: reading body: {e}"))?;
        Ok(Resp {
            what,
            status,
            body,
            elapsed: t0.elapsed(),
            headers,
        })
    }

    /// Like `try_request_with` but panics on transport failure.
    pub fn request_with(
        &self,
        i: usize,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(Vec<u8>, &str)>,
    ) -> Resp {
        self.try_request_with(i, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `try_request` but panics on transport failure (every request must get an answer).
    pub fn request(
        &self,
        i: usize,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Resp {
        self.try_request(i, method, path, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `curl -XPOST <node>/db/<key> -d '<value>'` (raftd API; key must be URL-safe).
    pub fn put_db(&self, i: usize, key: &str, value: &str) -> Resp {
        self.post_raw(i, &format!("/db/{key}"), value.as_bytes())
    }

    /// `curl <node>/db/<key>[?level=stale]`.
    pub fn get_db(&self, i: usize, key: &str, level: Level) -> Resp {
        self.request(i, Method::GET, &format!("/db/{key}{}", level.query()), None)
    }

    /// `curl -XDELETE <node>/db/<key>`.
    pub fn delete_db(&self, i: usize, key: &str) -> Resp {
        self.request(i, Method::DELETE, &format!("/db/{key}"), None)
    }

    /// `curl -XPOST <node>/key -d '<json>'` (hraftd API), sent with curl's content type.
    pub fn post_key(&self, i: usize, kv: &Value) -> Resp {
        self.post_raw(i, "/key", kv.to_string().as_bytes())
    }

    /// `curl <node>/key/<key>[?level=stale]`.
    pub fn get_key(&self, i: usize, key: &str, level: Level) -> Resp {
        self.request(
            i,
            Method::GET,
            &format!("/key/{key}{}", level.query()),
            None,
        )
    }

    /// `curl -XDELETE <node>/key/<key>`.
    pub fn delete_key(&self, i: usize, key: &str) -> Resp {
        self.request(i, Method::DELETE, &format!("/key/{key}"), None)
    }

    /// POSTs raw bytes as `curl -d` would (content type application/x-www-form-urlencoded).
    pub fn post_raw(&self, i: usize, path: &str, body: &[u8]) -> Resp {
        self.request(
            i,
            Method::POST,
            path,
            Some((body.to_vec(), CURL_CONTENT_TYPE)),
        )
    }

    /// POSTs JSON with `content-type: application/json` (admin calls: /join, /remove).
    pub fn post_json(&self, i: usize, path: &str, body: &Value) -> Resp {
        self.request(
            i,
            Method::POST,
            path,
            Some((body.to_string().into_bytes(), "application/json")),
        )
    }

    /// `GET /status` of node `i` as JSON; `None` if it does not answer 200 with JSON.
    pub fn try_status(&self, i: usize) -> Option<Value> {
        let r = self.try_request(i, Method::GET, "/status", None).ok()?;
        if r.status != 200 {
            return None;
        }
        serde_json::from_str(&r.body).ok()
    }

    /// `GET /status` of node `i`; panics if it does not answer.
    pub fn status(&self, i: usize) -> Value {
        let r = self.request(i, Method::GET, "/status", None);
        r.expect_status(200);
        r.json()
    }

    /// The unlabelled sample `name` (a counter's with its `_total`) in node `i`'s
    /// `GET /metrics`; panics if it is missing.
    pub fn metric(&self, i: usize, name: &str) -> u64 {
        let r = self.request(i, Method::GET, "/metrics", None);
        r.expect_status(200);
        r.body
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in node {i}'s metrics"))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }
}
