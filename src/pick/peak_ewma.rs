//! Peak EWMA: power of two choices over latency × load.
//!
//! Each backend carries a peak-weighted moving average of its response times (see
//! [`BackendState::record_rtt`](crate::BackendState::record_rtt)): a sample above the
//! estimate replaces it at once, a sample below is blended in, and the estimate decays
//! towards zero while no sample arrives, over a window τ (default 10 s, set per pool with
//! [`PoolBuilder::ewma_decay`](crate::PoolBuilder::ewma_decay)). A pick draws two distinct
//! candidates as [`PowerOfTwoChoices`](super::PowerOfTwoChoices) does and takes the one
//! with the lower cost = estimate × (in-flight + 1) ÷ weight. This is the balancer of
//! Finagle, Linkerd and tower's `load::PeakEwma`.
//!
//! A backend with no sample yet follows Finagle's rule: cost 0 while nothing is in flight
//! on it (so a new backend is tried at once and never starved), a penalty above every
//! measured cost once a request is in flight (so it is not flooded before its first
//! answer tells how fast it is). [`PeakEwma::with_default_rtt`] replaces this with a fixed
//! guess, as tower does.

use std::time::{Duration, Instant};

use super::{Candidates, PickContext, Picker, p2c::p2c_pick};
use crate::backend::{Snapshot, nanos_since_epoch};
use crate::rng::RandomSource;

/// The cost of an unmeasured backend with requests in flight, per request in flight.
const PENALTY: f64 = 1e30;

/// P2C over peak-EWMA latency × (in-flight + 1). See the [`pick`](crate::pick) module docs.
#[derive(Debug)]
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

    /// The cost of the member at `index` at `now_ns`.
    #[inline]
    fn cost<A>(&self, snapshot: &Snapshot<A>, index: usize, now_ns: u64) -> f64 {
        let Some(backend) = snapshot.get(index) else {
            return f64::INFINITY;
        };
        let state = backend.state();
        let in_flight = state.in_flight() as f64;
        match state.rtt_nanos_at(now_ns).or(self.default_rtt) {
            Some(rtt) => rtt * (in_flight + 1.0),
            None if in_flight == 0.0 => 0.0,
            None => PENALTY * in_flight,
        }
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
        if snapshot.eligible().len() < 2 {
            return snapshot.eligible().first().map(|&i| i as usize);
        }
        let now_ns = nanos_since_epoch(ctx.now().unwrap_or_else(Instant::now));
        p2c_pick(table, &self.rng, snapshot, |i| {
            self.cost(snapshot, i, now_ns)
        })
    }
}
