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

use super::weighted_random::AliasTable;
use super::{PickContext, Picker};
use crate::clock::now_nanos;
use crate::rng::RandomSource;
use crate::snapshot::Snapshot;
use crate::stable_hash::GAMMA;

/// Power of two choices over in-flight ÷ weight. See the [`pick`](crate::pick) module docs.
#[derive(Debug, Clone)]
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
    ///
    /// A clone of a seeded picker continues from the original's state: it makes the
    /// same draws the original would make next, then each advances on its own.
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

/// The table of the two-choice pickers ([`PowerOfTwoChoices`] and
/// [`PeakEwma`](crate::PeakEwma)): how two distinct candidates are drawn among the
/// eligible members — uniformly when all weights are equal, else in proportion to the
/// weights (alias method) — sampling without replacement, so a backend is never compared
/// with itself. Built by [`Picker::prepare`]; opaque.
#[derive(Debug, Clone)]
pub struct Candidates {
    draw: Draw,
}

#[derive(Debug, Clone)]
enum Draw {
    /// Every eligible member equally likely (all weights equal).
    Uniform,
    /// Members drawn in proportion to their weights.
    Weighted(AliasTable),
}

impl Candidates {
    pub(crate) fn prepare<A>(snapshot: &Snapshot<A>) -> Self {
        let draw = if snapshot.uniform_weights() {
            Draw::Uniform
        } else {
            Draw::Weighted(AliasTable::over_eligible(snapshot))
        };
        Candidates { draw }
    }

    /// Two distinct eligible slots (positions in the eligible list); `n >= 2`.
    #[inline]
    pub(crate) fn two(&self, rng: &RandomSource, n: usize) -> (usize, usize) {
        // Two members are drawn in a random order like any other pair: the first
        // candidate wins ties, so a fixed (0, 1) would send every tie to the first.
        match &self.draw {
            Draw::Weighted(alias) if alias.len() == n => weighted_pair(alias, rng, n),
            // Uniform, or a weighted table from another snapshot: stay correct.
            _ => uniform_pair(rng.next_u64(), n),
        }
    }

    /// One eligible slot (a position in the eligible list) drawn from `r` as
    /// [`two`](Self::two) draws its first — uniformly from `r`'s high half, or in
    /// proportion to the weights — and a second one, distinct, uniform over the n − 1
    /// others, for when no better second candidate is at hand; `n >= 2`.
    #[inline]
    pub(crate) fn one_and_spare(&self, r: u64, n: usize) -> (usize, usize) {
        match &self.draw {
            Draw::Weighted(alias) if alias.len() == n => {
                let a = alias.sample(r);
                // The alias draw read both halves of `r`: the spare's half comes from a
                // multiply that mixes them.
                (a, other_than(a, r.wrapping_mul(GAMMA) >> 32, n))
            }
            _ => uniform_pair(r, n),
        }
    }
}

/// Two distinct slots drawn in proportion to the weights of `alias` (over `n >= 2`
/// members). Kept out of line: the uniform case, inlined into the pick, then needs
/// none of this path's registers.
#[inline(never)]
fn weighted_pair(alias: &AliasTable, rng: &RandomSource, n: usize) -> (usize, usize) {
    let (r1, r2) = rng.next_pair();
    let a = alias.sample(r1);
    let b = alias.sample(r2);
    if b != a {
        return (a, b);
    }
    // Redraw a few times for a distinct second candidate; past that (one member holds
    // nearly all the weight) take another member uniformly.
    for _ in 0..3 {
        let b = alias.sample(rng.next_u64());
        if b != a {
            return (a, b);
        }
    }
    (a, other_than(a, rng.next_u64() >> 32, n))
}

/// Two distinct positions in `0..n` (`n >= 2`) from one draw: the first from the high
/// half, the second from the low half over the n − 1 others.
#[inline]
fn uniform_pair(r: u64, n: usize) -> (usize, usize) {
    let a = (((r >> 32) * n as u64) >> 32) as usize;
    (a, other_than(a, r & 0xFFFF_FFFF, n))
}

/// A position in `0..n` other than `a` (`n >= 2`), uniform over the n − 1 others as
/// `low` (below 2^32) is over its range.
#[inline]
fn other_than(a: usize, low: u64, n: usize) -> usize {
    let b = ((low * (n as u64 - 1)) >> 32) as usize;
    if b >= a { b + 1 } else { b }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Random words at the edges of both halves, and a thousand spread over the range.
    fn words() -> impl Iterator<Item = u64> {
        [
            0u64,
            u64::MAX,
            0x1234_5678_9ABC_DEF0,
            1 << 32,
            (1 << 32) - 1,
        ]
        .into_iter()
        .chain((0..1000).map(|k: u64| k.wrapping_mul(GAMMA)))
    }

    #[test]
    fn one_and_spare_is_distinct_and_in_range() {
        for weighted in [false, true] {
            for n in [2usize, 3, 8, 1000] {
                let snapshot = Snapshot::build((0..n).map(|i| {
                    let w = if weighted { 1 + (i % 5) as u64 } else { 1 };
                    (i, crate::Weight::new(w).unwrap())
                }))
                .unwrap();
                let candidates = Candidates::prepare(&snapshot);
                assert_eq!(matches!(candidates.draw, Draw::Weighted(_)), weighted);
                for r in words() {
                    let (a, b) = candidates.one_and_spare(r, n);
                    assert!(a < n && b < n && a != b, "n={n} r={r:#x} -> {a},{b}");
                }
            }
        }
    }

    #[test]
    fn uniform_pair_is_distinct_and_in_range() {
        for n in [2usize, 3, 8, 1000] {
            for r in words() {
                let (a, b) = uniform_pair(r, n);
                assert!(a < n && b < n && a != b, "n={n} r={r:#x} -> {a},{b}");
            }
        }
    }
}
