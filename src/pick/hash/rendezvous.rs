//! Weighted rendezvous hashing (highest random weight).
//!
//! Every backend scores the key: u = a stable hash of (key, backend) mapped into (0, 1),
//! score = −w / ln(u) (the logarithmic method); the key goes to the eligible backend with
//! the highest score. The score is an exponential race, so backend i wins with
//! probability exactly wᵢ / Σw, and a backend's arrival or departure changes only the
//! keys it wins or had won. With equal weights the score is monotone in u, so u itself
//! is compared and no logarithm is taken.
//!
//! **Guarantee** (checked by the property tests): removing a backend moves only its keys
//! (collateral 0); weighted shares lie within 4σ of wᵢ/Σw; any member order gives the
//! same mapping. The logarithm is computed by this crate with IEEE basic operations
//! only, so scores are bit-identical on every platform (a libm `ln` may differ in the
//! last place between platforms).
//!
//! **Cost**: O(n) per lookup and no table beyond 24 B per member (key hash, inverse
//! weight, id), built in O(n); a change reuses the key hashes of the members that stay,
//! so only new members' keys are written and hashed. Measured
//! (including the key hash): 21 / 134 / 2160 ns at N = 8 / 64 / 1024 with equal weights —
//! about 12 ns + 2 ns per member — and 154 / 424 / 3230 ns weighted. Weighted scans are
//! cheap because −ln(u) ≥ 1 − u: a member whose bound already loses to the best so far
//! is skipped without its logarithm, so a scan takes O(log n) logarithms. **Crossover**:
//! against the ring's 16–27 ns, rendezvous is cheaper only below ≈ 4 members, and it
//! never beats Maglev's ≈ 7 ns; choose it for small sets, exact weights with zero
//! collateral, or where no table may be kept.
//!
//! Thaler & Ravishankar, "Using name-based mappings to increase hit rates", IEEE/ACM
//! ToN 1998; weighted form: Schindelhauer & Schomaker, "Weighted distributed hash tables",
//! SPAA 2005, and the logarithmic method of Resch's "New Hashing Algorithms for Data
//! Storage" (2015).

use std::fmt;

use super::{
    Accept, BackendKey, HashPicker, Lookup, WithFallback, ids, key_hash, key_hash_of,
    pick_by_preference, previous_positions,
};
use crate::backend::BackendId;
use crate::pick::round_robin::RoundRobin;
use crate::pick::{PickContext, Picker};
use crate::snapshot::Snapshot;
use crate::stable_hash::mix;

/// Weighted rendezvous hashing. See the [module docs](self).
///
/// # Examples
///
/// ```
/// use tower_lb::affinity::hash_key;
/// use tower_lb::{PickContext, Picker, Rendezvous, Snapshot, Weight};
///
/// let snapshot = Snapshot::build([("a", Weight::ONE), ("b", Weight::new(2)?)])?;
/// let hrw = Rendezvous::new();
/// let table = hrw.prepare(&snapshot, None);
/// let ctx = PickContext::new().with_hash(hash_key(b"tenant-7"));
/// assert!(hrw.pick(&table, &snapshot, &ctx).is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Rendezvous<F = RoundRobin> {
    fallback: F,
}

impl Rendezvous {
    /// Rendezvous hashing with a round-robin fallback for requests without a key.
    pub fn new() -> Self {
        Rendezvous::default()
    }
}

impl<F> Rendezvous<F> {
    /// The same picker placing requests without a key with `fallback`.
    pub fn with_fallback<G>(self, fallback: G) -> Rendezvous<G> {
        Rendezvous { fallback }
    }

    /// The picker for requests without a key.
    pub fn fallback(&self) -> &F {
        &self.fallback
    }
}

/// Each member's key hash and weight, by snapshot index.
pub struct RendezvousTable {
    /// `(key hash, 1 / weight)` per member, in snapshot order.
    members: Box<[(u64, f64)]>,
    /// Whether every member has the same weight (compare u, skip the logarithm).
    uniform: bool,
    /// Each member's id, in snapshot order (the next change reuses survivors' hashes).
    ids: Box<[BackendId]>,
}

impl fmt::Debug for RendezvousTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RendezvousTable")
            .field("members", &self.members.len())
            .field("uniform", &self.uniform)
            .finish()
    }
}

