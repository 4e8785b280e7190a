//! Consistent hashing: the same key to the same backend, everywhere, with few moves.
//!
//! Each picker here maps a request's affinity hash
//! ([`PickContext::with_hash`](crate::PickContext::with_hash), usually from an
//! [`AffinityKey`](crate::affinity::AffinityKey)) to a backend so that
//!
//! - every balancer holding the same set maps every key the same way, whatever order it
//!   learnt the backends in and with no shared state: tables depend only on each
//!   backend's [`BackendKey`] bytes and weight, hashed with the crate's stable hash;
//! - a change to the set moves few keys (how few is each picker's guarantee);
//! - a backend that becomes ineligible (down, draining) loses exactly its own keys, each
//!   to the next backend in *that key's* preference order, and gets them all back when it
//!   returns. Tables are built over every member, eligible or not, and a lookup walks past
//!   ineligible ones, so a health change never rebuilds a table (`prepare` reuses the
//!   previous table when only eligibility changed) and never moves anyone else's keys;
//! - under slow start (a recovering backend's effective weight ramps up, see
//!   [`health::slow_start`](crate::health::slow_start)) ring and rendezvous move keys only
//!   onto the ramping backend and Maglev, rebuilt at each step, a few percent of the
//!   others' at most (past 655 backends Maglev patches each step instead: keys move onto
//!   the ramping backend, plus a slot from a backend above its share); when the ramp ends
//!   every key is where it was before the failure (for a patched Maglev table, once the
//!   canonical table replaces it in the background).
//!
//! A request without a hash goes to the picker's non-affine fallback,
//! [`RoundRobin`](crate::RoundRobin) by default (`with_fallback` changes it).
//!
//! | picker | moves on a change | lookup (N = 8 / 64 / 1024) | memory per table | build (N = 1024) |
//! | --- | --- | --- | --- | --- |
//! | [`Maglev`] | removed backend's keys + ≈ 1 % of the table (≤ 1.25 % for N ≤ 1000); past 655 backends a patch moves the changed backend's keys and ≤ 1 slot of each other backend, the canonical table that replaces it the ≈ 1 % | O(1): 7 / 8 / 10 ns (past 65 537 slots through a chunk; a patched table through the member numbers) | 4 B × M, M sized for the set (≥ 100 · N, from 65 537: 256 KiB, to 5 000 011: 19 MiB), twice that past 65 537 slots (each member's slots listed for the next patch) | O(M log N): 6 ms at M = 65 537; O(M log M) past it (1.1 s at N = 50 000), where a change of ≤ 1/8 of the set is patched in O(N) + the chunks it writes (1.3–2× `RoundRobin`'s change at N = 50 000) and the canonical table built in the background |
//! | [`Ring`] | only the removed/added backend's keys | O(1) expected: 17 / 20 / 30 ns | 16 B per point + a 4 B directory entry per ½–2 points (V = 160: 3.2–3.8 KiB per unit of weight) + ≈ 32 B and the key per member | O(P log P), P = V·Σw: 10–12 ms; a change O(N) + the pages its points fall in |
//! | [`Rendezvous`] | only the removed/added backend's keys | O(n): 21 / 134 / 2160 ns | 24 B per member | O(n): 77 µs; a change hashes only new keys |
//! | [`Jump`] | growing/shrinking at the end: only the last bucket's keys | O(1) (JumpBackHash): 12 / 9 / 10 ns; [`Jump::lamping_veach`](crate::Jump::lamping_veach): O(log n), 39 / 57 / 119 ns (one run, Maglev 6 / 4 / 5 ns in it) | 12 B per member | O(n log n): 0.13 ms; a small change O(n) + log n keys per new member |
//!
//! Lookup times are criterion medians on the 2-core bench machine, *including* hashing a
//! 16-byte key with [`hash_key`](crate::affinity::hash_key) (3 ns); the floor on the same
//! machine, FNV-1a over the 16 bytes and a modulo, is 9–11 ns (`cargo bench --bench lb --
//! hash`).
//!
//! [`BoundedLoad`] wraps Maglev, ring or rendezvous and walks each key's preference order
//! past backends above ⌈c · average⌉ in flight.
//!
//! Choosing: Maglev is the fastest lookup and the default choice; ring moves strictly
//! nothing but the changed backend's keys at the cost of more memory; rendezvous needs
//! no table and is exact for any weights, but costs ≈ 12 ns + 2 ns per member (≈ 3 ns
//! weighted), so it is slower than the ring from about 4 members on and slower than
//! Maglev at any size — choose it for small sets or where no table may be kept; jump
//! is for numbered shards that only grow or shrink at the end.
//!
//! [`Maglev`]: crate::Maglev
//! [`Ring`]: crate::Ring
//! [`Rendezvous`]: crate::Rendezvous
//! [`Jump`]: crate::Jump
//! [`BoundedLoad`]: crate::BoundedLoad

