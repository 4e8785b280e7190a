//! What a proxy changes in the messages it passes on: the headers that describe one
//! connection (hop-by-hop, RFC 9110 section 7.6.1) are dropped both ways, and the
//! request gains this hop in `x-forwarded-for`, `x-forwarded-proto` and the standard
//! `forwarded` (RFC 7239). Bodies are streamed on as they are, both ways.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Mutex;

use http::Response;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
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
        *last = Some((host.clone(), element.clone()));
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

/// Whether `name` is a header that describes one connection, not the message (RFC
/// 9110, section 7.6.1), or `transfer-encoding` (hyper frames the body anew for each
/// side). A comparison of names, no hashing.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// The names [`is_hop_by_hop`] accepts.
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

/// Removes hop-by-hop headers, and those the `Connection` header names. Most messages
/// carry none: one pass over their names finds that out without hashing any.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let mut remove: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for name in value.split(',').map(str::trim) {
            // `Connection: keep-alive` (or `close`) names nothing the next loop misses.
            if name.eq_ignore_ascii_case("close")
                || HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_str(name) {
                remove.push(name);
            }
        }
    }
    // Only those present: a removal hashes the name, a pass over the names does not.
    remove.extend(headers.keys().filter(|name| is_hop_by_hop(name)).cloned());
    for name in remove {
        headers.remove(name);
    }
}

/// Adds `x-forwarded-for` (appended to any earlier hops), `x-forwarded-proto` and the
/// standard `forwarded` (RFC 7239).
fn add_forwarding(headers: &mut HeaderMap, hop: &Hop) {
    let xff = match joined(headers, X_FORWARDED_FOR) {
        None => Some(hop.ip.clone()),
        Some(earlier) => {
            HeaderValue::from_str(&format!("{earlier}, {}", hop.ip.to_str().unwrap_or(""))).ok()
        }
    };
    let element = hop.element(headers.get(header::HOST));
    let forwarded = match (joined(headers, header::FORWARDED), element) {
        (None, element) => element,
        (Some(earlier), Some(element)) => {
            HeaderValue::from_str(&format!("{earlier}, {}", element.to_str().unwrap_or(""))).ok()
        }
        (Some(_), None) => None,
    };
    if let Some(xff) = xff {
        headers.insert(X_FORWARDED_FOR, xff);
    }
    headers.insert(X_FORWARDED_PROTO, hop.proto.clone());
    if let Some(forwarded) = forwarded {
        headers.insert(header::FORWARDED, forwarded);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The values of `name` joined with ", " (the readable ones), or `None` without any.
fn joined(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}
