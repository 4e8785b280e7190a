//! The crate's clocks.
//!
//! - The **request clock** times requests on the hot path: nanoseconds since a
//!   process-wide epoch, read from `quanta`'s TSC clock (a few nanoseconds where
//!   `Instant::now` costs tens on virtual machines without a vDSO clock), kept in atomics.
//! - The **health clock** schedules ejections, intervals, ramps and probes: injectable
//!   ([`PoolBuilder::clock`](crate::PoolBuilder::clock)), tokio's when the `tokio` feature
//!   is on so that a paused test clock drives it, never read on the pick path.
//! - [`ManualClock`]: a health clock that moves only when told, for tests (governor's
//!   `FakeRelativeClock`).

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The process-wide origin of the nanosecond timestamps kept in atomics, and the
/// reading of the fast clock taken at the same moment.
struct Epoch {
    std: Instant,
    /// The fast clock, read directly (`quanta::Instant::now` goes through a thread-local
    /// that exists for mocking, a third of a read's cost).
    clock: quanta::Clock,
    /// Its raw reading (TSC ticks) at `std` plus the offset below.
    fast_raw: u64,
    fast_offset_ns: u64,
}

#[inline]
fn epoch_pair() -> &'static Epoch {
    static EPOCH: OnceLock<Epoch> = OnceLock::new();
    EPOCH.get_or_init(|| {
        let clock = quanta::Clock::new();
        let (now, fast_raw) = (Instant::now(), clock.raw());
        // Start the epoch in the past so that instants taken a little before the first
        // call (tests build their own) still land after it.
        let std = now
            .checked_sub(Duration::from_secs(3600))
            .or_else(|| now.checked_sub(Duration::from_secs(1)))
            .unwrap_or(now);
        let fast_offset_ns = u64::try_from(now.duration_since(std).as_nanos()).unwrap_or(0);
        Epoch {
            std,
            clock,
            fast_raw,
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
    // Raw ticks since the epoch, scaled once (zero if this core's TSC reads behind it).
    let since = e.clock.delta_as_nanos(e.fast_raw, e.clock.raw());
    e.fast_offset_ns.saturating_add(since)
}

/// The clock health runs on: when ejections end, probes are due, ramps progress.
#[derive(Clone)]
pub(crate) struct Clock(Arc<dyn Fn() -> Instant + Send + Sync>);

impl Clock {
    pub(crate) fn new(f: impl Fn() -> Instant + Send + Sync + 'static) -> Self {
        Clock(Arc::new(f))
    }

    /// `Instant::now`, read through tokio's clock when the `tokio` feature is on, so that
    /// a paused test clock applies (outside a runtime, or without tokio's `test-util`,
    /// tokio's clock *is* `Instant::now`).
    pub(crate) fn system() -> Self {
        #[cfg(feature = "tokio")]
        {
            Clock::new(|| tokio::time::Instant::now().into_std())
        }
        #[cfg(not(feature = "tokio"))]
        {
            Clock::new(Instant::now)
        }
    }

    pub(crate) fn now(&self) -> Instant {
        (self.0)()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// A clock that moves only when told: for tests of time-driven health (ejection times,
/// outlier intervals, slow-start ramps) without sleeping. Clones share one time.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tower_lb::clock::ManualClock;
/// use tower_lb::health::{OutlierDetection, Outcome};
/// use tower_lb::{PickContext, Pool, RoundRobin, Weight};
///
/// let clock = ManualClock::new();
/// let pool = Pool::<&str, _>::builder(RoundRobin::new())
///     .clock(clock.reader())
///     .outlier_detection(OutlierDetection::new().consecutive_failures(1).ejection_jitter(Duration::ZERO))
///     .build()?;
/// let bad = pool.insert("bad", Weight::ONE)?;
/// pool.insert("good", Weight::ONE)?;
/// pool.report(bad, Outcome::failure())?; // ejected for 30 s
/// clock.advance(Duration::from_secs(29));
/// pool.tick();
/// assert!(!pool.stats()[0].eligible);
/// clock.advance(Duration::from_secs(1));
/// pool.tick();
/// assert!(pool.stats()[0].eligible);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ManualClock(Arc<Mutex<Instant>>);

impl ManualClock {
    /// A clock standing at `Instant::now()`.
    pub fn new() -> Self {
        ManualClock(Arc::new(Mutex::new(Instant::now())))
    }

    /// The time it shows.
    pub fn now(&self) -> Instant {
        *self.0.lock()
    }

    /// Moves it forward by `by` (saturating far in the future).
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock();
        *now = now.checked_add(by).unwrap_or(*now);
    }

    /// A reader of this clock, for [`PoolBuilder::clock`](crate::PoolBuilder::clock).
    pub fn reader(&self) -> impl Fn() -> Instant + Send + Sync + 'static {
        let inner = Arc::clone(&self.0);
        move || *inner.lock()
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ManualClock").field(&self.now()).finish()
    }
}