use std::fmt;

use super::{PickContext, Picker};
use crate::backend::BackendId;
use crate::snapshot::Snapshot;
use crate::stable_hash::{GAMMA, mix, seeded};

mod backend_key;
pub mod bounded_load;
pub mod jump;
pub mod maglev;
pub mod rendezvous;
pub mod ring;
mod ring_build;
mod ring_pages;

pub use backend_key::BackendKey;

/// A consistent-hashing picker whose preference order for a key can be walked.
///
/// Every key has a preference order over the members; the picker places the key on the
/// first eligible member of it. [`find`](Self::find) walks that order and stops at the
/// first eligible member `accept` takes: [`BoundedLoad`](crate::BoundedLoad) passes a
/// capacity test, a retry policy can pass "not tried yet" to fail over the way the key's
/// own failover would.
pub trait HashPicker<A>: Picker<A> {
    /// The first eligible member in the key's preference order that `accept` takes, or
    /// `None` when the walk finds none. Calls `accept` only on eligible members, in
    /// preference order (see each picker for how far the walk goes); may offer the same
    /// member more than once.
    fn find(&self, key: Lookup<'_, A, Self::Table>, accept: impl Accept) -> Option<usize>;
}

/// What a [`HashPicker::find`] reads: the key's affinity hash, and the table and
/// snapshot it is placed by.
///
/// ```
/// use tower_lb::affinity::hash_key;
/// use tower_lb::{HashPicker, Lookup, Maglev, Picker, Snapshot, Weight};
///
/// let snapshot = Snapshot::build([("a", Weight::ONE), ("b", Weight::ONE)])?;
/// let maglev = Maglev::new();
/// let table = maglev.prepare(&snapshot, None);
/// let key = Lookup::new(&table, &snapshot, hash_key(b"user-42"));
/// let home = maglev.find(key, |_| true).unwrap();
/// // The key's next choice, as a retry that must avoid `home` would take it.
/// let next = maglev.find(key, |i| i != home).unwrap();
/// assert_ne!(home, next);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Lookup<'a, A, T> {
    /// The picker's table, from [`Picker::prepare`] over `snapshot`.
    pub table: &'a T,
    /// The snapshot the table was prepared from.
    pub snapshot: &'a Snapshot<A>,
    /// The key's affinity hash ([`PickContext::with_hash`]).
    pub hash: u64,
}

impl<'a, A, T> Lookup<'a, A, T> {
    /// The lookup of the key `hash` in `table`, prepared from `snapshot`.
    pub fn new(table: &'a T, snapshot: &'a Snapshot<A>, hash: u64) -> Self {
        Lookup {
            table,
            snapshot,
            hash,
        }
    }
}

impl<A, T> Clone for Lookup<'_, A, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A, T> Copy for Lookup<'_, A, T> {}

/// The test a [`HashPicker::find`] puts each eligible member's index to: any
/// `FnMut(usize) -> bool`.
pub trait Accept: FnMut(usize) -> bool {}

