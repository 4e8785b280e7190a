//! The server: the accept loop, the client connections' time-outs, graceful shutdown.
//!
//! Each connection (HTTP/1.1, after the TLS handshake when terminating TLS) is served
//! by the proxy's own path for requests without a body (`front.rs`, which applies the
//! time-outs itself) until a request comes that it leaves to hyper; hyper then serves
//! the rest of the connection and runs `handle` for each request. There [`Watched`]
//! wraps the connection's stream and ends it when no request head arrives in time
//! (`--header-timeout`) or no request starts for `--idle-timeout`; it learns of
//! requests through the [`Activity`] their [`Busy`] guards update. On shutdown, the
//! listener closes and requests in flight get 30 seconds to finish ([`Drain`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::Request;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulConnection;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower_lb::balance::BoxError;

use super::forward::Hop;
use super::{Inner, LOG_TARGET, Proxy, ProxyBody, alarm, front, handle, tls};

/// Accepts connections on `listener` until `shutdown` completes, then lets in-flight
/// requests finish (for up to 30 seconds).
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    tls: Option<Arc<ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    let drain = Drain::new();
    let acceptor = tls.map(TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: back off a little.
                    tracing::warn!(target: LOG_TARGET, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let inner = Arc::clone(&proxy.inner);
        let acceptor = acceptor.clone();
        let watcher = drain.watcher();
        tokio::spawn(async move {
            let hop = Hop::new(peer, acceptor.is_some());
            match acceptor {
                Some(acceptor) => {
                    if let Some(tls) = tls::handshake(&acceptor, stream, peer).await {
                        connection(tls, inner, hop, peer, watcher).await;
                    }
                }
                None => connection(stream, inner, hop, peer, watcher).await,
            }
        });
    }
    drop(listener);
    tracing::info!(target: LOG_TARGET, "shutting down: no new connections; waiting for requests in flight");
    tokio::select! {
        () = drain.shutdown() => tracing::info!(target: LOG_TARGET, "all connections closed"),
        () = tokio::time::sleep(Duration::from_secs(30)) => {
            tracing::warn!(target: LOG_TARGET, "requests still in flight after 30 s; closing");
        }
    }
}

/// Serves one client connection: requests without a body on the proxy's own path
/// (`front.rs`), and from the first one that is anything else, hyper.
async fn connection<T>(
    io: T,
    inner: Arc<Inner>,
    hop: Hop,
    peer: SocketAddr,
    mut watcher: DrainWatcher,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (io, head_due) = match front::serve(io, &inner, peer, &hop, &mut watcher).await {
        front::Next::Close => return,
        front::Next::Hyper(rest, head_due) => (rest, head_due),
    };
    let hop = Arc::new(hop);
    let activity = Activity::new(inner.client, head_due);
    let service = hyper::service::service_fn({
        let activity = Arc::clone(&activity);
        move |req: Request<Incoming>| {
            let inner = Arc::clone(&inner);
            let hop = Arc::clone(&hop);
            // In progress from the parsed head to the response's last byte.
            let busy = Busy::begin(&activity);
            async move {
                let response = handle(&inner, req.map(Some), peer, &hop).await;
                Ok::<_, Infallible>(response.map(|body| BusyBody { body, _busy: busy }))
            }
        }
    });
    let http = hyper::server::conn::http1::Builder::new();
    let io = Watched::new(io, activity);
    if let Err(e) = watcher
        .watch(http.serve_connection(TokioIo::new(io), service))
        .await
    {
        tracing::debug!(target: LOG_TARGET, %peer, error = %e, "connection ended with an error");
    }
}

/// Graceful shutdown of the client connections: when it starts, each connection is
/// asked to finish the request in progress and close (hyper's `graceful_shutdown`), and
/// [`Drain::shutdown`] waits until all of them have.
///
/// hyper-util's `GracefulShutdown` does the same with a `watch` channel whose `changed()`
/// future every connection polls each time it is polled — a lock and a waker check, some
/// 500 instructions per proxied request (callgrind). Here a poll reads one flag; each
/// connection's waker is registered once, and woken once, by the shutdown.
struct Drain {
    shared: Arc<DrainShared>,
}

