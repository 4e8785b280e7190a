//! Pick latency, single thread, at N ∈ {8, 64, 1024}.
//!
//! pingora-load-balancing 0.9: `RoundRobin`, `Random`, `FNVHash` and `Consistent`
//! (Ketama), both the raw selector (`selector.iter(key).next()`) and the full
//! `LoadBalancer::select(key, 256)` (selector load, unique-iterator, readiness lookup,
//! `Backend` clone). tower-lb: `RoundRobin`, `Random`, `Maglev` and `Ring`, both the raw
//! `Picker::pick` on a prepared snapshot and the full `Pool::pick` (snapshot load, pick,
//! eligibility check, pick counter). Hash rows hash the same 16-byte key on both sides
//! (pingora: FNV-1a or Ketama's CRC32 inside `iter`; tower-lb: XXH3 via `hash_key`).

use std::collections::BTreeSet;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use pingora_load_balancing::selection::{
    BackendIter, BackendSelection, Consistent, FNVHash, Random as PingoraRandom,
    RoundRobin as PingoraRoundRobin,
};
use pingora_load_balancing::{Backend, LoadBalancer};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tower_lb::affinity::hash_key;
use tower_lb::{
    Maglev, PickContext, Picker, Pool, Prepared, Random, Ring, RoundRobin, Snapshot, Weight,
};
use tower_lb_compare::{PINGORA_MAX_ITERATIONS, SIZES, addrs, fnv1a, key16};

pub(crate) type Group<'a> = BenchmarkGroup<'a, WallTime>;

/// The key pingora's examples pass to the non-hashing selectors (which ignore it).
pub(crate) const NO_KEY: &[u8] = b"";

/// What a non-hashing tower-lb pick is given: nothing.
pub(crate) const PLAIN: PickContext = PickContext::new();

/// A pingora selector over `n` backends, built as `LoadBalancer` builds it.
pub(crate) fn pingora_selector<S: BackendSelection>(n: usize) -> Arc<S> {
    let set: BTreeSet<Backend> = addrs(n)
        .iter()
        .map(|a| Backend::new(&a.to_string()).expect("a socket address"))
        .collect();
    Arc::new(S::build(&set))
}

/// A pingora `LoadBalancer` over `n` static backends (no health check: all ready).
pub(crate) fn pingora_lb<S>(n: usize) -> LoadBalancer<S>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    LoadBalancer::try_from_iter(addrs(n)).expect("static backends")
}

/// A tower-lb snapshot of `n` equal-weight backends with `picker`'s table.
pub(crate) fn prepared<P: Picker<SocketAddr>>(
    picker: &P,
    n: usize,
) -> Prepared<SocketAddr, P::Table> {
    let snapshot = Snapshot::build(addrs(n).into_iter().map(|a| (a, Weight::ONE)))
        .expect("distinct addresses");
    Prepared::new(picker, snapshot)
}

/// A tower-lb pool of `n` equal-weight backends.
pub(crate) fn pool<P: Picker<SocketAddr>>(picker: P, n: usize) -> Pool<SocketAddr, P> {
    let pool = Pool::new(picker);
    pool.extend(addrs(n).into_iter().map(|a| (a, Weight::ONE)))
        .expect("distinct addresses");
    pool
}

/// What a pick returns, reduced to a word for `black_box` (the backend's address).
#[inline]
pub(crate) fn chosen(backend: Option<&Backend>) -> usize {
    backend.map_or(0, |b| std::ptr::from_ref(b) as usize)
}

/// The hash tower-lb picks with for the `i`-th key: the key hashed on every pick.
#[inline]
pub(crate) fn hashed(i: u64) -> PickContext {
    PickContext::new().with_hash(hash_key(&key16(i)))
}

fn pingora_iter<S, const HASHING: bool>(g: &mut Group<'_>, name: &str, n: usize)
where
    S: BackendSelection,
    S::Iter: BackendIter,
{
    let selector = pingora_selector::<S>(n);
    g.bench_function(BenchmarkId::new(name, n), |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = i.wrapping_add(1);
            let key = key16(i);
            let key: &[u8] = if HASHING { &key } else { NO_KEY };
            chosen(selector.iter(black_box(key)).next())
        })
    });
}

