//! Load tracking that lasts until an HTTP response's body ends.
//!
//! By default a request leaves the in-flight count when its response *headers* arrive.
//! A streaming response (a download, server-sent events, a long poll) keeps loading the
//! backend after that, so [`TrackBody`] keeps the request in flight until the body's
//! last frame has been read (the end of the stream, or a trailers frame), or the body is
//! dropped. The latency sample then spans the whole exchange; a body that fails
//! mid-stream counts as a failure, so do trailers that the classifier reads as one
//! ([`Classify::trailers`](super::Classify::trailers): gRPC's `grpc-status` with
//! [`GrpcStatus`](super::GrpcStatus)), and one dropped early by its reader is recorded with
//! the response's own outcome (the reader's choice is not the backend's failure).
//!
//! [`TrackBodyLayer`] stacks anywhere above a [`Balance`] (time-outs, retries and sticky
//! sessions in between, in any order): the tracking travels through the request's
//! [`Steering`](super::Steering).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::Layer;
use tower_service::Service;

use super::BoxError;
use super::future::Tracked;
use super::service::Balance;
use super::steer::{HeldSlot, Steer};
use crate::Picker;

/// Keeps each request in flight until its HTTP response's body ends: a layer over any
/// service with a [`Balance`] somewhere below it. Body tracking is described
/// with [`TrackBody`].
///
/// It asks the balancer, through the request's [`Steering`](super::Steering), to hand
/// over the request's tracking when the response head arrives, and moves it into the
/// response body. Without a balancer below (or one the request never reached) the body
/// passes through untracked.
#[derive(Clone, Debug, Default)]
pub struct TrackBodyLayer;

impl TrackBodyLayer {
    /// The layer.
    pub fn new() -> Self {
        TrackBodyLayer
    }
}

impl<S> Layer<S> for TrackBodyLayer {
    type Service = TrackBody<S>;

    fn layer(&self, inner: S) -> TrackBody<S> {
        TrackBody { inner }
    }
}

/// A service whose HTTP responses stay in flight until their bodies end. Made by
/// [`TrackBodyLayer`] or [`Balance::track_body`].
#[derive(Clone, Debug)]
pub struct TrackBody<S> {
    inner: S,
}

impl<A, P: Picker<A>, R, K, C> Balance<A, P, R, K, C> {
    /// Keeps each request in flight until its response body ends (see [`TrackBody`]).
    pub fn track_body(self) -> TrackBody<Self> {
        TrackBody { inner: self }
    }
}

impl<S> TrackBody<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqB, B> Service<http::Request<ReqB>> for TrackBody<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
{
    type Response = http::Response<TrackedBody<B>>;
    type Error = BoxError;
    type Future = TrackBodyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<ReqB>) -> Self::Future {
        let slot = req.steering_mut().map(|s| s.hold());
        TrackBodyFuture {
            inner: self.inner.call(req),
            slot,
        }
    }
}

pin_project! {
    /// The response future of [`TrackBody`].
    pub struct TrackBodyFuture<F> {
        #[pin]
        inner: F,
        slot: Option<Arc<HeldSlot>>,
    }
}

impl<F> fmt::Debug for TrackBodyFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackBodyFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for TrackBodyFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
{
    type Output = Result<http::Response<TrackedBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx)).map_err(Into::into)?;
        let mut held = this.slot.take().and_then(|slot| slot.take());
        if response.body().is_end_stream() {
            // Nothing to stream: the exchange is over now.
            if let Some((tracked, success)) = held.take() {
                tracked.finish(success);
            }
        }
        Poll::Ready(Ok(response.map(|inner| TrackedBody { inner, held })))
    }
}

pin_project! {
    /// A response body that keeps its request in flight until it ends or is dropped.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        held: Option<(Tracked, bool)>,
    }
}

impl<B> TrackedBody<B> {
    /// Whether the request still counts as in flight.
    pub fn is_tracked(&self) -> bool {
        self.held.is_some()
    }
}

impl<B: fmt::Debug> fmt::Debug for TrackedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedBody")
            .field("inner", &self.inner)
            .field("tracked", &self.held.is_some())
            .finish()
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            None => Some(true),
            Some(Err(_)) => Some(false),
            // Trailers end the body: a reader may stop here without polling for the
            // end (tonic reads a gRPC response's trailers and drops the body). The
            // classifier may read them (gRPC's `grpc-status`).
            Some(Ok(frame)) if frame.is_trailers() => {
                Some(match (frame.trailers_ref(), &*this.held) {
                    (Some(trailers), Some((tracked, _))) => tracked.trailers_ok(trailers),
                    _ => true,
                })
            }
            Some(Ok(_)) if this.inner.is_end_stream() => Some(true),
            Some(Ok(_)) => None,
        };
        if let Some(body_ok) = ended
            && let Some((tracked, success)) = this.held.take()
        {
            tracked.finish(success && body_ok);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