/// The high 52 bits of `u` as a fraction in (0, 1), offset by half a step.
#[inline]
fn unit(u: u64) -> f64 {
    // Through i64: the value fits in 52 bits, and i64 → f64 is one instruction.
    ((u >> 12) as i64 as f64 + 0.5) * (1.0 / (1u64 << 52) as f64)
}

/// A lower bound on −ln(unit(u)) that costs no logarithm: 1 − x ≤ −ln(x), shrunk by a
/// margin far above the few-ulp error of [`neg_ln_unit`], so that a member whose bound
/// already loses is certain to lose and its logarithm can be skipped.
#[inline]
fn neg_ln_lower_bound(u: u64) -> f64 {
    (1.0 - unit(u)) * (1.0 - 1e-9)
}

/// −ln(x) for x = the high 52 bits of `u` as a fraction in (0, 1), offset by half a step
/// so that neither end is reached (x + ½ step is exact in 53 bits): positive and finite
/// for every `u`.
///
/// Computed with IEEE basic operations only (no libm), so bit-identical everywhere:
/// x = m · 2^e with m in [√½, √2), ln m = 2 atanh(s) with s = (m − 1)/(m + 1), |s| <
/// 0.172, summed to s¹⁵ (relative error below 10⁻¹²).
#[inline]
fn neg_ln_unit(u: u64) -> f64 {
    const LN_2: f64 = std::f64::consts::LN_2;
    const SQRT_2: f64 = std::f64::consts::SQRT_2;
    let x = unit(u);
    let bits = x.to_bits();
    let m = f64::from_bits((bits & 0x000F_FFFF_FFFF_FFFF) | 0x3FF0_0000_0000_0000);
    // m in [1, 2); above √2 halve it (exponent − 1) and count one more power of two.
    // Branch-free: the comparison is a coin flip per member, a branch would mispredict.
    let above = u64::from(m > SQRT_2);
    let m = f64::from_bits(m.to_bits() - (above << 52));
    let e = ((bits >> 52) & 0x7FF) as i64 - 1023 + above as i64;
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = 1.0
        + s2 * (1.0 / 3.0
            + s2 * (1.0 / 5.0
                + s2 * (1.0 / 7.0
                    + s2 * (1.0 / 9.0 + s2 * (1.0 / 11.0 + s2 * (1.0 / 13.0 + s2 / 15.0))))));
    -(e as f64 * LN_2 + 2.0 * s * series)
}

/// A member's standing for one key: compared as (score, u), higher first.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
struct Standing {
    score: f64,
    u: u64,
}

impl RendezvousTable {
    /// The standing of member `index` for the mixed key `k`: with equal weights u alone
    /// (the score is monotone in u), else the score −w / ln(u) compared through its
    /// negated reciprocal −(−ln(u) · (1/w)) — the same order, one division fewer.
    #[inline]
    fn standing(&self, k: u64, index: usize) -> Option<Standing> {
        let &(hash, inverse_weight) = self.members.get(index)?;
        let u = mix(k ^ hash);
        let score = if self.uniform {
            0.0
        } else {
            -(neg_ln_unit(u) * inverse_weight)
        };
        Some(Standing { score, u })
    }

