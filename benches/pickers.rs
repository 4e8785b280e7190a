//! ns per pick for every core strategy at N ∈ {8, 64, 1024}, single thread and two
//! threads sharing one picker. Baselines in the same groups: the atomic round-robin
//! floor (`fetch_add(1, Relaxed) % n`) and a fast RNG draw (`SmallRng`, owned and
//! thread-local). `AnyPicker(…)` rows run a strategy chosen by name beside the same
//! picker called directly: their difference is the run-time choice's `match`.

use std::cell::RefCell;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tower_lb::{
    AnyPicker, LeastLoaded, Maglev, PeakEwma, PickContext, Picker, Pool, PowerOfTwoChoices,
    Prepared, Random, Ring, RoundRobin, Snapshot, Weight, WeightedRandom, WeightedRoundRobin,
};

const SIZES: [usize; 3] = [8, 64, 1024];

thread_local! {
    static FLOOR_RNG: RefCell<SmallRng> = RefCell::new(SmallRng::seed_from_u64(1));
    static KEY: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// When the benches' latency samples were taken.
fn sampled_at() -> Instant {
    static AT: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *AT.get_or_init(Instant::now)
}

/// `n` backends with weights 1..=4 (cyclic) or all 1, each with a latency sample and
/// some requests in flight, so load-aware pickers do real comparisons.
fn snapshot(n: usize, weighted: bool) -> Snapshot<usize> {
    let snapshot = Snapshot::build((0..n).map(|i| {
        let w = if weighted { 1 + (i % 4) as u64 } else { 1 };
        (i, Weight::new(w).unwrap())
    }))
    .unwrap();
    for (i, b) in snapshot.backends().iter().enumerate() {
        b.state().record_rtt(
            Duration::from_micros(500 + (i as u64 * 37) % 1000),
            sampled_at(),
        );
        // Guards leaked on purpose: the bench keeps these requests in flight for ever.
        for _ in 0..(i % 3) {
            std::mem::forget(b.state().start());
        }
    }
    snapshot
}

fn bench_picker<P: Picker<usize>>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    n: usize,
    picker: P,
    weighted: bool,
    ctx: PickContext,
) {
    let prepared = Prepared::new(&picker, snapshot(n, weighted));
    group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
        b.iter(|| picker.pick(prepared.table(), prepared.snapshot(), black_box(&ctx)))
    });
}

fn floors(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, n: usize) {
    let counter = AtomicUsize::new(0);
    group.bench_with_input(
        BenchmarkId::new("floor: atomic fetch_add % n", n),
        &n,
        |b, &n| b.iter(|| counter.fetch_add(1, Ordering::Relaxed) % black_box(n)),
    );
    let mut rng = SmallRng::seed_from_u64(1);
    group.bench_with_input(
        BenchmarkId::new("floor: SmallRng draw (owned)", n),
        &n,
        |b, &n| b.iter(|| rng.random_range(0..black_box(n))),
    );
    group.bench_with_input(
        BenchmarkId::new("floor: SmallRng draw (thread-local)", n),
        &n,
        |b, &n| b.iter(|| FLOOR_RNG.with(|r| r.borrow_mut().random_range(0..black_box(n)))),
    );
}

/// What a clock read costs here: the reason the request path reads `quanta`'s clock.
fn clocks(c: &mut Criterion) {
    let mut group = c.benchmark_group("clock");
    group.throughput(Throughput::Elements(1));
    group.bench_function("std::time::Instant::now", |b| b.iter(Instant::now));
    group.bench_function("quanta::Instant::now", |b| b.iter(quanta::Instant::now));
    group.finish();
}

