//! Peak EWMA: latency × load, over a random candidate and a remembered leader.
//!
//! Each backend carries a peak-weighted moving average of its response times (see
//! [`BackendState::record_rtt`](crate::BackendState::record_rtt)): a sample above the
//! estimate replaces it at once, a sample below is blended in, and the estimate decays
//! towards zero while no sample arrives, over a window τ (default 10 s, set per pool with
//! [`PoolBuilder::ewma_decay`](crate::PoolBuilder::ewma_decay)). A backend's cost is
//! estimate × (in-flight + 1) ÷ weight — the cost of Finagle's and Linkerd's `PeakEWMA`
//! and tower's `load::PeakEwma`.
//!
//! A pick compares two candidates: one drawn at random (uniformly, or in proportion to
//! the weights, as [`PowerOfTwoChoices`](crate::PowerOfTwoChoices) draws its first), and
//! the *leader* — the winner of an earlier pick, remembered in the table — and takes the
//! cheaper. While there is no leader, or the draw is the leader, a second random
//! candidate stands in for it (as in P2C). A draw that beats the leader becomes the
//! leader. Ties go to the draw, so the leader is taken only when strictly cheaper, and
//! idle (all-tie) picks still follow the weights.
//!
//! Why the leader: P2C alone sends a backend at most the picks it is drawn in, 2/n of
//! them, however fast it is, and every other pick to whichever of two random backends
//! is cheaper — so with backends whose latencies differ a hundredfold the slow ones get
//! a steady share, and the tail is theirs (tower's `tower-balance` workload: p99 about
//! 340 ms, the same as tower's own P2C Peak EWMA, against 62 ms for an exact
//! least-loaded scan). With the leader, the cheapest backend is a candidate in every
//! pick, so its load rises until its cost meets the next one's, as in an exact scan of
//! all costs, while the pick still reads two backends. This is "load balancing with
//! memory" (Mitzenmacher, Prabhakar and Shah, 2002), whose (1, 1) scheme — one random
//! choice and the best one remembered — is the one here: the paper shows it does better
//! than two random choices without memory. An earlier version compared two random
//! candidates *and* the leader: on the workloads of the simulator
//! (`cargo run --release --example simulate -- latency|failure|server-load`) the two
//! give the same tails (p99 7.9 vs 8.1 ms on `tower-balance`), and the third read made
//! the pick 2.5–3.4× P2C's; with two reads, and the decay of a fresh sample skipped (a
//! sample younger than τ/2048 is compared as is: its decay is under 0.05 %), it is
//! 0.9–1.4×. Prequal (Wydrowski et al., NSDI 2024) likewise keeps a pool of recent
//! measurements and picks the best of them rather than of a fresh pair. C3 (Suresh et
//! al., NSDI 2015) ranks by a cubic queue-size penalty; on workloads where latency does
//! not grow with load a cubic penalty pushes traffic onto slow backends, so the linear
//! (in-flight + 1) factor is kept.
//!
//! **Guarantees** (checked by `tests/pickers/` and `tests/proptests.rs`): the strictly
//! costlier candidate is never taken; a backend that is strictly the cheapest wins every
//! pick from the first one it is drawn in until another is cheaper (so, with costs fixed,
//! all but the first few picks); with two backends every pick takes the cheaper; cost is
//! monotone in latency and in load. The pick is O(1): two cost reads, and a shared write
//! (one atomic store, `Relaxed`: the leader is a hint, a stale read costs one
//! comparison) only when the lead changes. On the `tower-balance` workload in the
//! simulator (`cargo run --release --example simulate -- latency`), p99 is about 8 ms
//! against least loaded's 62 ms.
//!
//! Like an exact scan, the leader lets each balancer exploit the cheapest backend it
//! knows; across many independent balancers it is the latency estimate — which the peak
//! raises at the first slow answer — that spreads them.
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

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::p2c::Candidates;
use super::{PickContext, Picker};
use crate::clock::now_nanos;
use crate::rng::RandomSource;
use crate::snapshot::Snapshot;

/// The cost of an unmeasured backend with requests in flight, per request in flight.
const PENALTY: f64 = 1e30;

