//! Building a ring: point counts, the points, their order, and the pages — from
//! scratch, or from the previous ring by rewriting only the pages the change touches.
//!
//! Points name their owner by a *stable slot*, not by snapshot index: a member keeps its
//! slot for as long as it stays (matched by id with one merge, snapshots being in id
//! order; a member keeps its address, hence its key, while it keeps its id), so a
//! change leaves the points of the members that stay as they are, and each table maps
//! slots to snapshot indices (`index_of`, O(N) to rebuild). A slot freed by a removal
//! is reused by a later change, never by the same one, so every point of an old page
//! under a live slot is that member's. Once most slots are free (more than 2N + 64 in
//! all) a change numbers them again, as a build from scratch does.

use std::sync::Arc;

use super::ring_pages::{Circle, Point};
use super::{BackendKey, SEED_RING};
use crate::backend::BackendId;
use crate::snapshot::Snapshot;
use crate::stable_hash::seeded;

pub(super) struct Core {
    /// The points, in circle order, owners by stable slot.
    pub(super) circle: Circle,
    /// Each stable slot's snapshot index (`u32::MAX` for a free slot).
    pub(super) index_of: Box<[u32]>,
    /// Each member's id, by snapshot index: what the next change matches survivors by.
    ids: Box<[BackendId]>,
    /// Each member's weight, point count and slot, by snapshot index.
    held: Box<[Held]>,
    /// Each member's key bytes, by snapshot index: where the points of a member that
    /// leaves (or loses points) are, found without scanning the ring.
    keys: Keys,
    /// The snapshot's weight scale the counts were made with.
    scale: u32,
    /// Slots free for the next change's new members.
    free: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    weight: u32,
    count: u32,
    slot: u32,
}

impl Held {
    /// Each member's weight, point count and slot, in snapshot order.
    fn all(weights: &[u32], counts: &[u32], slots: impl IntoIterator<Item = u32>) -> Box<[Held]> {
        weights
            .iter()
            .zip(counts)
            .zip(slots)
            .map(|((&weight, &count), slot)| Held {
                weight,
                count,
                slot,
            })
            .collect()
    }
}

/// Every member's key bytes end to end, and where each ends.
#[derive(Default)]
struct Keys {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// While copying from an older `Keys`: the run of its bytes copied but not yet
    /// written, and where it goes (see [`copy`](Self::copy)).
    run: Option<(usize, usize, usize)>,
}

impl Keys {
    fn with_capacity(bytes: usize, members: usize) -> Keys {
        Keys {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(members),
            run: None,
        }
    }

    /// Appends the key of `old`'s member `i`. Consecutive members are copied in one
    /// run, when the run ends ([`push`](Self::push) or [`finish`](Self::finish)).
    #[inline]
    fn copy(&mut self, old: &Keys, i: usize) {
        let start = i
            .checked_sub(1)
            .and_then(|b| old.ends.get(b))
            .copied()
            .unwrap_or(0);
        let end = old.ends.get(i).copied().unwrap_or(start);
        let (from, to, at) = match self.run {
            Some((from, to, at)) if to == start => (from, end, at),
            _ => {
                self.flush(old);
                (start, end, self.bytes.len())
            }
        };
        self.run = Some((from, to, at));
        self.ends.push(at + (to - from));
    }

    /// Writes the run being copied from `old`.
    fn flush(&mut self, old: &Keys) {
        if let Some((from, to, _)) = self.run.take() {
            self.bytes
                .extend_from_slice(old.bytes.get(from..to).unwrap_or_default());
        }
    }

    /// The key of member `i`.
    fn get(&self, i: usize) -> &[u8] {
        let start = match i.checked_sub(1) {
            Some(before) => self.ends.get(before).copied().unwrap_or(0),
            None => 0,
        };
        let end = self.ends.get(i).copied().unwrap_or(start);
        self.bytes.get(start..end).unwrap_or_default()
    }

    /// Appends `addr`'s key (after the run being copied from `old`, if any).
    fn push<A: BackendKey + ?Sized>(&mut self, addr: &A, old: Option<&Keys>) -> &[u8] {
        if let Some(old) = old {
            self.flush(old);
        }
        let start = self.bytes.len();
        addr.write_key(&mut self.bytes);
        self.ends.push(self.bytes.len());
        self.bytes.get(start..).unwrap_or_default()
    }
}

