//! Maglev hashing: a lookup table filled by per-backend permutations.
//!
//! Each backend derives a permutation of the M table slots from its key (an offset and a
//! skip, M prime); backends take turns claiming their next free preferred slot until the
//! table is full, so equal-weight backends own ⌊M/N⌋ or ⌈M/N⌉ slots each, and a key is
//! placed by one table read at `hash mod M`. Weights are honoured by letting a backend
//! of weight w claim w/w_max times per round (Envoy's scheme).
//!
//! **Guarantee** (checked by the property tests, M = 65 537, N ≤ 1000): equal weights give
//! every backend ⌊M/N⌋ or ⌈M/N⌉ entries; removing a backend changes at most 1 % of the
//! table beyond that backend's own entries at N = 100 (measured 0.58 %) and N = 1000
//! (0.59 %), and at most 1.25 % for any N ≤ 1000 — the disruption peaks around N ≈ 330–500
//! (median 0.92 %, worst seen 1.12 %), where a larger table helps; two tables built from
//! the same set in any order are identical.
//!
//! **Health**: the table is built over every member and is *not* rebuilt when only
//! eligibility changes. A key whose slot belongs to an ineligible backend is rehashed to
//! another slot (up to 32 probes, then a scan of the table from there), so its keys
//! spread over the others in proportion to their shares and no other key moves.
//!
//! **Table size**: by default the table grows with the set, as the paper asks (M ≥ 100 ·
//! N): 65 537 slots up to 655 backends, then the smallest of [`TABLE_SIZES`] (primes,
//! each about double the last) with at least 100 slots per backend, up to
//! [`MAX_TABLE_SIZE`] — so every backend owns within 1 % of the same share of the keys
//! (the property tests check ≤ 1.02 × the ideal share at N = 10 000; with the old fixed
//! 65 537 slots the busiest backend had 1.06× at 10 000 and 1.41× at 50 000). A set that
//! crosses a step gets a new M, which moves most keys; [`Maglev::with_table_size`] fixes
//! M and rules that out.
//!
//! **Cost**: lookup O(1) — a hash mix, a multiply-shift and one read of a 4-byte entry:
//! 6–7 ns at N = 8, 64 and 1024 including the key hash; memory 4 B × M: 256 KiB up to 655
//! backends, then 400–800 B per backend (4 MiB at 10 000, 19 MiB at 50 000); build
//! O(M log N) on the change path (O(M) plus the probe walks with equal weights), which
//! makes Maglev the one strategy whose change cost grows with its table rather than
//! with the change: see the README's "Scale" table.
//!
//! Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load Balancer",
//! NSDI 2016; weights as in Envoy's `MaglevTable`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::Arc;

use super::{
    Accept, BackendKey, Fingerprint, HashPicker, Lookup, Member, SEED_MAGLEV_OFFSET,
    SEED_MAGLEV_SKIP, WithFallback, key_hash, pick_by_preference, probe_then_scan, reduce,
    reuse_or_build,
};
use crate::error::ConfigError;
use crate::pick::round_robin::RoundRobin;
use crate::pick::{PickContext, Picker};
use crate::snapshot::Snapshot;
use crate::stable_hash::seeded;

/// The smallest table an automatically sized Maglev uses (and the size up to 655
/// backends): the prime 65 537, as Envoy and the paper's evaluation use.
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

/// The sizes an automatically sized table takes: primes, each about twice the last,
/// from [`DEFAULT_TABLE_SIZE`] to [`MAX_TABLE_SIZE`].
pub const TABLE_SIZES: [u32; 8] = [
    65_537, 131_071, 262_147, 524_287, 1_048_573, 2_097_143, 4_194_301, 5_000_011,
];

/// The largest accepted table size: the prime 5 000 011 (20 MB), Envoy's upper bound.
pub const MAX_TABLE_SIZE: u32 = 5_000_011;

/// Marks a slot not yet claimed during the build.
const EMPTY: u32 = u32::MAX;

