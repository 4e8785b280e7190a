//! Per-backend live state: the hot atomics every request touches, and the RAII guard of
//! one request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::InFlight;
use super::health::{HealthCell, HealthShared};
use crate::clock::{nanos_since_epoch, now_nanos};

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
/// never share a cache line (adjacent-line prefetch pairs 64-byte lines on x86), and laid
/// out in declaration order (`repr(C)`) with what a pick reads first: in flight, the
/// failure score's bits and the latency estimate share the first 64-byte line, so a
/// load-aware pick reads one line per candidate (the compiler's own order had put the
/// failure score on the second).
#[derive(Debug)]
#[repr(C, align(128))]
pub struct BackendState {
    pub(super) in_flight: AtomicUsize,
    /// Failure accrual: the recent-failure score as `f64` bits (0 = none, the common
    /// case, which the pick path tells from one load), and when it was last updated.
    fail_bits: AtomicU64,
    /// The peak-EWMA latency estimate in nanoseconds, as `f64` bits; `NO_SAMPLE` before
    /// the first sample.
    rtt_bits: AtomicU64,
    /// When `rtt_bits` was last updated, in nanoseconds since the epoch.
    rtt_stamp: AtomicU64,
    /// τ × [`LINEAR_DECAY_BELOW`] in nanoseconds: a sample younger than this has decayed
    /// by less than 0.05 %, which the pick's comparison ignores.
    fresh_ns: u64,
    /// 1 / τ in nanoseconds: the pick path multiplies rather than divides.
    inv_decay_ns: f64,
    fail_stamp: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    /// Requests dropped unfinished that did not count as failures.
    cancelled: AtomicU64,
    /// Whether outcomes feed the latency estimate (the pool's
    /// [`track_latency`](crate::PoolBuilder::track_latency)); a standalone state does.
    track_latency: bool,
    /// Health: admin switch, outlier detection, probes, slow start.
    pub(crate) health: HealthCell,
    /// Registered when the backend is first published (the `metrics` feature).
    #[cfg(feature = "metrics")]
    pub(crate) metrics: std::sync::OnceLock<super::metrics::BackendMetrics>,
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
            track_latency: shared.as_ref().is_none_or(|s| s.track_latency),
            in_flight: AtomicUsize::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            rtt_bits: AtomicU64::new(NO_SAMPLE),
            rtt_stamp: AtomicU64::new(0),
            inv_decay_ns: 1.0 / (decay.as_nanos() as f64).max(1.0),
            fresh_ns: (decay.as_nanos() as f64 * LINEAR_DECAY_BELOW) as u64,
            fail_bits: AtomicU64::new(0),
            fail_stamp: AtomicU64::new(0),
            health: HealthCell::new(shared),
            #[cfg(feature = "metrics")]
            metrics: std::sync::OnceLock::new(),
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
        // Release: whoever reads this count sees the request out of `in_flight`
        // (see `picks`).
        counter.fetch_add(1, Ordering::Release);
        match (latency.filter(|_| self.track_latency), success) {
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
            self.cancelled.fetch_add(1, Ordering::Release);
            if self.track_latency {
                self.raise_rtt_at_nanos(elapsed, at_ns);
            }
            false
        }
    }

    /// Adds one failure to the failure score, decayed to `now_ns` first.
    fn accrue_failure(&self, now_ns: u64) {
        // `fetch_update` retries on contention, so concurrent failures are never lost.
        let _ = self
            .fail_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
                let stamp = self.fail_stamp.load(Ordering::Relaxed);
                let decayed = f64::from_bits(current)
                    * decay_factor(now_ns.saturating_sub(stamp), INV_FAILURE_DECAY_NS);
                Some((decayed + 1.0).min(MAX_FAILURE_SCORE).to_bits())
            });
        self.fail_stamp.fetch_max(now_ns, Ordering::Relaxed);
    }

    /// Halves the failure score after a success; a success on a backend with no recent
    /// failure (the common case) writes nothing.
    #[inline]
    fn ease_failures(&self) {
        // One load and no write when there is no score (the closure declines).
        let _ = self
            .fail_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
                (current != 0).then(|| {
                    let half = f64::from_bits(current) / 2.0;
                    if half < MIN_FAILURE_SCORE {
                        0
                    } else {
                        half.to_bits()
                    }
                })
            });
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
    #[inline]
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
    #[inline]
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

    /// Whether the backend has a failure score at all (the one load of the common case,
    /// before any decay is computed).
    #[inline]
    pub(crate) fn has_failure_score(&self) -> bool {
        self.fail_bits.load(Ordering::Relaxed) != 0
    }

    /// Whether ending a request needs the clock: for the latency sample, or for the
    /// latency histogram of the metrics.
    #[inline]
    pub(crate) fn needs_end_time(&self) -> bool {
        #[cfg(feature = "metrics")]
        if self.metrics.get().is_some() {
            return true;
        }
        self.track_latency
    }

    /// Requests currently in flight on this backend.
    #[inline]
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent to this backend: those started on it ([`start`](Self::start),
    /// [`Picked::start`](crate::Picked::start), the tower service) — in flight, finished
    /// or dropped — plus outcomes reported without a start
    /// ([`Pool::report`](crate::Pool::report)). A [`Pool::pick`](crate::Pool::pick) that
    /// is never started is not counted: the count is derived from the in-flight and
    /// outcome counters, so a pick writes no shared counter of its own.
    ///
    /// Read while requests finish, it never counts one twice: a request leaves the
    /// in-flight count before its outcome is counted (Release), and the outcomes are
    /// read first (Acquire), in flight last. It may miss one finishing as it reads: it
    /// is never above the true count.
    #[inline]
    pub fn picks(&self) -> u64 {
        let finished = self
            .successes
            .load(Ordering::Acquire)
            .wrapping_add(self.failures.load(Ordering::Acquire))
            .wrapping_add(self.cancelled.load(Ordering::Acquire));
        finished.wrapping_add(self.in_flight.load(Ordering::Relaxed) as u64)
    }

    /// Requests that finished successfully.
    #[inline]
    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }

    /// Requests that finished with a failure.
    #[inline]
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Starts tracking one request: in flight + 1 until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.start_at_nanos(now_nanos())
    }

    /// Starts tracking one request that started at `at` (a clock of the caller's, as
    /// [`InFlight::finish`] takes): for callers that keep their own time, such as a
    /// simulation in virtual time.
    pub fn start_at(self: &Arc<Self>, at: Instant) -> InFlight {
        self.start_at_nanos(nanos_since_epoch(at))
    }

    /// [`start`](Self::start) with the time already read (nanoseconds since the epoch).
    pub(crate) fn start_at_nanos(self: &Arc<Self>, started: u64) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.started();
        }
        InFlight::new(Arc::clone(self), started)
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
        let (estimate, elapsed) = self.rtt_sample(now_ns)?;
        Some(estimate * decay_factor(elapsed, self.inv_decay_ns))
    }

    /// [`rtt_nanos_at`](Self::rtt_nanos_at) for a pick's comparison: a sample younger
    /// than τ/2048 (5 ms at the default τ of 10 s: any busy backend's) is taken as is,
    /// its decay — under 0.05 % — ignored, which keeps a conversion and two
    /// multiplications off the pick's critical path. Two costs this rounds differently
    /// are within 0.05 % of each other, a difference no latency measurement carries.
    #[inline]
    pub(crate) fn rtt_nanos_for_pick(&self, now_ns: u64) -> Option<f64> {
        let (estimate, elapsed) = self.rtt_sample(now_ns)?;
        if elapsed < self.fresh_ns {
            return Some(estimate);
        }
        Some(estimate * decay_factor(elapsed, self.inv_decay_ns))
    }

    /// The estimate as last updated and the nanoseconds since, at `now_ns`; `None`
    /// before the first sample.
    #[inline(always)]
    fn rtt_sample(&self, now_ns: u64) -> Option<(f64, u64)> {
        let bits = self.rtt_bits.load(Ordering::Relaxed);
        if bits == NO_SAMPLE {
            return None;
        }
        let stamp = self.rtt_stamp.load(Ordering::Relaxed);
        Some((f64::from_bits(bits), now_ns.saturating_sub(stamp)))
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
        let sample = nanos_f64(sample);
        // `fetch_update` retries on contention, so concurrent samples are never lost; the
        // stamp is a separate atomic and may briefly lag, which only shortens one decay step.
        let _ = self
            .rtt_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
                let next = if current == NO_SAMPLE {
                    sample
                } else {
                    let stamp = self.rtt_stamp.load(Ordering::Relaxed);
                    peak_ewma_step(
                        f64::from_bits(current),
                        sample,
                        now.saturating_sub(stamp),
                        self.inv_decay_ns,
                    )
                };
                Some(next.to_bits())
            });
        // A load and a store, not a read-modify-write (one locked instruction less per
        // request): two writers racing may leave the earlier of their stamps, which
        // only shortens the next decay step, as the lag above does.
        if now > self.rtt_stamp.load(Ordering::Relaxed) {
            self.rtt_stamp.store(now, Ordering::Relaxed);
        }
    }
}

/// `d` in nanoseconds as `f64`, through `u64` (saturating past 584 years): the `u128`
/// of `Duration::as_nanos` converts through a software routine several times slower.
#[inline]
fn nanos_f64(d: Duration) -> f64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX) as f64
}

impl BackendState {
    /// Feeds a latency that is a lower bound (a failure's, a cancelled request's): it
    /// replaces the estimate when above it, and is ignored otherwise.
    pub(crate) fn raise_rtt_at_nanos(&self, sample: Duration, now: u64) {
        let bits = self.rtt_bits.load(Ordering::Relaxed);
        let above = bits == NO_SAMPLE || nanos_f64(sample) > f64::from_bits(bits);
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
    // Through i64 (one conversion instruction where u64 → f64 takes six); past
    // i64::MAX ns (292 years) the decay is complete either way.
    let x = elapsed_ns.min(i64::MAX as u64) as i64 as f64 * inv_decay_ns;
    if x < LINEAR_DECAY_BELOW {
        1.0 - x
    } else {
        (-x).exp()
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
