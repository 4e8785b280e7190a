//! Two threads sharing one balancer, at N ∈ {8, 64, 1024}: pingora's `LoadBalancer`
//! (and raw selector) against tower-lb's `Pool` (and raw picker on one prepared
//! snapshot). Each row is the wall time of one *round*, in which each of the two
//! threads makes one pick: a balancer that scales shows its single-thread pick time,
//! one that serialises the threads shows up to twice that.
//!
//! On a 2-core machine shared with other work the two threads may not really run at
//! once, which would make every row look worse and the comparison meaningless. So each
//! N carries its calibration, measured in the same group before and after that N's rows:
//! a per-thread RNG loop (no shared memory at all) on 1 thread and on 2 threads. The
//! 2-thread rows of that N are valid when, both times, the 2-thread calibration is no
//! slower than the 1-thread one (`report.py` checks it and prints the ratios).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion};
use pingora_load_balancing::selection::{
    BackendIter, BackendSelection, Consistent, FNVHash, Random as PingoraRandom,
    RoundRobin as PingoraRoundRobin,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tower_lb::{Maglev, Picker, Random, Ring, RoundRobin};
use tower_lb_compare::{PINGORA_MAX_ITERATIONS, SIZES, key16, on_threads};

use crate::picks::{
    Group, NO_KEY, PLAIN, chosen, hashed, pingora_lb, pingora_selector, pool, prepared,
};

const THREADS: usize = 2;

/// The first key of thread `t`: the two threads never ask for the same keys.
fn first_key(t: usize) -> u64 {
    (t as u64) << 40
}

/// The calibration rows, `when` = "before" or "after" the rows of this N.
fn calibration(g: &mut Group<'_>, n: usize, when: &str) {
    for threads in [1, THREADS] {
        let name = format!("calibration {when}: RNG loop on {threads} thread(s)");
        g.bench_function(BenchmarkId::new(name, n), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, |t| {
                    let mut rng = SmallRng::seed_from_u64(t as u64 + 1);
                    move || {
                        // Eight draws: long enough that the loop, not the call, is timed.
                        let mut x = 0u64;
                        for _ in 0..8 {
                            x ^= rng.random::<u64>();
                        }
                        black_box(x);
                    }
                })
            })
        });
    }
}

fn pingora_select<S, const HASHING: bool>(g: &mut Group<'_>, name: &str, n: usize)
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
{
    let lb = pingora_lb::<S>(n);
    g.bench_function(BenchmarkId::new(name, n), |b| {
        b.iter_custom(|iters| {
            on_threads(THREADS, iters, |t| {
                let lb = &lb;
                let mut i = first_key(t);
                move || {
                    i = i.wrapping_add(1);
                    let key = key16(i);
                    let key: &[u8] = if HASHING { &key } else { NO_KEY };
                    black_box(lb.select(black_box(key), PINGORA_MAX_ITERATIONS));
                }
            })
        })
    });
}

fn pingora_iter<S>(g: &mut Group<'_>, name: &str, n: usize)
where
    S: BackendSelection + Send + Sync,
    S::Iter: BackendIter,
{
    let selector = pingora_selector::<S>(n);
    g.bench_function(BenchmarkId::new(name, n), |b| {
        b.iter_custom(|iters| {
            on_threads(THREADS, iters, |_| {
                let selector = &selector;
                move || {
                    black_box(chosen(selector.iter(black_box(NO_KEY)).next()));
                }
            })
        })
    });
}

fn ours_pool<P, const HASHING: bool>(g: &mut Group<'_>, name: &str, n: usize, picker: P)
where
    P: Picker<std::net::SocketAddr>,
    P::Table: 'static,
{
    let pool = pool(picker, n);
    g.bench_function(BenchmarkId::new(name, n), |b| {
        b.iter_custom(|iters| {
            on_threads(THREADS, iters, |t| {
                let pool = &pool;
                let mut i = first_key(t);
                move || {
                    i = i.wrapping_add(1);
                    let ctx = if HASHING { hashed(i) } else { PLAIN };
                    black_box(pool.pick(black_box(&ctx)).map(|p| p.index()).ok());
                }
            })
        })
    });
}

fn ours_picker<P: Picker<std::net::SocketAddr>>(
    g: &mut Group<'_>,
    name: &str,
    n: usize,
    picker: P,
) {
    let prepared = prepared(&picker, n);
    g.bench_function(BenchmarkId::new(name, n), |b| {
        b.iter_custom(|iters| {
            on_threads(THREADS, iters, |_| {
                let (picker, prepared) = (&picker, &prepared);
                move || {
                    black_box(picker.pick(
                        prepared.table(),
                        prepared.snapshot(),
                        black_box(&PLAIN),
                    ));
                }
            })
        })
    });
}

pub fn register(c: &mut Criterion) {
    let mut g = c.benchmark_group("two_threads");
    for n in SIZES {
        calibration(&mut g, n, "before");
        pingora_select::<PingoraRoundRobin, false>(&mut g, "pingora RoundRobin select", n);
        ours_pool::<_, false>(
            &mut g,
            "tower-lb RoundRobin Pool::pick",
            n,
            RoundRobin::new(),
        );
        pingora_iter::<PingoraRoundRobin>(&mut g, "pingora RoundRobin iter().next()", n);
        ours_picker(
            &mut g,
            "tower-lb RoundRobin Picker::pick",
            n,
            RoundRobin::new(),
        );
        pingora_select::<PingoraRandom, false>(&mut g, "pingora Random select", n);
        ours_pool::<_, false>(&mut g, "tower-lb Random Pool::pick", n, Random::new());
        pingora_iter::<PingoraRandom>(&mut g, "pingora Random iter().next()", n);
        ours_picker(&mut g, "tower-lb Random Picker::pick", n, Random::new());
        pingora_select::<FNVHash, true>(&mut g, "pingora FNVHash select", n);
        ours_pool::<_, true>(&mut g, "tower-lb Maglev Pool::pick", n, Maglev::new());
        pingora_select::<Consistent, true>(&mut g, "pingora Ketama select", n);
        ours_pool::<_, true>(&mut g, "tower-lb Ring Pool::pick", n, Ring::new());
        calibration(&mut g, n, "after");
    }
    g.finish();
}