impl<F: FnMut(usize) -> bool> Accept for F {}

/// A hashing picker's table together with its fallback picker's table.
pub struct WithFallback<T, U> {
    table: T,
    fallback: U,
}

impl<T, U> WithFallback<T, U> {
    /// The hashing table.
    pub fn table(&self) -> &T {
        &self.table
    }

    /// The fallback picker's table.
    pub fn fallback(&self) -> &U {
        &self.fallback
    }

    /// `table` beside the table `fallback` prepares for `snapshot` (from its previous one).
    pub(crate) fn prepare<A, F>(
        table: T,
        fallback: &F,
        snapshot: &Snapshot<A>,
        previous: Option<&Self>,
    ) -> Self
    where
        F: Picker<A, Table = U>,
    {
        WithFallback {
            table,
            fallback: fallback.prepare(snapshot, previous.map(|p| &p.fallback)),
        }
    }

    /// Every hashing picker's pick: `by_key` for a request with a key, else — or when it
    /// finds no backend — the fallback picker's.
    #[inline]
    pub(crate) fn pick<A, F>(
        &self,
        fallback: &F,
        snapshot: &Snapshot<A>,
        ctx: &PickContext,
        by_key: impl FnOnce(u64) -> Option<usize>,
    ) -> Option<usize>
    where
        F: Picker<A, Table = U>,
    {
        ctx.hash()
            .and_then(by_key)
            .or_else(|| fallback.pick(&self.fallback, snapshot, ctx))
    }
}

/// The `pick` of a [`HashPicker`] whose table is a [`WithFallback`]: the first backend of
/// the key's preference order (or, given `|picker, table, snapshot, hash| expr`, the
/// backend `expr` finds), else the fallback's pick.
macro_rules! pick_by_preference {
    () => {
        $crate::pick::hash::pick_by_preference!(|picker, table, snapshot, hash| {
            let key = $crate::pick::hash::Lookup::new(table, snapshot, hash);
            $crate::pick::hash::HashPicker::find(picker, key, |_| true)
        });
    };
    (|$picker:ident, $table:ident, $snapshot:ident, $hash:ident| $by_key:expr) => {
        #[inline]
        fn pick(
            &self,
            $table: &Self::Table,
            $snapshot: &Snapshot<A>,
            ctx: &PickContext,
        ) -> Option<usize> {
            let $picker = self;
            $table.pick(&$picker.fallback, $snapshot, ctx, |$hash| $by_key)
        }
    };
}
pub(crate) use pick_by_preference;

/// The preference order of the table pickers (Maglev's slots, Jump's buckets): the
/// entry of the key, then of up to [`MAX_PROBES`] − 1 rehashed keys, then every entry
/// from the last one on, wrapping — so every member holding an entry is reached.
/// `entry(i)` is the member index held by entry `i` of `n`; `entry_of(h, n)` is the
/// entry of key hash `h` among `n`.
#[inline]
pub(crate) fn probe_then_scan<A>(
    n: usize,
    entry: impl Fn(usize) -> Option<usize>,
    key: u64,
    entry_of: impl Fn(u64, usize) -> usize,
    snapshot: &Snapshot<A>,
    mut accept: impl FnMut(usize) -> bool,
) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let mut h = key;
    let mut slot = 0;
    for _ in 0..MAX_PROBES {
        slot = entry_of(h, n);
        if let Some(index) = entry(slot)
            && snapshot.is_eligible(index)
            && accept(index)
        {
            return Some(index);
        }
        h = next_probe(h);
    }
    (slot..n)
        .chain(0..slot.min(n))
        .filter_map(entry)
        .find(|&index| snapshot.is_eligible(index) && accept(index))
}

