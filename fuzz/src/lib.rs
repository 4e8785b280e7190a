//! Properties that must hold for any input, shared by the `cargo fuzz` targets in
//! `fuzz_targets/` and by their proptest twin, `tests/bad_input.rs`, which includes this
//! file as a module so that CI checks the same properties on a bounded, seeded sample.
//!
//! Each check panics (through `assert!`) when a property fails; the fuzzer reports any
//! panic as a crash, proptest as a failing case.

use std::future::{Future, ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use http::header::{COOKIE, HeaderName, HeaderValue, SET_COOKIE};
use http::{Request, Response, Uri};
use tower::Service;
use tower::util::BoxCloneSyncService;
use tower_lb::affinity::{
    AffinityKey, CookieKey, HeaderKey, MAX_KEY_LEN, Or, PathKey, QueryKey, hash_key,
};
use tower_lb::balance::{BackendService, Balance, BoxError, Sticky, StickyCookie};
use tower_lb::{PickError, Pool, RoundRobin, Weight};

/// The sticky cookie's name and secret in every check.
pub const COOKIE_NAME: &str = "lb";
pub const SECRET: &[u8] = b"fuzzing secret, 32 bytes long...";

/// A request's worth of cookie trouble for [`sticky_cookie`].
#[derive(Debug, Clone, Default)]
pub struct CookieCase {
    /// Raw `Cookie` header values (those that are not valid header values are skipped).
    pub headers: Vec<Vec<u8>>,
    /// Backends in the set, 1 to 4 (taken modulo).
    pub backends: u8,
    /// Add one well-formed cookie naming this backend (modulo the set).
    pub valid_for: Option<u8>,
    /// Drain this backend (modulo the set) before the request.
    pub drained: Option<u8>,
}

type Backend = BoxCloneSyncService<Request<()>, Response<String>, BoxError>;

fn name(i: usize) -> String {
    format!("backend-{i}")
}

/// Polls a future that must be ready at once (every backend answers at once).
fn now<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("pending although every backend answers at once"),
    }
}

/// Sticky sessions over in-process backends, with arbitrary `Cookie` headers: never a
/// panic, never an error; the request is served by an eligible backend; a new cookie
/// names the backend that served, and no new cookie means the request carried a valid
/// one for it; a single valid cookie for an eligible backend, alone, is honoured.
pub fn sticky_cookie(case: &CookieCase) {
    let n = usize::from(case.backends % 4) + 1;
    let pool = Pool::new(RoundRobin::new());
    let mut ids = Vec::new();
    for i in 0..n {
        let answer = name(i);
        let svc: Backend = BoxCloneSyncService::new(tower::service_fn(move |_: Request<()>| {
            ready(Ok::<_, BoxError>(Response::new(answer.clone())))
        }));
        ids.push(
            pool.insert(BackendService::new(name(i), svc), Weight::ONE)
                .unwrap(),
        );
    }
    let drained = case.drained.map(|d| usize::from(d) % n);
    if let Some(d) = drained {
        pool.drain(ids[d]).unwrap();
    }
    let cookie = StickyCookie::new(COOKIE_NAME, SECRET).unwrap();
    let mut lb = Sticky::new(Balance::new(pool.clone()), cookie.clone());

    let mut req = Request::get("/");
    let mut sent = 0usize;
    for h in &case.headers {
        if let Ok(v) = HeaderValue::from_bytes(h) {
            req = req.header(COOKIE, v);
            sent += 1;
        }
    }
    let valid_for = case.valid_for.map(|v| usize::from(v) % n);
    if let Some(v) = valid_for {
        req = req.header(
            COOKIE,
            format!("{COOKIE_NAME}={}", cookie.value_for(&name(v))),
        );
    }
    let req = req.body(()).unwrap();
    let texts: Vec<String> = req
        .headers()
        .get_all(COOKIE)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();

    now(std::future::poll_fn(|cx| lb.poll_ready(cx))).expect("ready");
    let result = now(lb.call(req));
    if n == 1 && drained.is_some() {
        // The only backend drained: the typed error, whatever the cookies say.
        let err = result.expect_err("no backend to serve");
        assert_eq!(
            err.downcast_ref::<PickError>(),
            Some(&PickError::NoEligible { total: 1 })
        );
        return;
    }
    let resp = result.expect("never an error while a backend is eligible");
    let served = resp.body().clone();
    let index = (0..n)
        .find(|&i| name(i) == served)
        .expect("a backend of the set");
    assert_ne!(Some(index), drained, "served by the drained backend");
    match resp.headers().get(SET_COOKIE) {
        Some(set) => {
            let set = set.to_str().expect("an ASCII Set-Cookie");
            let want = format!("{COOKIE_NAME}={};", cookie.value_for(&served));
            assert!(set.starts_with(&want), "{set} does not name {served}");
        }
        None => {
            let value = cookie.value_for(&served);
            assert!(
                texts.iter().any(|t| t.contains(&value)),
                "no new cookie, yet the request carried none for {served}"
            );
        }
    }
    if let Some(v) = valid_for
        && sent == 0
        && Some(v) != drained
    {
        assert_eq!(served, name(v), "a lone valid cookie was not honoured");
        assert!(resp.headers().get(SET_COOKIE).is_none());
    }
    assert!(pool.stats().iter().all(|s| s.in_flight == 0));
}

