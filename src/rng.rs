//! Randomness for the pickers: a per-thread generator by default, a seeded one for tests.
//!
//! The default draws from a [`SmallRng`] (xoshiro256++) kept in a thread-local, seeded
//! from the operating system once per thread: no lock, no shared cache line. A seeded
//! source instead advances one shared atomic counter and mixes it with SplitMix64's
//! finaliser (Steele, Lea, Flood: "Fast splittable pseudorandom number generators",
//! OOPSLA 2014): reproducible from a seed with no lock, at the cost of one shared write
//! per draw, which is what tests want and hot multi-threaded paths do not.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use crate::stable_hash::GAMMA;

thread_local! {
    static THREAD_RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where a picker's random numbers come from.
pub(crate) enum RandomSource {
    /// A per-thread generator seeded from the OS.
    Thread,
    /// A shared counter from a seed: reproducible.
    Seeded(AtomicU64),
}

impl RandomSource {
    pub(crate) fn seeded(seed: u64) -> Self {
        RandomSource::Seeded(AtomicU64::new(seed))
    }

    /// A uniformly distributed `u64`.
    #[inline]
    pub(crate) fn next_u64(&self) -> u64 {
        match self {
            RandomSource::Thread => THREAD_RNG
                .try_with(|rng| match rng.try_borrow_mut() {
                    Ok(mut rng) => rng.next_u64(),
                    Err(_) => fallback(),
                })
                // The thread-local is gone only while the thread is being torn down.
                .unwrap_or_else(|_| fallback()),
            // Relaxed: the counter publishes nothing; only its uniqueness matters.
            RandomSource::Seeded(state) => mix(state.fetch_add(GAMMA, Ordering::Relaxed)),
        }
    }

    /// Two independent uniform `u64`s for the price of one thread-local access.
    #[inline]
    pub(crate) fn next_pair(&self) -> (u64, u64) {
        match self {
            RandomSource::Thread => THREAD_RNG
                .try_with(|rng| match rng.try_borrow_mut() {
                    Ok(mut rng) => (rng.next_u64(), rng.next_u64()),
                    Err(_) => (fallback(), fallback()),
                })
                .unwrap_or_else(|_| (fallback(), fallback())),
            RandomSource::Seeded(state) => {
                let base = state.fetch_add(GAMMA.wrapping_mul(2), Ordering::Relaxed);
                (mix(base), mix(base.wrapping_add(GAMMA)))
            }
        }
    }

    /// A uniformly distributed index in `0..n` (`n > 0`), by Lemire's multiply-shift.
    #[inline]
    pub(crate) fn below(&self, n: usize) -> usize {
        below(self.next_u64(), n)
    }
}

/// Maps a uniform `u64` to `0..n` with the multiply-shift reduction (bias < n / 2^64).
#[inline]
pub(crate) fn below(r: u64, n: usize) -> usize {
    ((u128::from(r) * n as u128) >> 64) as usize
}

fn fallback() -> u64 {
    static FALLBACK: AtomicU64 = AtomicU64::new(0x2545_F491_4F6C_DD1D);
    mix(FALLBACK.fetch_add(GAMMA, Ordering::Relaxed))
}

/// A seeded source's clone continues from the original's state (the same draws follow,
/// each source then advancing on its own); a per-thread source's clone is per-thread.
impl Clone for RandomSource {
    fn clone(&self) -> Self {
        match self {
            RandomSource::Thread => RandomSource::Thread,
            // Relaxed: a snapshot of the counter; it orders no other memory.
            RandomSource::Seeded(state) => {
                RandomSource::Seeded(AtomicU64::new(state.load(Ordering::Relaxed)))
            }
        }
    }
}

impl fmt::Debug for RandomSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RandomSource::Thread => f.write_str("Thread"),
            RandomSource::Seeded(_) => f.write_str("Seeded"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_sources_repeat() {
        let a = RandomSource::seeded(7);
        let b = RandomSource::seeded(7);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], xs[1]);
    }

    #[test]
    fn a_clone_continues_from_the_state() {
        let a = RandomSource::seeded(7);
        a.next_u64();
        let b = a.clone();
        assert_eq!(a.next_u64(), b.next_u64());
        assert_eq!(a.next_pair(), b.next_pair());
    }

    #[test]
    fn below_stays_in_range() {
        let r = RandomSource::Thread;
        for n in [1, 2, 3, 7, 1024] {
            for _ in 0..1000 {
                assert!(r.below(n) < n);
            }
        }
        assert_eq!(below(u64::MAX, 5), 4);
        assert_eq!(below(0, 5), 0);
    }
}
