//! Retries on another backend, bounded by a retry budget.
//!
//! [`Retry`] sends a failed request again, to a backend it has not tried yet (Envoy's
//! `previous_hosts` predicate, NGINX's `proxy_next_upstream`): the picker chooses as
//! usual and a tried backend is skipped for the next untried eligible one. It is a
//! `Layer<S>` for any `S` with a [`Balance`](super::Balance) below it: the backends
//! already tried travel in the request's [`Steering`] (an `http::Request` carries it; a
//! request type that carries none is retried without the exclusion). Three things bound
//! it:
//!
//! - **which requests**: a [`RetryPolicy`] decides from the request and the error. The
//!   default, [`Idempotent`], retries an HTTP request with an idempotent method (GET,
//!   HEAD, OPTIONS, PUT, DELETE, TRACE; RFC 9110 §9.2.2) after a transport error or a
//!   [`TimedOut`] attempt, and *any* request after a failed connect (nothing was sent);
//!   never after a response, whatever its status, nor after the balancer's own
//!   [`PickError`](crate::PickError) or [`Overloaded`](crate::Overloaded);
//! - **how many attempts**: at most [`RetryLayer::max_retries`] retries per request
//!   (default 1: two backends in all);
//! - **how many retries overall**: a retry budget — tower's [`TpsBudget`], as Finagle's
//!   and Linkerd's: each request deposits, each retry withdraws, and retries may add at
//!   most 20% to the request rate plus 10 retries a second (over a 10 s window), so a
//!   widespread outage is not multiplied by the retries it provokes.
//!
//! The final error is the last attempt's, which names its backend ([`BackendError`],
//! [`TimedOut`]).
//!
//! [`BackendError`]: crate::BackendError

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower::Layer;
use tower::retry::budget::{Budget, TpsBudget};
use tower_service::Service;

use super::steer::{Steer, Steering};
use super::{BoxError, find_error};
use crate::BackendId;
use crate::error::{BackendError, TimedOut};

/// Decides whether a failed attempt may be sent again, to another backend.
///
/// Closures `Fn(&Req, &BoxError) -> bool` are policies.
pub trait RetryPolicy<Req> {
    /// Whether `req`, whose attempt failed with `error`, may be sent again.
    fn may_retry(&self, req: &Req, error: &BoxError) -> bool;
}

impl<Req, F> RetryPolicy<Req> for F
where
    F: Fn(&Req, &BoxError) -> bool,
{
    fn may_retry(&self, req: &Req, error: &BoxError) -> bool {
        self(req, error)
    }
}

/// The default policy: idempotent HTTP requests after a failed attempt, any request
/// after a failed connect. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct Idempotent;

#[cfg(feature = "http")]
impl<B> RetryPolicy<http::Request<B>> for Idempotent {
    fn may_retry(&self, req: &http::Request<B>, error: &BoxError) -> bool {
        use http::Method;
        let idempotent = matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        );
        is_connect_error(error) || (idempotent && is_attempt_failure(error))
    }
}

/// Any request after a failed attempt (a transport error or a time-out): for requests
/// that are safe to repeat whatever they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Always;

impl<Req> RetryPolicy<Req> for Always {
    fn may_retry(&self, _: &Req, error: &BoxError) -> bool {
        is_attempt_failure(error)
    }
}

/// Whether `error` is a failed attempt on a backend: the inner service's error
/// ([`BackendError`]) or a [`TimedOut`] attempt — not the balancer's own refusal.
pub fn is_attempt_failure(error: &BoxError) -> bool {
    error.is::<BackendError>() || error.is::<TimedOut>()
}

/// Whether `error` (or an error in its source chain) is a failed connect: refused,
/// unreachable, or an address that cannot be used — a request that was never sent, so
/// it is safe to send again whatever its method.
pub fn is_connect_error(error: &BoxError) -> bool {
    use std::io::ErrorKind;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&**error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::AddrNotAvailable
            )
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// The default retry budget: retries may add 20% to the request rate, plus 10 a
/// second, over a 10 s window (Finagle's `RetryBudget` defaults).
pub fn default_budget() -> TpsBudget {
    TpsBudget::new(Duration::from_secs(10), 10, 0.2)
}

/// A tower `Layer` adding [`Retry`] over a service with a
/// [`Balance`](super::Balance) below it.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_lb::balance::{BalanceLayer, RetryLayer};
/// use tower_lb::{Pool, RoundRobin};
///
/// let pool = Pool::<&str, _>::new(RoundRobin::new());
/// let client = tower::service_fn(|_: http::Request<String>| async {
///     Ok::<_, std::io::Error>(http::Response::new(String::new()))
/// });
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::new()) // idempotent requests, once, within the budget
///     .service(BalanceLayer::new(pool).build(tower_lb::balance::Client(client)));
/// # let _ = svc;
/// ```
pub struct RetryLayer<Pol = Idempotent> {
    policy: Pol,
    budget: Arc<TpsBudget>,
    max_retries: usize,
}

impl RetryLayer {
    /// Retries with the [`Idempotent`] policy, at most once per request, within the
    /// [`default_budget`].
    pub fn new() -> Self {
        RetryLayer {
            policy: Idempotent,
            budget: Arc::new(default_budget()),
            max_retries: 1,
        }
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        RetryLayer::new()
    }
}

impl<Pol> RetryLayer<Pol> {
    /// Decides with `policy` which failed attempts may be retried.
    pub fn policy<Pol2>(self, policy: Pol2) -> RetryLayer<Pol2> {
        RetryLayer {
            policy,
            budget: self.budget,
            max_retries: self.max_retries,
        }
    }

