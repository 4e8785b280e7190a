//! HTTP/1.1 to a backend, spoken from the request's own task: the proxy side of what
//! hyper's client does, without its connection task.
//!
//! hyper's connection-level client drives each connection from a task of its own, and
//! a request reaches it through a channel, its response comes back through another.
//! Under load that hand-off was most of the proxy's work per request beyond NGINX's: the
//! backend connection's task was polled three times per request, and every request and
//! response was moved through the channels (the profile in the README's
//! "Performance"). A proxy needs less than a general client: the request's head is
//! already parsed and checked (by hyper's server, on the client side), so here it is
//! only written out, and the backend's response head is parsed with `httparse` (the
//! parser hyper uses) into the `http` types the server side writes. Pingora's proxy is
//! built the same way: its own HTTP/1 codec over `httparse`.
//!
//! A [`Conn`] is one keep-alive connection. [`Conn::exchange`] writes a request and
//! returns its response head, and [`Reading`] reads the response's body (a length, or
//! chunks, or up to the close, RFC 9112 section 6.3) while it keeps sending the
//! request's body, so a backend that answers as it reads (an echo) never waits on us.
//! The connection is reusable once both bodies ended and the backend did not ask to
//! close it.

use std::future::poll_fn;
use std::io;
use std::io::Write as _;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Bytes};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::{Duration, Instant, Sleep};

use super::{alarm, forward};

/// At most this many header fields in a response head (hyper's default).
pub const MAX_HEADERS: usize = 100;

/// A response head (or a chunk's size line, or a trailer) longer than this is an error.
const MAX_HEAD: usize = 64 * 1024;

/// At most this many header names of a response are remembered for the next one.
const MAX_NAMES: usize = 32;

/// A read leaves at least this much room in the buffer.
const READ_ROOM: usize = 8 * 1024;

/// A request's header fields as written to a backend, then the body's framing and the
/// head's end: built once per request ([`Fields::finish`]), written by each attempt
/// after its request line.
pub struct Fields {
    bytes: Vec<u8>,
    /// Whether the fields include `Host`.
    host: bool,
    /// Whether the body goes in chunks (it has no `Content-Length`).
    chunked: bool,
}

impl Fields {
    /// No fields yet, room for `bytes`.
    pub fn with_capacity(bytes: usize) -> Fields {
        Fields {
            bytes: Vec::with_capacity(bytes),
            host: false,
            chunked: false,
        }
    }

    /// Adds the field `name: value`.
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        self.begin(name);
        self.extend(value);
        self.end();
    }

    /// Starts the field `name`; its value is [`extend`](Self::extend)ed, then
    /// [`end`](Self::end)ed.
    pub fn begin(&mut self, name: &[u8]) {
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(b": ");
    }

    /// Adds to the current field's value.
    pub fn extend(&mut self, value: &[u8]) {
        self.bytes.extend_from_slice(value);
    }

    /// Ends the current field.
    pub fn end(&mut self) {
        self.bytes.extend_from_slice(b"\r\n");
    }

    /// Adds the body's framing and ends the head: `transfer-encoding: chunked` for a
    /// body without a length, `content-length: 0` for an empty one where the method
    /// expects a body (as hyper's client does). `host`: whether a `Host` field is in.
    pub fn finish(mut self, method: &Method, has_body: bool, host: bool, length: bool) -> Fields {
        self.host = host;
        self.chunked = has_body && !length;
        if self.chunked {
            self.bytes
                .extend_from_slice(b"transfer-encoding: chunked\r\n");
        } else if !has_body
            && !length
            && matches!(*method, Method::POST | Method::PUT | Method::PATCH)
        {
            self.bytes.extend_from_slice(b"content-length: 0\r\n");
        }
        self.bytes.extend_from_slice(b"\r\n");
        self
    }
}

