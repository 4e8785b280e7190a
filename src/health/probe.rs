//! Active probes: ask each backend directly whether it is up.
//!
//! One background task per pool (see [`Pool::spawn_health_probes`](crate::Pool::spawn_health_probes))
//! probes every backend once per interval (default 5 s), each probe bounded by a timeout
//! (default 1 s). The next probe of a backend is due one interval after the previous one
//! began, moved by a uniform random jitter of up to ± the configured jitter (default
//! ± 500 ms), so that many balancers started together do not probe in lockstep. A new
//! backend gets its first probe at once.
//!
//! Verdicts follow HAProxy's rise/fall hysteresis: a backend starts healthy (HAProxy's
//! default `init-state`), turns unhealthy after `fall` consecutive failed probes
//! (default 3) and healthy again after `rise` consecutive successes (default 2); a single
//! result against the trend changes nothing. A probe that succeeds after an outlier
//! ejection began ends that ejection (see
//! [`OutlierDetection::uneject_on_probe_success`](super::OutlierDetection::uneject_on_probe_success)).
//!
//! Probes: [`TcpProbe`] (a TCP connect), `HttpProbe` (GET a path, 2xx/3xx healthy;
//! feature `http`), any closure through [`probe_fn`], any tower `Service` through
//! `ServiceProbe` (feature `tower`).
//!
//! Guarantee (tested against real listeners on 127.0.0.1): verdicts change only once
//! `rise`/`fall` consecutive results agree, and the intervals between one backend's
//! probes stay within interval ± jitter.
//!
//! Sources: HAProxy's `inter`, `rise`, `fall` and `spread-checks` (configuration manual,
//! section 5.2); Envoy's health checking overview (`interval_jitter`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::error::{ConfigError, ProbeError};
use crate::rng::RandomSource;

/// The future a [`Probe`] returns: `Ok` when the backend is up.
pub type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), ProbeError>> + Send + 'static>>;

/// One way of checking a backend at address `A`.
///
/// The returned future must not borrow the probe or the address (clone what it needs);
/// the task bounds it with the configured timeout, so it need not time out by itself.
pub trait Probe<A>: Send + Sync + 'static {
    /// Checks the backend at `addr`.
    fn probe(&self, addr: &A) -> ProbeFuture;
}

/// Probe configuration. See the [module docs](self).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tower_lb::health::ProbeConfig;
///
/// let config = ProbeConfig::new()
///     .interval(Duration::from_secs(2))
///     .jitter(Duration::from_millis(200))
///     .rise(3)
///     .fall(2);
/// assert_eq!(config.interval_bounds(), (Duration::from_millis(1800), Duration::from_millis(2200)));
/// ```
///
/// The settings are checked together when the probes are spawned
/// ([`Pool::spawn_health_probes`](crate::Pool::spawn_health_probes) refuses a zero rise or
/// fall, an interval under 1 ms or a jitter longer than the interval with
/// [`SpawnError::Config`](crate::health::SpawnError::Config)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    pub(crate) interval: Duration,
    pub(crate) jitter: Duration,
    pub(crate) timeout: Duration,
    pub(crate) rise: u32,
    pub(crate) fall: u32,
    pub(crate) seed: Option<u64>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            interval: Duration::from_secs(5),
            jitter: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            seed: None,
        }
    }
}

impl ProbeConfig {
    /// Interval 5 s, jitter ± 500 ms, timeout 1 s, rise 2, fall 3.
    pub fn new() -> Self {
        ProbeConfig::default()
    }

    /// Time between the starts of two probes of one backend (default 5 s; at least 1 ms,
    /// and at least the jitter — checked when the probes are spawned).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The most each interval is moved, either way (default 500 ms; at most the interval
    /// — checked when the probes are spawned).
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// How long a probe may take before it counts as failed (default 1 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Consecutive successes that make an unhealthy backend healthy (default 2; not 0).
    pub fn rise(mut self, rise: u32) -> Self {
        self.rise = rise;
        self
    }

    /// Consecutive failures that make a healthy backend unhealthy (default 3; not 0).
    pub fn fall(mut self, fall: u32) -> Self {
        self.fall = fall;
        self
    }

    /// Makes the jitter reproducible from `seed`.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The shortest and longest time between two probes of one backend.
    pub fn interval_bounds(&self) -> (Duration, Duration) {
        (
            self.interval.saturating_sub(self.jitter),
            self.interval.saturating_add(self.jitter),
        )
    }

    /// Every setting in range: the interval at least 1 ms and at least the jitter, rise
    /// and fall not zero.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        ConfigError::at_least(
            "ProbeConfig::interval",
            self.interval,
            Duration::from_millis(1),
        )?;
        if self.jitter > self.interval {
            return Err(ConfigError::JitterAboveInterval {
                jitter: self.jitter,
                interval: self.interval,
            });
        }
        if self.rise == 0 {
            return Err(ConfigError::Zero {
                setting: "ProbeConfig::rise",
            });
        }
        if self.fall == 0 {
            return Err(ConfigError::Zero {
                setting: "ProbeConfig::fall",
            });
        }
        Ok(())
    }

    /// One jittered interval: uniform in [interval − jitter, interval + jitter].
    pub(crate) fn next_delay(&self, rng: &RandomSource) -> Duration {
        let (low, high) = self.interval_bounds();
        let span = u64::try_from((high - low).as_nanos()).unwrap_or(u64::MAX);
        let offset = ((u128::from(rng.next_u64()) * (u128::from(span) + 1)) >> 64) as u64;
        low + Duration::from_nanos(offset)
    }
}

