//! [`Pool`]: a shared, thread-safe backend set with its picker.
//!
//! Readers (pickers) and writers (membership changes) never wait for each other: the
//! current [`Prepared`] snapshot — the members plus the picker's table for them — sits in
//! an [`ArcSwap`], which readers load without a lock and without writing a shared
//! reference count (arc-swap's thread-local debt slots). Writers serialise on a mutex
//! that only writers take, build the next snapshot and its table off the hot path, and
//! publish it with one atomic store, so concurrent writers cannot lose each other's
//! updates and a picker never sees a half-applied change. Backends that survive a change
//! keep their [`BackendState`](crate::BackendState) (in-flight count, totals, latency estimate, health).
//!
//! Health takes the same writer path: every snapshot is built with the
//! [health](crate::health) verdicts, eligible set and effective weights of its moment,
//! and a health change (an ejection, a probe flip, an admin switch, a slow-start step)
//! republishes the same members with the new eligible set and weights. The picker's
//! `prepare` gets the previous table, so hash pickers can reuse theirs.
//!
//! The files: this one holds the pool and the per-request path (`pick`, `stats`);
//! `update.rs` the change path (edits, batches, publication); `health.rs` health's entry
//! points (ticks, reported outcomes, the admin switch, probes); `builder.rs` the builder;
//! `observe.rs` the events and gauges derived from each publication.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use parking_lot::Mutex;

use crate::backend::{Backend, BackendId, BackendStats, HealthShared, InFlight};
use crate::clock::Clock;
use crate::error::PickError;
use crate::health::engine::Engine;
use crate::pick::{PickContext, Picker};
use crate::snapshot::Snapshot;

mod builder;
mod cache;
mod health;
mod observe;
#[cfg(feature = "tokio")]
mod task;
mod update;

pub use builder::{DEFAULT_CANCEL_FAILURE_AFTER, PoolBuilder};
pub use cache::{CachedPick, PoolCache};
pub use observe::PoolEvent;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use task::HealthTask;
pub use update::Edit;

/// A snapshot together with a picker's table for it.
pub struct Prepared<A, T> {
    snapshot: Snapshot<A>,
    table: T,
}

impl<A, T> Prepared<A, T> {
    /// Prepares `picker`'s table for `snapshot`.
    pub fn new<P>(picker: &P, snapshot: Snapshot<A>) -> Self
    where
        P: Picker<A, Table = T>,
    {
        let table = picker.prepare(&snapshot, None);
        Prepared { snapshot, table }
    }

    /// The snapshot.
    pub fn snapshot(&self) -> &Snapshot<A> {
        &self.snapshot
    }

    /// The picker's table.
    pub fn table(&self) -> &T {
        &self.table
    }

    /// Picks with `picker` (which must be the one that prepared this table).
    #[inline]
    pub fn pick<P>(&self, picker: &P, ctx: &PickContext) -> Result<usize, PickError>
    where
        P: Picker<A, Table = T>,
    {
        picker
            .pick(&self.table, &self.snapshot, ctx)
            // Holds any picker, including a user's, to the contract: an eligible index.
            .filter(|&i| self.snapshot.is_eligible(i))
            .ok_or_else(|| self.snapshot.empty_error())
    }
}

/// A prepared snapshot reads as its snapshot: `pool.snapshot().len()`,
/// `pool.snapshot().eligible()`.
impl<A, T> std::ops::Deref for Prepared<A, T> {
    type Target = Snapshot<A>;

    fn deref(&self) -> &Snapshot<A> {
        &self.snapshot
    }
}

impl<A: fmt::Debug, T> fmt::Debug for Prepared<A, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("snapshot", &self.snapshot)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner<A, P: Picker<A>> {
    picker: P,
    current: ArcSwap<Prepared<A, P::Table>>,
    /// Taken by writers only: the next id to assign, the version, the health engine.
    writer: Mutex<Writer<A>>,
    decay: Duration,
    pub(crate) shared: Arc<HealthShared>,
    clock: Clock,
    /// Tasks waiting for the set to have a member (`poll_members`), woken by `publish`.
    waiters: Mutex<Vec<std::task::Waker>>,
}

