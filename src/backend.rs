//! The backend model: ids, weights, per-backend live state and immutable snapshots.
//!
//! A [`Snapshot`] is an immutable view of the backend set: every member with its id,
//! address and weight, and which of them are eligible for traffic. Snapshots are
//! published whole (see [`Pool`](crate::Pool)), so a picker never sees a half-applied
//! change. What changes on every request — in-flight count, totals, the latency
//! estimate — lives in [`BackendState`], a block of atomics shared by every snapshot
//! the backend appears in, so a backend that survives a membership change keeps it.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{MembershipError, WeightError};
use crate::health::Verdict;
use crate::health::engine::Evaluation;
use crate::health::state::{HealthCell, HealthShared};

/// A backend's identity within one [`Pool`](crate::Pool): assigned on insertion, never
/// reused by that pool, stable for the backend's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendId(u64);

impl BackendId {
    /// The id as a number.
    pub const fn get(self) -> u64 {
        self.0
    }

    pub(crate) const fn new(raw: u64) -> Self {
        BackendId(raw)
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend#{}", self.0)
    }
}

/// A backend's share of traffic relative to the others: an integer in `1..=Weight::MAX`.
///
/// # Examples
///
/// ```
/// use tower_lb::Weight;
///
/// assert_eq!(Weight::new(5).unwrap().get(), 5);
/// assert!(Weight::new(0).is_err());
/// assert!(Weight::new(u64::from(u32::MAX) + 1).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight(NonZeroU32);

impl Weight {
    /// The largest weight: `u32::MAX`, so the sum over any set fits in a `u64`.
    pub const MAX: u32 = u32::MAX;
    /// Weight 1, the default.
    pub const ONE: Weight = Weight(NonZeroU32::MIN);

    /// A weight, or an error naming the value when it is zero or above [`Weight::MAX`].
    pub fn new(value: u64) -> Result<Weight, WeightError> {
        u32::try_from(value)
            .ok()
            .and_then(NonZeroU32::new)
            .map(Weight)
            .ok_or(WeightError { value })
    }

    /// The weight as a number.
    pub const fn get(self) -> u32 {
        self.0.get()
    }
}

impl Default for Weight {
    fn default() -> Self {
        Weight::ONE
    }
}

impl From<NonZeroU32> for Weight {
    fn from(value: NonZeroU32) -> Self {
        Weight(value)
    }
}

impl TryFrom<u32> for Weight {
    type Error = WeightError;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Weight::new(u64::from(value))
    }
}

impl TryFrom<u64> for Weight {
    type Error = WeightError;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        Weight::new(value)
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The process-wide origin of the nanosecond timestamps kept in atomics, and the
/// reading of the fast clock taken at the same moment.
struct Epoch {
    std: Instant,
    /// `std` in nanoseconds since itself plus the offset below, i.e. where `fast` sits.
    fast: quanta::Instant,
    fast_offset_ns: u64,
}

fn epoch_pair() -> &'static Epoch {
    static EPOCH: OnceLock<Epoch> = OnceLock::new();
    EPOCH.get_or_init(|| {
        let (now, fast) = (Instant::now(), quanta::Instant::now());
        // Start the epoch in the past so that instants taken a little before the first
        // call (tests build their own) still land after it.
        let std = now
            .checked_sub(Duration::from_secs(3600))
            .or_else(|| now.checked_sub(Duration::from_secs(1)))
            .unwrap_or(now);
        let fast_offset_ns = u64::try_from(now.duration_since(std).as_nanos()).unwrap_or(0);
        Epoch {
            std,
            fast,
            fast_offset_ns,
        }
    })
}

fn epoch() -> Instant {
    epoch_pair().std
}

/// Nanoseconds from the crate's epoch to `at`, saturating at both ends.
pub(crate) fn nanos_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// The instant `nanos` after the crate's epoch.
pub(crate) fn instant_at_nanos(nanos: u64) -> Instant {
    epoch() + Duration::from_nanos(nanos)
}