pub fn register(c: &mut Criterion) {
    clocks(c);
    let mut group = c.benchmark_group("pick");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        floors(&mut group, n);
        let plain = PickContext::new();
        bench_picker(&mut group, "RoundRobin", n, RoundRobin::new(), false, plain);
        let any = |name: &str| name.parse::<AnyPicker>().unwrap();
        bench_picker(
            &mut group,
            "AnyPicker(RoundRobin)",
            n,
            any("round-robin"),
            false,
            plain,
        );
        bench_picker(
            &mut group,
            "WeightedRoundRobin",
            n,
            WeightedRoundRobin::new(),
            true,
            plain,
        );
        bench_picker(&mut group, "Random", n, Random::new(), false, plain);
        bench_picker(
            &mut group,
            "WeightedRandom",
            n,
            WeightedRandom::new(),
            true,
            plain,
        );
        bench_picker(
            &mut group,
            "AnyPicker(WeightedRandom)",
            n,
            any("weighted-random"),
            true,
            plain,
        );
        bench_picker(
            &mut group,
            "PowerOfTwoChoices",
            n,
            PowerOfTwoChoices::new(),
            false,
            plain,
        );
        bench_picker(
            &mut group,
            "AnyPicker(PowerOfTwoChoices)",
            n,
            any("p2c"),
            false,
            plain,
        );
        bench_picker(
            &mut group,
            "PowerOfTwoChoices (weighted)",
            n,
            PowerOfTwoChoices::new(),
            true,
            plain,
        );
        bench_picker(
            &mut group,
            "PeakEwma (reads the clock)",
            n,
            PeakEwma::new(),
            false,
            plain,
        );
        // As the tower service calls it: "now" already read for the latency sample.
        // Busy backends (last sample 2 ms ago) and idle ones (3 s ago, the `exp` path).
        let busy = PickContext::new().with_now(sampled_at() + Duration::from_millis(2));
        bench_picker(
            &mut group,
            "PeakEwma (now given, busy)",
            n,
            PeakEwma::new(),
            false,
            busy,
        );
        let idle = PickContext::new().with_now(sampled_at() + Duration::from_secs(3));
        bench_picker(
            &mut group,
            "PeakEwma (now given, idle)",
            n,
            PeakEwma::new(),
            false,
            idle,
        );
        bench_picker(
            &mut group,
            "LeastLoaded",
            n,
            LeastLoaded::new(),
            false,
            plain,
        );
        // No reports: equal shares, the weights rebuilt once per update period (1 s).
        bench_picker(
            &mut group,
            "ServerLoad",
            n,
            tower_lb::ServerLoad::new(),
            false,
            plain,
        );

        // The whole pool path: snapshot load, pick, pick counter.
        let pool = Pool::new(RoundRobin::new());
        pool.extend((0..n).map(|i| (i, Weight::ONE))).unwrap();
        group.bench_with_input(BenchmarkId::new("Pool::pick RoundRobin", n), &n, |b, _| {
            b.iter(|| pool.pick(black_box(&plain)).map(|p| p.index()))
        });
        let pool = Pool::new(PowerOfTwoChoices::new());
        pool.extend((0..n).map(|i| (i, Weight::ONE))).unwrap();
        group.bench_with_input(
            BenchmarkId::new("Pool::pick PowerOfTwoChoices", n),
            &n,
            |b, _| b.iter(|| pool.pick(black_box(&plain)).map(|p| p.index())),
        );
        // The same pools through a per-thread `PoolCache`: no arc-swap guard.
        let mut cache = pool.cached();
        group.bench_with_input(
            BenchmarkId::new("PoolCache::pick PowerOfTwoChoices", n),
            &n,
            |b, _| b.iter(|| cache.pick(black_box(&plain)).map(|p| p.index())),
        );
        let pool = Pool::new(RoundRobin::new());
        pool.extend((0..n).map(|i| (i, Weight::ONE))).unwrap();
        let mut cache = pool.cached();
        group.bench_with_input(
            BenchmarkId::new("PoolCache::pick RoundRobin", n),
            &n,
            |b, _| b.iter(|| cache.pick(black_box(&plain)).map(|p| p.index())),
        );
    }
    group.finish();
    two_threads(c);
    pool_scaling(c);
}

