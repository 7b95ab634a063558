//! Pipelined appends (the follower's half; the leader's is `raft/network/pipeline.rs`): one
//! link's appends go, in the order they arrived, into `Raft::stream_append`, which hands the
//! next one to the Raft core while the previous one is being flushed, and answers them in that
//! order once each is flushed. A task per link feeds the stream and writes each answer with its
//! request's id.
//!
//! Limits: at most `APPENDS_PIPELINED_MAX` appends of a link are in the stream at once (the
//! link is not read further until one is answered; each also holds the link's request and byte
//! permits until then).
//!
//! After an append is refused (conflict, higher vote) or the Raft core stops, openraft ends the
//! stream: the appends queued behind it are answered with an error (the leader's stream ended
//! at the refusal and no longer waits for them) and the next append starts a new stream.

use std::collections::VecDeque;

use futures::StreamExt;
use openraft::base::BoxStream;
use openraft::errors::Fatal;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::StreamAppendResult;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Writer;
use super::reply;
use crate::app::SharedApp;
use crate::peer::rpc;
use crate::peer::wire::Status;
use crate::raft::types::TypeConfig;
use crate::serve::ServeLimits;

/// Appends of one link in the Raft core's stream at once (a leader keeps at most
/// `raft::network::pipeline::APPENDS_IN_FLIGHT_MAX` in flight).
const APPENDS_PIPELINED_MAX: usize = 16;

/// What the link's reader hands over: an append, its request id, and the permits it holds until
/// it is answered.
pub(super) struct Queued {
    pub(super) id: u64,
    pub(super) req: AppendEntriesRequest<TypeConfig>,
    pub(super) permits: Box<dyn Send + Sync>,
}

/// An append in the stream: its request id, and the permits it holds until it is answered.
struct Waiting {
    id: u64,
    _permits: Box<dyn Send + Sync>,
}

type Output = BoxStream<'static, Result<StreamAppendResult<TypeConfig>, Fatal<TypeConfig>>>;

/// The open stream into the Raft core.
struct Open {
    input: mpsc::Sender<AppendEntriesRequest<TypeConfig>>,
    output: Output,
}

/// Starts the task that feeds one link's appends into the Raft core; it ends when the sender
/// is dropped (the link ended) or an answer cannot be written.
pub(super) fn start(
    app: SharedApp,
    writer: Writer,
    closing: CancellationToken,
    limits: ServeLimits,
) -> mpsc::Sender<Queued> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(run(app, rx, writer, closing, limits));
    tx
}

async fn run(
    app: SharedApp,
    mut queued: mpsc::Receiver<Queued>,
    writer: Writer,
    closing: CancellationToken,
    limits: ServeLimits,
) {
    let mut open: Option<Open> = None;
    // Appends in the stream, oldest first, awaiting their answers.
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    loop {
        let may_take = waiting.len() < APPENDS_PIPELINED_MAX;
        tokio::select! {
            biased;
            () = closing.cancelled() => return,
            answered = next_answer(&mut open), if !waiting.is_empty() => {
                let Some(front) = waiting.pop_front() else { continue };
                let (answer, ended) = match answered {
                    Some(Ok(result)) => {
                        let ended = result.is_err();
                        (rpc::encode::<_, String>(&Ok(AppendEntriesResponse::from(result))), ended)
                    }
                    Some(Err(fatal)) => (rpc::encode::<(), _>(&Err(fatal.to_string())), true),
                    None => (rpc::encode::<(), _>(&Err("the append stream ended".to_string())), true),
                };
                write(&writer, &closing, &limits, front.id, answer).await;
                if ended {
                    // Must drop the ended stream before another starts: the appends still
                    // queued in it are not answered by it.
                    open = None;
                    for dropped in waiting.drain(..) {
                        let why = "an earlier append on this link was refused; this one was dropped";
                        let answer = rpc::encode::<(), _>(&Err(why.to_string()));
                        write(&writer, &closing, &limits, dropped.id, answer).await;
                    }
                }
            }
            next = queued.recv(), if may_take => {
                let Some(Queued { id, req, permits }) = next else { return };
                let stream = open.get_or_insert_with(|| open_stream(&app));
                // Never blocks: the channel holds `APPENDS_PIPELINED_MAX` and at most that many
                // appends are in the stream (`may_take`).
                // Must submit each append to the stream in the order it arrived on the link.
                if stream.input.try_send(req).is_err() {
                    tracing::warn!("peer link: the append stream refused an append; closing the link");
                    closing.cancel();
                    return;
                }
                waiting.push_back(Waiting { id, _permits: permits });
            }
        }
    }
}

fn open_stream(app: &SharedApp) -> Open {
    let (input, rx) = mpsc::channel(APPENDS_PIPELINED_MAX);
    let output = app
        .raft
        .stream_append(tokio_stream::wrappers::ReceiverStream::new(rx));
    Open {
        input,
        output: Box::pin(output),
    }
}

async fn next_answer(
    open: &mut Option<Open>,
) -> Option<Result<StreamAppendResult<TypeConfig>, Fatal<TypeConfig>>> {
    match open {
        Some(open) => open.output.next().await,
        None => None,
    }
}

async fn write(
    writer: &Writer,
    closing: &CancellationToken,
    limits: &ServeLimits,
    id: u64,
    answer: Result<Vec<u8>, rpc::Refused>,
) {
    let answered = match answer {
        Ok(answer) => (Status::Ok, answer),
        Err((_, why)) => (Status::Refused, why.into_bytes()),
    };
    reply(writer, closing, limits, id, answered).await;
}
