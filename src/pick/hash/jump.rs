//! Jump consistent hashing: a key to one of n numbered buckets with no table.
//!
//! Going from n to n + 1 buckets moves a key only to the new bucket n, and moves exactly
//! the expected 1/(n + 1) of them; lookup needs no memory but the bucket order.
//!
//! **The algorithm**: JumpBackHash (Ertl 2024), by default. Think of a key's bucket as
//! the buckets grow one at a time: it jumps now and then to the newest bucket, and its
//! bucket for n is its last jump below n. Lamping and Veach walk those jumps *forwards*
//! from bucket 0, about ln n of them, each costing a division. JumpBackHash draws, with
//! one random word, which power-of-two ranges [2^i, 2^(i+1)) hold a jump (each does with
//! probability ½, independently) and where in its range the last of them lands; starting
//! from the highest range below n it only has to walk *back* when that landing point is
//! at or past n, drawing further points of the range until one falls below n (found) or
//! in the range's lower half (no jump below n in this range: go to the next set range).
//! A lookup is O(1) on average — a few multiply-xorshift rounds of SplitMix64 seeded with
//! the key, no division — with the same distribution of buckets as Lamping and Veach's
//! and hence the same guarantees. [`Jump::lamping_veach`] keeps the classic function for
//! interoperating with its many ports (the two place keys differently).
//!
//! **The limitation**: buckets are *numbers*. Here bucket i is the i-th member in
//! ascending order of [`BackendKey`] bytes, so only a member that sorts *last* can be
//! added or removed cheaply: adding or removing one in the middle renumbers every bucket
//! after it and moves most keys. Use it for numbered shards (`u64` ids, or zero-padded
//! names such as `shard-007`; integers' key bytes sort numerically) that grow and shrink
//! at the end; use [`Maglev`](crate::Maglev), [`Ring`](crate::Ring) or
//! [`Rendezvous`](crate::Rendezvous) for sets of hosts. Weights are ignored: every
//! bucket is equal.
//!
//! **Guarantee** (checked by the property tests, for both functions): jump(k, n + 1) ∈
//! {jump(k, n), n} for every key, the fraction moved lies within 4σ of 1/(n + 1), and
//! keys spread uniformly over the buckets (chi-square).
//!
//! **Health**: a key whose bucket is ineligible is rehashed and jumped again (up to 32
//! times, then the buckets are scanned in order from there), so only that bucket's keys
//! move and they return when it does. The bucket order is 12 B per member (the order
//! and each member's id). A small change (at most 1/64 of the set, or 8 members) keeps
//! the previous order, renumbered in O(n), and places each new member by binary search
//! on the keys (log n keys written); a larger one sorts again in O(n log n). Either way
//! the order is the same.
//!
//! **Cost**: JumpBackHash's lookup does not grow with n (see the `hash-lookup` bench
//! group, beside Maglev's table read); Lamping and Veach's takes ln n + 1 jumps, each a
//! dependent chain of conversions and a multiplication.
//!
//! Sources: Ertl, "JumpBackHash: Say Goodbye to the Modulo Operation to Distribute Keys
//! Uniformly to Buckets", 2024 (arXiv:2403.18682; hash4j's `ConsistentHashing`); Lamping
//! & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm", 2014 (arXiv:1406.2294).

use std::fmt;

use super::{
    Accept, BackendKey, HashPicker, Lookup, WithFallback, ids, key_hash, keys, pick_by_preference,
    previous_positions, probe_then_scan,
};
use crate::backend::BackendId;
use crate::pick::round_robin::RoundRobin;
use crate::pick::{PickContext, Picker};
use crate::snapshot::Snapshot;

