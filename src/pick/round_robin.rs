//! Round robin: the eligible members in turn.
//!
//! One shared atomic counter, `fetch_add(1) mod n` over the eligible list. Guarantee
//! (checked by the property tests): over a fixed set of n, any k·n consecutive picks hit
//! each member exactly k times, and P picks shared by any number of threads give every
//! member ⌊P/n⌋ or ⌈P/n⌉. The counter lives in the picker, not the snapshot, so the
//! rotation continues across membership changes instead of restarting at the first member.
//!
//! A clone has its own counter, starting where the original's stands: the two then
//! rotate independently (two pools built from clones do not share a rotation).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{PickContext, Picker, eligible_by};
use crate::snapshot::Snapshot;

/// Picks the eligible members in turn. See the [module docs](self).
///
/// `Clone` gives a round robin with a counter of its own, starting at the original's
/// current position.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A round robin starting at the first member.
    pub fn new() -> Self {
        RoundRobin::default()
    }
}

impl Clone for RoundRobin {
    fn clone(&self) -> Self {
        RoundRobin {
            // Relaxed: a copy of the position; it orders no other memory.
            next: AtomicUsize::new(self.next.load(Ordering::Relaxed)),
        }
    }
}

impl<A> Picker<A> for RoundRobin {
    type Table = ();

    fn prepare(&self, _: &Snapshot<A>, _: Option<&()>) {}

    #[inline]
    fn pick(&self, _: &(), snapshot: &Snapshot<A>, _: &PickContext) -> Option<usize> {
        eligible_by(snapshot, |n| {
            // Relaxed: the counter only has to hand out distinct values; it orders no
            // other memory.
            self.next.fetch_add(1, Ordering::Relaxed) % n
        })
    }
}
