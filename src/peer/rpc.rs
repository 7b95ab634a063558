//! The inbound peer RPCs, one function for both carriers: the peer links (`link_server.rs`) and
//! the HTTP routes (`server.rs`). A body is the RPC's postcard request; the answer is the
//! postcard `Result<T, String>` the sender decodes, or why the request was refused before it was
//! handled.
//!
//! Limits (all in `limits.rs`): a body is at most `RPC_BODY_BYTES_MAX` (checked by the carrier
//! before it gets here), a forwarded batch at most `BATCH_COMMANDS_MAX` commands and
//! `BATCH_BYTES_MAX` bytes; every forwarded command is checked again before it is proposed
//! (`raft::forward::propose_many`).

use axum::http::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::app::App;
use crate::error::KvError;
use crate::limits::BATCH_BYTES_MAX;
use crate::limits::BATCH_COMMANDS_MAX;
use crate::peer::wire::Rpc;
use crate::raft::forward::WriteOk;
use crate::raft::types::Command;

/// A request refused before it was handled: the status the HTTP routes answer, and why.
pub type Refused = (StatusCode, String);

/// Handles `rpc` with `body`; answers the encoded `Result<T, String>`.
pub async fn handle(app: &App, rpc: Rpc, body: &[u8]) -> Result<Vec<u8>, Refused> {
    match rpc {
        Rpc::Append => {
            let req = decode(body)?;
            encode(
                &app.raft
                    .append_entries(req)
                    .await
                    .map_err(|e| e.to_string()),
            )
        }
        Rpc::Vote => {
            let req = decode(body)?;
            encode(&app.raft.vote(req).await.map_err(|e| e.to_string()))
        }
        Rpc::PreVote => {
            let req = decode(body)?;
            encode(&app.raft.pre_vote(req).await.map_err(|e| e.to_string()))
        }
        Rpc::TransferLeader => {
            let req = decode(body)?;
            let result = app.raft.handle_transfer_leader(req).await;
            encode(&result.map_err(|e| e.to_string()))
        }
        Rpc::WriteBatch => write_batch(app, body).await,
        Rpc::ReadIndex => {
            let _in_flight = app.lifecycle.track();
            let result = crate::raft::read::leader_read_index(app).await;
            encode::<_, String>(&Ok(result))
        }
        Rpc::Lease => {
            let _in_flight = app.lifecycle.track();
            let ask: crate::service::lease::LeaseAsk = decode(body)?;
            let result = crate::service::lease::answer(app, ask).await;
            encode::<_, String>(&Ok(result))
        }
        // A chunk continues its link's transfer: handled in order by the link (link_server.rs).
        Rpc::Snapshot => Err((
            StatusCode::BAD_REQUEST,
            "snapshot chunks are taken on a peer link only".into(),
        )),
    }
}

/// A write batch on the leader: propose every command in one message to the Raft core (one log
/// append for the batch), never forward again; answers in the same order. A batch over the
/// count or byte cap is refused whole; an invalid command is refused alone (`propose_many`).
async fn write_batch(app: &App, body: &[u8]) -> Result<Vec<u8>, Refused> {
    // A graceful shutdown must wait for this batch before it stops Raft (shutdown.rs).
    let _in_flight = app.lifecycle.track();
    if body.len() > BATCH_BYTES_MAX {
        let err: Result<(), String> = Err(format!(
            "batch of {} bytes is over the limit of {BATCH_BYTES_MAX}",
            body.len()
        ));
        return encode(&err);
    }
    let cmds: Vec<Command> = decode(body)?;
    if cmds.len() > BATCH_COMMANDS_MAX {
        let err: Result<(), String> = Err(format!(
            "batch of {} commands is over the limit of {BATCH_COMMANDS_MAX}",
            cmds.len()
        ));
        return encode(&err);
    }
    let results = crate::raft::forward::propose_many(app, cmds).await;
    encode::<Vec<Result<WriteOk, KvError>>, String>(&Ok(results))
}

/// Decodes a postcard request body (400 when it does not decode).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Refused> {
    postcard::from_bytes(bytes).map_err(|e| (StatusCode::BAD_REQUEST, format!("decode body: {e}")))
}

/// Encodes an answer (500 in the unlikely case it cannot be).
pub fn encode<T: Serialize, E: Serialize>(result: &Result<T, E>) -> Result<Vec<u8>, Refused> {
    postcard::to_stdvec(result)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("encode: {e}")))
}
