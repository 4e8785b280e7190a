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
//! Sources: Envoy's "Panic threshold" (load balancing overview), Finagle's
//! `panicMode` (`PanicMode.MajorityUnhealthy`).

use crate::error::HealthConfigError;

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
/// # Ok::<(), tower_lb::health::HealthConfigError>(())
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
    pub fn new(percent: u8) -> Result<Self, HealthConfigError> {
        if percent > 100 {
            return Err(HealthConfigError::new(
                "panic threshold percent",
                "at most 100",
                percent,
            ));
        }
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
