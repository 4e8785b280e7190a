//! A query parameter as the key.

use std::borrow::Cow;

use super::{AffinityKey, non_empty};

/// The value of a query parameter as the key (HAProxy's `balance url_param`).
///
/// The query is parsed as `application/x-www-form-urlencoded` by the `form_urlencoded`
/// crate, so `?user=a%20b` and `?user=a+b` give the same key; the first parameter with
/// this name wins. No parameter, or an empty value, is no key. Decoding allocates only
/// when the value holds escapes.
///
/// # Examples
///
/// ```
/// use tower_lb::affinity::{AffinityKey, QueryKey, hash_key};
///
/// let key = QueryKey::new("user");
/// let req = http::Request::get("/search?q=rust&user=a%20b").body(())?;
/// assert_eq!(key.key(&req), Some(hash_key(b"a b")));
/// assert_eq!(key.key(&http::Request::get("/search?q=rust").body(())?), None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryKey {
    name: Cow<'static, str>,
}

impl QueryKey {
    /// Keys by the query parameter called `name` (compared after decoding).
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        QueryKey { name: name.into() }
    }

    /// The parameter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hash of this parameter's value in `query` (the part after `?`), if present.
    pub fn hash_query(&self, query: &str) -> Option<u64> {
        form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| *name == self.name)
            .and_then(|(_, value)| non_empty(value.as_bytes()))
    }
}

impl<B> AffinityKey<http::Request<B>> for QueryKey {
    #[inline]
    fn key(&self, req: &http::Request<B>) -> Option<u64> {
        self.hash_query(req.uri().query()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::affinity::hash_key;

    #[test]
    fn decodes_and_takes_the_first() {
        let key = QueryKey::new("u");
        assert_eq!(key.hash_query("u=a+b"), Some(hash_key(b"a b")));
        assert_eq!(key.hash_query("u=a%20b"), Some(hash_key(b"a b")));
        assert_eq!(key.hash_query("x=1&u=2&u=3"), Some(hash_key(b"2")));
        assert_eq!(key.hash_query("%75=7"), Some(hash_key(b"7")));
        assert_eq!(key.hash_query("u="), None);
        assert_eq!(key.hash_query("u"), None);
        assert_eq!(key.hash_query("uu=1"), None);
        assert_eq!(
            key.hash_query("u=%FF%FE"),
            key.hash_query("u=%EF%BF%BD%EF%BF%BD")
        );
        assert_eq!(key.hash_query(""), None);
    }
}