/// One `Pool` shared by one thread, then by two: `Pool::pick` (snapshot load, pick, no
/// shared counter) per second. A strategy that scales shows about twice the one-thread
/// rate on two threads; the calibration rows (a per-thread RNG draw) show what this
/// machine gives for work that shares nothing. Hashing pickers pick by a per-thread
/// key sequence.
fn pool_scaling(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool_2_threads");
    let n: usize = 64;
    let rate = |group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
                name: &str,
                op: &(dyn Fn() + Sync)| {
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new(format!("1 thread: {name}"), n), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    op();
                }
                start.elapsed()
            })
        });
        group.throughput(Throughput::Elements(2));
        group.bench_function(BenchmarkId::new(format!("2 threads: {name}"), n), |b| {
            b.iter_custom(|iters| on_two_threads(iters, op))
        });
    };
    // A key per pick from a per-thread sequence: nothing shared but the pool.
    let key = || {
        KEY.with(|k| {
            k.set(k.get().wrapping_add(0x9E37_79B9_7F4A_7C15));
            k.get()
        })
    };
    rate(
        &mut group,
        "calibration: SmallRng draw (thread-local)",
        &|| {
            black_box(FLOOR_RNG.with(|r| r.borrow_mut().random_range(0..black_box(n))));
        },
    );
    let random = Pool::new(Random::new());
    random.extend((0..n).map(|i| (i, Weight::ONE))).unwrap();
    rate(&mut group, "Pool::pick Random", &|| {
        black_box(random.pick(&PickContext::new()).map(|p| p.index()).ok());
    });
    // Each thread through its own `PoolCache` of one shared pool: no guard, no locked
    // instruction, nothing written that the other thread reads.
    static CACHED: std::sync::OnceLock<Pool<usize, Random>> = std::sync::OnceLock::new();
    thread_local! {
        static CACHE: RefCell<Option<tower_lb::PoolCache<usize, Random>>> =
            const { RefCell::new(None) };
    }
    let shared = CACHED.get_or_init(|| {
        let pool = Pool::new(Random::new());
        pool.extend((0..n).map(|i| (i, Weight::ONE))).unwrap();
        pool
    });
    rate(&mut group, "PoolCache::pick Random", &|| {
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            let cache = c.get_or_insert_with(|| shared.cached());
            black_box(cache.pick(&PickContext::new()).map(|p| p.index()).ok());
        })
    });
    let maglev = Pool::new(Maglev::new());
    maglev
        .extend((0..n as u64).map(|i| (i, Weight::ONE)))
        .unwrap();
    rate(&mut group, "Pool::pick Maglev", &|| {
        let ctx = PickContext::new().with_hash(key());
        black_box(maglev.pick(&ctx).map(|p| p.index()).ok());
    });
    let ring = Pool::new(Ring::new());
    ring.extend((0..n as u64).map(|i| (i, Weight::ONE)))
        .unwrap();
    rate(&mut group, "Pool::pick Ring", &|| {
        let ctx = PickContext::new().with_hash(key());
        black_box(ring.pick(&ctx).map(|p| p.index()).ok());
    });
    group.finish();
}

/// Runs `op` on two threads at once, `iters` times each, and returns the wall time:
/// with `Throughput::Elements(2)` criterion reports the aggregate rate.
fn on_two_threads<F>(iters: u64, op: F) -> Duration
where
    F: Fn() + Sync,
{
    let barrier = Barrier::new(3);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
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

fn two_threads_case<P: Picker<usize> + 'static>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    n: usize,
    picker: P,
) {
    let prepared = Arc::new(Prepared::new(&picker, snapshot(n, false)));
    let ctx = PickContext::new();
    group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
        b.iter_custom(|iters| {
            on_two_threads(iters, || {
                black_box(picker.pick(prepared.table(), prepared.snapshot(), black_box(&ctx)));
            })
        })
    });
}

/// Two threads sharing one picker; elements are picks by both threads together, so a
/// strategy that scales shows twice its single-thread rate.
fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick_2_threads");
    group.throughput(Throughput::Elements(2));
    for n in SIZES {
        let counter = AtomicUsize::new(0);
        group.bench_with_input(
            BenchmarkId::new("floor: atomic fetch_add % n", n),
            &n,
            |b, &n| {
                b.iter_custom(|iters| {
                    on_two_threads(iters, || {
                        black_box(counter.fetch_add(1, Ordering::Relaxed) % black_box(n));
                    })
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("floor: SmallRng draw (thread-local)", n),
            &n,
            |b, &n| {
                b.iter_custom(|iters| {
                    on_two_threads(iters, || {
                        black_box(FLOOR_RNG.with(|r| r.borrow_mut().random_range(0..black_box(n))));
                    })
                })
            },
        );
        two_threads_case(&mut group, "RoundRobin", n, RoundRobin::new());
        two_threads_case(&mut group, "Random", n, Random::new());
        two_threads_case(&mut group, "WeightedRandom", n, WeightedRandom::new());
        two_threads_case(&mut group, "PowerOfTwoChoices", n, PowerOfTwoChoices::new());
        two_threads_case(&mut group, "PeakEwma", n, PeakEwma::new());
    }
    group.finish();
}
