//! Session affinity: extracting a request's session key, hashed stably to 64 bits.
//!
//! An [`AffinityKey`] looks at a request and returns the stable hash of its session key
//! — a user id header, a session cookie, the URI path, a query parameter, the client's
//! address — or `None` when the request carries none. The hash goes into
//! [`PickContext::with_hash`](crate::PickContext::with_hash), where the consistent-hashing
//! pickers ([`Maglev`](crate::Maglev), [`Ring`](crate::Ring),
//! [`Rendezvous`](crate::Rendezvous), [`Jump`](crate::Jump)) map it to a backend; a
//! request with no key goes to the picker's non-affine fallback (round robin by default).
//!
//! Every key is hashed with [`hash_key`] (XXH3-64, fixed by its specification), never
//! with std's randomly keyed hasher, so balancers in different processes, on different
//! platforms and across releases of this crate agree on every key with no shared state.
//!
//! | extractor | key | layer |
//! | --- | --- | --- |
//! | `HeaderKey` | the first value of a header | L7, feature `http` |
//! | `CookieKey` | the value of a cookie, by name (parsed by the `cookie` crate) | L7, feature `http` |
//! | `PathKey` | the URI path, or its first n segments | L7, feature `http` |
//! | `QueryKey` | a query parameter's decoded value | L7, feature `http` |
//! | [`PeerIpKey`] | the peer's IP address, optionally a prefix of it | L4 (anything [`PeerAddr`]) |
//! | [`PeerAddrKey`] | the peer's IP address and port | L4 |
//! | [`KeyFn`] | whatever a closure returns | any |
//!
//! Extractors combine with [`Or`]: the first that finds a key wins.
//!
//! # Examples
//!
//! ```
//! use std::net::SocketAddr;
//! use tower_lb::affinity::{AffinityKey, PeerIpKey};
//! use tower_lb::{Maglev, PickContext, Picker, Snapshot, Weight};
//!
//! let snapshot = Snapshot::build([("10.0.0.1:80", Weight::ONE), ("10.0.0.2:80", Weight::ONE)])?;
//! let picker = Maglev::new();
//! let table = picker.prepare(&snapshot, None);
//!
//! // Layer 4: the same client address always lands on the same backend.
//! let client: SocketAddr = "192.0.2.7:51000".parse()?;
//! let key = PeerIpKey::new();
//! let first = picker.pick(&table, &snapshot, &key.context(&client));
//! let again = picker.pick(&table, &snapshot, &key.context(&client));
//! assert_eq!(first, again);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;

use crate::pick::PickContext;

mod closure;
#[cfg(feature = "http")]
mod cookie;
#[cfg(feature = "http")]
mod header;
#[cfg(feature = "http")]
mod path;
mod peer;
#[cfg(feature = "http")]
mod query;

pub use crate::stable_hash::{MAX_KEY_LEN, hash_key};
pub use closure::KeyFn;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use cookie::CookieKey;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use header::HeaderKey;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use path::PathKey;
pub use peer::{PeerAddr, PeerAddrKey, PeerIpKey};
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use query::QueryKey;

/// Extracts a request's session key, as a stable 64-bit hash.
///
/// Returns `None` when the request carries no key; the balancer then places it with
/// the hashing picker's non-affine fallback. Implementations must be deterministic
/// (the same request gives the same hash in every process: use [`hash_key`]) and must
/// not panic on any input.
pub trait AffinityKey<Req: ?Sized>: Send + Sync {
    /// The stable hash of `req`'s key, or `None` when it has none.
    fn key(&self, req: &Req) -> Option<u64>;

    /// A [`PickContext`] carrying `req`'s key hash, or none when there is no key.
    fn context(&self, req: &Req) -> PickContext {
        match self.key(req) {
            Some(hash) => PickContext::new().with_hash(hash),
            None => PickContext::new(),
        }
    }
}

/// Two extractors tried in order: the first key found wins.
///
/// # Examples
///
/// ```
/// use std::net::SocketAddr;
/// use tower_lb::affinity::{AffinityKey, KeyFn, Or, PeerIpKey};
///
/// let never = KeyFn::new(|_: &SocketAddr| None);
/// let key = Or::new(never, PeerIpKey::new());
/// let peer: SocketAddr = "192.0.2.7:4000".parse().unwrap();
/// assert_eq!(key.key(&peer), PeerIpKey::new().key(&peer));
/// ```
#[derive(Debug, Clone)]
pub struct Or<K1, K2> {
    first: K1,
    second: K2,
}

impl<K1, K2> Or<K1, K2> {
    /// `first`, then `second` when `first` finds no key.
    pub const fn new(first: K1, second: K2) -> Self {
        Or { first, second }
    }
}

impl<Req: ?Sized, K1: AffinityKey<Req>, K2: AffinityKey<Req>> AffinityKey<Req> for Or<K1, K2> {
    #[inline]
    fn key(&self, req: &Req) -> Option<u64> {
        self.first.key(req).or_else(|| self.second.key(req))
    }
}

impl<Req: ?Sized, K: AffinityKey<Req> + ?Sized> AffinityKey<Req> for &K {
    #[inline]
    fn key(&self, req: &Req) -> Option<u64> {
        (**self).key(req)
    }
}

impl<Req: ?Sized, K: AffinityKey<Req> + ?Sized> AffinityKey<Req> for Box<K> {
    #[inline]
    fn key(&self, req: &Req) -> Option<u64> {
        (**self).key(req)
    }
}

impl<Req: ?Sized, K: AffinityKey<Req> + ?Sized> AffinityKey<Req> for Arc<K> {
    #[inline]
    fn key(&self, req: &Req) -> Option<u64> {
        (**self).key(req)
    }
}

/// Hashes a non-empty key; an empty one is no key (an empty session id names no session).
#[cfg(feature = "http")]
#[inline]
pub(crate) fn non_empty(bytes: &[u8]) -> Option<u64> {
    (!bytes.is_empty()).then(|| hash_key(bytes))
}
