//! The live table: its slots and numbering, its members, and what a patch and the
//! background build share under its lock.

use super::*;

pub(super) struct Core {
    /// Each slot's member number; no slot when no member has a positive weight.
    /// Atomics only so a background build can write the canonical table into a live
    /// one (see [`canonicalize`]).
    pub(super) slots: Slots,
    /// Which member holds which number.
    pub(super) numbering: Numbering,
    /// The members: keys, key hashes (the fingerprint), weights and ids.
    pub(super) members: Arc<Set>,
    /// Held while the entries are written by the background build or copied by a patch,
    /// so a patch never starts from a half-written table and the counts match.
    pub(super) state: Mutex<State>,
    /// Signalled when the background build ends (canonical or superseded).
    pub(super) settled: Condvar,
    /// Shared by a table and every table prepared from it: each new table bumps it,
    /// which stops the background build of the tables before it.
    pub(super) lineage: Arc<Lineage>,
    /// This table's value of `lineage`'s generation.
    pub(super) generation: u64,
}

pub(super) struct State {
    /// How many slots each member (by snapshot index) owns.
    pub(super) counts: Vec<u32>,
    /// Each number's slots (see [`Numbering`]), for the next patch, which takes them;
    /// empty for a table never patched (or already patched from).
    pub(super) owned: Vec<Vec<u32>>,
    pub(super) status: Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    /// Identical to a from-scratch build of the set.
    Canonical,
    /// Patched; the canonical table is being built in the background.
    Pending,
    /// Patched, and a newer table was prepared from it before the canonical one was
    /// written: it stays patched.
    Superseded,
}

impl Core {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves the state consistent: the
        // entries are written before the status, and any mix of entries is a table.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn new(
        built: Built,
        members: Arc<Set>,
        status: Status,
        lineage: Arc<Lineage>,
        generation: u64,
    ) -> Self {
        Core {
            slots: built.slots,
            numbering: built.numbering,
            members,
            state: Mutex::new(State {
                counts: built.counts,
                owned: built.owned,
                status,
            }),
            settled: Condvar::new(),
            lineage,
            generation,
        }
    }

    /// The index of the member owning `slot`.
    #[inline]
    pub(super) fn index_at(&self, slot: usize) -> Option<u32> {
        let number = self.slots.get(slot)?;
        if self.numbering.identity {
            // A table built from scratch: numbers are indices (no second load).
            Some(number).filter(|&n| (n as usize) < self.members.len())
        } else {
            self.numbering.index(number)
        }
    }

    /// Each slot's member index.
    pub(super) fn indices(&self) -> Vec<u32> {
        self.slots
            .iter()
            .map(|n| self.numbering.index(n).unwrap_or(EMPTY))
            .collect()
    }
}
