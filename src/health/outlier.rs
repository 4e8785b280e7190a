//! Passive outlier detection: eject backends whose real traffic fails.
//!
//! Callers report each request's outcome ([`InFlight`](crate::InFlight) guards do it when
//! finished with `success()`/`failure()`, or [`Pool::report`](crate::Pool::report)). Three
//! rules eject a backend, with Envoy's defaults:
//!
//! - **consecutive failures** (5): ejected as soon as the n-th failure in a row is seen
//!   ([`Pool::report`](crate::Pool::report) publishes at once; a guard signals the
//!   background task, or the next [`Pool::tick`](crate::Pool::tick));
//! - **success rate** (every interval, 10 s): among backends with at least 100 requests in
//!   the interval, and only when there are at least 5 such, eject those whose success
//!   rate is below mean − 1.9 × standard deviation, worst first;
//! - **failure percentage** (off by default): among backends with at least 50 requests in
//!   the interval, and at least 5 such, eject those failing 85% or more, worst first.
//!
//! An ejected backend stays out for min(base × k, max(base, cap)), base 30 s, cap 300 s,
//! where k counts its ejections and comes down by one after each interval it spends
//! ejection-free (k stops growing once the cap is reached, so coming back down does not
//! take longer than going up), plus a random jitter (3 s at most by default) so that
//! backends ejected together do not return together. It returns at the first
//! [`Pool::tick`](crate::Pool::tick) after that time, or earlier when an active probe
//! succeeds after the ejection began (as Envoy's `successful_active_health_check_uneject_host`;
//! switch off with [`OutlierDetection::uneject_on_probe_success`]).
//!
//! **The ejection cap** (10% of the set) is counted *after* the ejection: a backend is
//! ejected only if the number ejected, itself included, stays within
//! max(1, ⌊n × 10%⌋) for a set of n ≥ 2 — so a burst of failures cannot empty the set, a
//! set of 2 to 9 can still eject its one bad backend (Envoy's percentage rounds to zero
//! there), and the only backend of a set is never ejected. When the set shrinks under
//! the ejected count, the backends closest to their return come back first.
//!
//! **Confirmed failures pass the cap.** A backend that reaches the consecutive-failure
//! threshold while another backend *answers* (is not ejected and its last outcome was a
//! success) is ejected even past the cap: the cap exists to survive a broken network or
//! caller that makes every backend fail, and a peer answering at the same moment proves
//! this failure is the backend's own. So with 2 of 3 (or 9 of 10) backends refusing, all
//! of them leave rotation within their first five failures each (`tests/failures/`).
//! When everything fails, nobody answers and the cap holds as before. Such an ejection
//! is also never ended early when the set shrinks.
//!
//! Guarantee (property-tested): under any sequence of outcomes, ticks and membership
//! changes, the success-rate and failure-percentage ejections stay within the cap, and
//! the set is never ejected whole (unless the cap is 100%).
//!
//! Sources: Envoy's outlier detection (architecture overview and the `OutlierDetection`
//! proto), gRPC's proposal A50 "Outlier Detection Support", whose interval algorithm this
//! follows step by step.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::error::ConfigError;

/// Passive outlier detection's configuration. See the [module docs](self).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tower_lb::health::{FailurePercentage, OutlierDetection};
/// use tower_lb::{Pool, RoundRobin};
///
/// let detection = OutlierDetection::new()
///     .consecutive_failures(3)
///     .base_ejection_time(Duration::from_secs(10))
///     .failure_percentage(Some(FailurePercentage::new()));
/// let pool: Pool<&str, _> = Pool::<&str, _>::builder(RoundRobin::new())
///     .outlier_detection(detection)
///     .build()?;
/// # let _ = pool;
/// # Ok::<(), tower_lb::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    pub(crate) interval: Duration,
    pub(crate) base_ejection_time: Duration,
    pub(crate) max_ejection_time: Duration,
    pub(crate) ejection_jitter: Duration,
    pub(crate) max_ejection_percent: u8,
    pub(crate) consecutive_failures: Option<NonZeroU32>,
    pub(crate) success_rate: Option<SuccessRate>,
    pub(crate) failure_percentage: Option<FailurePercentage>,
    pub(crate) uneject_on_probe_success: bool,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            ejection_jitter: Duration::from_secs(3),
            max_ejection_percent: 10,
            consecutive_failures: NonZeroU32::new(5),
            success_rate: Some(SuccessRate::new()),
            failure_percentage: None,
            uneject_on_probe_success: true,
        }
    }
}

