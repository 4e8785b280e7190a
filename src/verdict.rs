//! Health verdicts: one source's opinion of one backend, and why. A leaf module: the
//! snapshot stores verdicts, health's sources produce them, and neither imports the other
//! for it. Public as `tower_lb::health::{Verdict, Reason, Ejection}`.

use std::fmt;
use std::sync::Arc;

/// One source's opinion of one backend.
///
/// See the [health module docs](crate::health) for what each verdict means for picks and for the panic
/// threshold, and for how the verdicts of several sources combine.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Verdict {
    /// May receive traffic.
    #[default]
    Healthy,
    /// Should not receive traffic; the panic threshold may still route to it.
    Unhealthy(Reason),
    /// Receives no new traffic whatever happens; requests in flight finish.
    Draining(Reason),
}

impl Verdict {
    /// Whether this verdict allows new picks.
    pub fn is_healthy(&self) -> bool {
        matches!(self, Verdict::Healthy)
    }

    /// Whether this is [`Verdict::Draining`].
    pub fn is_draining(&self) -> bool {
        matches!(self, Verdict::Draining(_))
    }

    /// Whether this verdict reports a *confirmed* failure: a failed active probe, or an
    /// ejection for consecutive failures. While any backend is healthy, the panic
    /// threshold never routes to such a backend (see [`panic`](crate::health::panic)).
    pub fn is_confirmed_failure(&self) -> bool {
        matches!(
            self,
            Verdict::Unhealthy(
                Reason::ProbeFailed { .. } | Reason::Ejected(Ejection::ConsecutiveFailures)
            )
        )
    }

    /// Why the backend is not healthy, if it is not.
    pub fn reason(&self) -> Option<&Reason> {
        match self {
            Verdict::Healthy => None,
            Verdict::Unhealthy(reason) | Verdict::Draining(reason) => Some(reason),
        }
    }

    fn severity(&self) -> u8 {
        match self {
            Verdict::Healthy => 0,
            Verdict::Unhealthy(_) => 1,
            Verdict::Draining(_) => 2,
        }
    }

    /// The combination of two sources' verdicts: the stricter one (`Draining` over
    /// `Unhealthy` over `Healthy`); on a tie, `self`.
    ///
    /// # Examples
    ///
    /// ```
    /// use tower_lb::health::{Reason, Verdict};
    ///
    /// let down = Verdict::Unhealthy(Reason::Admin);
    /// assert_eq!(Verdict::Healthy.combine(down.clone()), down);
    /// let drain = Verdict::Draining(Reason::Admin);
    /// assert_eq!(down.combine(drain.clone()), drain);
    /// ```
    pub fn combine(self, other: Verdict) -> Verdict {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Healthy => f.write_str("healthy"),
            Verdict::Unhealthy(reason) => write!(f, "unhealthy ({reason})"),
            Verdict::Draining(reason) => write!(f, "draining ({reason})"),
        }
    }
}

/// Why a backend is not healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// Set through the admin switch ([`Pool::drain`](crate::Pool::drain),
    /// [`Pool::mark_down`](crate::Pool::mark_down)).
    Admin,
    /// Ejected by passive outlier detection.
    Ejected(Ejection),
    /// Failed the configured number of consecutive active probes (`fall`).
    ProbeFailed {
        /// The last probe's error.
        error: Arc<str>,
    },
    /// A [`HealthSource`](crate::health::HealthSource) of the user's, in its own words.
    Other(Arc<str>),
}

impl Reason {
    /// A reason in a source's own words.
    pub fn other(text: impl Into<Arc<str>>) -> Self {
        Reason::Other(text.into())
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Admin => f.write_str("set by admin"),
            Reason::Ejected(kind) => write!(f, "ejected: {kind}"),
            Reason::ProbeFailed { error } => write!(f, "probe failed: {error}"),
            Reason::Other(text) => f.write_str(text),
        }
    }
}

/// Which outlier-detection rule ejected a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ejection {
    /// Too many failures in a row.
    ConsecutiveFailures,
    /// A success rate far below the others' in one interval.
    SuccessRate,
    /// A failure percentage above the threshold in one interval.
    FailurePercentage,
}

impl fmt::Display for Ejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ejection::ConsecutiveFailures => "consecutive failures",
            Ejection::SuccessRate => "success rate outlier",
            Ejection::FailurePercentage => "failure percentage above threshold",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_takes_the_strictest_and_keeps_the_first_reason_on_ties() {
        let a = Verdict::Unhealthy(Reason::Admin);
        let b = Verdict::Unhealthy(Reason::other("b"));
        let d = Verdict::Draining(Reason::other("d"));
        assert_eq!(a.clone().combine(b.clone()), a);
        assert_eq!(b.clone().combine(a.clone()), b);
        assert_eq!(Verdict::Healthy.combine(Verdict::Healthy), Verdict::Healthy);
        assert_eq!(d.clone().combine(a.clone()), d);
        assert_eq!(a.combine(d.clone()), d);
        assert_eq!(d.to_string(), "draining (d)");
    }
}
