//! Smooth weighted round robin, as NGINX does it, precomputed into a schedule.
//!
//! NGINX's algorithm (`ngx_http_upstream_get_peer`, Maxim Dounin, 2012): every member
//! keeps a current weight; at each pick every current weight grows by the member's
//! weight, the largest is chosen (first in order on a tie), and the chosen one's current
//! weight drops by Σw. The result interleaves instead of bursting: weights 5, 1, 1 give
//! `a a b a c a a`, and every window of Σw consecutive picks holds exactly wᵢ picks of i.
//!
//! NGINX runs this under a lock per pick. Here `prepare` runs it once per snapshot for
//! one full cycle and stores the cycle; a pick is `schedule[counter.fetch_add(1) % len]`
//! — O(1), flat in n, no lock. Each snapshot's schedule starts its own counter at zero,
//! so right after a reweight the sequence is the smooth sequence of the new weights from
//! its start: no burst to one member, and |countᵢ(t) − t·wᵢ/Σw| stays below 1.5 from the
//! change on (the property tests check both).
//!
//! Memory is bounded whatever the weights' magnitudes. Weights are first divided by their
//! greatest common divisor; if the cycle is still longer than [`MAX_SCHEDULE`] entries,
//! weights are scaled down to a cycle of `MAX_SCHEDULE` by largest remainders (each
//! member gets the floor or the ceiling of its exact quota), and members whose quota is
//! below one entry are raised to one, so that every member keeps some traffic. Shares are
//! then within (1 + r)/`MAX_SCHEDULE` of exact for every member, r the number of members
//! raised (the raised entries come out of the others' shares): 1/`MAX_SCHEDULE` when no
//! member's share is that small. The property tests check this bound. The schedule holds at most `MAX_SCHEDULE + n` 4-byte entries (256 KiB plus
//! 4 bytes per member).
//!
//! Building it costs O(n log n + len · D) on the change path, D the number of distinct
//! weights (D ≤ √(2 · len), and 1 when all weights are equal): members of equal weight
//! take turns in index order in NGINX's loop, so each pick compares one candidate per
//! distinct weight instead of every member — the same sequence, pick for pick (a unit
//! test runs NGINX's own loop beside it). At 50 000 members that is milliseconds where
//! NGINX's O(len · n) loop took two seconds (`cargo bench --bench lb -- scale-change`).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{PickContext, Picker, eligible_at};
use crate::snapshot::Snapshot;

/// The longest cycle a schedule holds before weights are scaled down to fit.
pub const MAX_SCHEDULE: u64 = 1 << 16;

/// Smooth weighted round robin. See the [`pick`](crate::pick) module docs.
#[derive(Debug, Clone, Default)]
pub struct WeightedRoundRobin {
    _private: (),
}

impl WeightedRoundRobin {
    /// A smooth weighted round robin.
    pub fn new() -> Self {
        WeightedRoundRobin::default()
    }
}

/// One snapshot's cycle of picks and its position.
#[derive(Debug)]
pub struct Schedule {
    order: Box<[u32]>,
    next: AtomicUsize,
    exact: bool,
}

impl Schedule {
    /// The cycle of backend indices, in pick order.
    pub fn order(&self) -> &[u32] {
        &self.order
    }

