//! Randomness for the pickers: a per-thread generator by default, a seeded one for tests.
//!
//! Both sources are SplitMix64 (Steele, Lea, Flood: "Fast splittable pseudorandom
//! number generators", OOPSLA 2014; Java's `SplittableRandom`): a 64-bit counter advanced
//! by an odd constant, each value passed through a finaliser that passes BigCrush. The
//! default keeps the counter in a thread-local `Cell`, started at a value from the
//! operating system on the thread's first draw: no lock, no shared cache line, no
//! borrow flag, a draw is an add, two xor-shift-multiplies and one more shift (where
//! `rand`'s `SmallRng` in a `RefCell` took about sixty instructions with its borrow
//! check and lazy initialisation). A seeded source instead advances one shared atomic
//! counter: reproducible from a seed with no lock, at the cost of one shared write per
//! draw, which is what tests want and hot multi-threaded paths do not.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::TryRngCore;
use rand::rngs::OsRng;

use crate::stable_hash::GAMMA;

thread_local! {
    /// This thread's SplitMix64 counter; 0 until its first draw seeds it.
    static THREAD_STATE: Cell<u64> = const { Cell::new(0) };
}

/// Advances this thread's counter by `steps` draws and returns the counter before
/// them (the draws are `mix(before + GAMMA)`, `mix(before + 2 GAMMA)`, …).
#[inline]
fn thread_advance(steps: u64) -> u64 {
    THREAD_STATE.with(|state| {
        let mut before = state.get();
        if before == 0 {
            before = seed();
        }
        state.set(before.wrapping_add(GAMMA.wrapping_mul(steps)));
        before
    })
}

/// A thread's starting counter, from the operating system (or, should it have none to
/// give, from a shared counter, so that threads still differ), never 0.
#[cold]
fn seed() -> u64 {
    static SPARE: AtomicU64 = AtomicU64::new(0x2545_F491_4F6C_DD1D);
    OsRng
        .try_next_u64()
        // Relaxed: the counter publishes nothing; only its uniqueness matters.
        .unwrap_or_else(|_| mix(SPARE.fetch_add(GAMMA, Ordering::Relaxed)))
        .max(1)
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
            RandomSource::Thread => mix(thread_advance(1).wrapping_add(GAMMA)),
            // Relaxed: the counter publishes nothing; only its uniqueness matters.
            RandomSource::Seeded(state) => mix(state.fetch_add(GAMMA, Ordering::Relaxed)),
        }
    }

    /// Two independent uniform `u64`s for the price of one thread-local access.
    #[inline]
    pub(crate) fn next_pair(&self) -> (u64, u64) {
        match self {
            RandomSource::Thread => {
                let base = thread_advance(2).wrapping_add(GAMMA);
                (mix(base), mix(base.wrapping_add(GAMMA)))
            }
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
    fn threads_draw_their_own_uniform_streams() {
        let here = RandomSource::Thread;
        let first = here.next_u64();
        let (a, b) = here.next_pair();
        assert!(first != a && a != b && first != b);
        // Another thread starts elsewhere (equal first draws: probability 2^-64).
        let there = std::thread::spawn(|| RandomSource::Thread.next_u64())
            .join()
            .unwrap();
        assert_ne!(there, first);
        // From a fixed counter (deterministic), 64 000 draws into 16 buckets of 4 000: each within 10% (a binomial standard
        // deviation is 61, so 400 is over 6 of them).
        THREAD_STATE.with(|state| state.set(0x5EED));
        let mut buckets = [0u32; 16];
        for _ in 0..64_000 {
            buckets[here.below(16)] += 1;
        }
        for count in buckets {
            assert!((3_600..=4_400).contains(&count), "{buckets:?}");
        }
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
