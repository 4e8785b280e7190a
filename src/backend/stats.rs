//! Per-backend statistics, read from a snapshot and the live state.

use std::time::Duration;

use super::{BackendId, Weight};
use crate::verdict::Verdict;

/// A point-in-time reading of one backend, from [`Pool::stats`](crate::Pool::stats).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BackendStats<A> {
    /// The backend's id.
    pub id: BackendId,
    /// Its address.
    pub addr: A,
    /// Its configured weight.
    pub weight: Weight,
    /// Whether it may currently receive traffic.
    pub eligible: bool,
    /// Requests in flight.
    pub in_flight: usize,
    /// Requests sent to it: started (in flight, finished or dropped) or reported. See
    /// [`BackendState::picks`](crate::BackendState::picks).
    pub picks: u64,
    /// Requests finished successfully.
    pub successes: u64,
    /// Requests finished with a failure.
    pub failures: u64,
    /// The peak-EWMA latency estimate now, if any sample was taken. Samples are taken
    /// in a pool that tracks latency: by default one whose picker reads it
    /// ([`PeakEwma`](crate::PeakEwma)); any pool with
    /// [`PoolBuilder::track_latency`](crate::PoolBuilder::track_latency).
    pub ewma: Option<Duration>,
    /// The health verdict in the current snapshot.
    pub health: Verdict,
    /// The weight pickers use now (see [`Snapshot::effective_weight`](crate::Snapshot::effective_weight)).
    pub effective_weight: u32,
    /// While in slow start, the share of its weight the backend gets (0 to 1).
    pub ramp: Option<f64>,
    /// Times ejected by outlier detection over the backend's life.
    pub ejections: u64,
    /// While ejected, the time until it returns (at the latest).
    pub returns_in: Option<Duration>,
    /// Active probes completed on it.
    pub probes: u64,
}