fn pingora_select<S, const HASHING: bool>(g: &mut Group<'_>, name: &str, n: usize)
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    let lb = pingora_lb::<S>(n);
    g.bench_function(BenchmarkId::new(name, n), |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = i.wrapping_add(1);
            let key = key16(i);
            let key: &[u8] = if HASHING { &key } else { NO_KEY };
            lb.select(black_box(key), PINGORA_MAX_ITERATIONS)
        })
    });
}

fn ours_picker<P: Picker<SocketAddr>, const HASHING: bool>(
    g: &mut Group<'_>,
    name: &str,
    n: usize,
    picker: P,
) {
    let prepared = prepared(&picker, n);
    g.bench_function(BenchmarkId::new(name, n), |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = i.wrapping_add(1);
            let ctx = if HASHING { hashed(i) } else { PLAIN };
            picker.pick(prepared.table(), prepared.snapshot(), black_box(&ctx))
        })
    });
}

fn ours_pool<P: Picker<SocketAddr>, const HASHING: bool>(
    g: &mut Group<'_>,
    name: &str,
    n: usize,
    picker: P,
) {
    let pool = pool(picker, n);
    g.bench_function(BenchmarkId::new(name, n), |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = i.wrapping_add(1);
            let ctx = if HASHING { hashed(i) } else { PLAIN };
            pool.pick(black_box(&ctx)).map(|p| p.index())
        })
    });
}

fn round_robin(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick_round_robin");
    g.throughput(Throughput::Elements(1));
    for n in SIZES {
        let counter = AtomicUsize::new(0);
        g.bench_function(BenchmarkId::new("floor: atomic fetch_add % n", n), |b| {
            b.iter(|| counter.fetch_add(1, Ordering::Relaxed) % black_box(n))
        });
        pingora_iter::<PingoraRoundRobin, false>(&mut g, "pingora RoundRobin iter().next()", n);
        pingora_select::<PingoraRoundRobin, false>(&mut g, "pingora RoundRobin select", n);
        ours_picker::<_, false>(
            &mut g,
            "tower-lb RoundRobin Picker::pick",
            n,
            RoundRobin::new(),
        );
        ours_pool::<_, false>(
            &mut g,
            "tower-lb RoundRobin Pool::pick",
            n,
            RoundRobin::new(),
        );
    }
    g.finish();
}

fn random(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick_random");
    g.throughput(Throughput::Elements(1));
    for n in SIZES {
        let mut rng = SmallRng::seed_from_u64(1);
        g.bench_function(BenchmarkId::new("floor: SmallRng draw", n), |b| {
            b.iter(|| rng.random_range(0..black_box(n)))
        });
        pingora_iter::<PingoraRandom, false>(&mut g, "pingora Random iter().next()", n);
        pingora_select::<PingoraRandom, false>(&mut g, "pingora Random select", n);
        ours_picker::<_, false>(&mut g, "tower-lb Random Picker::pick", n, Random::new());
        ours_pool::<_, false>(&mut g, "tower-lb Random Pool::pick", n, Random::new());
    }
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick_hash");
    g.throughput(Throughput::Elements(1));
    for n in SIZES {
        g.bench_function(BenchmarkId::new("floor: fnv1a(16 B key) % n", n), |b| {
            let mut i = 0u64;
            b.iter(|| {
                i = i.wrapping_add(1);
                fnv1a(&key16(i)) % black_box(n as u64)
            })
        });
        pingora_iter::<FNVHash, true>(&mut g, "pingora FNVHash iter().next()", n);
        pingora_select::<FNVHash, true>(&mut g, "pingora FNVHash select", n);
        pingora_iter::<Consistent, true>(&mut g, "pingora Ketama iter().next()", n);
        pingora_select::<Consistent, true>(&mut g, "pingora Ketama select", n);
        ours_picker::<_, true>(&mut g, "tower-lb Maglev Picker::pick", n, Maglev::new());
        ours_pool::<_, true>(&mut g, "tower-lb Maglev Pool::pick", n, Maglev::new());
        ours_picker::<_, true>(&mut g, "tower-lb Ring Picker::pick", n, Ring::new());
        ours_pool::<_, true>(&mut g, "tower-lb Ring Pool::pick", n, Ring::new());
    }
    g.finish();
}

pub fn register(c: &mut Criterion) {
    round_robin(c);
    random(c);
    hashing(c);
}
