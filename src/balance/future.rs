//! The response future of [`Balance`](super::Balance).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

use super::BoxError;
use super::classify::{Classify, ClassifyTrailers};
use super::limit::Limit;
use super::steer::HeldSlot;
use crate::clock::now_nanos;
use crate::error::{BackendError, TimedOut};
use crate::{BackendId, InFlight};

/// The timer of the per-attempt time-out: tokio's, when the `tokio` feature is on.
#[cfg(feature = "tokio")]
pub(crate) type Sleep = tokio::time::Sleep;
/// Without tokio there is no per-attempt time-out; this never fires.
#[cfg(not(feature = "tokio"))]
pub(crate) type Sleep = std::future::Pending<()>;

/// The deadline of an attempt started now, `after` from now: `None` outside a tokio
/// runtime (a time-out needs tokio's timer; the request then runs without one).
#[cfg(feature = "tokio")]
pub(crate) fn deadline(after: Option<Duration>) -> Option<Pin<Box<Sleep>>> {
    let after = after?;
    tokio::runtime::Handle::try_current().ok()?;
    Some(Box::pin(tokio::time::sleep(after)))
}

#[cfg(not(feature = "tokio"))]
pub(crate) fn deadline(_: Option<Duration>) -> Option<Pin<Box<Sleep>>> {
    None
}

/// One request's bookkeeping: in flight on its backend, and a unit of the balancer's
/// capacity when limits are set. Released on drop, whatever happens to the request.
#[derive(Debug)]
pub(crate) struct Tracked {
    in_flight: Option<InFlight>,
    limit: Option<Arc<Limit>>,
    /// Set once the response has been classified and only its body remains (see
    /// `TrackBody`): dropping then finishes with this outcome instead of cancelling.
    on_drop: Option<bool>,
    /// The classifier's check of the response's trailers, read by body tracking.
    trailers: Option<ClassifyTrailers>,
}

impl Tracked {
    pub(crate) fn new(in_flight: InFlight, limit: Option<Arc<Limit>>) -> Self {
        Tracked {
            in_flight: Some(in_flight),
            limit,
            on_drop: None,
            trailers: None,
        }
    }

    /// Whether the response's `trailers` keep it a success (by the classifier's check;
    /// `true` when the classifier has none).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn trailers_ok(&self, trailers: &http::HeaderMap) -> bool {
        self.trailers.is_none_or(|check| check.is_success(trailers))
    }

    /// Reports the outcome: latency to the estimate, success or failure to health.
    pub(crate) fn finish(mut self, success: bool) {
        if let Some(guard) = self.in_flight.take() {
            // A crossed ejection threshold is published by the next call's pick.
            guard.finish_now(success);
        }
    }

    /// Reports a failure ended by the per-attempt time-out, `elapsed` after it began.
    pub(crate) fn time_out(mut self, elapsed: Duration) {
        if let Some(guard) = self.in_flight.take() {
            guard.time_out_at_nanos(now_nanos(), elapsed);
        }
    }

    /// From now on, dropping finishes the request with `success` (its response was
    /// classified; a body dropped before its end is the reader's choice, not a failure).
    pub(crate) fn settle(&mut self, success: bool) {
        self.on_drop = Some(success);
    }

    fn elapsed(&self) -> Duration {
        self.in_flight
            .as_ref()
            .map_or(Duration::ZERO, InFlight::elapsed)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        match (self.in_flight.take(), self.on_drop) {
            (Some(guard), Some(success)) => {
                guard.finish_now(success);
            }
            // Unfinished: the guard records a cancellation as it drops (a failure past
            // the pool's threshold).
            (guard, _) => drop(guard),
        }
        if let Some(limit) = self.limit.take() {
            limit.release();
        }
    }
}

pin_project! {
    /// The future of one balanced request: the inner call, then the outcome report.
    ///
    /// Its error is a [`BoxError`]: the inner service's error wrapped in a
    /// [`BackendError`] naming the backend, a [`TimedOut`] when the per-attempt time-out
    /// fired, or the balancer's own ([`PickError`](crate::PickError),
    /// [`Overloaded`](crate::Overloaded)).
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F>,
        // Boxed: a tokio `Sleep` is 112 bytes, which every request's future would
        // carry (and copy) whether or not it has a time-out.
        deadline: Option<Pin<Box<Sleep>>>,
        timeout: Duration,
        tracked: Option<Tracked>,
        classify: C,
        backend: Option<BackendId>,
        // Where to leave the request's tracking past a successful response (until its
        // body ends), for the body tracking layer.
        hold: Option<Arc<HeldSlot>>,
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
    pub(crate) fn called(
        future: F,
        tracked: Tracked,
        classify: C,
        backend: BackendId,
        timeout: Option<Duration>,
        hold: Option<Arc<HeldSlot>>,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Called { future },
            deadline: deadline(timeout),
            timeout: timeout.unwrap_or(Duration::MAX),
            tracked: Some(tracked),
            classify,
            backend: Some(backend),
            hold,
        }
    }

    pub(crate) fn failed(error: BoxError, classify: C) -> Self {
        ResponseFuture {
            kind: Kind::Failed { error: Some(error) },
            deadline: None,
            timeout: Duration::MAX,
            tracked: None,
            classify,
            backend: None,
            hold: None,
        }
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
        let mut this = self.project();
        let result = match this.kind.as_mut().project() {
            KindProj::Failed { error } => {
                return Poll::Ready(Err(error.take().unwrap_or_else(|| {
                    "balance: response future polled after completion".into()
                })));
            }
            KindProj::Called { future } => match future.poll(cx) {
                Poll::Ready(result) => result,
                Poll::Pending => {
                    let expired = this
                        .deadline
                        .as_mut()
                        .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
                    if !expired {
                        return Poll::Pending;
                    }
                    // The attempt is over: cancel it (drop the inner future) and count
                    // the time-out as the backend's failure.
                    this.kind.set(Kind::Failed { error: None });
                    *this.deadline = None;
                    // At least the time-out: the timer fired (on tokio's clock, which a
                    // test may have paused while the request clock ran on).
                    let elapsed = this
                        .tracked
                        .as_ref()
                        .map_or(*this.timeout, Tracked::elapsed)
                        .max(*this.timeout);
                    if let Some(tracked) = this.tracked.take() {
                        tracked.time_out(elapsed);
                    }
                    let backend = this.backend.unwrap_or(BackendId::new(u64::MAX));
                    return Poll::Ready(Err(TimedOut {
                        backend,
                        elapsed,
                        timeout: *this.timeout,
                    }
                    .into()));
                }
            },
        };
        this.kind.set(Kind::Failed { error: None });
        *this.deadline = None;
        let success = this.classify.is_success(result.as_ref());
        if let Some(mut tracked) = this.tracked.take() {
            match this.hold.take() {
                Some(slot) if result.is_ok() => {
                    // Dropped with the slot if no layer takes it: finished then, with
                    // this outcome.
                    tracked.settle(success);
                    tracked.trailers = this.classify.trailers();
                    slot.put((tracked, success));
                }
                _ => tracked.finish(success),
            }
        }
        let backend = *this.backend;
        Poll::Ready(result.map_err(|e| {
            match backend {
                Some(backend) => BackendError {
                    backend,
                    source: e.into(),
                }
                .into(),
                None => e.into(),
            }
        }))
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
