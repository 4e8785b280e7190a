//! Building a ring: point counts, the points, their order, and the pages — from
//! scratch, or from the previous ring by rewriting only the pages the change touches.
//!
//! Points name their owner by a *stable slot*, not by snapshot index: a member keeps its
//! slot for as long as it stays (matched by id, as snapshots are in id order), so a
//! change leaves the points of the members that stay as they are, and each table maps
//! slots to snapshot indices (`index_of`, O(N) to rebuild). A slot freed by a removal is
//! reused by a later change, never by the same one, so every point of an old page under
//! a live slot is that member's.

use super::ring_pages::{Circle, Point};
use super::{Fingerprint, Member, SEED_RING};
use crate::backend::BackendId;
use crate::stable_hash::seeded;

pub(super) struct Core {
    /// The points, in circle order, owners by stable slot.
    pub(super) circle: Circle,
    /// Each stable slot's snapshot index (`u32::MAX` for a free slot).
    pub(super) index_of: Box<[u32]>,
    pub(super) fingerprint: Fingerprint,
    /// Each member's id, point count and slot, by snapshot index: what the next change
    /// matches survivors by.
    held: Box<[Held]>,
    /// Each member's key bytes, by snapshot index: where the points of a member that
    /// leaves (or loses points) are, without scanning the ring.
    members: Vec<Member>,
    /// Slots free for the next change's new members.
    free: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    id: BackendId,
    count: u64,
    slot: u32,
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

/// The points of replicas `from..to` of the member with key `key`, in slot `slot`.
fn replicas(key: &[u8], slot: u32, from: u64, to: u64, input: &mut Vec<u8>, out: &mut Vec<Point>) {
    // Point r hashes the key bytes followed by r (as Ketama hashes "addr-r"): distinct
    // inputs, so points are independent. (Varying XXH3's *seed* instead would not do:
    // for short inputs the seed enters linearly, and similar names would collide.)
    input.clear();
    input.extend_from_slice(key);
    let at = input.len();
    for replica in from..to {
        input.truncate(at);
        input.extend_from_slice(&replica.to_le_bytes());
        out.push(Point {
            hash: seeded(input, SEED_RING),
            owner: slot,
            replica: u32::try_from(replica).unwrap_or(u32::MAX),
        });
    }
}

/// The circle's order: by position; equal positions by owner key bytes, then replica,
/// so the order (and who wins a collision) depends neither on the snapshot's member
/// order nor on the slots. `key(slot)` is the key of the member in `slot`.
#[inline]
fn order<'k>(key: &impl Fn(u32) -> &'k [u8], a: &Point, b: &Point) -> std::cmp::Ordering {
    // Keys are read only on a tie of positions (rare): most comparisons touch the points.
    a.hash
        .cmp(&b.hash)
        .then_with(|| (key(a.owner), a.replica).cmp(&(key(b.owner), b.replica)))
}

/// The key of the member in each slot, through `index_of`.
fn keys_by_slot<'k>(index_of: &'k [u32], members: &'k [Member]) -> impl Fn(u32) -> &'k [u8] {
    move |slot| {
        index_of
            .get(slot as usize)
            .and_then(|&i| members.get(i as usize))
            .map_or(&[][..], |m| &m.key[..])
    }
}

/// Builds the ring of `members` (indexed by snapshot index, as `members()` gives them).
///
/// With the previous ring, a change costs O(N) for the members plus the pages its
/// points fall in: survivors (same id, same key) keep their slot and their points, those
/// past a member's new count and those of members that left are dropped, only the new
/// points hashed and sorted, and each touched page merged from its kept points and its
/// new ones — the same ring a build from scratch gives (O(P log P) and P hashes).
pub(super) fn build(
    members: Vec<Member>,
    fingerprint: Fingerprint,
    ids: Vec<BackendId>,
    counts: Vec<u64>,
    previous: Option<&Core>,
) -> Core {
    match previous {
        Some(prev) => change(members, fingerprint, ids, counts, prev),
        None => scratch(members, fingerprint, ids, counts),
    }
}

fn scratch(
    members: Vec<Member>,
    fingerprint: Fingerprint,
    ids: Vec<BackendId>,
    counts: Vec<u64>,
) -> Core {
    // Slots are the snapshot indices.
    let mut input = Vec::new();
    let mut points = Vec::with_capacity(counts.iter().sum::<u64>() as usize);
    for (m, &count) in members.iter().zip(&counts) {
        replicas(&m.key, m.index, 0, count, &mut input, &mut points);
    }
    let index_of: Box<[u32]> = members.iter().map(|m| m.index).collect();
    points.sort_unstable_by(|a, b| order(&keys_by_slot(&index_of, &members), a, b));
    let held = ids
        .into_iter()
        .zip(counts)
        .zip(0..)
        .map(|((id, count), slot)| Held { id, count, slot })
        .collect();
    Core {
        circle: Circle::from_sorted(&points),
        index_of,
        fingerprint,
        held,
        members,
        free: Vec::new(),
    }
}

