//! The table's storage: M slots in copy-on-write chunks, each slot holding a member's
//! stable *number* (not its snapshot index), and the numbering that maps one to the
//! other — so a change rewrites only the chunks of the slots it moves, and a removal
//! does not renumber every slot after the removed member.

use super::*;

/// log₂ of the slots per chunk for a table of `len` slots: about √(M / 3), between 2⁶
/// and 2¹². A change moves about 2M/N slots (M/N ≈ 100–200, see [`TABLE_SIZES`]) in as
/// many chunks, and copies those chunks plus the array of M / chunk pointers: chunks of
/// ≈ √(M/3) slots balance the two. At 50 000 backends (M = 5 000 011) a removal copies
/// ≈ 100 chunks of 1 024 slots (400 KiB) and 4 883 pointers, instead of 19 MiB.
fn chunk_bits(len: usize) -> u32 {
    let root = ((len / 3).max(1) as f64).sqrt();
    (root.log2().round() as u32).clamp(6, 12)
}

/// The offset within its chunk of a slot, for chunks of 2^`bits` slots.
#[inline]
fn mask(bits: u32) -> usize {
    1usize.checked_shl(bits).map_or(usize::MAX, |c| c - 1)
}

/// `chunks[0]`, or an empty chunk.
fn first_of(chunks: &[Arc<[AtomicU32]>]) -> Arc<[AtomicU32]> {
    chunks.first().map_or_else(|| Arc::new([]), Arc::clone)
}

/// The M slots of a table, in chunks shared between the tables of consecutive changes
/// until one of them writes a chunk. Entries are `AtomicU32`s read `Relaxed` so the
/// background build can write the canonical table into a live one (see the module
/// docs): a plain load on x86 and ARM.
pub(super) struct Slots {
    /// The first chunk (the same as `chunks[0]`), read without going through `chunks`:
    /// a table in one chunk (never patched) is read as one array.
    first: Arc<[AtomicU32]>,
    chunks: Box<[Arc<[AtomicU32]>]>,
    /// log₂ of the slots per chunk.
    bits: u32,
    len: usize,
}

impl Slots {
    /// The slots holding `entries`: in chunks if `patchable`, else in one.
    pub(super) fn of(entries: &[u32], patchable: bool) -> Self {
        let bits = if patchable {
            chunk_bits(entries.len())
        } else {
            usize::BITS - entries.len().leading_zeros()
        };
        let chunks: Box<[Arc<[AtomicU32]>]> = entries
            .chunks(1 << bits)
            .map(|c| c.iter().map(|&e| AtomicU32::new(e)).collect())
            .collect();
        Slots {
            first: first_of(&chunks),
            chunks,
            bits,
            len: entries.len(),
        }
    }

    /// The number held by `slot`.
    #[inline]
    pub(super) fn get(&self, slot: usize) -> Option<u32> {
        // Always true in one chunk, almost never in many: predicted either way.
        if let Some(e) = self.first.get(slot) {
            return Some(e.load(Ordering::Relaxed));
        }
        let chunk = self.chunks.get(slot >> self.bits)?;
        Some(chunk.get(slot & mask(self.bits))?.load(Ordering::Relaxed))
    }

    /// Writes `number` into `slot` in place, in every table sharing its chunk (the
    /// background build; see [`canonicalize`]).
    pub(super) fn store(&self, slot: usize, number: u32) {
        let at = self
            .chunks
            .get(slot >> self.bits)
            .and_then(|chunk| chunk.get(slot & mask(self.bits)));
        if let Some(e) = at {
            e.store(number, Ordering::Relaxed);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Every slot's number, in order.
    pub(super) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.chunks
            .iter()
            .flat_map(|c| c.iter().map(|e| e.load(Ordering::Relaxed)))
    }
}

/// A table's slots being patched: the previous table's chunks, each copied the first
/// time the patch writes into it.
pub(super) struct SlotsMut {
    chunks: Vec<Arc<[AtomicU32]>>,
    /// Which chunks are this patch's own copies.
    own: Vec<bool>,
    bits: u32,
    len: usize,
}

impl SlotsMut {
    /// `slots`' chunks, shared: O(M / 4096).
    pub(super) fn of(slots: &Slots) -> Self {
        SlotsMut {
            chunks: slots.chunks.to_vec(),
            own: vec![false; slots.chunks.len()],
            bits: slots.bits,
            len: slots.len,
        }
    }

