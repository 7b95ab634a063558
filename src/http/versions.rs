//! The HTTP API's multi-version powers, curl-friendly (README, "Revisions, compare-and-swap,
//! listing"): compare-and-swap with `If-Match` / `If-None-Match` on `/db/<key>` writes, reads of
//! past revisions (`?revision=`), and listing by prefix with a cursor (`GET /db?prefix=`).
//!
//! A guarded write is one etcd txn in the log: compare the key's mod revision (or existence),
//! then the write, else a read of the key (so a `412` can say what the revision is now).

use axum::Json;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use serde_json::json;

use crate::app::App;
use crate::app::SharedApp;
use crate::error::KvError;
use crate::http::error::ApiError;
use crate::mvcc;
use crate::mvcc::Compare;
use crate::mvcc::CompareResult;
use crate::mvcc::CompareTarget;
use crate::mvcc::RequestOp;
use crate::mvcc::ResponseOp;
use crate::raft::types::Command;
use crate::raft::types::Outcome;

/// Keys in one listing page when `limit` is not given.
pub const LIST_LIMIT_DEFAULT: i64 = 100;
/// Most keys in one listing page.
pub const LIST_LIMIT_MAX: i64 = 1000;

/// What a write's `If-Match` / `If-None-Match` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// No header: an unconditional write.
    None,
    /// `If-Match: <rev>` (or `"<rev>"`, the ETag of a read): the key's mod revision is `rev`.
    ModRevision(i64),
    /// `If-Match: *`: the key exists.
    Exists,
    /// `If-None-Match: *`: the key does not exist (create only).
    Absent,
}

/// Parses the precondition headers of a write.
pub fn precondition(headers: &HeaderMap) -> Result<Precondition, KvError> {
    let text = |name: &str| -> Result<Option<String>, KvError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(|s| s.trim().to_string())
                    .map_err(|_| KvError::BadRequest(format!("{name} is not text")))
            })
            .transpose()
    };
    match (text("if-match")?, text("if-none-match")?) {
        (None, None) => Ok(Precondition::None),
        (Some(_), Some(_)) => Err(KvError::BadRequest(
            "give either If-Match or If-None-Match, not both".into(),
        )),
        (None, Some(v)) if v == "*" => Ok(Precondition::Absent),
        (None, Some(v)) => Err(KvError::BadRequest(format!(
            "If-None-Match on a write must be * (create only if absent), not {v:?}"
        ))),
        (Some(v), None) if v == "*" => Ok(Precondition::Exists),
        (Some(v), None) => {
            let rev = v.trim_matches('"');
            match rev.parse::<i64>() {
                Ok(rev) if rev > 0 => Ok(Precondition::ModRevision(rev)),
                _ => Err(KvError::BadRequest(format!(
                    "If-Match must be * or a revision (a read's X-Raft-Revision or ETag), not {v:?}"
                ))),
            }
        }
    }
}

/// The txn of a guarded write of `key`: the precondition, then `write`, else a read of `key`.
fn guarded_txn(key: &str, pre: Precondition, write: RequestOp) -> mvcc::TxnRequest {
    let key = Bytes::copy_from_slice(key.as_bytes());
    let (result, target) = match pre {
        Precondition::ModRevision(rev) => (CompareResult::Equal, CompareTarget::Mod(rev)),
        Precondition::Exists => (CompareResult::Greater, CompareTarget::Version(0)),
        Precondition::Absent | Precondition::None => {
            (CompareResult::Equal, CompareTarget::Create(0))
        }
    };
    let read = mvcc::RangeRequest {
        key: key.clone(),
        ..mvcc::RangeRequest::default()
    };
    mvcc::TxnRequest {
        compare: vec![Compare {
            key,
            range_end: Bytes::new(),
            result,
            target,
        }],
        success: vec![write],
        failure: vec![RequestOp::Range(read)],
    }
}

/// Writes `key` (a put of `value`, or a delete when `value` is `None`) if `pre` holds: `200` as
/// an unguarded write answers, else `412 precondition_failed` naming the key's revision now
/// (also in `X-Raft-Revision`; 0 when absent).
pub async fn guarded_write(
    app: &App,
    key: String,
    value: Option<Vec<u8>>,
    pre: Precondition,
    lease: i64,
) -> Result<Response, ApiError> {
    let cmd = match (pre, value) {
        (Precondition::None, Some(value)) if lease != 0 => Command::Put(mvcc::PutRequest {
            key: Bytes::from(key.into_bytes()),
            value: Bytes::from(value),
            lease,
            ..mvcc::PutRequest::default()
        }),
        (Precondition::None, Some(value)) => Command::Set { key, value },
        (Precondition::None, None) => Command::Delete { key },
        (pre, value) => {
            let k = Bytes::copy_from_slice(key.as_bytes());
            let write = match value {
                Some(v) => RequestOp::Put(mvcc::PutRequest {
                    key: k,
                    value: Bytes::from(v),
                    lease,
                    ..mvcc::PutRequest::default()
                }),
                None => RequestOp::DeleteRange(mvcc::DeleteRangeRequest {
                    key: k,
                    ..mvcc::DeleteRangeRequest::default()
                }),
            };
            Command::Txn(guarded_txn(&key, pre, write))
        }
    };
    let ok = crate::raft::forward::write(app, cmd).await?;
    match &ok.response.outcome {
        None | Some(Outcome::Put(_)) => Ok(crate::http::write_response(&ok)),
        Some(Outcome::Txn(t)) if t.succeeded => Ok(crate::http::write_response(&ok)),
        Some(Outcome::Txn(t)) => {
            let now = t
                .responses
                .iter()
                .find_map(|r| match r {
                    ResponseOp::Range(r) => Some(r.kvs.first().map_or(0, |kv| kv.mod_revision)),
                    _ => None,
                })
                .unwrap_or(0);
            let expected = match pre {
                Precondition::ModRevision(rev) => format!("mod revision {rev}"),
                Precondition::Exists => "an existing key".into(),
                Precondition::Absent | Precondition::None => "an absent key".into(),
            };
            let found = if now == 0 {
                "the key does not exist".to_string()
            } else {
                format!("its mod revision is {now}")
            };
            let body = json!({
                "error": format!("precondition failed: expected {expected}, but {found}; nothing was written"),
                "code": "precondition_failed",
                "revision": now,
            });
            let mut response = (StatusCode::PRECONDITION_FAILED, Json(body)).into_response();
            response
                .headers_mut()
                .insert(crate::http::X_RAFT_REVISION.clone(), HeaderValue::from(now));
            Ok(response)
        }
        Some(Outcome::Refused(e)) => Err(ApiError(KvError::Store(e.clone()))),
        Some(other) => Err(ApiError(KvError::Internal(format!(
            "unexpected answer to a guarded write: {other:?}"
        )))),
    }
}

