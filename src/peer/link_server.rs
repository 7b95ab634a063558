//! Inbound peer links (the sender's side is `link.rs`, the format `wire.rs`): the accept loop
//! (`serve.rs`) hands over a connection that opened with `wire::MAGIC`; here its hello is
//! checked once, then every request is handled concurrently (`rpc.rs`) and answered with its id
//! (appends and snapshot chunks on the reader's own task: a leader keeps at most one append with
//! entries in flight per link, and a snapshot's chunks must be taken in order, `snapshot.rs`).
//!
//! The hello passes the same checks the HTTP routes make on every request: the caller must be an
//! authenticated peer (`auth.rs`: 403) and name this node and its cluster (`identity.rs`: 421).
//! Limits: the hello within `header_timeout`; a frame at most `wire::FRAME_BYTES_MAX`, whole
//! within `header_timeout` plus its bytes at `APPEND_BYTES_PER_SEC_MIN`; at most
//! `REQUESTS_IN_FLIGHT_MAX` requests and `BYTES_IN_FLIGHT_MAX` request bytes being handled per
//! link (the link is not read further until some finish); a link without a request for
//! `idle_timeout` is closed.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::io::BufWriter;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::app::SharedApp;
use crate::limits::APPEND_BYTES_PER_SEC_MIN;
use crate::peer::auth::authorize_peer;
use crate::peer::link::read_frame;
use crate::peer::rpc;
use crate::peer::wire;
use crate::peer::wire::Hello;
use crate::peer::wire::HelloRefusal;
use crate::peer::wire::Rpc;
use crate::peer::wire::Status;
use crate::raft::types::NodeId;
use crate::serve::ConnInfo;
use crate::serve::ServeLimits;

/// Requests of one link being handled at once.
const REQUESTS_IN_FLIGHT_MAX: usize = 256;
/// Request bytes of one link held at once, in KiB (twice the largest request).
const KIB_IN_FLIGHT_MAX: usize = 2 * (wire::FRAME_BYTES_MAX >> 10) + 2;
/// Read and write buffers of a link.
const BUFFER_BYTES: usize = 64 << 10;

type Io = Box<dyn crate::serve::Io>;

/// Serves one peer link until it ends (closed by the peer, idle, or broken).
pub async fn serve(app: SharedApp, io: Io, conn: ConnInfo, limits: ServeLimits) {
    let (reader, writer) = tokio::io::split(io);
    let mut reader = BufReader::with_capacity(BUFFER_BYTES, reader);
    let mut writer = BufWriter::with_capacity(BUFFER_BYTES, writer);
    let hello = match tokio::time::timeout(
        limits.header_timeout,
        read_frame(&mut reader, wire::HELLO_BYTES_MAX),
    )
    .await
    {
        Ok(Ok(frame)) => frame,
        Ok(Err(e)) => {
            tracing::debug!(remote = %conn.remote, error = %e, "peer link: no hello");
            return;
        }
        Err(_) => {
            tracing::debug!(remote = %conn.remote, "peer link: no hello in time");
            return;
        }
    };
    let verdict = check_hello(&app, &conn, &hello);
    let answer = match wire::encode_hello_answer(&verdict.clone().map(|_| ())) {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(error = %e, "peer link: cannot encode the hello answer");
            return;
        }
    };
    let answered = async {
        writer.write_all(&wire::plain_frame(&answer)).await?;
        writer.flush().await
    };
    let answered = tokio::time::timeout(limits.header_timeout, answered).await;
    let (Ok(Ok(())), Ok(from)) = (answered, verdict) else {
        return;
    };
    tracing::debug!(remote = %conn.remote, from, "peer link accepted");
    serve_requests(app, reader, writer, limits).await;
}

/// The hello's verdict: the sender's node id for an authenticated peer naming this node and
/// its cluster.
fn check_hello(app: &SharedApp, conn: &ConnInfo, hello: &[u8]) -> Result<NodeId, HelloRefusal> {
    static LAST_LOG_MS: AtomicU64 = AtomicU64::new(0);
    let refuse = |status: u16, text: String| {
        if crate::peer::log_gate(&LAST_LOG_MS, 5000) {
            tracing::warn!(remote = %conn.remote, status, reason = %text, "refused a peer link");
        }
        Err(HelloRefusal { status, text })
    };
    if let Err(e) = authorize_peer(&app.peer_auth, conn) {
        return refuse(403, e.to_string());
    }
    let hello: Hello = match postcard::from_bytes(hello) {
        Ok(h) => h,
        Err(e) => return refuse(400, format!("undecodable hello: {e}")),
    };
    match app
        .identity()
        .check_ids(hello.to, hello.from, &hello.cluster_id, false)
    {
        Ok(()) => Ok(hello.from),
        Err(e) => refuse(421, e.to_string()),
    }
}

type Reader = BufReader<tokio::io::ReadHalf<Io>>;
type Writer = Arc<tokio::sync::Mutex<Option<BufWriter<tokio::io::WriteHalf<Io>>>>>;

/// The time a frame of `bytes` gets to arrive (or leave) whole once it started.
fn frame_timeout(limits: &ServeLimits, bytes: usize) -> Duration {
    limits.header_timeout + Duration::from_secs_f64(bytes as f64 / APPEND_BYTES_PER_SEC_MIN as f64)
}