/// Maglev consistent hashing. See the [module docs](self).
///
/// # Examples
///
/// ```
/// use tower_lb::affinity::hash_key;
/// use tower_lb::{Maglev, PickContext, Picker, Snapshot, Weight};
///
/// let snapshot = Snapshot::build([
///     ("10.0.0.1:80", Weight::ONE),
///     ("10.0.0.2:80", Weight::ONE),
///     ("10.0.0.3:80", Weight::new(2)?),
/// ])?;
/// let maglev = Maglev::new();
/// let table = maglev.prepare(&snapshot, None);
/// let ctx = PickContext::new().with_hash(hash_key(b"user-42"));
/// let home = maglev.pick(&table, &snapshot, &ctx);
/// assert!(home.is_some());
/// assert_eq!(maglev.pick(&table, &snapshot, &ctx), home); // same key, same backend
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Maglev<F = RoundRobin> {
    /// `None`: sized for the set ([`Maglev::table_size_for`]).
    size: Option<u32>,
    fallback: F,
}

impl Maglev {
    /// Maglev with a table sized for the set ([`table_size_for`](Self::table_size_for):
    /// at least 100 slots per backend, 65 537 up to 655 backends) and a round-robin
    /// fallback for requests without a key.
    pub fn new() -> Self {
        Maglev {
            size: None,
            fallback: RoundRobin::new(),
        }
    }
}

impl Default for Maglev {
    fn default() -> Self {
        Maglev::new()
    }
}

impl<F> Maglev<F> {
    /// The same picker with a table of `size` slots; fails unless `size` is a prime
    /// between 2 and [`MAX_TABLE_SIZE`].
    ///
    /// ```
    /// use tower_lb::Maglev;
    ///
    /// assert!(Maglev::new().with_table_size(655_373).is_ok());
    /// assert!(Maglev::new().with_table_size(65_536).is_err()); // not a prime
    /// ```
    pub fn with_table_size(self, size: u64) -> Result<Self, ConfigError> {
        match u32::try_from(size) {
            Ok(s) if (2..=MAX_TABLE_SIZE).contains(&s) && is_prime(s) => Ok(Maglev {
                size: Some(s),
                fallback: self.fallback,
            }),
            _ => Err(ConfigError::MaglevTableSize {
                size,
                min: 2,
                max: u64::from(MAX_TABLE_SIZE),
            }),
        }
    }

    /// The same picker placing requests without a key with `fallback`.
    pub fn with_fallback<G>(self, fallback: G) -> Maglev<G> {
        Maglev {
            size: self.size,
            fallback,
        }
    }

    /// The table size M set with [`with_table_size`](Self::with_table_size), or, when
    /// the table is sized for the set, the smallest size it takes
    /// ([`DEFAULT_TABLE_SIZE`]).
    pub fn table_size(&self) -> u32 {
        self.size.unwrap_or(DEFAULT_TABLE_SIZE)
    }

    /// The table size M for a set of `members` backends (every member, eligible or not):
    /// the size set with [`with_table_size`](Self::with_table_size), else the smallest of
    /// [`TABLE_SIZES`] with at least 100 slots per backend (the paper's M ≥ 100 · N, so
    /// each backend's share of the keys is within 1 % of the others'), capped at
    /// [`MAX_TABLE_SIZE`] (from 50 000 backends on).
    ///
    /// Memory is 4 bytes per slot: 256 KiB up to 655 backends, then 400–800 B per
    /// backend (4 MiB at 10 000, 19 MiB at 50 000). The sizes are a fixed ladder,
    /// doubling, rather than the next prime after 100 · N: M changes only when the set
    /// crosses a step (655, 1 310, 2 621, 5 242, 10 485, 20 971, 41 943 backends), and a
    /// change of M moves most keys, as any new table size does — set a size to rule it
    /// out. Independent instances with the same set still agree: M follows from the set.
    ///
    /// ```
    /// use tower_lb::Maglev;
    ///
    /// assert_eq!(Maglev::new().table_size_for(3), 65_537);
    /// assert_eq!(Maglev::new().table_size_for(10_000), 1_048_573);
    /// assert_eq!(Maglev::new().table_size_for(1_000_000), 5_000_011);
    /// assert_eq!(Maglev::new().with_table_size(7).unwrap().table_size_for(10_000), 7);
    /// ```
    pub fn table_size_for(&self, members: usize) -> u32 {
        self.size.unwrap_or_else(|| {
            let wanted = u64::try_from(members)
                .unwrap_or(u64::MAX)
                .saturating_mul(100);
            TABLE_SIZES
                .into_iter()
                .find(|&m| u64::from(m) >= wanted)
                .unwrap_or(MAX_TABLE_SIZE)
        })
    }

