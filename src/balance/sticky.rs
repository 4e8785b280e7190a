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
//! pinned through a momentary overload and moves only when its backend leaves rotation.
//! Tags are looked up in a map built once per change of the members (not at health or
//! weight changes), off the per-request path.
//!
//! [`StickyLayer`] stacks anywhere above a [`Balance`] — time-outs, retries, body
//! tracking in between, in any order: the pin and the chosen backend travel in the
//! request's [`Steering`].

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

use super::BoxError;
use super::service::Balance;
use super::steer::{Steer, Steering};
use crate::pick::hash::BackendKey;
use crate::{BackendId, Picker, Pool, Snapshot};

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

/// Tags of one set of members.
struct TagIndex {
    members_version: u64,
    by_tag: HashMap<Tag, BackendId>,
    /// `(id, tag)` in id order, for a binary search by id.
    by_id: Vec<(BackendId, Tag)>,
}

/// Where a [`Sticky`] layer reads the backend set: the pool of the balancer below it,
/// type-erased so that `Sticky<S>` names only the service it wraps.
trait Tags: Send + Sync {
    /// The eligible backend `tag` names, if any.
    fn lookup(&self, tag: &Tag) -> Option<BackendId>;
    /// The tag of `backend`.
    fn tag_of(&self, backend: BackendId) -> Option<Tag>;
}

/// The tags of a pool's members, rebuilt when the members change (health, weight and
/// slow-start republications keep them).
struct PoolTags<A, P: Picker<A>> {
    pool: Pool<A, P>,
    cookie: Arc<StickyCookie>,
    index: ArcSwapOption<TagIndex>,
}

impl<A: BackendKey, P: Picker<A>> PoolTags<A, P> {
    fn index_for(&self, snapshot: &Snapshot<A>) -> Arc<TagIndex> {
        if let Some(index) = self.index.load_full()
            && index.members_version == snapshot.members_version()
        {
            return index;
        }
        let by_id: Vec<(BackendId, Tag)> = snapshot
            .backends()
            .iter()
            .map(|b| (b.id(), self.cookie.tag(b.addr())))
            .collect();
        let by_tag = by_id.iter().map(|&(id, tag)| (tag, id)).collect();
        let index = Arc::new(TagIndex {
            members_version: snapshot.members_version(),
            by_tag,
            by_id,
        });
        self.index.store(Some(Arc::clone(&index)));
        index
    }
}

impl<A, P> Tags for PoolTags<A, P>
where
    A: BackendKey + Send + Sync,
    P: Picker<A>,
    P::Table: Send + Sync,
{
    fn lookup(&self, tag: &Tag) -> Option<BackendId> {
        let current = self.pool.load();
        let snapshot = current.snapshot();
        let id = *self.index_for(snapshot).by_tag.get(tag)?;
        snapshot
            .index_of(id)
            .filter(|&i| snapshot.is_eligible(i))
            .map(|_| id)
    }

    fn tag_of(&self, backend: BackendId) -> Option<Tag> {
        let current = self.pool.load();
        let index = self.index_for(current.snapshot());
        let at = index.by_id.binary_search_by_key(&backend, |e| e.0).ok()?;
        Some(index.by_id[at].1)
    }
}

/// Sticky sessions: honours and issues the [`StickyCookie`], over any service with a
/// [`Balance`] below it (directly, or under time-outs, retries, body tracking — in any
/// order).
///
/// A request whose cookie names an eligible backend carries it as its
/// [`Steering`]'s pin, which the balancer honours when that backend is
/// below its limit; the balancer reports the backend it chose the same way, and a
/// response gets a new cookie exactly when the request named no eligible backend. Made by
/// [`StickyLayer`] or [`Sticky::new`]; requests and responses are `http::Request` /
/// `http::Response`.
pub struct Sticky<S> {
    inner: S,
    cookie: Arc<StickyCookie>,
    tags: Arc<dyn Tags>,
}

