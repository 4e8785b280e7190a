//! Per-backend statistics, read from a snapshot and the live state.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{BackendId, Weight};
use crate::clock::nanos_since_epoch;
use crate::snapshot::Snapshot;
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
    /// Times picked.
    pub picks: u64,
    /// Requests finished successfully.
    pub successes: u64,
    /// Requests finished with a failure.
    pub failures: u64,
    /// The peak-EWMA latency estimate now, if any sample was taken.
    pub ewma: Option<Duration>,
    /// The health verdict in the current snapshot.
    pub health: Verdict,
    /// The weight pickers use now (see [`Snapshot::effective_weight`]).
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

impl<A: Clone> BackendStats<A> {
    /// Reads the member at `index`; `now` is the latency clock, `health_now` the pool's.
    pub(crate) fn read(
        snapshot: &Snapshot<A>,
        index: usize,
        now: Instant,
        health_now: Instant,
    ) -> Option<Self> {
        let b = snapshot.get(index)?;
        let s = &b.state;
        let h = &s.health;
        let until = h.ejected_until.load(Ordering::Relaxed);
        let now_ns = nanos_since_epoch(health_now);
        let effective_weight = snapshot.effective_weight(index);
        let full = f64::from(b.weight.get()) * f64::from(snapshot.weight_scale());
        let ramping =
            h.ramp_start.load(Ordering::Relaxed) != 0 && f64::from(effective_weight) < full;
        Some(BackendStats {
            id: b.id,
            addr: b.addr.clone(),
            weight: b.weight,
            eligible: snapshot.is_eligible(index),
            in_flight: s.in_flight(),
            picks: s.picks(),
            successes: s.successes(),
            failures: s.failures(),
            ewma: s.rtt_estimate(now),
            health: snapshot.verdict(index).cloned().unwrap_or_default(),
            effective_weight,
            ramp: ramping.then(|| f64::from(effective_weight) / full),
            ejections: h.ejections.load(Ordering::Relaxed),
            returns_in: (until != 0).then(|| Duration::from_nanos(until.saturating_sub(now_ns))),
            probes: h.probe.lock().completed,
        })
    }
}