impl Core {
    /// How many members the ring was built for (with a point or not).
    pub(super) fn members(&self) -> usize {
        self.ids.len()
    }

    /// Whether `snapshot` has this ring's members (ids and key bytes alike, checked by
    /// id: an id keeps its address) at the same weights and scale.
    fn serves<A: BackendKey>(&self, snapshot: &Snapshot<A>) -> bool {
        self.scale == snapshot.weight_scale()
            && self.ids.len() == snapshot.len()
            && snapshot
                .backends()
                .iter()
                .zip(self.ids.iter().zip(self.held.iter()))
                .enumerate()
                .all(|(i, (b, (&id, h)))| b.id() == id && snapshot.effective_weight(i) == h.weight)
    }
}

/// How many points each member gets: V per unit of weight — `V × w / scale`, rounded,
/// at least one for a positive weight, where `scale` is the snapshot's
/// [`weight_scale`](Snapshot::weight_scale) (effective weights are multiplied by it while a
/// slow-start ramp runs; dividing it out keeps every other backend's points unchanged and
/// makes a ramping backend's points a growing prefix of its full set). Scaled down in
/// proportion (at least one each) when the total would pass `max_points`: ⌊max × w / Σw⌋.
///
/// A count depends only on the weight, given V, the cap, the scale and Σw: computed
/// once per distinct weight (a small cache), not once per member.
pub(super) fn point_counts(
    weights: &[u32],
    per_weight: u32,
    max_points: u32,
    scale: u32,
) -> Vec<u32> {
    let scale = u64::from(scale.max(1));
    // w × V + scale / 2 < 2⁶⁴ for 32-bit w, V and scale.
    let wanted = |w: u32| match w {
        0 => 0,
        _ => ((u64::from(w) * u64::from(per_weight) + scale / 2) / scale).max(1),
    };
    let mut cache = Cache::default();
    let total: u128 = weights
        .iter()
        .map(|&w| u128::from(cache.get(w, wanted)))
        .sum();
    let weight_sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let max = u64::from(max_points);
    let mut cache = Cache::default();
    weights
        .iter()
        .map(|&w| {
            let n = cache.get(w, |w| {
                if total <= u128::from(max) || w == 0 {
                    wanted(w)
                } else {
                    // max × w < 2⁶⁴, and w ≤ Σw.
                    (max * u64::from(w) / weight_sum).max(1)
                }
            });
            u32::try_from(n).unwrap_or(u32::MAX)
        })
        .collect()
}

/// A direct-mapped cache of a function of the weight (`u64::MAX`: no entry; no count
/// reaches it).
struct Cache([(u32, u64); 64]);

impl Default for Cache {
    fn default() -> Self {
        Cache([(0, u64::MAX); 64])
    }
}

impl Cache {
    #[inline]
    fn get(&mut self, w: u32, f: impl Fn(u32) -> u64) -> u64 {
        let entry = &mut self.0[w as usize % 64];
        if entry.0 != w || entry.1 == u64::MAX {
            *entry = (w, f(w));
        }
        entry.1
    }
}

/// The points of replicas `from..to` of the member with key `key`, in slot `slot`.
fn replicas(key: &[u8], slot: u32, from: u32, to: u32, input: &mut Vec<u8>, out: &mut Vec<Point>) {
    // Point r hashes the key bytes followed by r as a u64 (as Ketama hashes "addr-r"):
    // distinct inputs, so points are independent. (Varying XXH3's *seed* instead would
    // not do: for short inputs the seed enters linearly, and similar names would
    // collide.)
    input.clear();
    input.extend_from_slice(key);
    let at = input.len();
    for replica in from..to {
        input.truncate(at);
        input.extend_from_slice(&u64::from(replica).to_le_bytes());
        out.push(Point {
            hash: seeded(input, SEED_RING),
            owner: slot,
            replica,
        });
    }
}

