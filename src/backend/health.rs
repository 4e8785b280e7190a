//! Per-backend health state, shared by every snapshot the backend appears in, and the
//! pool-wide signal that wakes the health machinery.
//!
//! Most fields are written only under the pool's writer lock (the evaluation in
//! [`engine`](super::engine)) or by the single probe task; they are atomics so that stats
//! and the request-completion path can read or bump them without that lock. Every
//! access is `Relaxed` unless a comment says otherwise: each field is an independent
//! reading, and whatever must be consistent is read under the writer lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::verdict::{Ejection, Reason, Verdict};

/// Pool-wide: the consecutive-failure threshold and the "something needs evaluating" signal.
#[derive(Debug)]
pub(crate) struct HealthShared {
    /// Failures in a row that call for an ejection; 0 when that rule is off.
    consecutive_threshold: u64,
    /// A request dropped unfinished after this long (ns) counts as a failure;
    /// `u64::MAX` when cancellations never do.
    cancel_failure_ns: u64,
    /// Signals raised, and how many of them an evaluation has published: one is due
    /// while they differ. Not a flag cleared when an evaluation begins, so that a pick
    /// racing a publication in progress still sees the signal and waits for it.
    signalled: AtomicU64,
    handled: AtomicU64,
    /// Whether the pool keeps latency estimates (see
    /// [`PoolBuilder::track_latency`](crate::PoolBuilder::track_latency)).
    pub(crate) track_latency: bool,
    /// Whether a background task runs for this pool.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) task_running: AtomicBool,
    #[cfg(feature = "tokio")]
    pub(crate) wake: tokio::sync::Notify,
}

impl HealthShared {
    pub(crate) fn new(
        consecutive_threshold: u64,
        cancel_failure_after: Option<Duration>,
        track_latency: bool,
    ) -> Self {
        HealthShared {
            track_latency,
            consecutive_threshold,
            cancel_failure_ns: cancel_failure_after.map_or(u64::MAX, |d| {
                u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
            }),
            signalled: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            task_running: AtomicBool::new(false),
            #[cfg(feature = "tokio")]
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Asks for an evaluation: the next [`Pool::tick`](crate::Pool::tick), or at once by
    /// the background task when one runs.
    pub(crate) fn signal(&self) {
        // Release pairs with the Acquire in `begin`: the evaluation that sees the signal
        // also sees the failure counts written before it.
        self.signalled.fetch_add(1, Ordering::Release);
        self.wake();
    }

    /// Wakes the background task, if any (a stored permit if it is busy).
    pub(crate) fn wake(&self) {
        #[cfg(feature = "tokio")]
        self.wake.notify_one();
    }

    /// Whether a signal is not yet published.
    #[inline]
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn is_dirty(&self) -> bool {
        // Acquire pairs with the Release in `handled`: who sees a signal handled also
        // sees the snapshot published for it.
        self.handled.load(Ordering::Acquire) != self.signalled.load(Ordering::Relaxed)
    }

    /// An evaluation begins (under the writer lock): the signals it covers.
    pub(crate) fn begin(&self) -> u64 {
        self.signalled.load(Ordering::Acquire)
    }

    /// The evaluation that began with `signals` has published.
    pub(crate) fn handled(&self, signals: u64) {
        self.handled.store(signals, Ordering::Release);
    }
}

/// Admin states, as stored.
pub(crate) const ADMIN_UP: u8 = 0;
pub(crate) const ADMIN_DRAIN: u8 = 1;
pub(crate) const ADMIN_DOWN: u8 = 2;

/// What the active probes think, with HAProxy's rise/fall counting.
#[derive(Debug, Default)]
pub(crate) struct ProbeState {
    /// `None` while healthy (the initial state), the last error while unhealthy.
    pub(crate) down: Option<Arc<str>>,
    /// Consecutive results against the current state.
    pub(crate) streak: u32,
    /// Probes completed, for tests and stats.
    pub(crate) completed: u64,
}

impl ProbeState {
    /// Records one probe result; returns whether the state flipped.
    pub(crate) fn record(&mut self, result: Result<(), Arc<str>>, rise: u32, fall: u32) -> bool {
        self.completed += 1;
        match (result, self.down.is_some()) {
            (Ok(()), false) => {
                self.streak = 0;
                false
            }
            (Err(_), true) => {
                // Still down: the reason stays the error that brought it down, so a
                // changing error text does not publish a snapshot per probe.
                self.streak = 0;
                false
            }
            (Ok(()), true) => {
                self.streak += 1;
                if self.streak >= rise {
                    self.down = None;
                    self.streak = 0;
                    true
                } else {
                    false
                }
            }
            (Err(error), false) => {
                self.streak += 1;
                if self.streak >= fall {
                    self.down = Some(error);
                    self.streak = 0;
                    true
                } else {
                    false
                }
            }
        }
    }
}

/// One backend's health, living as long as the backend.
#[derive(Debug)]
pub(crate) struct HealthCell {
    link: Option<Arc<HealthShared>>,
    pub(crate) admin: AtomicU8,
    /// Failures since the last success (or ejection, or return), in the low bits
    /// ([`STREAK`]); the top bit ([`TRIPPED`]) is set by the failure that reaches the
    /// consecutive-failure threshold and cleared by the evaluation it signals, which
    /// ejects on it even when a success has reset the count in between — a response
    /// the backend sent before it failed, read after the failures. The crossing
    /// decides, as in Envoy's outlier detector. One word, so that an ejection's end
    /// (`store(0)`) clears both at once: a failure from before it cannot trip it again.
    pub(crate) consecutive: AtomicU64,
    /// When the current ejection began and ends (ns since the epoch); `until` is 0 when
    /// not ejected.
    pub(crate) ejected_at: AtomicU64,
    pub(crate) ejected_until: AtomicU64,
    pub(crate) ejection_kind: AtomicU8,
    /// Ejections over the backend's life.
    pub(crate) ejections: AtomicU64,
    /// The ejection multiplier k.
    pub(crate) multiplier: AtomicU32,
    /// Totals at the start of the current outlier interval.
    pub(crate) base_successes: AtomicU64,
    pub(crate) base_failures: AtomicU64,
    /// When the current slow-start ramp began (ns since the epoch); 0 when not ramping.
    pub(crate) ramp_start: AtomicU64,
    pub(crate) probe: Mutex<ProbeState>,
    /// The verdict of the last published snapshot; `None` before the first.
    pub(crate) published: Mutex<Option<Verdict>>,
}

/// The failure count's bits in [`HealthCell::consecutive`].
pub(crate) const STREAK: u64 = !TRIPPED;
/// The latched threshold crossing's bit in [`HealthCell::consecutive`].
pub(crate) const TRIPPED: u64 = 1 << 63;

impl HealthCell {
    /// Failures since the last success (or ejection, or return).
    pub(crate) fn streak(&self) -> u64 {
        self.consecutive.load(Ordering::Relaxed) & STREAK
    }

    pub(crate) fn new(link: Option<Arc<HealthShared>>) -> Self {
        HealthCell {
            link,
            admin: AtomicU8::new(ADMIN_UP),
            consecutive: AtomicU64::new(0),
            ejected_at: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            ejection_kind: AtomicU8::new(0),
            ejections: AtomicU64::new(0),
            multiplier: AtomicU32::new(0),
            base_successes: AtomicU64::new(0),
            base_failures: AtomicU64::new(0),
            ramp_start: AtomicU64::new(0),
            probe: Mutex::new(ProbeState::default()),
            published: Mutex::new(None),
        }
    }

    /// Counts one outcome towards the consecutive-failure rule. Returns whether this
    /// failure is the one that reaches the threshold (the pool was signalled).
    ///
    /// This runs on every request completion, so a success writes only when there is a
    /// streak to reset, and a failure is one `fetch_add`.
    #[inline]
    pub(crate) fn record(&self, success: bool) -> bool {
        if success {
            // The run ends; a crossing it made stays for the evaluation.
            if self.consecutive.load(Ordering::Relaxed) & STREAK != 0 {
                self.consecutive.fetch_and(TRIPPED, Ordering::Relaxed);
            }
            return false;
        }
        let threshold = self.link.as_ref().map_or(0, |l| l.consecutive_threshold);
        // The count after this failure; it stops short of the latch bit.
        let bumped = |old: u64| ((old & STREAK) + 1).min(STREAK);
        // One read-modify-write: the count and its crossing change together, so an
        // ejection's end between them cannot leave a crossing from before it. (The
        // closure always returns `Some`: `Err` never happens.)
        let old = self
            .consecutive
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                let n = bumped(old);
                Some(if n == threshold {
                    n | TRIPPED
                } else {
                    (old & TRIPPED) | n
                })
            })
            .unwrap_or_else(|old| old);
        match &self.link {
            // Before the signal's Release, which publishes the latch to the evaluation.
            Some(link) if bumped(old) == threshold => {
                link.signal();
                true
            }
            _ => false,
        }
    }

