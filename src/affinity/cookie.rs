//! An HTTP cookie, by name, as the key.

use std::borrow::Cow;

use cookie::Cookie;
use http::header::COOKIE;

use super::{AffinityKey, non_empty};

/// The value of a cookie as the key: an application's session cookie (`JSESSIONID`,
/// `PHPSESSID`, a framework's `session`).
///
/// Every `Cookie` header is read (HTTP/2 clients may split cookies over several) and
/// parsed with the [`cookie`] crate; the first cookie with this exact name gives the
/// key, its value hashed as sent. A request without the cookie, or with an empty value,
/// has no key; malformed cookie pairs are skipped, never an error.
///
/// # Examples
///
/// ```
/// use tower_lb::affinity::{AffinityKey, CookieKey, hash_key};
///
/// let key = CookieKey::new("session");
/// let req = http::Request::builder()
///     .header("cookie", "theme=dark; session=abc123")
///     .body(())?;
/// assert_eq!(key.key(&req), Some(hash_key(b"abc123")));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieKey {
    name: Cow<'static, str>,
}

impl CookieKey {
    /// Keys by the cookie called `name` (case-sensitive, as cookie names are).
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        CookieKey { name: name.into() }
    }

    /// The cookie's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value of this cookie in a `Cookie` header value, if present.
    fn find<'h>(&self, header: &'h str) -> Option<&'h str> {
        Cookie::split_parse(header)
            .filter_map(Result::ok)
            .find(|c| c.name() == self.name)
            .and_then(|c| c.value_raw())
    }
}

impl<B> AffinityKey<http::Request<B>> for CookieKey {
    fn key(&self, req: &http::Request<B>) -> Option<u64> {
        req.headers()
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(|header| self.find(header))
            .and_then(|value| non_empty(value.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::affinity::hash_key;

    fn req(cookies: &[&str]) -> http::Request<()> {
        let mut builder = http::Request::builder();
        for c in cookies {
            builder = builder.header(COOKIE, *c);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn finds_the_named_cookie_in_any_header() {
        let key = CookieKey::new("sid");
        assert_eq!(
            key.key(&req(&["a=1; sid=xyz; b=2"])),
            Some(hash_key(b"xyz"))
        );
        assert_eq!(key.key(&req(&["a=1", "sid=xyz"])), Some(hash_key(b"xyz")));
        assert_eq!(key.key(&req(&["sidx=1; xsid=2"])), None);
        assert_eq!(key.key(&req(&["SID=1"])), None);
        assert_eq!(key.key(&req(&[])), None);
    }

    #[test]
    fn empty_and_malformed_values_are_no_key() {
        let key = CookieKey::new("sid");
        assert_eq!(key.key(&req(&["sid="])), None);
        assert_eq!(key.key(&req(&[";;; =; sid"])), None);
        assert_eq!(key.key(&req(&["=x; sid=ok"])), Some(hash_key(b"ok")));
    }

    #[test]
    fn first_of_duplicates_wins() {
        let key = CookieKey::new("sid");
        assert_eq!(key.key(&req(&["sid=one; sid=two"])), Some(hash_key(b"one")));
    }
}
