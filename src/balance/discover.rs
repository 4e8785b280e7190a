//! Service discovery: applying a stream of `Change`s to a balancer's backend set.
//!
//! Any `Stream<Item = Result<Change<K, V>, E>>` — which is what tower's `Discover` is —
//! drives membership: `Insert(k, v)` adds the backend made from `(k, v)` (replacing the
//! one discovered under `k` before, if any), `Remove(k)` removes it. Backends that stay
//! keep their live state.
//!
//! **Batches.** Every change the stream has ready when it is polled is applied in one
//! [`Pool::update`](crate::Pool::update): one snapshot, one picker table, one
//! publication, however many changes arrived. A registry that announces 50 000 backends
//! at start-up costs one build, not 50 000 (measured in `benches/scale.rs`: within 2× of
//! one [`Pool::extend`](crate::Pool::extend) of the same backends).
//!
//! **Two ways to drive it.** [`Balance::discover`](super::Balance::discover) polls the
//! stream from `poll_ready`, as tower's balancer does: no runtime needed, and changes are
//! applied before the next pick — but only when a request comes, so an idle balancer
//! keeps removed backends in its stats and probes. [`Discovery`] is the same driver as a
//! future of its own: spawn it (`tokio::spawn(Discovery::new(&pool, stream, make))`) and
//! changes are applied as they arrive, requests or not, off the request path. It holds
//! the pool weakly, so it ends when the last handle on the pool is dropped (at the
//! stream's next item), when the stream ends, or with the stream's first error.
//!
//! **Weights.** The `make` closure returns each backend's [`Weight`]; a stream whose
//! values carry their weight ([`Weighted`]) feeds
//! [`Balance::from_weighted_discover`](super::Balance::from_weighted_discover).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use futures_core::Stream;
pub use tower::discover::Change;

use super::BoxError;
use super::backend_service::BackendService;
use super::layer::BalanceLayer;
use super::route::PerBackend;
use super::service::Balance;
use crate::error::DiscoverError;
use crate::pool::{Edit, WeakPool};
use crate::{BackendId, Picker, Pool, Weight};

/// A discovered service with its weight: the value of a `Change::Insert` for
/// [`Balance::from_weighted_discover`](super::Balance::from_weighted_discover).
///
/// A new `Insert` under the same key replaces the backend (with fresh live state), which
/// is how a registry changes a weight through discovery; to keep the live state, change
/// it with [`Pool::set_weight`](crate::Pool::set_weight) instead.
#[derive(Debug, Clone)]
pub struct Weighted<S> {
    /// The service that reaches the backend.
    pub service: S,
    /// Its weight.
    pub weight: Weight,
}

impl<S> Weighted<S> {
    /// `service` with `weight`.
    pub fn new(service: S, weight: Weight) -> Self {
        Weighted { service, weight }
    }
}

/// The writes discovery makes to a backend set: one batch, one publication.
pub(crate) trait Membership<A> {
    fn edit_batch(&self, batch: &mut dyn FnMut(&mut Edit<A>));
}

impl<A: Clone + Eq + Hash, P: Picker<A>> Membership<A> for Pool<A, P> {
    fn edit_batch(&self, batch: &mut dyn FnMut(&mut Edit<A>)) {
        let _ = self.update(|edit| {
            batch(edit);
            Ok::<(), std::convert::Infallible>(())
        });
    }
}

/// A type-erased discovery stream with its key → backend map.
pub(crate) trait Driver<A>: Send {
    /// Applies every ready change in one batch; `Ready(Ok)` when the stream has ended.
    fn poll_apply(
        &mut self,
        cx: &mut Context<'_>,
        set: &dyn Membership<A>,
    ) -> Poll<Result<(), BoxError>>;

    /// Whether changes were taken and wait for the stream to run dry (see
    /// [`MAX_DEFERRED`]); the task has been woken to poll again.
    fn is_deferring(&self) -> bool;
}

