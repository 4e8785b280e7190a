//! Peak EWMA: power of two choices over latency × load.
//!
//! Each backend carries a peak-weighted moving average of its response times (see
//! [`BackendState::record_rtt`](crate::BackendState::record_rtt)): a sample above the
//! estimate replaces it at once, a sample below is blended in, and the estimate decays
//! towards zero while no sample arrives, over a window τ (default 10 s, set per pool with
//! [`PoolBuilder::ewma_decay`](crate::PoolBuilder::ewma_decay)). A pick draws two distinct
//! candidates as [`PowerOfTwoChoices`](crate::PowerOfTwoChoices) does and takes the one
//! with the lower cost = estimate × (in-flight + 1) ÷ weight. This is the balancer of
//! Finagle, Linkerd and tower's `load::PeakEwma`.
//!
//! A backend with no sample yet follows Finagle's rule: cost 0 while nothing is in flight
//! on it (so a new backend is tried at once and never starved), a penalty above every
//! measured cost once a request is in flight (so it is not flooded before its first
//! answer tells how fast it is). [`PeakEwma::with_default_rtt`] replaces this with a fixed
//! guess, as tower does.
//!
//! Failures are cost: the cost is multiplied by 2^score, the backend's recent-failure
//! score (see the [`pick`](crate::pick) module docs), and a failing backend's estimate
//! is taken to be at least its rival's — a backend that fails in microseconds would
//! otherwise look like the fastest of all (tower's and Finagle's Peak EWMA both fall for
//! it: a failure's latency is a sample like any other). A failure's latency only raises
//! the estimate, never lowers it.

use std::time::Duration;

use super::p2c::Candidates;
use super::{PickContext, Picker};
use crate::clock::now_nanos;
use crate::rng::RandomSource;
use crate::snapshot::Snapshot;

/// The cost of an unmeasured backend with requests in flight, per request in flight.
const PENALTY: f64 = 1e30;

/// P2C over peak-EWMA latency × (in-flight + 1). See the [`pick`](crate::pick) module docs.
#[derive(Debug, Clone)]
pub struct PeakEwma {
    rng: RandomSource,
    default_rtt: Option<f64>,
}

impl PeakEwma {
    /// A Peak-EWMA picker drawing from a per-thread generator.
    pub fn new() -> Self {
        PeakEwma {
            rng: RandomSource::Thread,
            default_rtt: None,
        }
    }

    /// A Peak-EWMA picker whose draws are reproducible from `seed`.
    ///
    /// A clone of a seeded picker continues from the original's state: it makes the
    /// same draws the original would make next, then each advances on its own.
    pub fn with_seed(seed: u64) -> Self {
        PeakEwma {
            rng: RandomSource::seeded(seed),
            default_rtt: None,
        }
    }

    /// Uses `rtt` as the estimate of backends with no sample yet, instead of Finagle's
    /// "one request at a time until measured" rule.
    pub fn with_default_rtt(mut self, rtt: Duration) -> Self {
        self.default_rtt = Some(rtt.as_nanos() as f64);
        self
    }

    /// What the cost of the member at `index` at `now_ns` is made of: the latency
    /// estimate (`None`: unmeasured), in flight, and the failure factor 2^score.
    #[inline]
    fn parts<A>(&self, snapshot: &Snapshot<A>, index: usize, now_ns: u64) -> Option<Parts> {
        let state = snapshot.get(index)?.state();
        Some(Parts {
            rtt: state.rtt_nanos_at(now_ns).or(self.default_rtt),
            in_flight: state.in_flight() as f64,
            failures: state.failure_factor_at(|| now_ns),
            weight: f64::from(snapshot.effective_weight(index).max(1)),
        })
    }
}

/// One candidate's cost, in parts.
#[derive(Clone, Copy)]
struct Parts {
    rtt: Option<f64>,
    in_flight: f64,
    failures: f64,
    weight: f64,
}

impl Parts {
    /// estimate × (in flight + 1) × 2^score ÷ weight, where a failing backend's estimate
    /// is at least its rival's (`floor`): its own latency, measured on failures that came
    /// back in microseconds, says nothing about how fast it answers.
    #[inline]
    fn cost(self, floor: Option<f64>) -> f64 {
        let rtt = match (self.rtt, floor) {
            (Some(own), Some(floor)) if self.failures > 1.0 => own.max(floor),
            (None, Some(floor)) if self.failures > 1.0 => floor,
            (rtt, _) => rtt.unwrap_or(-1.0),
        };
        if rtt < 0.0 {
            // Unmeasured: Finagle's rule.
            return if self.in_flight == 0.0 {
                0.0
            } else {
                PENALTY * self.in_flight
            };
        }
        rtt * (self.in_flight + 1.0) * self.failures / self.weight
    }
}

impl Default for PeakEwma {
    fn default() -> Self {
        PeakEwma::new()
    }
}

impl<A> Picker<A> for PeakEwma {
    type Table = Candidates;

    fn prepare(&self, snapshot: &Snapshot<A>, _: Option<&Candidates>) -> Candidates {
        Candidates::prepare(snapshot)
    }

    #[inline]
    fn pick(&self, table: &Candidates, snapshot: &Snapshot<A>, ctx: &PickContext) -> Option<usize> {
        let eligible = snapshot.eligible();
        let n = eligible.len();
        if n < 2 {
            return eligible.first().map(|&i| i as usize);
        }
        let now_ns = ctx.now_nanos().unwrap_or_else(now_nanos);
        let (a, b) = table.two(&self.rng, n);
        let (a, b) = (*eligible.get(a)? as usize, *eligible.get(b)? as usize);
        let (Some(pa), Some(pb)) = (
            self.parts(snapshot, a, now_ns),
            self.parts(snapshot, b, now_ns),
        ) else {
            return Some(a);
        };
        // Ties go to `a`, itself a random (or weighted) draw.
        Some(if pb.cost(pa.rtt) < pa.cost(pb.rtt) {
            b
        } else {
            a
        })
    }
}