impl<A, P: Picker<A>> Drop for Inner<A, P> {
    fn drop(&mut self) {
        // A background task waiting on the pool wakes, fails to upgrade and stops.
        self.shared.wake();
    }
}

struct Writer<A> {
    next_id: u64,
    version: u64,
    engine: Engine<A>,
    /// Set while the background task publishes, which needs no wake-up.
    in_task: bool,
    /// Address → id of every member: kept across updates so that a change does not
    /// rehash every address (see `update.rs`).
    index: std::collections::HashMap<A, BackendId>,
    /// Turns publications into events (and the `metrics` feature's gauges).
    observer: observe::Observer<A>,
}

/// A backend set shared by many threads, with the picker that chooses among it.
///
/// `Pool` is cheap to clone: clones share one set. Picks never block: the current
/// snapshot and the picker's table for it are read through an `ArcSwap`, without a lock
/// and without writing a shared reference count. Changes are serialised among writers,
/// built off the hot path and published with one atomic store, so concurrent writers
/// cannot lose each other's updates and no pick sees a half-applied change. Backends
/// that survive a change keep their live state. Health changes take the same path (see
/// [`health`](crate::health)).
///
/// # Examples
///
/// ```
/// use tower_lb::{PickContext, Pool, Weight, WeightedRoundRobin};
///
/// let pool = Pool::new(WeightedRoundRobin::new());
/// let a = pool.insert("10.0.0.1:80", Weight::new(2)?)?;
/// let b = pool.insert("10.0.0.2:80", Weight::ONE)?;
///
/// let picks: Vec<_> = (0..3)
///     .map(|_| pool.pick(&PickContext::new()).map(|p| p.id()))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(picks, [a, b, a]);
///
/// // Track a request so load-aware pickers see it.
/// let picked = pool.pick(&PickContext::new())?;
/// let guard = picked.start();
/// // ... send the request to picked.addr() ...
/// guard.success();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Pool<A, P: Picker<A>> {
    inner: Arc<Inner<A, P>>,
}

/// A pool that does not keep its set alive: the background health task holds one, so
/// the task stops when the last [`Pool`] is dropped.
pub(crate) struct WeakPool<A, P: Picker<A>>(std::sync::Weak<Inner<A, P>>);

impl<A, P: Picker<A>> WeakPool<A, P> {
    /// The pool, while a [`Pool`] still holds it.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn upgrade(&self) -> Option<Pool<A, P>> {
        self.0.upgrade().map(|inner| Pool { inner })
    }
}

impl<A, P: Picker<A>> Pool<A, P> {
    /// The pool-wide health signal (and the background task's flag and wake-up).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn health_shared(&self) -> &Arc<HealthShared> {
        &self.inner.shared
    }

    /// A handle that does not keep the pool alive.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn downgrade(&self) -> WeakPool<A, P> {
        WeakPool(Arc::downgrade(&self.inner))
    }
}

impl<A, P: Picker<A>> Clone for Pool<A, P> {
    fn clone(&self) -> Self {
        Pool {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<A: fmt::Debug, P: Picker<A> + fmt::Debug> fmt::Debug for Pool<A, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("picker", &self.inner.picker)
            .field("snapshot", self.inner.current.load().snapshot())
            .finish()
    }
}

impl<A, P: Picker<A>> Pool<A, P> {
    /// An empty pool picking with `picker`.
    pub fn new(picker: P) -> Self {
        Pool::builder(picker).assemble()
    }

    /// The picker.
    pub fn picker(&self) -> &P {
        &self.inner.picker
    }

    /// The current snapshot and table, without a reference-count write (for one request).
    #[inline]
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn load(&self) -> Guard<Arc<Prepared<A, P::Table>>> {
        self.inner.current.load()
    }

    /// The current snapshot and table. Holding it keeps that version alive; it never
    /// changes under you.
    pub fn snapshot(&self) -> Arc<Prepared<A, P::Table>> {
        self.inner.current.load_full()
    }