    /// At most `retries` retries per request (default 1).
    pub fn max_retries(mut self, retries: usize) -> Self {
        self.max_retries = retries;
        self
    }

    /// The retry budget, shared by every service this layer builds.
    pub fn budget(mut self, budget: TpsBudget) -> Self {
        self.budget = Arc::new(budget);
        self
    }
}

impl<Pol: Clone> Clone for RetryLayer<Pol> {
    fn clone(&self) -> Self {
        RetryLayer {
            policy: self.policy.clone(),
            budget: Arc::clone(&self.budget),
            max_retries: self.max_retries,
        }
    }
}

impl<Pol: fmt::Debug> fmt::Debug for RetryLayer<Pol> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.policy)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

impl<S, Pol: Clone> Layer<S> for RetryLayer<Pol> {
    type Service = Retry<S, Pol>;

    fn layer(&self, inner: S) -> Retry<S, Pol> {
        Retry {
            inner,
            policy: self.policy.clone(),
            budget: Arc::clone(&self.budget),
            max_retries: self.max_retries,
        }
    }
}

/// Retries on another backend over a service with a [`Balance`](super::Balance) below
/// it. Made by [`RetryLayer`]; see the
/// [module docs](self).
pub struct Retry<S, Pol = Idempotent> {
    inner: S,
    policy: Pol,
    budget: Arc<TpsBudget>,
    max_retries: usize,
}

impl<S: Clone, Pol: Clone> Clone for Retry<S, Pol> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            budget: Arc::clone(&self.budget),
            max_retries: self.max_retries,
        }
    }
}

impl<S: fmt::Debug, Pol: fmt::Debug> fmt::Debug for Retry<S, Pol> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

impl<S, Pol> Retry<S, Pol> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, Req, Pol> Service<Req> for Retry<S, Pol>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: Steer + Clone,
    Pol: RetryPolicy<Req> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RetryFuture<S, Req, Pol>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        self.budget.deposit();
        let answer = req.steering_mut().map(|s| {
            s.clear_served();
            s.clone()
        });
        let copy = (self.max_retries > 0).then(|| req.clone());
        // The service we were made ready for takes the first attempt; a clone, made
        // ready in turn, takes each retry.
        let service = self.inner.clone();
        let attempt = std::mem::replace(&mut self.inner, service).call(req);
        RetryFuture {
            state: State::Calling { attempt },
            service: self.inner.clone(),
            req: copy,
            answer,
            tried: Vec::new(),
            retries_left: self.max_retries,
            policy: self.policy.clone(),
            budget: Arc::clone(&self.budget),
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] attempt: F },
        Readying,
    }
}

pin_project! {
    /// The response future of [`Retry`].
    pub struct RetryFuture<S, Req, Pol>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        req: Option<Req>,
        answer: Option<Steering>,
        tried: Vec<BackendId>,
        retries_left: usize,
        policy: Pol,
        budget: Arc<TpsBudget>,
    }
}

impl<S: Service<Req>, Req, Pol> fmt::Debug for RetryFuture<S, Req, Pol> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryFuture")
            .field("tried", &self.tried)
            .field("retries_left", &self.retries_left)
            .finish_non_exhaustive()
    }
}

/// The backend a failed attempt went to: as the balancer reported it in the request's
/// steering, else as its error names it.
fn failed_backend(answer: Option<&Steering>, error: &BoxError) -> Option<BackendId> {
    answer.and_then(Steering::served_by).or_else(|| {
        find_error::<BackendError>(error)
            .map(|e| e.backend)
            .or_else(|| find_error::<TimedOut>(error).map(|e| e.backend))
    })
}

impl<S, Req, Pol> Future for RetryFuture<S, Req, Pol>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: Steer + Clone,
    Pol: RetryPolicy<Req>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { attempt } => {
                    let error: BoxError = match std::task::ready!(attempt.poll(cx)) {
                        Ok(response) => return Poll::Ready(Ok(response)),
                        Err(e) => e.into(),
                    };
                    let Some(req) = this.req.as_ref() else {
                        return Poll::Ready(Err(error));
                    };
                    let backend = failed_backend(this.answer.as_ref(), &error);
                    if let Some(id) = backend {
                        this.tried.push(id);
                    }
                    let retry = *this.retries_left > 0
                        && backend.is_some()
                        && this.policy.may_retry(req, &error)
                        && this.budget.withdraw();
                    if !retry {
                        return Poll::Ready(Err(error));
                    }
                    *this.retries_left -= 1;
                    tracing::debug!(
                        target: "tower_lb::balance",
                        failed = ?backend,
                        error = %error,
                        "retrying on another backend"
                    );
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    if let Err(e) = std::task::ready!(this.service.poll_ready(cx)) {
                        return Poll::Ready(Err(e.into()));
                    }
                    let mut next = if *this.retries_left > 0 {
                        this.req.clone()
                    } else {
                        // The last attempt: no copy needed after it.
                        this.req.take()
                    }
                    .ok_or("retry: the request was already sent")?;
                    *this.answer = next.steering_mut().map(|s| {
                        s.clear_served();
                        for &id in this.tried.iter() {
                            s.exclude(id);
                        }
                        s.clone()
                    });
                    let attempt = this.service.call(next);
                    this.state.set(State::Calling { attempt });
                }
            }
        }
    }
}
