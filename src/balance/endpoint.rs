//! A backend that carries its own service.

use std::fmt;
use std::hash::{Hash, Hasher};

/// A backend for [`PerBackend`](super::PerBackend) routing: a key (an address, a name)
/// and the service that reaches it.
///
/// Equality and hashing look at the key only, so a pool refuses two endpoints with the
/// same key, and hashing strategies place an endpoint by its key.
#[derive(Clone)]
pub struct Endpoint<K, S> {
    key: K,
    service: S,
}

impl<K, S> Endpoint<K, S> {
    /// An endpoint reached through `service`.
    pub fn new(key: K, service: S) -> Self {
        Endpoint { key, service }
    }

    /// The key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The service.
    pub fn service(&self) -> &S {
        &self.service
    }
}

impl<K: PartialEq, S> PartialEq for Endpoint<K, S> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl<K: Eq, S> Eq for Endpoint<K, S> {}

impl<K: Hash, S> Hash for Endpoint<K, S> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl<K: fmt::Debug, S> fmt::Debug for Endpoint<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Endpoint").field(&self.key).finish()
    }
}

impl<K: fmt::Display, S> fmt::Display for Endpoint<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.key.fmt(f)
    }
}

impl<K: crate::BackendKey, S> crate::BackendKey for Endpoint<K, S> {
    /// The key's bytes: an endpoint hashes as its key does.
    fn write_key(&self, out: &mut Vec<u8>) {
        self.key.write_key(out);
    }
}
