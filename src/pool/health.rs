//! Health's entry points on a pool: ticks, reported outcomes, the admin switch, sources,
//! probe results. Each takes the writer lock and republishes when something changed.

use std::sync::Arc;
use std::time::Instant;

use super::Pool;
use crate::backend::{ADMIN_DOWN, ADMIN_DRAIN, ADMIN_UP, BackendId};
use crate::error::MembershipError;
use crate::health::engine::uneject;
use crate::health::{HealthSource, Outcome};
use crate::pick::Picker;

/// Health: time-driven work, outcomes, the admin switch, sources. These need only
/// `A: Clone` (members are copied into each new snapshot).
impl<A: Clone, P: Picker<A>> Pool<A, P> {
    /// Runs health's time-driven work now and publishes what changed: ejections that
    /// ended, the outlier interval when due (success rate, failure percentage, multipliers
    /// coming down), consecutive-failure ejections signalled by [`InFlight`](crate::InFlight) guards,
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

    /// Reports the outcome of a request sent to backend `id` outside an [`InFlight`](crate::InFlight)
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
    ///     .build()?;
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
                crate::clock::now_nanos(),
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
            && ejected_at <= crate::clock::nanos_since_epoch(started)
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
