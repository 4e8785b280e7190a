//! What a proxy changes in the messages it passes on: the headers that describe one
//! connection (hop-by-hop, RFC 9110 section 7.6.1) are dropped both ways, and the
//! request gains this hop in `x-forwarded-for`, `x-forwarded-proto` and the standard
//! `forwarded` (RFC 7239). Bodies are streamed on as they are, both ways.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Mutex;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Bytes};
use tower_lb::balance::BoxError;

use super::ProxyBody;
use super::h1::Fields;

/// This hop, as the requests of one client connection describe it to the backend: the
/// client's address and the scheme, formatted once per connection rather than once per
/// request, and the last `forwarded` element built (requests on one connection tend to
/// name the same host).
pub struct Hop {
    /// `x-forwarded-for` when the request carries none: the client's IP.
    ip: HeaderValue,
    /// `x-forwarded-proto`.
    proto: HeaderValue,
    /// The start of this hop's `forwarded` element: `for=…;proto=…`.
    element: String,
    /// The last `Host` seen, and the `forwarded` element naming it.
    last: Mutex<Option<(HeaderValue, HeaderValue)>>,
}

impl Hop {
    /// The hop of a client at `peer`, over HTTPS or not.
    pub fn new(peer: SocketAddr, https: bool) -> Hop {
        let ip = peer.ip().to_canonical();
        let proto = if https { "https" } else { "http" };
        let node = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        Hop {
            ip: HeaderValue::from_str(&ip.to_string()).expect("an IP address is a header value"),
            proto: HeaderValue::from_static(proto),
            element: format!("for={node};proto={proto}"),
            last: Mutex::new(None),
        }
    }

    /// This hop's `forwarded` element for a request naming `host`.
    fn element(&self, host: Option<&HeaderValue>) -> Option<HeaderValue> {
        let Some(host) = host.filter(|h| h.to_str().is_ok_and(|h| !h.contains('"'))) else {
            return HeaderValue::from_str(&self.element).ok();
        };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, element)) = &*last
            && seen == host
        {
            return Some(element.clone());
        }
        let host_str = host.to_str().ok()?;
        let element =
            HeaderValue::from_str(&format!("{};host=\"{host_str}\"", self.element)).ok()?;
        // A copy, not `host.clone()`: a parsed header value is a slice of the read
        // buffer hyper filled (8 KiB), which a clone kept here would pin for as long as
        // the connection lives.
        let seen = HeaderValue::from_bytes(host.as_bytes()).ok()?;
        *last = Some((seen, element.clone()));
        Some(element)
    }
}

/// The client's request header fields as the backend gets them, written once for all
/// the request's attempts: hop-by-hop fields (and those `Connection` names) left out,
/// the client (`hop`) added as one more hop, then the body's framing ([`Fields`]). The
/// request's `HeaderMap` itself is left as the client sent it, for the balancer's keys.
pub fn request_fields(headers: &HeaderMap, hop: &Hop, method: &Method, has_body: bool) -> Fields {
    let mut fields = Fields::with_capacity(64 * (headers.len() + 3));
    // One pass over the fields, which notes what the forwarding fields need; a second
    // only when `Connection` names more fields to leave out (rare).
    let mut seen = written(&mut fields, headers, &[]);
    if seen.named_more {
        let mut named = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            connection_named(value, &mut named);
        }
        // (`Connection: upgrade`, say, names only a standard one.)
        if !named.is_empty() {
            fields = Fields::with_capacity(64 * (headers.len() + 3));
            seen = written(&mut fields, headers, &named);
        }
    }
    add_forwarding(&mut fields, headers, hop, &seen);
    fields.finish(method, has_body, seen.host.is_some(), seen.length)
}

/// What [`written`] saw of the client's fields.
struct Seen<'a> {
    host: Option<&'a HeaderValue>,
    length: bool,
    x_forwarded_for: bool,
    forwarded: bool,
    /// `Connection` names more than `close` and `keep-alive`: perhaps fields.
    named_more: bool,
}

