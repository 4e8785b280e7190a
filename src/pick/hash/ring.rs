//! Ring hashing (Ketama): backends as points on a 64-bit circle.
//!
//! Each backend places V points per unit of weight on a circle of 2⁶⁴ positions, at the
//! stable hashes of its key followed by 0, 1, 2, …; a key goes to the owner of the first
//! point at or after its own hash, clockwise. Adding or removing a backend adds or
//! removes only its own points, so only the keys on the arcs those points close move.
//!
//! **Guarantee** (checked by the property tests): removing a backend moves only its keys
//! (collateral 0), adding one moves keys only onto it; with V points per backend the
//! shares' standard deviation is ≤ 1.3/√V of the mean and the largest share is ≤
//! (1 + 4/√V) × the mean; two rings built from the same set in any order are identical.
//!
//! **Health**: the ring holds every member and is not rebuilt when only eligibility
//! changes; a key whose point belongs to an ineligible backend walks on clockwise to the
//! next point of an eligible one — its own successor on the circle.
//!
//! **Weights and slow start**: a backend gets V points per unit of weight; while a
//! slow-start ramp scales the effective weights up (see
//! [`Snapshot::weight_scale`](crate::Snapshot::weight_scale)) the scale is divided out, so
//! the other backends keep exactly their points and the ramping one grows a prefix of
//! its own — keys move only onto it as it ramps.
//!
//! **The default V = 160** is Ketama's and NGINX's (`hash … consistent`) value: it keeps
//! the spread of shares near 1/√160 ≈ 8 % at 16 B + a directory entry per point
//! (3.2 KiB per unit of weight); Envoy instead fixes a minimum ring of 1024 points, which
//! 160 per unit already exceeds from 7 backends on. Raise V for tighter balance (σ ∝
//! 1/√V) at a linear memory cost; with weights in the hundreds lower it, since the
//! count is per *unit* of weight. The ring is capped at [`DEFAULT_MAX_POINTS`] points
//! (`with_max_points`); past the cap every backend gets ⌊max × w / Σw⌋ points (at least
//! one), which may move keys between surviving backends: the total stays at the cap,
//! so a change also moves about as many of the others' points as it adds or removes
//! (the others' points past their new counts go, or their next ones come), and, when Σw
//! crosses a value where ⌊max × w / Σw⌋ steps for some weight w, one point of every
//! backend of that weight — such a change costs up to a copy of the ring, as does
//! crossing the cap itself.
//!
//! **Cost**: lookup O(1) expected — the top bits of the key's hash pick a page of the
//! circle and the next ones an entry of its directory (2^⌈log₂ P⌉ entries in all for P
//! points), which narrows the search to about one point: 17 / 20 / 30 ns at N = 8 / 64
//! / 1024 including the key hash (pingora's Ketama, a binary search, is quoted at 60 /
//! 76 / 133 ns); build O(P log P), 10–12 ms at N = 1024.
//!
//! A change costs O(N) for the members plus the pages its points fall in, not the
//! ring: the circle is cut into 2^(⌈log₂ P⌉ − 7) pages of 64 to 256 points on average,
//! each its own shared allocation, and a ring built from the previous one shares every
//! page the change does not touch; points name their owner by a stable slot, which a
//! member keeps while it stays (matched by id: a member keeps its address, hence its
//! key, while it keeps its id), so a removal renumbers no point. The change hashes only
//! the points that come or go, finds their pages and patches just those (the kept
//! points copied in runs, the page's directory shifted) — the same ring as a build from
//! scratch, which the unit tests check. One change on a pool of 50 000 backends (≈ 10⁶
//! points, at the cap) costs 1.0–1.4 × `RoundRobin`'s whole change, and 1.4 × at 10 000
//! (before pages and slots: 5–5.6 × and 18 ×; `benches/scale.rs`).
//!
//! Memory: 16 B per point + 4 B per directory entry (½ to 2 points an entry: past that
//! band the pages are laid out again, an O(P) copy without hashing), ≈ 40 B per page,
//! and ≈ 32 B + the key's bytes per member (3.5 MiB at N = 1024, V = 160).
//!
//! Karger et al., "Consistent hashing and random trees", STOC 1997; Ketama (last.fm,
//! 2007); NGINX `ngx_http_upstream_hash_module`; Envoy's ring hash load balancer.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use super::ring_build::{Core, prepare};
use super::{Accept, BackendKey, HashPicker, Lookup, WithFallback, key_hash, pick_by_preference};
use crate::pick::round_robin::RoundRobin;
use crate::pick::{PickContext, Picker};
use crate::snapshot::Snapshot;

