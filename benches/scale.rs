//! Scale: what one membership change costs, and what a pick costs, at N = 1 000, 10 000
//! and 50 000 backends (`String` addresses, weights 1–4 so weighted strategies do
//! weighted work), for every strategy.
//!
//! - `scale-change`: one change to a `Pool` of N — an `insert`, then the `remove` of the
//!   same backend, alternately, so N stays put, on one pool per row; each includes
//!   health's evaluation, the snapshot and the picker's table. Baselines in the group: `copy-floor`, cloning the
//!   N members (what any change that publishes a new snapshot pays at least), and
//!   `round-robin`, whose table is empty (the yardstick: every strategy within
//!   2× of it).
//! - `scale-discover`: N inserts arriving through `Balance::from_discover` and applied by
//!   one `poll_ready`, against one `Pool::extend` of the same N (the floor).
//! - `scale-pick`: one `Pool::pick` (with a key hash for the hashing strategies).
//!
//! `cargo bench --bench lb -- scale --warm-up-time 1 --measurement-time 2`.

use std::convert::Infallible;
use std::future::Ready;
use std::hint::black_box;
use std::task::{Context, Poll, Waker};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use tower::{Service, service_fn};
use tower_lb::balance::{Balance, Change};
use tower_lb::{AnyPicker, PickContext, Pool, RoundRobin, Weight};

const SIZES: [usize; 3] = [1_000, 10_000, 50_000];

/// Every strategy by its `AnyPicker` name, but the bounded-load variants (their change
/// is their inner table's) and `server-load` (no table: its weights come from reports).
fn strategies() -> impl Iterator<Item = &'static str> {
    AnyPicker::NAMES
        .iter()
        .copied()
        .filter(|n| !matches!(*n, "ring-bounded" | "rendezvous-bounded" | "server-load"))
}

fn addr(i: usize) -> String {
    format!("10.{}.{}.{}:8080", i >> 16, (i >> 8) & 255, i & 255)
}

fn weight(i: usize) -> Weight {
    Weight::new(1 + (i as u64 % 4)).expect("1..=4")
}

fn pool(strategy: &str, n: usize) -> Pool<String, AnyPicker> {
    let pool = Pool::new(strategy.parse::<AnyPicker>().expect("a strategy"));
    pool.extend((0..n).map(|i| (addr(i), weight(i))))
        .expect("distinct addresses");
    pool
}

fn change(c: &mut Criterion) {
    let mut group = c.benchmark_group("scale-change");
    group.sample_size(10).throughput(Throughput::Elements(1));
    for &n in &SIZES {
        group.bench_with_input(BenchmarkId::new("copy-floor", n), &(), |b, _| {
            let floor = pool("round-robin", n);
            b.iter(|| black_box(floor.snapshot().snapshot().backends().to_vec()))
        });
        for name in strategies() {
            // One pool for all of a row's samples (criterion calls the routine once per
            // sample): a long-lived pool, as an application has, rather than a fresh
            // one per sample, whose build and the previous one's release made the rows
            // of the largest tables swing between runs. Built on first use, so a
            // filtered-out bench builds nothing.
            let mut built: Option<Pool<String, AnyPicker>> = None;
            let extra = addr(n);
            let mut added = None;
            group.bench_with_input(BenchmarkId::new(name, n), &(), |b, _| {
                let pool = built.get_or_insert_with(|| pool(name, n));
                b.iter(|| match added.take() {
                    None => added = Some(pool.insert(extra.clone(), Weight::ONE).unwrap()),
                    Some(id) => drop(pool.remove(id).unwrap()),
                })
            });
        }
    }
    group.finish();
}

type Svc = tower::util::ServiceFn<fn(()) -> Ready<Result<(), Infallible>>>;

fn svc() -> Svc {
    service_fn(|()| std::future::ready(Ok(())))
}

fn discover(c: &mut Criterion) {
    let mut group = c.benchmark_group("scale-discover");
    group.sample_size(10);
    for &n in &SIZES {
        group.throughput(Throughput::Elements(n as u64));
        let addrs: Vec<String> = (0..n).map(addr).collect();
        group.bench_with_input(BenchmarkId::new("extend-floor", n), &(), |b, _| {
            b.iter_batched(
                || {
                    addrs
                        .iter()
                        .map(|a| (a.clone(), Weight::ONE))
                        .collect::<Vec<_>>()
                },
                |members| {
                    let pool = Pool::new(RoundRobin::new());
                    pool.extend(members).unwrap();
                    pool
                },
                BatchSize::PerIteration,
            )
        });
        group.bench_with_input(BenchmarkId::new("discover", n), &(), |b, _| {
            b.iter_batched(
                || {
                    let changes: Vec<Result<_, Infallible>> = addrs
                        .iter()
                        .map(|a| Ok(Change::Insert(a.clone(), svc())))
                        .collect();
                    futures::stream::iter(changes)
                },
                |stream| {
                    let mut balance = Balance::from_discover(RoundRobin::new(), stream);
                    let mut cx = Context::from_waker(Waker::noop());
                    let ready = Service::<()>::poll_ready(&mut balance, &mut cx);
                    assert!(matches!(ready, Poll::Ready(Ok(()))));
                    assert_eq!(balance.pool().snapshot().len(), n);
                    balance
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("scale-pick");
    group.throughput(Throughput::Elements(1));
    for &n in &SIZES {
        for name in strategies() {
            group.bench_with_input(BenchmarkId::new(name, n), &(), |b, _| {
                let pool = pool(name, n);
                let mut i = 0u64;
                b.iter(|| {
                    i = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let ctx = PickContext::new().with_hash(i);
                    pool.pick(black_box(&ctx)).map(|p| p.index()).ok()
                })
            });
        }
    }
    group.finish();
}

pub fn register(c: &mut Criterion) {
    change(c);
    discover(c);
    pick(c);
}