impl OutlierDetection {
    /// Envoy's defaults: 5 consecutive failures, success rate at 1.9 σ over ≥ 5 backends
    /// with ≥ 100 requests, failure percentage off, interval 10 s, base ejection 30 s,
    /// cap 300 s, jitter up to 3 s, at most 10% ejected (at least one of n ≥ 2).
    pub fn new() -> Self {
        OutlierDetection::default()
    }

    /// How often the success-rate and failure-percentage rules run, and ejection
    /// multipliers come down (default 10 s; at least 1 ms).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The first ejection's length; the k-th lasts k times this, up to the cap
    /// (default 30 s; at least 1 ms).
    pub fn base_ejection_time(mut self, base: Duration) -> Self {
        self.base_ejection_time = base;
        self
    }

    /// The longest ejection, jitter aside, unless the base is longer (default 300 s).
    pub fn max_ejection_time(mut self, max: Duration) -> Self {
        self.max_ejection_time = max;
        self
    }

    /// The most random time added to each ejection (default 3 s; zero for none).
    pub fn ejection_jitter(mut self, jitter: Duration) -> Self {
        self.ejection_jitter = jitter;
        self
    }

    /// The most backends ejected at once, in percent of the set, counted after the
    /// ejection; a set of n ≥ 2 may always eject one (default 10; at most 100).
    pub fn max_ejection_percent(mut self, percent: u8) -> Self {
        self.max_ejection_percent = percent;
        self
    }

    /// Eject after this many failures in a row (default 5); 0 turns the rule off.
    ///
    /// The failure that completes the run decides: a success read after it (a response
    /// the backend sent before it failed) resets the count but does not undo the
    /// ejection, as in Envoy's detector. A success before it breaks the run.
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.consecutive_failures = NonZeroU32::new(failures);
        self
    }

    /// The success-rate rule, or `None` to turn it off (on by default).
    pub fn success_rate(mut self, rule: Option<SuccessRate>) -> Self {
        self.success_rate = rule;
        self
    }

    /// The failure-percentage rule, or `None` to turn it off (off by default).
    pub fn failure_percentage(mut self, rule: Option<FailurePercentage>) -> Self {
        self.failure_percentage = rule;
        self
    }

    /// Whether an active probe that succeeds after an ejection began ends it early
    /// (default true, as Envoy). With only a TCP probe, a backend that accepts
    /// connections but fails requests then returns at the next probe: turn this off, or
    /// probe with [`HttpProbe`](crate::health) on a path that exercises the service.
    pub fn uneject_on_probe_success(mut self, uneject: bool) -> Self {
        self.uneject_on_probe_success = uneject;
        self
    }

    /// The length of an ejection with multiplier `k` (≥ 1), before jitter:
    /// min(base × k, max(base, cap)).
    pub fn ejection_time(&self, k: u32) -> Duration {
        let ceiling = self.base_ejection_time.max(self.max_ejection_time);
        self.base_ejection_time
            .checked_mul(k.max(1))
            .map_or(ceiling, |t| t.min(ceiling))
    }

    /// The multiplier past which ejections stop growing: ⌈max(base, cap) ÷ base⌉.
    pub(crate) fn max_multiplier(&self) -> u32 {
        let base = self.base_ejection_time.as_nanos().max(1);
        let ceiling = self
            .max_ejection_time
            .max(self.base_ejection_time)
            .as_nanos();
        u32::try_from(ceiling.div_ceil(base))
            .unwrap_or(u32::MAX)
            .max(1)
    }

    /// How many of `n` backends may be ejected at once.
    pub fn ejection_cap(&self, n: usize) -> usize {
        ejection_cap(n, self.max_ejection_percent)
    }

    /// Every setting in range, the rules' included; run by
    /// [`PoolBuilder::build`](crate::PoolBuilder::build).
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        let ms = Duration::from_millis(1);
        ConfigError::at_least("OutlierDetection::interval", self.interval, ms)?;
        ConfigError::at_least(
            "OutlierDetection::base_ejection_time",
            self.base_ejection_time,
            ms,
        )?;
        ConfigError::percent(
            "OutlierDetection::max_ejection_percent",
            self.max_ejection_percent,
            0,
        )?;
        if let Some(rule) = &self.success_rate {
            let factor = rule.stdev_factor;
            if !factor.is_finite() || factor < 0.0 {
                return Err(ConfigError::Negative {
                    setting: "SuccessRate::stdev_factor",
                    value: factor,
                });
            }
        }
        if let Some(rule) = &self.failure_percentage {
            ConfigError::percent("FailurePercentage::threshold", rule.threshold, 0)?;
        }
        Ok(())
    }
}

