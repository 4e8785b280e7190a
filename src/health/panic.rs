//! The panic threshold: what to do when too few backends are healthy.
//!
//! When fewer than the threshold's share (default 50%, as Envoy and Finagle) of the
//! backends in service are healthy, the health verdicts are probably wrong — or right,
//! and the few healthy backends would drown under the whole load. Failing *open*
//! (the default) then routes across every backend in service, healthy or not, as Envoy
//! does; failing *closed* refuses picks with
//! [`PickError::PanicThreshold`](crate::PickError::PanicThreshold) so the caller can shed
//! load instead. Draining backends are out of service: they are not counted and never
//! routed to. A threshold of 0 disables the rule (only healthy backends are picked, down
//! to none). Each flip into or out of panic is a `tracing` warning.
//!
//! **Confirmed failures stay out.** A backend whose failure is *confirmed* — it failed
//! its active probes, or was ejected for consecutive failures (see
//! [`Verdict::is_confirmed_failure`](super::Verdict::is_confirmed_failure)) — is, while
//! at least one backend is healthy, neither counted by the threshold nor routed to in
//! panic: the safety valve exists for a broken health signal (a probe path that is
//! wrong everywhere, a flaky network marking everything down), and a signal that still
//! calls some backends healthy is not broken for the ones it calls dead. Backends that
//! are only *suspected* (success-rate or failure-percentage outliers, `mark_down`, your
//! own sources' `Unhealthy`) still count and are still routed to in panic, as before.
//!
//! # The decision table
//!
//! With n backends in service (not draining), h healthy, c confirmed failed, s suspected
//! (n = h + c + s), threshold t:
//!
//! | situation | tower-lb (fail open, default) | fail closed | Envoy | gRPC (A50 outlier detection) |
//! | --- | --- | --- | --- | --- |
//! | h ≥ t · (n − c) | the h healthy | the h healthy | panic if h < t · n: all n | the non-ejected |
//! | 0 < h < t · (n − c) | the h healthy and the s suspected | refuse: [`PickError::PanicThreshold`](crate::PickError::PanicThreshold) | all n | the non-ejected |
//! | h = 0 | all n, confirmed failures included | refuse, at once | all n | the non-ejected (ejections capped at 10%) |
//!
//! Where we differ and why: Envoy's panic counts every unhealthy host, so two of three
//! backends that fail their health checks put both back into rotation — a third of the
//! traffic fails for as long as they are down. We treat a confirmed failure as out of
//! service while something healthy remains, and keep Envoy's panic for what it is for: a
//! majority merely suspected, or nothing healthy left. gRPC has no panic threshold; its
//! outlier detection caps ejections at `max_ejection_percent` (10%) instead, which with
//! two of three backends down keeps one of them in rotation — we let consecutive-failure
//! ejections pass the cap while another backend answers (see [`outlier`](super::outlier)).
//!
//! Sources: Envoy's "Panic threshold" (load balancing overview), Finagle's
//! `panicMode` (`PanicMode.MajorityUnhealthy`), gRPC proposal A50.

use crate::error::ConfigError;

/// What a pick does while the panic threshold is crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PanicMode {
    /// Route across every backend in service, healthy or not (Envoy's behaviour).
    #[default]
    FailOpen,
    /// Refuse with [`PickError::PanicThreshold`](crate::PickError::PanicThreshold).
    FailClosed,
}

/// The panic threshold. See the [module docs](self).
///
/// # Examples
///
/// ```
/// use tower_lb::health::{PanicMode, PanicThreshold};
///
/// let t = PanicThreshold::new(30)?.mode(PanicMode::FailClosed);
/// assert_eq!(t.percent(), 30);
/// assert_eq!(PanicThreshold::default().percent(), 50);
/// assert!(PanicThreshold::new(101).is_err());
/// # Ok::<(), tower_lb::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PanicThreshold {
    percent: u8,
    mode: PanicMode,
}

impl Default for PanicThreshold {
    fn default() -> Self {
        PanicThreshold {
            percent: 50,
            mode: PanicMode::FailOpen,
        }
    }
}

impl PanicThreshold {
    /// Panic when fewer than `percent`% of the backends in service are healthy; fail open.
    /// `percent` above 100 is refused.
    pub fn new(percent: u8) -> Result<Self, ConfigError> {
        ConfigError::percent("PanicThreshold::new", percent, 0)?;
        Ok(PanicThreshold {
            percent,
            mode: PanicMode::FailOpen,
        })
    }

    /// Never panic: only healthy backends are picked, even when none is left.
    pub fn disabled() -> Self {
        PanicThreshold {
            percent: 0,
            mode: PanicMode::FailOpen,
        }
    }

    /// The same threshold with another mode.
    pub fn mode(mut self, mode: PanicMode) -> Self {
        self.mode = mode;
        self
    }

    /// The threshold in percent.
    pub fn percent(&self) -> u8 {
        self.percent
    }

    /// The mode.
    pub fn panic_mode(&self) -> PanicMode {
        self.mode
    }

    /// Whether `healthy` of `in_service` backends is below the threshold.
    pub fn is_crossed(&self, healthy: usize, in_service: usize) -> bool {
        in_service > 0 && (healthy as u128) * 100 < u128::from(self.percent) * in_service as u128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossing_is_strictly_below() {
        let t = PanicThreshold::default();
        assert!(t.is_crossed(1, 3));
        assert!(!t.is_crossed(2, 4));
        assert!(t.is_crossed(0, 1));
        assert!(!t.is_crossed(0, 0));
        assert!(!PanicThreshold::disabled().is_crossed(0, 5));
        assert!(PanicThreshold::new(100).unwrap().is_crossed(4, 5));
    }
}
