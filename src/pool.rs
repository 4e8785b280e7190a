//! [`Pool`]: a shared, thread-safe backend set with its picker.
//!
//! Readers (pickers) and writers (membership changes) never wait for each other: the
//! current [`Prepared`] snapshot — the members plus the picker's table for them — sits in
//! an [`ArcSwap`], which readers load without a lock and without writing a shared
//! reference count (arc-swap's thread-local debt slots). Writers serialise on a mutex
//! that only writers take, build the next snapshot and its table off the hot path, and
//! publish it with one atomic store, so concurrent writers cannot lose each other's
//! updates and a picker never sees a half-applied change. Backends that survive a change
//! keep their [`BackendState`] (in-flight count, totals, latency estimate, health).
//!
//! Health takes the same writer path: every snapshot is built with the
//! [health](crate::health) verdicts, eligible set and effective weights of its moment,
//! and a health change (an ejection, a probe flip, an admin switch, a slow-start step)
//! republishes the same members with the new eligible set and weights. The picker's
//! `prepare` gets the previous table, so hash pickers can reuse theirs.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use parking_lot::Mutex;

use crate::backend::{
    Backend, BackendId, BackendState, BackendStats, DEFAULT_EWMA_DECAY, InFlight, Snapshot, Weight,
};
use crate::error::{MembershipError, PickError};
use crate::health::engine::{Engine, HealthConfig, uneject};
use crate::health::state::{ADMIN_DOWN, ADMIN_DRAIN, ADMIN_UP, HealthShared};
use crate::health::{Clock, HealthSource, Outcome, OutlierDetection, PanicThreshold, SlowStart};
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