fn change(
    members: Vec<Member>,
    fingerprint: Fingerprint,
    ids: Vec<BackendId>,
    counts: Vec<u64>,
    prev: &Core,
) -> Core {
    let layout = prev.circle.layout();
    let mut input = Vec::new();
    // Survivors by a merge of the two id-ordered lists. A member whose key differs under
    // the same id is a new member; one that left frees its slot.
    let mut slots = vec![u32::MAX; members.len()];
    // Replicas each old slot keeps (all, unless it shrank or left).
    let mut keep = vec![u32::MAX; prev.index_of.len()];
    let mut freed = Vec::new();
    let mut added: Vec<Point> = Vec::new();
    // Pages where points go away: found by hashing them again from the key.
    let mut gone: Vec<Point> = Vec::new();
    let mut j = 0;
    for (old, h) in prev.held.iter().enumerate() {
        while j < ids.len() && ids[j] < h.id {
            j += 1;
        }
        let old_key = prev.members.get(old).map_or(&[][..], |m| &m.key[..]);
        let survivor = j < ids.len()
            && ids[j] == h.id
            && prev.fingerprint.hash(old) == members.get(j).map(|m| m.hash);
        if survivor {
            slots[j] = h.slot;
            let count = counts[j];
            if count < h.count {
                keep[h.slot as usize] = u32::try_from(count).unwrap_or(u32::MAX);
                replicas(old_key, h.slot, count, h.count, &mut input, &mut gone);
            } else if count > h.count {
                replicas(&members[j].key, h.slot, h.count, count, &mut input, &mut added);
            }
        } else {
            keep[h.slot as usize] = 0;
            freed.push(h.slot);
            replicas(old_key, h.slot, 0, h.count, &mut input, &mut gone);
        }
    }
    // New members take free slots (not the ones freed just now), else fresh ones.
    let mut free = prev.free.clone();
    let mut next = u32::try_from(prev.index_of.len()).unwrap_or(u32::MAX);
    for (j, m) in members.iter().enumerate() {
        if slots[j] == u32::MAX {
            let slot = free.pop().unwrap_or_else(|| {
                next += 1;
                next - 1
            });
            slots[j] = slot;
            replicas(&m.key, slot, 0, counts[j], &mut input, &mut added);
        }
    }
    free.extend(freed);
    let mut index_of = vec![u32::MAX; next as usize].into_boxed_slice();
    for (j, &slot) in slots.iter().enumerate() {
        index_of[slot as usize] = u32::try_from(j).unwrap_or(u32::MAX);
    }

    let key = keys_by_slot(&index_of, &members);
    added.sort_unstable_by(|a, b| order(&key, a, b));
    let mut touched: Vec<usize> = gone
        .iter()
        .chain(&added)
        .map(|p| layout.page_of(p.hash))
        .collect();
    touched.sort_unstable();
    touched.dedup();
    // Each touched page: its kept points merged with its new ones.
    let mut len = prev.circle.len() + added.len();
    let mut rewritten = Vec::with_capacity(touched.len());
    let mut new = &added[..];
    for page in touched {
        let (mine, rest) = new.split_at(new.partition_point(|p| layout.page_of(p.hash) <= page));
        new = rest;
        let old = prev.circle.page(page);
        let mut out = Vec::with_capacity(old.len() + mine.len());
        let mut mine = mine.iter().peekable();
        for p in old {
            if p.replica >= keep.get(p.owner as usize).copied().unwrap_or(u32::MAX) {
                len -= 1;
                continue;
            }
            while let Some(f) = mine.next_if(|f| order(&key, f, &p).is_lt()) {
                out.push(*f);
            }
            out.push(p);
        }
        out.extend(mine);
        rewritten.push((page, out));
    }
    drop(key);
    // Slots sparse after many removals: numbered again, as a build from scratch would.
    let relabel = (index_of.len() > 2 * members.len() + 64).then(|| {
        let mut map = vec![u32::MAX; index_of.len()];
        for (j, &slot) in slots.iter().enumerate() {
            map[slot as usize] = u32::try_from(j).unwrap_or(u32::MAX);
        }
        map
    });
    let circle = prev.circle.with_pages(rewritten, len, relabel.as_deref());
    if relabel.is_some() {
        index_of = (0..).take(members.len()).collect();
        slots = index_of.to_vec();
        free.clear();
    }
    let held = ids
        .into_iter()
        .zip(counts)
        .zip(slots)
        .map(|((id, count), slot)| Held { id, count, slot })
        .collect();
    Core {
        circle,
        index_of,
        fingerprint,
        held,
        members,
        free,
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
