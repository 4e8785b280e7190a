//! Sticky sessions with a cookie issued by the balancer (Layer 7 persistence).
//!
//! The first response to a client carries a cookie naming the backend that served it;
//! later requests with that cookie go to the same backend while it is eligible. The
//! cookie's value is an opaque, tamper-evident tag: the first 128 bits of
//! HMAC-SHA-256(secret, backend key), base64url-encoded (22 characters). It reveals no
//! address, cannot be forged without the secret, and is the same on every balancer
//! instance that shares the secret and the backend set, so instances honour each
//! other's cookies (as HAProxy's `cookie … insert` and Envoy's stateful sessions do,
//! here with a MAC instead of a plain or reversible value).
//!
//! A request whose cookie is missing, garbled, forged, oversized, duplicated or stale
//! (its backend removed, ejected or draining) is balanced normally and gets a fresh
//! cookie: never an error response, never a panic. A request whose backend is eligible
//! but at its in-flight limit ([`BalanceLayer::max_in_flight`](super::BalanceLayer::max_in_flight))
//! is served by another backend *this once* and gets no new cookie: the session stays
//! pinned through a momentary overload and moves only when its backend leaves rotation.
//! Tags are looked up in a map built once per change of the members (not at health or
//! weight changes), off the per-request path.
//!
//! [`StickyLayer`] stacks anywhere above a [`Balance`] — time-outs, retries, body
//! tracking in between, in any order: the pin and the chosen backend travel in the
//! request's [`Steering`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::SET_COOKIE;
use pin_project_lite::pin_project;
use tower::Layer;
use tower_service::Service;

use super::BoxError;
use super::service::Balance;
use super::steer::{Steer, Steering};
use crate::pick::hash::BackendKey;
use crate::{BackendId, Picker, Pool};

mod cookie;
mod tags;

pub use cookie::{MIN_SECRET_LEN, SameSite, StickyCookie, StickyError};
use tags::{Tags, pool_tags};

/// Sticky sessions: honours and issues the [`StickyCookie`], over any service with a
/// [`Balance`] below it (directly, or under time-outs, retries, body tracking — in any
/// order).
///
/// A request whose cookie names an eligible backend carries it as its
/// [`Steering`]'s pin, which the balancer honours when that backend is
/// below its limit; the balancer reports the backend it chose the same way, and a
/// response gets a new cookie exactly when the request named no eligible backend. Made by
/// [`StickyLayer`] or [`Sticky::new`]; requests and responses are `http::Request` /
/// `http::Response`.
pub struct Sticky<S> {
    inner: S,
    cookie: Arc<StickyCookie>,
    tags: Arc<dyn Tags>,
}

impl<S: Clone> Clone for Sticky<S> {
    fn clone(&self) -> Self {
        Sticky {
            inner: self.inner.clone(),
            cookie: Arc::clone(&self.cookie),
            tags: Arc::clone(&self.tags),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Sticky<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sticky")
            .field("inner", &self.inner)
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

impl<A, P, R, K, C> Sticky<Balance<A, P, R, K, C>>
where
    A: BackendKey + Send + Sync + 'static,
    P: Picker<A> + 'static,
    P::Table: Send + Sync,
{
    /// Sticky sessions with `cookie` directly over the balancer `inner`.
    pub fn new(inner: Balance<A, P, R, K, C>, cookie: StickyCookie) -> Self {
        StickyLayer::new(cookie, inner.pool()).layer(inner)
    }
}

impl<S> Sticky<S> {
    /// Sticky sessions with `cookie` over `inner`, a service with a balancer over `pool`
    /// below it.
    pub fn over<A, P>(inner: S, cookie: StickyCookie, pool: &Pool<A, P>) -> Self
    where
        A: BackendKey + Send + Sync + 'static,
        P: Picker<A> + 'static,
        P::Table: Send + Sync,
    {
        StickyLayer::new(cookie, pool).layer(inner)
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B, RB> Service<http::Request<B>> for Sticky<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<RB>;
    type Error = BoxError;
    type Future = StickyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let wanted = self
            .cookie
            .read(req.headers())
            .and_then(|tag| self.tags.lookup(&tag));
        let answer = req.steering_mut().map(|steering| {
            steering.pin(wanted);
            steering.clone()
        });
        StickyFuture {
            inner: self.inner.call(req),
            answer,
            // A new cookie only when the request names no eligible backend. A session
            // whose backend is eligible but momentarily at its in-flight limit is served
            // elsewhere this once and keeps its cookie: overload is no reason to move it.
            issue: wanted
                .is_none()
                .then(|| (Arc::clone(&self.cookie), Arc::clone(&self.tags))),
        }
    }
}

pin_project! {
    /// The response future of [`Sticky`]: adds `Set-Cookie` when a new cookie is due.
    pub struct StickyFuture<F> {
        #[pin]
        inner: F,
        answer: Option<Steering>,
        issue: Option<(Arc<StickyCookie>, Arc<dyn Tags>)>,
    }
}

impl<F> StickyFuture<F> {
    /// The backend the request went to, once the balancer chose it; `None` before, or
    /// when it failed before one was chosen.
    pub fn backend(&self) -> Option<BackendId> {
        self.answer.as_ref().and_then(Steering::served_by)
    }
}

impl<F: fmt::Debug> fmt::Debug for StickyFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StickyFuture")
            .field("inner", &self.inner)
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for StickyFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx)).map_err(Into::into)?;
        let served = this.answer.as_ref().and_then(Steering::served_by);
        if let (Some((cookie, tags)), Some(served)) = (this.issue.take(), served)
            && let Some(value) = tags.tag_of(served).and_then(|tag| cookie.set_cookie(&tag))
        {
            response.headers_mut().append(SET_COOKIE, value);
        }
        Poll::Ready(Ok(response))
    }
}

/// A tower `Layer` adding [`Sticky`] sessions over a service with a [`Balance`] below it.
#[derive(Clone)]
pub struct StickyLayer {
    cookie: Arc<StickyCookie>,
    tags: Arc<dyn Tags>,
}

impl StickyLayer {
    /// Sticky sessions with `cookie`, over the balancer of `pool`.
    pub fn new<A, P>(cookie: StickyCookie, pool: &Pool<A, P>) -> Self
    where
        A: BackendKey + Send + Sync + 'static,
        P: Picker<A> + 'static,
        P::Table: Send + Sync,
    {
        let cookie = Arc::new(cookie);
        let tags = pool_tags(pool, &cookie);
        StickyLayer { cookie, tags }
    }
}

impl fmt::Debug for StickyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StickyLayer")
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for StickyLayer {
    type Service = Sticky<S>;

    fn layer(&self, inner: S) -> Sticky<S> {
        Sticky {
            inner,
            cookie: Arc::clone(&self.cookie),
            tags: Arc::clone(&self.tags),
        }
    }
}
