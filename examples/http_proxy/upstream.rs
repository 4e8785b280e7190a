//! The HTTP client under the balancer, and the request body its attempts share.
//!
//! [`Upstream`] speaks HTTP/1.1 to the backends (`h1.rs`, from the request's own task)
//! over a small pool of keep-alive connections per backend: a request takes an idle
//! connection (or opens one), and its response body puts the connection back once read
//! to the end. An idle connection the backend closed just as a request went out is
//! replaced by a new one, once, when the request may go again (nothing of it was
//! written, or a safe method with no body), as Go's `net/http` transport does. Each
//! attempt gets `--timeout` to
//! produce the response head, and each connect [`CONNECT_TIMEOUT`] of it. Its
//! [`UpstreamError`] says which backend failed and how ([`Failure`]): what the balancer
//! counts against the backend, and what `handle` decides a retry on.
//!
//! A request may go to a second backend, body and all, as long as the first never read
//! its body: the client's body waits in a [`BodySlot`] until an attempt polls it (its
//! [`Deferred`] body), and [`Resend`] builds each attempt's request around the slot.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use http::header::HeaderMap;
use http::uri::Authority;
use http::{Method, Request, Response, Uri, Version};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use tokio::net::TcpStream;
use tower::Service;
use tower_lb::balance::BoxError;

use super::LOG_TARGET;
use super::h1::{Conn, Fields, Finish, Reading};

/// How long one connect to a backend may take (and at most ¾ of `--timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// An idle connection older than this is closed rather than reused (hyper-util's
/// pool's default): the backend may be about to close it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How often the idle connections are looked over for the ones the backend closed.
const SWEEP: Duration = Duration::from_millis(250);

/// At most this many idle connections are kept per backend; more are closed.
const MAX_IDLE: usize = 512;

/// The HTTP client under the balancer: keep-alive connections per backend, each attempt
/// bounded by `--timeout`, reporting which backend a failure came from. Being under
/// the balancer, a time-out is an error the balancer's classifier sees: a failure for
/// the backend's passive health, counted once, like a refused connection.
#[derive(Clone)]
pub struct Upstream {
    pools: Arc<Pools>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl Upstream {
    /// A client whose attempts each get `timeout` (`--timeout`).
    pub fn new(timeout: Duration) -> Upstream {
        let pools = Arc::new(Pools::default());
        let weak = Arc::downgrade(&pools);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                match weak.upgrade() {
                    Some(pools) => pools.sweep(),
                    None => return,
                }
            }
        });
        Upstream {
            pools,
            timeout,
            // A refused or unanswered connect is a connect failure, retried for any
            // method (nothing was sent). So that a hanging connect is reported as one,
            // never as the attempt's time-out, it gets at most three quarters of
            // --timeout.
            connect_timeout: CONNECT_TIMEOUT.min(timeout.mul_f64(0.75)),
        }
    }
}

/// An idle connection, and since which sweep it has been idle (a count, where a clock
/// read would cost each request two).
struct Idle {
    conn: Box<Conn>,
    since: u32,
}

/// The idle connections of each backend, the last one returned on top (it is the
/// likeliest to be ready and its buffers warm). Keyed by the authority's text: hashing
/// an `Authority` feeds the hasher a byte at a time (it lowercases each), which cost
/// more than the rest of the pool's work; the balancer hands over the same text for a
/// backend every time. Hashed with foldhash (what hashbrown uses), not SipHash: the
/// text is ours, not an attacker's to choose, and SipHash was half the cost of a lookup.
#[derive(Default)]
struct Pools {
    idle: Mutex<IdleMap>,
    /// Sweeps so far.
    sweeps: AtomicU32,
}

type IdleMap = HashMap<Box<str>, Vec<Idle>, foldhash::fast::RandomState>;

impl Pools {
    fn lock(&self) -> std::sync::MutexGuard<'_, IdleMap> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection to `target` that is still open (the sweep closes the old).
    fn take(&self, target: &Authority) -> Option<Box<Conn>> {
        let mut idle = self.lock();
        let list = idle.get_mut(target.as_str())?;
        while let Some(Idle { conn, .. }) = list.pop() {
            if conn.is_open() {
                return Some(conn);
            }
        }
        None
    }

    /// Closes the idle connections the backend closed, and those idle for
    /// [`IDLE_TIMEOUT`]. Nothing reads an idle connection, so without this a backend's
    /// close would leave it half-closed until a request took it.
    fn sweep(&self) {
        let now = self.sweeps.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let oldest = (IDLE_TIMEOUT.as_millis() / SWEEP.as_millis()) as u32;
        let mut idle = self.lock();
        idle.retain(|_, list| {
            list.retain(|i| now.wrapping_sub(i.since) < oldest && i.conn.is_open());
            // A backend with none left loses its entry (it may be gone for good).
            !list.is_empty()
        });
    }

