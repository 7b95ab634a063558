//! The drain guard on the public routes: once the node drains, a new request gets
//! `503 shutting_down`; an admitted one is counted in flight until its response is ready (the
//! drain waits for it).
//!
//! A hand-written tower layer holding `&'static` references, not `from_fn` with an `Arc` state:
//! axum clones every route's service per request, and each `Arc` clone there is an atomic
//! read-modify-write on one cache line that every worker thread shares.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;

use axum::extract::Request;
use axum::response::IntoResponse;
use axum::response::Response;
use tower::Layer;
use tower::Service;

use crate::error::KvError;
use crate::http::error::ApiError;
use crate::shutdown::InFlight;
use crate::shutdown::Lifecycle;

/// Add with `Router::route_layer` on the routes a draining node refuses.
#[derive(Clone, Copy)]
pub struct DrainLayer {
    lifecycle: &'static Lifecycle,
}

impl DrainLayer {
    /// `lifecycle` lives as long as the process (the node's `App`, see `http::router`).
    pub fn new(lifecycle: &'static Lifecycle) -> DrainLayer {
        DrainLayer { lifecycle }
    }
}

impl<S> Layer<S> for DrainLayer {
    type Service = Drain<S>;

    fn layer(&self, inner: S) -> Drain<S> {
        Drain {
            inner,
            lifecycle: self.lifecycle,
        }
    }
}

/// [`DrainLayer`]'s service around one route.
#[derive(Clone)]
pub struct Drain<S> {
    inner: S,
    lifecycle: &'static Lifecycle,
}

impl<S> Service<Request> for Drain<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = DrainFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.lifecycle.enter() {
            Some(guard) => DrainFuture::Admitted {
                inner: self.inner.call(request),
                guard: Some(guard),
            },
            None => DrainFuture::Refused,
        }
    }
}

pin_project_lite::pin_project! {
    /// The route's future with its in-flight guard, or the refusal.
    #[project = DrainProj]
    pub enum DrainFuture<F> {
        Admitted {
            #[pin]
            inner: F,
            guard: Option<InFlight<'static>>,
        },
        Refused,
    }
}

impl<F, E> Future for DrainFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            DrainProj::Admitted { inner, guard } => {
                let result = std::task::ready!(inner.poll(cx));
                // The request ends when its response is ready.
                guard.take();
                Poll::Ready(result)
            }
            DrainProj::Refused => Poll::Ready(Ok(ApiError(KvError::ShuttingDown).into_response())),
        }
    }
}
