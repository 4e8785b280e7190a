//! [`PoolCache`]: a pool handle that keeps the current snapshot between picks.

use std::ops::Deref;
use std::sync::Arc;

use arc_swap::{ArcSwap, Cache};

use super::{Inner, Picked, Pool, Prepared};
use crate::error::PickError;
use crate::pick::{PickContext, Picker};

/// A handle on a [`Pool`] for one thread (or task) that picks continuously: it keeps
/// the snapshot it last saw, so a pick reads the pool's shared state with one plain load
/// (is the published snapshot still the one kept?) — no `arc-swap` guard, no locked
/// instruction, no shared write (arc-swap's [`Cache`]).
///
/// The price: the kept snapshot stays alive until the next pick sees a newer one, so an
/// idle cache keeps a removed backend (and whatever its address owns) alive. Keep one per
/// busy worker and drop it when the worker idles; [`Pool::pick`] has no such cost.
///
/// # Examples
///
/// ```
/// use tower_lb::{PickContext, Pool, RoundRobin, Weight};
///
/// let pool = Pool::new(RoundRobin::new());
/// let a = pool.insert("10.0.0.1:80", Weight::ONE)?;
/// let mut cache = pool.cached();
/// assert_eq!(cache.pick(&PickContext::new())?.id(), a);
/// // A change published after the cache was made is seen at its next pick.
/// pool.remove(a)?;
/// let b = pool.insert("10.0.0.2:80", Weight::ONE)?;
/// assert_eq!(cache.pick(&PickContext::new())?.id(), b);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PoolCache<A, P: Picker<A>> {
    inner: Arc<Inner<A, P>>,
    cache: Kept<A, P>,
}

/// The snapshot kept, and where newer ones are published.
type Kept<A, P> = Cache<Current<A, P>, Arc<Prepared<A, <P as Picker<A>>::Table>>>;

/// A pick from a [`PoolCache`]: it borrows the cache's snapshot.
pub type CachedPick<'a, A, T> = Picked<A, T, &'a Prepared<A, T>>;

/// The pool's published snapshot, as the cache reads it.
struct Current<A, P: Picker<A>>(Arc<Inner<A, P>>);

impl<A, P: Picker<A>> Deref for Current<A, P> {
    type Target = ArcSwap<Prepared<A, P::Table>>;

    fn deref(&self) -> &Self::Target {
        &self.0.current
    }
}

impl<A, P: Picker<A>> Pool<A, P> {
    /// A [`PoolCache`] on this pool: picks without an `arc-swap` guard, for a thread that
    /// picks continuously.
    pub fn cached(&self) -> PoolCache<A, P> {
        PoolCache {
            inner: Arc::clone(&self.inner),
            cache: Cache::new(Current(Arc::clone(&self.inner))),
        }
    }
}

impl<A, P: Picker<A>> PoolCache<A, P> {
    /// Picks a backend, as [`Pool::pick`] does, from the pool's current snapshot.
    #[inline]
    pub fn pick(&mut self, ctx: &PickContext) -> Result<CachedPick<'_, A, P::Table>, PickError> {
        let prepared: &Prepared<A, P::Table> = self.cache.load();
        let index = prepared.pick(&self.inner.picker, ctx)?;
        Ok(Picked {
            prepared,
            index,
            _snapshot: std::marker::PhantomData,
        })
    }

    /// The pool this cache reads.
    pub fn pool(&self) -> Pool<A, P> {
        Pool {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<A, P: Picker<A>> std::fmt::Debug for PoolCache<A, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolCache").finish_non_exhaustive()
    }
}
