//! The response future of [`Balance`](super::Balance).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::BoxError;
use super::classify::Classify;
use super::limit::Limit;
use crate::backend::now_nanos;
use crate::{BackendId, InFlight};

/// One request's bookkeeping: in flight on its backend, and a unit of the balancer's
/// capacity when limits are set. Released on drop, whatever happens to the request.
#[derive(Debug)]
pub(crate) struct Tracked {
    in_flight: Option<InFlight>,
    limit: Option<Arc<Limit>>,
}

impl Tracked {
    pub(crate) fn new(in_flight: InFlight, limit: Option<Arc<Limit>>) -> Self {
        Tracked {
            in_flight: Some(in_flight),
            limit,
        }
    }

    /// Reports the outcome: latency to the estimate, success or failure to health.
    pub(crate) fn finish(mut self, success: bool) {
        if let Some(guard) = self.in_flight.take() {
            // A crossed ejection threshold is published by the next call's pick.
            guard.finish_at_nanos(success, now_nanos());
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // The in-flight guard, if not finished, releases its count as it drops.
        drop(self.in_flight.take());
        if let Some(limit) = self.limit.take() {
            limit.release();
        }
    }
}

pin_project! {
    /// The future of one balanced request: the inner call, then the outcome report.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F>,
        tracked: Option<Tracked>,
        classify: C,
        backend: Option<BackendId>,
        // Keep the request in flight past the response (until its body ends).
        hold: bool,
        held: Option<(Tracked, bool)>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F },
        Failed { error: Option<BoxError> },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(future: F, tracked: Tracked, classify: C, backend: BackendId) -> Self {
        ResponseFuture {
            kind: Kind::Called { future },
            tracked: Some(tracked),
            classify,
            backend: Some(backend),
            hold: false,
            held: None,
        }
    }

    pub(crate) fn failed(error: BoxError, classify: C) -> Self {
        ResponseFuture {
            kind: Kind::Failed { error: Some(error) },
            tracked: None,
            classify,
            backend: None,
            hold: false,
            held: None,
        }
    }

    /// Keeps the request tracked after a successful response arrives, for the caller to
    /// take with [`take_held`](Self::take_held) (the body-tracking wrapper does).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn hold(mut self) -> Self {
        self.hold = true;
        self
    }

    /// The tracking kept by [`hold`](Self::hold), with the response's classification.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn take_held(self: Pin<&mut Self>) -> Option<(Tracked, bool)> {
        self.project().held.take()
    }

    /// The backend the request went to; `None` when it failed before one was chosen.
    pub fn backend(&self) -> Option<BackendId> {
        self.backend
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "balance: response future polled after completion".into()))),
            KindProj::Called { future } => {
                let result = ready!(future.poll(cx));
                let success = this.classify.is_success(result.as_ref());
                if let Some(tracked) = this.tracked.take() {
                    if *this.hold && result.is_ok() {
                        *this.held = Some((tracked, success));
                    } else {
                        tracked.finish(success);
                    }
                }
                Poll::Ready(result.map_err(Into::into))
            }
        }
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("backend", &self.backend)
            .field("tracked", &self.tracked)
            .finish_non_exhaustive()
    }
}
