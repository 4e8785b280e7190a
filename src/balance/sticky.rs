//! Sticky sessions with a cookie issued by the balancer (Layer 7 persistence).
//!
//! The first response to a client carries a cookie naming the backend that served it;
//! later requests with that cookie go to the same backend while it is eligible. The
//! cookie's value is an opaque, tamper-evident tag: the first 128 bits of
//! HMAC-SHA-256(secret, backend key), base64url-encoded (22 characters). It reveals no
//! address, cannot be forged without the secret, and is the same on every balancer
//! instance that shares the secret and the backend set, so instances honour each
//! other's cookies (as HAProxy's `cookie … insert` and Envoy's stateful sessions do,
//! here with a MAC instead of a plain or reversible value).
//!
//! A request whose cookie is missing, garbled, forged, oversized, duplicated or stale
//! (its backend removed, ejected or draining) is balanced normally and gets a fresh
//! cookie: never an error response, never a panic. A request whose backend is eligible
//! but at its in-flight limit ([`BalanceLayer::max_in_flight`](super::BalanceLayer::max_in_flight))
//! is served by another backend *this once* and gets no new cookie: the session stays
//! pinned through a momentary overload and moves only when its backend leaves rotation. Tags are looked up in a map built
//! once per change of the members (not at health or weight changes), off the per-request
//! path.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use http::HeaderValue;
use http::header::{COOKIE, SET_COOKIE};
use pin_project_lite::pin_project;
use sha2::Sha256;
use tower::Layer;
use tower_service::Service;

use std::hash::Hash;

use tower::util::Oneshot;

use super::BoxError;
use super::classify::Classify;
use super::future::ResponseFuture;
use super::route::Route;
use super::service::Balance;
use crate::affinity::AffinityKey;
use crate::pick::hash::BackendKey;
use crate::{BackendId, Picker, Snapshot};

/// The tag length in bytes (128 bits of the MAC).
const TAG_LEN: usize = 16;
/// Its base64url length.
const ENCODED_LEN: usize = 22;
/// The shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 16;
/// `Cookie` header values longer than this are ignored whole (browsers send at most
/// about 4 KiB per cookie; anything longer is not ours to parse).
const MAX_COOKIE_HEADER: usize = 8 * 1024;