    /// Puts a connection whose exchange ended cleanly back.
    fn put(&self, target: &Authority, conn: Box<Conn>) {
        let mut idle = self.lock();
        let list = match idle.get_mut(target.as_str()) {
            Some(list) => list,
            None => idle.entry(target.as_str().into()).or_default(),
        };
        if list.len() < MAX_IDLE {
            list.push(Idle {
                conn,
                since: self.sweeps.load(Ordering::Relaxed),
            });
        }
    }
}

/// Opens a connection to `target`.
async fn connect(target: &Authority, within: Duration) -> io::Result<Box<Conn>> {
    let stream = match tokio::time::timeout(within, TcpStream::connect(target.as_str())).await {
        Ok(stream) => stream?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {within:?}"),
            ));
        }
    };
    stream.set_nodelay(true)?;
    Ok(Box::new(Conn::new(stream)))
}

impl Upstream {
    /// Sends `req` to its URI's authority on an idle connection, or a new one when none
    /// is idle (or the idle ones turn out closed before anything was answered, and the
    /// request may go again); returns the response head, and its body being read. `req`
    /// is borrowed, not moved: the futures here stay small, and moving them costs less.
    async fn send(
        &self,
        target: &Authority,
        req: &mut Request<Deferred>,
        deadline: Instant,
    ) -> Result<(Response<()>, Reading), Failure> {
        let shared = Arc::clone(&req.body().shared);
        let fields = &shared.fields;
        if let Some(conn) = self.pools.take(target) {
            match conn.exchange(req, fields, target, deadline).await {
                Ok(exchanged) => return Ok(exchanged),
                // Once only, and then on a new connection: a backend that closes
                // without answering because of the request itself gets it twice at
                // most, never once per idle connection.
                Err(e) if e.stale => {
                    tracing::debug!(target: LOG_TARGET, error = %e.error, "a reused connection was closed; a new one");
                }
                Err(e) => return Err(self.failure(e.error)),
            }
        }
        // Boxed: a connect's future is large, and rare on keep-alive connections.
        let conn = Box::pin(connect(target, self.connect_timeout))
            .await
            .map_err(Failure::Connect)?;
        conn.exchange(req, fields, target, deadline)
            .await
            .map_err(|e| self.failure(e.error))
    }

    /// A failed exchange's failure: its deadline passed, or another error.
    fn failure(&self, error: io::Error) -> Failure {
        match error.kind() {
            io::ErrorKind::TimedOut => Failure::TimedOut(self.timeout),
            _ => Failure::Other(error),
        }
    }

    fn body(
        &self,
        target: Authority,
        req: Request<Deferred>,
        head: Response<()>,
        reading: Reading,
    ) -> Response<UpstreamBody> {
        // The request's body, while the backend is still reading it.
        let request = reading.sending().then(|| req.into_body());
        head.map(|()| UpstreamBody {
            reading,
            request,
            target,
            pools: Arc::clone(&self.pools),
        })
    }
}

/// A backend's response body, read from its connection as the client's side asks for
/// it (and the request's body still written meanwhile); once both ended cleanly, the
/// connection goes back to the pool. Dropped before the end, it closes the connection.
pub struct UpstreamBody {
    reading: Reading,
    request: Option<Deferred>,
    /// The backend that answered.
    target: Authority,
    pools: Arc<Pools>,
}

