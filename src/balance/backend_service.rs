//! A backend that carries its own service.

use std::fmt;
use std::hash::{Hash, Hasher};

/// A backend for [`PerBackend`](super::PerBackend) routing: a key (an address, a name)
/// and the service that reaches it.
///
/// Equality and hashing look at the key only, so a pool refuses two endpoints with the
/// same key, and hashing strategies place an endpoint by its key.
#[derive(Clone)]
pub struct BackendService<K, S> {
    key: K,
    service: S,
}

impl<K, S> BackendService<K, S> {
    /// An endpoint reached through `service`.
    pub fn new(key: K, service: S) -> Self {
        BackendService { key, service }
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

impl<K: PartialEq, S> PartialEq for BackendService<K, S> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl<K: Eq, S> Eq for BackendService<K, S> {}

impl<K: Hash, S> Hash for BackendService<K, S> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl<K: fmt::Debug, S> fmt::Debug for BackendService<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BackendService").field(&self.key).finish()
    }
}

impl<K: fmt::Display, S> fmt::Display for BackendService<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.key.fmt(f)
    }
}

impl<K: crate::BackendKey, S> crate::BackendKey for BackendService<K, S> {
    /// The key's bytes: an endpoint hashes as its key does.
    fn write_key(&self, out: &mut Vec<u8>) {
        self.key.write_key(out);
    }
}

/// The former name of [`BackendService`].
#[deprecated(
    since = "0.2.0",
    note = "renamed `BackendService`: `Endpoint` collided with `tonic::transport::Endpoint`"
)]
pub type Endpoint<K, S> = BackendService<K, S>;