    /// The eligible member with the best standing.
    #[inline]
    fn best<A>(&self, snapshot: &Snapshot<A>, k: u64) -> Option<usize> {
        let eligible = snapshot.eligible();
        if self.uniform {
            // The hot loop of the equal-weight case: the highest u wins (u is a bijective
            // mix of distinct hashes, so there is no tie to break).
            let u_of = |i: u32| self.members.get(i as usize).map(|&(hash, _)| mix(k ^ hash));
            let mut members = eligible.iter().filter_map(|&i| Some((u_of(i)?, i)));
            let (mut best_u, mut best_i) = members.next()?;
            for (u, i) in members {
                if u > best_u {
                    (best_u, best_i) = (u, i);
                }
            }
            return Some(best_i as usize);
        }
        let mut best: Option<(usize, Standing)> = None;
        for &i in eligible {
            let Some(s) = self.standing_if_above(k, i as usize, best.map(|(_, b)| b)) else {
                continue;
            };
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((i as usize, s));
            }
        }
        best.map(|(i, _)| i)
    }

    /// The standing of member `index`, or `None` when it is certain to be below `floor`
    /// (checked with [`neg_ln_lower_bound`] before paying for a logarithm). Scanning n
    /// members against the best so far, a member needs its logarithm with probability
    /// about wᵢ / (Σw seen so far), so a scan takes O(log n) logarithms, not n.
    #[inline]
    fn standing_if_above(&self, k: u64, index: usize, floor: Option<Standing>) -> Option<Standing> {
        if let (Some(floor), false) = (floor, self.uniform) {
            let &(hash, inverse_weight) = self.members.get(index)?;
            let u = mix(k ^ hash);
            // score = −(−ln(u) · (1/w)) ≤ −(bound · (1/w)); strictly below the floor loses.
            if -(neg_ln_lower_bound(u) * inverse_weight) < floor.score {
                return None;
            }
        }
        self.standing(k, index)
    }

    /// The (up to) `BATCH` eligible members with the best standings strictly below
    /// `bound`, best first, in one O(n) pass; and how many were found.
    #[inline]
    fn top_below<A>(
        &self,
        snapshot: &Snapshot<A>,
        k: u64,
        bound: Option<Standing>,
    ) -> ([(usize, Standing); BATCH], usize) {
        let none = Standing {
            score: f64::NEG_INFINITY,
            u: 0,
        };
        let mut top = [(usize::MAX, none); BATCH];
        let mut len = 0;
        for &i in snapshot.eligible() {
            let i = i as usize;
            let floor = (len == BATCH).then(|| top[BATCH - 1].1);
            let Some(s) = self.standing_if_above(k, i, floor) else {
                continue;
            };
            if bound.is_some_and(|b| s >= b) || floor.is_some_and(|f| s <= f) {
                continue;
            }
            // Insert in order: shift the worse ones down one place.
            let at = top[..len].partition_point(|&(_, t)| t > s);
            len = (len + 1).min(BATCH);
            top.copy_within(at..len - 1, at + 1);
            top[at] = (i, s);
        }
        (top, len)
    }
}

/// Members offered per pass of `find`, best first.
const BATCH: usize = 8;

/// Passes `find` makes in exact preference order (so the first 32 members are offered
/// exactly in order) before it considers the rest in one pass.
const EXACT_PASSES: usize = 4;

impl<A: BackendKey, F: Picker<A>> Picker<A> for Rendezvous<F> {
    type Table = WithFallback<RendezvousTable, F::Table>;

    fn uses_affinity(&self) -> bool {
        true
    }

    fn reads_latency(&self) -> bool {
        // Requests without a key go to the fallback.
        self.fallback.reads_latency()
    }

    fn prepare(&self, snapshot: &Snapshot<A>, previous: Option<&Self::Table>) -> Self::Table {
        // A survivor's key hash is the previous table's: only new members' keys are
        // written and hashed, so a change costs O(n) copying, not n key hashes.
        let mut scratch = Vec::new();
        let old = previous.map(|p| &p.table);
        let positions = old.map(|old| previous_positions(&old.ids, snapshot));
        let members: Box<[(u64, f64)]> = snapshot
            .backends()
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let kept = positions
                    .as_ref()
                    .and_then(|p| p.get(i).copied().flatten())
                    .zip(old)
                    .and_then(|(at, old)| old.members.get(at as usize).map(|m| m.0));
                let hash = kept.unwrap_or_else(|| key_hash_of(b.addr(), &mut scratch));
                (hash, 1.0 / f64::from(snapshot.effective_weight(i)))
            })
            .collect();
        // (A zero weight gives an infinite inverse, hence a score of −∞: last place.)
        let uniform = members.windows(2).all(|w| w[0].1 == w[1].1);
        WithFallback::prepare(
            RendezvousTable {
                members,
                uniform,
                ids: ids(snapshot),
            },
            &self.fallback,
            snapshot,
            previous,
        )
    }

    pick_by_preference!(|_picker, table, snapshot, hash| table
        .table
        .best(snapshot, key_hash(hash)));
}