impl UpstreamBody {
    /// The backend that answered (for the access log and server-load reports): the
    /// body carries it, where a response extension would cost a map and a box per
    /// response.
    pub fn backend(&self) -> &Authority {
        &self.target
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let polled = this.reading.poll_data(this.request.as_mut(), cx);
        if let Poll::Ready(None) = polled {
            this.finish();
        }
        polled.map(|data| data.map(|data| data.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.reading.ended()
    }

    fn size_hint(&self) -> SizeHint {
        match self.reading.exact() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl UpstreamBody {
    /// Puts the connection back once the response is read, or closes it; when the
    /// response came before the request's body was all sent, a task sends the rest
    /// first (hyper's server never polls an empty response body, so it cannot be done
    /// from here).
    fn finish(&mut self) {
        match self.reading.finish() {
            Finish::Reuse(conn) => self.pools.put(&self.target, conn),
            Finish::SendRest(rest) => {
                let Some(body) = self.request.take() else {
                    return;
                };
                let (pools, target) = (Arc::clone(&self.pools), self.target.clone());
                tokio::spawn(async move {
                    if let Some(conn) = rest.send(body).await {
                        pools.put(&target, conn);
                    }
                });
            }
            Finish::Close => {}
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.finish();
    }
}

type UpstreamFuture =
    Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + Send>>;

impl Service<Request<Deferred>> for Upstream {
    type Response = Response<UpstreamBody>;
    type Error = UpstreamError;
    type Future = UpstreamFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        // Always ready: each request takes an idle connection or opens one.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Deferred>) -> UpstreamFuture {
        let upstream = self.clone();
        Box::pin(async move {
            let mut req = req;
            let Some(target) = req.uri().authority().cloned() else {
                return Err(UpstreamError {
                    target: None,
                    failure: Failure::Connect(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "the request names no backend",
                    )),
                });
            };
            // The attempt's deadline: its connect gets at most three quarters of the
            // time-out (`connect_timeout`), its exchange the rest. On time-out the
            // connection is closed.
            let deadline = Instant::now() + upstream.timeout;
            let failure = match upstream.send(&target, &mut req, deadline).await {
                Ok((head, reading)) => return Ok(upstream.body(target, req, head, reading)),
                Err(failure) => failure,
            };
            Err(UpstreamError {
                target: Some(target),
                failure,
            })
        })
    }
}

/// Why a backend request failed.
#[derive(Debug)]
pub enum Failure {
    /// No connection (refused, or not accepted within the connect time-out): nothing
    /// was sent.
    Connect(io::Error),
    /// No response head within the attempt's time-out; the request may have been sent.
    TimedOut(Duration),
    /// Any other error once connected (reset, closed, a malformed response, a failed
    /// request body): the request may have been sent.
    Other(io::Error),
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
            Failure::Connect(e) => write!(f, "backend {target}: connect failed: {e}"),
            Failure::TimedOut(after) => {
                write!(f, "backend {target}: no response within {after:?}")
            }
            Failure::Other(e) => write!(f, "backend {target}: {e}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.failure {
            Failure::Connect(e) => Some(e),
            Failure::Other(e) => Some(e),
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
    shared: Arc<Shared>,
    attempt: u32,
    body: Option<Incoming>,
    taken: bool,
    end: bool,
    hint: SizeHint,
}

/// What the attempts of one request share: the body's slot, and the header fields as
/// every attempt writes them.
struct Shared {
    slot: Mutex<BodySlot>,
    fields: Fields,
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, BodySlot> {
    shared.slot.lock().unwrap_or_else(|e| e.into_inner())
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
            let mut slot = lock(&self.shared);
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

/// What is needed to send a request again: its head (the header fields as written to
/// a backend), and its body's slot.
pub struct Resend {
    /// The request's method.
    pub method: Method,
    /// The request's URI.
    pub uri: Uri,
    version: Version,
    /// The client's headers, for the first attempt's balancer keys (a hashing key, a
    /// sticky cookie); later attempts go to a chosen backend and need none.
    headers: Option<HeaderMap>,
    /// The client's address, for a hashing strategy's key (in each attempt's
    /// extensions); `None` when nothing reads it.
    peer: Option<SocketAddr>,
    shared: Arc<Shared>,
}

impl Resend {
    /// A request to send, with its header fields as `fields` writes them; `body` is
    /// `None` for a request without one.
    pub fn new(
        parts: http::request::Parts,
        body: Option<Incoming>,
        peer: Option<SocketAddr>,
        fields: impl FnOnce(&HeaderMap, &Method, bool) -> Fields,
    ) -> Self {
        let (empty, hint) = body
            .as_ref()
            .map_or((true, SizeHint::with_exact(0)), |body| {
                (body.is_end_stream(), body.size_hint())
            });
        let fields = fields(&parts.headers, &parts.method, !empty);
        Resend {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: Some(parts.headers),
            peer,
            shared: Arc::new(Shared {
                slot: Mutex::new(BodySlot {
                    body,
                    attempt: 1,
                    empty,
                    hint,
                }),
                fields,
            }),
        }
    }

    /// The request of the first attempt, with the client's headers.
    pub fn first(&mut self) -> Request<Deferred> {
        let mut req = {
            let slot = lock(&self.shared);
            self.request(&slot)
        };
        *req.headers_mut() = self.headers.take().unwrap_or_default();
        req
    }

    /// The request of another attempt; `None` when an earlier attempt has (partly) sent
    /// the body, which cannot be sent again.
    pub fn again(&self) -> Option<Request<Deferred>> {
        let mut slot = lock(&self.shared);
        if slot.body.is_none() && !slot.empty {
            return None;
        }
        // From now on, an earlier attempt's body finds the slot taken.
        slot.attempt += 1;
        Some(self.request(&slot))
    }

    fn request(&self, slot: &BodySlot) -> Request<Deferred> {
        let body = Deferred {
            shared: Arc::clone(&self.shared),
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
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(peer);
        }
        req
    }
}