impl<T: fmt::Debug, U> fmt::Debug for WithFallback<T, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithFallback")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// A member's [`BackendKey`] bytes, inline up to 40 bytes (an address such as
/// "backend-123.svc.cluster.local:8080" fits): a table built at every membership change
/// allocates nothing per member for them.
pub(crate) type KeyBytes = smallvec::SmallVec<[u8; 40]>;

/// Every member's [`BackendKey`] bytes (eligible or not), in snapshot order, written
/// through one scratch buffer and kept inline.
pub(crate) fn keys<A: BackendKey>(snapshot: &Snapshot<A>) -> Vec<KeyBytes> {
    let mut scratch = Vec::new();
    // Sized once: a collect through `filter_map` would grow it by doubling, copying.
    let mut keys = Vec::with_capacity(snapshot.len());
    for b in snapshot.backends() {
        scratch.clear();
        b.addr().write_key(&mut scratch);
        keys.push(KeyBytes::from_slice(&scratch));
    }
    keys
}

/// Each member's id, in snapshot order: what the next change matches survivors by.
pub(crate) fn ids<A>(snapshot: &Snapshot<A>) -> Box<[BackendId]> {
    snapshot.backends().iter().map(|b| b.id()).collect()
}

/// Where each member of `snapshot` stood among `old_ids` (the previous table's members,
/// by id): `Some(old position)` for a survivor, `None` for a new member. One merge of
/// two id-ordered lists. A member keeps its address, hence its key, for as long as it
/// keeps its id, so a survivor's key-derived values can be reused.
pub(crate) fn previous_positions<A>(
    old_ids: &[BackendId],
    snapshot: &Snapshot<A>,
) -> Vec<Option<u32>> {
    let mut old = old_ids.iter().zip(0u32..).peekable();
    snapshot
        .backends()
        .iter()
        .map(|b| {
            while old.next_if(|&(&id, _)| id < b.id()).is_some() {}
            old.next_if(|&(&id, _)| id == b.id()).map(|(_, at)| at)
        })
        .collect()
}

/// A member's key hash ([`SEED_IDENTITY`]), writing its key into `scratch`.
pub(crate) fn key_hash_of<A: BackendKey>(addr: &A, scratch: &mut Vec<u8>) -> u64 {
    scratch.clear();
    addr.write_key(scratch);
    seeded(scratch, SEED_IDENTITY)
}

/// What a table was built from: each member's key hash and weight, in snapshot order.
/// A snapshot with the same fingerprint (only eligibility differs) can reuse the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint(Box<[(u64, u32)]>);

impl Fingerprint {
    /// Each member's key hash and weight, in snapshot order.
    pub(crate) fn entries(&self) -> &[(u64, u32)] {
        &self.0
    }
}

/// Seeds of the independent hash families derived from a backend's key bytes.
pub(crate) const SEED_IDENTITY: u64 = 0;
pub(crate) const SEED_MAGLEV_OFFSET: u64 = 0x6D61_676C_6576_6F66; // "maglevof"
pub(crate) const SEED_MAGLEV_SKIP: u64 = 0x6D61_676C_6576_736B; // "maglevsk"
pub(crate) const SEED_RING: u64 = 0x7269_6E67_706F_696E; // "ringpoin"

/// How many rehashed probes a walk tries before it falls back to a linear scan of the
/// table, which reaches every member but is O(table).
pub(crate) const MAX_PROBES: usize = 32;

/// The request hash as the pickers use it: mixed, so raw ids spread as well as hashes.
#[inline]
pub(crate) fn key_hash(hash: u64) -> u64 {
    mix(hash)
}

/// The hash of probe `i + 1` after probe `i`'s hash `h`.
#[inline]
pub(crate) fn next_probe(h: u64) -> u64 {
    mix(h.wrapping_add(GAMMA))
}

/// Lemire's multiply-shift: `h` to `0..n` from its high bits.
#[inline]
pub(crate) fn reduce(h: u64, n: usize) -> usize {
    ((u128::from(h) * n as u128) >> 64) as usize
}
