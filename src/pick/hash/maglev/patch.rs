//! Patching the previous table for a small change: only the slots that must move do.

use super::*;

/// A patch applies only when at most one member in `PATCH_MAX_CHANGED_PER` changed
/// (inserted, removed or reweighted); a larger change is built from scratch.
pub(super) const PATCH_MAX_CHANGED_PER: usize = 8;

/// Each member's share of the M slots, M · wᵢ / W, compared exactly — in u64: a patch
/// applies only where M · W fits (W < 3.6 · 10¹² at the largest M).
pub(super) struct Targets<'a> {
    pub(super) m: u64,
    pub(super) total: u64,
    pub(super) weights: &'a [(u64, u32)],
}

impl Targets<'_> {
    /// M · wᵢ, for `c` compared with M · wᵢ / W as c · W against M · wᵢ.
    #[inline]
    pub(super) fn share(&self, j: usize) -> u64 {
        self.weights
            .get(j)
            .map_or(0, |&(_, w)| self.m * u64::from(w))
    }

    /// c < target.
    #[inline]
    pub(super) fn below(&self, j: usize, c: u32) -> bool {
        u64::from(c) * self.total < self.share(j)
    }

    /// c + 1 ≤ target: one more slot keeps it at or under its share.
    #[inline]
    pub(super) fn wants(&self, j: usize, c: u32) -> bool {
        (u64::from(c) + 1) * self.total <= self.share(j)
    }

    /// c > target: it may give a slot and stay within one of its share.
    #[inline]
    pub(super) fn above(&self, j: usize, c: u32) -> bool {
        u64::from(c) * self.total > self.share(j)
    }

    /// ⌈target⌉: the most slots within one of its share.
    pub(super) fn ceil(&self, j: usize) -> u32 {
        u32::try_from(self.share(j).div_ceil(self.total.max(1))).unwrap_or(u32::MAX)
    }
}

/// `base`^`exp` mod `m`, for m < 2³².
pub(super) fn pow_mod(base: u64, mut exp: u64, m: u64) -> u64 {
    let (mut result, mut base) = (1 % m, base % m);
    while exp > 0 {
        if exp & 1 == 1 {
            result = result * base % m;
        }
        base = base * base % m;
        exp >>= 1;
    }
    result
}

/// A patch in progress: the new table's slots (copied chunk by chunk as they are
/// written), numbering, counts and slot lists.
pub(super) struct Work {
    pub(super) slots: SlotsMut,
    pub(super) numbering: Numbering,
    pub(super) counts: Vec<u32>,
    /// Each number's slots.
    pub(super) owned: Vec<Vec<u32>>,
}

impl Work {
    /// Member `j`'s slots.
    fn slots_of(&mut self, j: u32) -> Option<&mut Vec<u32>> {
        let number = *self.numbering.number_of.get(j as usize)?;
        self.owned.get_mut(number as usize)
    }

    /// The member index owning `slot` in the new table ([`EMPTY`]: free — a removed
    /// member's slot or one given up).
    #[inline]
    pub(super) fn owner(&self, slot: usize) -> u32 {
        self.slots
            .get(slot)
            .and_then(|n| self.numbering.index(n))
            .unwrap_or(EMPTY)
    }

    /// Gives `slot` to member `j` (or frees it: `j` = [`EMPTY`]), keeping counts and
    /// lists.
    pub(super) fn assign(&mut self, slot: usize, j: u32) -> Option<()> {
        let owner = self.owner(slot);
        let slot32 = u32::try_from(slot).ok()?;
        if owner != EMPTY {
            *self.counts.get_mut(owner as usize)? -= 1;
            let list = self.slots_of(owner)?;
            let at = list.iter().position(|&s| s == slot32)?;
            list.swap_remove(at);
        }
        let number = if j == EMPTY {
            EMPTY
        } else {
            *self.counts.get_mut(j as usize)? += 1;
            self.slots_of(j)?.push(slot32);
            *self.numbering.number_of.get(j as usize)?
        };
        self.slots.set(slot, number)
    }
}