/// Reads requests and hands each to its own task until the link ends.
async fn serve_requests(
    app: SharedApp,
    mut reader: Reader,
    writer: BufWriter<tokio::io::WriteHalf<Io>>,
    limits: ServeLimits,
) {
    let writer: Writer = Arc::new(tokio::sync::Mutex::new(Some(writer)));
    let requests = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX));
    let kib = Arc::new(Semaphore::new(KIB_IN_FLIGHT_MAX));
    let closing = CancellationToken::new();
    // The snapshot transfer in progress on this link, if any (dropped with the link).
    let mut snapshot = crate::peer::snapshot::LinkSession::default();
    let why = loop {
        let Ok(request_permit) = requests.clone().acquire_owned().await else {
            break "closed";
        };
        // Wait for a frame to start: a link with nothing in flight idles out.
        let started = tokio::select! {
            () = closing.cancelled() => break "an answer could not be written",
            started = tokio::time::timeout(limits.idle_timeout, reader.fill_buf()) => started,
        };
        match started {
            Ok(Ok([])) => break "closed by the peer",
            Ok(Ok(_)) => {}
            Ok(Err(_)) => break "read failed",
            Err(_) if requests.available_permits() + 1 >= REQUESTS_IN_FLIGHT_MAX => {
                break "idle";
            }
            Err(_) => continue,
        }
        let mut prefix = [0u8; wire::LEN_BYTES];
        let read = tokio::time::timeout(limits.header_timeout, reader.read_exact(&mut prefix));
        if !matches!(read.await, Ok(Ok(_))) {
            break "a frame's length did not arrive";
        }
        let len = match wire::frame_len(prefix, wire::FRAME_BYTES_MAX) {
            Ok(len) => len,
            Err(e) => {
                tracing::warn!(error = %e, "peer link: refused a frame; closing the link");
                break "frame over the limit";
            }
        };
        let Ok(kib_permit) = kib
            .clone()
            .acquire_many_owned(u32::try_from((len >> 10) + 1).unwrap_or(u32::MAX))
            .await
        else {
            break "closed";
        };
        let mut payload = vec![0u8; len];
        let read =
            tokio::time::timeout(frame_timeout(&limits, len), reader.read_exact(&mut payload));
        if !matches!(read.await, Ok(Ok(_))) {
            break "a frame did not arrive whole in time";
        }
        let rpc = wire::split(&payload).ok().map(|(_, rpc, _)| rpc);
        // Appends are answered on the reader's own task (one hand-off less per replicated
        // write), in the order sent: a leader keeps at most one append with entries in flight
        // per link, so only its entry-less requests (quick to answer) may queue before it
        // (`raft/network/pipeline.rs`).
        if rpc == Some(Rpc::Append as u8) {
            answer(&app, &payload, &writer, &closing, &limits).await;
            drop((request_permit, kib_permit));
            continue;
        }
        // Snapshot chunks too, so they are taken in order; the sender waits for each answer,
        // and the link is not read further until the chunk is queued for the spool.
        if rpc == Some(Rpc::Snapshot as u8) {
            let Ok((id, _, _)) = wire::split(&payload) else {
                break "undecodable frame";
            };
            let body = bytes::Bytes::from(payload).slice(wire::HEAD_BYTES..);
            let answered = match snapshot.chunk(&app, body).await {
                Ok(answer) => (Status::Ok, answer),
                Err((_, why)) => (Status::Refused, why.into_bytes()),
            };
            reply(&writer, &closing, &limits, id, answered).await;
            drop((request_permit, kib_permit));
            continue;
        }
        let (app, writer, closing) = (app.clone(), writer.clone(), closing.clone());
        tokio::spawn(async move {
            let _permits = (request_permit, kib_permit);
            answer(&app, &payload, &writer, &closing, &limits).await;
        });
    };
    tracing::debug!(why, "peer link ended");
}

/// Handles one request and writes its answer; a failed write closes the link.
async fn answer(
    app: &SharedApp,
    payload: &[u8],
    writer: &Writer,
    closing: &CancellationToken,
    limits: &ServeLimits,
) {
    let Ok((id, code, body)) = wire::split(payload) else {
        closing.cancel();
        return;
    };
    let answered = match Rpc::from_u8(code) {
        None => (Status::Refused, format!("unknown rpc {code}").into_bytes()),
        Some(rpc) => match rpc::handle(app, rpc, body).await {
            Ok(answer) => (Status::Ok, answer),
            Err((_, why)) => (Status::Refused, why.into_bytes()),
        },
    };
    reply(writer, closing, limits, id, answered).await;
}

/// Writes the answer to request `id`; a failed write closes the link.
async fn reply(
    writer: &Writer,
    closing: &CancellationToken,
    limits: &ServeLimits,
    id: u64,
    (status, answer): (Status, Vec<u8>),
) {
    let head = wire::head(answer.len(), id, status as u8);
    let mut slot = writer.lock().await;
    let Some(out) = slot.as_mut() else {
        return; // the link broke: nothing more is written to it
    };
    let write = async {
        out.write_all(&head).await?;
        out.write_all(&answer).await?;
        out.flush().await
    };
    // A write cut short leaves half a frame: the link must close before anything else is sent.
    let written = tokio::time::timeout(frame_timeout(limits, answer.len()), write).await;
    if !matches!(written, Ok(Ok(()))) {
        *slot = None;
        closing.cancel();
    }
}
