//! The crate's error types.
//!
//! Each error is small, names the component in its message and carries the data a caller
//! can act on (the bad value, the backend, how many backends were considered). Two live
//! beside the one type that makes them, so that no module depends back on this one:
//! [`WeightError`](crate::WeightError) (with `Weight`) and
//! [`UnknownStrategy`](crate::UnknownStrategy) (with `AnyPicker`).

use std::fmt;
use std::sync::Arc;

use crate::backend::{BackendId, WeightError};

/// A change to the backend set was refused; the set is left exactly as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// A backend with an equal address is already in the set.
    #[error("backend set: a backend with this address is already present as {existing}")]
    Duplicate {
        /// The backend already holding the address.
        existing: BackendId,
    },
    /// No backend with this id is in the set (it was never added or was removed).
    #[error("backend set: there is no backend {0}")]
    Unknown(BackendId),
    /// The weight was out of range.
    #[error("backend set: {0}")]
    Weight(#[from] WeightError),
}

/// No backend could be picked for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PickError {
    /// The backend set is empty.
    #[error("picker: the backend set is empty")]
    NoBackends,
    /// The set has backends but none of them may receive traffic.
    #[error("picker: none of the {total} backends is eligible")]
    NoEligible {
        /// How many backends the set holds.
        total: usize,
    },
    /// Too few backends are healthy and the pool's
    /// [`PanicThreshold`](crate::health::PanicThreshold) is set to fail closed.
    #[error(
        "picker: only {healthy} of {total} backends are healthy, below the panic threshold (failing closed)"
    )]
    PanicThreshold {
        /// Healthy backends.
        healthy: usize,
        /// Backends counted by the threshold (all but the draining ones).
        total: usize,
    },
}

/// A health setting was out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("health config: {setting} must be {expected}, got {got}")]
pub struct HealthConfigError {
    setting: &'static str,
    expected: &'static str,
    got: String,
}

impl HealthConfigError {
    pub(crate) fn new(
        setting: &'static str,
        expected: &'static str,
        got: impl fmt::Display,
    ) -> Self {
        HealthConfigError {
            setting,
            expected,
            got: got.to_string(),
        }
    }

    /// `percent` when it is at most 100, else the error naming `setting`.
    pub(crate) fn percent(setting: &'static str, percent: u8) -> Result<u8, Self> {
        if percent > 100 {
            return Err(HealthConfigError::new(setting, "at most 100", percent));
        }
        Ok(percent)
    }

    /// The setting that was refused.
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

/// An active health probe failed.
///
/// Equal when their messages are; the underlying error, when there is one (an
/// `io::Error` from the connect, a probing service's error), is its
/// [`source`](std::error::Error::source).
#[derive(Debug, Clone)]
pub struct ProbeError {
    message: Arc<str>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "probe: {}", self.message)
    }
}

