//! Power of two choices over in-flight requests, with weights.
//!
//! Draw two *distinct* eligible members and send the request to the one with fewer
//! requests in flight per unit of weight. With n balls into n bins this keeps the fullest
//! bin at ln ln n / ln 2 + O(1) instead of random placement's ln n / ln ln n (Azar,
//! Broder, Karlin, Upfal, "Balanced allocations", STOC 1994; Mitzenmacher, "The power of
//! two choices in randomized load balancing", 2001). The property tests throw 100 000
//! balls into 100 000 bins and check a maximum of at most 6 — and that uniform random
//! placement exceeds it.
//!
//! Two departures from tower's `p2c`: candidates are distinct (drawing with replacement
//! sometimes "compares" a backend with itself, so the busier of two can be forced —
//! an Envoy issue), and weights count: with unequal weights the candidates are drawn in
//! proportion to weight (alias method) and compared by in-flight ÷ weight, so shares
//! follow the weights. O(1) per pick, nothing shared written.
//!
//! Failures are load: a backend's in-flight count is charged for its recent failures
//! as (in flight + 1) × 2^score − 1 (see the [`pick`](crate::pick) module docs), so a
//! backend that fails in microseconds — and so never has anything in flight — loses
//! every comparison with a healthy one from its first failures on, before any ejection.

use super::{Candidates, PickContext, Picker};
use crate::backend::{Snapshot, now_nanos};
use crate::rng::RandomSource;

/// Power of two choices over in-flight ÷ weight. See the [`pick`](crate::pick) module docs.
#[derive(Debug)]
pub struct PowerOfTwoChoices {
    rng: RandomSource,
}

impl PowerOfTwoChoices {
    /// A P2C picker drawing from a per-thread generator.
    pub fn new() -> Self {
        PowerOfTwoChoices {
            rng: RandomSource::Thread,
        }
    }

    /// A P2C picker whose draws are reproducible from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        PowerOfTwoChoices {
            rng: RandomSource::seeded(seed),
        }
    }
}

impl Default for PowerOfTwoChoices {
    fn default() -> Self {
        PowerOfTwoChoices::new()
    }
}

/// Picks by power of two choices, `cost(slot)` giving a comparable cost per eligible member
/// as a (numerator, weight) pair compared by cross-multiplication.
#[inline]
pub(crate) fn p2c_pick<A, C, F>(
    candidates: &Candidates,
    rng: &RandomSource,
    snapshot: &Snapshot<A>,
    cost: F,
) -> Option<usize>
where
    C: std::ops::Mul<Output = C> + PartialOrd + From<u32>,
    F: Fn(usize) -> C,
{
    let eligible = snapshot.eligible();
    match eligible.len() {
        0 => None,
        1 => Some(eligible[0] as usize),
        n => {
            let (a, b) = candidates.two(rng, n);
            let (a, b) = (*eligible.get(a)? as usize, *eligible.get(b)? as usize);
            if snapshot.uniform_weights() {
                // Ties go to `a`, itself a random (or weighted) draw.
                return Some(if cost(b) < cost(a) { b } else { a });
            }
            let wa = C::from(snapshot.effective_weight(a));
            let wb = C::from(snapshot.effective_weight(b));
            // cost(b)/wb < cost(a)/wa without division.
            Some(if cost(b) * wa < cost(a) * wb { b } else { a })
        }
    }
}

impl<A> Picker<A> for PowerOfTwoChoices {
    type Table = Candidates;

    fn prepare(&self, snapshot: &Snapshot<A>, _: Option<&Candidates>) -> Candidates {
        Candidates::prepare(snapshot)
    }

    #[inline]
    fn pick(&self, table: &Candidates, snapshot: &Snapshot<A>, ctx: &PickContext) -> Option<usize> {
        let now = || ctx.now_nanos().unwrap_or_else(now_nanos);
        p2c_pick(table, &self.rng, snapshot, |i| {
            snapshot
                .get(i)
                .map_or(f64::INFINITY, |b| b.state().load_with(now))
        })
    }
}
