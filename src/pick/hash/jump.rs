//! Jump consistent hashing: a key to one of n numbered buckets with no table.
//!
//! The key seeds a linear congruential generator that "jumps" forward through the
//! bucket numbers; the last jump below n is the bucket. Going from n to n + 1 buckets
//! moves a key only to the new bucket n, and moves exactly the expected 1/(n + 1) of
//! them; lookup is O(ln n) steps with no memory but the bucket order.
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
//! **Guarantee** (checked by the property tests): jump(k, n + 1) ∈ {jump(k, n), n} for
//! every key, and the fraction moved lies within 4σ of 1/(n + 1).
//!
//! **Health**: a key whose bucket is ineligible is rehashed and jumped again (up to 32
//! times, then the buckets are scanned in order from there), so only that bucket's keys
//! move and they return when it does. The bucket order is rebuilt in O(n log n) on each
//! change; it is 4 B per member.
//!
//! **Cost**: ln n + 1 jumps on average, each a dependent chain of an integer-to-float
//! conversion, a multiplication and a float-to-integer conversion (≈ 7 ns on the bench
//! machine): 34 / 48 / 67 ns at N = 8 / 64 / 1024 including the key hash. Maglev is
//! faster at every size; jump's merit is zero memory and perfect balance.
//!
//! Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm", 2014
//! (arXiv:1406.2294).

use std::fmt;

use super::{BackendKey, HashPicker, WithFallback, key_hash, probe_then_scan};
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
}

impl Jump {
    /// Jump hashing with a round-robin fallback for requests without a key.
    pub fn new() -> Self {
        Jump::default()
    }

    /// The bucket in `0..buckets` of `key` (`None` for no buckets): Lamping and Veach's
    /// function exactly, on the key as given (the picker mixes request hashes first).
    ///
    /// ```
    /// use tower_lb::Jump;
    ///
    /// assert_eq!(Jump::bucket(0xDEAD_10CC, 666), Some(361));
    /// assert_eq!(Jump::bucket(7, 0), None);
    /// ```
    pub fn bucket(key: u64, buckets: u32) -> Option<u32> {
        (buckets > 0).then(|| jump(key, buckets))
    }
}

impl<F> Jump<F> {
    /// The same picker placing requests without a key with `fallback`.
    pub fn with_fallback<G>(self, fallback: G) -> Jump<G> {
        Jump { fallback }
    }

    /// The picker for requests without a key.
    pub fn fallback(&self) -> &F {
        &self.fallback
    }
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

impl<A: BackendKey, F: Picker<A>> Picker<A> for Jump<F> {
    type Table = WithFallback<JumpTable, F::Table>;

    fn prepare(&self, snapshot: &Snapshot<A>, previous: Option<&Self::Table>) -> Self::Table {
        // Sorted by key bytes. Each key's first 16 bytes, big-endian, settle most
        // comparisons without reading the key itself (an address such as
        // "10.0.195.80:8080" fits whole): zero padding keeps the order lexicographic,
        // and equal prefixes fall back to the full keys.
        let keys: Vec<Vec<u8>> = snapshot
            .backends()
            .iter()
            .map(|b| {
                let mut key = Vec::new();
                b.addr().write_key(&mut key);
                key
            })
            .collect();
        let mut order: Vec<(u128, u32)> = keys
            .iter()
            .enumerate()
            .filter_map(|(i, key)| {
                let mut prefix = [0u8; 16];
                let n = key.len().min(16);
                prefix[..n].copy_from_slice(&key[..n]);
                Some((u128::from_be_bytes(prefix), u32::try_from(i).ok()?))
            })
            .collect();
        order.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| keys[a.1 as usize].cmp(&keys[b.1 as usize]))
        });
        let buckets = order.into_iter().map(|(_, index)| index).collect();
        WithFallback::prepare(JumpTable { buckets }, &self.fallback, snapshot, previous)
    }

    #[inline]
    fn pick(
        &self,
        table: &Self::Table,
        snapshot: &Snapshot<A>,
        ctx: &PickContext,
    ) -> Option<usize> {
        table.pick(&self.fallback, snapshot, ctx, |hash| {
            self.find(table, snapshot, hash, |_| true)
        })
    }
}

impl<A: BackendKey, F: Picker<A>> HashPicker<A> for Jump<F> {
    /// The preference order: the key's bucket, then up to 31 buckets of rehashed keys,
    /// then every bucket from the last one on, wrapping.
    fn find<G>(
        &self,
        table: &Self::Table,
        snapshot: &Snapshot<A>,
        hash: u64,
        accept: G,
    ) -> Option<usize>
    where
        G: FnMut(usize) -> bool,
    {
        let buckets = &table.table.buckets;
        // (`n` fits: a table is never built past u32::MAX members.)
        let entry_of = |k, n: usize| jump(k, u32::try_from(n).unwrap_or(u32::MAX)) as usize;
        probe_then_scan(buckets, key_hash(hash), entry_of, snapshot, accept)
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
        for key in (0..5000u64).map(crate::stable_hash::mix) {
            let mut previous = jump(key, 1);
            assert_eq!(previous, 0);
            for n in 2..64 {
                let now = jump(key, n);
                assert!(now == previous || now == n - 1, "key {key:#x} n {n}");
                previous = now;
            }
        }
        assert!(jump(u64::MAX, u32::MAX) < u32::MAX);
    }
}
