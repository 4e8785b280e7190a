//! Building a ring: point counts, the points, their order, and the directory — from
//! scratch, or from the previous ring by keeping the points of the members that stay.

use super::{Fingerprint, Member, SEED_RING};
use crate::backend::BackendId;
use crate::stable_hash::seeded;

/// The largest directory: 2²⁴ entries (64 MiB); past it points per entry grow.
const MAX_DIRECTORY_BITS: u32 = 24;

/// One point on the circle: replica `replica` of its owner (16 bytes, as without it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Point {
    pub(super) hash: u64,
    pub(super) owner: u32,
    pub(super) replica: u32,
}

pub(super) struct Core {
    /// Sorted by hash (ties by owner key bytes).
    pub(super) points: Box<[Point]>,
    /// `directory[b]` = the first point with `hash >= b << shift`; one more entry at the end.
    pub(super) directory: Box<[u32]>,
    pub(super) shift: u32,
    pub(super) fingerprint: Fingerprint,
    /// Each member's id and point count, by snapshot index: what the next change needs
    /// to keep the points of the members that stay.
    pub(super) members: Box<[(BackendId, u64)]>,
}

/// How many points each member gets: V per unit of weight — `V × w / scale`, rounded,
/// at least one for a positive weight, where `scale` is the snapshot's
/// [`weight_scale`](Snapshot::weight_scale) (effective weights are multiplied by it while a
/// slow-start ramp runs; dividing it out keeps every other backend's points unchanged and
/// makes a ramping backend's points a growing prefix of its full set). Scaled down in
/// proportion (at least one each) when the total would pass `max_points`.
pub(super) fn point_counts(
    members: &[Member],
    per_weight: u32,
    max_points: u32,
    scale: u32,
) -> Vec<u64> {
    let scale = u128::from(scale.max(1));
    let wanted: Vec<u128> = members
        .iter()
        .map(|m| {
            let w = u128::from(m.weight);
            let n = (w * u128::from(per_weight) + scale / 2) / scale;
            if w > 0 { n.max(1) } else { 0 }
        })
        .collect();
    let total: u128 = wanted.iter().sum();
    let max = u128::from(max_points);
    let weight_sum: u128 = members.iter().map(|m| u128::from(m.weight)).sum();
    members
        .iter()
        .zip(wanted)
        .map(|(m, n)| {
            let w = u128::from(m.weight);
            let n = if total <= max || w == 0 {
                n
            } else {
                (max * w / weight_sum).max(1)
            };
            u64::try_from(n).unwrap_or(u64::MAX)
        })
        .collect()
}

/// The points of replicas `from..to` of member `m` (at position `pos`).
fn replicas(m: &Member, from: u64, to: u64, input: &mut Vec<u8>, out: &mut Vec<Point>) {
    // Point r hashes the key bytes followed by r (as Ketama hashes "addr-r"): distinct
    // inputs, so points are independent. (Varying XXH3's *seed* instead would not do:
    // for short inputs the seed enters linearly, and similar names would collide.)
    input.clear();
    input.extend_from_slice(&m.key);
    let at = input.len();
    for replica in from..to {
        input.truncate(at);
        input.extend_from_slice(&replica.to_le_bytes());
        out.push(Point {
            hash: seeded(input, SEED_RING),
            owner: m.index,
            replica: u32::try_from(replica).unwrap_or(u32::MAX),
        });
    }
}

/// The circle's order: by position; equal positions by owner key bytes, so the order
/// (and who wins a collision) does not depend on the snapshot's member order.
#[inline]
fn order(members: &[Member], a: &Point, b: &Point) -> std::cmp::Ordering {
    // Keys are read only on a tie of positions (rare): most comparisons touch the points.
    a.hash.cmp(&b.hash).then_with(|| {
        let key = |p: &Point| members.get(p.owner as usize).map(|m| &m.key);
        (key(a), a.replica).cmp(&(key(b), b.replica))
    })
}

