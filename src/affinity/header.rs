//! An HTTP header as the key.

use http::header::{HeaderName, InvalidHeaderName};

use super::{AffinityKey, non_empty};

/// The value of an HTTP header as the key: a user id, a tenant, a session token.
///
/// The first value of the header is hashed as raw bytes (no case folding or trimming:
/// clients send it the same way each time). A request without the header, or with an
/// empty value, has no key.
///
/// gRPC metadata are HTTP/2 headers, so `HeaderKey` keys a tonic call on an ASCII
/// metadata key as it is (`HeaderKey::from_static("x-user-id")`); a `-bin` key is
/// hashed in its base64 form, the same for every client sending the same bytes the
/// same way (`examples/grpc.rs`).
///
/// # Examples
///
/// ```
/// use tower_lb::affinity::{AffinityKey, HeaderKey, hash_key};
///
/// let key = HeaderKey::from_static("x-user-id");
/// let req = http::Request::builder().header("x-user-id", "42").body(())?;
/// assert_eq!(key.key(&req), Some(hash_key(b"42")));
/// assert_eq!(key.key(&http::Request::new(())), None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// Keys by the header `name`.
    pub fn new(name: HeaderName) -> Self {
        HeaderKey { name }
    }

    /// Keys by the header `name`, a static lowercase name.
    ///
    /// # Panics
    ///
    /// At construction, if `name` is not a valid lowercase header name — as
    /// [`HeaderName::from_static`], meant for literals; use [`try_new`](Self::try_new)
    /// for names from configuration.
    pub fn from_static(name: &'static str) -> Self {
        HeaderKey {
            name: HeaderName::from_static(name),
        }
    }

    /// Keys by the header `name`, or an error when it is not a valid header name.
    pub fn try_new(name: &str) -> Result<Self, InvalidHeaderName> {
        HeaderName::from_bytes(name.as_bytes()).map(HeaderKey::new)
    }

    /// The header's name.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }
}

impl<B> AffinityKey<http::Request<B>> for HeaderKey {
    #[inline]
    fn key(&self, req: &http::Request<B>) -> Option<u64> {
        non_empty(req.headers().get(&self.name)?.as_bytes())
    }
}
