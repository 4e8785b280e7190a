//! The canonical table: a member set's keys and weights, and the build from scratch (the
//! paper's fill, Envoy's weights).

use super::*;

/// Every member of a snapshot as the builder and the patch see it: key bytes in one
/// buffer (two allocations for the whole set, not one per member), key hash and
/// effective weight, in snapshot order.
pub(super) struct Set {
    pub(super) bytes: Vec<u8>,
    /// Where each member's key ends in `bytes`.
    pub(super) ends: Vec<usize>,
    /// Each member's key hash and weight: the table's fingerprint.
    pub(super) fingerprint: Fingerprint,
    /// Each member's id: the next change's set reuses the key hashes of the members
    /// that stay (same id, same key bytes) instead of hashing every key again.
    pub(super) ids: Vec<BackendId>,
}

/// One member of a [`Set`].
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    /// Its index in the snapshot.
    pub(super) index: u32,
    pub(super) key: &'a [u8],
    pub(super) hash: u64,
    pub(super) weight: u32,
}

impl Set {
    /// The set of `snapshot`'s members, with the keys and key hashes of `previous` (the
    /// set of the table it replaces) for the members in both, by id.
    pub(super) fn of<A: BackendKey>(snapshot: &Snapshot<A>, previous: Option<&Set>) -> Self {
        let mut bytes = Vec::with_capacity(previous.map_or(0, |p| p.bytes.len()));
        let mut ends = Vec::with_capacity(snapshot.len());
        let mut pairs = Vec::with_capacity(snapshot.len());
        let mut ids = Vec::with_capacity(snapshot.len());
        // Both in id order (a pool's snapshots are): one merge finds the survivors,
        // whose key bytes and hash are copied from `previous` — the address, which
        // a member keeps with its id, is not read (the key is behind one or two
        // pointers per member: at 50 000 members, that read is most of the cost).
        let mut k = 0;
        for (i, b) in snapshot.backends().iter().enumerate() {
            let id = b.id();
            let mut known = None;
            if let Some(prev) = previous {
                while prev.ids.get(k).is_some_and(|&p| p < id) {
                    k += 1;
                }
                if prev.ids.get(k) == Some(&id) {
                    known = prev.get(k);
                }
            }
            let hash = match known {
                Some(v) => {
                    bytes.extend_from_slice(v.key);
                    v.hash
                }
                None => {
                    let start = bytes.len();
                    b.addr().write_key(&mut bytes);
                    seeded(bytes.get(start..).unwrap_or_default(), SEED_IDENTITY)
                }
            };
            ends.push(bytes.len());
            pairs.push((hash, snapshot.effective_weight(i)));
            ids.push(id);
        }
        Set {
            bytes,
            ends,
            fingerprint: Fingerprint(pairs.into_boxed_slice()),
            ids,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn get(&self, j: usize) -> Option<View<'_>> {
        let start = j
            .checked_sub(1)
            .map_or(Some(0), |k| self.ends.get(k).copied())?;
        let end = *self.ends.get(j)?;
        let &(hash, weight) = self.fingerprint.entries().get(j)?;
        Some(View {
            index: u32::try_from(j).ok()?,
            key: self.bytes.get(start..end)?,
            hash,
            weight,
        })
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = View<'_>> + '_ {
        (0..self.len()).map_while(|j| self.get(j))
    }
}

/// A table built from scratch: each slot's member index, and each member's slot count.
pub(super) struct Flat {
    pub(super) entries: Vec<u32>,
    pub(super) counts: Vec<u32>,
}

impl Flat {
    pub(super) fn empty(members: usize) -> Self {
        Flat {
            entries: Vec::new(),
            counts: vec![0; members],
        }
    }
}

/// A table ready to publish: its slots and numbering, and what the next patch needs —
/// each member's slot count and slots.
pub(super) struct Built {
    pub(super) slots: Slots,
    pub(super) numbering: Numbering,
    pub(super) counts: Vec<u32>,
    /// Each number's slots; empty when the table is never patched.
    pub(super) owned: Vec<Vec<u32>>,
}

impl Built {
    /// The table of a from-scratch build, member `j` numbered `j`; with each member's
    /// slots listed when `patchable`.
    pub(super) fn canonical(flat: Flat, patchable: bool) -> Self {
        let numbering = Numbering::identity(flat.counts.len());
        let slots = Slots::of(&flat.entries, patchable);
        let owned = if patchable {
            owned_lists(&slots, &numbering)
        } else {
            Vec::new()
        };
        Built {
            slots,
            numbering,
            counts: flat.counts,
            owned,
        }
    }

    /// Each slot's member index ([`EMPTY`] for none).
    #[cfg(test)]
    pub(super) fn indices(&self) -> Vec<u32> {
        self.slots
            .iter()
            .map(|n| self.numbering.index(n).unwrap_or(EMPTY))
            .collect()
    }
}

/// A member's walk through its permutation of the slots during the build.
pub(super) struct Cursor {
    pub(super) index: u32,
    pub(super) weight: u32,
    pub(super) slot: u64,
    pub(super) skip: u64,
    pub(super) claimed: u64,
}

/// A member's permutation of the M slots: `offset`, `offset + skip`, … mod M.
pub(super) fn permutation(key: &[u8], m: u64) -> (u64, u64) {
    (
        seeded(key, SEED_MAGLEV_OFFSET) % m,
        seeded(key, SEED_MAGLEV_SKIP) % (m - 1).max(1) + 1,
    )
}

/// How many claims pass between two checks of `cancelled` in a background build.
pub(super) const CHECK_EVERY: u64 = 4096;

/// Builds the table: backends in canonical order (by key hash, then key bytes) take
/// turns claiming their next free preferred slot; a backend of weight w claims in
/// round t when t · w ≥ claimed · w_max (Envoy's rule), and ties within a round go in
/// canonical order. A heap keyed by (round, canonical position) replays exactly that
/// loop in O(M log N) whatever the weights. `None` when `cancelled` said so.
pub(super) fn build(members: &Set, size: u32, cancelled: &dyn Fn() -> bool) -> Option<Flat> {
    let m = u64::from(size);
    let mut order: Vec<View<'_>> = members.iter().filter(|b| b.weight > 0).collect();
    order.sort_unstable_by(|a, b| (a.hash, a.key).cmp(&(b.hash, b.key)));
    let Some(max_weight) = order.iter().map(|b| b.weight).max() else {
        return Some(Flat::empty(members.len()));
    };
    let mut cursors: Vec<Cursor> = order
        .iter()
        .map(|b| {
            let (slot, skip) = permutation(b.key, m);
            Cursor {
                index: b.index,
                weight: b.weight,
                slot,
                skip,
                claimed: 0,
            }
        })
        .collect();
    let mut entries = vec![EMPTY; size as usize];
    // Which slots are taken, one bit each: the walks probe this (M/8 bytes, 610 KiB at
    // the largest M, cache-resident) rather than the 4-byte entries (up to 19 MiB).
    let mut taken = vec![0u64; (size as usize).div_ceil(64)];
    let mut filled = 0u64;
    if cursors.iter().all(|c| c.weight == max_weight) {
        // Equal weights: every backend claims once per round, in canonical order — the
        // heap's order, without the heap.
        'rounds: loop {
            for c in &mut cursors {
                claim(&mut entries, &mut taken, c, m);
                c.claimed += 1;
                filled += 1;
                if filled >= m {
                    break 'rounds;
                }
                if filled.is_multiple_of(CHECK_EVERY) && cancelled() {
                    return None;
                }
            }
        }
    } else {
        let mut turns: BinaryHeap<Reverse<(u64, usize)>> =
            (0..cursors.len()).map(|pos| Reverse((1, pos))).collect();
        while filled < m {
            let Some(Reverse((round, pos))) = turns.pop() else {
                break;
            };
            let Some(c) = cursors.get_mut(pos) else {
                break;
            };
            claim(&mut entries, &mut taken, c, m);
            filled += 1;
            c.claimed += 1;
            let due =
                (u128::from(c.claimed) * u128::from(max_weight)).div_ceil(u128::from(c.weight));
            let next = u64::try_from(due).unwrap_or(u64::MAX).max(round + 1);
            turns.push(Reverse((next, pos)));
            if filled.is_multiple_of(CHECK_EVERY) && cancelled() {
                return None;
            }
        }
    }
    let mut counts = vec![0u32; members.len()];
    for c in &cursors {
        if let Some(n) = counts.get_mut(c.index as usize) {
            *n = u32::try_from(c.claimed).unwrap_or(u32::MAX);
        }
    }
    Some(Flat { entries, counts })
}

/// `c` claims its next free preferred slot.
#[inline]
pub(super) fn claim(entries: &mut [u32], taken: &mut [u64], c: &mut Cursor, m: u64) {
    // M is prime and 1 ≤ skip < M, so the walk visits every slot: a free one exists.
    for _ in 0..m {
        let slot = c.slot as usize;
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        match taken.get_mut(word) {
            Some(w) if *w & bit == 0 => {
                *w |= bit;
                if let Some(e) = entries.get_mut(slot) {
                    *e = c.index;
                }
                return;
            }
            _ => {
                // slot, skip < m: one conditional subtraction instead of a division.
                c.slot += c.skip;
                if c.slot >= m {
                    c.slot -= m;
                }
            }
        }
    }
}