    /// Picks a backend for one request. Start it ([`Picked::start`]) to track it: the
    /// load-aware pickers and the stats' `picks` see started requests.
    ///
    /// Lock-free; allocates nothing; writes no shared memory (the snapshot is read
    /// through an `arc-swap` guard, whose bookkeeping is per thread: two locked
    /// instructions on the thread's own cache line). The returned [`Picked`] borrows the
    /// snapshot it was picked from, so it stays valid whatever changes are published
    /// meanwhile. A thread that picks continuously can skip the guard with a
    /// [`PoolCache`] ([`cached`](Self::cached)).
    #[inline]
    pub fn pick(&self, ctx: &PickContext) -> Result<Picked<A, P::Table>, PickError> {
        let prepared = self.inner.current.load();
        let index = prepared.pick(&self.inner.picker, ctx)?;
        Ok(Picked {
            prepared,
            index,
            _snapshot: PhantomData,
        })
    }

    /// Per-backend statistics, in insertion order.
    pub fn stats(&self) -> Vec<BackendStats<A>>
    where
        A: Clone,
    {
        let prepared = self.inner.current.load();
        let now = Instant::now();
        let health_now = self.now();
        (0..prepared.snapshot.len())
            .filter_map(|i| prepared.snapshot.stats(i, now, health_now))
            .collect()
    }

    /// `Ready` once the set has a member; otherwise registers `cx` to be woken by the
    /// next publication and returns `Pending`.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn poll_members(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if !self.inner.current.load().snapshot.is_empty() {
            return std::task::Poll::Ready(());
        }
        let mut waiters = self.inner.waiters.lock();
        // Checked again under the lock: a publication in between took it to wake us.
        if !self.inner.current.load().snapshot.is_empty() {
            return std::task::Poll::Ready(());
        }
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        std::task::Poll::Pending
    }

    /// Wakes every task waiting in `poll_members`.
    pub(crate) fn wake_waiters(&self) {
        let waiters = std::mem::take(&mut *self.inner.waiters.lock());
        waiters.into_iter().for_each(std::task::Waker::wake);
    }

    /// The pool's health clock now.
    pub(crate) fn now(&self) -> Instant {
        self.inner.clock.now()
    }
}

/// One pick: the chosen backend, borrowed from the snapshot it was chosen in.
///
/// Short-lived by design: it holds that snapshot alive. Copy out what you need
/// ([`id`](Self::id), [`addr`](Self::addr)) and call [`start`](Self::start) to track the
/// request. `H` is how it holds the snapshot: an `arc-swap` guard from [`Pool::pick`], a
/// plain reference from [`PoolCache::pick`].
pub struct Picked<A, T, H = Guard<Arc<Prepared<A, T>>>> {
    prepared: H,
    index: usize,
    _snapshot: PhantomData<fn() -> Prepared<A, T>>,
}

impl<A, T, H: Deref<Target: Borrow<Prepared<A, T>>>> Picked<A, T, H> {
    fn prepared(&self) -> &Prepared<A, T> {
        (*self.prepared).borrow()
    }

    /// The chosen backend.
    pub fn backend(&self) -> &Backend<A> {
        // `Prepared::pick` checked `index` against this very snapshot.
        &self.prepared().snapshot.backends()[self.index]
    }

    /// Its id.
    pub fn id(&self) -> BackendId {
        self.backend().id()
    }

    /// Its address.
    pub fn addr(&self) -> &A {
        self.backend().addr()
    }

    /// The snapshot it was picked from.
    pub fn snapshot(&self) -> &Snapshot<A> {
        &self.prepared().snapshot
    }

    /// Its index in the snapshot it was picked from.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Starts tracking the request: in flight until the guard is dropped or finished.
    pub fn start(&self) -> InFlight {
        self.backend().state().start()
    }

    /// Starts tracking the request as started at `at`, on a clock of the caller's (finish
    /// it with [`InFlight::finish`] on the same clock): a simulation in virtual time, a
    /// caller that already read the time.
    pub fn start_at(&self, at: Instant) -> InFlight {
        self.backend().state().start_at(at)
    }
}

impl<A: fmt::Debug, T, H: Deref<Target: Borrow<Prepared<A, T>>>> fmt::Debug for Picked<A, T, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Picked")
            .field("id", &self.id())
            .field("addr", self.addr())
            .finish()
    }
}
