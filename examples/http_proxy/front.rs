//! The client side's own HTTP/1.1 path, for requests without a body: read and parsed
//! on the connection's task, proxied, and answered there, with no hand-off.
//!
//! hyper's server serves a connection through a dispatcher that parses each head into
//! its own state, hands the request to the service, and encodes the response from its
//! own buffers: about 7 000 of the 19 300 user-space instructions per proxied request
//! (callgrind, `benches/compare/instructions.sh`'s rig), where NGINX spends 18 600 on
//! everything. Here a head is parsed with httparse (hyper's parser) into the `http`
//! types the balancer reads, and the response is written with its body in one write.
//!
//! Only what is simple is served here: `GET`-like requests (no `transfer-encoding`, a
//! `content-length` of 0 if any, no `expect`, no `upgrade`, not `CONNECT`) of HTTP/1.0
//! or 1.1. The first head that is anything else — a request with a body, a malformed
//! head, one too large — and the rest of the connection go to hyper, the head
//! included ([`Rewind`]), so hyper answers what it always has (a 400, a 431,
//! `100 Continue`, chunked uploads). Both paths apply the same time-outs: a head is due
//! within `--header-timeout` (from the connection's start, then from its first byte),
//! a connection with no request in progress closes after `--idle-timeout`, and a
//! client that hangs up cancels its request (hyper's default, and NGINX's with
//! `proxy_ignore_client_abort off`).

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::{Body, Incoming};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::forward::{self, Hop};
use super::serve::DrainWatcher;
use super::{Inner, ProxyBody, alarm, h1, handle};

/// The longest head served here; a longer one goes to hyper (which takes heads of up to
/// about 400 KiB, and answers 431 beyond).
const MAX_HEAD: usize = 16 * 1024;
/// Room kept free in the read buffer before each read.
const READ_ROOM: usize = 4 * 1024;
/// Response bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;
/// The largest body frame copied into the gathered bytes; a larger one is written as
/// it is.
const GATHER: usize = 8 * 1024;
/// The most segments one write takes.
const MAX_SEGMENTS: usize = 32;
/// The room an idle connection keeps for its next answer's head; more is given back.
const KEEP_ROOM: usize = 16 * 1024;

/// How a connection served here goes on.
pub enum Next<T> {
    /// It is closed (or the client left).
    Close,
    /// hyper serves the rest, starting with the bytes already read; the head they
    /// begin is due at the instant given.
    Hyper(Rewind<T>, Instant),
}

/// When the connection gives up waiting for a request head.
#[derive(Clone, Copy)]
enum Due {
    /// The head's rest (or the first head): the connection closes at this instant.
    Head(Instant),
    /// The next request: idle since the last response, it closes at this instant.
    Idle(Instant),
}

/// A request head, parsed.
struct Head {
    request: Request<Option<Incoming>>,
    /// Whether the connection may carry another request after this one.
    keep_alive: bool,
}

/// What a parse found at the front of the buffer.
// Returned once per head and taken apart at once: a box would be an allocation per
// request.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// A head to serve here.
    Head(Head),
    /// A head to leave to hyper.
    Other,
    /// Not a whole head yet.
    Partial,
}

/// A client connection served on this path.
struct Front<T> {
    io: T,
    buf: BytesMut,
    /// What goes out next: `segments` (large body frames, and the bytes gathered
    /// before each), then `out`. A small answer is `out` alone, one write.
    out: Vec<u8>,
    segments: Vec<Bytes>,
    /// The bytes in `segments`.
    queued: usize,
    sleep: Pin<Box<Sleep>>,
    /// When `sleep` rings, if it is set (`alarm.rs`).
    alarm: Option<Instant>,
}

