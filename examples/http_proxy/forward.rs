//! What a proxy changes in the messages it passes on: the headers that describe one
//! connection (hop-by-hop, RFC 9110 section 7.6.1) are dropped both ways, and the
//! request gains this hop in `x-forwarded-for`, `x-forwarded-proto` and the standard
//! `forwarded` (RFC 7239). Bodies are streamed on as they are, both ways.

use std::net::SocketAddr;
use std::str::FromStr;

use http::Response;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tower_lb::balance::BoxError;

use super::ProxyBody;

/// The client's request headers as the backend gets them: hop-by-hop headers removed,
/// the client at `peer` (over HTTPS or not) added as one more hop.
pub fn request_headers(headers: &mut HeaderMap, peer: SocketAddr, https: bool) {
    strip_hop_by_hop(headers);
    add_forwarding(headers, peer, https);
}

/// The backend's response as the client gets it: hop-by-hop headers removed, the body
/// streamed as it arrives.
pub fn response(response: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.map_err(BoxError::from).boxed())
}

/// Headers that describe one connection, not the message (RFC 9110, section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Removes hop-by-hop headers, and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_str(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// Adds `x-forwarded-for` (appended to any earlier hops), `x-forwarded-proto` and the
/// standard `forwarded` (RFC 7239).
fn add_forwarding(headers: &mut HeaderMap, peer: SocketAddr, https: bool) {
    let ip = peer.ip().to_canonical();
    let proto = if https { "https" } else { "http" };
    let earlier: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let xff = if earlier.is_empty() {
        ip.to_string()
    } else {
        format!("{}, {ip}", earlier.join(", "))
    };
    let node = match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut element = format!("for={node};proto={proto}");
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok())
        && !host.contains('"')
    {
        element.push_str(&format!(";host=\"{host}\""));
    }
    let earlier: Vec<&str> = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let forwarded = if earlier.is_empty() {
        element
    } else {
        format!("{}, {element}", earlier.join(", "))
    };
    for (name, value) in [
        (HeaderName::from_static("x-forwarded-for"), xff),
        (
            HeaderName::from_static("x-forwarded-proto"),
            proto.to_owned(),
        ),
        (header::FORWARDED, forwarded),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}
