//! [`PoolBuilder`]: a pool's configuration.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::{Inner, Pool, Prepared, Writer};
use crate::backend::{DEFAULT_EWMA_DECAY, HealthShared};
use crate::clock::Clock;
use crate::error::ConfigError;
use crate::health::engine::{Engine, HealthConfig};
use crate::health::{OutlierDetection, PanicThreshold, SlowStart};
use crate::pick::Picker;
use crate::snapshot::Snapshot;

/// Configures a [`Pool`]. The address type `A` is inferred from how the pool is used.
pub struct PoolBuilder<A, P> {
    picker: P,
    decay: Duration,
    health: HealthConfig,
    clock: Option<Clock>,
    seed: Option<u64>,
    cancel_failure_after: Option<Duration>,
    track_latency: Option<bool>,
    #[cfg(feature = "metrics")]
    label: Option<Label<A>>,
    _addr: PhantomData<fn() -> A>,
}

/// How a backend is named in the metrics' `backend` label.
#[cfg(feature = "metrics")]
pub(crate) type Label<A> = Box<dyn Fn(&A) -> String + Send + Sync>;

/// The default of [`PoolBuilder::cancelled_as_failure_after`]: 100 ms.
pub const DEFAULT_CANCEL_FAILURE_AFTER: Duration = Duration::from_millis(100);

impl<A, P: fmt::Debug> fmt::Debug for PoolBuilder<A, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("picker", &self.picker)
            .field("decay", &self.decay)
            .field("health", &self.health)
            .field("track_latency", &self.track_latency)
            .finish_non_exhaustive()
    }
}

impl<A, P> PoolBuilder<A, P> {
    /// The decay window τ of every backend's peak-EWMA latency estimate (default 10 s; not
    /// zero).
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

    /// A request whose [`InFlight`](crate::InFlight) guard (or the tower service's response future) is
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

    /// How a backend is named in the `backend` label of the metrics (the `metrics`
    /// feature): by default its id (`backend#3`); an address's `to_string()` reads
    /// better. Called once per backend, when it is first published.
    ///
    /// ```
    /// use tower_lb::{Pool, RoundRobin};
    ///
    /// let pool = Pool::builder(RoundRobin::new())
    ///     .metrics_label(|addr: &std::net::SocketAddr| addr.to_string())
    ///     .build();
    /// # let _ = pool;
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics_label(mut self, label: impl Fn(&A) -> String + Send + Sync + 'static) -> Self {
        self.label = Some(Box::new(label));
        self
    }

    /// Whether the backends' latency estimates are kept: by default only when the
    /// picker reads them ([`Picker::reads_latency`]: [`PeakEwma`](crate::PeakEwma), or
    /// a hashing picker falling back to it). Keeping them costs a clock read at the end
    /// of every request and an update of the estimate; `true` keeps them for any picker
    /// — for [`BackendStats::ewma`](crate::BackendStats::ewma), or for the
    /// `Retry-After` hint of [`Overloaded`](crate::Overloaded) — and `false`
    /// drops them even for `PeakEwma` (which then sees every backend as unmeasured:
    /// give it [`PeakEwma::with_default_rtt`](crate::PeakEwma::with_default_rtt)).
    ///
    /// ```
    /// use tower_lb::{Pool, PowerOfTwoChoices, Weight};
    ///
    /// let pool = Pool::builder(PowerOfTwoChoices::new())
    ///     .track_latency(true)
    ///     .build()
    ///     .unwrap();
    /// let id = pool.insert("10.0.0.1:80", Weight::ONE).unwrap();
    /// let picked = pool.pick(&Default::default()).unwrap();
    /// picked.start().success();
    /// assert!(pool.stats().into_iter().find(|s| s.id == id).unwrap().ewma.is_some());
    /// ```
    pub fn track_latency(mut self, track: bool) -> Self {
        self.track_latency = Some(track);
        self
    }

    /// Makes health's random choices (ejection jitter) reproducible from `seed`.
    pub fn health_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Builds an empty pool, once every setting has been checked: the first one out of
    /// range is refused with a [`ConfigError`] naming its setter
    /// ([`ConfigError::setting`]). The defaults always pass.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lb::health::{OutlierDetection, SlowStart};
    /// use tower_lb::{Pool, RoundRobin};
    ///
    /// let refused = Pool::<&str, _>::builder(RoundRobin::new())
    ///     .outlier_detection(OutlierDetection::new().max_ejection_percent(150))
    ///     .slow_start(SlowStart::new(Duration::from_secs(30)))
    ///     .build();
    /// assert_eq!(
    ///     refused.unwrap_err().setting(),
    ///     "OutlierDetection::max_ejection_percent"
    /// );
    /// ```
    pub fn build(self) -> Result<Pool<A, P>, ConfigError>
    where
        P: Picker<A>,
    {
        if self.decay.is_zero() {
            return Err(ConfigError::Zero {
                setting: "PoolBuilder::ewma_decay",
            });
        }
        if let Some(outlier) = &self.health.outlier {
            outlier.check()?;
        }
        if let Some(slow_start) = &self.health.slow_start {
            slow_start.check()?;
        }
        Ok(self.assemble())
    }

    /// Builds the pool without checking: for settings known to be in range.
    pub(crate) fn assemble(self) -> Pool<A, P>
    where
        P: Picker<A>,
    {
        let snapshot = Snapshot::from_members(Vec::new(), 0);
        let table = self.picker.prepare(&snapshot, None);
        let track_latency = self
            .track_latency
            .unwrap_or_else(|| self.picker.reads_latency());
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
                    index: Default::default(),
                    observer: {
                        #[cfg_attr(not(feature = "metrics"), allow(unused_mut))]
                        let mut observer = super::observe::Observer::default();
                        #[cfg(feature = "metrics")]
                        {
                            observer.label = self.label;
                        }
                        observer
                    },
                }),
                decay: self.decay,
                shared: Arc::new(HealthShared::new(
                    threshold,
                    self.cancel_failure_after,
                    track_latency,
                )),
                clock: self.clock.unwrap_or_else(Clock::system),
                waiters: Default::default(),
            }),
        }
    }
}

impl<A, P: Picker<A>> Pool<A, P> {
    /// A builder for a pool picking with `picker`.
    pub fn builder(picker: P) -> PoolBuilder<A, P> {
        PoolBuilder {
            picker,
            decay: DEFAULT_EWMA_DECAY,
            health: HealthConfig::default(),
            clock: None,
            seed: None,
            cancel_failure_after: Some(DEFAULT_CANCEL_FAILURE_AFTER),
            track_latency: None,
            #[cfg(feature = "metrics")]
            label: None,
            _addr: PhantomData,
        }
    }
}