/// Serves `io` until it closes, or until a head comes that hyper must serve.
pub async fn serve<T>(
    io: T,
    inner: &Inner,
    peer: SocketAddr,
    hop: &Hop,
    drain: &mut DrainWatcher,
) -> Next<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut front = Front {
        io,
        buf: BytesMut::new(),
        out: Vec::new(),
        segments: Vec::new(),
        queued: 0,
        sleep: Box::pin(tokio::time::sleep(std::time::Duration::ZERO)),
        alarm: None,
    };
    let timeouts = inner.client;
    let mut due = Due::Head(Instant::now() + timeouts.header);
    loop {
        let head = loop {
            if !front.buf.is_empty() {
                match parse(&mut front.buf) {
                    Parsed::Head(head) => break head,
                    Parsed::Other => return front.rewind(due),
                    Parsed::Partial if front.buf.len() > MAX_HEAD => return front.rewind(due),
                    Parsed::Partial => {}
                }
            }
            match poll_fn(|cx| front.poll_more(cx, due, drain)).await {
                // The client closed, or went quiet too long, or the proxy is stopping
                // while it is idle: the connection ends without a word (as with hyper).
                Ok(0) | Err(_) => return Next::Close,
                Ok(_) => {
                    // The first byte of a request after an idle spell: the head's clock
                    // starts.
                    if let Due::Idle(_) = due {
                        due = Due::Head(Instant::now() + timeouts.header);
                    }
                }
            }
        };
        let Head {
            request,
            keep_alive,
        } = head;
        let method_head = request.method() == Method::HEAD;
        let version = request.version();
        let response = {
            let handling = handle(inner, request, peer, hop);
            tokio::pin!(handling);
            poll_fn(|cx| {
                if let Poll::Ready(response) = handling.as_mut().poll(cx) {
                    return Poll::Ready(Some(response));
                }
                // A client that hangs up cancels its request; bytes of a next request
                // (pipelined) wait in the buffer.
                front.poll_pipelined(cx).map(|()| None)
            })
            .await
        };
        let Some(response) = response else {
            return Next::Close;
        };
        // A shutdown asks every connection to close after its request in progress.
        let keep_alive = keep_alive && !drain.draining_now();
        match front
            .respond(response, method_head, version, keep_alive)
            .await
        {
            Ok(true) => {
                if front.out.capacity() > KEEP_ROOM {
                    front.out = Vec::new();
                }
            }
            Ok(false) => {
                // The answer's end, then ours (a FIN; with TLS, a `close_notify`), as
                // hyper does.
                let _ = front.io.shutdown().await;
                return Next::Close;
            }
            Err(_) => return Next::Close,
        }
        due = if front.buf.is_empty() {
            Due::Idle(Instant::now() + timeouts.idle)
        } else {
            // A next request's first bytes came during this one.
            Due::Head(Instant::now() + timeouts.header)
        };
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Front<T> {
    /// Reads more of a request head: `Ok(0)` when the client closed, an error when the
    /// head (or the next request) is overdue or the proxy is stopping while the
    /// connection is idle.
    fn poll_more(
        &mut self,
        cx: &mut Context<'_>,
        due: Due,
        drain: &mut DrainWatcher,
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(read) = self.poll_fill(cx) {
            return Poll::Ready(read);
        }
        // Stopping: a connection with nothing of a request read closes (hyper's
        // graceful shutdown does the same).
        if self.buf.is_empty() && drain.draining(cx) {
            return Poll::Ready(Err(io::ErrorKind::Interrupted.into()));
        }
        let (Due::Idle(at) | Due::Head(at)) = due;
        ready!(alarm::poll_due(
            self.sleep.as_mut(),
            &mut self.alarm,
            at,
            cx
        ));
        Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
    }

    /// Watches the client while its request is in progress: ready when it has closed
    /// (or failed). Once it has sent anything more (a next request, pipelined), it is
    /// no longer watched until that request is served, as hyper does: the answer to a
    /// request with another behind it is not lost to the client's close.
    fn poll_pipelined(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.buf.is_empty() {
            match ready!(self.poll_fill(cx)) {
                Ok(0) | Err(_) => return Poll::Ready(()),
                Ok(_) => {}
            }
        }
        Poll::Pending
    }

    /// Reads what the socket has into `buf`; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_ROOM {
            self.buf.reserve(2 * READ_ROOM);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Writes `response`; `Ok(true)` when the connection may carry another request.
    async fn respond(
        &mut self,
        response: Response<ProxyBody>,
        method_head: bool,
        version: Version,
        mut keep_alive: bool,
    ) -> io::Result<bool> {
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        let bodiless = method_head
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut length = None::<u64>;
        let mut dated = false;
        for (name, value) in &parts.headers {
            if name == header::CONNECTION || name == header::TRANSFER_ENCODING {
                // This connection's own: set below.
                continue;
            }
            if name == header::CONTENT_LENGTH {
                let Some(n) = std::str::from_utf8(value.as_bytes())
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .filter(|&n| length.is_none_or(|m| m == n))
                else {
                    // A length that does not parse or conflicts: framed anew below.
                    length = None;
                    continue;
                };
                if length.is_some() {
                    continue;
                }
                length = Some(n);
            }
            dated |= name == header::DATE;
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !dated {
            date::write(out);
        }
        // How the body is framed: a length, chunks, or the connection's close.
        let framing = if bodiless {
            Framing::None
        } else if let Some(n) = length.or_else(|| body.size_hint().exact()) {
            if length.is_none() {
                write_length(out, n);
            }
            Framing::Length(n)
        } else if version == Version::HTTP_11 {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        } else {
            keep_alive = false;
            Framing::Close
        };
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if let Framing::None = framing {
            self.flush().await?;
            return Ok(keep_alive);
        }
        let mut sent = 0u64;
        loop {
            let step = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(frame) => Poll::Ready(Step::Frame(frame)),
                // Nothing more for now: what is gathered goes out meanwhile.
                Poll::Pending if !self.out.is_empty() || !self.segments.is_empty() => {
                    Poll::Ready(Step::Flush)
                }
                // A client that leaves while the backend is quiet (a long poll, a
                // stream of events) ends the exchange; the backend connection closes.
                Poll::Pending => self.poll_pipelined(cx).map(|()| Step::Gone),
            })
            .await;
            let step = match step {
                Step::Frame(frame) => frame,
                Step::Flush => {
                    self.flush().await?;
                    continue;
                }
                Step::Gone => return Err(io::ErrorKind::ConnectionAborted.into()),
            };
            match step {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        // Trailers: not forwarded.
                        continue;
                    };
                    sent += data.len() as u64;
                    if let Framing::Length(n) = framing
                        && sent > n
                    {
                        // More than the length said: the client must not take the rest
                        // for a next response.
                        self.flush().await?;
                        return Ok(false);
                    }
                    self.data(framing, data).await?;
                }
                Some(Err(e)) => {
                    // The backend's body failed: the client sees the connection end
                    // before the body does, never a shorter body taken as whole — nor
                    // a clean end (a TLS `close_notify`) after a body framed by the
                    // close.
                    self.flush().await?;
                    return Err(io::Error::other(e));
                }
                None => {
                    match framing {
                        Framing::Chunked => self.out.extend_from_slice(b"0\r\n\r\n"),
                        Framing::Length(n) if sent != n => keep_alive = false,
                        _ => {}
                    }
                    self.flush().await?;
                    return Ok(keep_alive);
                }
            }
        }
    }

    /// Adds a body frame to what goes out (small ones are gathered, large ones written
    /// as they are, without a copy).
    async fn data(&mut self, framing: Framing, data: Bytes) -> io::Result<()> {
        if let Framing::Chunked = framing {
            if data.is_empty() {
                return Ok(());
            }
            write_hex(&mut self.out, data.len());
        }
        if data.len() <= GATHER {
            self.out.extend_from_slice(&data);
        } else {
            // Queued as it is, behind what was gathered before it: written together,
            // in one vectored write, with no copy (as hyper's server does).
            if !self.out.is_empty() {
                self.segments
                    .push(Bytes::from(std::mem::take(&mut self.out)));
            }
            self.queued += data.len();
            self.segments.push(data);
        }
        if let Framing::Chunked = framing {
            self.out.extend_from_slice(b"\r\n");
        }
        if self.out.len() + self.queued >= WRITE_BATCH || self.segments.len() >= MAX_SEGMENTS {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes what is gathered (and flushes a TLS stream's records).
    async fn flush(&mut self) -> io::Result<()> {
        if self.segments.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        } else {
            if !self.out.is_empty() {
                self.segments
                    .push(Bytes::from(std::mem::take(&mut self.out)));
            }
            let (io, segments) = (&mut self.io, &mut self.segments);
            let mut first = 0;
            while first < segments.len() {
                let mut slices = [io::IoSlice::new(&[]); MAX_SEGMENTS + 1];
                let count = (segments.len() - first).min(slices.len());
                for (slice, segment) in slices.iter_mut().zip(&segments[first..]) {
                    *slice = io::IoSlice::new(segment);
                }
                let mut n =
                    poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))
                        .await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                // Past what was written: whole segments, then part of one.
                while n > 0 {
                    let segment = &mut segments[first];
                    let taken = n.min(segment.len());
                    bytes::Buf::advance(segment, taken);
                    n -= taken;
                    if segment.is_empty() {
                        first += 1;
                    }
                }
            }
            segments.clear();
            self.queued = 0;
        }
        self.io.flush().await
    }

    /// The connection for hyper, with what was read and not served, and the instant
    /// the head is due (the header time-out goes on, not anew).
    fn rewind(self, due: Due) -> Next<T> {
        let (Due::Idle(at) | Due::Head(at)) = due;
        let rest = Rewind {
            read: self.buf.freeze(),
            io: self.io,
        };
        Next::Hyper(rest, at)
    }
}