/// One keep-alive connection to a backend.
pub struct Conn {
    io: TcpStream,
    /// What was read and not yet used.
    buf: BytesMut,
    /// The request head being written, and the request body's pieces after it.
    out: Vec<u8>,
    /// Whether this connection has carried a request before (it may have been closed
    /// by the backend meanwhile).
    reused: bool,
    /// The alarm for the exchanges' deadlines.
    timer: Timer,
    /// The header names of the last response, as sent and as parsed.
    names: Vec<(Box<[u8]>, HeaderName)>,
}

/// The alarm for an exchange's deadline (a response head due within `--timeout`): a
/// lazy one (`alarm.rs`). Each exchange's deadline is later than the one before, so on
/// a busy connection the timer wheel is touched once per time-out period, not twice
/// per request (registering a timer and cancelling it was 4 % of the proxy's
/// instructions).
struct Timer {
    sleep: Pin<Box<Sleep>>,
    /// When `sleep` rings, if it is set.
    alarm: Option<Instant>,
}

impl Timer {
    fn new() -> Timer {
        Timer {
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            alarm: None,
        }
    }

    /// Ready once `deadline` has passed.
    fn poll_due(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        alarm::poll_due(self.sleep.as_mut(), &mut self.alarm, deadline, cx)
    }
}

/// The error of an exchange whose deadline passed.
fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "no response head before the deadline",
    )
}

/// Why an exchange failed, and whether the request may go on another connection.
pub struct ExchangeError {
    pub error: io::Error,
    /// The connection was a reused one, and it ended before anything of a response
    /// arrived, while the request either was not written or may be written again
    /// (idempotent, its body not taken): the backend closed an idle connection as the
    /// request went out. Repeating it on another connection is safe.
    pub stale: bool,
}

