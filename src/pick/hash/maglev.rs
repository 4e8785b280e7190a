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
//! **Changes past 65 537 slots** (more than 655 backends): a change that inserts,
//! removes or reweighs at most one member in eight is applied at once by *patching* the
//! previous table, moving only the slots it must: a removed backend's slots; a backend a
//! whole slot or more above its share (a weight decrease) sheds the last of its slots in
//! its own permutation order; an inserted or grown backend walks its own permutation (the
//! build's offset and skip) taking slots from backends above their share; the free slots
//! go to backends below it, chosen by a hash of the slot. **Guarantee of a patched table**
//! (unit tests: random insert/remove/reweight sequences, weights 0–4, M = 1009 and
//! 65 537): every inserted or reweighted backend, and every backend within one slot of its
//! share before the change, owns within one slot of M · w / W (equal weights: ⌊M/N⌋ or
//! ⌈M/N⌉); a backend that was further (a canonical weighted table has a few, by up to
//! ≈ 1.2 slots with weights 1–4: Envoy's rounds) only moves towards its share; and a slot
//! changes owner only if its owner was removed or reweighted, or held more than its new
//! share. A slow-start ramp down keeps a subset of the backend's slots, and back up only
//! adds to them.
//!
//! A patched table depends on the order of past changes, so the *canonical* table —
//! identical to a from-scratch build, hence on every instance with the same set — is
//! built on a background thread once changes pause for 100 ms, and written into the live
//! table in place (entries are `AtomicU32`s read `Relaxed`, a plain load; any mix of old
//! and new entries indexes the same snapshot, so a pick racing the write is valid): it
//! replaces the patch within 100 ms plus one build time (about 1 s at 50 000 backends)
//! once changes pause, and a newer change stops an older build. Until then two instances
//! that learnt the same set through different changes may place a few keys differently.
//! [`MaglevTable::is_canonical`] and [`MaglevTable::wait_canonical`] tell and wait;
//! [`Maglev::with_incremental`]`(false)` builds every change synchronously from scratch,
//! as tables of 65 537 slots and changes of more than one member in eight always are.
//!
//! **Cost**: lookup O(1) — a hash mix, a multiply-shift and one read of a 4-byte entry:
//! 6–7 ns at N = 8, 64 and 1024 including the key hash; memory 4 B × M: 256 KiB up to 655
//! backends, then 400–800 B per backend (4 MiB at 10 000, 19 MiB at 50 000), twice that
//! while a background build runs. A build is O(M log N) (O(M) plus the probe walks with
//! equal weights): 6 ms at M = 65 537, 1 s at 5 000 011. A patch is O(M + N) — one pass
//! copying and re-indexing the table, plus the moved slots: ≈ 11 ms of a change's cost at
//! 50 000 backends (M = 5 000 011), so one `insert` or `remove` on a `Pool` of 50 000
//! costs 1.3–1.8× `RoundRobin`'s change (19–55× before patching); the canonical build's
//! CPU time is spent off the change path, on its own thread. See the README's "Scale".
//!
//! Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load Balancer",
//! NSDI 2016; weights as in Envoy's `MaglevTable`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use super::{
    BackendKey, Entry, Fingerprint, HashPicker, SEED_IDENTITY, SEED_MAGLEV_OFFSET,
    SEED_MAGLEV_SKIP, WithFallback, key_hash, pick_by_preference, probe_then_scan, reduce,
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

/// Marks a slot not yet claimed during the build, or freed during a patch.
const EMPTY: u32 = u32::MAX;

/// Seeds the hash that hands a patch's free slots to members under their share.
const SEED_PATCH_FILL: u64 = 0x6D61_676C_6576_6669; // "maglevfi"

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
    /// Patch the previous table on a small change (past [`DEFAULT_TABLE_SIZE`]).
    incremental: bool,
    fallback: F,
}

