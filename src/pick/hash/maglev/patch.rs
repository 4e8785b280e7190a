//! Patching the previous table for a small change: only the slots that must move do.

use super::*;

/// A patch applies only when at most one member in `PATCH_MAX_CHANGED_PER` changed
/// (inserted, removed or reweighted); a larger change is built from scratch.
pub(super) const PATCH_MAX_CHANGED_PER: usize = 8;

/// Each member's share of the M slots, M · wᵢ / W, compared exactly (in u128).
pub(super) struct Targets<'a> {
    pub(super) m: u128,
    pub(super) total: u128,
    pub(super) members: &'a Set,
}

impl Targets<'_> {
    /// M · wᵢ and W, for `c` compared with M · wᵢ / W as c · W against M · wᵢ.
    pub(super) fn share(&self, j: usize) -> u128 {
        self.members
            .get(j)
            .map_or(0, |b| self.m * u128::from(b.weight))
    }

    /// c < target.
    pub(super) fn below(&self, j: usize, c: u32) -> bool {
        u128::from(c) * self.total < self.share(j)
    }

    /// c + 1 ≤ target: one more slot keeps it at or under its share.
    pub(super) fn wants(&self, j: usize, c: u32) -> bool {
        (u128::from(c) + 1) * self.total <= self.share(j)
    }

    /// c > target: it may give a slot and stay within one of its share.
    pub(super) fn above(&self, j: usize, c: u32) -> bool {
        u128::from(c) * self.total > self.share(j)
    }

    /// ⌈target⌉: the most slots within one of its share.
    pub(super) fn ceil(&self, j: usize) -> u32 {
        u32::try_from(self.share(j).div_ceil(self.total.max(1))).unwrap_or(u32::MAX)
    }
}

