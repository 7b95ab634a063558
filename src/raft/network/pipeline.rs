//! Appends on the replication lane (the leader's half): openraft's replication task hands
//! [`stream`] a stream of AppendEntries requests, each yielded as soon as there is something to
//! send; this sends them and yields the answers in the requests' order.
//!
//! At most one request that carries entries is in flight; only entry-less requests (openraft's
//! way to carry a new commit index when no entries are waiting) may be overtaken by the next
//! request. Without that, a write's append to a follower waited behind the round trip of the
//! previous write's commit notice (seen in a syscall trace of 1-client writes). Keeping
//! entry-carrying appends one at a time keeps the follower's fsyncs as few and as full as
//! before: on this 2-vCPU one-disk machine, several appends in flight measured slower
//! (BENCHMARKS.md, "Pipelined appends: built, measured, reverted").
//!
//! A request without entries yields once before it is sent, so the leader's answer to the
//! client goes out before the commit notice that the same commit produced.
//!
//! Heartbeats take the same path on their own lane (openraft's heartbeat worker streams them too):
//! they carry no entries, so up to `APPENDS_IN_FLIGHT_MAX` of them may be unanswered at once.
//!
//! The follower answers one link's appends in the order they arrive, one at a time
//! (`peer/link_server.rs`), and requests reach it in the order they were sent: one connection,
//! each frame written whole before the next (`Link::send`).
//!
//! Limits: at most `APPENDS_IN_FLIGHT_MAX` requests in flight, at most one of them with entries
//! (so at most one large request), each answered within its own timeout (`append_timeout`). The stream ends at the
//! first error, at the first refusal (conflict, higher vote) and after a request cut to fit
//! (`cut_to_fit`): openraft then starts a new one from what was acknowledged.

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
use super::encode_append;
use super::link_error_to_rpc;
use crate::peer::link::Link;
use crate::peer::link::LinkError;
use crate::peer::wire::Rpc;
use crate::raft::types::LogId;
use crate::raft::types::NodeId;
use crate::raft::types::TypeConfig;

/// Requests one replication stream keeps in flight at most (one of them with entries).
pub const APPENDS_IN_FLIGHT_MAX: usize = 4;