/// How many polls in a row that each brought changes may defer the publication.
///
/// A stream may say `Pending` with more changes queued: tokio's cooperative budget makes
/// its channels yield after 128 items per poll, so a burst of 50 000 would be 391
/// publications. A poll that brought changes and ended `Pending` therefore wakes the task
/// and publishes nothing; the batch is published by the first poll that brings nothing
/// new (the stream ran dry), at the stream's end or error, or after this many polls
/// (131 072 changes through a tokio channel), so a stream that never runs dry still
/// publishes.
pub(crate) const MAX_DEFERRED: u32 = 1024;

pub(crate) struct StreamDriver<D, K, V, F> {
    stream: Pin<Box<D>>,
    make: F,
    ids: HashMap<K, BackendId>,
    /// Changes taken from the stream and not applied yet: those after a change the set
    /// refused, kept for the next poll.
    pending: VecDeque<Change<K, V>>,
    /// Polls in a row that brought changes and deferred the publication.
    deferred: u32,
}

impl<D, K, V, F> StreamDriver<D, K, V, F> {
    pub(crate) fn new(stream: D, make: F) -> Self {
        StreamDriver {
            stream: Box::pin(stream),
            make,
            ids: HashMap::new(),
            pending: VecDeque::new(),
            deferred: 0,
        }
    }
}

impl<D, K, V, E, F, A> Driver<A> for StreamDriver<D, K, V, F>
where
    D: Stream<Item = Result<Change<K, V>, E>> + Send,
    K: Hash + Eq + Send,
    V: Send,
    E: Into<BoxError>,
    F: FnMut(&K, V) -> (A, Weight) + Send,
    A: Clone + Eq + Hash,
{
    fn poll_apply(
        &mut self,
        cx: &mut Context<'_>,
        set: &dyn Membership<A>,
    ) -> Poll<Result<(), BoxError>> {
        // Everything the stream has ready, up to its end or its first error.
        let mut outcome = Poll::Pending;
        let before = self.pending.len();
        loop {
            match self.stream.as_mut().poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => {
                    outcome = Poll::Ready(Ok(()));
                    break;
                }
                Poll::Ready(Some(Err(e))) => {
                    outcome = Poll::Ready(Err(e.into()));
                    break;
                }
                Poll::Ready(Some(Ok(change))) => self.pending.push_back(change),
            }
        }
        if self.pending.is_empty() {
            return outcome;
        }
        if outcome.is_pending() && self.pending.len() > before && self.deferred < MAX_DEFERRED {
            // More may be queued behind a cooperative yield: poll again before publishing.
            self.deferred += 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.deferred = 0;
        // One publication for the whole batch. A change the set refuses (a duplicate
        // address) stops the batch there: what came before it is applied, the refusal
        // is reported, and what came after it waits for the next poll.
        let mut refused: Option<BoxError> = None;
        let StreamDriver {
            make, ids, pending, ..
        } = self;
        ids.reserve(pending.len());
        set.edit_batch(&mut |edit| {
            while let Some(change) = pending.pop_front() {
                match change {
                    Change::Insert(key, value) => {
                        // One hash of the key: the entry finds and then records it.
                        let entry = ids.entry(key);
                        if let Entry::Occupied(old) = &entry {
                            // Already gone is fine: the set may have been edited directly.
                            let _ = edit.remove(*old.get());
                        }
                        let (addr, weight) = make(entry.key(), value);
                        match (edit.insert(addr, weight), entry) {
                            (Ok(id), Entry::Occupied(mut e)) => {
                                e.insert(id);
                            }
                            (Ok(id), Entry::Vacant(e)) => {
                                e.insert(id);
                            }
                            (Err(e), entry) => {
                                if let Entry::Occupied(old) = entry {
                                    old.remove();
                                }
                                refused = Some(e.into());
                                return;
                            }
                        }
                    }
                    Change::Remove(key) => {
                        if let Some(id) = ids.remove(&key) {
                            let _ = edit.remove(id);
                        }
                    }
                }
            }
        });
        match refused {
            Some(e) => Poll::Ready(Err(e)),
            None => outcome,
        }
    }

    fn is_deferring(&self) -> bool {
        self.deferred > 0
    }
}