/// The default number of points per unit of weight: 160, as Ketama and NGINX.
pub const DEFAULT_POINTS_PER_WEIGHT: u32 = 160;

/// The default cap on the ring's total points: 2²⁰ (≈ 20 MiB with the directory).
pub const DEFAULT_MAX_POINTS: u32 = 1 << 20;

/// Ring (Ketama) consistent hashing. See the [module docs](self).
///
/// # Examples
///
/// ```
/// use std::num::NonZeroU32;
/// use tower_lb::affinity::hash_key;
/// use tower_lb::{PickContext, Picker, Ring, Snapshot, Weight};
///
/// let snapshot = Snapshot::build([("cache-a", Weight::ONE), ("cache-b", Weight::ONE)])?;
/// let ring = Ring::new().with_points_per_weight(NonZeroU32::new(320).unwrap());
/// let table = ring.prepare(&snapshot, None);
/// let ctx = PickContext::new().with_hash(hash_key(b"/img/cat.png"));
/// assert!(ring.pick(&table, &snapshot, &ctx).is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Ring<F = RoundRobin> {
    points_per_weight: u32,
    max_points: u32,
    fallback: F,
}

impl Ring {
    /// A ring with [`DEFAULT_POINTS_PER_WEIGHT`] points per unit of weight and a
    /// round-robin fallback for requests without a key.
    pub fn new() -> Self {
        Ring {
            points_per_weight: DEFAULT_POINTS_PER_WEIGHT,
            max_points: DEFAULT_MAX_POINTS,
            fallback: RoundRobin::new(),
        }
    }
}

impl Default for Ring {
    fn default() -> Self {
        Ring::new()
    }
}

impl<F> Ring<F> {
    /// The same ring with `points` points (virtual nodes) per unit of weight.
    pub fn with_points_per_weight(self, points: NonZeroU32) -> Self {
        Ring {
            points_per_weight: points.get(),
            ..self
        }
    }

    /// The same ring capped at `max` points in all (see the module docs).
    pub fn with_max_points(self, max: NonZeroU32) -> Self {
        Ring {
            max_points: max.get(),
            ..self
        }
    }

    /// The same ring placing requests without a key with `fallback`.
    pub fn with_fallback<G>(self, fallback: G) -> Ring<G> {
        Ring {
            points_per_weight: self.points_per_weight,
            max_points: self.max_points,
            fallback,
        }
    }

    /// Points per unit of weight.
    pub fn points_per_weight(&self) -> u32 {
        self.points_per_weight
    }

    /// The picker for requests without a key.
    pub fn fallback(&self) -> &F {
        &self.fallback
    }
}

/// A built ring. Cheap to clone: rings are shared between snapshots that differ only in
/// eligibility.
#[derive(Clone)]
pub struct RingTable {
    core: Arc<Core>,
}

impl RingTable {
    /// How many points the ring holds.
    pub fn len(&self) -> usize {
        self.core.circle.len()
    }

    /// Whether the ring has no points (no member with a positive weight).
    pub fn is_empty(&self) -> bool {
        self.core.circle.len() == 0
    }