/// An arbitrary request for [`affinity_extractors`].
#[derive(Debug, Clone, Default)]
pub struct RequestCase {
    /// The request target (skipped when not a valid URI).
    pub uri: Vec<u8>,
    /// Header names and values (pairs that are not valid are skipped).
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The header, cookie and query parameter name the extractors key by.
    pub key_name: String,
    /// Path segments for `PathKey::segments`.
    pub segments: usize,
}

/// `PathKey::segments(n)`'s prefix, written the obvious way.
fn path_prefix(path: &str, n: usize) -> &str {
    let body = path.strip_prefix('/').unwrap_or(path);
    let lead = path.len() - body.len();
    if n == 0 {
        return &path[..lead];
    }
    let mut end = lead;
    for (i, part) in body.split('/').enumerate() {
        if i == n {
            return &path[..end];
        }
        end += part.len() + usize::from(i > 0);
    }
    path
}

/// `CookieKey`'s value, written the obvious way from its docs and RFC 6265's
/// `cookie-string`: every `Cookie` header in order (one that is not visible ASCII is
/// skipped), pairs split at `;`, each split at its first `=` with name and value trimmed
/// of spaces; a pair without `=` or with an empty name is skipped; the first pair with
/// exactly this name gives the value, as sent (quotes kept).
pub fn cookie_value<'r, B>(req: &'r Request<B>, name: &str) -> Option<&'r str> {
    for header in req.headers().get_all(COOKIE) {
        let Ok(text) = header.to_str() else {
            continue;
        };
        for pair in text.split(';') {
            let Some((n, v)) = pair.split_once('=') else {
                continue;
            };
            let n = n.trim_matches([' ', '\t']);
            if !n.is_empty() && n == name {
                return Some(v.trim_matches([' ', '\t']));
            }
        }
    }
    None
}

/// `application/x-www-form-urlencoded` decoding, written out: `+` is a space, `%` and
/// two hex digits a byte, anything else itself; the bytes read as UTF-8, invalid
/// sequences replaced.
fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `QueryKey`'s value, written out: the query split at `&`, empty parts skipped, each
/// split at its first `=` (none: an empty value), name and value decoded; the first
/// part whose decoded name is exactly `name` gives the decoded value.
pub fn query_value(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| part.split_once('=').unwrap_or((part, "")))
        .find(|(n, _)| form_decode(n) == name)
        .map(|(_, v)| form_decode(v))
}

/// Every affinity extractor on an arbitrary request: never a panic, the same key every
/// time, and exactly the key its docs describe, computed here independently (header
/// value, cookie value, path prefix, decoded query parameter; capped at `MAX_KEY_LEN`).
pub fn affinity_extractors(case: &RequestCase) {
    let Ok(uri) = Uri::try_from(case.uri.as_slice()) else {
        return;
    };
    let mut req = Request::new(());
    *req.uri_mut() = uri;
    for (name, value) in &case.headers {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            req.headers_mut().append(name, value);
        }
    }
    let req = req;

    match HeaderKey::try_new(&case.key_name) {
        Ok(key) => {
            let want = req
                .headers()
                .get(key.name())
                .map(HeaderValue::as_bytes)
                .filter(|v| !v.is_empty())
                .map(hash_key);
            assert_eq!(key.key(&req), want);
            if let Some(v) = req.headers().get(key.name())
                && v.len() > MAX_KEY_LEN
            {
                assert_eq!(key.key(&req), Some(hash_key(&v.as_bytes()[..MAX_KEY_LEN])));
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }

    let cookie = CookieKey::new(case.key_name.clone());
    let found = cookie.key(&req);
    assert_eq!(found, cookie.key(&req));
    let want = cookie_value(&req, &case.key_name)
        .filter(|v| !v.is_empty())
        .map(|v| hash_key(v.as_bytes()));
    assert_eq!(found, want, "cookie {:?}", case.key_name);

    let path = req.uri().path();
    assert_eq!(PathKey::new().key(&req), Some(hash_key(path.as_bytes())));
    let segments = PathKey::segments(case.segments);
    assert_eq!(
        segments.key(&req),
        Some(hash_key(path_prefix(path, case.segments).as_bytes()))
    );

    let query = QueryKey::new(case.key_name.clone());
    let q = query.key(&req);
    let want = req
        .uri()
        .query()
        .and_then(|s| query_value(s, &case.key_name))
        .filter(|v| !v.is_empty())
        .map(|v| hash_key(v.as_bytes()));
    assert_eq!(q, want, "query parameter {:?}", case.key_name);

    let either = Or::new(cookie, query);
    assert_eq!(either.key(&req), found.or(q));
}