impl Maglev {
    /// Maglev with a table sized for the set ([`table_size_for`](Self::table_size_for):
    /// at least 100 slots per backend, 65 537 up to 655 backends) and a round-robin
    /// fallback for requests without a key.
    pub fn new() -> Self {
        Maglev {
            size: None,
            incremental: true,
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
                incremental: self.incremental,
                fallback: self.fallback,
            }),
            _ => Err(ConfigError::MaglevTableSize {
                size,
                min: 2,
                max: u64::from(MAX_TABLE_SIZE),
            }),
        }
    }

    /// The same picker, patching its table on a small change (`true`, the default) or
    /// building it from scratch on every change (`false`).
    ///
    /// With `true`, a change to a set with a table larger than [`DEFAULT_TABLE_SIZE`]
    /// (more than 655 backends) that inserts, removes or reweighs at most one member in
    /// eight is applied at once by moving only the slots it must move, and the canonical
    /// table — the one every instance with the same set builds — replaces the patch in
    /// place when a background build finishes (see the [module docs](self)). With
    /// `false`, every change builds the canonical table before `prepare` returns, as
    /// smaller sets always do: O(M log M), about 1 s at 50 000 backends.
    ///
    /// ```
    /// use tower_lb::Maglev;
    ///
    /// let always_canonical = Maglev::new().with_incremental(false);
    /// assert!(!always_canonical.incremental());
    /// assert!(Maglev::new().incremental());
    /// ```
    pub fn with_incremental(self, incremental: bool) -> Self {
        Maglev {
            incremental,
            ..self
        }
    }

    /// Whether a small change patches the table (see
    /// [`with_incremental`](Self::with_incremental)).
    pub fn incremental(&self) -> bool {
        self.incremental
    }

    /// The same picker placing requests without a key with `fallback`.
    pub fn with_fallback<G>(self, fallback: G) -> Maglev<G> {
        Maglev {
            size: self.size,
            incremental: self.incremental,
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
///
/// A table patched after a change (see the [module docs](self)) is replaced in place by
/// the canonical one once a background build finishes: [`is_canonical`](Self::is_canonical)
/// tells which, [`wait_canonical`](Self::wait_canonical) waits for it.
#[derive(Clone)]
pub struct MaglevTable {
    core: Arc<Core>,
}

struct Core {
    /// The backend index owning each slot; empty when no member has a positive weight.
    /// Atomics only so a background build can write the canonical table into a live
    /// one: every value ever stored indexes the same snapshot, so any mix is a table.
    entries: Box<[AtomicU32]>,
    fingerprint: Fingerprint,
    /// Held while the entries are written by the background build or copied by a patch,
    /// so a patch never starts from a half-written table and the counts match.
    state: Mutex<State>,
    /// Signalled when the background build ends (canonical or superseded).
    settled: Condvar,
    /// Shared by a table and every table prepared from it: each new table bumps it,
    /// which stops the background build of the tables before it.
    lineage: Arc<AtomicU64>,
    /// This table's value of `lineage`.
    generation: u64,
}

struct State {
    /// How many slots each member (by snapshot index) owns.
    counts: Vec<u32>,
    status: Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Identical to a from-scratch build of the set.
    Canonical,
    /// Patched; the canonical table is being built in the background.
    Pending,
    /// Patched, and a newer table was prepared from it before the canonical one was
    /// written: it stays patched.
    Superseded,
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves the state consistent: the
        // entries are written before the status, and any mix of entries is a table.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn new(
        built: Built,
        fingerprint: Fingerprint,
        status: Status,
        lineage: Arc<AtomicU64>,
        generation: u64,
    ) -> Self {
        Core {
            entries: built.entries,
            fingerprint,
            state: Mutex::new(State {
                counts: built.counts,
                status,
            }),
            settled: Condvar::new(),
            lineage,
            generation,
        }
    }
}

impl MaglevTable {
    /// A copy of the lookup table: the index (in the snapshot) of the backend owning
    /// each slot. Empty when the set has no member with a positive weight.
    pub fn entries(&self) -> Vec<u32> {
        self.core.entries.iter().map(Entry::index).collect()
    }

    /// The index of the backend owning `slot`, or `None` past the table's end.
    pub fn entry(&self, slot: usize) -> Option<u32> {
        self.core.entries.get(slot).map(Entry::index)
    }

    /// The table size M (0 when the set has no member with a positive weight).
    pub fn len(&self) -> usize {
        self.core.entries.len()
    }

    /// Whether the table has no slots (no member has a positive weight).
    pub fn is_empty(&self) -> bool {
        self.core.entries.is_empty()
    }

    /// Whether the table is the canonical one — identical to a from-scratch build of
    /// its set, on every instance — rather than a patch of the previous table still
    /// waiting for its background build (see the [module docs](self)).
    pub fn is_canonical(&self) -> bool {
        self.core.lock().status == Status::Canonical
    }

    /// Waits up to `timeout` for the canonical table to replace a patched one; returns
    /// [`is_canonical`](Self::is_canonical). Returns at once with `false` when a newer
    /// table was prepared from this one (its background build then stops).
    pub fn wait_canonical(&self, timeout: Duration) -> bool {
        let state = self.core.lock();
        let (state, _) = self
            .core
            .settled
            .wait_timeout_while(state, timeout, |s| s.status == Status::Pending)
            .unwrap_or_else(PoisonError::into_inner);
        state.status == Status::Canonical
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

/// Every member of a snapshot as the builder and the patch see it: key bytes in one
/// buffer (two allocations for the whole set, not one per member), key hash and
/// effective weight, in snapshot order.
struct Set {
    bytes: Vec<u8>,
    /// Where each member's key ends in `bytes`.
    ends: Vec<usize>,
    /// Each member's key hash and weight: the table's fingerprint.
    fingerprint: Fingerprint,
}

/// One member of a [`Set`].
#[derive(Clone, Copy)]
struct View<'a> {
    /// Its index in the snapshot.
    index: u32,
    key: &'a [u8],
    hash: u64,
    weight: u32,
}

impl Set {
    fn of<A: BackendKey>(snapshot: &Snapshot<A>) -> Self {
        let mut bytes = Vec::new();
        let mut ends = Vec::with_capacity(snapshot.len());
        let mut pairs = Vec::with_capacity(snapshot.len());
        for (i, b) in snapshot.backends().iter().enumerate() {
            let start = bytes.len();
            b.addr().write_key(&mut bytes);
            let hash = seeded(bytes.get(start..).unwrap_or_default(), SEED_IDENTITY);
            ends.push(bytes.len());
            pairs.push((hash, snapshot.effective_weight(i)));
        }
        Set {
            bytes,
            ends,
            fingerprint: Fingerprint(pairs.into_boxed_slice()),
        }
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, j: usize) -> Option<View<'_>> {
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

    fn iter(&self) -> impl Iterator<Item = View<'_>> + '_ {
        (0..self.len()).map_while(|j| self.get(j))
    }
}

/// A table and its per-member slot counts.
struct Built {
    entries: Box<[AtomicU32]>,
    counts: Vec<u32>,
}

impl Built {
    fn empty(members: usize) -> Self {
        Built {
            entries: Box::new([]),
            counts: vec![0; members],
        }
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

/// A member's permutation of the M slots: `offset`, `offset + skip`, … mod M.
fn permutation(key: &[u8], m: u64) -> (u64, u64) {
    (
        seeded(key, SEED_MAGLEV_OFFSET) % m,
        seeded(key, SEED_MAGLEV_SKIP) % (m - 1).max(1) + 1,
    )
}

/// How many claims pass between two checks of `cancelled` in a background build.
const CHECK_EVERY: u64 = 4096;

/// Builds the table: backends in canonical order (by key hash, then key bytes) take
/// turns claiming their next free preferred slot; a backend of weight w claims in
/// round t when t · w ≥ claimed · w_max (Envoy's rule), and ties within a round go in
/// canonical order. A heap keyed by (round, canonical position) replays exactly that
/// loop in O(M log N) whatever the weights. `None` when `cancelled` said so.
fn build(members: &Set, size: u32, cancelled: &dyn Fn() -> bool) -> Option<Built> {
    let m = u64::from(size);
    let mut order: Vec<View<'_>> = members.iter().filter(|b| b.weight > 0).collect();
    order.sort_unstable_by(|a, b| (a.hash, a.key).cmp(&(b.hash, b.key)));
    let Some(max_weight) = order.iter().map(|b| b.weight).max() else {
        return Some(Built::empty(members.len()));
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
    let mut entries: Box<[AtomicU32]> = (0..size).map(|_| AtomicU32::new(EMPTY)).collect();
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
    Some(Built { entries, counts })
}

/// `c` claims its next free preferred slot.
#[inline]
fn claim(entries: &mut [AtomicU32], taken: &mut [u64], c: &mut Cursor, m: u64) {
    // M is prime and 1 ≤ skip < M, so the walk visits every slot: a free one exists.
    for _ in 0..m {
        let slot = c.slot as usize;
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        match taken.get_mut(word) {
            Some(w) if *w & bit == 0 => {
                *w |= bit;
                if let Some(e) = entries.get_mut(slot) {
                    *e.get_mut() = c.index;
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

/// A patch applies only when at most one member in `PATCH_MAX_CHANGED_PER` changed
/// (inserted, removed or reweighted); a larger change is built from scratch.
const PATCH_MAX_CHANGED_PER: usize = 8;

/// Each member's share of the M slots, M · wᵢ / W, compared exactly (in u128).
struct Targets<'a> {
    m: u128,
    total: u128,
    members: &'a Set,
}

impl Targets<'_> {
    /// M · wᵢ and W, for `c` compared with M · wᵢ / W as c · W against M · wᵢ.
    fn share(&self, j: usize) -> u128 {
        self.members
            .get(j)
            .map_or(0, |b| self.m * u128::from(b.weight))
    }

    /// c < target.
    fn below(&self, j: usize, c: u32) -> bool {
        u128::from(c) * self.total < self.share(j)
    }

    /// c + 1 ≤ target: one more slot keeps it at or under its share.
    fn wants(&self, j: usize, c: u32) -> bool {
        (u128::from(c) + 1) * self.total <= self.share(j)
    }

    /// c > target: it may give a slot and stay within one of its share.
    fn above(&self, j: usize, c: u32) -> bool {
        u128::from(c) * self.total > self.share(j)
    }

    /// ⌈target⌉: the most slots within one of its share.
    fn ceil(&self, j: usize) -> u32 {
        u32::try_from(self.share(j).div_ceil(self.total.max(1))).unwrap_or(u32::MAX)
    }
}

/// Maps a 64-bit key hash to itself: the fingerprint's hashes are already mixed.
#[derive(Default)]
struct IdentityHasher(u64);

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
fn pow_mod(base: u64, mut exp: u64, m: u64) -> u64 {
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
fn patch(prev: &Core, members: &Set, size: u32) -> Option<Built> {
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
fn walk(
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

/// Writes the canonical table of `members` into `core` (a patched table), unless a
/// newer table was prepared from it first.
fn canonicalize(core: &Core, members: &Set, size: u32) {
    // Relaxed: a stale read only delays the stop; the decision to write is taken
    // under the lock, which orders it after a newer patch's bump (see `prepare`).
    let cancelled = || core.lineage.load(Ordering::Relaxed) != core.generation;
    // Waits for the changes to pause: in a burst, each change stops the build of the
    // one before, and a build that has not started costs nothing. A newer table wakes
    // this wait (it bumps the lineage, then takes the lock and notifies).
    let state = core.lock();
    let (state, _) = core
        .settled
        .wait_timeout_while(state, QUIET, |_| !cancelled())
        .unwrap_or_else(PoisonError::into_inner);
    drop(state);
    let built = if cancelled() {
        None
    } else {
        build(members, size, &cancelled)
    };
    let mut state = core.lock();
    match built {
        Some(built) if !cancelled() && built.entries.len() == core.entries.len() => {
            for (live, new) in core.entries.iter().zip(built.entries.iter()) {
                let new = new.index();
                if live.index() != new {
                    live.store(new, Ordering::Relaxed);
                }
            }
            state.counts = built.counts;
            state.status = Status::Canonical;
        }
        _ => state.status = Status::Superseded,
    }
    drop(state);
    core.settled.notify_all();
}

/// How long changes must pause before the background build of the canonical table
/// starts: a tenth of the build's time at 5 000 011 slots.
const QUIET: Duration = Duration::from_millis(100);

/// Runs [`canonicalize`] on a thread of its own (in place if none can be started).
fn spawn_canonical(core: Arc<Core>, members: Set, size: u32) {
    let job = Arc::new(Mutex::new(Some((core, members))));
    let run = move |job: &Mutex<Option<(Arc<Core>, Set)>>| {
        let taken = job.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some((core, members)) = taken {
            canonicalize(&core, &members, size);
        }
    };
    let theirs = Arc::clone(&job);
    let spawned = thread::Builder::new()
        .name("tower-lb-maglev".into())
        .spawn(move || run(&theirs));
    if spawned.is_err() {
        run(&job);
    }
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    (2u64..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

impl<F> Maglev<F> {
    /// The table of `members` for `snapshot`, built or patched from `previous`.
    fn table(&self, members: Set, size: u32, previous: Option<&Arc<Core>>) -> Arc<Core> {
        let fingerprint = members.fingerprint.clone();
        if let Some(prev) = previous {
            // Only eligibility changed: the same table.
            if prev.fingerprint == fingerprint
                && (prev.entries.len() == size as usize || prev.entries.is_empty())
            {
                return Arc::clone(prev);
            }
        }
        let lineage = previous.map_or_else(Arc::default, |p| Arc::clone(&p.lineage));
        // Stops the previous table's background build. Bumped before a patch locks the
        // previous table, so a build that takes the lock after the patch sees it.
        let generation = lineage.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if let Some(prev) = previous {
            // Wakes its background build if it waits for the changes to pause. Taking
            // the lock first, a build about to wait either sees the bump or is waiting.
            drop(prev.lock());
            prev.settled.notify_all();
        }
        let patched = (self.incremental && size > DEFAULT_TABLE_SIZE)
            .then(|| previous.and_then(|prev| patch(prev, &members, size)))
            .flatten();
        if let Some(built) = patched {
            let core = Arc::new(Core::new(
                built,
                fingerprint,
                Status::Pending,
                lineage,
                generation,
            ));
            spawn_canonical(Arc::clone(&core), members, size);
            return core;
        }
        let built = build(&members, size, &|| false).unwrap_or_else(|| Built::empty(members.len()));
        Arc::new(Core::new(
            built,
            fingerprint,
            Status::Canonical,
            lineage,
            generation,
        ))
    }
}

impl<A: BackendKey, F: Picker<A>> Picker<A> for Maglev<F> {
    type Table = WithFallback<MaglevTable, F::Table>;

    fn uses_affinity(&self) -> bool {
        true
    }

    fn prepare(&self, snapshot: &Snapshot<A>, previous: Option<&Self::Table>) -> Self::Table {
        // Every member, eligible or not: a health change never resizes (nor rebuilds).
        let size = self.table_size_for(snapshot.len());
        let core = self.table(Set::of(snapshot), size, previous.map(|p| &p.table.core));
        WithFallback::prepare(MaglevTable { core }, &self.fallback, snapshot, previous)
    }

    pick_by_preference!();
}

impl<A: BackendKey, F: Picker<A>> HashPicker<A> for Maglev<F> {
    /// The preference order: the key's slot, then up to 31 rehashed slots, then every
    /// slot from the last one on, wrapping — so every backend owning a slot is reached.
    #[inline]
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
        probe_then_scan(
            &table.table.core.entries,
            key_hash(hash),
            reduce,
            snapshot,
            accept,
        )
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
        for e in table.table().entries() {
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
        let mut entries = table.table().entries();
        entries.sort_unstable();
        assert_eq!(entries, [0, 1]);
    }

    /// A member list for the patch tests: `(id, weight)` in snapshot order.
    fn set(ids: &[(u32, u32)]) -> Set {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        let mut pairs = Vec::new();
        for &(id, weight) in ids {
            let key = format!("10.1.{id}:80").into_bytes();
            pairs.push((seeded(&key, SEED_IDENTITY), weight));
            bytes.extend_from_slice(&key);
            ends.push(bytes.len());
        }
        Set {
            bytes,
            ends,
            fingerprint: Fingerprint(pairs.into_boxed_slice()),
        }
    }

    fn core(built: Built, members: &Set) -> Core {
        Core::new(
            built,
            members.fingerprint.clone(),
            Status::Canonical,
            Arc::default(),
            0,
        )
    }

    fn snapshot_entries(core: &Core) -> Vec<u32> {
        core.entries.iter().map(Entry::index).collect()
    }

    /// SplitMix64: the tests' seeded randomness.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(super::super::GAMMA);
            crate::stable_hash::mix(self.0)
        }

        fn below(&mut self, n: usize) -> usize {
            reduce(self.next(), n)
        }
    }

    /// Every member owns within one slot of M · w / W (or `within[i]`, when given), the
    /// counts kept match the entries, and no slot is free.
    fn check_balanced(built: &Built, members: &Set, m: usize, within: Option<&[f64]>) {
        let total: u64 = members.iter().map(|b| u64::from(b.weight)).sum();
        let mut counts = vec![0u32; members.len()];
        for e in built.entries.iter() {
            counts[e.index() as usize] += 1;
        }
        assert_eq!(counts, built.counts, "kept counts match the entries");
        for (i, (b, &c)) in members.iter().zip(&counts).enumerate() {
            let b = &b;
            let target = m as f64 * f64::from(b.weight) / total as f64;
            let within = within.map_or(1.0, |w| w[i]);
            assert!(
                (f64::from(c) - target).abs() < within,
                "member {} of weight {} owns {c} slots, target {target:.3}, within {within:.3}",
                b.index,
                b.weight
            );
        }
    }

    /// Random insert/remove/reweight sequences, at most one member in eight changed per
    /// step, equal and mixed weights, M = 1009 and 65 537: every patch keeps each member
    /// within one slot of its share, and a slot changes owner only if its owner was
    /// removed or reweighted, or owned more than its new share (a donor).
    #[test]
    fn patches_stay_balanced_and_move_only_what_they_must() {
        for (seed, m, mixed) in [
            (1u64, 1009u32, false),
            (2, 1009, true),
            (3, 65_537, false),
            (4, 65_537, true),
        ] {
            let mut rng = Rng(seed);
            let weight = |rng: &mut Rng| if mixed { 1 + rng.below(4) as u32 } else { 1 };
            let n0 = if m < 2000 { 40 } else { 300 };
            let mut ids: Vec<(u32, u32)> = (0..n0).map(|i| (i, weight(&mut rng))).collect();
            let mut next_id = n0;
            let mut members = set(&ids);
            let mut prev = core(build(&members, m, &|| false).unwrap(), &members);
            for step in 0..30 {
                let old_ids = ids.clone();
                let changes = 1 + rng.below(ids.len() / 8);
                for _ in 0..changes {
                    // Equal weights: inserts and removals only.
                    match rng.below(if mixed { 3 } else { 2 }) {
                        0 | 1 if ids.len() <= 8 => {
                            ids.push((next_id, weight(&mut rng)));
                            next_id += 1;
                        }
                        0 => {
                            ids.push((next_id, weight(&mut rng)));
                            next_id += 1;
                        }
                        1 if ids.len() > 8 => {
                            ids.remove(rng.below(ids.len()));
                        }
                        // Reweight, weight 0 included (a drained or ramping backend).
                        _ => {
                            let k = rng.below(ids.len());
                            ids[k].1 = rng.below(5) as u32;
                        }
                    }
                }
                if ids.iter().all(|&(_, w)| w == 0) {
                    ids[0].1 = 1;
                }
                let next = set(&ids);
                let old_total: u64 = old_ids.iter().map(|&(_, w)| u64::from(w)).sum();
                let patched = patch(&prev, &next, m);
                let changed = ids.iter().filter(|b| !old_ids.contains(b)).count()
                    + old_ids
                        .iter()
                        .filter(|b| !ids.iter().any(|c| c.0 == b.0))
                        .count();
                if changed * PATCH_MAX_CHANGED_PER > ids.len() {
                    assert!(patched.is_none(), "seed {seed} step {step}: too large");
                    prev = core(build(&next, m, &|| false).unwrap(), &next);
                    members = next;
                    continue;
                }
                let built = patched.unwrap_or_else(|| panic!("seed {seed} step {step}"));
                // Within one slot of the share, unless a member kept its weight and was
                // further from its share before (a canonical weighted table has a few):
                // then it moves only towards its share.
                let old_counts = prev.lock().counts.clone();
                let total: u64 = ids.iter().map(|&(_, w)| u64::from(w)).sum();
                let within: Vec<f64> = ids
                    .iter()
                    .map(|b| {
                        let Some(i) = old_ids.iter().position(|o| o == b) else {
                            return 1.0;
                        };
                        let c = f64::from(old_counts[i]);
                        let w = f64::from(b.1);
                        let old_dev = c - f64::from(m) * w / old_total as f64;
                        if old_dev.abs() < 1.0 {
                            1.0
                        } else {
                            assert!(mixed, "equal weights stay within one slot");
                            (c - f64::from(m) * w / total as f64).abs().max(1.0) + 1e-9
                        }
                    })
                    .collect();
                check_balanced(&built, &next, m as usize, Some(&within));
                // Same inputs, same patch.
                let again = patch(&prev, &next, m).unwrap();
                assert_eq!(
                    again.entries.iter().map(Entry::index).collect::<Vec<_>>(),
                    built.entries.iter().map(Entry::index).collect::<Vec<_>>()
                );
                let now: std::collections::HashMap<u32, u32> = ids.iter().copied().collect();
                // Whether a slot of old member `i` may move: it was removed, reweighted,
                // or owned more than its new share, M · w / W (a donor).
                let may_move: Vec<bool> = old_ids
                    .iter()
                    .zip(&old_counts)
                    .map(|(&(id, w), &c)| match now.get(&id) {
                        None => true,
                        Some(&v) if v != w => true,
                        Some(&v) => u64::from(c) * total > u64::from(m) * u64::from(v),
                    })
                    .collect();
                let mut moved = 0usize;
                for (slot, e) in built.entries.iter().enumerate() {
                    let i = prev.entries[slot].index() as usize;
                    if old_ids[i].0 == ids[e.index() as usize].0 {
                        continue;
                    }
                    moved += 1;
                    assert!(
                        may_move[i],
                        "seed {seed} step {step}: slot {slot} moved from a member at its share"
                    );
                }
                // Far fewer than a rebuild's moves: at most what the changed members
                // owned or now own, plus one per member whose share moved.
                let bound: u64 = old_ids
                    .iter()
                    .chain(&ids)
                    .filter(|b| !(old_ids.contains(b) && ids.contains(b)))
                    .map(|&(_, w)| u64::from(m) * u64::from(w) / old_total.min(total).max(1) + 2)
                    .sum::<u64>()
                    + ids.len() as u64;
                assert!(
                    moved as u64 <= bound,
                    "seed {seed} step {step}: {moved} moved, bound {bound}"
                );
                prev = core(built, &next);
                members = next;
            }
            assert!(members.len() > 0);
        }
    }

    /// A slow-start ramp down and back up moves only the ramping member's slots: going
    /// down it keeps a subset of its slots (the first in its own permutation order),
    /// going up it only gains, and each step moves about its change of share.
    #[test]
    fn a_ramp_moves_only_the_ramping_members_slots() {
        let m = 65_537;
        let mut ids: Vec<(u32, u32)> = (0..200).map(|i| (i, 4)).collect();
        let full = set(&ids);
        let mut prev = core(build(&full, m, &|| false).unwrap(), &full);
        let owned = |core: &Core| -> Vec<usize> {
            (0..m as usize)
                .filter(|&s| core.entries[s].index() == 7)
                .collect()
        };
        let mut weight = 4;
        for w in [3, 2, 1, 0, 1, 2, 3, 4] {
            ids[7].1 = w;
            let next = set(&ids);
            let built = patch(&prev, &next, m).unwrap();
            check_balanced(&built, &next, m as usize, None);
            let next = core(built, &next);
            let (before, after) = (owned(&prev), owned(&next));
            if w < weight {
                assert!(after.iter().all(|s| before.contains(s)), "down to {w}");
            } else {
                assert!(before.iter().all(|s| after.contains(s)), "up to {w}");
            }
            let moved = (0..m as usize)
                .filter(|&s| prev.entries[s].index() != next.entries[s].index())
                .count();
            let change = before.len().abs_diff(after.len());
            // The ramping member's own change, plus the others' one-slot adjustments
            // to their shares.
            assert!(moved <= change + 200, "to {w}: {moved} moved for {change}");
            (prev, weight) = (next, w);
        }
    }

    /// A change of more than one member in eight, a different M or no weight at all is
    /// built, not patched.
    #[test]
    fn large_changes_are_built() {
        let m = 1009;
        let ids: Vec<(u32, u32)> = (0..40).map(|i| (i, 1)).collect();
        let first = set(&ids);
        let prev = core(build(&first, m, &|| false).unwrap(), &first);
        assert!(
            patch(&prev, &set(&ids[..34]), m).is_none(),
            "6 of 34 removed"
        );
        assert!(
            patch(&prev, &set(&ids[..36]), m).is_some(),
            "4 of 36 removed"
        );
        assert!(patch(&prev, &set(&ids), 1013).is_none(), "another M");
        let zero: Vec<(u32, u32)> = ids.iter().map(|&(id, _)| (id, 0)).collect();
        assert!(patch(&prev, &set(&zero), m).is_none(), "no weight");
    }

    /// Through `prepare`: past 65 537 slots a small change is patched at once, and the
    /// background build then makes it identical to a from-scratch build; with
    /// `with_incremental(false)` it is canonical at once.
    #[test]
    fn a_patched_table_becomes_canonical() {
        let names = |range: std::ops::Range<u32>| {
            Snapshot::build(range.map(|i| (format!("10.2.{i}:80"), Weight::ONE))).unwrap()
        };
        let (before, after) = (names(0..800), names(0..801));
        let maglev = Maglev::new().with_table_size(131_071).unwrap();
        let t1 = maglev.prepare(&before, None);
        assert!(t1.table().is_canonical());
        let t2 = maglev.prepare(&after, Some(&t1));
        assert!(!t2.table().ptr_eq(t1.table()));
        assert!(
            t2.table().wait_canonical(Duration::from_secs(120)),
            "the background build finishes"
        );
        let fresh = maglev.prepare(&after, None);
        assert_eq!(t2.table().entries(), fresh.table().entries());
        assert_eq!(snapshot_entries(&t2.table().core), fresh.table().entries());
        // Two patches in a row: the first one's build is stopped, the second finishes.
        let t3 = maglev.prepare(&before, Some(&t2));
        let t4 = maglev.prepare(&after, Some(&t3));
        assert!(t4.table().wait_canonical(Duration::from_secs(120)));
        assert_eq!(t4.table().entries(), fresh.table().entries());
        let t3_done = t3.table().wait_canonical(Duration::from_secs(120));
        let t3_status = t3.table().core.lock().status;
        assert!(t3_done == (t3_status == Status::Canonical));
        assert_ne!(t3_status, Status::Pending);

        let rebuilt = Maglev::new()
            .with_table_size(131_071)
            .unwrap()
            .with_incremental(false);
        let t5 = rebuilt.prepare(&after, Some(&t1));
        assert!(t5.table().is_canonical());
        assert_eq!(t5.table().entries(), fresh.table().entries());
        // The default size stays synchronous and canonical.
        let small = Maglev::new();
        let s1 = small.prepare(&names(0..100), None);
        let s2 = small.prepare(&names(0..101), Some(&s1));
        assert!(s2.table().is_canonical());
        assert_eq!(s2.table().len(), DEFAULT_TABLE_SIZE as usize);
    }

    #[test]
    fn modular_inverse() {
        for m in [1009u64, 65_537, 5_000_011] {
            for skip in [1u64, 2, 3, 1000, m - 1] {
                assert_eq!(skip * pow_mod(skip, m - 2, m) % m, 1);
            }
        }
    }
}