type Tag = [u8; TAG_LEN];

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
    fn tag<A: BackendKey + ?Sized>(&self, backend: &A) -> Tag {
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
    fn read(&self, headers: &http::HeaderMap) -> Option<Tag> {
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
    fn set_cookie(&self, tag: &Tag) -> Option<HeaderValue> {
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

/// Tags of one snapshot's members.
struct TagIndex {
    members_version: u64,
    by_tag: HashMap<Tag, (BackendId, usize)>,
    tags: Vec<Tag>,
}

/// Sticky sessions over a [`Balance`]: honours and issues the [`StickyCookie`].
///
/// Made by [`StickyLayer`] or [`Sticky::new`]; requests and responses are
/// `http::Request` / `http::Response`.
pub struct Sticky<S> {
    inner: S,
    cookie: Arc<StickyCookie>,
    index: Arc<ArcSwapOption<TagIndex>>,
}

impl<S: Clone> Clone for Sticky<S> {
    fn clone(&self) -> Self {
        Sticky {
            inner: self.inner.clone(),
            cookie: Arc::clone(&self.cookie),
            index: Arc::clone(&self.index),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Sticky<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sticky")
            .field("inner", &self.inner)
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

impl<S> Sticky<S> {
    /// Sticky sessions with `cookie` over the balancer `inner`.
    pub fn new(inner: S, cookie: StickyCookie) -> Self {
        Sticky {
            inner,
            cookie: Arc::new(cookie),
            index: Arc::new(ArcSwapOption::empty()),
        }
    }

    /// The balancer.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> Sticky<S> {
    /// The tag index for `snapshot`'s members, rebuilt when they changed (health, weight
    /// and slow-start republications keep it).
    fn index_for<A: BackendKey>(&self, snapshot: &Snapshot<A>) -> Arc<TagIndex> {
        if let Some(index) = self.index.load_full()
            && index.members_version == snapshot.members_version()
        {
            return index;
        }
        let tags: Vec<Tag> = snapshot
            .backends()
            .iter()
            .map(|b| self.cookie.tag(b.addr()))
            .collect();
        let by_tag = tags
            .iter()
            .zip(snapshot.backends())
            .enumerate()
            .map(|(i, (tag, b))| (*tag, (b.id(), i)))
            .collect();
        let index = Arc::new(TagIndex {
            members_version: snapshot.members_version(),
            by_tag,
            tags,
        });
        self.index.store(Some(Arc::clone(&index)));
        index
    }
}

impl<A, P, R, K, C, B, RB> Service<http::Request<B>> for Sticky<Balance<A, P, R, K, C>>
where
    A: BackendKey + Clone + Eq + Hash,
    P: Picker<A>,
    R: Route<A, http::Request<B>>,
    R::Service: Service<http::Request<B>, Response = http::Response<RB>>,
    <R::Service as Service<http::Request<B>>>::Error: Into<BoxError>,
    K: AffinityKey<http::Request<B>>,
    C: Classify<http::Response<RB>, <R::Service as Service<http::Request<B>>>::Error> + Clone,
{
    type Response = http::Response<RB>;
    type Error = BoxError;
    type Future = StickyFuture<ResponseFuture<Oneshot<R::Service, http::Request<B>>, C>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let prepared = self.inner.pool().load();
        let snapshot = prepared.snapshot();
        let index = self.index_for(snapshot);
        let wanted = self
            .cookie
            .read(req.headers())
            .and_then(|tag| index.by_tag.get(&tag).copied())
            .filter(|&(_, i)| snapshot.is_eligible(i));
        let future = self.inner.call_pinned(req, wanted.map(|(id, _)| id));
        // A new cookie only when the request names no eligible backend. A session whose
        // backend is eligible but momentarily at its in-flight limit is served elsewhere
        // this once and keeps its cookie: overload is not a reason to move it for good.
        let set_cookie = match future.backend() {
            Some(chosen) if wanted.is_none() => snapshot
                .index_of(chosen)
                .and_then(|i| index.tags.get(i))
                .and_then(|tag| self.cookie.set_cookie(tag)),
            _ => None,
        };
        StickyFuture {
            inner: future,
            set_cookie,
        }
    }
}

pin_project! {
    /// The response future of [`Sticky`]: adds `Set-Cookie` when a new cookie is due.
    pub struct StickyFuture<F> {
        #[pin]
        inner: F,
        set_cookie: Option<HeaderValue>,
    }
}

impl<F, C> StickyFuture<ResponseFuture<F, C>> {
    /// The backend the request went to; `None` when it failed before one was chosen.
    pub fn backend(&self) -> Option<BackendId> {
        self.inner.backend()
    }
}

impl<F: fmt::Debug> fmt::Debug for StickyFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StickyFuture")
            .field("inner", &self.inner)
            .field("set_cookie", &self.set_cookie)
            .finish()
    }
}

impl<F, RB> Future for StickyFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, BoxError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(value) = this.set_cookie.take() {
            response.headers_mut().append(SET_COOKIE, value);
        }
        Poll::Ready(Ok(response))
    }
}

/// A tower `Layer` adding [`Sticky`] sessions over a [`Balance`].
#[derive(Debug, Clone)]
pub struct StickyLayer {
    cookie: StickyCookie,
}

impl StickyLayer {
    /// Sticky sessions with `cookie`.
    pub fn new(cookie: StickyCookie) -> Self {
        StickyLayer { cookie }
    }
}

impl<S> Layer<S> for StickyLayer {
    type Service = Sticky<S>;

    fn layer(&self, inner: S) -> Sticky<S> {
        Sticky::new(inner, self.cookie.clone())
    }
}
