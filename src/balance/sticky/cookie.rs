//! The sticky cookie: its name, secret, attributes, and the tag codec.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use http::HeaderValue;
use http::header::COOKIE;
use sha2::Sha256;

use crate::pick::hash::BackendKey;

/// The tag length in bytes (128 bits of the MAC).
const TAG_LEN: usize = 16;
/// Its base64url length.
const ENCODED_LEN: usize = 22;
/// The shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 16;
/// `Cookie` header values longer than this are ignored whole (browsers send at most
/// about 4 KiB per cookie; anything longer is not ours to parse).
const MAX_COOKIE_HEADER: usize = 8 * 1024;

pub(super) type Tag = [u8; TAG_LEN];

/// `SameSite` attribute of the sticky cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=Lax` (the default).
    Lax,
    /// `SameSite=None` (requires `Secure` in browsers).
    None,
}

/// A sticky-cookie configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StickyError {
    /// The cookie name is empty or not an RFC 6265 token.
    #[error("sticky cookie: {0:?} is not a valid cookie name")]
    Name(String),
    /// The secret is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("sticky cookie: the secret has {0} bytes, at least {MIN_SECRET_LEN} are needed")]
    Secret(usize),
    /// The path is not a valid cookie path.
    #[error("sticky cookie: {0:?} is not a valid cookie path")]
    Path(String),
}

/// The sticky cookie: its name, secret and attributes.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::balance::StickyCookie;
///
/// let cookie = StickyCookie::new("lb", b"a secret of 16+ bytes")?
///     .secure(true)
///     .max_age(Duration::from_secs(3600));
/// assert!(StickyCookie::new("bad name", b"a secret of 16+ bytes").is_err());
/// assert!(StickyCookie::new("lb", b"short").is_err());
/// # let _ = cookie;
/// # Ok::<(), tower_lb::balance::StickyError>(())
/// ```
#[derive(Clone)]
pub struct StickyCookie {
    name: Arc<str>,
    mac: Hmac<Sha256>,
    path: Arc<str>,
    http_only: bool,
    secure: bool,
    same_site: SameSite,
    max_age: Option<Duration>,
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

impl StickyCookie {
    /// A cookie called `name`, its tags keyed by `secret` (at least 16 bytes; share it
    /// between balancer instances that must honour each other's cookies). `Path=/`,
    /// `HttpOnly`, `SameSite=Lax`, no `Secure`, a session cookie (no `Max-Age`).
    pub fn new(name: &str, secret: impl AsRef<[u8]>) -> Result<Self, StickyError> {
        if !is_token(name) {
            return Err(StickyError::Name(name.to_owned()));
        }
        let secret = secret.as_ref();
        if secret.len() < MIN_SECRET_LEN {
            return Err(StickyError::Secret(secret.len()));
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret)
            .map_err(|_| StickyError::Secret(secret.len()))?;
        Ok(StickyCookie {
            name: name.into(),
            mac,
            path: "/".into(),
            http_only: true,
            secure: false,
            same_site: SameSite::Lax,
            max_age: None,
        })
    }

    /// Sets `Secure` (send over HTTPS only).
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// Sets or clears `HttpOnly` (on by default).
    pub fn http_only(mut self, http_only: bool) -> Self {
        self.http_only = http_only;
        self
    }

    /// Sets `SameSite`.
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.same_site = same_site;
        self
    }

    /// Sets `Max-Age`, making the cookie outlive the browser session.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Sets `Path` (default `/`).
    pub fn path(mut self, path: &str) -> Result<Self, StickyError> {
        if !path.starts_with('/')
            || path
                .bytes()
                .any(|b| b == b';' || !(0x20..0x7f).contains(&b))
        {
            return Err(StickyError::Path(path.to_owned()));
        }
        self.path = path.into();
        Ok(self)
    }

    /// The cookie's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tag naming `backend`: HMAC-SHA-256 of its stable key bytes, truncated.
    pub(super) fn tag<A: BackendKey + ?Sized>(&self, backend: &A) -> Tag {
        let mut bytes = Vec::new();
        backend.write_key(&mut bytes);
        let mut mac = self.mac.clone();
        mac.update(&bytes);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// The cookie value for `backend`, as sent in `Set-Cookie`.
    pub fn value_for<A: BackendKey + ?Sized>(&self, backend: &A) -> String {
        URL_SAFE_NO_PAD.encode(self.tag(backend))
    }

    /// The tag in a request's cookies: exactly one cookie with our name, of the right
    /// shape. Anything else — absent, repeated, oversized, not base64url — is `None`.
    pub(super) fn read(&self, headers: &http::HeaderMap) -> Option<Tag> {
        let mut found: Option<Tag> = None;
        let mut seen = 0usize;
        for value in headers.get_all(COOKIE) {
            let text = value.to_str().ok()?;
            if text.len() > MAX_COOKIE_HEADER {
                return None;
            }
            for cookie in cookie::Cookie::split_parse(text).filter_map(Result::ok) {
                if cookie.name() != &*self.name {
                    continue;
                }
                seen += 1;
                let value = cookie.value();
                if value.len() == ENCODED_LEN {
                    let mut tag = [0u8; TAG_LEN];
                    if let Ok(TAG_LEN) = URL_SAFE_NO_PAD.decode_slice(value, &mut tag) {
                        found = Some(tag);
                    }
                }
            }
        }
        // A duplicated cookie is ambiguous: ignore them all.
        if seen == 1 { found } else { None }
    }

    /// The `Set-Cookie` header naming `tag`.
    pub(super) fn set_cookie(&self, tag: &Tag) -> Option<HeaderValue> {
        let mut value = format!(
            "{}={}; Path={}",
            self.name,
            URL_SAFE_NO_PAD.encode(tag),
            self.path
        );
        if let Some(age) = self.max_age {
            value.push_str(&format!("; Max-Age={}", age.as_secs()));
        }
        if self.http_only {
            value.push_str("; HttpOnly");
        }
        if self.secure {
            value.push_str("; Secure");
        }
        value.push_str(match self.same_site {
            SameSite::Strict => "; SameSite=Strict",
            SameSite::Lax => "; SameSite=Lax",
            SameSite::None => "; SameSite=None",
        });
        HeaderValue::from_str(&value).ok()
    }
}

impl fmt::Debug for StickyCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StickyCookie")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("secure", &self.secure)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}