impl Conn {
    /// A new connection.
    pub fn new(io: TcpStream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            reused: false,
            timer: Timer::new(),
            names: Vec::new(),
        }
    }

    /// Whether the connection still looks open: no end of stream nor stray bytes
    /// arrived while it was idle. Without a system call when nothing arrived (the
    /// reactor's readiness says so).
    pub fn is_open(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                self.io.try_read(&mut [0; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Writes `req` (its request line, `fields`, and its body as the backend reads it)
    /// and reads the response's head; its body is read by the returned [`Reading`]. `req` stays the
    /// caller's, for another connection if this one turns out stale.
    pub async fn exchange<B>(
        mut self: Box<Self>,
        req: &mut Request<B>,
        fields: &Fields,
        target: &Authority,
        deadline: Instant,
    ) -> Result<(Response<()>, Reading), ExchangeError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let reused = std::mem::replace(&mut self.reused, true);
        self.encode_head(req, fields, target);
        let chunked = fields.chunked;
        // Go's `isReplayable`: a safe method (GET, HEAD, OPTIONS, TRACE) without a body.
        let replayable = req.method().is_safe() && req.body().is_end_stream();
        let head = HeadRequest(req.method() == Method::HEAD);
        // The head first: a stale connection mostly fails here, before anything of the
        // request (or its body) is gone.
        let out = std::mem::take(&mut self.out);
        let mut at = 0;
        let written = poll_fn(|cx| {
            while at < out.len() {
                match Pin::new(&mut self.io).poll_write(cx, &out[at..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => at += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        ready!(self.timer.poll_due(deadline, cx));
                        return Poll::Ready(Err(timed_out()));
                    }
                }
            }
            Poll::Ready(Ok(()))
        })
        .await;
        self.out = out;
        self.out.clear();
        if let Err(error) = written {
            return Err(ExchangeError {
                // A write that timed out is no sign of a closed connection.
                stale: reused && error.kind() != io::ErrorKind::TimedOut,
                error,
            });
        }
        let mut sending = (!req.body().is_end_stream()).then_some(Sending {
            chunked,
            at: 0,
            done: false,
        });
        let mut broken = false;
        let parsed = poll_fn(|cx| {
            if let Some(s) = sending.as_mut()
                && let Poll::Ready(result) = s.poll_send(&mut self, req.body_mut(), cx)
            {
                sending = None;
                match result {
                    Ok(()) => {}
                    // The backend stopped reading: it may still answer (and close).
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                        ) =>
                    {
                        broken = true;
                    }
                    // The client's body failed: so does the exchange.
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            match self.poll_head(head, cx) {
                Poll::Pending => {
                    ready!(self.timer.poll_due(deadline, cx));
                    Poll::Ready(Err(timed_out()))
                }
                done => done,
            }
        })
        .await;
        match parsed {
            Ok((response, framing, keep_alive)) => {
                // An answer before the whole request body went out: an error, or a
                // backend closing the connection, does not want the rest (RFC 9112,
                // section 9.5), which is cut off with the connection; any other goes
                // on receiving it while its response is read, and its response ends
                // only once the body is sent.
                let mut keep_alive = keep_alive && !broken;
                if sending.is_some()
                    && (!keep_alive
                        || response.status().is_client_error()
                        || response.status().is_server_error())
                {
                    sending = None;
                    keep_alive = false;
                }
                Ok((
                    response,
                    Reading {
                        conn: Some(self),
                        sending,
                        framing,
                        keep_alive,
                    },
                ))
            }
            Err(error) => Err(ExchangeError {
                // Linux reports a peer's close under a request as a reset as often as
                // an end of stream.
                stale: reused
                    && replayable
                    && matches!(
                        error.kind(),
                        io::ErrorKind::UnexpectedEof
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::BrokenPipe
                    ),
                error,
            }),
        }
    }

    /// Writes the request head into `out`: the request line in origin form, HTTP/1.1,
    /// `Host` when the client sent none (HTTP/1.0), then `fields`.
    fn encode_head<B>(&mut self, req: &Request<B>, fields: &Fields, target: &Authority) {
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(req.method().as_str().as_bytes());
        out.push(b' ');
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        out.extend_from_slice(if path.is_empty() {
            b"/"
        } else {
            path.as_bytes()
        });
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if !fields.host {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(target.as_str().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&fields.bytes);
    }

    /// Reads until a response head is complete (skipping interim 1xx ones), and says
    /// how its body is framed and whether the connection may carry another request.
    fn poll_head(
        &mut self,
        head: HeadRequest,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Response<()>, Framing, bool)>> {
        loop {
            if !self.buf.is_empty() {
                match parse_head(&mut self.buf, &mut self.names, head)? {
                    Some(Parsed::Interim) => continue,
                    Some(Parsed::Final(parsed)) => return Poll::Ready(Ok(parsed)),
                    None if self.buf.len() >= MAX_HEAD => {
                        return Poll::Ready(Err(invalid("the response head is too long")));
                    }
                    None => {}
                }
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(if self.buf.is_empty() {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the backend closed the connection before answering",
                    )
                } else {
                    invalid("the backend closed the connection inside the response head")
                }));
            }
        }
    }

    /// Reads what the socket has into `buf`; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_ROOM {
            self.buf.reserve(2 * READ_ROOM);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// Whether the request was a `HEAD` (its response has no body, whatever it says).
#[derive(Clone, Copy)]
struct HeadRequest(bool);

/// The request body's progress out.
struct Sending {
    chunked: bool,
    /// How much of `Conn::out` is written.
    at: usize,
    done: bool,
}

impl Sending {
    /// Writes the body's pieces as they come; ready when the whole body is written (or
    /// the writing failed).
    fn poll_send<B>(
        &mut self,
        conn: &mut Conn,
        body: &mut B,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        loop {
            if self.at < conn.out.len() {
                let n = ready!(Pin::new(&mut conn.io).poll_write(cx, &conn.out[self.at..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.at += n;
                continue;
            }
            conn.out.clear();
            self.at = 0;
            if self.done {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers are not forwarded (hyper's client does not send them either).
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        if self.chunked {
                            let _ = write!(conn.out, "{:x}\r\n", data.len());
                            conn.out.extend_from_slice(&data);
                            conn.out.extend_from_slice(b"\r\n");
                        } else {
                            conn.out.extend_from_slice(&data);
                        }
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Err(io::Error::other(e)));
                }
                None => {
                    if self.chunked {
                        conn.out.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.done = true;
                }
            }
        }
    }
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

enum Parsed {
    /// A 1xx head before the response's own.
    Interim,
    Final((Response<()>, Framing, bool)),
}

/// Where each field's name and value lie in the buffer that starts at `base`
/// (`[name start, name end, value start, value end]`), to slice them out of the head
/// once it is taken out of the buffer, without copies (as hyper does); the count.
pub fn field_spans(
    fields: &[httparse::Header<'_>],
    base: usize,
    spans: &mut [[u32; 4]; MAX_HEADERS],
) -> usize {
    for (field, span) in fields.iter().zip(spans.iter_mut()) {
        let name = field.name.as_ptr() as usize - base;
        let value = field.value.as_ptr() as usize - base;
        *span = [
            name as u32,
            (name + field.name.len()) as u32,
            value as u32,
            (value + field.value.len()) as u32,
        ];
    }
    fields.len().min(MAX_HEADERS)
}

/// The field value httparse found at `start..end` of `head`.
pub fn field_value(head: &Bytes, start: u32, end: u32) -> HeaderValue {
    // SAFETY: httparse accepted these bytes as a field value: tabs, spaces, visible
    // ASCII and obs-text only (its `HEADER_VALUE_MAP`; RFC 9110, section 5.5), exactly
    // the bytes `HeaderValue::from_maybe_shared` accepts, so checking them again (2.6 %
    // of the proxy's instructions per request, callgrind) is skipped. hyper's client
    // and server make this same call on httparse's output. (`http` words the contract
    // as "valid UTF-8", yet its checked constructor takes obs-text too, and `to_str`
    // checks again.) A debug build checks anyway: `http` asserts it there.
    unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(start as usize..end as usize)) }
}

/// Parses a response head at the front of `buf` and takes it out; `None` while it is
/// incomplete.
fn parse_head(
    buf: &mut BytesMut,
    names: &mut Vec<(Box<[u8]>, HeaderName)>,
    head: HeadRequest,
) -> io::Result<Option<Parsed>> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    };
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| invalid("invalid status code"))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(invalid(
                "the backend switched protocols, which the proxy does not",
            ));
        }
        buf.advance(len);
        return Ok(Some(Parsed::Interim));
    }
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut spans = [[0u32; 4]; MAX_HEADERS];
    let count = field_spans(parsed.headers, buf.as_ptr() as usize, &mut spans);
    let bytes = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    let mut framing = Framing::Close;
    let (mut chunked, mut transfer, mut length) = (false, false, None::<u64>);
    let mut connection = forward::ConnectionTokens::default();
    // What `Connection` names besides the standard hop-by-hop fields (rare).
    let mut named = Vec::new();
    for (i, &[name_start, name_end, start, end]) in spans[..count].iter().enumerate() {
        let raw = &bytes[name_start as usize..name_end as usize];
        // A backend sends the same fields in the same order response after response:
        // the name at the same place last time, when it is the same text, is reused
        // rather than parsed again (a comparison, where parsing looked the name up
        // among the standard ones).
        let name = match names.get(i) {
            Some((seen, name)) if **seen == *raw => name.clone(),
            _ => {
                let name =
                    HeaderName::from_bytes(raw).map_err(|_| invalid("invalid header name"))?;
                let entry = (Box::from(raw), name.clone());
                if i < names.len() {
                    names[i] = entry;
                } else if i < MAX_NAMES {
                    names.push(entry);
                }
                name
            }
        };
        let value = field_value(&bytes, start, end);
        if name == header::TRANSFER_ENCODING {
            transfer = true;
            // Chunked only if it is the last coding.
            chunked = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            continue;
        } else if name == header::CONTENT_LENGTH {
            let digits = value.as_bytes();
            let n = std::str::from_utf8(digits)
                .ok()
                .filter(|_| !digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| invalid("invalid content-length"))?;
            if length.is_some_and(|m| m != n) {
                return Err(invalid("conflicting content-length"));
            }
            length = Some(n);
        } else if name == header::CONNECTION {
            if connection.add(value.as_bytes()) {
                forward::connection_named(&value, &mut named);
            }
            continue;
        }
        // The fields about this connection stay on it (RFC 9110, section 7.6.1).
        if forward::hop_by_hop(&name).is_none() {
            headers.append(name, value);
        }
    }
    for name in named {
        headers.remove(name);
    }
    if head.0 || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        framing = Framing::Length(0);
    } else if transfer {
        if chunked {
            framing = Framing::Chunked(Chunk::Size);
        }
    } else if let Some(n) = length {
        framing = Framing::Length(n);
    }
    // Both a coding and a length: the length is ignored (RFC 9112, section 6.3), and the
    // connection, which a smuggled message may have desynchronized, is not reused.
    let smuggled = transfer && length.is_some();
    if smuggled {
        headers.remove(header::CONTENT_LENGTH);
    }
    let keep_alive = !matches!(framing, Framing::Close)
        && !smuggled
        && match version {
            Version::HTTP_10 => connection.keep_alive && !connection.close,
            _ => !connection.close,
        };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Some(Parsed::Final((response, framing, keep_alive))))
}

