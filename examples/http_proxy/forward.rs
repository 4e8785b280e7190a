//! What a proxy changes in the messages it passes on: the headers that describe one
//! connection (hop-by-hop, RFC 9110 section 7.6.1) are dropped both ways, and the
//! request gains this hop in `x-forwarded-for`, `x-forwarded-proto` and the standard
//! `forwarded` (RFC 7239). Bodies are streamed on as they are, both ways.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Mutex;

use http::Response;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::{Body, Bytes};
use tower_lb::balance::BoxError;

use super::ProxyBody;

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

/// The client's request headers as the backend gets them: hop-by-hop headers removed,
/// the client (`hop`) added as one more hop.
pub fn request_headers(headers: &mut HeaderMap, hop: &Hop) {
    strip_hop_by_hop(headers);
    add_forwarding(headers, hop);
}

/// The backend's response as the client gets it: hop-by-hop headers removed, the body
/// streamed as it arrives.
pub fn response<B>(response: Response<B>) -> Response<ProxyBody>
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.map_err(Into::into).boxed())
}

/// The headers that describe one connection, not the message (RFC 9110, section
/// 7.6.1), and `transfer-encoding` (hyper frames the body anew for each side).
/// `connection` first: [`strip_hop_by_hop`] reads its bit.
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
fn hop_by_hop(name: &HeaderName) -> Option<usize> {
    let name = name.as_str();
    HOP_BY_HOP.iter().position(|h| *h == name)
}

/// Removes hop-by-hop headers, and those the `Connection` header names. One pass over
/// the names finds which are present (most messages carry none, or only `Connection:
/// keep-alive`); only those are removed, each by one lookup (of its name parsed from
/// [`HOP_BY_HOP`]: one list to keep, for ~150 more instructions per message than
/// removing by prebuilt `HeaderName`s), with no list built.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop(name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // Other headers `Connection` names (rare): collected, as they cannot be removed
    // while its values are borrowed. `close`, `keep-alive` and the names above need
    // nothing more.
    if present & 1 != 0 {
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("keep-alive") || token.eq_ignore_ascii_case("close") {
                    continue;
                }
                if let Ok(name) = HeaderName::from_str(token)
                    && hop_by_hop(&name).is_none()
                {
                    named.push(name);
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.into_iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Adds `x-forwarded-for` (appended to any earlier hops), `x-forwarded-proto` and the
/// standard `forwarded` (RFC 7239). Each header is looked up once (its entry), not
/// once to read and again to write.
fn add_forwarding(headers: &mut HeaderMap, hop: &Hop) {
    let element = hop.element(headers.get(header::HOST));
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(entry) => {
            entry.insert(hop.ip.clone());
        }
        Entry::Occupied(mut entry) => {
            let ip = hop.ip.to_str().unwrap_or("");
            if let Some(xff) = appended(entry.iter(), ip) {
                entry.insert(xff);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO, hop.proto.clone());
    // Without an element for this hop (an unreadable host, say) the header is left as
    // it came.
    if let Some(element) = element {
        match headers.entry(header::FORWARDED) {
            Entry::Vacant(entry) => {
                entry.insert(element);
            }
            Entry::Occupied(mut entry) => {
                if let Some(forwarded) = appended(entry.iter(), element.to_str().unwrap_or("")) {
                    entry.insert(forwarded);
                }
            }
        }
    }
}

/// The readable `values` joined with ", ", then `last`: a header value, or `None` when
/// the result is not one.
fn appended<'a>(values: impl Iterator<Item = &'a HeaderValue>, last: &str) -> Option<HeaderValue> {
    let mut joined = String::new();
    for value in values.filter_map(|v| v.to_str().ok()) {
        joined.push_str(value);
        joined.push_str(", ");
    }
    joined.push_str(last);
    HeaderValue::from_str(&joined).ok()
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