/// A discovery stream driven as a future of its own, so that changes are applied as
/// they arrive even when no request comes.
///
/// [`Balance::discover`](super::Balance::discover) polls its stream from `poll_ready`, as
/// tower's balancer does: no runtime needed, changes applied before the next pick — but
/// only when a request comes, so an idle balancer keeps removed backends in its stats
/// and probes. A `Discovery` is the same driver on its own: spawn it and changes are
/// applied as they arrive, off the request path. Every change the stream has ready is
/// applied in one [`Pool::update`](crate::Pool::update) (one snapshot, one table, one
/// publication), also when a tokio channel hands them out 128 per poll. It holds the
/// pool weakly, so it ends when the last handle on the pool is dropped (at the stream's
/// next item).
///
/// Resolves when the stream ends or the pool is gone (`Ok`), or with the stream's
/// first error (or a change the set refused, such as a duplicate address).
///
/// # Examples
///
/// ```
/// use std::convert::Infallible;
/// use tower_lb::balance::{Change, Discovery};
/// use tower_lb::{Pool, RoundRobin, Weight};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let pool = Pool::new(RoundRobin::new());
/// let changes = futures::stream::iter([
///     Ok::<_, Infallible>(Change::Insert("10.0.0.1:80", Weight::new(2)?)),
///     Ok(Change::Insert("10.0.0.2:80", Weight::ONE)),
///     Ok(Change::Remove("10.0.0.1:80")),
/// ]);
/// Discovery::new(&pool, changes, |addr: &&str, weight| (addr.to_string(), weight)).await?;
/// assert_eq!(pool.stats().len(), 1); // three changes, one publication
/// # Ok(())
/// # }
/// ```
#[must_use = "a Discovery does nothing unless polled: spawn it or await it"]
pub struct Discovery<A, P: Picker<A>> {
    pool: WeakPool<A, P>,
    driver: Box<dyn Driver<A>>,
}

impl<A, P> Discovery<A, P>
where
    A: Clone + Eq + Hash + 'static,
    P: Picker<A>,
{
    /// Follows `stream` into `pool`: each `Change::Insert(k, v)` adds the backend `make`
    /// builds from it (replacing the one discovered under `k` before), each
    /// `Change::Remove(k)` removes it; all changes ready at once are one publication.
    pub fn new<D, K, V, E, F>(pool: &Pool<A, P>, stream: D, make: F) -> Self
    where
        D: Stream<Item = Result<Change<K, V>, E>> + Send + 'static,
        K: Hash + Eq + Send + 'static,
        V: Send + 'static,
        E: Into<BoxError>,
        F: FnMut(&K, V) -> (A, Weight) + Send + 'static,
    {
        Discovery {
            pool: pool.downgrade(),
            driver: Box::new(StreamDriver::new(stream, make)),
        }
    }
}

impl<A, P: Picker<A>> Future for Discovery<A, P>
where
    A: Clone + Eq + Hash,
{
    type Output = Result<(), DiscoverError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(pool) = this.pool.upgrade() else {
            return Poll::Ready(Ok(()));
        };
        this.driver
            .poll_apply(cx, &pool)
            .map_err(DiscoverError::new)
    }
}

impl<A, P: Picker<A>> fmt::Debug for Discovery<A, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery").finish_non_exhaustive()
    }
}