/// Jump consistent hashing over the members in key order. See the [module docs](self).
///
/// # Examples
///
/// ```
/// use tower_lb::{Jump, PickContext, Picker, Snapshot, Weight};
///
/// // Shards numbered 0..4: growing to 5 only moves keys onto shard 4.
/// let four = Snapshot::build((0u64..4).map(|s| (s, Weight::ONE)))?;
/// let five = Snapshot::build((0u64..5).map(|s| (s, Weight::ONE)))?;
/// let jump = Jump::new();
/// let (t4, t5) = (jump.prepare(&four, None), jump.prepare(&five, None));
/// for key in 0..1000u64 {
///     let ctx = PickContext::new().with_hash(key);
///     let before = four.backends()[jump.pick(&t4, &four, &ctx).unwrap()].addr();
///     let after = five.backends()[jump.pick(&t5, &five, &ctx).unwrap()].addr();
///     assert!(after == before || *after == 4);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Jump<F = RoundRobin> {
    fallback: F,
    classic: bool,
}

impl Jump {
    /// JumpBackHash with a round-robin fallback for requests without a key.
    pub fn new() -> Self {
        Jump::default()
    }

    /// Lamping and Veach's function instead of JumpBackHash: O(ln n) per lookup, for
    /// placing keys exactly as other implementations of it do.
    pub fn lamping_veach() -> Self {
        Jump {
            fallback: RoundRobin::new(),
            classic: true,
        }
    }

    /// The bucket in `0..buckets` of `key` by JumpBackHash (`None` for no buckets), on
    /// the key as given (the picker mixes request hashes first).
    ///
    /// ```
    /// use tower_lb::Jump;
    ///
    /// let shard = Jump::bucket(0xDEAD_10CC, 666).unwrap();
    /// assert!(shard < 666);
    /// // A 667th bucket takes keys only onto itself.
    /// assert!([shard, 666].contains(&Jump::bucket(0xDEAD_10CC, 667).unwrap()));
    /// assert_eq!(Jump::bucket(7, 0), None);
    /// ```
    pub fn bucket(key: u64, buckets: u32) -> Option<u32> {
        (buckets > 0).then(|| jump_back(key, buckets))
    }

    /// The bucket in `0..buckets` of `key` by Lamping and Veach's function exactly
    /// (`None` for no buckets).
    ///
    /// ```
    /// use tower_lb::Jump;
    ///
    /// assert_eq!(Jump::lamping_veach_bucket(0xDEAD_10CC, 666), Some(361));
    /// ```
    pub fn lamping_veach_bucket(key: u64, buckets: u32) -> Option<u32> {
        (buckets > 0).then(|| jump(key, buckets))
    }
}

impl<F> Jump<F> {
    /// The same picker placing requests without a key with `fallback`.
    pub fn with_fallback<G>(self, fallback: G) -> Jump<G> {
        Jump {
            fallback,
            classic: self.classic,
        }
    }

    /// The picker for requests without a key.
    pub fn fallback(&self) -> &F {
        &self.fallback
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014): the generator JumpBackHash draws from, seeded
/// with the key.
struct SplitMix64(u64);

impl SplitMix64 {
    #[inline]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// JumpBackHash (Ertl 2024), `buckets >= 1`. See the module docs.
#[inline]
fn jump_back(key: u64, buckets: u32) -> u32 {
    if buckets <= 1 {
        return 0;
    }
    let mut rng = SplitMix64(key);
    let first = rng.next();
    // Bit i set: the key jumps at least once while the bucket count grows through
    // [2^i, 2^(i+1)). Only the ranges below the next power of two ≥ `buckets` matter.
    let mut ranges = ((first ^ (first >> 32)) as u32) & (u32::MAX >> (buckets - 1).leading_zeros());
    while ranges != 0 {
        let low = 1u32 << (31 - ranges.leading_zeros());
        // The last jump in the highest set range: uniform in [low, 2·low), from the half
        // of `first` the parity of the set bits picks (independent of the bits above).
        let half = (first >> ((ranges.count_ones() & 1) * 32)) as u32;
        let last = low | (half & (low - 1));
        if last < buckets {
            return last;
        }
        // At or past `buckets`: walk back through the range's earlier jumps. A draw in
        // the lower half of [0, 2·low) means no jump lies in [low, buckets).
        let span = (low << 1).wrapping_sub(1);
        'back: loop {
            let r = rng.next();
            for draw in [r as u32 & span, (r >> 32) as u32 & span] {
                if draw < low {
                    break 'back;
                }
                if draw < buckets {
                    return draw;
                }
            }
        }
        ranges ^= low;
    }
    0
}

/// Lamping & Veach's jump consistent hash, `buckets >= 1`.
#[inline]
fn jump(mut key: u64, buckets: u32) -> u32 {
    let n = i64::from(buckets);
    let (mut b, mut j) = (-1i64, 0i64);
    while j < n {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // (key >> 33) + 1 ≤ 2³¹ + 1 converts exactly through i64 (one instruction, where
        // u64 → f64 takes several). Float → integer casts saturate, so a huge jump simply
        // ends the loop.
        let r = ((key >> 33) as i64 + 1) as f64;
        j = ((b + 1) as f64 * (2_147_483_648.0 / r)) as i64;
    }
    b.clamp(0, n - 1) as u32
}

/// The members in bucket order: snapshot indices sorted by key bytes.
pub struct JumpTable {
    buckets: Box<[u32]>,
    /// Each member's id, in snapshot order (the next change keeps survivors' order).
    ids: Box<[BackendId]>,
}

impl JumpTable {
    /// Snapshot indices in bucket order: bucket i is `buckets()[i]`.
    pub fn buckets(&self) -> &[u32] {
        &self.buckets
    }
}

impl fmt::Debug for JumpTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JumpTable")
            .field("buckets", &self.buckets.len())
            .finish()
    }
}