/// Builds the ring of `members` (indexed by snapshot index, as `members()` gives them).
///
/// With the previous ring, the change costs O(P) plus the changed points: points of
/// members that stay (same id, same key) are kept, those past a member's new count
/// dropped, only the new points hashed and sorted, and the two sorted runs merged —
/// the same ring a build from scratch gives (O(P log P) and P hashes).
pub(super) fn build(
    members: Vec<Member>,
    fingerprint: Fingerprint,
    ids: Vec<BackendId>,
    counts: Vec<u64>,
    previous: Option<&Core>,
) -> Core {
    let mut input = Vec::new();
    let mut fresh: Vec<Point> = Vec::new();
    // Old index → (new index, points to keep), by id: both snapshots are in id order. A
    // member whose key differs under the same id is a new member; one that left keeps
    // nothing. Eight bytes an entry, so the array stays in cache while the renumbering
    // reads it at random.
    let mut moved: Vec<(u32, u32)> = Vec::new();
    match previous {
        Some(prev) => {
            moved = vec![(0, 0); prev.members.len()];
            let mut j = 0;
            for (old, &(id, old_count)) in prev.members.iter().enumerate() {
                while j < ids.len() && ids[j] < id {
                    j += 1;
                }
                if j < ids.len()
                    && ids[j] == id
                    && prev.fingerprint.hash(old) == Some(members[j].hash)
                {
                    let keep = u32::try_from(old_count.min(counts[j])).unwrap_or(u32::MAX);
                    moved[old] = (members[j].index, keep);
                }
            }
            let mut have = vec![0u64; members.len()];
            for &(owner, keep) in moved.iter().filter(|&&(_, keep)| keep > 0) {
                have[owner as usize] = u64::from(keep);
            }
            for (m, (&count, &from)) in members.iter().zip(counts.iter().zip(&have)) {
                replicas(m, from, count, &mut input, &mut fresh);
            }
        }
        None => {
            fresh.reserve(counts.iter().sum::<u64>() as usize);
            for (m, &count) in members.iter().zip(&counts) {
                replicas(m, 0, count, &mut input, &mut fresh);
            }
        }
    }
    fresh.sort_unstable_by(|a, b| order(&members, a, b));
    let points: Box<[Point]> = match previous {
        None => fresh.into_boxed_slice(),
        Some(prev) => {
            // The kept points, renumbered, straight from the old ring: between two new
            // points they are copied in one tight run (found by binary search on the
            // hash), not compared one by one with the next new point.
            let renumbered = |p: &Point| match moved.get(p.owner as usize) {
                Some(&(owner, keep)) if p.replica < keep => Some(Point { owner, ..*p }),
                _ => None,
            };
            let mut out = Vec::with_capacity(prev.points.len() + fresh.len());
            let mut rest: &[Point] = &prev.points;
            for f in fresh {
                let (before, after) = rest.split_at(rest.partition_point(|p| p.hash < f.hash));
                out.extend(before.iter().filter_map(renumbered));
                rest = after;
                // Old points at the new one's very position (a collision, rare) go
                // first if the circle's order says so.
                while let Some((p, tail)) = rest.split_first()
                    && p.hash == f.hash
                {
                    match renumbered(p) {
                        Some(q) if order(&members, &q, &f).is_le() => out.push(q),
                        Some(_) => break,
                        None => {}
                    }
                    rest = tail;
                }
                out.push(f);
            }
            out.extend(rest.iter().filter_map(renumbered));
            out.into_boxed_slice()
        }
    };

    let bits = usize::BITS - points.len().max(2).next_power_of_two().leading_zeros() - 1;
    let bits = bits.clamp(1, MAX_DIRECTORY_BITS);
    let shift = 64 - bits;
    // directory[b] = the first point at or after b << shift: one pass over the points,
    // filling the entries up to each point's bucket.
    let as_u32 = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
    let mut directory = vec![0u32; (1usize << bits) + 1];
    let mut b = 0usize;
    for (i, p) in points.iter().enumerate() {
        let bucket = (p.hash >> shift) as usize;
        if bucket >= b
            && let Some(entries) = directory.get_mut(b..=bucket)
        {
            entries.fill(as_u32(i));
            b = bucket + 1;
        }
    }
    if let Some(rest) = directory.get_mut(b..) {
        rest.fill(as_u32(points.len()));
    }
    Core {
        points,
        directory: directory.into_boxed_slice(),
        shift,
        fingerprint,
        members: ids.into_iter().zip(counts).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use crate::backend::Weight;
    use crate::pick::Picker;
    use crate::{Pool, Ring};

    /// A ring updated from the previous one is the ring built from scratch, point for
    /// point, through inserts, removals and reweights — with the point cap binding
    /// (every member's count moves) and not.
    #[test]
    fn a_ring_built_from_the_previous_one_is_the_ring_built_from_scratch() {
        for max in [u32::MAX, 2_000] {
            let ring = Ring::new()
                .with_points_per_weight(NonZeroU32::new(40).unwrap())
                .with_max_points(NonZeroU32::new(max).unwrap());
            let pool = Pool::new(ring.clone());
            let mut ids = pool
                .extend((0..60).map(|i| (format!("b{i}"), Weight::ONE)))
                .unwrap();
            let mut state = 0x2545_F491_4F6C_DD1Du64;
            for step in 0..120 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let which = (state >> 8) as usize % ids.len();
                match state % 3 {
                    0 => ids.push(
                        pool.insert(format!("n{step}"), Weight::new(1 + state % 3).unwrap())
                            .unwrap(),
                    ),
                    1 if ids.len() > 1 => drop(pool.remove(ids.swap_remove(which)).unwrap()),
                    _ => pool
                        .set_weight(ids[which], Weight::new(1 + (state >> 20) % 4).unwrap())
                        .unwrap(),
                }
                let current = pool.snapshot();
                let fresh = ring.prepare(current.snapshot(), None);
                let updated: Vec<_> = current.table().table().points().collect();
                let scratch: Vec<_> = fresh.table().points().collect();
                assert_eq!(updated, scratch, "max {max}, step {step}");
            }
        }
    }
}
