//! hraftd's API: `POST /key` with a JSON object of string pairs (set atomically, one log entry);
//! `GET /key/<k>` → `{"<k>":"<v>"}`. (`DELETE /key/<k>` shares raftd's handler.)

use axum::Json;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::Response;

use crate::app::SharedApp;
use crate::error::KvError;
use crate::http::ReadParams;
use crate::http::error::ApiError;
use crate::http::read_limited;
use crate::http::read_value;
use crate::http::validate_key;
use crate::http::write_response;
use crate::raft::types::Command;

/// Most pairs accepted in one `POST /key`.
const PAIRS_PER_REQUEST_MAX: usize = crate::limits::SET_MANY_PAIRS_MAX;

/// Parses hraftd's body: a JSON object whose values are all strings.
pub fn parse_pairs(body: &[u8]) -> Result<Vec<(String, Vec<u8>)>, KvError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| KvError::BadRequest(format!("invalid JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(KvError::BadRequest(
            "body must be a JSON object like {\"key\":\"value\"}".into(),
        ));
    };
    if map.is_empty() {
        return Err(KvError::BadRequest("body must set at least one key".into()));
    }
    if map.len() > PAIRS_PER_REQUEST_MAX {
        return Err(KvError::BadRequest(format!(
            "at most {PAIRS_PER_REQUEST_MAX} keys per request"
        )));
    }
    map.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => {
                validate_key(&k)?;
                Ok((k, s.into_bytes()))
            }
            other => Err(KvError::BadRequest(format!(
                "value of {k:?} must be a string, got {other}"
            ))),
        })
        .collect()
}

/// `POST /key`.
pub async fn set(State(app): State<SharedApp>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_limited(body, app.max_value_bytes, "request body").await?;
    let pairs = parse_pairs(&bytes)?;
    let ok = crate::raft::forward::write(&app, Command::SetMany { pairs }).await?;
    Ok(write_response(&ok))
}

/// `GET /key/<k>`.
pub async fn get(
    State(app): State<SharedApp>,
    Path(key): Path<String>,
    Query(params): Query<ReadParams>,
) -> Result<Response, ApiError> {
    let kv = read_value(&app, &key, &params).await?;
    let text = String::from_utf8_lossy(&kv.value).into_owned();
    let mut response = Json(serde_json::json!({ key: text })).into_response();
    crate::http::revision_headers(&mut response, kv.mod_revision);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hraftd_bodies() {
        let pairs = parse_pairs(br#"{"user1":"batman","user2":"robin"}"#).unwrap();
        assert_eq!(pairs.len(), 2);
        assert!(matches!(
            parse_pairs(b"{not json"),
            Err(KvError::BadRequest(_))
        ));
        assert!(matches!(parse_pairs(b"[1,2]"), Err(KvError::BadRequest(_))));
        assert!(matches!(
            parse_pairs(br#"{"a":1}"#),
            Err(KvError::BadRequest(_))
        ));
        assert!(matches!(
            parse_pairs(br#"{"":"x"}"#),
            Err(KvError::BadRequest(_))
        ));
        assert!(matches!(parse_pairs(b"{}"), Err(KvError::BadRequest(_))));
    }
}