/// The members in key order, sorted from scratch: O(n log n). Each key's first 16
/// bytes, big-endian, settle most comparisons without reading the key itself (an
/// address such as "10.0.195.80:8080" fits whole): zero padding keeps the order
/// lexicographic, and equal prefixes fall back to the full keys.
fn sorted<A: BackendKey>(snapshot: &Snapshot<A>) -> Box<[u32]> {
    let keys = keys(snapshot);
    // (Zipped with a u32 count, exact in size: one allocation; a table never holds
    // u32::MAX members.)
    let mut order: Vec<(u128, u32)> = keys
        .iter()
        .zip(0u32..)
        .map(|(k, i)| {
            let mut prefix = [0u8; 16];
            let n = k.len().min(16);
            prefix[..n].copy_from_slice(&k[..n]);
            (u128::from_be_bytes(prefix), i)
        })
        .collect();
    let key = |i: u32| keys.get(i as usize).map(|k| &k[..]);
    order.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| key(a.1).cmp(&key(b.1))));
    order.into_iter().map(|(_, index)| index).collect()
}

/// The previous key order with the change applied, when the change is small (at most
/// 1/64 of the set, or 8 members): survivors keep their order, renumbered; each new
/// member is placed by binary search on the keys (log n keys written, not n). The same
/// order [`sorted`] gives; `None` for a larger change.
fn patched<A: BackendKey>(previous: &JumpTable, snapshot: &Snapshot<A>) -> Option<Box<[u32]>> {
    let positions = previous_positions(&previous.ids, snapshot);
    let added: Vec<u32> = (0u32..)
        .zip(&positions)
        .filter_map(|(i, p)| p.is_none().then_some(i))
        .collect();
    let removed = previous.ids.len() - (positions.len() - added.len());
    if added.len() + removed > (snapshot.len() / 64).max(8) {
        return None;
    }
    let mut new_of_old = vec![u32::MAX; previous.ids.len()];
    for (i, p) in (0u32..).zip(&positions) {
        if let Some(slot) = p.and_then(|old| new_of_old.get_mut(old as usize)) {
            *slot = i;
        }
    }
    let mut order: Vec<u32> = previous
        .buckets
        .iter()
        .filter_map(|&old| new_of_old.get(old as usize).copied())
        .filter(|&i| i != u32::MAX)
        .collect();
    let (mut key, mut other) = (Vec::new(), Vec::new());
    let write = |i: u32, out: &mut Vec<u8>| {
        out.clear();
        if let Some(b) = snapshot.get(i as usize) {
            b.addr().write_key(out);
        }
    };
    for i in added {
        write(i, &mut key);
        let at = order.partition_point(|&k| {
            write(k, &mut other);
            other < key
        });
        order.insert(at, i);
    }
    Some(order.into_boxed_slice())
}