/// The table of `members` patched from `prev` (same size M): only the slots that must
/// move do. `None` when the change is too large or anything is off (then build).
///
/// Removed members' slots become free; a member above its share by a slot or more
/// (a weight decrease, or a share that shrank) keeps the first ⌈M · w / W⌉ of its
/// slots in its own permutation order and frees the rest; an inserted member or a
/// weight increase walks its permutation (the build's offset and skip) taking free slots
/// and slots of members above their share until it reaches its share; the free slots
/// left go to members under their share, chosen by a hash of the slot (those a whole
/// slot short first); a member still a whole slot short walks its permutation taking
/// slots of members above their share. Every member ends within one slot of M · w / W.
///
/// Cost: O(N) for the bookkeeping, plus a copy of each 16 KiB chunk holding a moved
/// slot; the members' slot lists are taken from `prev` (a second patch from `prev`
/// finds none and returns `None`).
pub(super) fn patch(prev: &Core, members: &Set, size: u32) -> Option<Built> {
    let m = size as usize;
    let n = members.len();
    let old = prev.members.fingerprint.entries();
    if prev.slots.len() != m || m < 3 || u32::try_from(n).is_err() {
        return None;
    }
    let weights = members.fingerprint.entries();
    let sum = |w: &[(u64, u32)]| {
        w.iter()
            .map(|&(_, w)| u64::from(w))
            .try_fold(0u64, u64::checked_add)
    };
    let (total, old_total) = (sum(weights)?, sum(old)?);
    let m64 = m as u64;
    // Shares compared in u64 (see `Targets`); past that, build.
    if total == 0 || total.max(old_total).checked_mul(m64 + 1).is_none() {
        return None;
    }
    // Old index → new index (EMPTY: removed), new → old (EMPTY: inserted), and the
    // members that must walk their own permutation to reach their share (inserted or
    // weight increased). A member is the same when its id and key are: both sets are in
    // id order, so one merge matches them.
    let (old_ids, ids) = (&prev.members.ids, &members.ids);
    if ids.len() != n || old_ids.len() != old.len() {
        return None;
    }
    let mut remap = vec![EMPTY; old.len()];
    let mut old_of = vec![EMPTY; n];
    let mut grows = Vec::new();
    let mut changed = 0usize;
    let mut i = 0usize;
    for (j, (&id, &(hash, weight))) in ids.iter().zip(weights).enumerate() {
        while old_ids.get(i).is_some_and(|&o| o < id) {
            i += 1;
        }
        // (The key hash stands for the key: a 64-bit collision under one id is not
        // a case.)
        let same = old_ids.get(i) == Some(&id) && old.get(i).map(|&(h, _)| h) == Some(hash);
        if same {
            let (slot, &(_, was)) = remap.get_mut(i).zip(old.get(i))?;
            *slot = u32::try_from(j).ok()?;
            *old_of.get_mut(j)? = u32::try_from(i).ok()?;
            if was != weight {
                changed += 1;
                if weight > was {
                    grows.push(j);
                }
            }
            i += 1;
        } else {
            changed += 1;
            grows.push(j);
        }
    }
    changed += remap.iter().filter(|&&j| j == EMPTY).count();
    if changed.saturating_mul(PATCH_MAX_CHANGED_PER) > n {
        return None;
    }
    let targets = Targets {
        m: m64,
        total,
        weights,
    };

    let mut state = prev.lock();
    if state.counts.len() != old.len() || state.owned.len() != prev.numbering.index_of.len() {
        return None;
    }
    // The old table's chunks, shared until written: taken under the lock, so a
    // background build never writes into them halfway (it stops: see `prepare`).
    let slots = SlotsMut::of(&prev.slots);
    // The slot lists are by number, so they carry over as they are.
    let mut owned = std::mem::take(&mut state.owned);
    let old_counts = state.counts.clone();
    drop(state);
    let numbering = prev.numbering.next(&old_of)?;
    let mut counts = vec![0u32; n];
    let mut free: Vec<u32> = Vec::new();
    for (i, &j) in remap.iter().enumerate() {
        match counts.get_mut(j as usize) {
            Some(c) => *c = *old_counts.get(i)?,
            // A removed member's slots are free.
            None => {
                let number = *prev.numbering.number_of.get(i)?;
                free.append(owned.get_mut(number as usize)?);
            }
        }
    }
    // New numbers past the end start with no slot.
    owned.resize_with(numbering.index_of.len().max(owned.len()), Vec::new);
    let mut work = Work {
        slots,
        numbering,
        counts,
        owned,
    };
    // Whose balance the patch enforces: inserted and reweighted members, and those
    // within one slot of their share before the change. A member already further from
    // it (a canonical weighted table has a few: Envoy's rounds) is not moved for that
    // alone; it only gives slots while above its share and gains while below.
    let enforce: Vec<bool> = (0..n)
        .map(|j| {
            let i = old_of.get(j).copied().unwrap_or(EMPTY) as usize;
            let (Some(&(_, w)), Some(&c)) = (old.get(i), old_counts.get(i)) else {
                return true;
            };
            let (c, share) = (u64::from(c), m64 * u64::from(w));
            w != weights.get(j).map_or(0, |&(_, w)| w)
                || ((c + 1) * old_total > share && (c == 0 || (c - 1) * old_total < share))
        })
        .collect();

    // Members a whole slot or more above their share shed slots: each keeps the first
    // ⌈share⌉ of its slots in its own permutation order.
    for j in 0..n {
        let c = *work.counts.get(j)?;
        if !(*enforce.get(j)? && c > 0 && !targets.below(j, c - 1)) {
            continue;
        }
        let keep = (targets.ceil(j) as usize).min(c as usize);
        if keep >= c as usize {
            continue;
        }
        // Slot s is at position (s − offset) · skip⁻¹ mod M of the member's permutation.
        let (offset, skip) = permutation(members.get(j)?.key, m64);
        let inv = pow_mod(skip, m64 - 2, m64);
        let mut ranked: Vec<(u64, u32)> = work
            .slots_of(u32::try_from(j).ok()?)?
            .iter()
            .map(|&slot| ((u64::from(slot) + m64 - offset) % m64 * inv % m64, slot))
            .collect();
        if keep >= ranked.len() {
            continue;
        }
        if keep > 0 {
            ranked.select_nth_unstable(keep);
        }
        for &(_, slot) in ranked.get(keep..)? {
            work.assign(slot as usize, EMPTY)?;
            free.push(slot);
        }
    }

    // Inserted and grown members walk their own permutation up to their share.
    for &j in &grows {
        walk(&mut work, &targets, members, j, true, |c| {
            !targets.below(j, c)
        })?;
    }

    // The free slots left go to members under their share: a whole slot short first.
    free.retain(|&slot| work.owner(slot as usize) == EMPTY);
    free.sort_unstable();
    free.dedup();
    for whole in [true, false] {
        let needs = |j: usize, c: u32| {
            if whole {
                targets.wants(j, c)
            } else {
                targets.below(j, c)
            }
        };
        let mut needy: Vec<usize> = (0..n)
            .filter(|&j| work.counts.get(j).is_some_and(|&c| needs(j, c)))
            .collect();
        while !needy.is_empty() {
            let Some(slot) = free.pop() else { break };
            let k = reduce(key_hash(u64::from(slot) ^ SEED_PATCH_FILL), needy.len());
            let j = *needy.get(k)?;
            work.assign(slot as usize, u32::try_from(j).ok()?)?;
            if !needs(j, *work.counts.get(j)?) {
                needy.swap_remove(k);
            }
        }
    }
    if !free.is_empty() {
        return None;
    }
    // Anyone still a whole slot short takes from members above their share.
    for j in 0..n {
        if enforce.get(j) == Some(&true) && work.counts.get(j).is_some_and(|&c| targets.wants(j, c))
        {
            walk(&mut work, &targets, members, j, false, |c| {
                !targets.wants(j, c)
            })?;
        }
    }
    Some(Built {
        slots: work.slots.finish(),
        numbering: work.numbering,
        counts: work.counts,
        owned: work.owned,
    })
}

/// Member `j` walks its permutation, taking slots of members above their share (and
/// free slots when `take_free`) until `done(count)`. `None` if the walk ends first.
pub(super) fn walk(
    work: &mut Work,
    targets: &Targets<'_>,
    members: &Set,
    j: usize,
    take_free: bool,
    done: impl Fn(u32) -> bool,
) -> Option<()> {
    let m = work.slots.len() as u64;
    let (mut slot, skip) = permutation(members.get(j)?.key, m);
    let index = u32::try_from(j).ok()?;
    if done(*work.counts.get(j)?) {
        return Some(());
    }
    // M is prime and 1 ≤ skip < M: the walk visits every slot once.
    for _ in 0..m {
        let owner = work.owner(slot as usize);
        let take = if owner == EMPTY {
            take_free
        } else {
            owner != index
                && work
                    .counts
                    .get(owner as usize)
                    .is_some_and(|&c| targets.above(owner as usize, c))
        };
        if take {
            work.assign(slot as usize, index)?;
            if done(*work.counts.get(j)?) {
                return Some(());
            }
        }
        slot += skip;
        if slot >= m {
            slot -= m;
        }
    }
    None
}