pub(crate) struct Inner<A, P: Picker<A>> {
    picker: P,
    current: ArcSwap<Prepared<A, P::Table>>,
    /// Taken by writers only: the next id to assign, the version, the health engine.
    writer: Mutex<Writer<A>>,
    decay: Duration,
    pub(crate) shared: Arc<HealthShared>,
    clock: Clock,
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
    pub(crate) inner: Arc<Inner<A, P>>,
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

/// Configures a [`Pool`]. The address type `A` is inferred from how the pool is used.
pub struct PoolBuilder<A, P> {
    picker: P,
    decay: Duration,
    health: HealthConfig,
    clock: Option<Clock>,
    seed: Option<u64>,
    cancel_failure_after: Option<Duration>,
    _addr: PhantomData<fn() -> A>,
}

/// The default of [`PoolBuilder::cancelled_as_failure_after`]: 100 ms.
pub const DEFAULT_CANCEL_FAILURE_AFTER: Duration = Duration::from_millis(100);

impl<A, P: fmt::Debug> fmt::Debug for PoolBuilder<A, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("picker", &self.picker)
            .field("decay", &self.decay)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl<A, P> PoolBuilder<A, P> {
    /// The decay window τ of every backend's peak-EWMA latency estimate (default 10 s).
    pub fn ewma_decay(mut self, decay: Duration) -> Self {
        self.decay = decay;
        self
    }

    /// Turns on passive outlier detection (off by default).
    pub fn outlier_detection(mut self, detection: OutlierDetection) -> Self {
        self.health.outlier = Some(detection);
        self
    }

    /// The panic threshold (default: 50%, fail open).
    pub fn panic_threshold(mut self, threshold: PanicThreshold) -> Self {
        self.health.panic = threshold;
        self
    }

    /// Turns on slow start (off by default).
    pub fn slow_start(mut self, slow_start: SlowStart) -> Self {
        self.health.slow_start = Some(slow_start);
        self
    }

    /// The clock health runs on (ejection times, intervals, ramps, probe schedules).
    /// Default: `Instant::now`, read through tokio's clock when the `tokio` feature is on,
    /// so that tests with a paused tokio clock control it. Never read on the pick path.
    pub fn clock(mut self, clock: impl Fn() -> Instant + Send + Sync + 'static) -> Self {
        self.clock = Some(Clock::new(clock));
        self
    }

    /// A request whose [`InFlight`] guard (or the tower service's response future) is
    /// dropped unfinished after at least `after` counts as a **failure** of its backend —
    /// its failure score, the consecutive-failure rule, the failure total — as a
    /// caller's time-out around the balancer would (tower's `Timeout`, a
    /// `tokio::time::timeout`); one dropped sooner records only its elapsed time as a
    /// latency floor. `None`: cancellations are never failures.
    ///
    /// Default: [`DEFAULT_CANCEL_FAILURE_AFTER`] (100 ms). A backend that accepts and
    /// never answers produces nothing but cancellations, so without this it would never be
    /// ejected. Raise it when callers routinely abandon slow requests for reasons of their
    /// own (hedging past 100 ms, long polls cancelled by their users).
    pub fn cancelled_as_failure_after(mut self, after: Option<Duration>) -> Self {
        self.cancel_failure_after = after;
        self
    }

    /// Makes health's random choices (ejection jitter) reproducible from `seed`.
    pub fn health_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Builds an empty pool.
    pub fn build(self) -> Pool<A, P>
    where
        P: Picker<A>,
    {
        let snapshot = Snapshot::from_members(Vec::new(), 0);
        let table = self.picker.prepare(&snapshot, None);
        let threshold = self
            .health
            .outlier
            .as_ref()
            .and_then(|o| o.consecutive_failures)
            .map_or(0, |n| u64::from(n.get()));
        Pool {
            inner: Arc::new(Inner {
                picker: self.picker,
                current: ArcSwap::from_pointee(Prepared { snapshot, table }),
                writer: Mutex::new(Writer {
                    next_id: 0,
                    version: 0,
                    engine: Engine::new(self.health, self.seed),
                    in_task: false,
                }),
                decay: self.decay,
                shared: Arc::new(HealthShared::new(threshold, self.cancel_failure_after)),
                clock: self.clock.unwrap_or_else(Clock::system),
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
    pub fn builder(picker: P) -> PoolBuilder<A, P> {
        PoolBuilder {
            picker,
            decay: DEFAULT_EWMA_DECAY,
            health: HealthConfig::default(),
            clock: None,
            seed: None,
            cancel_failure_after: Some(DEFAULT_CANCEL_FAILURE_AFTER),
            _addr: PhantomData,
        }
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
        let health_now = self.now();
        (0..prepared.snapshot.len())
            .filter_map(|i| BackendStats::read(&prepared.snapshot, i, now, health_now))
            .collect()
    }

    /// The pool's health clock now.
    pub(crate) fn now(&self) -> Instant {
        self.inner.clock.now()
    }
}

impl<A, P> Pool<A, P>
where
    A: Clone + Eq + Hash,
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
        let mut writer = self.inner.writer.lock();
        let current = self.inner.current.load_full();
        let members = current.snapshot.backends().to_vec();
        let mut edit = Edit {
            index: members.iter().map(|b| (b.addr().clone(), b.id())).collect(),
            members,
            next_id: writer.next_id,
            decay: self.inner.decay,
            shared: Arc::clone(&self.inner.shared),
            changed: false,
        };
        let result = change(&mut edit)?;
        if edit.changed {
            writer.next_id = edit.next_id;
            // Wakes the background task: new members get their first probe at once.
            self.publish(&mut writer, edit.members, &current, true);
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

/// Health: time-driven work, outcomes, the admin switch, sources. These need only
/// `A: Clone` (members are copied into each new snapshot).
impl<A: Clone, P: Picker<A>> Pool<A, P> {
    /// Builds the snapshot of `members` with health evaluated now and publishes it —
    /// unless `force` is false and nothing differs from `current`. Returns when health
    /// next has time-driven work.
    fn publish(
        &self,
        writer: &mut Writer<A>,
        members: Vec<Backend<A>>,
        current: &Prepared<A, P::Table>,
        force: bool,
    ) -> Option<Instant> {
        let now = self.now();
        let evaluation = writer.engine.evaluate(&members, now);
        let next = evaluation.next;
        let snapshot = Snapshot::from_evaluation(members, writer.version + 1, evaluation);
        if !force && snapshot.same_as(&current.snapshot) {
            return next;
        }
        writer.version += 1;
        let table = self.inner.picker.prepare(&snapshot, Some(&current.table));
        // Writers are serialised by the mutex, so a plain store cannot lose an update.
        self.inner
            .current
            .store(Arc::new(Prepared { snapshot, table }));
        if !writer.in_task {
            // The background task, if any, recomputes when health next has work (a new
            // ejection's return, a ramp that began) and probes new members at once.
            self.inner.shared.wake();
        }
        next
    }

    /// Re-evaluates health with the current members and publishes if anything changed.
    fn republish(&self, writer: &mut Writer<A>) -> Option<Instant> {
        let current = self.inner.current.load_full();
        let members = current.snapshot.backends().to_vec();
        self.publish(writer, members, &current, false)
    }

    /// Runs health's time-driven work now and publishes what changed: ejections that
    /// ended, the outlier interval when due (success rate, failure percentage, multipliers
    /// coming down), consecutive-failure ejections signalled by [`InFlight`] guards,
    /// slow-start steps, and the opinions of [`HealthSource`]s.
    ///
    /// Returns when it next has work (`None`: only when something happens). The
    /// background task (feature `tokio`) calls it for you; without it, call it from a
    /// timer of yours — once a second is plenty. Never needed for picks to work.
    pub fn tick(&self) -> Option<Instant> {
        self.tick_from(false)
    }

    /// Ticks if a request's outcome asked for an evaluation (a failure that crossed the
    /// ejection threshold), so the ejection is published before the next pick — waiting
    /// for a publication already in progress. Two loads when nothing is due.
    #[inline]
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn tick_if_signalled(&self) {
        if self.inner.shared.is_dirty() {
            self.tick();
        }
    }

    /// [`tick`](Self::tick), from the background task itself (`in_task`: which then needs
    /// no wake-up for what it publishes).
    pub(crate) fn tick_from(&self, in_task: bool) -> Option<Instant> {
        let mut writer = self.inner.writer.lock();
        let signals = self.inner.shared.begin();
        writer.in_task = in_task;
        let next = self.republish(&mut writer);
        writer.in_task = false;
        // Only once published: until then, picks see the signal and wait on the lock.
        self.inner.shared.handled(signals);
        next
    }

    /// Reports the outcome of a request sent to backend `id` outside an [`InFlight`]
    /// guard: counts it, feeds its latency (if any) to the estimate, and feeds passive
    /// outlier detection. A failure that reaches the consecutive-failure threshold
    /// ejects the backend before this returns (within the ejection cap).
    ///
    /// # Examples
    ///
    /// ```
    /// use tower_lb::health::{OutlierDetection, Outcome};
    /// use tower_lb::{PickContext, Pool, RoundRobin, Weight};
    ///
    /// let pool = Pool::<&str, _>::builder(RoundRobin::new())
    ///     .outlier_detection(OutlierDetection::new().consecutive_failures(2))
    ///     .build();
    /// let bad = pool.insert("bad", Weight::ONE)?;
    /// pool.insert("good", Weight::ONE)?;
    ///
    /// pool.report(bad, Outcome::failure())?;
    /// pool.report(bad, Outcome::failure())?; // ejected now
    /// for _ in 0..4 {
    ///     assert_eq!(*pool.pick(&PickContext::new())?.addr(), "good");
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn report(&self, id: BackendId, outcome: Outcome) -> Result<(), MembershipError> {
        let crossed = {
            let prepared = self.inner.current.load();
            let backend = prepared
                .snapshot
                .index_of(id)
                .and_then(|i| prepared.snapshot.get(i))
                .ok_or(MembershipError::Unknown(id))?;
            backend.state().record_outcome(
                outcome.is_success(),
                outcome.latency(),
                crate::backend::now_nanos(),
            )
        };
        if crossed {
            self.tick();
        }
        Ok(())
    }

    /// Drains backend `id`: no new picks — not even in panic mode — while requests in
    /// flight finish and sticky sessions move elsewhere. Undo with [`mark_up`](Self::mark_up).
    /// For maintenance, drain rather than [`mark_down`](Self::mark_down).
    pub fn drain(&self, id: BackendId) -> Result<(), MembershipError> {
        self.set_admin(id, ADMIN_DRAIN)
    }

    /// Marks backend `id` unhealthy: no new picks, though the panic threshold may still
    /// route to it like any unhealthy backend (HAProxy's `set server health down`).
    pub fn mark_down(&self, id: BackendId) -> Result<(), MembershipError> {
        self.set_admin(id, ADMIN_DOWN)
    }

    /// Lifts [`drain`](Self::drain) or [`mark_down`](Self::mark_down) from backend `id`;
    /// its other health sources still apply.
    pub fn mark_up(&self, id: BackendId) -> Result<(), MembershipError> {
        self.set_admin(id, ADMIN_UP)
    }

    fn set_admin(&self, id: BackendId, value: u8) -> Result<(), MembershipError> {
        let mut writer = self.inner.writer.lock();
        let current = self.inner.current.load_full();
        let backend = current
            .snapshot
            .index_of(id)
            .and_then(|i| current.snapshot.get(i))
            .ok_or(MembershipError::Unknown(id))?;
        // Relaxed: the writer lock orders this store before the evaluation below.
        backend
            .state()
            .health
            .admin
            .store(value, std::sync::atomic::Ordering::Relaxed);
        self.republish(&mut writer);
        Ok(())
    }

    /// Adds a health source; its verdicts apply from now on (see [`HealthSource`]).
    pub fn add_health_source(&self, source: impl HealthSource<A> + 'static) {
        let mut writer = self.inner.writer.lock();
        writer.engine.add_source(Box::new(source));
        self.republish(&mut writer);
    }

    /// Records one active probe result on backend `id`, begun at `started` (the pool's
    /// clock); publishes when the probe verdict flips or the result ends an ejection.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn record_probe(
        &self,
        id: BackendId,
        result: Result<(), Arc<str>>,
        started: Instant,
        rise: u32,
        fall: u32,
    ) {
        let mut writer = self.inner.writer.lock();
        let current = self.inner.current.load_full();
        let Some(backend) = current
            .snapshot
            .index_of(id)
            .and_then(|i| current.snapshot.get(i))
        else {
            return; // removed meanwhile
        };
        let cell = &backend.state().health;
        let success = result.is_ok();
        let mut changed = cell.probe.lock().record(result, rise, fall);
        let uneject_on_success = writer
            .engine
            .config
            .outlier
            .as_ref()
            .is_some_and(|o| o.uneject_on_probe_success);
        let ejected_at = cell.ejected_at.load(std::sync::atomic::Ordering::Relaxed);
        if success
            && uneject_on_success
            && cell.is_ejected()
            && ejected_at <= crate::backend::nanos_since_epoch(started)
        {
            uneject(cell);
            changed = true;
        }
        if changed {
            // The task calls this and ticks right after; it needs no wake-up.
            writer.in_task = true;
            self.republish(&mut writer);
            writer.in_task = false;
        }
    }
}

/// A pending change to a pool's set, inside [`Pool::update`].
#[derive(Debug)]
pub struct Edit<A> {
    members: Vec<Backend<A>>,
    /// Address → id of every member, for duplicate checks in O(1).
    index: HashMap<A, BackendId>,
    next_id: u64,
    decay: Duration,
    shared: Arc<HealthShared>,
    changed: bool,
}

impl<A: Clone + Eq + Hash> Edit<A> {
    /// Adds a backend with fresh live state; fails on a duplicate address.
    pub fn insert(&mut self, addr: A, weight: Weight) -> Result<BackendId, MembershipError> {
        if let Some(&existing) = self.index.get(&addr) {
            return Err(MembershipError::Duplicate { existing });
        }
        let id = BackendId::new(self.next_id);
        self.next_id += 1;
        self.index.insert(addr.clone(), id);
        let state = Arc::new(BackendState::linked(self.decay, Arc::clone(&self.shared)));
        self.members.push(Backend::new(id, addr, weight, state));
        self.changed = true;
        Ok(id)
    }

    /// Removes a backend, returning its address.
    pub fn remove(&mut self, id: BackendId) -> Result<A, MembershipError> {
        let index = self.position(id)?;
        self.changed = true;
        let removed = self.members.remove(index);
        self.index.remove(removed.addr());
        Ok(removed.addr().clone())
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

    /// The snapshot it was picked from.
    pub fn snapshot(&self) -> &Snapshot<A> {
        &self.prepared.snapshot
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