/// Peak-EWMA latency × (in-flight + 1), over a random candidate and the remembered
/// leader. See the [module docs](self).
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

    /// The cost in the common case — measured and no recent failure: estimate × (in
    /// flight + 1), ÷ weight unless every weight is the same (then dividing by it changes
    /// no comparison). `None` in every other case, which [`Parts::cost`] handles. Loads
    /// two atomics fewer and divides not at all where weights are equal.
    #[inline(always)]
    fn common_cost<A>(snapshot: &Snapshot<A>, index: usize, now_ns: u64) -> Option<f64> {
        let state = snapshot.get(index)?.state();
        if state.has_failure_score() {
            return None;
        }
        // (Through u32: one conversion instruction where u64 → f64 takes six.)
        let in_flight = f64::from(u32::try_from(state.in_flight()).unwrap_or(u32::MAX));
        let cost = state.rtt_nanos_for_pick(now_ns)? * (in_flight + 1.0);
        Some(if snapshot.uniform_weights() {
            cost
        } else {
            cost / f64::from(snapshot.effective_weight(index).max(1))
        })
    }

    /// Whether the member at `x` costs strictly less than the one at `y` (a failing
    /// one's estimate floored at the other's), given their common-case costs where
    /// known; `None` if either is not in the snapshot.
    #[inline(always)]
    fn cheaper<A>(
        &self,
        snapshot: &Snapshot<A>,
        (x, cx): (usize, Option<f64>),
        (y, cy): (usize, Option<f64>),
        now_ns: u64,
    ) -> Option<bool> {
        match (cx, cy) {
            (Some(cx), Some(cy)) => Some(cx < cy),
            _ => self.cheaper_in_parts(snapshot, x, y, now_ns),
        }
    }

    /// [`cheaper`](Self::cheaper) outside the common case: every part read.
    #[cold]
    #[inline(never)]
    fn cheaper_in_parts<A>(
        &self,
        snapshot: &Snapshot<A>,
        x: usize,
        y: usize,
        now_ns: u64,
    ) -> Option<bool> {
        let (px, py) = (
            self.parts(snapshot, x, now_ns)?,
            self.parts(snapshot, y, now_ns)?,
        );
        Some(px.cost(py.rtt) < py.cost(px.rtt))
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
    type Table = PeakEwmaTable;

    fn reads_latency(&self) -> bool {
        true
    }

    fn prepare(&self, snapshot: &Snapshot<A>, _: Option<&PeakEwmaTable>) -> PeakEwmaTable {
        PeakEwmaTable {
            candidates: Candidates::prepare(snapshot),
            leader: AtomicU32::new(NO_LEADER),
        }
    }

    #[inline]
    fn pick(
        &self,
        table: &PeakEwmaTable,
        snapshot: &Snapshot<A>,
        ctx: &PickContext,
    ) -> Option<usize> {
        let eligible = snapshot.eligible();
        let n = eligible.len();
        if n < 2 {
            return eligible.first().map(|&i| i as usize);
        }
        let now_ns = ctx.now_nanos().unwrap_or_else(now_nanos);
        // One random (or weighted) draw; the other candidate is the leader, or a
        // second draw while there is none (or it was drawn).
        // Relaxed: a hint; a stale value only costs one comparison.
        let (a, spare) = table.candidates.one_and_spare(self.rng.next_u64(), n);
        let leader = table.leader.load(Ordering::Relaxed) as usize;
        let other = if leader != a && leader < n {
            leader
        } else {
            spare
        };
        let (ia, io) = (*eligible.get(a)? as usize, *eligible.get(other)? as usize);
        let common = |i| Self::common_cost(snapshot, i, now_ns);
        // Ties go to `a`, itself a random (or weighted) draw, so idle picks follow the
        // draws (and the weights); the other is taken only when strictly cheaper.
        let (slot, index) = match self.cheaper(snapshot, (io, common(io)), (ia, common(ia)), now_ns)
        {
            Some(true) => (other, io),
            _ => (a, ia),
        };
        if slot != leader {
            // The winner beat the leader (or there was none): it leads from now on.
            // Written only when the lead changes, not on every pick.
            table.leader.store(slot as u32, Ordering::Relaxed);
        }
        Some(index)
    }
}

/// No leader yet (a fresh table).
const NO_LEADER: u32 = u32::MAX;

/// [`PeakEwma`]'s table: how candidates are drawn (as [`PowerOfTwoChoices`](crate::PowerOfTwoChoices)'s)
/// and the remembered leader. Built by [`Picker::prepare`]; opaque.
#[derive(Debug)]
pub struct PeakEwmaTable {
    candidates: Candidates,
    /// The eligible slot of the last pick's winner; `NO_LEADER` before the first pick.
    leader: AtomicU32,
}
