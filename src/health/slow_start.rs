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

use crate::error::HealthConfigError;

/// Slow-start configuration. See the [module docs](self).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tower_lb::health::SlowStart;
///
/// let ramp = SlowStart::new(Duration::from_secs(60))?;
/// assert_eq!(ramp.factor(Duration::ZERO), 0.1); // the 10% floor
/// assert_eq!(ramp.factor(Duration::from_secs(30)), 0.5);
/// assert_eq!(ramp.factor(Duration::from_secs(60)), 1.0);
/// # Ok::<(), tower_lb::health::HealthConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    window: Duration,
    aggression: f64,
    min_weight_percent: u8,
    update_interval: Duration,
}

impl SlowStart {
    /// Ramps over `window` (which must not be zero), linearly from 10%.
    pub fn new(window: Duration) -> Result<Self, HealthConfigError> {
        if window.is_zero() {
            return Err(HealthConfigError::new(
                "slow start window",
                "longer than zero",
                "0s",
            ));
        }
        Ok(SlowStart {
            window,
            aggression: 1.0,
            min_weight_percent: 10,
            update_interval: Duration::from_secs(1),
        })
    }

    /// The ramp's shape (default 1.0, linear): finite and above zero.
    pub fn aggression(mut self, aggression: f64) -> Result<Self, HealthConfigError> {
        if !aggression.is_finite() || aggression <= 0.0 {
            return Err(HealthConfigError::new(
                "slow start aggression",
                "finite and above 0",
                aggression,
            ));
        }
        self.aggression = aggression;
        Ok(self)
    }

    /// The weight a ramp starts from, in percent of the full weight (default 10): 1 to 100.
    pub fn min_weight_percent(mut self, percent: u8) -> Result<Self, HealthConfigError> {
        if !(1..=100).contains(&percent) {
            return Err(HealthConfigError::new(
                "slow start minimum weight percent",
                "between 1 and 100",
                percent,
            ));
        }
        self.min_weight_percent = percent;
        Ok(self)
    }

    /// How often weights are republished while a ramp runs (default 1 s; at least 10 ms).
    pub fn update_interval(mut self, interval: Duration) -> Self {
        self.update_interval = interval.max(Duration::from_millis(10));
        self
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
        let min = f64::from(self.min_weight_percent) / 100.0;
        t.powf(1.0 / self.aggression).clamp(min, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factor_follows_envoys_formula() {
        let s = SlowStart::new(Duration::from_secs(100)).unwrap();
        assert_eq!(s.factor(Duration::from_secs(5)), 0.1);
        assert!((s.factor(Duration::from_secs(40)) - 0.4).abs() < 1e-12);
        let s = s.aggression(2.0).unwrap();
        assert!((s.factor(Duration::from_secs(25)) - 0.5).abs() < 1e-12);
        assert_eq!(s.factor(Duration::from_secs(1000)), 1.0);
        assert!(SlowStart::new(Duration::ZERO).is_err());
        assert!(s.aggression(0.0).is_err());
        assert!(s.min_weight_percent(0).is_err());
    }
}