struct DrainShared {
    /// Set once, when the shutdown starts.
    draining: AtomicBool,
    /// The connections not yet closed, by number, with the waker of their task once it
    /// was first polled.
    live: Mutex<Live>,
    /// Notified when the last connection closes during the shutdown.
    closed: tokio::sync::Notify,
}

#[derive(Default)]
struct Live {
    next: u64,
    wakers: HashMap<u64, Option<std::task::Waker>>,
}

impl Drain {
    fn new() -> Drain {
        Drain {
            shared: Arc::new(DrainShared {
                draining: AtomicBool::new(false),
                live: Mutex::new(Live::default()),
                closed: tokio::sync::Notify::new(),
            }),
        }
    }

    /// A newly accepted connection, counted from now on (through its TLS handshake).
    fn watcher(&self) -> DrainWatcher {
        let mut live = self.shared.live();
        let id = live.next;
        live.next += 1;
        live.wakers.insert(id, None);
        DrainWatcher {
            shared: Arc::clone(&self.shared),
            id,
            waker: None,
        }
    }

    /// Asks every connection to close after its request in progress, and waits until all
    /// have.
    async fn shutdown(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        let wakers: Vec<_> = self
            .shared
            .live()
            .wakers
            .values_mut()
            .filter_map(Option::take)
            .collect();
        wakers.into_iter().for_each(std::task::Waker::wake);
        while !self.shared.live().wakers.is_empty() {
            self.shared.closed.notified().await;
        }
    }
}

impl DrainShared {
    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection's place in the [`Drain`]; it is closed when this is dropped.
pub struct DrainWatcher {
    shared: Arc<DrainShared>,
    id: u64,
    /// The task's waker as registered with the drain.
    waker: Option<std::task::Waker>,
}

impl DrainWatcher {
    /// Serves `conn` until it ends, asking it to close once the shutdown starts.
    fn watch<C: GracefulConnection>(self, conn: C) -> Drained<C> {
        Drained {
            conn,
            watcher: self,
            asked: false,
        }
    }

    /// Whether the shutdown has started; if not, the task is woken when it does.
    pub fn draining(&mut self, cx: &Context<'_>) -> bool {
        // Registered before the flag is read, so a shutdown that sets it after the
        // read finds the waker (it wakes the wakers after setting the flag).
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let waker = cx.waker().clone();
            if let Some(slot) = self.shared.live().wakers.get_mut(&self.id) {
                *slot = Some(waker.clone());
            }
            self.waker = Some(waker);
        }
        self.draining_now()
    }

    /// Whether the shutdown has started.
    pub fn draining_now(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }
}

impl Drop for DrainWatcher {
    fn drop(&mut self) {
        let mut live = self.shared.live();
        live.wakers.remove(&self.id);
        if live.wakers.is_empty() && self.shared.draining.load(Ordering::SeqCst) {
            // A permit, should the shutdown not be waiting yet.
            self.shared.closed.notify_one();
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection being served under a [`Drain`].
    struct Drained<C> {
        #[pin]
        conn: C,
        watcher: DrainWatcher,
        // Whether the connection was asked to close.
        asked: bool,
    }
}

impl<C: GracefulConnection> Future for Drained<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.asked && this.watcher.draining(cx) {
            *this.asked = true;
            this.conn.as_mut().graceful_shutdown();
        }
        this.conn.poll(cx)
    }
}

/// The client connections' time-outs: `--header-timeout` and `--idle-timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// To send a request's head: from the connection's start (after the TLS handshake)
    /// for its first request, from the head's first byte for the next ones.
    pub header: Duration,
    /// With no request in progress, between two requests.
    pub idle: Duration,
}

/// What a client connection is waiting for when it has no request in progress.
#[derive(Debug, Clone, Copy)]
enum Waiting {
    /// The rest of a request head (or the first one): closed with an error after the
    /// header time-out.
    Head,
    /// The next request: closed quietly (an end of stream) after the idle time-out.
    Idle,
}