/// What the response body's writer does next.
enum Step {
    Frame(Option<Result<hyper::body::Frame<Bytes>, tower_lb::balance::BoxError>>),
    /// Write what is gathered while the body has nothing more.
    Flush,
    /// The client left.
    Gone,
}

/// How a response body is framed on the client connection.
#[derive(Clone, Copy)]
enum Framing {
    /// No body (a `HEAD` request; 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Up to the connection's close (an HTTP/1.0 client, no length known).
    Close,
}

fn write_length(out: &mut Vec<u8>, n: u64) {
    use std::io::Write;
    let _ = write!(out, "content-length: {n}\r\n");
}

/// A chunk's size line.
fn write_hex(out: &mut Vec<u8>, n: usize) {
    use std::io::Write;
    let _ = write!(out, "{n:x}\r\n");
}

/// Parses the head at the front of `buf`, taking it out when it is served here.
fn parse(buf: &mut BytesMut) -> Parsed {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; h1::MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // Too many fields, or malformed: hyper's to answer.
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(path), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Parsed::Other;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    if method == Method::CONNECT {
        return Parsed::Other;
    }
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let base = buf.as_ptr() as usize;
    let path = {
        let start = path.as_ptr() as usize - base;
        start..start + path.len()
    };
    let mut spans = [[0u32; 4]; h1::MAX_HEADERS];
    let count = h1::field_spans(parsed.headers, base, &mut spans);
    let bytes = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(bytes.slice(path)) else {
        // `bytes` is out of the buffer: hyper gets it back.
        unsplit(buf, bytes);
        return Parsed::Other;
    };
    let mut headers = HeaderMap::with_capacity(count);
    let mut connection = forward::ConnectionTokens::default();
    let mut length = false;
    let mut plain = true;
    for &[name_start, name_end, start, end] in &spans[..count] {
        let Ok(name) = HeaderName::from_bytes(&bytes[name_start as usize..name_end as usize])
        else {
            plain = false;
            break;
        };
        let value = h1::field_value(&bytes, start, end);
        if name == header::CONTENT_LENGTH {
            // A body is hyper's to read; an explicit empty one is none, said once to
            // the backend however often the client said it (as hyper does).
            plain &= !value.is_empty() && value.as_bytes().iter().all(|&b| b == b'0');
            if std::mem::replace(&mut length, true) {
                continue;
            }
        } else if name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE
        {
            plain = false;
        } else if name == header::CONNECTION {
            connection.add(value.as_bytes());
        }
        if !plain {
            break;
        }
        headers.append(name, value);
    }
    if !plain {
        unsplit(buf, bytes);
        return Parsed::Other;
    }
    let mut request = Request::new(None);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Parsed::Head(Head {
        request,
        keep_alive: !connection.close && (version == Version::HTTP_11 || connection.keep_alive),
    })
}

/// Puts a head taken out of `buf` back in front of it.
fn unsplit(buf: &mut BytesMut, head: Bytes) {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(buf);
    *buf = whole;
}

/// A client connection handed to hyper: the bytes already read, then the stream.
pub struct Rewind<T> {
    read: Bytes,
    io: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The `date` field of the responses that lack one (the proxy's own answers), as
/// hyper adds it: formatted once a second.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }

    pub fn write(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with_borrow_mut(|(at, text)| {
            if *at != secs {
                *at = secs;
                *text = httpdate::fmt_http_date(now);
            }
            out.extend_from_slice(b"date: ");
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"\r\n");
        });
    }
}