type Item = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// An answered append: what it carried, and the answer.
struct Answered {
    /// The request carried entries.
    entries: bool,
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
    /// Requests in flight that carry entries (0 or 1).
    entries_in_flight: usize,
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
        entries_in_flight: 0,
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
            // Must not take a request while one with entries is unanswered: the next one would
            // carry only the entries submitted so far (smaller appends, more follower fsyncs).
            let may_send = !self.sending_done
                && self.entries_in_flight == 0
                && self.in_flight.len() < APPENDS_IN_FLIGHT_MAX;
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
                    self.entries_in_flight -= usize::from(answered.entries);
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
        let carries = !req.entries.is_empty();
        if !carries {
            // A commit notice lets the tasks the same commit woke run first (the state machine
            // applying the entry, then the client's answer): sent first, it delayed a lone
            // write's answer by its own send (commit → answer 96 → 61 µs in bench/timeline.sh;
            // 1-client writes p50 593 → 578 µs). Followers learn the commit a few µs later.
            tokio::task::yield_now().await;
        }
        let (body, cut_at) = encode_append(self.target, req)?;
        if cut_at.is_some() {
            // The rest of this request's entries go in the next stream, which openraft starts
            // right after the last entry acknowledged (see `Answered::cut_at`).
            self.sending_done = true;
        }
        let timeout = append_timeout(self.option.hard_ttl(), body.len());
        let sent = self
            .link
            .send(Rpc::Append, &body, timeout)
            .await
            .map_err(|e| link_error_to_rpc(self.target, e))?;
        self.entries_in_flight += usize::from(carries);
        self.in_flight.push_back(Box::pin(async move {
            Answered {
                entries: carries,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use openraft::impls::leader_id_adv::LeaderId;
    use openraft::network::RPCOption;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    use super::*;
    use crate::peer::link::read_frame;
    use crate::peer::link::testing::link_to;
    use crate::peer::link::testing::silent_peer;
    use crate::peer::wire;
    use crate::raft::types::Command;
    use crate::raft::types::Entry;
    use crate::raft::types::Vote;

    fn id(index: u64) -> LogId {
        LogId::new(
            LeaderId {
                term: 2,
                node_id: 1,
            },
            index,
        )
    }

    /// An append after `prev` with entries `prev+1 ..= last` (none when `last == prev`).
    fn append(prev: u64, last: u64, commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(id(prev)),
            leader_commit: Some(id(commit)),
            entries: (prev + 1..=last)
                .map(|i| Entry {
                    log_id: id(i),
                    payload: openraft::EntryPayload::Normal(Command::Set {
                        key: format!("k{i}"),
                        value: vec![1; 8],
                    }),
                })
                .collect(),
        }
    }

    /// The next request on the link: its id and the append it carries.
    async fn next_append(tcp: &mut TcpStream) -> (u64, AppendEntriesRequest<TypeConfig>) {
        let frame = tokio::time::timeout(
            Duration::from_secs(5),
            read_frame(tcp, wire::FRAME_BYTES_MAX),
        )
        .await
        .expect("a request in time")
        .expect("a frame");
        let (req_id, rpc, body) = wire::split(&frame).expect("split");
        assert_eq!(rpc, Rpc::Append as u8);
        (req_id, postcard::from_bytes(body).expect("an append"))
    }

    async fn answer_success(tcp: &mut TcpStream, req_id: u64) {
        let body = postcard::to_stdvec(&Ok::<_, String>(
            AppendEntriesResponse::<TypeConfig>::Success,
        ))
        .expect("encode");
        tcp.write_all(&wire::head(body.len(), req_id, wire::Status::Ok as u8))
            .await
            .expect("head");
        tcp.write_all(&body).await.expect("body");
    }

    /// Nothing more arrives on the link for a while.
    async fn assert_quiet(tcp: &mut TcpStream, why: &str) {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(300), tcp.peek(&mut byte)).await;
        assert!(read.is_err(), "{why}");
    }

    #[tokio::test]
    async fn an_append_overtakes_an_entry_less_request_but_not_another_append() {
        // A follower stand-in: the test reads and answers the requests itself.
        let (addr, mut accepted) = silent_peer().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let link = link_to(dir.path(), &addr);
        let (input, requests) = futures::channel::mpsc::unbounded();
        let option = RPCOption::new(Duration::from_secs(5));
        let answers = stream(link, 2, requests, option);
        // openraft's replication task polls the answers all the time; so does this task.
        let (answered, mut answer) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(answers.for_each(move |a| {
            let _ = answered.send(a);
            std::future::ready(())
        }));

        // A commit notice (no entries), then two appends, all available at once.
        for req in [append(5, 5, 5), append(5, 7, 5), append(7, 9, 6)] {
            input.unbounded_send(req).expect("queued");
        }
        let mut tcp = accepted.recv().await.expect("the link opened");
        let (notice_id, notice) = next_append(&mut tcp).await;
        assert!(notice.entries.is_empty());
        // The first append is sent before the notice is answered ...
        let (a1_id, a1) = next_append(&mut tcp).await;
        assert_eq!(a1.entries.len(), 2);
        // ... but the second waits for the first's answer.
        assert_quiet(
            &mut tcp,
            "a second append was sent while one was unanswered",
        )
        .await;

        answer_success(&mut tcp, notice_id).await;
        let first = answer.recv().await;
        assert!(
            matches!(first, Some(Ok(Ok(Some(m)))) if m == id(5)),
            "{first:?}"
        );
        assert_quiet(&mut tcp, "the notice's answer released the second append").await;

        answer_success(&mut tcp, a1_id).await;
        let second = answer.recv().await;
        assert!(
            matches!(second, Some(Ok(Ok(Some(m)))) if m == id(7)),
            "{second:?}"
        );
        let (a2_id, a2) = next_append(&mut tcp).await;
        assert_eq!(a2.prev_log_id, Some(id(7)));
        answer_success(&mut tcp, a2_id).await;
        let third = answer.recv().await;
        assert!(
            matches!(third, Some(Ok(Ok(Some(m)))) if m == id(9)),
            "{third:?}"
        );
    }
}
