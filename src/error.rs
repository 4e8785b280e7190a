//! The crate's error types.
//!
//! Each error is small, names the component in its message and carries the data a caller
//! can act on (the bad value, the backend, how many backends were considered). Two live
//! beside the one type that makes them, so that no module depends back on this one:
//! [`WeightError`](crate::WeightError) (with `Weight`) and
//! [`UnknownStrategy`](crate::UnknownStrategy) (with `AnyPicker`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

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

/// The former name of [`ConfigError`], when health settings had an error of their own.
#[deprecated(
    since = "0.2.0",
    note = "merged into `ConfigError`: one error type for every refused setting"
)]
pub type HealthConfigError = ConfigError;

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
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// Not called from within a tokio runtime.
    #[error("health task: no tokio runtime is running on this thread")]
    NoRuntime,
    /// The pool already has a health task; it runs until the pool is dropped or it is
    /// stopped.
    #[error("health task: this pool already has one")]
    AlreadyRunning,
    /// The probe settings were refused.
    #[error("health task: {0}")]
    Config(#[from] ConfigError),
}

/// A setting was refused. One type for every setting of the crate; the message and
/// [`setting`](Self::setting) name the setter the value came through.
///
/// Where it is raised, by one policy: a value with no build step of its own — a picker,
/// a classifier, a key extractor, a probe — refuses a bad setting where it is given
/// (`Maglev::with_table_size`, `BoundedLoad::with_balance_factor`,
/// `ServerLoad::error_utilization_penalty`, `GrpcStatus::failure_code`,
/// `PeerIpKey::with_prefix`, `HttpProbe::new`, `PanicThreshold::new`), so an invalid one
/// cannot exist; settings chained on a builder are taken as given and checked together,
/// once, by the call that uses them — [`PoolBuilder::build`](crate::PoolBuilder::build)
/// for health settings, [`Pool::spawn_health_probes`](crate::Pool::spawn_health_probes)
/// for the probe schedule. Nothing is clamped silently.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
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
    /// A percentage outside `min..=100`.
    #[error("{setting}: {percent}% is outside {min}..=100%")]
    Percent {
        /// The setter, as `Type::method`.
        setting: &'static str,
        /// The refused percentage.
        percent: u8,
        /// The smallest accepted percentage.
        min: u8,
    },
    /// A count or a duration that must not be zero.
    #[error("{setting} must not be zero")]
    Zero {
        /// The setter, as `Type::method`.
        setting: &'static str,
    },
    /// A duration below the shortest the crate accepts for it.
    #[error("{setting}: {got:?} is shorter than the shortest accepted, {min:?}")]
    TooShort {
        /// The setter, as `Type::method`.
        setting: &'static str,
        /// The refused duration.
        got: Duration,
        /// The shortest accepted.
        min: Duration,
    },
    /// A factor that must be a finite number above zero.
    #[error("{setting} must be a finite number above 0, got {value}")]
    NotPositive {
        /// The setter, as `Type::method`.
        setting: &'static str,
        /// The refused value.
        value: f64,
    },
    /// A factor that must be a finite number of at least zero.
    #[error("{setting} must be a finite number of at least 0, got {value}")]
    Negative {
        /// The setter, as `Type::method`.
        setting: &'static str,
        /// The refused value.
        value: f64,
    },
    /// A probe jitter longer than the probe interval it moves.
    #[error("ProbeConfig::jitter: {jitter:?} is longer than the interval, {interval:?}")]
    JitterAboveInterval {
        /// The refused jitter.
        jitter: Duration,
        /// The interval it would move.
        interval: Duration,
    },
    /// An HTTP probe path that is not an absolute path with an optional query.
    #[error("HttpProbe::new: {path:?} is not an absolute path such as \"/healthz\"")]
    ProbePath {
        /// The refused path.
        path: String,
    },
    /// An HTTP probe `Host` that is not a valid `host[:port]`.
    #[error("HttpProbe::host: {host:?} is not a valid host[:port]")]
    ProbeHost {
        /// The refused host.
        host: String,
    },
    /// A gRPC status code outside 0..=16, or `OK` (0) made a failure.
    #[error("grpc status: code {code} cannot be set (a failure code is 1 to 16)")]
    GrpcCode {
        /// The refused code.
        code: i32,
    },
}

impl ConfigError {
    /// The setting that was refused, as `Type::method`.
    pub fn setting(&self) -> &'static str {
        match self {
            ConfigError::MaglevTableSize { .. } => "Maglev::with_table_size",
            ConfigError::BalanceFactor { .. } => "BoundedLoad::with_balance_factor",
            ConfigError::PrefixLength { .. } => "PeerIpKey::with_prefix",
            ConfigError::Percent { setting, .. }
            | ConfigError::Zero { setting }
            | ConfigError::TooShort { setting, .. }
            | ConfigError::NotPositive { setting, .. }
            | ConfigError::Negative { setting, .. } => setting,
            ConfigError::JitterAboveInterval { .. } => "ProbeConfig::jitter",
            ConfigError::ProbePath { .. } => "HttpProbe::new",
            ConfigError::ProbeHost { .. } => "HttpProbe::host",
            ConfigError::GrpcCode { .. } => "GrpcStatus::failure_code",
            ConfigError::ApertureInstance { .. } => "Aperture::new",
            ConfigError::RingCoordinate { .. } => "Aperture::from_coordinate",
            ConfigError::ErrorUtilizationPenalty { .. } => "ServerLoad::error_utilization_penalty",
        }
    }

    /// `percent` when it lies in `min..=100`, else the error naming `setting`.
    pub(crate) fn percent(setting: &'static str, percent: u8, min: u8) -> Result<(), Self> {
        if (min..=100).contains(&percent) {
            Ok(())
        } else {
            Err(ConfigError::Percent {
                setting,
                percent,
                min,
            })
        }
    }

    /// A finite `value` above zero, else the error naming `setting`.
    pub(crate) fn positive(setting: &'static str, value: f64) -> Result<(), Self> {
        if value.is_finite() && value > 0.0 {
            Ok(())
        } else {
            Err(ConfigError::NotPositive { setting, value })
        }
    }

    /// `got` when it is at least `min`, else the error naming `setting`.
    pub(crate) fn at_least(
        setting: &'static str,
        got: Duration,
        min: Duration,
    ) -> Result<(), Self> {
        if got.is_zero() && !min.is_zero() {
            Err(ConfigError::Zero { setting })
        } else if got < min {
            Err(ConfigError::TooShort { setting, got, min })
        } else {
            Ok(())
        }
    }
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
    /// The quickest eligible backend's latency estimate, a hint for `Retry-After`;
    /// `None` when no backend has one (a pool that does not
    /// [track latency](crate::PoolBuilder::track_latency) keeps none).
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