/// The built-in TCP probe: the backend is up when a TCP connection to it opens.
///
/// Works with any address tokio can connect to (`SocketAddr`, `"host:port"` strings,
/// `(IpAddr, u16)`); names are resolved at each probe.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpProbe {
    _private: (),
}

impl TcpProbe {
    /// A TCP connect probe.
    pub fn new() -> Self {
        TcpProbe::default()
    }
}

impl<A> Probe<A> for TcpProbe
where
    A: tokio::net::ToSocketAddrs + Clone + Send + Sync + 'static,
{
    fn probe(&self, addr: &A) -> ProbeFuture {
        let addr = addr.clone();
        Box::pin(async move {
            tokio::net::TcpStream::connect(addr).await?;
            Ok(())
        })
    }
}

/// A probe from a closure; see [`probe_fn`].
#[derive(Clone)]
pub struct ProbeFn<F> {
    f: F,
}

/// Makes a probe of a closure `Fn(&A) -> impl Future<Output = Result<(), ProbeError>>`.
///
/// # Examples
///
/// ```
/// use tower_lb::health::{ProbeError, probe_fn};
///
/// let probe = probe_fn(|addr: &String| {
///     let addr = addr.clone();
///     async move {
///         if addr.ends_with(":0") { Err(ProbeError::new("no port")) } else { Ok(()) }
///     }
/// });
/// # let _ = probe;
/// ```
pub fn probe_fn<F>(f: F) -> ProbeFn<F> {
    ProbeFn { f }
}

impl<F> fmt::Debug for ProbeFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeFn").finish_non_exhaustive()
    }
}

impl<A, F, Fut> Probe<A> for ProbeFn<F>
where
    F: Fn(&A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), ProbeError>> + Send + 'static,
{
    fn probe(&self, addr: &A) -> ProbeFuture {
        Box::pin((self.f)(addr))
    }
}

/// A probe from a tower `Service` taking the backend's address: the backend is up when
/// the service's response is `Ok`. The service is cloned for each probe.
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub struct ServiceProbe<S> {
    service: parking_lot::Mutex<S>,
}

#[cfg(feature = "tower")]
impl<S> ServiceProbe<S> {
    /// Probes with `service`.
    pub fn new(service: S) -> Self {
        ServiceProbe {
            service: parking_lot::Mutex::new(service),
        }
    }
}

#[cfg(feature = "tower")]
impl<S> fmt::Debug for ServiceProbe<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceProbe").finish_non_exhaustive()
    }
}

#[cfg(feature = "tower")]
impl<A, S> Probe<A> for ServiceProbe<S>
where
    A: Clone + Send + Sync + 'static,
    S: tower_service::Service<A> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: fmt::Display,
{
    fn probe(&self, addr: &A) -> ProbeFuture {
        let mut service = self.service.lock().clone();
        let addr = addr.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(ProbeError::new)?;
            service.call(addr).await.map(drop).map_err(ProbeError::new)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_bounds() {
        let config = ProbeConfig::new();
        let rng = RandomSource::seeded(3);
        let (low, high) = config.interval_bounds();
        let delays: Vec<Duration> = (0..1000).map(|_| config.next_delay(&rng)).collect();
        assert!(delays.iter().all(|d| (low..=high).contains(d)));
        // Spread over the range, not stuck at one end.
        assert!(delays.iter().any(|d| *d < config.interval));
        assert!(delays.iter().any(|d| *d > config.interval));
        let none = ProbeConfig::new().jitter(Duration::ZERO);
        assert_eq!(none.next_delay(&rng), Duration::from_secs(5));
    }

    #[test]
    fn settings_are_checked_together() {
        assert_eq!(ProbeConfig::new().check(), Ok(()));
        let zero = ProbeConfig::new().rise(0).check().unwrap_err();
        assert_eq!(zero.setting(), "ProbeConfig::rise");
        let zero = ProbeConfig::new().fall(0).check().unwrap_err();
        assert_eq!(zero.setting(), "ProbeConfig::fall");
        // Order does not matter: the jitter is compared with the final interval.
        let ms = Duration::from_millis;
        let late = ProbeConfig::new().jitter(ms(300)).interval(ms(200));
        assert_eq!(
            late.check(),
            Err(ConfigError::JitterAboveInterval {
                jitter: ms(300),
                interval: ms(200)
            })
        );
        assert_eq!(
            ProbeConfig::new().jitter(ms(100)).interval(ms(200)).check(),
            Ok(())
        );
        let short = ProbeConfig::new()
            .jitter(Duration::ZERO)
            .interval(Duration::from_micros(999));
        assert_eq!(
            short.check().unwrap_err().setting(),
            "ProbeConfig::interval"
        );
    }
}