impl<K, S, P> Balance<BackendService<K, S>, P, PerBackend>
where
    P: Picker<BackendService<K, S>>,
    K: Clone + Hash + Eq + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
{
    /// A balancer whose set follows tower's `Discover` (a stream of `Change<K, S>`),
    /// as `tower::balance::p2c::Balance::new` does: every backend gets weight 1, the
    /// stream is polled from `poll_ready` (all ready changes in one publication), and
    /// `poll_ready` waits for the first backend instead of failing. For weights use
    /// [`from_weighted_discover`](Self::from_weighted_discover); to apply changes while
    /// no request comes, drive the stream with a [`Discovery`](super::Discovery) task
    /// instead.
    pub fn from_discover<D, E>(picker: P, discover: D) -> Self
    where
        D: futures_core::Stream<Item = Result<Change<K, S>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Self::following(picker, discover, |service| (service, Weight::ONE))
    }

    /// [`from_discover`](Self::from_discover) for a stream whose services carry their
    /// weight ([`Weighted`]).
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use tower::{service_fn, ServiceExt};
    /// use tower_lb::balance::{Balance, Change, Weighted};
    /// use tower_lb::{RoundRobin, Weight, WeightedRoundRobin};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_lb::balance::BoxError> {
    /// let svc = |name: &'static str| service_fn(move |_: ()| async move { Ok::<_, Infallible>(name) });
    /// let changes = futures::stream::iter([
    ///     Ok::<_, Infallible>(Change::Insert("a", Weighted::new(svc("a"), Weight::new(3)?))),
    ///     Ok(Change::Insert("b", Weighted::new(svc("b"), Weight::ONE))),
    /// ]);
    /// let balance = Balance::from_weighted_discover(WeightedRoundRobin::new(), changes);
    /// let mut served = String::new();
    /// for _ in 0..4 {
    ///     served.push_str(balance.clone().oneshot(()).await?);
    /// }
    /// assert_eq!(served, "aaba");
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_weighted_discover<D, E>(picker: P, discover: D) -> Self
    where
        D: futures_core::Stream<Item = Result<Change<K, Weighted<S>>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Self::following(picker, discover, |w| (w.service, w.weight))
    }

    /// A balancer over `discover`'s backends, each value split into its service and
    /// weight by `split`; waits for the first backend.
    fn following<D, E, V>(picker: P, discover: D, split: fn(V) -> (S, Weight)) -> Self
    where
        D: futures_core::Stream<Item = Result<Change<K, V>, E>> + Send + 'static,
        E: Into<BoxError>,
        V: Send + 'static,
    {
        let balance = BalanceLayer::new(Pool::new(picker))
            .wait_for_backends()
            .build(PerBackend);
        balance.discover(discover, move |key: &K, value: V| {
            let (service, weight) = split(value);
            (BackendService::new(key.clone(), service), weight)
        });
        balance
    }
}

impl<A, P: Picker<A>, R, K, C> Balance<A, P, R, K, C> {
    /// Follows a discovery stream: each `Change::Insert(k, v)` adds the backend `make`
    /// builds from it, each `Change::Remove(k)` removes it. Replaces any earlier stream.
    /// The stream is polled from `poll_ready`, every ready change applied in one
    /// publication; to apply changes while no request comes, spawn a
    /// [`Discovery`](super::Discovery) over [`pool`](Self::pool) instead.
    pub fn discover<D, DK, V, E, F>(&self, discover: D, make: F)
    where
        D: futures_core::Stream<Item = Result<Change<DK, V>, E>> + Send + 'static,
        DK: Hash + Eq + Send + 'static,
        V: Send + 'static,
        E: Into<BoxError>,
        F: FnMut(&DK, V) -> (A, Weight) + Send + 'static,
        A: Clone + Eq + Hash + 'static,
    {
        let driver = StreamDriver::new(discover, make);
        *self.shared.discover.lock() = Some(Box::new(driver));
        // Release pairs with the Acquire in `poll_ready`: who sees the flag finds the stream.
        self.shared.discovering.store(true, Ordering::Release);
    }
}