/// One client connection's progress, shared by its reader ([`Watched`]) and its
/// requests ([`Busy`]). hyper's own `header_read_timeout` cannot serve here: its clock
/// runs from the moment it waits for a head, idle time included, so it would close
/// idle keep-alive connections after the header time-out.
struct Activity {
    timeouts: ClientTimeouts,
    /// Requests whose head was read and whose response is not yet sent in full.
    busy: usize,
    /// With no request in progress: until when, and for what.
    deadline: Option<(tokio::time::Instant, Waiting)>,
    /// The reader's task, woken when the deadline moves before the timer's alarm.
    reader: Option<std::task::Waker>,
    /// When the reader's timer goes off, if it is set: a lazy alarm (`alarm.rs`), not
    /// moved when a deadline moves later (every request pushes the next one on), so a
    /// request costs no timer-wheel update and no wake-up of its own task.
    alarm: Option<tokio::time::Instant>,
}

impl Activity {
    /// A connection's activity, its first request head due at `head_due`.
    fn new(timeouts: ClientTimeouts, head_due: tokio::time::Instant) -> Arc<Mutex<Activity>> {
        Arc::new(Mutex::new(Activity {
            timeouts,
            busy: 0,
            deadline: Some((head_due, Waiting::Head)),
            reader: None,
            alarm: None,
        }))
    }
}

fn activity(activity: &Mutex<Activity>) -> std::sync::MutexGuard<'_, Activity> {
    activity.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request in progress on its connection; when the last one ends, the idle time-out
/// starts.
struct Busy(Arc<Mutex<Activity>>);

impl Busy {
    fn begin(shared: &Arc<Mutex<Activity>>) -> Busy {
        let mut a = activity(shared);
        a.busy += 1;
        a.deadline = None;
        drop(a);
        Busy(Arc::clone(shared))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut a = activity(&self.0);
        a.busy -= 1;
        if a.busy == 0 {
            let now = tokio::time::Instant::now();
            let at = now + a.timeouts.idle;
            a.deadline = Some((at, Waiting::Idle));
            // Only a reader whose alarm would ring too late, or has rung (or is not
            // set), needs to wake and set it.
            if a.alarm.is_none_or(|alarm| alarm > at || alarm <= now)
                && let Some(reader) = a.reader.take()
            {
                reader.wake();
            }
        }
    }
}

/// A response body that keeps its request in progress until it is dropped (hyper drops
/// it once sent, or when the connection ends).
pub struct BusyBody {
    body: ProxyBody,
    _busy: Busy,
}

impl Body for BusyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A client connection's stream, ending it when the client is too slow to send a
/// request head or stays idle too long (see [`ClientTimeouts`]). It learns of
/// requests through the [`Activity`] their [`Busy`] guards update, and checks the
/// deadline when its timer's alarm (`Activity::alarm`) goes off.
struct Watched<T> {
    io: T,
    activity: Arc<Mutex<Activity>>,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<T> Watched<T> {
    /// Watches `io` from now on, by the deadlines of `shared`.
    fn new(io: T, shared: Arc<Mutex<Activity>>) -> Self {
        Watched {
            io,
            activity: shared,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let mut a = activity(&this.activity);
        if let Poll::Ready(read) = polled {
            // The first byte of a request after an idle spell: the head's clock starts.
            if read.is_ok()
                && buf.filled().len() > before
                && let Some((_, Waiting::Idle)) = a.deadline
            {
                let at = tokio::time::Instant::now() + a.timeouts.header;
                a.deadline = Some((at, Waiting::Head));
            }
            return Poll::Ready(read);
        }
        if !a.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            a.reader = Some(cx.waker().clone());
        }
        let Some((at, waiting)) = a.deadline else {
            // A request in progress: no deadline. An alarm that went off is cleared,
            // for the request's end to see.
            if this.timer.is_elapsed() {
                a.alarm = None;
            }
            return Poll::Pending;
        };
        ready!(alarm::poll_due(this.timer.as_mut(), &mut a.alarm, at, cx));
        match waiting {
            // hyper closes a connection that ends between requests without a fuss.
            Waiting::Idle => Poll::Ready(Ok(())),
            Waiting::Head => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no complete request head within --header-timeout",
            ))),
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