/// max(1, ⌊n × percent / 100⌋) for n ≥ 2, and 0 for a set of 0 or 1.
pub(crate) fn ejection_cap(n: usize, percent: u8) -> usize {
    if n < 2 {
        return 0;
    }
    (n.saturating_mul(usize::from(percent)) / 100).clamp(1, n)
}

/// The success-rate rule (Envoy's and gRPC A50's defaults: 1.9 σ, 5 backends, 100 requests).
#[derive(Debug, Clone, PartialEq)]
pub struct SuccessRate {
    pub(crate) stdev_factor: f64,
    pub(crate) minimum_hosts: usize,
    pub(crate) request_volume: u64,
}

impl Default for SuccessRate {
    fn default() -> Self {
        SuccessRate {
            stdev_factor: 1.9,
            minimum_hosts: 5,
            request_volume: 100,
        }
    }
}

/// The two settings the success-rate and failure-percentage rules share: how many
/// backends must have enough requests, and how many are enough.
macro_rules! volume_gate {
    ($volume:literal) => {
        /// The rule runs only when at least this many backends have enough requests
        /// (default 5).
        pub fn minimum_hosts(mut self, hosts: usize) -> Self {
            self.minimum_hosts = hosts;
            self
        }

        #[doc = concat!("Requests a backend needs in an interval to be judged (default ", stringify!($volume), ").")]
        pub fn request_volume(mut self, requests: u64) -> Self {
            self.request_volume = requests;
            self
        }
    };
}

impl SuccessRate {
    /// The defaults.
    pub fn new() -> Self {
        SuccessRate::default()
    }

    /// Eject below mean − `factor` × σ (default 1.9; finite and at least 0).
    pub fn stdev_factor(mut self, factor: f64) -> Self {
        self.stdev_factor = factor;
        self
    }

    volume_gate!(100);
}

/// The failure-percentage rule (Envoy's defaults: 85%, 5 backends, 50 requests).
#[derive(Debug, Clone, PartialEq)]
pub struct FailurePercentage {
    pub(crate) threshold: u8,
    pub(crate) minimum_hosts: usize,
    pub(crate) request_volume: u64,
}

impl Default for FailurePercentage {
    fn default() -> Self {
        FailurePercentage {
            threshold: 85,
            minimum_hosts: 5,
            request_volume: 50,
        }
    }
}

impl FailurePercentage {
    /// The defaults.
    pub fn new() -> Self {
        FailurePercentage::default()
    }

    /// Eject at this failure percentage or above (default 85; at most 100).
    pub fn threshold(mut self, percent: u8) -> Self {
        self.threshold = percent;
        self
    }

    volume_gate!(50);
}

/// One backend's requests in an interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    pub(crate) index: usize,
    pub(crate) successes: u64,
    pub(crate) total: u64,
}

impl Sample {
    fn success_rate(&self) -> f64 {
        self.successes as f64 / self.total as f64
    }
}

/// The success-rate outliers among `samples`, worst first (gRPC A50, step 3).
pub(crate) fn success_rate_outliers(rule: &SuccessRate, samples: &[Sample]) -> Vec<usize> {
    let judged: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.total > 0 && s.total >= rule.request_volume)
        .collect();
    if judged.is_empty() || judged.len() < rule.minimum_hosts {
        return Vec::new();
    }
    let n = judged.len() as f64;
    let mean = judged.iter().map(|s| s.success_rate()).sum::<f64>() / n;
    let variance = judged
        .iter()
        .map(|s| (s.success_rate() - mean).powi(2))
        .sum::<f64>()
        / n;
    let threshold = mean - rule.stdev_factor * variance.sqrt();
    let mut out: Vec<(f64, usize)> = judged
        .iter()
        .filter(|s| s.success_rate() < threshold)
        .map(|s| (s.success_rate(), s.index))
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    out.into_iter().map(|(_, i)| i).collect()
}