/// How a response body ends (RFC 9112, section 6.3).
#[derive(Debug)]
pub enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked, at this point of a chunk.
    Chunked(Chunk),
    /// At the connection's end.
    Close,
}

/// Where the chunked decoding stands.
#[derive(Debug, Clone, Copy)]
pub enum Chunk {
    /// Before a size line.
    Size,
    /// Inside a chunk's data: this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields (dropped, this many bytes so far) up to an
    /// empty line.
    Trailers(usize),
    /// The body ended.
    Done,
}

/// A response body being read, and the request body still being written. Once both are
/// done and the connection may carry another request, [`Reading::finish`] hands it
/// back.
pub struct Reading {
    conn: Option<Box<Conn>>,
    sending: Option<Sending>,
    framing: Framing,
    keep_alive: bool,
}

impl Reading {
    /// Whether the response body has ended.
    pub fn ended(&self) -> bool {
        self.conn.is_none() || self.framed_end()
    }

    /// Whether the response body's framing has ended.
    fn framed_end(&self) -> bool {
        matches!(
            self.framing,
            Framing::Length(0) | Framing::Chunked(Chunk::Done)
        )
    }

    /// Whether the request's body is still being written.
    pub fn sending(&self) -> bool {
        self.sending.is_some()
    }

    /// The body's length when it is known.
    pub fn exact(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(n) => Some(n),
            _ => None,
        }
    }

    /// What becomes of the connection now that the response is read (or abandoned).
    pub fn finish(&mut self) -> Finish {
        let Some(conn) = self.conn.take() else {
            return Finish::Close;
        };
        if !self.framed_end() || !conn.buf.is_empty() {
            return Finish::Close;
        }
        match self.sending.take() {
            None if self.keep_alive => Finish::Reuse(conn),
            None => Finish::Close,
            Some(sending) => Finish::SendRest(RestOfBody {
                conn,
                sending,
                keep_alive: self.keep_alive,
            }),
        }
    }

    /// The next piece of the body; `None` at its end.
    pub fn poll_data<B>(
        &mut self,
        body: Option<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Bytes>>>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let (Some(s), Some(body)) = (self.sending.as_mut(), body)
            && let Poll::Ready(result) = s.poll_send(conn, body, cx)
        {
            self.sending = None;
            if result.is_err() {
                // The backend stopped reading the request (it answered early); the
                // response goes on, but the connection is not reused.
                self.keep_alive = false;
            }
        }
        loop {
            match &mut self.framing {
                Framing::Length(0) | Framing::Chunked(Chunk::Done) => return Poll::Ready(None),
                Framing::Length(left) => {
                    if conn.buf.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(truncated())));
                    }
                    let n = (*left).min(conn.buf.len() as u64);
                    *left -= n;
                    return Poll::Ready(Some(Ok(conn.buf.split_to(n as usize).freeze())));
                }
                Framing::Close => {
                    if conn.buf.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                        self.conn = None;
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(conn.buf.split().freeze())));
                }
                Framing::Chunked(chunk) => match *chunk {
                    // httparse takes a line without digits for size 0 (the end).
                    Chunk::Size if conn.buf.first().is_some_and(|b| !b.is_ascii_hexdigit()) => {
                        return Poll::Ready(Some(Err(invalid("invalid chunk size"))));
                    }
                    Chunk::Size => match httparse::parse_chunk_size(&conn.buf) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            conn.buf.advance(used);
                            *chunk = if size == 0 {
                                Chunk::Trailers(0)
                            } else {
                                Chunk::Data(size)
                            };
                        }
                        Ok(httparse::Status::Partial) => {
                            ready!(fill_more(conn, cx))?;
                        }
                        Err(_) => return Poll::Ready(Some(Err(invalid("invalid chunk size")))),
                    },
                    Chunk::Data(left) => {
                        if conn.buf.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                            return Poll::Ready(Some(Err(truncated())));
                        }
                        let n = left.min(conn.buf.len() as u64);
                        *chunk = if n == left {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left - n)
                        };
                        return Poll::Ready(Some(Ok(conn.buf.split_to(n as usize).freeze())));
                    }
                    Chunk::DataEnd => {
                        if conn.buf.len() < 2 {
                            ready!(fill_more(conn, cx))?;
                        } else if conn.buf.starts_with(b"\r\n") {
                            conn.buf.advance(2);
                            *chunk = Chunk::Size;
                        } else {
                            return Poll::Ready(Some(Err(invalid("a chunk without its CRLF"))));
                        }
                    }
                    Chunk::Trailers(seen) => match conn.buf.windows(2).position(|w| w == b"\r\n") {
                        Some(0) => {
                            conn.buf.advance(2);
                            *chunk = Chunk::Done;
                        }
                        Some(_) if seen >= MAX_HEAD => {
                            return Poll::Ready(Some(Err(invalid("the trailers are too long"))));
                        }
                        Some(line) => {
                            conn.buf.advance(line + 2);
                            *chunk = Chunk::Trailers(seen + line + 2);
                        }
                        None => {
                            ready!(fill_more(conn, cx))?;
                        }
                    },
                    Chunk::Done => return Poll::Ready(None),
                },
            }
        }
    }
}