    /// The picker for requests without a key.
    pub fn fallback(&self) -> &F {
        &self.fallback
    }
}

/// A Maglev lookup table. Cheap to clone: tables are shared between snapshots that
/// differ only in eligibility.
#[derive(Clone)]
pub struct MaglevTable {
    core: Arc<Core>,
}

struct Core {
    /// The backend index owning each slot; empty when no member has a positive weight.
    entries: Box<[u32]>,
    fingerprint: Fingerprint,
}

impl MaglevTable {
    /// The lookup table: the index (in the snapshot) of the backend owning each slot.
    /// Empty when the set has no member with a positive weight.
    pub fn entries(&self) -> &[u32] {
        &self.core.entries
    }

    /// Whether `self` and `other` are the same table in memory (a table reused across a
    /// health change rather than rebuilt).
    pub fn ptr_eq(&self, other: &MaglevTable) -> bool {
        Arc::ptr_eq(&self.core, &other.core)
    }
}

impl fmt::Debug for MaglevTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaglevTable")
            .field("size", &self.core.entries.len())
            .field("members", &self.core.fingerprint.len())
            .finish()
    }
}

/// A member's walk through its permutation of the slots during the build.
struct Cursor {
    index: u32,
    weight: u32,
    slot: u64,
    skip: u64,
    claimed: u64,
}

/// Builds the table: backends in canonical order (by key hash, then key bytes) take
/// turns claiming their next free preferred slot; a backend of weight w claims in
/// round t when t · w ≥ claimed · w_max (Envoy's rule), and ties within a round go in
/// canonical order. A heap keyed by (round, canonical position) replays exactly that
/// loop in O(M log N) whatever the weights.
fn build(members: Vec<Member>, fingerprint: Fingerprint, size: u32) -> Core {
    let m = u64::from(size);
    let mut order: Vec<Member> = members.into_iter().filter(|b| b.weight > 0).collect();
    order.sort_unstable_by(|a, b| (a.hash, &a.key).cmp(&(b.hash, &b.key)));
    let Some(max_weight) = order.iter().map(|b| b.weight).max() else {
        return Core {
            entries: Box::new([]),
            fingerprint,
        };
    };
    let mut cursors: Vec<Cursor> = order
        .iter()
        .map(|b| Cursor {
            index: b.index,
            weight: b.weight,
            slot: seeded(&b.key, SEED_MAGLEV_OFFSET) % m,
            skip: seeded(&b.key, SEED_MAGLEV_SKIP) % (m - 1).max(1) + 1,
            claimed: 0,
        })
        .collect();
    let mut entries = vec![EMPTY; size as usize].into_boxed_slice();
    // Which slots are taken, one bit each: the walks probe this (M/8 bytes, 610 KiB at
    // the largest M, cache-resident) rather than the 4-byte entries (up to 19 MiB).
    let mut taken = vec![0u64; (size as usize).div_ceil(64)];
    if cursors.iter().all(|c| c.weight == max_weight) {
        // Equal weights: every backend claims once per round, in canonical order — the
        // heap's order, without the heap.
        let mut filled = 0u64;
        'rounds: loop {
            for c in &mut cursors {
                claim(&mut entries, &mut taken, c, m);
                filled += 1;
                if filled >= m {
                    break 'rounds;
                }
            }
        }
        return Core {
            entries,
            fingerprint,
        };
    }
    let mut turns: BinaryHeap<Reverse<(u64, usize)>> =
        (0..cursors.len()).map(|pos| Reverse((1, pos))).collect();
    let mut filled = 0u64;
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
        let due = (u128::from(c.claimed) * u128::from(max_weight)).div_ceil(u128::from(c.weight));
        let next = u64::try_from(due).unwrap_or(u64::MAX).max(round + 1);
        turns.push(Reverse((next, pos)));
    }
    Core {
        entries,
        fingerprint,
    }
}