impl<A: BackendKey, F: Picker<A>> Picker<A> for Jump<F> {
    type Table = WithFallback<JumpTable, F::Table>;

    fn uses_affinity(&self) -> bool {
        true
    }

    fn reads_latency(&self) -> bool {
        // Requests without a key go to the fallback.
        self.fallback.reads_latency()
    }

    fn prepare(&self, snapshot: &Snapshot<A>, previous: Option<&Self::Table>) -> Self::Table {
        let buckets = previous
            .and_then(|p| patched(&p.table, snapshot))
            .unwrap_or_else(|| sorted(snapshot));
        let table = JumpTable {
            buckets,
            ids: ids(snapshot),
        };
        WithFallback::prepare(table, &self.fallback, snapshot, previous)
    }

    pick_by_preference!();
}

impl<A: BackendKey, F: Picker<A>> HashPicker<A> for Jump<F> {
    /// The preference order: the key's bucket, then up to 31 buckets of rehashed keys,
    /// then every bucket from the last one on, wrapping.
    fn find(&self, key: Lookup<'_, A, Self::Table>, accept: impl Accept) -> Option<usize> {
        let (buckets, snapshot) = (&key.table.table.buckets, key.snapshot);
        // (`n` fits: a table is never built past u32::MAX members.)
        let n = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let entry = |i: usize| buckets.get(i).map(|&b| b as usize);
        let (len, hash) = (buckets.len(), key_hash(key.hash));
        if self.classic {
            let entry_of = |k, size| jump(k, n(size)) as usize;
            probe_then_scan(len, entry, hash, entry_of, snapshot, accept)
        } else {
            let entry_of = |k, size| jump_back(k, n(size)) as usize;
            probe_then_scan(len, entry, hash, entry_of, snapshot, accept)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors of the reference implementation, as every port checks them
    /// (dgryski/go-jump's test table and others).
    #[test]
    fn matches_the_reference_implementation() {
        assert_eq!(jump(1, 1), 0);
        assert_eq!(jump(1, 128), 55);
        assert_eq!(jump(129, 128), 120);
        assert_eq!(jump(128, 100_000_000), 38_172_097);
        assert_eq!(jump(u64::MAX, 128), 92);
        assert_eq!(jump(42, 57), 43);
        assert_eq!(jump(0xDEAD_10CC, 1), 0);
        assert_eq!(jump(0xDEAD_10CC, 666), 361);
        assert_eq!(jump(256, 1024), 520);
    }

    #[test]
    fn grows_only_onto_the_new_bucket() {
        for f in [jump, jump_back] {
            for key in (0..5000u64).map(crate::stable_hash::mix) {
                let mut previous = f(key, 1);
                assert_eq!(previous, 0);
                for n in 2..300 {
                    let now = f(key, n);
                    assert!(now == previous || now == n - 1, "key {key:#x} n {n}");
                    previous = now;
                }
            }
            assert!(f(u64::MAX, u32::MAX) < u32::MAX);
            assert!(f(0, u32::MAX) < u32::MAX);
        }
    }

    /// JumpBackHash spreads keys as uniformly as the classic function: chi-square of
    /// 200,000 keys over n buckets below the 99.9% quantile (normal approximation).
    #[test]
    fn jump_back_is_uniform() {
        for n in [2u32, 3, 5, 7, 64, 100, 1000, 1025] {
            let keys = 200_000u64;
            let mut counts = vec![0u64; n as usize];
            for key in (0..keys).map(crate::stable_hash::mix) {
                counts[jump_back(key, n) as usize] += 1;
            }
            let expected = keys as f64 / f64::from(n);
            let chi2: f64 = counts
                .iter()
                .map(|&c| (c as f64 - expected).powi(2) / expected)
                .sum();
            let df = f64::from(n - 1);
            let limit = df + 3.09 * (2.0 * df).sqrt() + 5.0;
            assert!(chi2 < limit, "n {n}: chi2 {chi2:.1} over {limit:.1}");
        }
    }
}
