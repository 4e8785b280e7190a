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
//! **How a patch stays small**: a slot holds its owner's *number*, which stays with a
//! member from change to change (a per-table array maps numbers to snapshot indices), so
//! a removal does not renumber the slots of the members after it; the slots are stored
//! in copy-on-write chunks of about √(M/3) slots shared with the previous table, so a
//! patch copies only the chunks it writes; and each member's slots are listed, so a
//! removed or shedding member's slots are found without a scan of the table.
//!
//! A patched table depends on the order of past changes, so the *canonical* table —
//! identical to a from-scratch build, hence on every instance with the same set — is
//! built on a background thread once changes pause for 100 ms, and written into the live
//! table in place (entries are `AtomicU32`s read `Relaxed`, a plain load; every value
//! ever stored names a member of the snapshot through that table's numbers, so a pick
//! racing the write is valid; a pick on an older snapshot whose chunk is shared may read
//! a newer number, which names another of that snapshot's members or none — then the
//! next probe): it replaces the patch within 100 ms plus
//! one build time (about 1 s at 50 000 backends) once changes pause, and a newer change
//! stops an older build. One thread serves the tables prepared one from another (a
//! pool's), started by the first patch and ended after 2 s without one; a table nothing
//! holds any more is not built. Until then two instances that learnt the same set
//! through different changes may place a few keys differently.
//! [`MaglevTable::is_canonical`] and [`MaglevTable::wait_canonical`] tell and wait;
//! [`Maglev::with_incremental`]`(false)` builds every change synchronously from scratch,
//! as tables of 65 537 slots and changes of more than one member in eight always are.
//!
//! **Cost**: lookup O(1) — a hash mix, a multiply-shift and the read of a 4-byte entry
//! (past 65 537 slots, through its chunk, and for a patched table through the numbers):
//! 7–10 ns at N = 8, 64 and 1024 including the key hash. Memory 4 B × M: 256 KiB up to
//! 655 backends; past that, when patching, the slot lists double it: 800–1 600 B per
//! backend (8 MiB at 10 000, 38 MiB at 50 000), plus a build's worth while a background
//! build runs. A build is O(M log N) (O(M) plus the probe walks with equal weights):
//! 6 ms at M = 65 537, 1 s at 5 000 011. A patch is O(N) bookkeeping (a merge of the
//! old and new members by id; survivors' keys and hashes are copied, not read and hashed
//! again) plus the chunks it writes: one `insert` or `remove` on a `Pool` of 50 000
//! costs 1.4–2.2× `RoundRobin`'s change (5.6× with a patch that copied the table; 19–55×
//! before patching); the canonical build's CPU time is spent off the change path, on its
//! own thread. See the README's "Scale".
//!
//! Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load Balancer",
//! NSDI 2016; weights as in Envoy's `MaglevTable`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread;
use std::time::Duration;

use super::{
    Accept, BackendKey, Fingerprint, HashPicker, Lookup, SEED_IDENTITY, SEED_MAGLEV_OFFSET,
    SEED_MAGLEV_SKIP, WithFallback, key_hash, pick_by_preference, probe_then_scan, reduce,
};
use crate::backend::BackendId;
use crate::error::ConfigError;
use crate::pick::round_robin::RoundRobin;
use crate::pick::{PickContext, Picker};
use crate::snapshot::Snapshot;
use crate::stable_hash::seeded;

mod background;
mod build;
mod patch;
mod slots;
mod table;

use background::*;
use build::*;
use patch::*;
use slots::*;
use table::*;

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
    /// backend (4 MiB at 10 000, 19 MiB at 50 000), twice that with
    /// [`with_incremental`](Self::with_incremental) (the default), whose patches need
    /// each member's slots listed. The sizes are a fixed ladder,
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

impl MaglevTable {
    /// A copy of the lookup table: the index (in the snapshot) of the backend owning
    /// each slot. Empty when the set has no member with a positive weight.
    pub fn entries(&self) -> Vec<u32> {
        self.core.indices()
    }

    /// The index of the backend owning `slot`, or `None` past the table's end.
    pub fn entry(&self, slot: usize) -> Option<u32> {
        self.core.index_at(slot)
    }

    /// The table size M (0 when the set has no member with a positive weight).
    pub fn len(&self) -> usize {
        self.core.slots.len()
    }

    /// Whether the table has no slots (no member has a positive weight).
    pub fn is_empty(&self) -> bool {
        self.core.slots.len() == 0
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
            .field("size", &self.core.slots.len())
            .field("members", &self.core.members.len())
            .finish()
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
        if let Some(prev) = previous {
            // Only eligibility changed: the same table.
            if prev.members.fingerprint == members.fingerprint
                && (prev.slots.len() == size as usize || prev.slots.len() == 0)
            {
                return Arc::clone(prev);
            }
        }
        let lineage = previous.map_or_else(Arc::default, |p| Arc::clone(&p.lineage));
        // Stops the previous table's background build. Bumped before a patch locks the
        // previous table, so a build that takes the lock after the patch sees it. (A
        // build still waiting for the changes to pause is not woken: it sees the bump
        // when its wait ends, which spares each change a wake-up.)
        let generation = lineage.bump();
        let patchable = self.incremental && size > DEFAULT_TABLE_SIZE;
        let patched = patchable
            .then(|| previous.and_then(|prev| patch(prev, &members, size)))
            .flatten();
        let members = Arc::new(members);
        if let Some(built) = patched {
            let core = Arc::new(Core::new(
                built,
                members,
                Status::Pending,
                Arc::clone(&lineage),
                generation,
            ));
            lineage.canonicalize(&core, size);
            return core;
        }
        let flat = build(&members, size, &|| false).unwrap_or_else(|| Flat::empty(members.len()));
        let built = Built::canonical(flat, patchable);
        Arc::new(Core::new(
            built,
            members,
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

    fn reads_latency(&self) -> bool {
        // Requests without a key go to the fallback.
        self.fallback.reads_latency()
    }

    fn prepare(&self, snapshot: &Snapshot<A>, previous: Option<&Self::Table>) -> Self::Table {
        // Every member, eligible or not: a health change never resizes (nor rebuilds).
        let size = self.table_size_for(snapshot.len());
        let prev_core = previous.map(|p| &p.table.core);
        let set = Set::of(snapshot, prev_core.map(|core| &*core.members));
        let core = self.table(set, size, prev_core);
        WithFallback::prepare(MaglevTable { core }, &self.fallback, snapshot, previous)
    }

    pick_by_preference!();
}

impl<A: BackendKey, F: Picker<A>> HashPicker<A> for Maglev<F> {
    /// The preference order: the key's slot, then up to 31 rehashed slots, then every
    /// slot from the last one on, wrapping — so every backend owning a slot is reached.
    #[inline]
    fn find(&self, key: Lookup<'_, A, Self::Table>, accept: impl Accept) -> Option<usize> {
        let core = &*key.table.table.core;
        let entry = |slot| core.index_at(slot).map(|i| i as usize);
        let hash = key_hash(key.hash);
        probe_then_scan(core.slots.len(), entry, hash, reduce, key.snapshot, accept)
    }
}

#[cfg(test)]
mod tests;