/// `c` claims its next free preferred slot.
#[inline]
fn claim(entries: &mut [u32], taken: &mut [u64], c: &mut Cursor, m: u64) {
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

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    (2u64..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

impl<A: BackendKey, F: Picker<A>> Picker<A> for Maglev<F> {
    type Table = WithFallback<MaglevTable, F::Table>;

    fn uses_affinity(&self) -> bool {
        true
    }

    fn prepare(&self, snapshot: &Snapshot<A>, previous: Option<&Self::Table>) -> Self::Table {
        // Every member, eligible or not: a health change never resizes (nor rebuilds).
        let size = self.table_size_for(snapshot.len());
        let previous_core = previous
            .map(|p| &p.table.core)
            .filter(|core| core.entries.len() == size as usize || core.entries.is_empty());
        let core = reuse_or_build(
            snapshot,
            previous_core,
            |core| &core.fingerprint,
            |members, fingerprint| build(members, fingerprint, size),
        );
        WithFallback::prepare(MaglevTable { core }, &self.fallback, snapshot, previous)
    }

    pick_by_preference!();
}

impl<A: BackendKey, F: Picker<A>> HashPicker<A> for Maglev<F> {
    /// The preference order: the key's slot, then up to 31 rehashed slots, then every
    /// slot from the last one on, wrapping — so every backend owning a slot is reached.
    #[inline]
    fn find(&self, key: Lookup<'_, A, Self::Table>, accept: impl Accept) -> Option<usize> {
        let entries = &key.table.table.core.entries;
        probe_then_scan(entries, key_hash(key.hash), reduce, key.snapshot, accept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Weight;

    #[test]
    fn primes() {
        let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(DEFAULT_TABLE_SIZE));
        assert!(is_prime(655_373));
        assert!(is_prime(MAX_TABLE_SIZE));
        assert!(TABLE_SIZES.iter().all(|&m| is_prime(m)));
        assert!(TABLE_SIZES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(TABLE_SIZES[0], DEFAULT_TABLE_SIZE);
        assert_eq!(TABLE_SIZES[7], MAX_TABLE_SIZE);
        assert!(!is_prime(65_535));
    }

    #[test]
    fn table_size_must_be_a_prime_in_range() {
        assert!(Maglev::new().with_table_size(7).is_ok());
        for bad in [0, 1, 4, 65_536, u64::from(MAX_TABLE_SIZE) + 2, u64::MAX] {
            let err = Maglev::new().with_table_size(bad).unwrap_err();
            assert!(err.to_string().contains(&bad.to_string()), "{err}");
        }
    }

    #[test]
    fn weights_share_the_table_in_proportion() {
        let snapshot = Snapshot::build([
            ("a", Weight::ONE),
            ("b", Weight::new(3).unwrap()),
            ("c", Weight::new(4).unwrap()),
        ])
        .unwrap();
        let maglev = Maglev::new().with_table_size(8191).unwrap();
        let table = maglev.prepare(&snapshot, None);
        let mut counts = [0usize; 3];
        for &e in table.table().entries() {
            counts[e as usize] += 1;
        }
        assert_eq!(counts.iter().sum::<usize>(), 8191);
        // Within one round of the exact proportions 1:3:4.
        for (i, w) in [1.0, 3.0, 4.0].into_iter().enumerate() {
            let expected = 8191.0 * w / 8.0;
            assert!((counts[i] as f64 - expected).abs() <= 4.0, "{counts:?}");
        }
    }

    #[test]
    fn extreme_weights_build_quickly_and_fill_the_table() {
        let snapshot = Snapshot::build([
            ("a", Weight::ONE),
            ("b", Weight::new(u64::from(Weight::MAX)).unwrap()),
        ])
        .unwrap();
        let table = Maglev::new().prepare(&snapshot, None);
        let a = table.table().entries().iter().filter(|&&e| e == 0).count();
        assert_eq!(
            a, 1,
            "weight 1 against u32::MAX still claims its first turn"
        );
    }

    #[test]
    fn tiny_tables_work() {
        let snapshot = Snapshot::build([("a", Weight::ONE), ("b", Weight::ONE)]).unwrap();
        let maglev = Maglev::new().with_table_size(2).unwrap();
        let table = maglev.prepare(&snapshot, None);
        let mut entries = table.table().entries().to_vec();
        entries.sort_unstable();
        assert_eq!(entries, [0, 1]);
    }
}