    /// Whether the cycle follows the weights exactly (false when they were scaled to fit).
    pub fn is_exact(&self) -> bool {
        self.exact
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Reduces weights by their gcd, then scales them to a cycle of at most `MAX_SCHEDULE`
/// (plus one per member for those that round to zero). Returns the weights and whether
/// they are exact.
fn cycle_weights(weights: &[u64]) -> (Vec<u64>, bool) {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let reduced: Vec<u64> = weights.iter().map(|w| w / g).collect();
    let total: u128 = reduced.iter().map(|&w| u128::from(w)).sum();
    if total <= u128::from(MAX_SCHEDULE) {
        return (reduced, true);
    }
    // Largest remainders (Hamilton's apportionment): each member gets the floor or the
    // ceiling of its exact quota of the cycle, so no share is a full entry off; then
    // members whose quota is below one entry are raised to one.
    let mut scaled: Vec<u64> = Vec::with_capacity(reduced.len());
    let mut remainders: Vec<(u128, u32)> = Vec::with_capacity(reduced.len());
    let fits = |total: u128| {
        let max = reduced.iter().copied().max().unwrap_or(0);
        u64::try_from(total).is_ok() && max.checked_mul(MAX_SCHEDULE).is_some()
    };
    if fits(total) {
        // Weights from a snapshot are u32, so this is the path: one u64 division per
        // member instead of u128's (several times slower).
        let total = total as u64;
        for &w in &reduced {
            let quota = w * MAX_SCHEDULE;
            scaled.push(quota / total);
            remainders.push((u128::from(quota % total), remainders.len() as u32));
        }
    } else {
        let m = u128::from(MAX_SCHEDULE);
        for &w in &reduced {
            let quota = u128::from(w) * m;
            scaled.push((quota / total) as u64);
            remainders.push((quota % total, remainders.len() as u32));
        }
    }
    let given: u128 = scaled.iter().map(|&s| u128::from(s)).sum();
    let left = usize::try_from(u128::from(MAX_SCHEDULE).saturating_sub(given))
        .unwrap_or(usize::MAX)
        .min(remainders.len());
    // Largest remainder first; ties to the earlier member, so the result is deterministic
    // (a total order: the `left` largest are one set, selected in O(n), not sorted).
    let largest_first = |a: &(u128, u32), b: &(u128, u32)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
    if left > 0 && left < remainders.len() {
        remainders.select_nth_unstable_by(left - 1, largest_first);
    }
    for &(_, i) in remainders.iter().take(left) {
        if let Some(s) = scaled.get_mut(i as usize) {
            *s += 1;
        }
    }
    for s in &mut scaled {
        *s = (*s).max(1);
    }
    let g = scaled.iter().copied().fold(0, gcd).max(1);
    (scaled.into_iter().map(|w| w / g).collect(), false)
}

/// NGINX's smooth selection run for one full cycle over `weights`; positions into `weights`.
///
/// Exactly NGINX's sequence, in O(S · D) for a cycle of S picks over D distinct weights
/// instead of NGINX's O(S · n). At pick t (from 1) member i's current weight is
/// t·wᵢ − kᵢ·Σw, kᵢ its picks so far. Members of equal weight differ only in kᵢ, so among
/// them the one picked next is the least picked, the first in order on a tie: they take
/// turns in index order. Each pick therefore compares one candidate per distinct weight
/// (its current weight, then its index, as NGINX's first-on-tie), and D ≤ √(2S) whatever
/// the weights — 1 when they are all equal.
pub(crate) fn smooth_cycle(weights: &[u64]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let by_weight = group_by_weight(weights);
    struct Group<'a> {
        weight: i64,
        members: &'a [(u64, u32)],
        picks: usize,
    }
    let mut groups: Vec<Group<'_>> = by_weight
        .chunk_by(|a, b| a.0 == b.0)
        .map(|members| Group {
            weight: members[0].0 as i64,
            members,
            picks: 0,
        })
        .collect();
    let mut order = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for t in 1..=total {
        // The greatest current weight; on a tie the smallest position (NGINX's `>`).
        let mut best: Option<(i64, u32, usize)> = None;
        for (g, group) in groups.iter().enumerate() {
            let len = group.members.len();
            let position = group.members[group.picks % len].1;
            let current = t * group.weight - (group.picks / len) as i64 * total;
            if best.is_none_or(|(v, p, _)| current > v || (current == v && position < p)) {
                best = Some((current, position, g));
            }
        }
        let Some((_, position, g)) = best else {
            break;
        };
        groups[g].picks += 1;
        order.push(position);
    }
    order
}

/// Positive-weight positions as (weight, position), grouped by weight in increasing
/// order, each group in position order. With few distinct weights (the usual case) a
/// counting sort, O(n · D); else a sort.
fn group_by_weight(weights: &[u64]) -> Vec<(u64, u32)> {
    const FEW: usize = 16;
    let mut distinct: Vec<u64> = Vec::with_capacity(FEW);
    for &w in weights.iter().filter(|&&w| w > 0) {
        if !distinct.contains(&w) {
            if distinct.len() == FEW {
                let mut by_weight: Vec<(u64, u32)> = weights
                    .iter()
                    .enumerate()
                    .filter(|&(_, &w)| w > 0)
                    .map(|(i, &w)| (w, i as u32))
                    .collect();
                by_weight.sort_unstable();
                return by_weight;
            }
            distinct.push(w);
        }
    }
    distinct.sort_unstable();
    let group = |w: u64| distinct.iter().position(|&d| d == w);
    let mut start = vec![0usize; distinct.len() + 1];
    for &w in weights {
        if let Some(g) = group(w) {
            start[g + 1] += 1;
        }
    }
    for g in 0..distinct.len() {
        start[g + 1] += start[g];
    }
    let mut by_weight = vec![(0u64, 0u32); start[distinct.len()]];
    for (i, &w) in weights.iter().enumerate() {
        if let Some(g) = group(w) {
            by_weight[start[g]] = (w, i as u32);
            start[g] += 1;
        }
    }
    by_weight
}

/// NGINX's loop itself, O(S · n): the oracle the fast cycle is tested against.
#[cfg(test)]
fn nginx_cycle(weights: &[u64]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += w as i64;
        }
        let mut best = 0;
        for (i, &v) in current.iter().enumerate().skip(1) {
            if v > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best as u32);
    }
    order
}

impl<A> Picker<A> for WeightedRoundRobin {
    type Table = Schedule;

