//! The HTTP client under the balancer, and the request body its attempts share.
//!
//! [`Upstream`] is hyper-util's pooled client; each attempt gets `--timeout` to produce
//! the response head, and each connect [`CONNECT_TIMEOUT`] of it. Its [`UpstreamError`]
//! says which backend failed and how ([`Failure`]): what the balancer counts against
//! the backend, and what `handle` decides a retry on.
//!
//! A request may go to a second backend, body and all, as long as the first never read
//! its body: the client's body waits in a [`BodySlot`] until an attempt polls it (its
//! [`Deferred`] body), and [`Resend`] builds each attempt's request around the slot.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::HeaderMap;
use http::uri::Authority;
use http::{Method, Request, Response, Uri, Version};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::Service;
use tower_lb::balance::BoxError;

/// How long one connect to a backend may take (and at most ¾ of `--timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The HTTP client under the balancer: hyper-util's pooled client, each attempt bounded
/// by `--timeout`, reporting which backend a failure came from. Being under the
/// balancer, a time-out is an error the balancer's classifier sees: a failure for the
/// backend's passive health, counted once, like a refused connection.
#[derive(Clone)]
pub struct Upstream {
    client: HyperClient<HttpConnector, Deferred>,
    timeout: Duration,
}

impl Upstream {
    /// A client whose attempts each get `timeout` (`--timeout`).
    pub fn new(timeout: Duration) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // A refused or unanswered connect is a connect failure, retried for any method
        // (nothing was sent). So that a hanging connect is reported as one, never as
        // the attempt's time-out, it gets at most three quarters of --timeout.
        let connect_timeout = CONNECT_TIMEOUT.min(timeout.mul_f64(0.75));
        connector.set_connect_timeout(Some(connect_timeout));
        Upstream {
            client: HyperClient::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }
}

type UpstreamFuture =
    Pin<Box<dyn Future<Output = Result<Response<Incoming>, UpstreamError>> + Send>>;

impl Service<Request<Deferred>> for Upstream {
    type Response = Response<Incoming>;
    type Error = UpstreamError;
    type Future = UpstreamFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        // hyper-util's client is always ready: it queues for a connection per request.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Deferred>) -> UpstreamFuture {
        let target = req.uri().authority().cloned();
        let sent = self.client.request(req);
        let timeout = self.timeout;
        Box::pin(async move {
            // On time-out the request is dropped: its connection, if any, is closed.
            let failure = match tokio::time::timeout(timeout, sent).await {
                Ok(Ok(mut response)) => {
                    if let Some(target) = target {
                        response.extensions_mut().insert(ServedBy(target));
                    }
                    return Ok(response);
                }
                Ok(Err(e)) if e.is_connect() => Failure::Connect(e),
                Ok(Err(e)) => Failure::Other(e),
                Err(_) => Failure::TimedOut(timeout),
            };
            Err(UpstreamError { target, failure })
        })
    }
}

/// Which backend answered, in the response's extensions (for the access log).
#[derive(Debug, Clone)]
pub struct ServedBy(pub Authority);

/// Why a backend request failed.
#[derive(Debug)]
pub enum Failure {
    /// No connection: nothing was sent.
    Connect(hyper_util::client::legacy::Error),
    /// No response head within the attempt's time-out; the request may have been sent.
    TimedOut(Duration),
    /// Any other error once connected (reset, closed, a failed request body): the
    /// request may have been sent.
    Other(hyper_util::client::legacy::Error),
}

/// A backend request that failed: where it went, and how.
#[derive(Debug)]
pub struct UpstreamError {
    target: Option<Authority>,
    failure: Failure,
}

impl UpstreamError {
    /// The backend it went to.
    pub fn target(&self) -> Option<&Authority> {
        self.target.as_ref()
    }

    /// How it failed.
    pub fn failure(&self) -> &Failure {
        &self.failure
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = self.target.as_ref().map_or("?", |t| t.as_str());
        match &self.failure {
            Failure::Connect(e) => write!(f, "backend {target}: connect failed: {e:?}"),
            Failure::TimedOut(after) => {
                write!(f, "backend {target}: no response within {after:?}")
            }
            Failure::Other(e) => write!(f, "backend {target}: {e:?}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.failure {
            Failure::Connect(e) | Failure::Other(e) => Some(e),
            Failure::TimedOut(_) => None,
        }
    }
}

/// The client's request body, shared by the attempts to send it: the first attempt
/// whose body is polled takes it. A later attempt may start only while nobody took it
/// (or when it is empty), and from then on an earlier attempt that polls its body gets
/// an error, never a silently empty body.
struct BodySlot {
    body: Option<Incoming>,
    /// The attempt the body belongs to (1, 2, …).
    attempt: u32,
    /// Whether the body was empty from the start: then any attempt may send "it".
    empty: bool,
    hint: SizeHint,
}

/// The request body sent to a backend: the client's body, taken from its [`BodySlot`]
/// on the first poll. While no backend has polled it, it is still in the slot, so a
/// request whose connection failed or timed out can be sent again, body and all.
pub struct Deferred {
    slot: Arc<Mutex<BodySlot>>,
    attempt: u32,
    body: Option<Incoming>,
    taken: bool,
    end: bool,
    hint: SizeHint,
}

fn lock(slot: &Mutex<BodySlot>) -> std::sync::MutexGuard<'_, BodySlot> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

impl Body for Deferred {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.taken {
            self.taken = true;
            let mut slot = lock(&self.slot);
            if slot.attempt != self.attempt {
                return Poll::Ready(Some(Err("the request body went to a later attempt".into())));
            }
            let (body, empty) = (slot.body.take(), slot.empty);
            drop(slot);
            if body.is_none() && !empty {
                return Poll::Ready(Some(Err("the request body was already sent".into())));
            }
            self.body = body;
        }
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(body) => body.is_end_stream(),
            None => self.taken || self.end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(body) => body.size_hint(),
            None => self.hint,
        }
    }
}

/// What is needed to send a request again: its head, and its body's slot.
pub struct Resend {
    /// The request's method.
    pub method: Method,
    /// The request's URI.
    pub uri: Uri,
    version: Version,
    headers: HeaderMap,
    peer: SocketAddr,
    slot: Arc<Mutex<BodySlot>>,
}

impl Resend {
    pub fn new(parts: http::request::Parts, body: Incoming, peer: SocketAddr) -> Self {
        let (empty, hint) = (body.is_end_stream(), body.size_hint());
        Resend {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            peer,
            slot: Arc::new(Mutex::new(BodySlot {
                body: Some(body),
                attempt: 1,
                empty,
                hint,
            })),
        }
    }

    /// The request of the first attempt.
    pub fn first(&self) -> Request<Deferred> {
        let slot = lock(&self.slot);
        self.request(&slot)
    }

    /// The request of another attempt; `None` when an earlier attempt has (partly) sent
    /// the body, which cannot be sent again.
    pub fn again(&self) -> Option<Request<Deferred>> {
        let mut slot = lock(&self.slot);
        if slot.body.is_none() && !slot.empty {
            return None;
        }
        // From now on, an earlier attempt's body finds the slot taken.
        slot.attempt += 1;
        Some(self.request(&slot))
    }

    fn request(&self, slot: &BodySlot) -> Request<Deferred> {
        let body = Deferred {
            slot: Arc::clone(&self.slot),
            attempt: slot.attempt,
            body: None,
            taken: false,
            end: slot.empty,
            hint: slot.hint,
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req.extensions_mut().insert(self.peer);
        req
    }
}