/// Now, in nanoseconds since the crate's epoch, from the fast clock: `quanta`'s TSC
/// reading (a few nanoseconds where `Instant::now` can cost tens, as on virtual
/// machines without a vDSO clock), falling back to the OS clock where the TSC is not
/// usable. It times requests; health's schedules use their own clock.
#[inline]
pub(crate) fn now_nanos() -> u64 {
    let e = epoch_pair();
    let since = quanta::Instant::now().saturating_duration_since(e.fast);
    e.fast_offset_ns
        .saturating_add(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
}

/// How fast the failure score fades while a backend gets no traffic: e^(−Δt/τ) with
/// τ = 1 s. A backend that failed k times in a row is tried again once its score falls
/// to about log₂ of its peers' load (see the [`pick`](crate::pick) module docs).
pub const FAILURE_DECAY: Duration = Duration::from_secs(1);
const INV_FAILURE_DECAY_NS: f64 = 1.0 / FAILURE_DECAY.as_nanos() as f64;
/// The score never grows past this (2^64 already outweighs any in-flight count).
const MAX_FAILURE_SCORE: f64 = 64.0;
/// A score halved below this is cleared, so a recovered backend's pick path is the
/// one-load path again, and a score faded below it reads as none (about 4 s after one
/// failure).
const MIN_FAILURE_SCORE: f64 = 1.0 / 64.0;

/// (in flight + 1) × 2^score − 1: the load of a backend with `score` recent failures.
#[inline]
pub(crate) fn failure_load(in_flight: f64, score: f64) -> f64 {
    (in_flight + 1.0) * score.exp2() - 1.0
}

/// Marks "no latency sample yet" in [`BackendState::rtt_bits`]; a NaN, never a real estimate.
const NO_SAMPLE: u64 = u64::MAX;

/// The default decay window of the latency estimate (as Finagle, Linkerd and tower's examples).
pub const DEFAULT_EWMA_DECAY: Duration = Duration::from_secs(10);

/// Live, per-backend state shared by every snapshot the backend is part of.
///
/// All fields are atomics updated with `Relaxed` ordering: each is an independent
/// statistic, no other memory is published through them, and readers tolerate a value
/// that is a moment old. The struct is aligned to 128 bytes so that two backends' counters
/// never share a cache line (adjacent-line prefetch pairs 64-byte lines on x86).
#[derive(Debug)]
#[repr(align(128))]
pub struct BackendState {
    in_flight: AtomicUsize,
    picks: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    /// The peak-EWMA latency estimate in nanoseconds, as `f64` bits; `NO_SAMPLE` before
    /// the first sample.
    rtt_bits: AtomicU64,
    /// When `rtt_bits` was last updated, in nanoseconds since the epoch.
    rtt_stamp: AtomicU64,
    /// 1 / τ in nanoseconds: the pick path multiplies rather than divides.
    inv_decay_ns: f64,
    /// Failure accrual: the recent-failure score as `f64` bits (0 = none, the common
    /// case, which the pick path tells from one load), and when it was last updated.
    fail_bits: AtomicU64,
    fail_stamp: AtomicU64,
    /// Health: admin switch, outlier detection, probes, slow start.
    pub(crate) health: HealthCell,
}

impl BackendState {
    /// Fresh state: nothing in flight, no sample, latency decaying over `decay`.
    pub fn new(decay: Duration) -> Self {
        Self::with_health(decay, None)
    }

    /// Fresh state of a pool's backend: outcomes reaching the pool's consecutive-failure
    /// threshold signal `shared`.
    pub(crate) fn linked(decay: Duration, shared: Arc<HealthShared>) -> Self {
        Self::with_health(decay, Some(shared))
    }

    fn with_health(decay: Duration, shared: Option<Arc<HealthShared>>) -> Self {
        BackendState {
            in_flight: AtomicUsize::new(0),
            picks: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            rtt_bits: AtomicU64::new(NO_SAMPLE),
            rtt_stamp: AtomicU64::new(0),
            inv_decay_ns: 1.0 / (decay.as_nanos() as f64).max(1.0),
            fail_bits: AtomicU64::new(0),
            fail_stamp: AtomicU64::new(0),
            health: HealthCell::new(shared),
        }
    }

    /// Counts one finished request: the success or failure total, the latency sample (if
    /// any, taken at `at`), the failure score the load-aware pickers read, and the
    /// consecutive-failure streak of outlier detection. A failure's latency only ever
    /// raises the estimate: a fast failure is not a fast answer. Returns whether this
    /// failure reached the pool's consecutive-failure threshold.
    pub(crate) fn record_outcome(
        &self,
        success: bool,
        latency: Option<Duration>,
        at_ns: u64,
    ) -> bool {
        let counter = if success {
            &self.successes
        } else {
            &self.failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match (latency, success) {
            (Some(latency), true) => self.record_rtt_at_nanos(latency, at_ns),
            (Some(latency), false) => self.raise_rtt_at_nanos(latency, at_ns),
            (None, _) => {}
        }
        if success {
            self.ease_failures();
        } else {
            self.accrue_failure(at_ns);
        }
        self.health.record(success)
    }

    /// A request dropped before it finished, `elapsed` after it started: its elapsed
    /// time is a lower bound of its latency, so it raises the estimate if it is above it;
    /// past the pool's cancellation threshold (see
    /// [`PoolBuilder::cancelled_as_failure_after`](crate::PoolBuilder::cancelled_as_failure_after))
    /// it also counts as a failure — a caller's time-out. Returns whether that failure
    /// reached the consecutive-failure threshold.
    pub(crate) fn record_cancel(&self, elapsed: Duration, at_ns: u64) -> bool {
        if self.health.cancel_is_failure(elapsed) {
            self.record_outcome(false, Some(elapsed), at_ns)
        } else {
            self.raise_rtt_at_nanos(elapsed, at_ns);
            false
        }
    }

    /// Adds one failure to the failure score, decayed to `now_ns` first.
    fn accrue_failure(&self, now_ns: u64) {
        let mut current = self.fail_bits.load(Ordering::Relaxed);
        loop {
            let stamp = self.fail_stamp.load(Ordering::Relaxed);
            let decayed = f64::from_bits(current)
                * decay_factor(now_ns.saturating_sub(stamp), INV_FAILURE_DECAY_NS);
            let next = (decayed + 1.0).min(MAX_FAILURE_SCORE);
            match self.fail_bits.compare_exchange_weak(
                current,
                next.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        self.fail_stamp.fetch_max(now_ns, Ordering::Relaxed);
    }

    /// Halves the failure score after a success; a success on a backend with no recent
    /// failure (the common case) writes nothing.
    #[inline]
    fn ease_failures(&self) {
        let mut current = self.fail_bits.load(Ordering::Relaxed);
        while current != 0 {
            let half = f64::from_bits(current) / 2.0;
            let next = if half < MIN_FAILURE_SCORE {
                0
            } else {
                half.to_bits()
            };
            match self.fail_bits.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
    }

    /// The failure score at `now_ns`: about the number of recent failures, each decaying
    /// over [`FAILURE_DECAY`] and halved by every success; 0 when there is none.
    #[inline]
    pub(crate) fn failure_score_at(&self, now_ns: u64) -> f64 {
        let bits = self.fail_bits.load(Ordering::Relaxed);
        if bits == 0 {
            return 0.0;
        }
        let stamp = self.fail_stamp.load(Ordering::Relaxed);
        let score =
            f64::from_bits(bits) * decay_factor(now_ns.saturating_sub(stamp), INV_FAILURE_DECAY_NS);
        // A faded score is no score: the backend competes as an idle peer again (else,
        // under sequential load where every peer has nothing in flight, it never would).
        if score < MIN_FAILURE_SCORE {
            0.0
        } else {
            score
        }
    }

    /// The failure score now (see [`load`](Self::load)).
    pub fn failure_score(&self) -> f64 {
        if self.fail_bits.load(Ordering::Relaxed) == 0 {
            return 0.0;
        }
        self.failure_score_at(now_nanos())
    }

    /// The load the load-aware pickers compare: the requests in flight, with recent
    /// failures counted as load — (in flight + 1) × 2^score − 1, the score being about
    /// the number of recent failures (see the [`pick`](crate::pick) module docs). With no
    /// recent failure it is the in-flight count exactly.
    pub fn load(&self) -> f64 {
        self.load_with(now_nanos)
    }

    /// [`load`](Self::load), reading "now" only when there is a failure score to decay.
    #[inline]
    pub(crate) fn load_with(&self, now_ns: impl FnOnce() -> u64) -> f64 {
        let in_flight = self.in_flight() as f64;
        if self.fail_bits.load(Ordering::Relaxed) == 0 {
            return in_flight;
        }
        failure_load(in_flight, self.failure_score_at(now_ns()))
    }

    /// The factor recent failures multiply a backend's cost by: 2^score (1 with none).
    #[inline]
    pub(crate) fn failure_factor_at(&self, now_ns: impl FnOnce() -> u64) -> f64 {
        if self.fail_bits.load(Ordering::Relaxed) == 0 {
            return 1.0;
        }
        self.failure_score_at(now_ns()).exp2()
    }

    /// Requests currently in flight on this backend.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// How many times this backend was picked through a [`Pool`](crate::Pool).
    pub fn picks(&self) -> u64 {
        self.picks.load(Ordering::Relaxed)
    }

    /// Requests that finished successfully.
    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }

    /// Requests that finished with a failure.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn count_pick(&self) {
        self.picks.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts tracking one request: in flight + 1 until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.start_at_nanos(now_nanos())
    }

    /// [`start`](Self::start) with the time already read (nanoseconds since the epoch).
    pub(crate) fn start_at_nanos(self: &Arc<Self>, started: u64) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            state: Arc::clone(self),
            started,
            finished: false,
        }
    }

    /// The peak-EWMA latency estimate at `at`, decayed for the time since the last
    /// sample; `None` before the first sample.
    pub fn rtt_estimate(&self, at: Instant) -> Option<Duration> {
        self.rtt_nanos_at(nanos_since_epoch(at))
            .map(|ns| Duration::from_nanos(ns as u64))
    }

    /// The decayed estimate in nanoseconds at `now_ns`: the pick-path form of
    /// [`rtt_estimate`](Self::rtt_estimate).
    #[inline]
    pub(crate) fn rtt_nanos_at(&self, now_ns: u64) -> Option<f64> {
        let bits = self.rtt_bits.load(Ordering::Relaxed);
        if bits == NO_SAMPLE {
            return None;
        }
        let estimate = f64::from_bits(bits);
        let stamp = self.rtt_stamp.load(Ordering::Relaxed);
        Some(estimate * decay_factor(now_ns.saturating_sub(stamp), self.inv_decay_ns))
    }

    /// Feeds one latency sample taken at `at` into the peak-EWMA estimate.
    ///
    /// A sample above the estimate (as last updated) replaces it at once — the "peak"
    /// that makes the estimate react to a slowing backend immediately; a sample below it
    /// is blended in with weight `1 − e^(−Δt/τ)`, Δt the time since the last sample, so
    /// the estimate falls back gradually. Reads ([`rtt_estimate`](Self::rtt_estimate))
    /// additionally decay it towards zero while no sample arrives, so an idle backend is
    /// tried again. This is the estimator of Finagle's `PeakEwma` and tower's
    /// `load::PeakEwma`.
    pub fn record_rtt(&self, sample: Duration, at: Instant) {
        self.record_rtt_at_nanos(sample, nanos_since_epoch(at));
    }

    pub(crate) fn record_rtt_at_nanos(&self, sample: Duration, now: u64) {
        let sample = sample.as_nanos() as f64;
        let mut current = self.rtt_bits.load(Ordering::Relaxed);
        loop {
            let next = if current == NO_SAMPLE {
                sample
            } else {
                let estimate = f64::from_bits(current);
                let stamp = self.rtt_stamp.load(Ordering::Relaxed);
                peak_ewma_step(
                    estimate,
                    sample,
                    now.saturating_sub(stamp),
                    self.inv_decay_ns,
                )
            };
            // A CAS loop so concurrent samples are never lost; the stamp is a separate
            // atomic and may briefly lag, which only shortens one decay step.
            match self.rtt_bits.compare_exchange_weak(
                current,
                next.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        self.rtt_stamp.fetch_max(now, Ordering::Relaxed);
    }
}

impl BackendState {
    /// Feeds a latency that is a lower bound (a failure's, a cancelled request's): it
    /// replaces the estimate when above it, and is ignored otherwise.
    pub(crate) fn raise_rtt_at_nanos(&self, sample: Duration, now: u64) {
        let bits = self.rtt_bits.load(Ordering::Relaxed);
        let above = bits == NO_SAMPLE || sample.as_nanos() as f64 > f64::from_bits(bits);
        if above {
            self.record_rtt_at_nanos(sample, now);
        }
    }
}

/// One peak-EWMA step: the new estimate after `sample`, `elapsed_ns` after the last one.
pub(crate) fn peak_ewma_step(
    estimate: f64,
    sample: f64,
    elapsed_ns: u64,
    inv_decay_ns: f64,
) -> f64 {
    if sample > estimate {
        sample
    } else {
        let w = decay_factor(elapsed_ns, inv_decay_ns);
        estimate * w + sample * (1.0 - w)
    }
}

/// Below this x = Δt/τ, e^(−x) is taken as 1 − x: the error, under x²/2, is below 1.2e-7
/// of the estimate. A busy backend (samples milliseconds apart, τ = 10 s) stays on this
/// path, which spares the pick path an `exp` per candidate.
const LINEAR_DECAY_BELOW: f64 = 1.0 / 2048.0;

/// e^(−Δt/τ), the weight the old estimate keeps after `elapsed_ns`.
#[inline]
pub(crate) fn decay_factor(elapsed_ns: u64, inv_decay_ns: f64) -> f64 {
    let x = elapsed_ns as f64 * inv_decay_ns;
    if x < LINEAR_DECAY_BELOW {
        1.0 - x
    } else {
        (-x).exp()
    }
}

/// An RAII guard for one request on one backend: in flight until dropped.
///
/// Dropping the guard without [`success`](Self::success) or [`failure`](Self::failure)
/// is a cancelled request: it releases the in-flight count, and its elapsed time —
/// a lower bound of its latency — raises the latency estimate when above it. In a
/// [`Pool`](crate::Pool), a request dropped after the pool's cancellation threshold
/// ([`PoolBuilder::cancelled_as_failure_after`](crate::PoolBuilder::cancelled_as_failure_after),
/// 100 ms by default) also counts as a failure: a caller's time-out is the backend's
/// failure, or a hung backend would never be ejected.
#[derive(Debug)]
#[must_use = "the request counts as in flight only while the guard lives"]
pub struct InFlight {
    state: Arc<BackendState>,
    /// Nanoseconds since the crate's epoch.
    started: u64,
    /// Whether an outcome was recorded (else dropping is a cancellation).
    finished: bool,
}

impl InFlight {
    /// When tracking started.
    pub fn started(&self) -> Instant {
        instant_at_nanos(self.started)
    }

    /// How long the request has been in flight, on the request clock.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(now_nanos().saturating_sub(self.started))
    }

    /// The request succeeded: counts it and feeds its latency to the estimate.
    pub fn success(self) {
        self.finish_at_nanos(true, now_nanos());
    }

    /// The request failed: counts it, adds to the backend's failure score, and raises
    /// the latency estimate to its latency if that is higher (a fast failure is not a
    /// fast answer).
    pub fn failure(self) {
        self.finish_at_nanos(false, now_nanos());
    }

    /// Ends the request now (fast clock); returns whether the outcome crossed the
    /// consecutive-failure threshold.
    pub(crate) fn finish_at_nanos(mut self, success: bool, end: u64) -> bool {
        self.finished = true;
        let latency = Duration::from_nanos(end.saturating_sub(self.started));
        self.state.record_outcome(success, Some(latency), end)
    }

    /// Ends the request with the given outcome at `at` (a clock of the caller's).
    ///
    /// The outcome also feeds the pool's passive outlier detection: a failure that
    /// reaches the consecutive-failure threshold gets the backend ejected by the
    /// background health task at once, or at the next [`Pool::tick`](crate::Pool::tick)
    /// (use [`Pool::report`](crate::Pool::report) to eject synchronously).
    pub fn finish(self, success: bool, at: Instant) {
        self.finish_at_nanos(success, nanos_since_epoch(at));
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.finished {
            let now = now_nanos();
            let elapsed = Duration::from_nanos(now.saturating_sub(self.started));
            // A failure past the threshold signals the pool like any other; the next
            // tick (or the tower service's next pick) publishes the ejection.
            self.state.record_cancel(elapsed, now);
        }
    }
}

/// One member of a backend set.
#[derive(Debug, Clone)]
pub struct Backend<A> {
    id: BackendId,
    addr: A,
    weight: Weight,
    state: Arc<BackendState>,
}

impl<A> Backend<A> {
    pub(crate) fn new(id: BackendId, addr: A, weight: Weight, state: Arc<BackendState>) -> Self {
        Backend {
            id,
            addr,
            weight,
            state,
        }
    }

    /// The backend's id.
    pub fn id(&self) -> BackendId {
        self.id
    }

    /// The backend's address (whatever the user keyed it by).
    pub fn addr(&self) -> &A {
        &self.addr
    }

    /// The configured weight.
    pub fn weight(&self) -> Weight {
        self.weight
    }

    /// The live state shared across snapshots.
    pub fn state(&self) -> &Arc<BackendState> {
        &self.state
    }

    pub(crate) fn with_weight(&self, weight: Weight) -> Self
    where
        A: Clone,
    {
        Backend {
            weight,
            ..self.clone()
        }
    }
}

/// An immutable view of a backend set: its members, their weights, and which are eligible.
///
/// Indices into [`backends`](Self::backends) are what pickers return. A snapshot never
/// changes; a change to the set publishes a new one.
///
/// # Examples
///
/// ```
/// use tower_lb::{Snapshot, Weight};
///
/// let snapshot = Snapshot::build([("a", Weight::ONE), ("b", Weight::new(3).unwrap())]).unwrap();
/// assert_eq!(snapshot.len(), 2);
/// assert_eq!(snapshot.total_weight(), 4);
/// ```
#[derive(Debug, Clone)]
pub struct Snapshot<A> {
    backends: Box<[Backend<A>]>,
    eligible: Box<[u32]>,
    eligible_mask: Box<[bool]>,
    verdicts: Box<[Verdict]>,
    effective: Box<[u32]>,
    weight_scale: u32,
    /// `(healthy, in service, fail closed)` while the panic threshold is crossed.
    panic: Option<(usize, usize, bool)>,
    total_weight: u64,
    uniform_weights: bool,
    version: u64,
}

impl<A> Snapshot<A> {
    /// A snapshot of the given members, all eligible and healthy, at their configured weights.
    pub(crate) fn from_members(backends: Vec<Backend<A>>, version: u64) -> Self {
        let n = backends.len();
        let effective = backends.iter().map(|b| b.weight.get()).collect();
        Self::assemble(
            backends,
            version,
            vec![true; n],
            vec![Verdict::Healthy; n],
            effective,
            1,
            None,
        )
    }

    /// A snapshot of the given members with health's verdicts, eligible set and weights.
    pub(crate) fn from_evaluation(
        backends: Vec<Backend<A>>,
        version: u64,
        eval: Evaluation,
    ) -> Self {
        Self::assemble(
            backends,
            version,
            eval.eligible,
            eval.verdicts,
            eval.effective,
            eval.weight_scale,
            eval.panic,
        )
    }

    fn assemble(
        backends: Vec<Backend<A>>,
        version: u64,
        mut eligible_mask: Vec<bool>,
        mut verdicts: Vec<Verdict>,
        mut effective: Vec<u32>,
        weight_scale: u32,
        panic: Option<(usize, usize, bool)>,
    ) -> Self {
        let n = backends.len();
        // Health hands one entry per member; stay well-formed whatever it handed.
        eligible_mask.resize(n, false);
        verdicts.resize(n, Verdict::Healthy);
        effective.resize(n, 0);
        let eligible: Box<[u32]> = (0..n)
            .filter(|&i| eligible_mask[i])
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        let total_weight = eligible
            .iter()
            .map(|&i| u64::from(effective[i as usize]))
            .sum();
        let uniform_weights = eligible
            .windows(2)
            .all(|w| effective[w[0] as usize] == effective[w[1] as usize]);
        Snapshot {
            backends: backends.into_boxed_slice(),
            eligible,
            eligible_mask: eligible_mask.into_boxed_slice(),
            verdicts: verdicts.into_boxed_slice(),
            effective: effective.into_boxed_slice(),
            weight_scale,
            panic,
            total_weight,
            uniform_weights,
            version,
        }
    }

    /// Whether `other` has the same members with the same health, eligibility and weights.
    pub(crate) fn same_as(&self, other: &Snapshot<A>) -> bool {
        self.backends.len() == other.backends.len()
            && self
                .backends
                .iter()
                .zip(other.backends.iter())
                .all(|(a, b)| a.id == b.id && a.weight == b.weight)
            && self.eligible_mask == other.eligible_mask
            && self.verdicts == other.verdicts
            && self.effective == other.effective
            && self.panic == other.panic
    }

    /// A standalone snapshot, for calling pickers directly without a [`Pool`](crate::Pool).
    ///
    /// Ids are assigned in order from 0. Fails on a duplicate address.
    pub fn build<I>(members: I) -> Result<Self, MembershipError>
    where
        I: IntoIterator<Item = (A, Weight)>,
        A: Eq + Hash,
    {
        Self::build_with_decay(members, DEFAULT_EWMA_DECAY)
    }

    pub(crate) fn build_with_decay<I>(members: I, decay: Duration) -> Result<Self, MembershipError>
    where
        I: IntoIterator<Item = (A, Weight)>,
        A: Eq + Hash,
    {
        let members: Vec<(A, Weight)> = members.into_iter().collect();
        let mut seen: HashMap<&A, usize> = HashMap::with_capacity(members.len());
        for (i, (addr, _)) in members.iter().enumerate() {
            if let Some(&first) = seen.get(addr) {
                return Err(MembershipError::Duplicate {
                    existing: BackendId::new(first as u64),
                });
            }
            seen.insert(addr, i);
        }
        drop(seen);
        let backends = members
            .into_iter()
            .enumerate()
            .map(|(i, (addr, weight))| {
                let state = Arc::new(BackendState::new(decay));
                Backend::new(BackendId::new(i as u64), addr, weight, state)
            })
            .collect();
        Ok(Self::from_members(backends, 0))
    }

    /// A copy of this snapshot in which the member at index `i` is eligible exactly when
    /// `eligible(i)` holds; members, weights, live state and version are kept.
    ///
    /// For driving pickers directly (tests, simulations, a custom health source); a
    /// [`Pool`](crate::Pool) publishes eligibility changes itself.
    ///
    /// ```
    /// use tower_lb::{Snapshot, Weight};
    ///
    /// let all = Snapshot::build([("a", Weight::ONE), ("b", Weight::ONE)]).unwrap();
    /// let b_down = all.with_eligibility(|i| i != 1);
    /// assert_eq!(b_down.eligible(), [0]);
    /// assert_eq!(b_down.total_weight(), 1);
    /// ```
    pub fn with_eligibility(&self, eligible: impl Fn(usize) -> bool) -> Self
    where
        A: Clone,
    {
        let mut next = Self::from_members(self.backends.to_vec(), self.version);
        let mask: Box<[bool]> = (0..next.backends.len()).map(&eligible).collect();
        next.eligible = (0..next.backends.len())
            .filter(|&i| mask[i])
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        next.total_weight = next
            .eligible
            .iter()
            .map(|&i| u64::from(next.effective_weight(i as usize)))
            .sum();
        next.eligible_mask = mask;
        next
    }

    /// Every member, eligible or not, in insertion order.
    pub fn backends(&self) -> &[Backend<A>] {
        &self.backends
    }

    /// The member at `index`, if any.
    pub fn get(&self, index: usize) -> Option<&Backend<A>> {
        self.backends.get(index)
    }

    /// The index of the member with this id.
    pub fn index_of(&self, id: BackendId) -> Option<usize> {
        self.backends.iter().position(|b| b.id == id)
    }

    /// How many members the snapshot holds.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether the snapshot has no members.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// Indices of the members that may receive traffic, ascending.
    pub fn eligible(&self) -> &[u32] {
        &self.eligible
    }

    /// Whether the member at `index` may receive traffic.
    #[inline]
    pub fn is_eligible(&self, index: usize) -> bool {
        self.eligible_mask.get(index).copied().unwrap_or(false)
    }

    /// The weight a picker should use for the member at `index` (0 for no such member):
    /// the configured weight, ramped down while the member is in
    /// [slow start](crate::health::SlowStart) and then multiplied, like every member's,
    /// by [`weight_scale`](Self::weight_scale).
    #[inline]
    pub fn effective_weight(&self, index: usize) -> u32 {
        self.effective.get(index).copied().unwrap_or(0)
    }

    /// The common factor of this snapshot's effective weights: 1, unless a slow-start ramp
    /// runs, when weights are scaled up so that a ramp moves in steps of 1%.
    pub fn weight_scale(&self) -> u32 {
        self.weight_scale
    }

    /// The sum of the eligible members' effective weights.
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// Whether every eligible member has the same effective weight (pickers take a faster
    /// path).
    pub fn uniform_weights(&self) -> bool {
        self.uniform_weights
    }

    /// The health verdict of the member at `index` when this snapshot was published.
    pub fn verdict(&self, index: usize) -> Option<&Verdict> {
        self.verdicts.get(index)
    }

    /// Whether the member at `index` was healthy when this snapshot was published. Outside
    /// panic mode, exactly the healthy members are eligible.
    pub fn is_healthy(&self, index: usize) -> bool {
        self.verdicts.get(index).is_some_and(Verdict::is_healthy)
    }

    /// Whether the [panic threshold](crate::health::PanicThreshold) was crossed: the
    /// eligible set is then every member in service (fail open) or empty (fail closed).
    pub fn is_panicking(&self) -> bool {
        self.panic.is_some()
    }

    /// A number that grows with every published change of the set.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The reason no backend can be picked, for a picker that found none.
    pub fn empty_error(&self) -> crate::PickError {
        if let Some((healthy, total, true)) = self.panic {
            crate::PickError::PanicThreshold { healthy, total }
        } else if self.backends.is_empty() {
            crate::PickError::NoBackends
        } else {
            crate::PickError::NoEligible {
                total: self.backends.len(),
            }
        }
    }
}

/// A point-in-time reading of one backend, from [`Pool::stats`](crate::Pool::stats).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BackendStats<A> {
    /// The backend's id.
    pub id: BackendId,
    /// Its address.
    pub addr: A,
    /// Its configured weight.
    pub weight: Weight,
    /// Whether it may currently receive traffic.
    pub eligible: bool,
    /// Requests in flight.
    pub in_flight: usize,
    /// Times picked.
    pub picks: u64,
    /// Requests finished successfully.
    pub successes: u64,
    /// Requests finished with a failure.
    pub failures: u64,
    /// The peak-EWMA latency estimate now, if any sample was taken.
    pub ewma: Option<Duration>,
    /// The health verdict in the current snapshot.
    pub health: Verdict,
    /// The weight pickers use now (see [`Snapshot::effective_weight`]).
    pub effective_weight: u32,
    /// While in slow start, the share of its weight the backend gets (0 to 1).
    pub ramp: Option<f64>,
    /// Times ejected by outlier detection over the backend's life.
    pub ejections: u64,
    /// While ejected, the time until it returns (at the latest).
    pub returns_in: Option<Duration>,
    /// Active probes completed on it.
    pub probes: u64,
}

impl<A: Clone> BackendStats<A> {
    /// Reads the member at `index`; `now` is the latency clock, `health_now` the pool's.
    pub(crate) fn read(
        snapshot: &Snapshot<A>,
        index: usize,
        now: Instant,
        health_now: Instant,
    ) -> Option<Self> {
        let b = snapshot.get(index)?;
        let s = &b.state;
        let h = &s.health;
        let until = h.ejected_until.load(Ordering::Relaxed);
        let now_ns = nanos_since_epoch(health_now);
        let effective_weight = snapshot.effective_weight(index);
        let full = f64::from(b.weight.get()) * f64::from(snapshot.weight_scale());
        let ramping =
            h.ramp_start.load(Ordering::Relaxed) != 0 && f64::from(effective_weight) < full;
        Some(BackendStats {
            id: b.id,
            addr: b.addr.clone(),
            weight: b.weight,
            eligible: snapshot.is_eligible(index),
            in_flight: s.in_flight(),
            picks: s.picks(),
            successes: s.successes(),
            failures: s.failures(),
            ewma: s.rtt_estimate(now),
            health: snapshot.verdict(index).cloned().unwrap_or_default(),
            effective_weight,
            ramp: ramping.then(|| f64::from(effective_weight) / full),
            ejections: h.ejections.load(Ordering::Relaxed),
            returns_in: (until != 0).then(|| Duration::from_nanos(until.saturating_sub(now_ns))),
            probes: h.probe.lock().completed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_bounds() {
        assert_eq!(Weight::new(0), Err(WeightError { value: 0 }));
        assert_eq!(Weight::new(1).map(Weight::get), Ok(1));
        assert_eq!(
            Weight::new(u64::from(u32::MAX)).map(Weight::get),
            Ok(u32::MAX)
        );
        let over = u64::from(u32::MAX) + 1;
        let err = Weight::new(over).unwrap_err();
        assert_eq!(err.value, over);
        assert!(err.to_string().contains(&over.to_string()));
    }

    #[test]
    fn in_flight_guard_releases_on_drop_and_finish() {
        let state = Arc::new(BackendState::new(DEFAULT_EWMA_DECAY));
        let a = state.start();
        let b = state.start();
        assert_eq!(state.in_flight(), 2);
        drop(a);
        assert_eq!(state.in_flight(), 1);
        b.failure();
        assert_eq!(state.in_flight(), 0);
        assert_eq!(state.failures(), 1);
        assert_eq!(state.successes(), 0);
        assert!(state.rtt_estimate(Instant::now()).is_some());
    }

    #[test]
    fn ewma_decays_towards_zero_when_idle() {
        let state = BackendState::new(Duration::from_secs(10));
        let t0 = Instant::now();
        state.record_rtt(Duration::from_millis(100), t0);
        let at0 = state.rtt_estimate(t0).unwrap();
        let later = state.rtt_estimate(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(at0, Duration::from_millis(100));
        // e^-1 of the estimate after one decay window, within rounding.
        let expected = 100e6 * (-1.0f64).exp();
        assert!(
            (later.as_nanos() as f64 - expected).abs() < 1e3,
            "{later:?}"
        );
    }

    #[test]
    fn decay_factor_is_close_to_exp_on_both_paths() {
        let tau = 10e9;
        let inv = 1.0 / tau;
        for elapsed in [
            0u64,
            1,
            1_000_000,
            4_882_000,
            4_883_000,
            10_000_000,
            10_000_000_000,
        ] {
            let exact = (-(elapsed as f64) / tau).exp();
            let got = decay_factor(elapsed, inv);
            assert!((got - exact).abs() < 2e-7, "{elapsed}: {got} vs {exact}");
        }
    }

    #[test]
    fn a_cancellation_raises_the_estimate_and_past_the_threshold_is_a_failure() {
        let shared = Arc::new(HealthShared::new(5, Some(Duration::from_millis(100))));
        let state = BackendState::linked(DEFAULT_EWMA_DECAY, shared);
        state.record_rtt_at_nanos(Duration::from_millis(10), 1_000);
        // Cancelled after 5 ms: below the estimate, so nothing changes but the count.
        assert!(!state.record_cancel(Duration::from_millis(5), 2_000));
        assert_eq!((state.successes(), state.failures()), (0, 0));
        assert_eq!(f64::from_bits(state.rtt_bits.load(Ordering::Relaxed)), 10e6);
        // Cancelled after 50 ms: a latency floor above the estimate, not a failure.
        assert!(!state.record_cancel(Duration::from_millis(50), 3_000));
        assert_eq!(state.failures(), 0);
        assert_eq!(f64::from_bits(state.rtt_bits.load(Ordering::Relaxed)), 50e6);
        assert_eq!(state.failure_score_at(3_000), 0.0);
        // Cancelled after 300 ms (a caller's time-out): a failure, scored.
        assert!(!state.record_cancel(Duration::from_millis(300), 4_000));
        assert_eq!(state.failures(), 1);
        assert_eq!(
            f64::from_bits(state.rtt_bits.load(Ordering::Relaxed)),
            300e6
        );
        assert!((state.failure_score_at(4_000) - 1.0).abs() < 1e-9);
        // Outside a pool (no threshold), a cancellation is never a failure.
        let alone = BackendState::new(DEFAULT_EWMA_DECAY);
        assert!(!alone.record_cancel(Duration::from_secs(60), 1_000));
        assert_eq!(alone.failures(), 0);
    }

    #[test]
    fn the_failure_score_adds_halves_fades_and_doubles_the_load() {
        let state = BackendState::new(DEFAULT_EWMA_DECAY);
        let t = 10_000_000_000u64;
        for _ in 0..3 {
            state.record_outcome(false, None, t);
        }
        assert!((state.failure_score_at(t) - 3.0).abs() < 1e-9);
        // (0 in flight + 1) × 2³ − 1
        assert!((state.load_with(|| t) - 7.0).abs() < 1e-9);
        state.record_outcome(true, None, t);
        assert!((state.failure_score_at(t) - 1.5).abs() < 1e-9);
        // Fades as e^(−Δt / 1 s): one second later, 1.5 / e.
        let later = t + 1_000_000_000;
        let expected = 1.5 * (-1.0f64).exp();
        assert!((state.failure_score_at(later) - expected).abs() < 1e-6);
        // Faded below 1/64: none, and the load is the in-flight count again.
        let much_later = t + 6_000_000_000;
        assert_eq!(state.failure_score_at(much_later), 0.0);
        assert_eq!(state.load_with(|| much_later), 0.0);
        // Successes halve it away: cleared below 1/64.
        for _ in 0..7 {
            state.record_outcome(true, None, t);
        }
        assert_eq!(state.fail_bits.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn duplicate_address_is_refused() {
        let err = Snapshot::build([("a", Weight::ONE), ("a", Weight::ONE)]).unwrap_err();
        assert_eq!(
            err,
            MembershipError::Duplicate {
                existing: BackendId::new(0)
            }
        );
    }
}
