//! Round robin: the eligible members in turn.
//!
//! One shared atomic counter, `fetch_add(1) mod n` over the eligible list. Guarantee
//! (checked by the property tests): over a fixed set of n, any k·n consecutive picks hit
//! each member exactly k times, and P picks shared by any number of threads give every
//! member ⌊P/n⌋ or ⌈P/n⌉. The counter lives in the picker, not the snapshot, so the
//! rotation continues across membership changes instead of restarting at the first member.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{PickContext, Picker, eligible_at};
use crate::backend::Snapshot;

/// Picks the eligible members in turn. See the [`pick`](crate::pick) module docs.
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

impl<A> Picker<A> for RoundRobin {
    type Table = ();

    fn prepare(&self, _: &Snapshot<A>, _: Option<&()>) {}

    #[inline]
    fn pick(&self, _: &(), snapshot: &Snapshot<A>, _: &PickContext) -> Option<usize> {
        match snapshot.eligible().len() {
            0 => None,
            1 => eligible_at(snapshot, 0),
            n => {
                // Relaxed: the counter only has to hand out distinct values; it orders
                // no other memory.
                let turn = self.next.fetch_add(1, Ordering::Relaxed);
                eligible_at(snapshot, turn % n)
            }
        }
    }
}
