//! Uniform random choice among the eligible members.
//!
//! One draw from a per-thread generator mapped to `0..n` by Lemire's multiply-shift;
//! nothing shared is written. [`Random::with_seed`] makes the sequence reproducible
//! (at the cost of one shared atomic per pick).

use super::{PickContext, Picker, eligible_by};
use crate::rng::RandomSource;
use crate::snapshot::Snapshot;

/// Picks an eligible member uniformly at random. See the [`pick`](crate::pick) module docs.
#[derive(Debug, Clone)]
pub struct Random {
    rng: RandomSource,
}

impl Random {
    /// A picker drawing from a per-thread generator seeded by the OS.
    pub fn new() -> Self {
        Random {
            rng: RandomSource::Thread,
        }
    }

    /// A reproducible picker: the same seed gives the same picks.
    ///
    /// A clone of a seeded picker continues from the original's state: it makes the
    /// same draws the original would make next, then each advances on its own.
    pub fn with_seed(seed: u64) -> Self {
        Random {
            rng: RandomSource::seeded(seed),
        }
    }
}

impl Default for Random {
    fn default() -> Self {
        Random::new()
    }
}

impl<A> Picker<A> for Random {
    type Table = ();

    fn prepare(&self, _: &Snapshot<A>, _: Option<&()>) {}

    #[inline]
    fn pick(&self, _: &(), snapshot: &Snapshot<A>, _: &PickContext) -> Option<usize> {
        eligible_by(snapshot, |n| self.rng.below(n))
    }
}
