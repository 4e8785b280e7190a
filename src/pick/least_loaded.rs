//! Least loaded: the eligible member with the fewest requests in flight per unit of weight.
//!
//! An exact O(n) scan of the in-flight counters (as NGINX's `least_conn` and HAProxy's
//! `leastconn`, which also divide by weight). With equal weights it returns a member
//! whose in-flight count is the minimum (the property tests check this). Ties are broken
//! uniformly at random — one draw picks the r-th of the tied members — so the first
//! members of the list are not favoured when every backend is idle. For large sets
//! prefer [`PowerOfTwoChoices`](crate::PowerOfTwoChoices): O(1) and nearly as balanced.
//!
//! Recent failures count as load ((in flight + 1) × 2^score − 1, see the
//! [`pick`](crate::pick) module docs): a backend failing fast has nothing in flight but
//! is not the least loaded. Loads are compared in `f64`, exact for in-flight counts and
//! weights whose product stays below 2⁵³.

use super::{PickContext, Picker};
use crate::clock::now_nanos;
use crate::rng::RandomSource;
use crate::snapshot::Snapshot;

/// Picks a member with the least in-flight ÷ weight. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct LeastLoaded {
    rng: RandomSource,
}

impl LeastLoaded {
    /// A least-loaded picker breaking ties with a per-thread generator.
    pub fn new() -> Self {
        LeastLoaded {
            rng: RandomSource::Thread,
        }
    }

    /// A least-loaded picker whose tie-breaking is reproducible from `seed`.
    ///
    /// A clone of a seeded picker continues from the original's state: it makes the
    /// same draws the original would make next, then each advances on its own.
    pub fn with_seed(seed: u64) -> Self {
        LeastLoaded {
            rng: RandomSource::seeded(seed),
        }
    }
}

impl Default for LeastLoaded {
    fn default() -> Self {
        LeastLoaded::new()
    }
}

/// `(load, weight)` of the member at `index`: its in-flight count with recent failures
/// counted as load (see [`BackendState::load`](crate::BackendState::load)).
#[inline]
fn load<A>(snapshot: &Snapshot<A>, index: usize, now: &impl Fn() -> u64) -> (f64, f64) {
    let load = snapshot
        .get(index)
        .map_or(f64::INFINITY, |b| b.state().load_with(now));
    (load, f64::from(snapshot.effective_weight(index).max(1)))
}

impl<A> Picker<A> for LeastLoaded {
    type Table = ();

    fn prepare(&self, _: &Snapshot<A>, _: Option<&()>) {}

    fn pick(&self, _: &(), snapshot: &Snapshot<A>, ctx: &PickContext) -> Option<usize> {
        let now = || ctx.now_nanos().unwrap_or_else(now_nanos);
        let eligible = snapshot.eligible();
        let (&first, rest) = eligible.split_first()?;
        if rest.is_empty() {
            return Some(first as usize);
        }
        // Pass 1: the least load ratio (l/w compared as l·w' < l'·w) and how many tie.
        let mut best = load(snapshot, first as usize, &now);
        let mut best_index = first as usize;
        let mut ties = 1usize;
        for &i in rest {
            let (l, w) = load(snapshot, i as usize, &now);
            let lhs = l * best.1;
            let rhs = best.0 * w;
            if lhs < rhs {
                best = (l, w);
                best_index = i as usize;
                ties = 1;
            } else if lhs == rhs {
                ties += 1;
            }
        }
        if ties == 1 {
            return Some(best_index);
        }
        // Pass 2: the r-th tied member. Counters may move between the passes; if the
        // r-th is gone, the first minimum found stands.
        let mut r = self.rng.below(ties);
        for &i in eligible {
            let (l, w) = load(snapshot, i as usize, &now);
            if l * best.1 == best.0 * w {
                if r == 0 {
                    return Some(i as usize);
                }
                r -= 1;
            }
        }
        Some(best_index)
    }
}