/// What becomes of a connection once its response is read: see [`Reading::finish`].
pub enum Finish {
    /// Back to the pool.
    Reuse(Box<Conn>),
    /// The response ended before the request's body was all sent: the rest goes on
    /// being sent ([`RestOfBody::send`]), and then the connection may be reused.
    SendRest(RestOfBody),
    /// Closed.
    Close,
}

/// The rest of a request body whose response came before it was all sent (a backend
/// that answers as soon as it has the head, then reads the upload).
pub struct RestOfBody {
    conn: Box<Conn>,
    sending: Sending,
    keep_alive: bool,
}

impl RestOfBody {
    /// Sends the rest of `body`; the connection, if it may then be reused.
    pub async fn send<B>(mut self, mut body: B) -> Option<Box<Conn>>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let sent = poll_fn(|cx| self.sending.poll_send(&mut self.conn, &mut body, cx)).await;
        (sent.is_ok() && self.keep_alive && self.conn.buf.is_empty()).then_some(self.conn)
    }
}

/// Reads more for a line still incomplete in the buffer: an error at the end of the
/// stream, or when the line grew too long.
fn fill_more(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    if conn.buf.len() >= MAX_HEAD {
        return Poll::Ready(Err(invalid("a chunk's line is too long")));
    }
    match ready!(conn.poll_fill(cx))? {
        0 => Poll::Ready(Err(truncated())),
        _ => Poll::Ready(Ok(())),
    }
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the backend closed the connection inside the response body",
    )
}
