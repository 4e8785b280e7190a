//! Service discovery: applying a stream of `Change`s to a balancer's backend set.
//!
//! Any `Stream<Item = Result<Change<K, V>, E>>` — which is what tower's `Discover` is —
//! drives membership: `Insert(k, v)` adds the backend made from `(k, v)` (replacing the
//! one discovered under `k` before, if any), `Remove(k)` removes it. Backends that stay
//! keep their live state. The stream is polled from `poll_ready`, so changes are applied
//! before the next pick, as tower's balancer does.

use std::collections::HashMap;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
pub use tower::discover::Change;

use super::BoxError;
use crate::{BackendId, MembershipError, Weight};

/// The writes discovery makes to a backend set.
pub(crate) trait Membership<A> {
    fn add(&self, addr: A, weight: Weight) -> Result<BackendId, MembershipError>;
    fn drop_backend(&self, id: BackendId) -> Result<(), MembershipError>;
}

/// A type-erased discovery stream with its key → backend map.
pub(crate) trait Driver<A>: Send {
    /// Applies every ready change; `Ready(Ok)` when the stream has ended.
    fn poll_apply(
        &mut self,
        cx: &mut Context<'_>,
        set: &dyn Membership<A>,
    ) -> Poll<Result<(), BoxError>>;
}

pub(crate) struct StreamDriver<D, K, F> {
    pub(crate) stream: Pin<Box<D>>,
    pub(crate) make: F,
    pub(crate) ids: HashMap<K, BackendId>,
}

impl<D, K, V, E, F, A> Driver<A> for StreamDriver<D, K, F>
where
    D: Stream<Item = Result<Change<K, V>, E>> + Send,
    K: Hash + Eq + Send,
    E: Into<BoxError>,
    F: FnMut(&K, V) -> (A, Weight) + Send,
{
    fn poll_apply(
        &mut self,
        cx: &mut Context<'_>,
        set: &dyn Membership<A>,
    ) -> Poll<Result<(), BoxError>> {
        loop {
            match self.stream.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                Poll::Ready(Some(Ok(Change::Insert(key, value)))) => {
                    if let Some(old) = self.ids.remove(&key) {
                        // Already gone is fine: the set may have been edited directly.
                        let _ = set.drop_backend(old);
                    }
                    let (addr, weight) = (self.make)(&key, value);
                    let id = set.add(addr, weight).map_err(BoxError::from)?;
                    self.ids.insert(key, id);
                }
                Poll::Ready(Some(Ok(Change::Remove(key)))) => {
                    if let Some(id) = self.ids.remove(&key) {
                        let _ = set.drop_backend(id);
                    }
                }
            }
        }
    }
}