/// The circle's order: by position; equal positions by owner key bytes, then replica,
/// so the order (and who wins a collision) depends neither on the snapshot's member
/// order nor on the slots.
#[inline]
fn order(keys: &Keys, index_of: &[u32], a: &Point, b: &Point) -> std::cmp::Ordering {
    // Keys are read only on a tie of positions (rare): most comparisons touch the points.
    a.hash.cmp(&b.hash).then_with(|| {
        let key = |p: &Point| {
            let index = index_of
                .get(p.owner as usize)
                .map_or(usize::MAX, |&i| i as usize);
            keys.get(index)
        };
        (key(a), a.replica).cmp(&(key(b), b.replica))
    })
}

/// The ring of `snapshot`'s members (eligible or not): `previous` itself when the
/// members and their weights are the same, else built from it (or from scratch).
///
/// From the previous ring a change costs O(N) for the members (one merge of the id
/// lists; the survivors' key bytes copied in runs, only new members' keys written) plus
/// the pages its points fall in: survivors keep their slot and their points; the points
/// past a member's new count and those of members that left are hashed again to find
/// their pages, only the new points hashed and sorted, and each touched page patched —
/// the same ring a build from scratch gives (O(P log P) and P hashes).
pub(super) fn prepare<A: BackendKey>(
    snapshot: &Snapshot<A>,
    per_weight: u32,
    max_points: u32,
    previous: Option<&Arc<Core>>,
) -> Arc<Core> {
    if let Some(prev) = previous
        && prev.serves(snapshot)
    {
        return Arc::clone(prev);
    }
    let weights: Vec<u32> = (0..snapshot.len())
        .map(|i| snapshot.effective_weight(i))
        .collect();
    let counts = point_counts(&weights, per_weight, max_points, snapshot.weight_scale());
    Arc::new(match previous {
        Some(prev) => change(snapshot, &weights, &counts, prev),
        None => scratch(snapshot, &weights, &counts),
    })
}

fn scratch<A: BackendKey>(snapshot: &Snapshot<A>, weights: &[u32], counts: &[u32]) -> Core {
    // Slots are the snapshot indices.
    let mut input = Vec::new();
    let mut keys = Keys::with_capacity(0, snapshot.len());
    let mut points = Vec::with_capacity(counts.iter().map(|&c| c as usize).sum());
    for (slot, (b, &count)) in (0..).zip(snapshot.backends().iter().zip(counts)) {
        let key = keys.push(b.addr(), None);
        replicas(key, slot, 0, count, &mut input, &mut points);
    }
    let index_of: Box<[u32]> = (0..).take(snapshot.len()).collect();
    points.sort_unstable_by(|a, b| order(&keys, &index_of, a, b));
    let held = Held::all(weights, counts, 0..);
    Core {
        circle: Circle::from_sorted(&points),
        index_of,
        ids: snapshot.backends().iter().map(|b| b.id()).collect(),
        held,
        keys,
        scale: snapshot.weight_scale(),
        free: Vec::new(),
    }
}