    fn prepare(&self, snapshot: &Snapshot<A>, _: Option<&Schedule>) -> Schedule {
        let eligible = snapshot.eligible();
        let weights: Vec<u64> = eligible
            .iter()
            .map(|&i| u64::from(snapshot.effective_weight(i as usize)))
            .collect();
        let (weights, exact) = cycle_weights(&weights);
        let order = smooth_cycle(&weights)
            .into_iter()
            .map(|slot| eligible[slot as usize])
            .collect();
        Schedule {
            order,
            next: AtomicUsize::new(0),
            exact,
        }
    }

    #[inline]
    fn pick(&self, table: &Schedule, snapshot: &Snapshot<A>, _: &PickContext) -> Option<usize> {
        let len = table.order.len();
        if len == 0 {
            return eligible_at(snapshot, 0);
        }
        // Relaxed: the counter only has to hand out distinct positions.
        let turn = table.next.fetch_add(1, Ordering::Relaxed);
        let index = table.order[turn % len] as usize;
        if snapshot.is_eligible(index) {
            Some(index)
        } else {
            // The table belongs to another snapshot: stay correct, if unweighted.
            let n = snapshot.eligible().len();
            if n == 0 {
                None
            } else {
                eligible_at(snapshot, turn % n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' seeded draws: xorshift64, a number below `bound` per call.
    fn xorshift(mut state: u64) -> impl FnMut(u64) -> u64 {
        move |bound| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        }
    }

    #[test]
    fn nginx_sequence() {
        assert_eq!(smooth_cycle(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    /// The grouped cycle is NGINX's loop, pick for pick, on many weight vectors
    /// (seeded): few and many distinct weights, equal weights, large ones.
    #[test]
    fn grouped_cycle_is_nginx_pick_for_pick() {
        let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
        for case in 0..300 {
            let n = 1 + next(40) as usize;
            let spread = [1, 2, 3, 7, 50, 1000][case % 6];
            let weights: Vec<u64> = (0..n).map(|_| 1 + next(spread)).collect();
            assert_eq!(smooth_cycle(&weights), nginx_cycle(&weights), "{weights:?}");
        }
        assert_eq!(smooth_cycle(&[3; 5]), nginx_cycle(&[3; 5]));
    }

    /// The scaled weights are Hamilton's apportionment as a full sort of the remainders
    /// gives it (the O(n) selection picks the same set), zero weights included.
    #[test]
    fn scaled_weights_are_the_largest_remainders() {
        let reference = |weights: &[u64]| {
            let g = weights.iter().copied().fold(0, gcd).max(1);
            let reduced: Vec<u64> = weights.iter().map(|w| w / g).collect();
            let total: u128 = reduced.iter().map(|&w| u128::from(w)).sum();
            let m = u128::from(MAX_SCHEDULE);
            let mut scaled: Vec<u64> = reduced
                .iter()
                .map(|&w| (u128::from(w) * m / total) as u64)
                .collect();
            let mut rem: Vec<(u128, usize)> = reduced
                .iter()
                .enumerate()
                .map(|(i, &w)| (u128::from(w) * m % total, i))
                .collect();
            rem.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let left = (m - scaled.iter().map(|&s| u128::from(s)).sum::<u128>()) as usize;
            for &(_, i) in rem.iter().take(left) {
                scaled[i] += 1;
            }
            let scaled: Vec<u64> = scaled.into_iter().map(|s| s.max(1)).collect();
            let g = scaled.iter().copied().fold(0, gcd).max(1);
            scaled.into_iter().map(|w| w / g).collect::<Vec<_>>()
        };
        let mut next = xorshift(0x2545_F491_4F6C_DD1D);
        for case in 0..40 {
            let n = [3usize, 100, 5000, 40_000][case % 4];
            let spread = [4u64, 1000, u64::from(u32::MAX)][case % 3];
            let weights: Vec<u64> = (0..n).map(|_| next(spread + 1)).collect();
            if weights.iter().map(|&w| u128::from(w)).sum::<u128>() <= u128::from(MAX_SCHEDULE) {
                continue;
            }
            let (got, exact) = cycle_weights(&weights);
            assert!(!exact);
            assert_eq!(got, reference(&weights), "case {case}");
        }
        // Past u64 (the u128 path).
        let (got, _) = cycle_weights(&[u64::MAX, u64::MAX - 1, 3]);
        assert_eq!(got, reference(&[u64::MAX, u64::MAX - 1, 3]));
    }

    #[test]
    fn huge_weights_stay_bounded() {
        let (w, exact) = cycle_weights(&[u64::from(u32::MAX), 1, u64::from(u32::MAX - 1)]);
        assert!(!exact);
        assert!(w.iter().sum::<u64>() <= MAX_SCHEDULE + 3);
        assert!(w.iter().all(|&x| x >= 1));
        let (w, exact) = cycle_weights(&[1000, 2000, 3000]);
        assert!(exact);
        assert_eq!(w, vec![1, 2, 3]);
    }
}
