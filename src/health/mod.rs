//! Health: which backends may receive traffic, and with what weight.
//!
//! Health never runs on the pick path. Every source of health — the admin switch, passive
//! outlier detection, active probes, and any [`HealthSource`] of your own — leaves its
//! opinion in per-backend state that survives snapshot changes; a change of opinion makes
//! the [`Pool`](crate::Pool) publish a new [`Snapshot`](crate::Snapshot) whose eligible
//! set and effective weights already account for it. A pick reads that snapshot and
//! nothing else: no lock, no clock, no allocation added.
//!
//! # Verdicts and how sources combine
//!
//! Each source gives each backend a [`Verdict`]:
//!
//! | verdict | new picks | in panic mode (fail open) | counted by the panic threshold |
//! | --- | --- | --- | --- |
//! | [`Verdict::Healthy`] | yes | yes | as healthy |
//! | [`Verdict::Unhealthy`] | no | yes | as unhealthy |
//! | [`Verdict::Draining`] | no | no, never | not at all |
//!
//! A backend's verdict is the strictest of its sources' verdicts: `Draining` over
//! `Unhealthy` over `Healthy` (on a tie the first source's reason is kept, in the order
//! admin, outlier detection, probes, your sources). So a backend is eligible only when
//! every source allows it. Draining is the strictest because it is an operator's
//! promise — no new requests, in-flight requests finish, sticky sessions move — which
//! even the panic threshold keeps; an unhealthy backend is only believed unhealthy, and
//! the panic threshold may route to it when too few are healthy to carry the load.
//!
//! # The parts
//!
//! - the admin switch: [`Pool::drain`](crate::Pool::drain),
//!   [`Pool::mark_down`](crate::Pool::mark_down), [`Pool::mark_up`](crate::Pool::mark_up);
//! - passive outlier detection from reported outcomes: [`OutlierDetection`], fed by
//!   [`InFlight`](crate::InFlight) guards and [`Pool::report`](crate::Pool::report);
//! - active probes (feature `tokio`): `Probe`, `ProbeConfig`, `TcpProbe`, `HttpProbe`
//!   (feature `http`), run by `Pool::spawn_health`;
//! - the [`PanicThreshold`]: when too few backends are healthy, route across all of them
//!   (fail open) or refuse with [`PickError::PanicThreshold`](crate::PickError::PanicThreshold);
//! - [`SlowStart`]: a backend that joins or recovers ramps up to its full weight;
//! - your own sources: [`HealthSource`], added with
//!   [`Pool::add_health_source`](crate::Pool::add_health_source).
//!
//! Time-driven changes (ejections ending, outlier intervals, slow-start ramps) happen when
//! [`Pool::tick`](crate::Pool::tick) runs: call it yourself, or let the background task
//! (feature `tokio`) do it. Every transition is a `tracing` event on the target
//! `tower_lb::health` carrying the backend, the old and the new verdict and the reason.
//!
//! # Guarantees (checked by `tests/health/` and `tests/failures/`)
//!
//! - while the panic threshold is not crossed, no pick returns a backend whose verdict is
//!   not healthy, for every strategy;
//! - statistical outlier ejections never exceed the ejection cap; the only backend of a
//!   set is never ejected;
//! - a backend whose failure is confirmed (failed probes, consecutive failures while
//!   another backend answers) is never routed to while any backend is healthy — not by
//!   the ejection cap, not by the panic threshold ([`panic`](mod@panic) has the decision table);
//! - with N of M backends refusing (any N < M), every strategy fails at most 1% of
//!   requests from 0.5 s after the failure, without retries, under
//!   `OutlierDetection::new()`; a backend that hangs behind a caller's time-out is
//!   ejected (cancellations past 100 ms count as failures: see
//!   [`PoolBuilder::cancelled_as_failure_after`](crate::PoolBuilder::cancelled_as_failure_after));
//! - a draining backend gets no new pick, not even in panic mode.
//!
//! Failures also count as *load* in the load-aware pickers, before any ejection: see
//! [Failures are load](crate::pick#failures-are-load).

use std::time::{Duration, Instant};

