//! [`InFlight`]: the RAII guard of one request on one backend.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::BackendState;
use crate::clock::{instant_at_nanos, nanos_since_epoch, now_nanos};

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
    /// Ended by the balancer's time-out: the outcome label is `timeout`.
    #[cfg(feature = "metrics")]
    timed_out: bool,
    /// The least duration the metrics record (the time-out's, on its own clock).
    #[cfg(feature = "metrics")]
    at_least: Duration,
}

impl InFlight {
    /// Tracking of a request on `state` that started at `started` (its in-flight count
    /// already raised).
    pub(super) fn new(state: Arc<BackendState>, started: u64) -> Self {
        InFlight {
            state,
            started,
            finished: false,
            #[cfg(feature = "metrics")]
            timed_out: false,
            #[cfg(feature = "metrics")]
            at_least: Duration::ZERO,
        }
    }

    /// When tracking started.
    pub fn started(&self) -> Instant {
        instant_at_nanos(self.started)
    }

    /// How long the request has been in flight, on the request clock.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(now_nanos().saturating_sub(self.started))
    }

    /// The request succeeded: counts it and feeds its latency to the estimate (in a
    /// pool that [tracks latency](crate::PoolBuilder::track_latency)).
    pub fn success(self) {
        self.finish_now(true);
    }

    /// The request failed: counts it, adds to the backend's failure score, and raises
    /// the latency estimate to its latency if that is higher (a fast failure is not a
    /// fast answer).
    pub fn failure(self) {
        self.finish_now(false);
    }

    /// Ends the request now; reads the clock only when something needs the end time
    /// (the latency estimate, the metrics' histogram, a failure's score). Returns
    /// whether the outcome crossed the consecutive-failure threshold.
    #[inline]
    pub(crate) fn finish_now(mut self, success: bool) -> bool {
        if self.state.needs_end_time() {
            return self.finish_at_nanos(success, now_nanos());
        }
        self.release();
        // A success needs no time; a failure's score decays from now.
        let at = if success { 0 } else { now_nanos() };
        self.state.record_outcome(success, None, at)
    }

    /// Ends the request now (fast clock); returns whether the outcome crossed the
    /// consecutive-failure threshold.
    pub(crate) fn finish_at_nanos(mut self, success: bool, end: u64) -> bool {
        self.release();
        let latency = Duration::from_nanos(end.saturating_sub(self.started));
        #[cfg(feature = "metrics")]
        if let Some(m) = self.state.metrics.get() {
            use super::metrics::Outcome;
            let outcome = match (self.timed_out, success) {
                (true, _) => Outcome::Timeout,
                (false, true) => Outcome::Success,
                (false, false) => Outcome::Failure,
            };
            m.finished(outcome, latency.max(self.at_least).as_secs_f64());
        }
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

impl InFlight {
    /// Finishes a request the balancer's time-out ended, `elapsed` after it began (on
    /// the timer's clock, which a test may pause): a failure, labelled `timeout` in the
    /// metrics, whose duration there is at least `elapsed`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_mut, unused_variables))]
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn time_out_at_nanos(mut self, end: u64, elapsed: Duration) -> bool {
        #[cfg(feature = "metrics")]
        {
            self.timed_out = true;
            self.at_least = elapsed;
        }
        self.finish_at_nanos(false, end)
    }
}

impl InFlight {
    /// Leaves the in-flight count — before the outcome is counted, so that
    /// [`BackendState::picks`] never counts a finishing request twice — and marks the
    /// request finished (dropping the guard then does nothing more).
    #[inline]
    fn release(&mut self) {
        self.finished = true;
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(m) = self.state.metrics.get() {
            m.ended();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.finished {
            self.release();
            let now = now_nanos();
            let elapsed = Duration::from_nanos(now.saturating_sub(self.started));
            #[cfg(feature = "metrics")]
            if let Some(m) = self.state.metrics.get() {
                m.finished(super::metrics::Outcome::Cancelled, elapsed.as_secs_f64());
            }
            // A failure past the threshold signals the pool like any other; the next
            // tick (or the tower service's next pick) publishes the ejection.
            self.state.record_cancel(elapsed, now);
        }
    }
}