impl<A: BackendKey, F: Picker<A>> HashPicker<A> for Rendezvous<F> {
    /// The preference order: members by descending score. The best 32 are offered one
    /// by one, in that order (found 8 at a time, one O(n) pass per 8); if all are
    /// refused, the rest are considered in one more pass, in snapshot order, and the
    /// best-scored one accepted is returned — the same answer as a full walk when
    /// `accept` is a pure test, in O(n) instead of O(n²).
    fn find(&self, key: Lookup<'_, A, Self::Table>, mut accept: impl Accept) -> Option<usize> {
        let (table, snapshot) = (&key.table.table, key.snapshot);
        let k = key_hash(key.hash);
        let mut bound = None;
        for _ in 0..EXACT_PASSES {
            let (top, len) = table.top_below(snapshot, k, bound);
            for &(i, _) in &top[..len] {
                if accept(i) {
                    return Some(i);
                }
            }
            if len < BATCH {
                return None; // every eligible member was offered
            }
            bound = Some(top[len - 1].1);
        }
        let mut best: Option<(usize, Standing)> = None;
        for &i in snapshot.eligible() {
            let i = i as usize;
            let Some(s) = table.standing(k, i) else {
                continue;
            };
            if bound.is_some_and(|b| s >= b) || best.is_some_and(|(_, b)| s <= b) {
                continue;
            }
            if accept(i) {
                best = Some((i, s));
            }
        }
        best.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neg_ln_is_accurate_positive_and_monotone() {
        let mut previous = f64::INFINITY;
        for step in 0..=4096u64 {
            let u = step.wrapping_mul(u64::MAX / 4096);
            let got = neg_ln_unit(u);
            let x = ((u >> 12) as f64 + 0.5) / (1u64 << 52) as f64;
            let want = -x.ln();
            assert!(got > 0.0 && got.is_finite(), "u={u:#x} got={got}");
            assert!(
                (got - want).abs() <= want * 1e-12 + 1e-300,
                "u={u:#x} {got} {want}"
            );
            assert!(got <= previous, "not monotone at u={u:#x}");
            previous = got;
        }
        assert!(neg_ln_unit(u64::MAX) > 0.0);
        assert!((neg_ln_unit(0) - 53.0 * std::f64::consts::LN_2).abs() < 1e-9);
    }

    #[test]
    fn the_lower_bound_never_exceeds_the_logarithm() {
        let edges = [0, 1, 1 << 12, u64::MAX, u64::MAX - (1 << 12), 1 << 63];
        let spread = (0..100_000u64).map(|i| mix(i).wrapping_mul(i | 1));
        for u in edges.into_iter().chain(spread) {
            assert!(neg_ln_lower_bound(u) < neg_ln_unit(u), "u={u:#x}");
        }
    }

    #[test]
    fn neg_ln_is_pinned() {
        // Bit patterns, so a change of the series (which would remap keys) is caught.
        assert_eq!(neg_ln_unit(1 << 63).to_bits(), PINNED_HALF);
        assert_eq!(neg_ln_unit(0x1234_5678_9ABC_DEF0).to_bits(), PINNED_OTHER);
        // x = √2 / 2 exactly, so m = √2 exactly: m stays in [1, √2] with e = −1 (halving
        // it with e = 0 instead gives 0x3FD6_2E42_FEFA_391C, 419 ulp away).
        assert_eq!(
            neg_ln_unit(0xB504_F333_F9DE_6000).to_bits(),
            PINNED_SQRT_HALF
        );
    }

    #[test]
    fn the_lower_bound_is_one_minus_x_less_its_margin() {
        // The bound is what lets a weighted scan skip logarithms: it must stay tight.
        for u in (0..10_000u64).map(|i| mix(i).wrapping_mul(i | 1)) {
            let x = ((u >> 12) as f64 + 0.5) / (1u64 << 52) as f64;
            let bound = neg_ln_lower_bound(u);
            assert!(
                bound <= 1.0 - x && bound >= (1.0 - x) * (1.0 - 2e-9),
                "u={u:#x}"
            );
        }
    }

    // Also reproduced by an independent IEEE-754 implementation (Python floats).
    const PINNED_HALF: u64 = 0x3FE6_2E42_FEFA_39ED;
    const PINNED_OTHER: u64 = 0x4005_25E9_73A0_5652;
    const PINNED_SQRT_HALF: u64 = 0x3FD6_2E42_FEFA_3ABF;
}