/// The live `key` as of revision `revision` (history), after the read barrier of `level`.
pub async fn read_at(
    app: &App,
    key: &str,
    revision: i64,
    level: crate::raft::read::ReadLevel,
) -> Result<mvcc::KeyValue, KvError> {
    crate::raft::read::read_barrier(app, level).await?;
    let req = mvcc::RangeRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        revision,
        ..mvcc::RangeRequest::default()
    };
    let r = app.state_machine.range(&req).map_err(KvError::Store)?;
    r.kvs.into_iter().next().ok_or(KvError::NotFound)
}

/// `GET /db?prefix=&after=&limit=&revision=&level=`.
#[derive(Debug, Deserialize, Default)]
pub struct ListParams {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<i64>,
    #[serde(default)]
    revision: i64,
    level: Option<String>,
}

/// `GET /db?prefix=<p>&limit=<n>&after=<key>&revision=<r>`: one page of the keys under `p`
/// (after the cursor key, in key order), read at revision `r` (0: now), as JSON.
pub async fn list(
    State(app): State<SharedApp>,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    let level = crate::raft::read::ReadLevel::parse(params.level.as_deref().unwrap_or(""))?;
    let limit = params.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    if !(1..=LIST_LIMIT_MAX).contains(&limit) {
        return Err(ApiError(KvError::BadRequest(format!(
            "limit must be 1 to {LIST_LIMIT_MAX}, not {limit}"
        ))));
    }
    if params.revision < 0 {
        return Err(ApiError(KvError::BadRequest(
            "revision must be 0 (now) or positive".into(),
        )));
    }
    let prefix = params.prefix.as_bytes();
    let (mut start, end) = if prefix.is_empty() {
        (vec![0u8], vec![0u8])
    } else {
        (prefix.to_vec(), mvcc::prefix_end(prefix))
    };
    if let Some(after) = &params.after {
        // The smallest key after the cursor.
        let mut next = after.as_bytes().to_vec();
        next.push(0);
        if next > start {
            start = next;
        }
    }
    crate::raft::read::read_barrier(&app, level).await?;
    let req = mvcc::RangeRequest {
        key: Bytes::from(start),
        range_end: Bytes::from(end),
        limit,
        revision: params.revision,
        ..mvcc::RangeRequest::default()
    };
    let r = app.state_machine.range(&req).map_err(KvError::Store)?;
    let read_at = if params.revision > 0 {
        params.revision
    } else {
        r.revision
    };
    let next = r
        .more
        .then(|| {
            r.kvs
                .last()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        })
        .flatten();
    let kvs: Vec<Value> = r.kvs.iter().map(kv_json).collect();
    Ok(Json(json!({
        "revision": read_at,
        "kvs": kvs,
        "count": r.count,
        "more": r.more,
        "next": next,
    }))
    .into_response())
}

/// One listed key: its value as text (or `value_base64` when it is not UTF-8) and revisions.
pub(crate) fn kv_json(kv: &mvcc::KeyValue) -> Value {
    let mut v = json!({
        "key": String::from_utf8_lossy(&kv.key),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    });
    match std::str::from_utf8(&kv.value) {
        Ok(text) => v["value"] = json!(text),
        Err(_) => {
            v["value_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&kv.value))
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn preconditions_parse_like_etags() {
        assert_eq!(precondition(&headers(&[])), Ok(Precondition::None));
        assert_eq!(
            precondition(&headers(&[("if-match", "7")])),
            Ok(Precondition::ModRevision(7))
        );
        assert_eq!(
            precondition(&headers(&[("if-match", "\"7\"")])),
            Ok(Precondition::ModRevision(7))
        );
        assert_eq!(
            precondition(&headers(&[("if-match", "*")])),
            Ok(Precondition::Exists)
        );
        assert_eq!(
            precondition(&headers(&[("if-none-match", "*")])),
            Ok(Precondition::Absent)
        );
        for bad in [
            &[("if-match", "0")][..],
            &[("if-match", "x")],
            &[("if-none-match", "3")],
            &[("if-match", "3"), ("if-none-match", "*")],
        ] {
            assert!(
                matches!(precondition(&headers(bad)), Err(KvError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }
}
