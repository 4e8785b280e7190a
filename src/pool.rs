//! [`Pool`]: a shared, thread-safe backend set with its picker.
//!
//! Readers (pickers) and writers (membership changes) never wait for each other: the
//! current [`Prepared`] snapshot — the members plus the picker's table for them — sits in
//! an [`ArcSwap`], which readers load without a lock and without writing a shared
//! reference count (arc-swap's thread-local debt slots). Writers serialise on a mutex
//! that only writers take, build the next snapshot and its table off the hot path, and
//! publish it with one atomic store, so concurrent writers cannot lose each other's
//! updates and a picker never sees a half-applied change. Backends that survive a change
//! keep their [`BackendState`] (in-flight count, totals, latency estimate).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use parking_lot::Mutex;

use crate::backend::{
    Backend, BackendId, BackendState, BackendStats, DEFAULT_EWMA_DECAY, InFlight, Snapshot, Weight,
};
use crate::error::{MembershipError, PickError};
use crate::pick::{PickContext, Picker};

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

impl<A: fmt::Debug, T> fmt::Debug for Prepared<A, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("snapshot", &self.snapshot)
            .finish_non_exhaustive()
    }
}

struct Inner<A, P: Picker<A>> {
    picker: P,
    current: ArcSwap<Prepared<A, P::Table>>,
    /// Taken by writers only: the next id to assign and the next version.
    writer: Mutex<Counters>,
    decay: Duration,
}

#[derive(Debug, Default)]
struct Counters {
    next_id: u64,
    version: u64,
}

/// A backend set shared by many threads, with the picker that chooses among it.
///
/// `Pool` is cheap to clone: clones share one set. Picks never block; changes are
/// published atomically (see the [module docs](self)).
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

/// Configures a [`Pool`].
#[derive(Debug)]
pub struct PoolBuilder<P> {
    picker: P,
    decay: Duration,
}

impl<P> PoolBuilder<P> {
    /// The decay window τ of every backend's peak-EWMA latency estimate (default 10 s).
    pub fn ewma_decay(mut self, decay: Duration) -> Self {
        self.decay = decay;
        self
    }

    /// Builds an empty pool.
    pub fn build<A>(self) -> Pool<A, P>
    where
        P: Picker<A>,
    {
        let snapshot = Snapshot::from_members(Vec::new(), 0);
        let table = self.picker.prepare(&snapshot, None);
        Pool {
            inner: Arc::new(Inner {
                picker: self.picker,
                current: ArcSwap::from_pointee(Prepared { snapshot, table }),
                writer: Mutex::new(Counters::default()),
                decay: self.decay,
            }),
        }
    }
}

impl<A, P: Picker<A>> Pool<A, P> {
    /// An empty pool picking with `picker`.
    pub fn new(picker: P) -> Self {
        Pool::builder(picker).build()
    }

    /// A builder for a pool picking with `picker`.
    pub fn builder(picker: P) -> PoolBuilder<P> {
        PoolBuilder {
            picker,
            decay: DEFAULT_EWMA_DECAY,
        }
    }

    /// The picker.
    pub fn picker(&self) -> &P {
        &self.inner.picker
    }

    /// The current snapshot and table. Holding it keeps that version alive; it never
    /// changes under you.
    pub fn snapshot(&self) -> Arc<Prepared<A, P::Table>> {
        self.inner.current.load_full()
    }

    /// Picks a backend for one request, and counts the pick in its stats.
    ///
    /// Lock-free; allocates nothing. The returned [`Picked`] borrows the snapshot it was
    /// picked from, so it stays valid whatever changes are published meanwhile.
    #[inline]
    pub fn pick(&self, ctx: &PickContext) -> Result<Picked<A, P::Table>, PickError> {
        let prepared = self.inner.current.load();
        let index = prepared.pick(&self.inner.picker, ctx)?;
        let picked = Picked { prepared, index };
        picked.backend().state().count_pick();
        Ok(picked)
    }

    /// Per-backend statistics, in insertion order.
    pub fn stats(&self) -> Vec<BackendStats<A>>
    where
        A: Clone,
    {
        let prepared = self.inner.current.load();
        let now = Instant::now();
        (0..prepared.snapshot.len())
            .filter_map(|i| BackendStats::read(&prepared.snapshot, i, now))
            .collect()
    }
}

