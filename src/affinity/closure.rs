//! A closure as an affinity key.

use std::fmt;

use super::AffinityKey;

/// An [`AffinityKey`] computed by a closure: `Fn(&Req) -> Option<u64>`.
///
/// For keys no built-in extractor covers: a field of a gRPC message, a tenant id from
/// a TLS client certificate, a destination address. Hash the key bytes with
/// [`hash_key`](super::hash_key) so that every balancer instance agrees.
///
/// # Examples
///
/// ```
/// use tower_lb::affinity::{AffinityKey, KeyFn, hash_key};
///
/// struct Job { tenant: String }
///
/// let key = KeyFn::new(|job: &Job| Some(hash_key(job.tenant.as_bytes())));
/// let job = Job { tenant: "acme".into() };
/// assert_eq!(key.key(&job), Some(hash_key(b"acme")));
/// ```
#[derive(Clone)]
pub struct KeyFn<F> {
    f: F,
}

impl<F> KeyFn<F> {
    /// An extractor calling `f` on every request.
    pub const fn new(f: F) -> Self {
        KeyFn { f }
    }
}

impl<Req: ?Sized, F> AffinityKey<Req> for KeyFn<F>
where
    F: Fn(&Req) -> Option<u64> + Send + Sync,
{
    #[inline]
    fn key(&self, req: &Req) -> Option<u64> {
        (self.f)(req)
    }
}

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFn").finish_non_exhaustive()
    }
}
