//! HTTP pieces of the tower integration: backend targets, URI retargeting, and a
//! status-aware outcome classifier.

use std::fmt;
use std::str::FromStr;

use http::uri::{Authority, PathAndQuery, Scheme, Uri};

use super::classify::Classify;
use super::route::Retarget;

/// An HTTP backend: scheme and authority (`http://10.0.0.1:8080`).
///
/// Requests sent through one client with [`BalanceLayer`](super::BalanceLayer) get this
/// scheme and authority in their URI; path and query are kept.
///
/// ```
/// use tower_lb::balance::HttpTarget;
///
/// let t: HttpTarget = "http://10.0.0.1:8080".parse()?;
/// assert_eq!(t.to_string(), "http://10.0.0.1:8080");
/// let bare: HttpTarget = "10.0.0.2:80".parse()?; // http by default
/// assert_eq!(bare.authority().as_str(), "10.0.0.2:80");
/// assert!("http://".parse::<HttpTarget>().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HttpTarget {
    scheme: Scheme,
    authority: Authority,
}

impl HttpTarget {
    /// A target from its parts.
    pub fn new(scheme: Scheme, authority: Authority) -> Self {
        HttpTarget { scheme, authority }
    }

    /// `http://addr`.
    pub fn http(addr: std::net::SocketAddr) -> Self {
        // A socket address always forms a valid authority.
        let authority = Authority::from_maybe_shared(addr.to_string())
            .unwrap_or_else(|_| Authority::from_static("invalid"));
        HttpTarget::new(Scheme::HTTP, authority)
    }

    /// The scheme.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// The authority (host and port).
    pub fn authority(&self) -> &Authority {
        &self.authority
    }
}

/// A string that is not `scheme://authority` or `authority`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("http target: {input:?} is not `http://host:port` or `host:port`")]
pub struct InvalidTarget {
    input: String,
}

impl FromStr for HttpTarget {
    type Err = InvalidTarget;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || InvalidTarget {
            input: s.to_owned(),
        };
        let with_scheme = if s.contains("://") {
            s.to_owned()
        } else {
            format!("http://{s}")
        };
        let uri: Uri = with_scheme.parse().map_err(|_| err())?;
        let parts = uri.into_parts();
        match (parts.scheme, parts.authority, parts.path_and_query) {
            (Some(scheme), Some(authority), pq)
                if pq
                    .as_ref()
                    .is_none_or(|pq| pq.as_str() == "/" || pq.as_str().is_empty()) =>
            {
                Ok(HttpTarget { scheme, authority })
            }
            _ => Err(err()),
        }
    }
}

impl fmt::Display for HttpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl crate::pick::hash::BackendKey for HttpTarget {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_string().as_bytes());
    }
}

impl<B> Retarget<HttpTarget> for http::Request<B> {
    /// Sets the URI's scheme and authority to the target's, keeping path and query.
    /// Headers are left alone: a `Host` header the caller set is kept (a proxy keeps
    /// the client's), and without one the HTTP client derives it from the URI.
    fn retarget(&mut self, target: &HttpTarget) {
        let mut parts = self.uri().clone().into_parts();
        parts.scheme = Some(target.scheme.clone());
        parts.authority = Some(target.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *self.uri_mut() = uri;
        }
    }
}

/// HTTP outcomes for passive health: transport errors and 5xx responses are failures
/// (configurable), everything else a success — what Envoy's outlier detection counts.
#[derive(Debug, Clone, Copy)]
pub struct HttpStatus {
    fail_on_5xx: bool,
}

impl HttpStatus {
    /// Errors and 5xx are failures.
    pub const fn new() -> Self {
        HttpStatus { fail_on_5xx: true }
    }

    /// Only transport errors are failures; any response counts as a success.
    pub const fn errors_only() -> Self {
        HttpStatus { fail_on_5xx: false }
    }
}

impl Default for HttpStatus {
    fn default() -> Self {
        HttpStatus::new()
    }
}

impl<B, E> Classify<http::Response<B>, E> for HttpStatus {
    fn is_success(&self, result: Result<&http::Response<B>, &E>) -> bool {
        match result {
            Ok(response) => !(self.fail_on_5xx && response.status().is_server_error()),
            Err(_) => false,
        }
    }
}

/// A balanced HTTP client, as most users store one: one client `S` (hyper-util's legacy
/// client, say) for every backend, each request retargeted at the picked [`HttpTarget`],
/// transport errors and 5xx responses counted as failures ([`HttpStatus`]). Build it
/// with `BalanceLayer::new(pool).classify(HttpStatus::new()).layer(client)`.
///
/// ```
/// use tower::Layer;
/// use tower_lb::balance::{BalanceLayer, HttpBalance, HttpStatus, HttpTarget};
/// use tower_lb::{AnyPicker, Pool};
///
/// struct Api<S> {
///     upstream: HttpBalance<S, AnyPicker>,
/// }
///
/// let pool = Pool::<HttpTarget, _>::new("p2c".parse::<AnyPicker>()?);
/// let client = tower::service_fn(|_: http::Request<String>| async {
///     Ok::<_, std::io::Error>(http::Response::new(String::new()))
/// });
/// let api = Api {
///     upstream: BalanceLayer::new(pool).classify(HttpStatus::new()).layer(client),
/// };
/// # let _ = api;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type HttpBalance<S, P = crate::PowerOfTwoChoices, K = super::NoAffinity> =
    super::Balance<HttpTarget, P, super::Client<S>, K, HttpStatus>;

/// Probes an [`HttpTarget`] at its authority (plain HTTP).
#[cfg(feature = "tokio")]
impl crate::health::Probe<HttpTarget> for crate::health::HttpProbe {
    fn probe(&self, target: &HttpTarget) -> crate::health::ProbeFuture {
        self.probe_authority(target.authority().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retarget_keeps_path_and_query() {
        let mut req = http::Request::get("/a/b?c=d").body(()).unwrap();
        req.retarget(&"http://127.0.0.1:9".parse().unwrap());
        assert_eq!(req.uri().to_string(), "http://127.0.0.1:9/a/b?c=d");
        let mut req = http::Request::get("https://example.test/x")
            .body(())
            .unwrap();
        req.retarget(&"http://127.0.0.1:9".parse().unwrap());
        assert_eq!(req.uri().to_string(), "http://127.0.0.1:9/x");
    }

    #[test]
    fn targets_parse_or_fail_clearly() {
        for bad in ["", "http://", "http://a:1/path", "::::"] {
            let err = bad.parse::<HttpTarget>().unwrap_err();
            assert!(err.to_string().contains("http target"), "{bad}: {err}");
        }
        assert_eq!(
            "a:1".parse::<HttpTarget>().unwrap().to_string(),
            "http://a:1"
        );
    }

    #[test]
    fn status_classifier() {
        let ok = http::Response::builder().status(200).body(()).unwrap();
        let bad = http::Response::builder().status(503).body(()).unwrap();
        let c = HttpStatus::new();
        assert!(Classify::<_, ()>::is_success(&c, Ok(&ok)));
        assert!(!Classify::<_, ()>::is_success(&c, Ok(&bad)));
        assert!(Classify::<_, ()>::is_success(
            &HttpStatus::errors_only(),
            Ok(&bad)
        ));
        assert!(!Classify::<http::Response<()>, ()>::is_success(
            &c,
            Err(&())
        ));
    }
}