impl<S: Clone> Clone for Sticky<S> {
    fn clone(&self) -> Self {
        Sticky {
            inner: self.inner.clone(),
            cookie: Arc::clone(&self.cookie),
            tags: Arc::clone(&self.tags),
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

fn pool_tags<A, P>(pool: &Pool<A, P>, cookie: &Arc<StickyCookie>) -> Arc<dyn Tags>
where
    A: BackendKey + Send + Sync + 'static,
    P: Picker<A> + 'static,
    P::Table: Send + Sync,
{
    Arc::new(PoolTags {
        pool: pool.clone(),
        cookie: Arc::clone(cookie),
        index: ArcSwapOption::empty(),
    })
}

impl<A, P, R, K, C> Sticky<Balance<A, P, R, K, C>>
where
    A: BackendKey + Send + Sync + 'static,
    P: Picker<A> + 'static,
    P::Table: Send + Sync,
{
    /// Sticky sessions with `cookie` directly over the balancer `inner`.
    pub fn new(inner: Balance<A, P, R, K, C>, cookie: StickyCookie) -> Self {
        let cookie = Arc::new(cookie);
        let tags = pool_tags(inner.pool(), &cookie);
        Sticky {
            inner,
            cookie,
            tags,
        }
    }
}

impl<S> Sticky<S> {
    /// Sticky sessions with `cookie` over `inner`, a service with a balancer over `pool`
    /// below it.
    pub fn over<A, P>(inner: S, cookie: StickyCookie, pool: &Pool<A, P>) -> Self
    where
        A: BackendKey + Send + Sync + 'static,
        P: Picker<A> + 'static,
        P::Table: Send + Sync,
    {
        let cookie = Arc::new(cookie);
        let tags = pool_tags(pool, &cookie);
        Sticky {
            inner,
            cookie,
            tags,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B, RB> Service<http::Request<B>> for Sticky<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<RB>;
    type Error = BoxError;
    type Future = StickyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let wanted = self
            .cookie
            .read(req.headers())
            .and_then(|tag| self.tags.lookup(&tag));
        let answer = req.steering_mut().map(|steering| {
            steering.pin(wanted);
            steering.clone()
        });
        StickyFuture {
            inner: self.inner.call(req),
            answer,
            // A new cookie only when the request names no eligible backend. A session
            // whose backend is eligible but momentarily at its in-flight limit is served
            // elsewhere this once and keeps its cookie: overload is no reason to move it.
            issue: wanted
                .is_none()
                .then(|| (Arc::clone(&self.cookie), Arc::clone(&self.tags))),
        }
    }
}

pin_project! {
    /// The response future of [`Sticky`]: adds `Set-Cookie` when a new cookie is due.
    pub struct StickyFuture<F> {
        #[pin]
        inner: F,
        answer: Option<Steering>,
        issue: Option<(Arc<StickyCookie>, Arc<dyn Tags>)>,
    }
}

impl<F> StickyFuture<F> {
    /// The backend the request went to, once the balancer chose it; `None` before, or
    /// when it failed before one was chosen.
    pub fn backend(&self) -> Option<BackendId> {
        self.answer.as_ref().and_then(Steering::served_by)
    }
}

impl<F: fmt::Debug> fmt::Debug for StickyFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StickyFuture")
            .field("inner", &self.inner)
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for StickyFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx)).map_err(Into::into)?;
        let served = this.answer.as_ref().and_then(Steering::served_by);
        if let (Some((cookie, tags)), Some(served)) = (this.issue.take(), served)
            && let Some(value) = tags.tag_of(served).and_then(|tag| cookie.set_cookie(&tag))
        {
            response.headers_mut().append(SET_COOKIE, value);
        }
        Poll::Ready(Ok(response))
    }
}

/// A tower `Layer` adding [`Sticky`] sessions over a service with a [`Balance`] below it.
#[derive(Clone)]
pub struct StickyLayer {
    cookie: Arc<StickyCookie>,
    tags: Arc<dyn Tags>,
}

impl StickyLayer {
    /// Sticky sessions with `cookie`, over the balancer of `pool`.
    pub fn new<A, P>(cookie: StickyCookie, pool: &Pool<A, P>) -> Self
    where
        A: BackendKey + Send + Sync + 'static,
        P: Picker<A> + 'static,
        P::Table: Send + Sync,
    {
        let cookie = Arc::new(cookie);
        let tags = pool_tags(pool, &cookie);
        StickyLayer { cookie, tags }
    }
}

impl fmt::Debug for StickyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StickyLayer")
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for StickyLayer {
    type Service = Sticky<S>;

    fn layer(&self, inner: S) -> Sticky<S> {
        Sticky {
            inner,
            cookie: Arc::clone(&self.cookie),
            tags: Arc::clone(&self.tags),
        }
    }
}