/// The failure-percentage outliers among `samples`, worst first (gRPC A50, step 4).
pub(crate) fn failure_percentage_outliers(
    rule: &FailurePercentage,
    samples: &[Sample],
) -> Vec<usize> {
    let judged: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.total > 0 && s.total >= rule.request_volume)
        .collect();
    if judged.is_empty() || judged.len() < rule.minimum_hosts {
        return Vec::new();
    }
    let mut out: Vec<(u128, usize)> = judged
        .iter()
        .filter_map(|s| {
            let failures = u128::from(s.total - s.successes.min(s.total));
            // failures / total ≥ threshold / 100, without floating point.
            (failures * 100 >= u128::from(rule.threshold) * u128::from(s.total))
                .then_some((failures * 1_000_000 / u128::from(s.total), s.index))
        })
        .collect();
    out.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    out.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(index: usize, successes: u64, total: u64) -> Sample {
        Sample {
            index,
            successes,
            total,
        }
    }

    #[test]
    fn ejection_time_grows_linearly_to_the_cap() {
        let d = OutlierDetection::new();
        let secs: Vec<u64> = (1..=12).map(|k| d.ejection_time(k).as_secs()).collect();
        assert_eq!(
            secs,
            [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]
        );
        assert_eq!(d.max_multiplier(), 10);
        // A cap below the base: the base wins.
        let d = d.max_ejection_time(Duration::from_secs(5));
        assert_eq!(d.ejection_time(3), Duration::from_secs(30));
        assert_eq!(d.max_multiplier(), 1);
    }

    #[test]
    fn cap_allows_one_from_two_and_none_from_one() {
        assert_eq!(ejection_cap(0, 10), 0);
        assert_eq!(ejection_cap(1, 100), 0);
        for n in 2..=19 {
            assert_eq!(ejection_cap(n, 10), 1, "n = {n}");
        }
        assert_eq!(ejection_cap(20, 10), 2);
        assert_eq!(ejection_cap(10, 50), 5);
        assert_eq!(ejection_cap(10, 0), 1);
    }

    #[test]
    fn success_rate_needs_enough_hosts_and_volume() {
        let rule = SuccessRate::new();
        let mut s: Vec<Sample> = (0..4).map(|i| sample(i, 100, 100)).collect();
        s.push(sample(4, 10, 100));
        // Five judged backends: the bad one is out.
        assert_eq!(success_rate_outliers(&rule, &s), vec![4]);
        // Four with volume: nothing is judged.
        s[0].total = 99;
        s[0].successes = 99;
        assert!(success_rate_outliers(&rule, &s).is_empty());
        // Everyone equal: σ = 0, nobody is strictly below the mean.
        let same: Vec<Sample> = (0..6).map(|i| sample(i, 90, 100)).collect();
        assert!(success_rate_outliers(&rule, &same).is_empty());
    }

    #[test]
    fn failure_percentage_is_inclusive_and_worst_first() {
        let rule = FailurePercentage::new();
        let mut s: Vec<Sample> = (0..5).map(|i| sample(i, 50, 50)).collect();
        s[1] = sample(1, 15, 100); // 85% failures: at the threshold
        s[3] = sample(3, 0, 60); // 100%
        s[2] = sample(2, 16, 100); // 84%
        assert_eq!(failure_percentage_outliers(&rule, &s), vec![3, 1]);
    }

    #[test]
    fn bad_values_are_refused_with_the_value() {
        let with_rate = |rule| OutlierDetection::new().success_rate(Some(rule));
        let err = with_rate(SuccessRate::new().stdev_factor(f64::NAN))
            .check()
            .unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
        assert_eq!(err.setting(), "SuccessRate::stdev_factor");
        assert_eq!(
            with_rate(SuccessRate::new().stdev_factor(0.0)).check(),
            Ok(())
        );
        let err = OutlierDetection::new()
            .max_ejection_percent(101)
            .check()
            .unwrap_err();
        assert!(err.to_string().contains("101"), "{err}");
        assert_eq!(err.setting(), "OutlierDetection::max_ejection_percent");
        let err = OutlierDetection::new()
            .failure_percentage(Some(FailurePercentage::new().threshold(200)))
            .check()
            .unwrap_err();
        assert_eq!(err.setting(), "FailurePercentage::threshold");
        for (detection, setting) in [
            (
                OutlierDetection::new().interval(Duration::ZERO),
                "OutlierDetection::interval",
            ),
            (
                OutlierDetection::new().base_ejection_time(Duration::from_micros(999)),
                "OutlierDetection::base_ejection_time",
            ),
        ] {
            assert_eq!(detection.check().unwrap_err().setting(), setting);
        }
        assert_eq!(OutlierDetection::new().check(), Ok(()));
    }
}
