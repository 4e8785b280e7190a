//! Shared helpers of the side-by-side benchmarks (see `benches/`): the backend
//! addresses and request keys both libraries are given, and the two-thread runner.
//!
//! Nothing here depends on either library, so both sides get byte-identical inputs.

#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// The backend set sizes every group runs at.
pub const SIZES: [usize; 3] = [8, 64, 1024];

/// How far pingora's `LoadBalancer::select` may walk (the value its examples use).
pub const PINGORA_MAX_ITERATIONS: usize = 256;

/// The `i`-th backend address: `10.0.x.y:8080`.
pub fn addr(i: usize) -> SocketAddr {
    let i = u32::try_from(i).expect("fewer than 2^16 backends");
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, 0, (i / 256) as u8, (i % 256) as u8),
        8080,
    ))
}

/// `n` backend addresses.
pub fn addrs(n: usize) -> Vec<SocketAddr> {
    (0..n).map(addr).collect()
}

/// The `i`-th 16-byte request key: distinct for every `i`, so hash lookups spread over
/// the whole table (the same keys as the main crate's hashing bench).
#[inline]
pub fn key16(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.to_le_bytes());
    k[8..].copy_from_slice(&(i ^ 0x5555_5555_5555_5555).to_le_bytes());
    k
}

/// FNV-1a over `bytes`: the cheapest key-to-backend map (`fnv1a(key) % n`), the floor of
/// the hash group.
#[inline]
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// Runs `threads` threads at once; each builds its own operation with `make` (its own
/// RNG, its own key counter) and performs it `iters` times. Returns the wall time from
/// the moment all threads are released to the moment the last one finishes.
///
/// Wall time ÷ `iters` is the time of one round, in which every thread performs one
/// operation: on truly parallel threads it equals the single-thread time per operation,
/// whatever the thread count. The per-thread state is built before the clock starts.
pub fn on_threads<M, G>(threads: usize, iters: u64, make: M) -> Duration
where
    M: Fn(usize) -> G + Sync,
    G: FnMut(),
{
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            let make = &make;
            s.spawn(move || {
                let mut op = make(t);
                barrier.wait();
                for _ in 0..iters {
                    op();
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}
