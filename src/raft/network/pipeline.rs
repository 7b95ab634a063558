//! Pipelined appends on the replication lane (the leader's half): openraft's replication task
//! hands [`stream`] a stream of AppendEntries requests, each yielded as soon as new entries are
//! submitted to the leader's log; this sends each one as it comes, without waiting for the
//! answers to those before it, and yields the answers in the requests' order.
//!
//! The follower's half is `peer/append_stream.rs`: it feeds one link's appends, in the order they
//! arrive, into `Raft::stream_append`, which takes the next one while the previous one is being
//! flushed. Requests reach it in the order they were sent: one connection, each frame written
//! whole before the next (`Link::send`).
//!
//! Limits: at most `APPENDS_IN_FLIGHT_MAX` appends and about `APPEND_PIPELINE_BYTES_MAX` bytes
//! in flight (a further append is sent only while less than that is), each answered within its
//! own timeout (`append_timeout`). The stream ends at the first error, at the first refusal
//! (conflict, higher vote) and after a request cut to fit (`cut_to_fit`): openraft then starts
//! a new one from what was acknowledged.

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use openraft::base::BoxFuture;
use openraft::base::BoxStream;
use openraft::errors::NetworkError;
use openraft::errors::RPCError;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::StreamAppendError;
use openraft::raft::StreamAppendResult;

use super::append_timeout;
use super::cut_to_fit;
use super::link_error_to_rpc;
use crate::peer::link::Link;
use crate::peer::link::LinkError;
use crate::peer::wire::Rpc;
use crate::raft::types::LogId;
use crate::raft::types::NodeId;
use crate::raft::types::TypeConfig;

/// Appends one replication stream keeps in flight at most.
pub const APPENDS_IN_FLIGHT_MAX: usize = 8;
/// A further append is sent only while fewer request bytes than this are in flight (one large
/// catch-up append is sent alone).
pub const APPEND_PIPELINE_BYTES_MAX: usize = 4 << 20;

type Item = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// An answered append: what it carried, and the answer.
struct Answered {
    bytes: usize,
    prev: Option<LogId>,
    last: Option<LogId>,
    /// The last entry sent when the request was cut to fit.
    cut_at: Option<LogId>,
    answer: Result<AppendEntriesResponse<TypeConfig>, LinkError>,
}

struct Pipeline<S> {
    link: Arc<Link>,
    target: NodeId,
    option: RPCOption,
    input: S,
    /// Nothing more is sent: the input ended, or a request was cut to fit.
    sending_done: bool,
    /// An error was yielded: the stream ends.
    ended: bool,
    in_flight: FuturesOrdered<BoxFuture<'static, Answered>>,
    bytes_in_flight: usize,
}

/// The answers to `input`'s appends, sent to `target` over `link`, in order.
pub fn stream<'s, S>(
    link: Arc<Link>,
    target: NodeId,
    input: S,
    option: RPCOption,
) -> BoxStream<'s, Item>
where
    S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    let pipeline = Pipeline {
        link,
        target,
        option,
        input,
        sending_done: false,
        ended: false,
        in_flight: FuturesOrdered::new(),
        bytes_in_flight: 0,
    };
    Box::pin(futures::stream::unfold(pipeline, Pipeline::next))
}

impl<S> Pipeline<S>
where
    S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    async fn next(mut self) -> Option<(Item, Self)> {
        loop {
            if self.ended {
                return None;
            }
            let may_send = !self.sending_done
                && self.in_flight.len() < APPENDS_IN_FLIGHT_MAX
                && self.bytes_in_flight < APPEND_PIPELINE_BYTES_MAX;
            if self.in_flight.is_empty() {
                if !may_send {
                    return None;
                }
                let next = self.input.next().await;
                if let Err(e) = self.send(next).await {
                    self.ended = true;
                    return Some((Err(e), self));
                }
                continue;
            }
            // An answer that has come is handed on before another request is taken. Both
            // futures are cancel-safe: an unfinished `next` leaves its request in the stream.
            tokio::select! {
                biased;
                answered = self.in_flight.next() => {
                    let Some(answered) = answered else { continue };
                    self.bytes_in_flight -= answered.bytes;
                    let item = self.item(answered);
                    if !matches!(item, Ok(Ok(_))) {
                        self.ended = true;
                    }
                    return Some((item, self));
                }
                next = self.input.next(), if may_send => {
                    if let Err(e) = self.send(next).await {
                        self.ended = true;
                        return Some((Err(e), self));
                    }
                }
            }
        }
    }

    /// Sends the next request (`None`: the input ended).
    async fn send(
        &mut self,
        next: Option<AppendEntriesRequest<TypeConfig>>,
    ) -> Result<(), RPCError<TypeConfig>> {
        let Some(req) = next else {
            self.sending_done = true;
            return Ok(());
        };
        let prev = req.prev_log_id;
        let last = req.entries.last().map(|e| e.log_id).or(prev);
        let entries = req.entries.len();
        let (body, cut_at) =
            cut_to_fit(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if let Some(last_sent) = cut_at {
            // The rest of this request's entries go in the next stream, which openraft starts
            // right after the last entry acknowledged (see `Answered::cut_at`).
            tracing::debug!(target = self.target, entries, last_sent = %last_sent,
                "append over {} bytes: sent a prefix", crate::limits::APPEND_BYTES_MAX);
            self.sending_done = true;
        }
        let timeout = append_timeout(self.option.hard_ttl(), body.len());
        let sent = self
            .link
            .send(Rpc::Append, &body, timeout)
            .await
            .map_err(|e| link_error_to_rpc(self.target, e))?;
        let bytes = sent.request_bytes();
        self.bytes_in_flight += bytes;
        self.in_flight.push_back(Box::pin(async move {
            Answered {
                bytes,
                prev,
                last,
                cut_at,
                answer: sent.decoded().await,
            }
        }));
        Ok(())
    }

    fn item(&self, answered: Answered) -> Item {
        let answer = answered
            .answer
            .map_err(|e| link_error_to_rpc(self.target, e))?;
        Ok(match answer {
            // Cut to fit: only the prefix up to `cut_at` was sent, so only it is acknowledged.
            AppendEntriesResponse::Success => Ok(answered.cut_at.or(answered.last)),
            AppendEntriesResponse::PartialSuccess(matched) => Ok(matched),
            AppendEntriesResponse::Conflict => match answered.prev {
                Some(prev) => Err(StreamAppendError::Conflict(prev)),
                None => {
                    return Err(RPCError::Network(NetworkError::from_string(
                        "the peer answered Conflict to an append that starts the log",
                    )));
                }
            },
            AppendEntriesResponse::HigherVote(vote) => Err(StreamAppendError::HigherVote(vote)),
        })
    }
}