    #[inline]
    pub(super) fn get(&self, slot: usize) -> Option<u32> {
        let chunk = self.chunks.get(slot >> self.bits)?;
        Some(chunk.get(slot & mask(self.bits))?.load(Ordering::Relaxed))
    }

    /// Writes `number` into `slot`, copying its chunk first if it is still shared.
    pub(super) fn set(&mut self, slot: usize, number: u32) -> Option<()> {
        let k = slot >> self.bits;
        let (chunk, own) = self.chunks.get_mut(k).zip(self.own.get_mut(k))?;
        if !*own {
            *chunk = chunk
                .iter()
                .map(|e| AtomicU32::new(e.load(Ordering::Relaxed)))
                .collect();
            *own = true;
        }
        *Arc::get_mut(chunk)?
            .get_mut(slot & mask(self.bits))?
            .get_mut() = number;
        Some(())
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn finish(self) -> Slots {
        let chunks = self.chunks.into_boxed_slice();
        Slots {
            first: first_of(&chunks),
            chunks,
            bits: self.bits,
            len: self.len,
        }
    }
}

/// Which member holds which number: numbers stay with a member from change to change;
/// a new member takes a number no member holds (never one freed by the same change).
pub(super) struct Numbering {
    /// Snapshot index → number.
    pub(super) number_of: Box<[u32]>,
    /// Number → snapshot index, [`EMPTY`] for a number no member holds.
    pub(super) index_of: Box<[u32]>,
    /// Numbers no member holds, below `index_of.len()`.
    pub(super) free: Box<[u32]>,
    /// Whether member `j` holds number `j`, each (a table built from scratch).
    pub(super) identity: bool,
}

impl Numbering {
    /// Member `j` holds number `j`: a table built from scratch.
    pub(super) fn identity(members: usize) -> Self {
        let numbers: Box<[u32]> = (0..members)
            .map(|j| u32::try_from(j).unwrap_or(EMPTY))
            .collect();
        Numbering {
            number_of: numbers.clone(),
            index_of: numbers,
            free: Box::new([]),
            identity: true,
        }
    }

    /// The numbering after a change: `old_of[j]` is new member `j`'s old index
    /// ([`EMPTY`] when inserted).
    pub(super) fn next(&self, old_of: &[u32]) -> Option<Self> {
        let mut free = self.free.to_vec();
        let mut end = u32::try_from(self.index_of.len()).ok()?;
        let mut kept = vec![false; self.number_of.len()];
        let number_of: Box<[u32]> = old_of
            .iter()
            .map(|&i| match i {
                EMPTY => free.pop().or_else(|| {
                    end = end.checked_add(1)?;
                    Some(end - 1)
                }),
                i => {
                    *kept.get_mut(i as usize)? = true;
                    self.number_of.get(i as usize).copied()
                }
            })
            .collect::<Option<_>>()?;
        // The numbers of the members that left are free from the next change on.
        free.extend(
            self.number_of
                .iter()
                .zip(&kept)
                .filter(|&(_, &k)| !k)
                .map(|(&s, _)| s),
        );
        let mut index_of = vec![EMPTY; end as usize];
        for (j, &s) in number_of.iter().enumerate() {
            *index_of.get_mut(s as usize)? = u32::try_from(j).ok()?;
        }
        Some(Numbering {
            number_of,
            index_of: index_of.into_boxed_slice(),
            free: free.into_boxed_slice(),
            identity: false,
        })
    }

    /// The member index holding `number`, if any.
    #[inline]
    pub(super) fn index(&self, number: u32) -> Option<u32> {
        self.index_of
            .get(number as usize)
            .copied()
            .filter(|&i| i != EMPTY)
    }
}

/// Each number's slots (a list for every number below `numbering.index_of.len()`).
pub(super) fn owned_lists(slots: &Slots, numbering: &Numbering) -> Vec<Vec<u32>> {
    let mut owned = vec![Vec::new(); numbering.index_of.len()];
    for (number, slot) in slots.iter().zip(0u32..) {
        if let Some(list) = owned.get_mut(number as usize) {
            list.push(slot);
        }
    }
    owned
}