use crate::backend::Backend;

mod ejection;
pub(crate) mod engine;
pub mod outlier;
pub mod panic;
pub mod slow_start;

#[cfg(all(feature = "http", feature = "tokio"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "http", feature = "tokio"))))]
pub mod http;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod probe;

#[allow(deprecated)]
pub use crate::error::HealthConfigError;
pub use crate::error::{ProbeError, SpawnError};
pub use crate::verdict::{Ejection, Reason, Verdict};
#[cfg(all(feature = "http", feature = "tokio"))]
pub use http::HttpProbe;
pub use outlier::{FailurePercentage, OutlierDetection, SuccessRate};
pub use panic::{PanicMode, PanicThreshold};
#[cfg(all(feature = "tower", feature = "tokio"))]
pub use probe::ServiceProbe;
#[cfg(feature = "tokio")]
pub use probe::{Probe, ProbeConfig, ProbeFn, ProbeFuture, TcpProbe, probe_fn};
pub use slow_start::SlowStart;

/// Anything with an opinion on backends' health: a service registry, a circuit breaker,
/// a readiness file.
///
/// The pool asks every source for every backend's verdict whenever it builds a snapshot
/// (on membership changes, on [`Pool::tick`](crate::Pool::tick), on admin and probe
/// changes) — never per pick. When a source's opinion changes, call
/// [`Pool::tick`](crate::Pool::tick) to publish it. `verdict` runs under the pool's
/// writer lock: it must be quick and must not call back into the pool.
///
/// Closures `Fn(&Backend<A>, Instant) -> Verdict` are sources.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use tower_lb::health::{Reason, Verdict};
/// use tower_lb::{PickContext, Pool, RoundRobin, Weight};
///
/// let pool = Pool::new(RoundRobin::new());
/// let a = pool.insert("a", Weight::ONE)?;
/// pool.insert("b", Weight::ONE)?;
///
/// let a_out = Arc::new(AtomicBool::new(false));
/// let flag = Arc::clone(&a_out);
/// pool.add_health_source(move |b: &tower_lb::Backend<&str>, _now| {
///     if b.id() == a && flag.load(Ordering::Relaxed) {
///         Verdict::Draining(Reason::other("registry: deregistered"))
///     } else {
///         Verdict::Healthy
///     }
/// });
///
/// a_out.store(true, Ordering::Relaxed);
/// pool.tick(); // publish the source's new opinion
/// for _ in 0..4 {
///     assert_eq!(*pool.pick(&PickContext::new())?.addr(), "b");
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait HealthSource<A>: Send + Sync {
    /// This source's verdict on `backend` at `now` (the pool's clock).
    fn verdict(&self, backend: &Backend<A>, now: Instant) -> Verdict;
}

impl<A, F> HealthSource<A> for F
where
    F: Fn(&Backend<A>, Instant) -> Verdict + Send + Sync,
{
    fn verdict(&self, backend: &Backend<A>, now: Instant) -> Verdict {
        self(backend, now)
    }
}

/// The outcome of one request, for [`Pool::report`](crate::Pool::report).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tower_lb::health::Outcome;
///
/// let ok = Outcome::success().with_latency(Duration::from_millis(12));
/// assert!(ok.is_success());
/// assert_eq!(ok.latency(), Some(Duration::from_millis(12)));
/// assert!(!Outcome::failure().is_success());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    success: bool,
    latency: Option<Duration>,
}

impl Outcome {
    /// The request succeeded.
    pub const fn success() -> Self {
        Outcome {
            success: true,
            latency: None,
        }
    }

    /// The request failed (a connection error, a 5xx, a timeout: what counts as a failure
    /// is the caller's call).
    pub const fn failure() -> Self {
        Outcome {
            success: false,
            latency: None,
        }
    }

    /// The same outcome with the request's latency, fed to the backend's peak-EWMA estimate.
    pub const fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = Some(latency);
        self
    }

    /// Whether the request succeeded.
    pub const fn is_success(&self) -> bool {
        self.success
    }

    /// The latency, if given.
    pub const fn latency(&self) -> Option<Duration> {
        self.latency
    }
}