    /// The points in clockwise order: `(position, owner's index in the snapshot)`.
    pub fn points(&self) -> impl ExactSizeIterator<Item = (u64, usize)> + '_ {
        self.core
            .circle
            .walk((0, 0))
            .map(|p| (p.hash, self.index_of(p.owner)))
    }

    /// The exact fraction of the key space each member owns, by snapshot index,
    /// ignoring eligibility (a point owns the arc from its predecessor to itself).
    pub fn shares(&self) -> Vec<f64> {
        let mut shares = vec![0.0; self.core.members()];
        let len = self.len();
        let mut previous = self.points().last().map_or(0, |(h, _)| h);
        for (hash, owner) in self.points() {
            let arc = hash.wrapping_sub(previous);
            if let Some(s) = shares.get_mut(owner) {
                // A single point owns the whole circle (arc 0 after wrapping).
                *s += if len == 1 {
                    1.0
                } else {
                    arc as f64 / 2f64.powi(64)
                };
            }
            previous = hash;
        }
        shares
    }

    /// Whether `self` and `other` are the same ring in memory (a ring reused across a
    /// health change rather than rebuilt).
    pub fn ptr_eq(&self, other: &RingTable) -> bool {
        Arc::ptr_eq(&self.core, &other.core)
    }

    /// The snapshot index of the member in stable slot `slot`.
    #[inline]
    fn index_of(&self, slot: u32) -> usize {
        self.core
            .index_of
            .get(slot as usize)
            .map_or(usize::MAX, |&i| i as usize)
    }
}

impl fmt::Debug for RingTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingTable")
            .field("points", &self.len())
            .field("members", &self.core.members())
            .finish()
    }
}

impl<A: BackendKey, F: Picker<A>> Picker<A> for Ring<F> {
    type Table = WithFallback<RingTable, F::Table>;

    fn uses_affinity(&self) -> bool {
        true
    }

    fn reads_latency(&self) -> bool {
        // Requests without a key go to the fallback.
        self.fallback.reads_latency()
    }

    fn prepare(&self, snapshot: &Snapshot<A>, previous: Option<&Self::Table>) -> Self::Table {
        let core = prepare(
            snapshot,
            self.points_per_weight,
            self.max_points,
            previous.map(|p| &p.table.core),
        );
        WithFallback::prepare(RingTable { core }, &self.fallback, snapshot, previous)
    }

    pick_by_preference!();
}

impl<A: BackendKey, F: Picker<A>> HashPicker<A> for Ring<F> {
    /// The preference order: the owners of the points from the key's position on,
    /// clockwise, once round the circle — every backend with a point is reached.
    #[inline]
    fn find(&self, key: Lookup<'_, A, Self::Table>, mut accept: impl Accept) -> Option<usize> {
        let (ring, snapshot) = (&key.table.table, key.snapshot);
        let circle = &ring.core.circle;
        let (start, owner) = circle.successor(key_hash(key.hash))?;
        let first = ring.index_of(owner);
        if snapshot.is_eligible(first) && accept(first) {
            return Some(first);
        }
        // Walk on clockwise, once round the circle.
        let mut last_rejected = first;
        for p in circle.walk(start).skip(1) {
            let index = ring.index_of(p.owner);
            // Consecutive points of one backend: asking again would get the same answer.
            if index != last_rejected {
                if snapshot.is_eligible(index) && accept(index) {
                    return Some(index);
                }
                last_rejected = index;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::ring_build::point_counts;
    use super::*;
    use crate::backend::Weight;

    fn ring_of(n: usize, v: u32) -> (Snapshot<String>, WithFallback<RingTable, ()>) {
        let snapshot = Snapshot::build((0..n).map(|i| (format!("b{i}"), Weight::ONE))).unwrap();
        let ring = Ring::new().with_points_per_weight(NonZeroU32::new(v).unwrap());
        let table = ring.prepare(&snapshot, None);
        (snapshot, table)
    }

    /// The request hash `find` mixes to `h` (Murmur3's finaliser undone).
    fn unmix(mut z: u64) -> u64 {
        let inverse = |a: u64| {
            (0..6).fold(a, |x, _| {
                x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)))
            })
        };
        z ^= z >> 33;
        z = z.wrapping_mul(inverse(0xC4CE_B9FE_1A85_EC53));
        z ^= z >> 33;
        z = z.wrapping_mul(inverse(0xFF51_AFD7_ED55_8CCD));
        z ^ (z >> 33)
    }