    /// Whether a request dropped unfinished after `elapsed` counts as a failure (the
    /// pool's cancellation threshold; never for a backend outside a pool).
    pub(crate) fn cancel_is_failure(&self, elapsed: Duration) -> bool {
        self.link.as_ref().is_some_and(|link| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX) >= link.cancel_failure_ns
        })
    }

    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) != 0
    }

    pub(crate) fn ejection(&self) -> Option<Ejection> {
        if !self.is_ejected() {
            return None;
        }
        Some(match self.ejection_kind.load(Ordering::Relaxed) {
            1 => Ejection::SuccessRate,
            2 => Ejection::FailurePercentage,
            _ => Ejection::ConsecutiveFailures,
        })
    }

    pub(crate) fn set_ejection_kind(&self, kind: Ejection) {
        let code = match kind {
            Ejection::ConsecutiveFailures => 0,
            Ejection::SuccessRate => 1,
            Ejection::FailurePercentage => 2,
        };
        self.ejection_kind.store(code, Ordering::Relaxed);
    }

    /// The admin switch's verdict.
    pub(crate) fn admin_verdict(&self) -> Verdict {
        match self.admin.load(Ordering::Relaxed) {
            ADMIN_DRAIN => Verdict::Draining(Reason::Admin),
            ADMIN_DOWN => Verdict::Unhealthy(Reason::Admin),
            _ => Verdict::Healthy,
        }
    }

    /// Outlier detection's verdict.
    pub(crate) fn outlier_verdict(&self) -> Verdict {
        match self.ejection() {
            Some(kind) => Verdict::Unhealthy(Reason::Ejected(kind)),
            None => Verdict::Healthy,
        }
    }

    /// The active probes' verdict.
    pub(crate) fn probe_verdict(&self) -> Verdict {
        match &self.probe.lock().down {
            Some(error) => Verdict::Unhealthy(Reason::ProbeFailed {
                error: Arc::clone(error),
            }),
            None => Verdict::Healthy,
        }
    }
}
