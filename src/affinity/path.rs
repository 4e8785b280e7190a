//! The URI path as the key.

use super::{AffinityKey, hash_key};

/// The request's URI path as the key, or its first n segments: a cache (each object on
/// one backend, as HAProxy's `balance uri`) or a sharded resource (`/users/42/…`).
///
/// The path is hashed as sent, without percent-decoding or normalisation. Every request
/// has a path (at least `/`), so this key is always present.
///
/// # Examples
///
/// ```
/// use tower_lb::affinity::{AffinityKey, PathKey};
///
/// let by_user = PathKey::segments(2);
/// let a = http::Request::get("/users/42/orders?page=1").body(())?;
/// let b = http::Request::get("/users/42/profile").body(())?;
/// assert_eq!(by_user.key(&a), by_user.key(&b));
/// assert_ne!(PathKey::new().key(&a), PathKey::new().key(&b));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathKey {
    segments: Option<usize>,
}

impl PathKey {
    /// Keys by the whole path (not the query).
    pub const fn new() -> Self {
        PathKey { segments: None }
    }

    /// Keys by the first `n` segments of the path: with `n = 2`, `/users/42/orders`
    /// keys as `/users/42`. A shorter path keys as itself.
    pub const fn segments(n: usize) -> Self {
        PathKey { segments: Some(n) }
    }

    /// The hash of `path` under this key.
    pub fn hash_path(&self, path: &str) -> u64 {
        hash_key(self.prefix(path).as_bytes())
    }

    fn prefix<'p>(&self, path: &'p str) -> &'p str {
        let Some(n) = self.segments else {
            return path;
        };
        // The n-th '/' after the leading one ends the prefix.
        let body = path.strip_prefix('/').unwrap_or(path);
        let lead = path.len() - body.len();
        match body.match_indices('/').nth(n.wrapping_sub(1)) {
            _ if n == 0 => &path[..lead],
            Some((at, _)) => &path[..lead + at],
            None => path,
        }
    }
}

impl Default for PathKey {
    fn default() -> Self {
        PathKey::new()
    }
}

impl<B> AffinityKey<http::Request<B>> for PathKey {
    #[inline]
    fn key(&self, req: &http::Request<B>) -> Option<u64> {
        Some(self.hash_path(req.uri().path()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let p = |n, path| PathKey::segments(n).prefix(path).to_owned();
        assert_eq!(p(2, "/users/42/orders"), "/users/42");
        assert_eq!(p(2, "/users/42"), "/users/42");
        assert_eq!(p(2, "/users/42/"), "/users/42");
        assert_eq!(p(1, "/users/42"), "/users");
        assert_eq!(p(0, "/users/42"), "/");
        assert_eq!(p(3, "/a"), "/a");
        assert_eq!(p(1, "/"), "/");
        assert_eq!(p(2, "*"), "*");
        assert_eq!(p(usize::MAX, "/a/b"), "/a/b");
        assert_eq!(PathKey::new().prefix("/a/b/c"), "/a/b/c");
    }
}