    /// A key goes to the owner of the first point at or after its position (wrapping),
    /// as a binary search of the points finds it.
    #[test]
    fn lookup_is_the_binary_search() {
        for (n, v) in [(1, 1), (1, 160), (3, 7), (10, 160), (64, 40)] {
            let (snapshot, table) = ring_of(n, v);
            let ring = Ring::new().with_points_per_weight(NonZeroU32::new(v).unwrap());
            let points: Vec<(u64, usize)> = table.table().points().collect();
            let hashes: Vec<u64> = points.iter().map(|&(h, _)| h).collect();
            let probes = (0..2000u64)
                .map(crate::stable_hash::mix)
                .chain([0, 1, u64::MAX, hashes[0], hashes[hashes.len() - 1]])
                .chain(hashes.iter().map(|h| h.wrapping_add(1)));
            for h in probes {
                let at = hashes.partition_point(|&p| p < h) % hashes.len();
                // `find` mixes the request hash: probe with its preimage.
                let key = Lookup::new(&table, &snapshot, unmix(h));
                assert_eq!(
                    ring.find(key, |_| true),
                    Some(points[at].1),
                    "n={n} v={v} h={h:#x}"
                );
            }
        }
    }

    #[test]
    fn point_counts_follow_weights_and_the_cap() {
        assert_eq!(point_counts(&[1, 3], 160, 1 << 20, 1), [160, 480]);
        assert_eq!(point_counts(&[1, 3], 160, 400, 1), [100, 300]);
        assert_eq!(point_counts(&[1, 3], 160, 1, 1), [1, 1]);
        assert_eq!(point_counts(&[0, 2, 0], 160, 1, 1), [0, 1, 0]);
    }

    #[test]
    fn point_counts_divide_out_the_slow_start_scale() {
        // Effective weights 100 and 300 at scale 100 (a ramp elsewhere): V and 3V, as at
        // scale 1; a ramping backend at 37 % of weight 1 gets round(0.37 V) points.
        let weights = [100, 300, 37, 1];
        assert_eq!(point_counts(&weights, 160, 1 << 20, 100), [160, 480, 59, 2]);
    }

    #[test]
    fn shares_sum_to_one() {
        let (_, table) = ring_of(10, 50);
        let total: f64 = table.table().shares().iter().sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let (_, table) = ring_of(1, 1);
        assert_eq!(table.table().shares(), [1.0]);
    }

    #[test]
    fn huge_weights_are_capped() {
        let snapshot =
            Snapshot::build([("a", Weight::new(u64::from(Weight::MAX)).unwrap())]).unwrap();
        let ring = Ring::new().with_max_points(NonZeroU32::new(1000).unwrap());
        let table = ring.prepare(&snapshot, None);
        assert_eq!(table.table().len(), 1000);
    }

    /// A change rewrites only the pages its points fall in: at most one page per point
    /// added or removed (the new member's, and past the cap the few points other
    /// members gain or lose), all other pages shared with the previous ring.
    #[test]
    fn a_change_rewrites_only_the_pages_its_points_fall_in() {
        use std::collections::HashSet;

        use crate::Pool;
        for max in [u32::MAX, 60_000] {
            let ring = Ring::new()
                .with_points_per_weight(NonZeroU32::new(40).unwrap())
                .with_max_points(NonZeroU32::new(max).unwrap());
            let pool = Pool::new(ring);
            pool.extend((0..1000u64).map(|i| (format!("b{i}"), Weight::new(1 + i % 4).unwrap())))
                .unwrap();
            let mut added = None;
            for step in 0..20 {
                let before = pool.snapshot();
                match added.take() {
                    None => added = Some(pool.insert(format!("n{step}"), Weight::ONE).unwrap()),
                    Some(id) => drop(pool.remove(id).unwrap()),
                }
                let after = pool.snapshot();
                let named = |p: &crate::Prepared<String, WithFallback<RingTable, ()>>| {
                    let s = p.snapshot();
                    p.table()
                        .table()
                        .points()
                        .map(|(h, i)| (h, s.backends()[i].addr().clone()))
                        .collect::<HashSet<_>>()
                };
                let (old, new) = (named(&before), named(&after));
                let moved = old.symmetric_difference(&new).count();
                let (a, b) = (&after.table().table().core, &before.table().table().core);
                let (rewritten, pages) = a.circle.pages_not_in(&b.circle);
                assert!(
                    moved > 0 && rewritten <= moved,
                    "max {max} step {step}: {rewritten} pages for {moved} points"
                );
                assert!(pages >= 256, "{pages} pages");
            }
        }
    }
}