impl std::error::Error for ProbeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The error itself, not the `Arc` around it, so that callers can downcast it.
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl PartialEq for ProbeError {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for ProbeError {}

impl ProbeError {
    /// A probe failure described by `message`.
    pub fn new(message: impl fmt::Display) -> Self {
        ProbeError {
            message: message.to_string().into(),
            source: None,
        }
    }

    /// A probe failure caused by `source`, described by its message.
    pub fn from_source(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let source: Box<dyn std::error::Error + Send + Sync> = source.into();
        ProbeError {
            message: source.to_string().into(),
            source: Some(Arc::from(source)),
        }
    }

    /// The failure's description.
    pub fn message(&self) -> &str {
        &self.message
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn into_message(self) -> Arc<str> {
        self.message
    }
}

impl From<std::io::Error> for ProbeError {
    /// Keeps the `io::Error` as the source.
    fn from(e: std::io::Error) -> Self {
        ProbeError::from_source(e)
    }
}

/// The background health task could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// Not called from within a tokio runtime.
    #[error("health task: no tokio runtime is running on this thread")]
    NoRuntime,
    /// The pool already has a health task; it runs until the pool is dropped or it is
    /// stopped.
    #[error("health task: this pool already has one")]
    AlreadyRunning,
}

/// A configuration value was refused; the message names the component and the value.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A Maglev table size that is not a prime in the accepted range.
    #[error("maglev: table size {size} must be a prime between {min} and {max}")]
    MaglevTableSize {
        /// The refused size.
        size: u64,
        /// The smallest accepted size.
        min: u64,
        /// The largest accepted size.
        max: u64,
    },
    /// A bounded-load balance factor below 1, infinite or not a number.
    #[error("bounded load: balance factor {factor} must be a finite number of at least 1")]
    BalanceFactor {
        /// The refused factor.
        factor: f64,
    },
    /// An aperture instance index not below the instance count.
    #[error("aperture: instance {instance} is not below the instance count {instances}")]
    ApertureInstance {
        /// The refused index.
        instance: u64,
        /// The instance count.
        instances: u64,
    },
    /// A ring coordinate outside offset ∈ [0, 1), width ∈ (0, 1], or not finite.
    #[error(
        "aperture: ring coordinate offset {offset}, width {width} must have offset in [0, 1) and width in (0, 1]"
    )]
    RingCoordinate {
        /// The refused offset.
        offset: f64,
        /// The refused width.
        width: f64,
    },
    /// A server-load error utilisation penalty that is negative, infinite or NaN.
    #[error(
        "server load: error utilization penalty {penalty} must be a finite number of at least 0"
    )]
    ErrorUtilizationPenalty {
        /// The refused penalty.
        penalty: f64,
    },
    /// An address prefix longer than the address.
    #[error("peer ip key: a /{bits} prefix is longer than the {max}-bit address")]
    PrefixLength {
        /// The refused prefix length.
        bits: u8,
        /// The address length in bits (32 or 128).
        max: u8,
    },
}

/// Every eligible backend is at its in-flight limit: the request was shed.
///
/// Carries what a caller needs to answer well: how loaded the set is and a hint for
/// `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "balance: overloaded, every one of {backends} eligible backends is at its limit of \
     {max_in_flight} in flight ({in_flight} committed)"
)]
#[non_exhaustive]
pub struct Overloaded {
    /// Requests in flight plus reservations through this balancer.
    pub in_flight: usize,
    /// The per-backend limit.
    pub max_in_flight: usize,
    /// Eligible backends.
    pub backends: usize,
    /// The quickest eligible backend's latency estimate, a hint for `Retry-After`.
    pub retry_after: Option<std::time::Duration>,
}

/// Service discovery failed; the backend set keeps its last membership.
#[derive(Debug, thiserror::Error)]
#[error("balance: service discovery failed: {source}")]
pub struct DiscoverError {
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl DiscoverError {
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn new(source: Box<dyn std::error::Error + Send + Sync>) -> Self {
        DiscoverError { source }
    }
}

/// A request's attempt on one backend took longer than the balancer's per-attempt
/// time-out ([`BalanceLayer::timeout`](crate::balance::BalanceLayer::timeout)); the
/// attempt was cancelled and counted as a failure of that backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "balance: {backend} did not answer within the {timeout:?} attempt time-out ({elapsed:?} elapsed)"
)]
pub struct TimedOut {
    /// The backend that did not answer.
    pub backend: BackendId,
    /// How long the attempt ran, on the request clock.
    pub elapsed: std::time::Duration,
    /// The configured per-attempt time-out.
    pub timeout: std::time::Duration,
}

/// The inner service's error for a request sent to `backend`, with the backend named.
///
/// [`Balance`](crate::balance::Balance) wraps every error of the service behind it in
/// one of these, so a caller (or a retry layer) knows which backend failed; the
/// original error is its [`source`](std::error::Error::source) and is found with
/// [`BackendError::downcast_ref`] or by walking the chain.
#[derive(Debug, thiserror::Error)]
#[error("balance: {backend} failed: {source}")]
pub struct BackendError {
    /// The backend the request was sent to.
    pub backend: BackendId,
    /// The inner service's error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl BackendError {
    /// The inner error as a `T`, if it is one.
    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        self.source.downcast_ref::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_probe_error_keeps_its_io_source() {
        let e = ProbeError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let source = e.source().expect("the io error is the source");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("an io::Error");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(e.to_string().starts_with("probe: "));
        assert_eq!(e, ProbeError::new(io.to_string()), "equal by message");
        assert!(ProbeError::new("x").source().is_none());
    }
}