/// Maps a 64-bit key hash to itself: the fingerprint's hashes are already mixed.
#[derive(Default)]
pub(super) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
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
pub(super) fn patch(prev: &Core, members: &Set, size: u32) -> Option<Built> {
    let m = size as usize;
    let n = members.len();
    let old = prev.fingerprint.entries();
    if prev.entries.len() != m || m < 3 || u32::try_from(n).is_err() {
        return None;
    }
    let total: u128 = members.iter().map(|b| u128::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut old_index: HashMap<u64, u32, BuildHasherDefault<IdentityHasher>> =
        HashMap::with_capacity_and_hasher(old.len(), BuildHasherDefault::default());
    for (i, &(hash, _)) in old.iter().enumerate() {
        if old_index.insert(hash, u32::try_from(i).ok()?).is_some() {
            return None; // Two members with one key hash: identity is ambiguous.
        }
    }
    // Old index → new index (EMPTY: removed), new → old (EMPTY: inserted), and the
    // members that must walk their own permutation to reach their share (inserted or
    // weight increased).
    let mut remap = vec![EMPTY; old.len()];
    let mut old_of = vec![EMPTY; n];
    let mut grows = Vec::new();
    let mut changed = 0usize;
    for (j, b) in members.iter().enumerate() {
        if b.index as usize != j || j >= n {
            return None;
        }
        match old_index.get(&b.hash) {
            Some(&i) => {
                let (slot, &(_, weight)) = remap.get_mut(i as usize).zip(old.get(i as usize))?;
                if *slot != EMPTY {
                    return None;
                }
                *slot = b.index;
                *old_of.get_mut(j)? = i;
                if weight != b.weight {
                    changed += 1;
                    if b.weight > weight {
                        grows.push(j);
                    }
                }
            }
            None => {
                changed += 1;
                grows.push(j);
            }
        }
    }
    changed += remap.iter().filter(|&&j| j == EMPTY).count();
    if changed.saturating_mul(PATCH_MAX_CHANGED_PER) > n {
        return None;
    }
    let targets = Targets {
        m: m as u128,
        total,
        members,
    };
    let old_total: u128 = old.iter().map(|&(_, w)| u128::from(w)).sum();
    let m64 = m as u64;

    let state = prev.lock();
    if state.counts.len() != old.len() {
        return None;
    }
    let mut counts = vec![0u32; n];
    for (&j, &c) in remap.iter().zip(&state.counts) {
        if let Some(n) = counts.get_mut(j as usize) {
            *n = c;
        }
    }
    // Whose balance the patch enforces: inserted and reweighted members, and those
    // within one slot of their share before the change. A member already further from
    // it (a canonical weighted table has a few: Envoy's rounds) is not moved for that
    // alone; it only gives slots while above its share and gains while below.
    let enforce: Vec<bool> = (0..n)
        .map(|j| {
            let i = old_of.get(j).copied().unwrap_or(EMPTY) as usize;
            let (Some(&(_, w)), Some(&c)) = (old.get(i), state.counts.get(i)) else {
                return true;
            };
            let (c, share) = (u128::from(c), m as u128 * u128::from(w));
            w != members.get(j).map_or(0, |b| b.weight)
                || ((c + 1) * old_total > share && (c == 0 || (c - 1) * old_total < share))
        })
        .collect();
    // Members a whole slot or more above their share: they shed slots.
    let sheds: Vec<bool> = counts
        .iter()
        .zip(&enforce)
        .enumerate()
        .map(|(j, (&c, &e))| e && c > 0 && !targets.below(j, c - 1))
        .collect();
    let any_shed = sheds.iter().any(|&s| s);
    let mut free: Vec<u32> = Vec::new();
    let mut shed: Vec<(u32, u32)> = Vec::new();
    // One pass: copy, re-index, and collect the free and shedding slots.
    let mut entries: Box<[AtomicU32]> = prev
        .entries
        .iter()
        .zip(0u32..)
        .map(|(e, slot)| {
            let j = remap.get(e.index() as usize).copied().unwrap_or(EMPTY);
            if j == EMPTY {
                free.push(slot);
            } else if any_shed && sheds.get(j as usize).copied().unwrap_or(false) {
                shed.push((j, slot));
            }
            AtomicU32::new(j)
        })
        .collect();
    drop(state);

    // Shedding: keep the first ⌈share⌉ slots in the member's own permutation order.
    if !shed.is_empty() {
        // Each shedding member's offset and inverse skip: slot s is at position
        // (s − offset) · skip⁻¹ mod M of its permutation.
        let mut inverse = vec![(0u64, 0u64); n];
        for (j, _) in sheds.iter().enumerate().filter(|&(_, &s)| s) {
            let (offset, skip) = permutation(members.get(j)?.key, m64);
            *inverse.get_mut(j)? = (offset, pow_mod(skip, m64 - 2, m64));
        }
        // Bucketed by member (each bucket as long as the member's count, which the
        // entries match), then each member's highest ranks selected: O(shedding slots).
        let mut start = vec![0usize; n + 1];
        for (j, _) in sheds.iter().enumerate().filter(|&(_, &s)| s) {
            *start.get_mut(j + 1)? = *counts.get(j)? as usize;
        }
        for j in 0..n {
            *start.get_mut(j + 1)? += *start.get(j)?;
        }
        let mut fill = start.clone();
        let mut ranked = vec![(0u64, 0u32); *start.get(n)?];
        for &(j, slot) in &shed {
            let (offset, inv) = *inverse.get(j as usize)?;
            let at = fill.get_mut(j as usize)?;
            *ranked.get_mut(*at)? = ((u64::from(slot) + m64 - offset) % m64 * inv % m64, slot);
            *at += 1;
        }
        if fill.get(..n) != start.get(1..) {
            return None; // The counts kept do not match the entries.
        }
        for (j, _) in sheds.iter().enumerate().filter(|&(_, &s)| s) {
            let bucket = ranked.get_mut(*start.get(j)?..*start.get(j + 1)?)?;
            let keep = (targets.ceil(j) as usize).min(bucket.len());
            if keep < bucket.len() {
                if keep > 0 {
                    bucket.select_nth_unstable(keep);
                }
                for &(_, slot) in bucket.get(keep..)? {
                    *entries.get_mut(slot as usize)?.get_mut() = EMPTY;
                    *counts.get_mut(j)? -= 1;
                    free.push(slot);
                }
            }
        }
    }

    // Inserted and grown members walk their own permutation up to their share.
    for &j in &grows {
        walk(&mut entries, &mut counts, &targets, members, j, true, |c| {
            !targets.below(j, c)
        })?;
    }

    // The free slots left go to members under their share: a whole slot short first.
    free.retain(|&slot| {
        entries
            .get_mut(slot as usize)
            .is_some_and(|e| *e.get_mut() == EMPTY)
    });
    free.sort_unstable();
    for whole in [true, false] {
        let needs = |j: usize, c: u32| {
            if whole {
                targets.wants(j, c)
            } else {
                targets.below(j, c)
            }
        };
        let mut needy: Vec<usize> = (0..n)
            .filter(|&j| counts.get(j).is_some_and(|&c| needs(j, c)))
            .collect();
        while !needy.is_empty() {
            let Some(slot) = free.pop() else { break };
            let k = reduce(key_hash(u64::from(slot) ^ SEED_PATCH_FILL), needy.len());
            let j = *needy.get(k)?;
            let c = counts.get_mut(j)?;
            *c += 1;
            if !needs(j, *c) {
                needy.swap_remove(k);
            }
            *entries.get_mut(slot as usize)?.get_mut() = u32::try_from(j).ok()?;
        }
    }
    if !free.is_empty() {
        return None;
    }
    // Anyone still a whole slot short takes from members above their share.
    for j in 0..n {
        if enforce.get(j) == Some(&true) && counts.get(j).is_some_and(|&c| targets.wants(j, c)) {
            walk(
                &mut entries,
                &mut counts,
                &targets,
                members,
                j,
                false,
                |c| !targets.wants(j, c),
            )?;
        }
    }
    Some(Built { entries, counts })
}

/// Member `j` walks its permutation, taking slots of members above their share (and
/// free slots when `take_free`) until `done(count)`. `None` if the walk ends first.
pub(super) fn walk(
    entries: &mut [AtomicU32],
    counts: &mut [u32],
    targets: &Targets<'_>,
    members: &Set,
    j: usize,
    take_free: bool,
    done: impl Fn(u32) -> bool,
) -> Option<()> {
    let m = entries.len() as u64;
    let (mut slot, skip) = permutation(members.get(j)?.key, m);
    let index = u32::try_from(j).ok()?;
    if done(*counts.get(j)?) {
        return Some(());
    }
    // M is prime and 1 ≤ skip < M: the walk visits every slot once.
    for _ in 0..m {
        let e = entries.get_mut(slot as usize)?.get_mut();
        let owner = *e;
        let take = if owner == EMPTY {
            take_free
        } else {
            owner != index
                && counts
                    .get(owner as usize)
                    .is_some_and(|&c| targets.above(owner as usize, c))
        };
        if take {
            if let Some(c) = counts.get_mut(owner as usize) {
                *c -= 1;
            }
            *e = index;
            let c = counts.get_mut(j)?;
            *c += 1;
            if done(*c) {
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
