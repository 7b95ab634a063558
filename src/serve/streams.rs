//! HTTP/2 streams run inside their connection's task while they are alone.
//!
//! hyper spawns every HTTP/2 stream (each gRPC call) as a task of its own, whose answer then
//! wakes the connection's task to write it: a spawn and a wake across tasks per call. Here a
//! call that arrives while no other call of its connection is in flight is polled by the
//! connection's task itself ([`InlineStreams`] is the executor hyper hands streams to,
//! [`WithStreams`] the connection future that polls them): no spawn, and its answer is written
//! by the task that produced it. A call that arrives while another is in flight gets a task of
//! its own as before, so a client multiplexing many calls on one connection (etcd's clients do)
//! keeps them running in parallel, and a slow call holds up at most the calls that arrive while
//! its own code runs.
//!
//! Invariant: every stream queued for the connection is polled by the connection future it
//! belongs to until it ends or the connection ends; when the connection ends, its unfinished
//! inline streams are dropped with it (as a client's disconnect drops an HTTP/1.1 request).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::task::Context;
use std::task::Poll;

use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering;
use std::task::Waker;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use futures::task::ArcWake;
use futures::task::AtomicWaker;

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Rounds of "poll the connection, then its streams" in one poll of [`WithStreams`] before it
/// yields to the runtime (so one busy connection cannot hold a worker thread).
const ROUNDS_MAX: usize = 16;

/// The executor hyper hands a connection's HTTP/2 streams to: a stream that finds none of the
/// connection's streams in flight is queued for the connection's own task ([`WithStreams`]),
/// any other is spawned.
#[derive(Clone, Default)]
pub struct InlineStreams {
    shared: Arc<Mutex<Inline>>,
}

#[derive(Default)]
struct Inline {
    /// Streams handed over since the connection's task last took them.
    queued: Vec<Task>,
    /// Streams the connection's task is polling.
    running: usize,
}

impl<F> hyper::rt::Executor<F> for InlineStreams
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        // hyper calls this from inside the connection's poll, which takes the queue right after.
        let mut inline = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if inline.queued.is_empty() && inline.running == 0 {
            inline.queued.push(Box::pin(fut));
        } else {
            drop(inline);
            tokio::spawn(fut);
        }
    }
}

impl InlineStreams {
    /// Moves the queued streams into `streams`; whether there were any.
    fn take_queued(&self, streams: &mut FuturesUnordered<Task>) -> bool {
        let mut inline = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let any = !inline.queued.is_empty();
        streams.extend(inline.queued.drain(..));
        inline.running = streams.len();
        any
    }

    fn set_running(&self, running: usize) {
        self.shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .running = running;
    }
}

/// The waker a connection and its inline streams are polled with. A wake that comes while the
/// connection's task is polling them (a stream's answer waking the connection, the connection
/// granting a stream room to send) asks for one more round of that poll; waking the running
/// task instead would make the runtime requeue it and wake a parked worker thread to run it.
/// Any other wake wakes the task.
struct RoundWaker {
    state: AtomicU8,
    task: AtomicWaker,
}

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

impl ArcWake for RoundWaker {
    fn wake_by_ref(this: &Arc<Self>) {
        match this
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) | Err(WOKEN) => {}
            Err(_) => this.task.wake(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection future that also polls the streams its executor queued for it.
    pub struct WithStreams<C> {
        #[pin]
        conn: C,
        exec: InlineStreams,
        streams: FuturesUnordered<Task>,
        round: Arc<RoundWaker>,
        waker: Waker,
    }
}

impl<C> WithStreams<C> {
    /// `conn` must have been built with `exec` as its executor.
    pub fn new(conn: C, exec: InlineStreams) -> Self {
        let round = Arc::new(RoundWaker {
            state: AtomicU8::new(IDLE),
            task: AtomicWaker::new(),
        });
        Self {
            conn,
            exec,
            streams: FuturesUnordered::new(),
            waker: futures::task::waker(round.clone()),
            round,
        }
    }
}

impl<C: Future> Future for WithStreams<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        // The task's waker must be registered before the state says "not polling": a wake
        // after that wakes the task.
        this.round.task.register(cx.waker());
        let mut round_cx = Context::from_waker(this.waker);
        for _ in 0..ROUNDS_MAX {
            // Each round polls everything, so the wakes before it are answered by it.
            this.round.state.store(POLLING, Ordering::SeqCst);
            if let Poll::Ready(out) = this.conn.as_mut().poll(&mut round_cx) {
                this.round.state.store(IDLE, Ordering::SeqCst);
                return Poll::Ready(out);
            }
            // New streams get their first poll now; a stream that ended has queued its answer
            // for the connection, which the next round writes.
            let mut moved = this.exec.take_queued(this.streams);
            let mut ended = false;
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(&mut round_cx) {
                ended = true;
            }
            if ended {
                this.exec.set_running(this.streams.len());
                moved = true;
            }
            // Must leave POLLING only if no wake came during the round: a wake that came asks
            // for another round, and one after the exchange wakes the task.
            if !moved
                && this
                    .round
                    .state
                    .compare_exchange(POLLING, IDLE, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                return Poll::Pending;
            }
        }
        // Busy: yield to the runtime and come back.
        this.round.state.store(IDLE, Ordering::SeqCst);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::task::Id;

    use super::*;

    /// A stand-in connection: on its first poll hands `n` streams to the executor, each of
    /// which records the task it runs in; ends once all have run.
    struct Spawner {
        exec: InlineStreams,
        n: usize,
        ran_in: Arc<Mutex<Vec<Id>>>,
        spawned: bool,
    }

    impl Future for Spawner {
        type Output = Vec<Id>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Vec<Id>> {
            if !self.spawned {
                self.spawned = true;
                for _ in 0..self.n {
                    let ran_in = self.ran_in.clone();
                    let waker = cx.waker().clone();
                    hyper::rt::Executor::execute(&self.exec, async move {
                        tokio::task::yield_now().await;
                        ran_in.lock().expect("lock").push(tokio::task::id());
                        waker.wake();
                    });
                }
            }
            let ran_in = self.ran_in.lock().expect("lock");
            if ran_in.len() == self.n {
                Poll::Ready(ran_in.clone())
            } else {
                Poll::Pending
            }
        }
    }

    /// Runs a connection that hands over `n` streams at once; returns the connection's task
    /// and the tasks its streams ran in.
    async fn run(n: usize) -> (Id, Vec<Id>) {
        let exec = InlineStreams::default();
        let conn = Spawner {
            exec: exec.clone(),
            n,
            ran_in: Arc::default(),
            spawned: false,
        };
        let task = tokio::spawn(async move {
            let ran_in = WithStreams::new(conn, exec).await;
            (tokio::task::id(), ran_in)
        });
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("the connection ends once its streams ran")
            .expect("the connection's task")
    }

    #[tokio::test]
    async fn a_lone_stream_runs_in_its_connections_task() {
        let (conn, ran_in) = run(1).await;
        assert_eq!(ran_in, vec![conn]);
    }

    #[tokio::test]
    async fn streams_arriving_while_one_is_in_flight_get_tasks_of_their_own() {
        let (conn, ran_in) = run(20).await;
        assert_eq!(ran_in.len(), 20);
        let inline = ran_in.iter().filter(|id| **id == conn).count();
        assert_eq!(
            inline, 1,
            "only the first stream runs in the connection's task"
        );
        let distinct: std::collections::HashSet<Id> = ran_in.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            20,
            "each other stream has a task of its own"
        );
    }
}