impl<A, P> Pool<A, P>
where
    A: Clone + PartialEq,
    P: Picker<A>,
{
    /// Applies several changes as one: either all of them are published in one new
    /// snapshot, or — when `change` returns an error — none is and the set is untouched.
    ///
    /// # Examples
    ///
    /// ```
    /// use tower_lb::{Pool, RoundRobin, Weight};
    ///
    /// let pool = Pool::new(RoundRobin::new());
    /// let ids = pool.update(|set| {
    ///     let a = set.insert("a", Weight::ONE)?;
    ///     let b = set.insert("b", Weight::ONE)?;
    ///     Ok::<_, tower_lb::MembershipError>([a, b])
    /// })?;
    /// assert_eq!(pool.snapshot().snapshot().len(), 2);
    ///
    /// // A failing batch changes nothing.
    /// let err = pool.update(|set| {
    ///     set.remove(ids[0])?;
    ///     set.insert("b", Weight::ONE) // duplicate address
    /// });
    /// assert!(err.is_err());
    /// assert_eq!(pool.snapshot().snapshot().len(), 2);
    /// # Ok::<(), tower_lb::MembershipError>(())
    /// ```
    pub fn update<R, E>(&self, change: impl FnOnce(&mut Edit<A>) -> Result<R, E>) -> Result<R, E> {
        let mut counters = self.inner.writer.lock();
        let current = self.inner.current.load_full();
        let mut edit = Edit {
            members: current.snapshot.backends().to_vec(),
            next_id: counters.next_id,
            decay: self.inner.decay,
            changed: false,
        };
        let result = change(&mut edit)?;
        if edit.changed {
            counters.next_id = edit.next_id;
            counters.version += 1;
            let snapshot = Snapshot::from_members(edit.members, counters.version);
            let table = self.inner.picker.prepare(&snapshot, Some(&current.table));
            // Writers are serialised by the mutex, so a plain store cannot lose an update.
            self.inner
                .current
                .store(Arc::new(Prepared { snapshot, table }));
        }
        Ok(result)
    }

    /// Adds a backend; fails on a duplicate address.
    pub fn insert(&self, addr: A, weight: Weight) -> Result<BackendId, MembershipError> {
        self.update(|set| set.insert(addr, weight))
    }

    /// Adds several backends at once; on any error none is added.
    pub fn extend<I>(&self, members: I) -> Result<Vec<BackendId>, MembershipError>
    where
        I: IntoIterator<Item = (A, Weight)>,
    {
        self.update(|set| {
            members
                .into_iter()
                .map(|(addr, weight)| set.insert(addr, weight))
                .collect()
        })
    }

    /// Removes a backend, returning its address. Requests in flight on it finish normally.
    pub fn remove(&self, id: BackendId) -> Result<A, MembershipError> {
        self.update(|set| set.remove(id))
    }

    /// Changes a backend's weight; its live state is kept.
    pub fn set_weight(&self, id: BackendId, weight: Weight) -> Result<(), MembershipError> {
        self.update(|set| set.set_weight(id, weight))
    }
}

/// A pending change to a pool's set, inside [`Pool::update`].
#[derive(Debug)]
pub struct Edit<A> {
    members: Vec<Backend<A>>,
    next_id: u64,
    decay: Duration,
    changed: bool,
}

impl<A: Clone + PartialEq> Edit<A> {
    /// Adds a backend with fresh live state; fails on a duplicate address.
    pub fn insert(&mut self, addr: A, weight: Weight) -> Result<BackendId, MembershipError> {
        if let Some(existing) = self.members.iter().find(|b| *b.addr() == addr) {
            return Err(MembershipError::Duplicate {
                existing: existing.id(),
            });
        }
        let id = BackendId::new(self.next_id);
        self.next_id += 1;
        let state = Arc::new(BackendState::new(self.decay));
        self.members.push(Backend::new(id, addr, weight, state));
        self.changed = true;
        Ok(id)
    }

    /// Removes a backend, returning its address.
    pub fn remove(&mut self, id: BackendId) -> Result<A, MembershipError> {
        let index = self.position(id)?;
        self.changed = true;
        Ok(self.members.remove(index).addr().clone())
    }

    /// Changes a backend's weight, keeping its live state.
    pub fn set_weight(&mut self, id: BackendId, weight: Weight) -> Result<(), MembershipError> {
        let index = self.position(id)?;
        if self.members[index].weight() != weight {
            self.members[index] = self.members[index].with_weight(weight);
            self.changed = true;
        }
        Ok(())
    }

    /// The members as the edit stands.
    pub fn members(&self) -> &[Backend<A>] {
        &self.members
    }

    fn position(&self, id: BackendId) -> Result<usize, MembershipError> {
        self.members
            .iter()
            .position(|b| b.id() == id)
            .ok_or(MembershipError::Unknown(id))
    }
}

/// One pick: the chosen backend, borrowed from the snapshot it was chosen in.
///
/// Short-lived by design: it holds that snapshot alive. Copy out what you need
/// ([`id`](Self::id), [`addr`](Self::addr)) and call [`start`](Self::start) to track the
/// request.
pub struct Picked<A, T> {
    prepared: Guard<Arc<Prepared<A, T>>>,
    index: usize,
}

impl<A, T> Picked<A, T> {
    /// The chosen backend.
    pub fn backend(&self) -> &Backend<A> {
        // `Prepared::pick` checked `index` against this very snapshot.
        &self.prepared.snapshot.backends()[self.index]
    }

    /// Its id.
    pub fn id(&self) -> BackendId {
        self.backend().id()
    }

    /// Its address.
    pub fn addr(&self) -> &A {
        self.backend().addr()
    }

    /// Its index in the snapshot it was picked from.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Starts tracking the request: in flight until the guard is dropped or finished.
    pub fn start(&self) -> InFlight {
        self.backend().state().start()
    }
}

impl<A: fmt::Debug, T> fmt::Debug for Picked<A, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Picked")
            .field("id", &self.id())
            .field("addr", self.addr())
            .finish()
    }
}
