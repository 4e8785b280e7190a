//! Slow start: a backend that joins or recovers ramps up to its full weight.
//!
//! A backend that has just started (cold caches, JIT, connection pools) or just come back
//! from an ejection or a failed probe is flattened if it gets its full share at once.
//! During a window after it becomes healthy its effective weight is Envoy's
//!
//! ```text
//! w · max(min, (t / window)^(1 / aggression))
//! ```
//!
//! with `min` 10% and `aggression` 1 (linear) by default; aggression above 1 ramps
//! faster early, below 1 slower. Slow start is off unless a window is set. It re-enters
//! after *every* recovery — whenever a backend goes from not healthy (ejected, failed
//! probes, admin down or draining) to healthy — not only when it joins.
//!
//! Effective weights live in the snapshot, so every weight-using picker honours them.
//! While any backend ramps, [`Pool::tick`](crate::Pool::tick) republishes at most once per
//! update interval (default 1 s), and only when a weight changed. Weights are integers,
//! so while a ramp runs every effective weight is scaled by a common factor (up to 100,
//! see [`Snapshot::weight_scale`](crate::Snapshot::weight_scale)): ramps move in steps
//! of 1% of a backend's weight, and shares stay exact.
//!
//! Guarantee (tested): at sampled times the effective weight follows the formula to
//! within one step, and the recovering backend's share of picks grows with it.
//!
//! Source: Envoy's "Slow start mode" (load balancing overview, `SlowStartConfig`).

use std::time::Duration;

use crate::error::ConfigError;

/// Slow-start configuration. See the [module docs](self).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tower_lb::health::SlowStart;
///
/// let ramp = SlowStart::new(Duration::from_secs(60));
/// assert_eq!(ramp.factor(Duration::ZERO), 0.1); // the 10% floor
/// assert_eq!(ramp.factor(Duration::from_secs(30)), 0.5);
/// assert_eq!(ramp.factor(Duration::from_secs(60)), 1.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    window: Duration,
    aggression: f64,
    min_weight_percent: u8,
    update_interval: Duration,
}

impl SlowStart {
    /// Ramps over `window` (not zero), linearly from 10%, one step a second.
    pub fn new(window: Duration) -> Self {
        SlowStart {
            window,
            aggression: 1.0,
            min_weight_percent: 10,
            update_interval: Duration::from_secs(1),
        }
    }

    /// The ramp's shape (default 1.0, linear): finite and above zero.
    pub fn aggression(mut self, aggression: f64) -> Self {
        self.aggression = aggression;
        self
    }

    /// The weight a ramp starts from, in percent of the full weight (default 10): 1 to 100.
    pub fn min_weight_percent(mut self, percent: u8) -> Self {
        self.min_weight_percent = percent;
        self
    }

    /// How often weights are republished while a ramp runs (default 1 s; at least 10 ms).
    pub fn update_interval(mut self, interval: Duration) -> Self {
        self.update_interval = interval;
        self
    }

    /// Every setting in range; run by [`PoolBuilder::build`](crate::PoolBuilder::build).
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.window.is_zero() {
            return Err(ConfigError::Zero {
                setting: "SlowStart::new",
            });
        }
        ConfigError::positive("SlowStart::aggression", self.aggression)?;
        ConfigError::percent("SlowStart::min_weight_percent", self.min_weight_percent, 1)?;
        ConfigError::at_least(
            "SlowStart::update_interval",
            self.update_interval,
            Duration::from_millis(10),
        )
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    pub(crate) fn interval(&self) -> Duration {
        self.update_interval
    }

    /// The share of its weight a backend gets `elapsed` into its ramp:
    /// max(min, (t / window)^(1 / aggression)), and 1 from the end of the window on.
    pub fn factor(&self, elapsed: Duration) -> f64 {
        if elapsed >= self.window {
            return 1.0;
        }
        let t = elapsed.as_secs_f64() / self.window.as_secs_f64();
        let min = (f64::from(self.min_weight_percent) / 100.0).min(1.0);
        t.powf(1.0 / self.aggression).clamp(min, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factor_follows_envoys_formula() {
        let s = SlowStart::new(Duration::from_secs(100));
        assert_eq!(s.factor(Duration::from_secs(5)), 0.1);
        assert!((s.factor(Duration::from_secs(40)) - 0.4).abs() < 1e-12);
        let s = s.aggression(2.0);
        assert!((s.factor(Duration::from_secs(25)) - 0.5).abs() < 1e-12);
        assert_eq!(s.factor(Duration::from_secs(1000)), 1.0);
    }

    #[test]
    fn settings_are_checked_together() {
        let s = SlowStart::new(Duration::from_secs(100));
        assert_eq!(s.check(), Ok(()));
        let refused = |s: SlowStart| s.check().unwrap_err();
        assert_eq!(
            refused(SlowStart::new(Duration::ZERO)),
            ConfigError::Zero {
                setting: "SlowStart::new"
            }
        );
        for bad in [0.0, -1.0, f64::INFINITY, f64::NAN] {
            assert_eq!(
                refused(s.aggression(bad)).setting(),
                "SlowStart::aggression"
            );
        }
        assert_eq!(s.aggression(0.01).check(), Ok(()));
        for bad in [0, 101, 255] {
            assert_eq!(
                refused(s.min_weight_percent(bad)),
                ConfigError::Percent {
                    setting: "SlowStart::min_weight_percent",
                    percent: bad,
                    min: 1
                }
            );
        }
        assert_eq!(s.min_weight_percent(100).check(), Ok(()));
        let short = refused(s.update_interval(Duration::from_millis(9)));
        assert_eq!(short.setting(), "SlowStart::update_interval");
        assert_eq!(s.update_interval(Duration::from_millis(10)).check(), Ok(()));
        // An unchecked value never makes the formula panic.
        assert_eq!(s.min_weight_percent(255).factor(Duration::ZERO), 1.0);
    }
}