/// Writes the fields of `headers` that go on as they are: not hop-by-hop, not named in
/// `named`, not a forwarding field (those are written after them).
fn written<'a>(fields: &mut Fields, headers: &'a HeaderMap, named: &[HeaderName]) -> Seen<'a> {
    let mut seen = Seen {
        host: None,
        length: false,
        x_forwarded_for: false,
        forwarded: false,
        named_more: false,
    };
    for (name, value) in headers {
        if let Some(i) = hop_by_hop(name) {
            // `connection` is the first of them.
            if i == 0 {
                seen.named_more |= ConnectionTokens::default().add(value.as_bytes());
            }
            continue;
        }
        if named.contains(name) {
            continue;
        }
        if *name == header::HOST {
            seen.host = seen.host.or(Some(value));
        } else if *name == header::CONTENT_LENGTH {
            seen.length = true;
        } else if *name == X_FORWARDED_FOR {
            seen.x_forwarded_for = true;
            continue;
        } else if *name == header::FORWARDED {
            seen.forwarded = true;
            continue;
        } else if *name == X_FORWARDED_PROTO {
            continue;
        }
        fields.push(name.as_str().as_bytes(), value.as_bytes());
    }
    seen
}

/// The backend's response as the client gets it (its hop-by-hop fields were left out
/// as its head was read, `h1.rs`), the body streamed as it arrives.
pub fn response<B>(response: Response<B>) -> Response<ProxyBody>
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    response.map(|body| body.map_err(Into::into).boxed())
}

/// The headers that describe one connection, not the message (RFC 9110, section
/// 7.6.1), and `transfer-encoding` (each side's body is framed anew).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
];

/// Which of [`HOP_BY_HOP`] `name` is, if any: a comparison of texts (their lengths
/// first), no hashing.
pub fn hop_by_hop(name: &HeaderName) -> Option<usize> {
    let name = name.as_str();
    HOP_BY_HOP.iter().position(|h| *h == name)
}

/// What one `Connection` field value says (RFC 9112, section 9.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionTokens {
    pub close: bool,
    pub keep_alive: bool,
}

impl ConnectionTokens {
    /// Adds what `value` says to what earlier `Connection` fields said; whether it
    /// names something besides `close` and `keep-alive` (fields about this connection
    /// only, which [`connection_named`] lists).
    pub fn add(&mut self, value: &[u8]) -> bool {
        let mut more = false;
        for token in value.split(|&b| b == b',') {
            let token = token.trim_ascii();
            let (close, keep_alive) = (
                token.eq_ignore_ascii_case(b"close"),
                token.eq_ignore_ascii_case(b"keep-alive"),
            );
            self.close |= close;
            self.keep_alive |= keep_alive;
            more |= !(close || keep_alive || token.is_empty());
        }
        more
    }
}

/// Adds to `into` the header names a `Connection` value lists, beyond `close`,
/// `keep-alive` and the standard hop-by-hop names: they describe this connection only.
pub fn connection_named(value: &HeaderValue, into: &mut Vec<HeaderName>) {
    let Ok(value) = value.to_str() else { return };
    for token in value.split(',').map(str::trim) {
        if token.eq_ignore_ascii_case("keep-alive") || token.eq_ignore_ascii_case("close") {
            continue;
        }
        if let Ok(name) = HeaderName::from_str(token)
            && hop_by_hop(&name).is_none()
        {
            into.push(name);
        }
    }
}

/// Adds `x-forwarded-for` (appended to any earlier hops), `x-forwarded-proto` and the
/// standard `forwarded` (RFC 7239), each after the values the client sent (those it
/// can read as text).
fn add_forwarding(fields: &mut Fields, headers: &HeaderMap, hop: &Hop, seen: &Seen<'_>) {
    let ip = hop.ip.as_bytes();
    match seen.x_forwarded_for {
        true => appended(fields, X_FORWARDED_FOR, headers, ip),
        false => fields.push(X_FORWARDED_FOR.as_str().as_bytes(), ip),
    }
    fields.push(X_FORWARDED_PROTO.as_str().as_bytes(), hop.proto.as_bytes());
    match hop.element(seen.host) {
        Some(element) if seen.forwarded => {
            appended(fields, header::FORWARDED, headers, element.as_bytes());
        }
        Some(element) => fields.push(b"forwarded", element.as_bytes()),
        // Without an element for this hop (an unreadable host, say) the header is left
        // as it came.
        None => {
            for value in headers.get_all(header::FORWARDED) {
                fields.push(b"forwarded", value.as_bytes());
            }
        }
    }
}

/// The field `name`: its readable values in `headers` joined with ", ", then `last`.
fn appended(fields: &mut Fields, name: HeaderName, headers: &HeaderMap, last: &[u8]) {
    fields.begin(name.as_str().as_bytes());
    for value in headers.get_all(&name) {
        if value.to_str().is_ok() {
            fields.extend(value.as_bytes());
            fields.extend(b", ");
        }
    }
    fields.extend(last);
    fields.end();
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
