//! Deterministic subsetting, after the Google SRE book (ch. 20).

use std::num::NonZeroUsize;

use super::{Chosen, Subsetting, order};
use crate::pick::hash::BackendKey;

/// Deterministic subsetting (Google SRE book, ch. 20): instance `instance` takes `size`
/// backends, and every round of ⌈S/size⌉ consecutive instance indices covers every
/// backend once.
///
/// Instance i belongs to round r = i ÷ ⌈S/k⌉ and is the j = i mod ⌈S/k⌉-th instance of
/// it. Each round orders the backends by their key's stable hash seeded with r (the
/// book shuffles with the round as the seed; a hash order is the same shuffle, but one
/// that an added or removed backend changes by one element only), and instance j takes
/// positions j·k … j·k + k − 1, wrapping to the round's start for the last run when k
/// does not divide S. The subset depends on i, k and the backend keys only — not on the
/// instance count, so instances can come and go without moving anyone else's subset.
/// See the [module docs](super) for the guarantees.
///
/// # Examples
///
/// ```
/// use std::num::NonZeroUsize;
/// use tower_lb::subset::{Deterministic, Subsetting};
///
/// let backends: Vec<String> = (0..9).map(|i| format!("b{i}")).collect();
/// let k = NonZeroUsize::new(3).unwrap();
/// // One round is 3 instances; together they hold each backend exactly once.
/// let mut held: Vec<usize> = (0..3)
///     .flat_map(|i| Deterministic::new(i, k).select(&backends))
///     .map(|c| c.index)
///     .collect();
/// held.sort();
/// assert_eq!(held, (0..9).collect::<Vec<_>>());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deterministic {
    instance: u64,
    size: NonZeroUsize,
}

impl Deterministic {
    /// Subsets of `size` backends for the instance with index `instance` (0-based and
    /// dense: the instances of a fleet are numbered 0, 1, 2 …, as a StatefulSet's
    /// ordinals or a job's task indices are).
    pub const fn new(instance: u64, size: NonZeroUsize) -> Self {
        Deterministic { instance, size }
    }

    /// The instance index.
    pub const fn instance(&self) -> u64 {
        self.instance
    }

    /// The subset size k.
    pub const fn size(&self) -> usize {
        self.size.get()
    }
}

impl Subsetting for Deterministic {
    fn select<K: BackendKey>(&self, backends: &[K]) -> Vec<Chosen> {
        let s = backends.len();
        let k = self.size.get();
        let whole = |index| Chosen {
            index,
            coverage: 1.0,
        };
        if k >= s {
            return (0..s).map(whole).collect();
        }
        let per_round = s.div_ceil(k) as u64;
        let round = self.instance / per_round;
        // j < ⌈S/k⌉, so j·k < S: the run starts inside the round; k < S keeps it distinct.
        let start = (self.instance % per_round) as usize * k;
        let ordered = order(backends, round);
        (start..start + k).map(|p| whole(ordered[p % s])).collect()
    }
}