fn change<A: BackendKey>(
    snapshot: &Snapshot<A>,
    weights: &[u32],
    counts: &[u32],
    prev: &Core,
) -> Core {
    let layout = prev.circle.layout();
    let backends = snapshot.backends();
    let n = backends.len();
    let mut input = Vec::new();
    let mut keys = Keys::with_capacity(prev.keys.bytes.len() + 64, n);
    let mut slots = vec![u32::MAX; n];
    let mut ids = Vec::with_capacity(n);
    let mut freed = Vec::new();
    // Survivors by a merge of the two id-ordered lists: old members that left, new
    // ones, and survivors whose count changed (snapshot index, slot, old count, new
    // count).
    let (mut left, mut joined, mut resized) = (Vec::new(), Vec::new(), Vec::new());
    let mut old = 0;
    for (j, b) in backends.iter().enumerate() {
        let id = b.id();
        ids.push(id);
        while prev.ids.get(old).is_some_and(|&o| o < id) {
            left.push(old);
            old += 1;
        }
        if prev.ids.get(old) != Some(&id) {
            keys.push(b.addr(), Some(&prev.keys));
            joined.push(j);
            continue;
        }
        // A survivor: same id, hence same address and key (the pool never gives an id
        // to another address), whose key bytes are copied, not written again.
        keys.copy(&prev.keys, old);
        let h = prev.held[old];
        old += 1;
        slots[j] = h.slot;
        if counts[j] != h.count {
            resized.push((j, h.slot, h.count, counts[j]));
        }
    }
    left.extend(old..prev.ids.len());
    keys.flush(&prev.keys);
    let mut added: Vec<Point> = Vec::new();
    // Points that go away, hashed again from the key: where the pages to rewrite are.
    let mut gone: Vec<Point> = Vec::new();
    for old in left {
        let h = prev.held[old];
        freed.push(h.slot);
        replicas(
            prev.keys.get(old),
            h.slot,
            0,
            h.count,
            &mut input,
            &mut gone,
        );
    }
    for (j, slot, from, to) in resized {
        if to < from {
            replicas(keys.get(j), slot, to, from, &mut input, &mut gone);
        } else {
            replicas(keys.get(j), slot, from, to, &mut input, &mut added);
        }
    }
    // New members take free slots (not the ones freed just now), else fresh ones.
    let mut free = prev.free.clone();
    let mut next = u32::try_from(prev.index_of.len()).unwrap_or(u32::MAX);
    for j in joined {
        let slot = free.pop().unwrap_or_else(|| {
            next += 1;
            next - 1
        });
        slots[j] = slot;
        replicas(keys.get(j), slot, 0, counts[j], &mut input, &mut added);
    }
    free.extend(freed);
    let mut index_of = vec![u32::MAX; next as usize].into_boxed_slice();
    for (j, &slot) in (0..).zip(&slots) {
        if let Some(at) = index_of.get_mut(slot as usize) {
            *at = j;
        }
    }

    added.sort_unstable_by(|a, b| order(&keys, &index_of, a, b));
    gone.sort_unstable_by_key(|p| p.hash);
    let mut touched: Vec<usize> = gone
        .iter()
        .chain(&added)
        .map(|p| layout.page_of(p.hash))
        .collect();
    touched.sort_unstable();
    touched.dedup();
    // Each touched page patched: its points that go found by position, the new ones
    // placed by the circle's order among the old.
    let mut len = prev.circle.len() + added.len();
    let mut rewritten = Vec::with_capacity(touched.len());
    let (mut new, mut old) = (&added[..], &gone[..]);
    let (mut removed, mut placed) = (Vec::new(), Vec::new());
    let mut scratch = Vec::new();
    for page in touched {
        let in_page = |p: &Point| layout.page_of(p.hash) <= page;
        let (mine, rest) = new.split_at(new.partition_point(in_page));
        new = rest;
        let (going, rest) = old.split_at(old.partition_point(in_page));
        old = rest;
        let view = prev.circle.page_view(page);
        removed.clear();
        for g in going {
            let mut i = view.partition_point(|p| p.hash < g.hash);
            while let Some(p) = view.get(i).filter(|p| p.hash == g.hash) {
                if p.owner == g.owner && p.replica == g.replica {
                    removed.push(i);
                    break;
                }
                i += 1;
            }
        }
        removed.sort_unstable();
        len -= removed.len();
        placed.clear();
        for &f in mine {
            let mut i = view.partition_point(|p| p.hash < f.hash);
            // Among equal positions (rare), after the points that stay and come first.
            while let Some(p) = view.get(i).filter(|p| p.hash == f.hash) {
                if removed.contains(&i) || order(&keys, &index_of, &p, &f).is_lt() {
                    i += 1;
                } else {
                    break;
                }
            }
            placed.push((i, f));
        }
        rewritten.push((page, view.patched(&removed, &placed, &mut scratch)));
    }
    // Slots sparse after many removals: numbered again, as a build from scratch would.
    let relabel = (index_of.len() > 2 * n + 64).then(|| {
        let mut map = vec![u32::MAX; index_of.len()];
        for (j, &slot) in (0..).zip(&slots) {
            if let Some(at) = map.get_mut(slot as usize) {
                *at = j;
            }
        }
        map
    });
    let circle = prev.circle.with_pages(rewritten, len, relabel.as_deref());
    if relabel.is_some() {
        index_of = (0..).take(n).collect();
        slots = index_of.to_vec();
        free.clear();
    }
    let held = Held::all(weights, counts, slots);
    Core {
        circle,
        index_of,
        ids: ids.into_boxed_slice(),
        held,
        keys,
        scale: snapshot.weight_scale(),
        free,
    }
}

#[cfg(test)]
#[path = "ring_build_tests.rs"]
mod tests;
