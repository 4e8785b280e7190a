//! Scale measurements that criterion does not take: memory per backend, and request
//! latency through `Balance` while the set churns.
//!
//! - `memory`: live heap bytes per backend of a `Pool<String, _>` of N = 1 000, 10 000
//!   and 50 000 backends (weights 1–4) for every strategy — members, live state, the
//!   address index, the snapshot and the picker's table — counted by a global allocator
//!   wrapper around the system allocator.
//! - `churn [STRATEGY] [task|poll-ready]`: N = 10 000 backends behind a `Balance` (each
//!   an in-process service that answers at once); one client sends requests one after
//!   another for 3 s and records each one's latency (`ready` + `call` + `await`), first
//!   without churn, then while a registry thread announces 100 membership changes per
//!   second (a removal and an insertion in turn) through a channel. `task` (the default)
//!   applies them with a `Discovery` task on the registry's thread; `poll-ready` with
//!   `Balance::discover`, on the request path, for comparison. Prints p50 / p99 / p99.9.
//!
//! - `change N [STRATEGY…]`: one change (an `insert`, then the `remove` of the same
//!   backend) on a `Pool` of N per strategy (default: all), the strategies taking turns
//!   change by change, 60 rounds; prints each one's median and its ratio to
//!   `round-robin`'s median. Criterion's `scale-change` group measures one strategy
//!   after another, so a neighbour's burst of work lands on some of them only; taking
//!   turns, every strategy sees the same machine.
//!
//! Run with `cargo run --release --example scale -- memory`,
//! `cargo run --release --example scale -- churn round-robin task` or
//! `cargo run --release --example scale -- change 50000`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::future::Ready;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tower::{Service, ServiceExt, service_fn};
use tower_lb::balance::{BackendService, Balance, BoxError, Change, Discovery};
use tower_lb::{AnyPicker, Pool, Weight};

/// The system allocator, counting live bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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

fn memory() -> Result<(), BoxError> {
    println!("| strategy | N = 1 000 | 10 000 | 50 000 |");
    println!("| --- | --- | --- | --- |");
    for name in strategies() {
        let mut row = format!("| {name} |");
        for n in [1_000usize, 10_000, 50_000] {
            let members: Vec<(String, Weight)> = (0..n)
                .map(|i| (addr(i), Weight::new(1 + (i as u64 % 4)).expect("1..=4")))
                .collect();
            let before = LIVE.load(Ordering::Relaxed);
            let pool = Pool::new(name.parse::<AnyPicker>()?);
            // The members' own copies: what the pool holds, not the input vector.
            pool.extend(members.iter().cloned())?;
            let bytes = LIVE.load(Ordering::Relaxed).saturating_sub(before);
            drop(pool);
            row.push_str(&format!(" {} B |", bytes / n));
        }
        println!("{row}");
    }
    Ok(())
}

fn change(n: usize, names: &[&str]) -> Result<(), BoxError> {
    let mut names: Vec<&str> = names.to_vec();
    if names.is_empty() {
        names = strategies().collect();
    }
    if !names.contains(&"round-robin") {
        names.insert(0, "round-robin");
    }
    let mut pools = Vec::new();
    for &name in &names {
        let pool = Pool::new(name.parse::<AnyPicker>()?);
        pool.extend((0..n).map(|i| (addr(i), Weight::new(1 + (i as u64 % 4)).expect("1..=4"))))?;
        pools.push(pool);
    }
    let extra = addr(n);
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); pools.len()];
    for _ in 0..60 {
        for (pool, times) in pools.iter().zip(&mut times) {
            let start = Instant::now();
            let id = pool.insert(extra.clone(), Weight::ONE)?;
            times.push(start.elapsed());
            let start = Instant::now();
            drop(pool.remove(id)?);
            times.push(start.elapsed());
        }
    }
    let medians: Vec<Duration> = times
        .iter_mut()
        .map(|t| {
            t.sort_unstable();
            t[t.len() / 2]
        })
        .collect();
    let base = medians[names.iter().position(|&n| n == "round-robin").unwrap_or(0)];
    println!("one change at N = {n}, strategies taking turns (median of 120):");
    for (name, median) in names.iter().zip(&medians) {
        println!(
            "  {name:<16} {:>9.3} ms  {:>5.2}× round-robin",
            median.as_secs_f64() * 1e3,
            median.as_secs_f64() / base.as_secs_f64()
        );
    }
    Ok(())
}

type Svc = tower::util::ServiceFn<fn(u32) -> Ready<Result<u32, Infallible>>>;

fn svc() -> Svc {
    service_fn(|req: u32| std::future::ready(Ok(req)))
}

const N: usize = 10_000;
const RUN: Duration = Duration::from_secs(3);
const CHANGES_PER_SECOND: u64 = 100;

/// Sends requests one after another for `RUN`; returns each latency in nanoseconds.
async fn requests<S>(balance: &mut S) -> Result<Vec<u64>, BoxError>
where
    S: Service<u32, Response = u32, Error = BoxError>,
{
    let mut latencies = Vec::with_capacity(8_000_000);
    let start = Instant::now();
    let mut i = 0u32;
    while start.elapsed() < RUN {
        let t = Instant::now();
        let answer = balance.ready().await?.call(i).await?;
        latencies.push(t.elapsed().as_nanos() as u64);
        if answer != i {
            return Err("a wrong answer".into());
        }
        i = i.wrapping_add(1);
    }
    Ok(latencies)
}

/// p50, p99, p99.9, max, count.
fn percentiles(mut latencies: Vec<u64>) -> (u64, u64, u64, u64, usize) {
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (at(0.50), at(0.99), at(0.999), at(1.0), latencies.len())
}

type Announcement = Result<Change<String, Svc>, Infallible>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
}

/// A registry thread: 100 changes per second on `tx` until `stop`; returns how many.
fn registry(
    tx: tokio::sync::mpsc::UnboundedSender<Announcement>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let mut tick =
                tokio::time::interval(Duration::from_micros(1_000_000 / CHANGES_PER_SECOND));
            let mut sent = 0usize;
            let mut next = N;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                // Remove the oldest churned member, then add a new one, in turn.
                let change = if sent.is_multiple_of(2) {
                    Change::Remove(addr(next - N))
                } else {
                    next += 1;
                    Change::Insert(addr(next), svc())
                };
                if tx.send(Ok(change)).is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        })
    })
}

async fn churn(strategy: &str, driver: &str) -> Result<(), BoxError> {
    let make = |key: &String, s: Svc| (BackendService::new(key.clone(), s), Weight::ONE);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Announcement>();
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let mut balance = Balance::new(Pool::new(strategy.parse::<AnyPicker>()?));
    for i in 0..N {
        tx.send(Ok(Change::Insert(addr(i), svc())))?;
    }
    let task = match driver {
        "task" => Some(Discovery::new(balance.pool(), stream, make)),
        "poll-ready" => {
            balance.discover(stream, make);
            None
        }
        other => return Err(format!("unknown driver {other:?}: task or poll-ready").into()),
    };
    // The discovery task on a thread of its own (the registry's side), until the
    // registry closes the channel.
    let discovery = task.map(|task| std::thread::spawn(move || runtime().block_on(task)));
    // The initial N, applied before the quiet run.
    while balance.pool().snapshot().len() < N {
        balance.ready().await?;
        tokio::task::yield_now().await;
    }
    let quiet = percentiles(requests(&mut balance).await?);
    let stop = Arc::new(AtomicBool::new(false));
    let churner = registry(tx, stop.clone());
    let busy = percentiles(requests(&mut balance).await?);
    stop.store(true, Ordering::Relaxed);
    let changes = churner.join().map_err(|_| "the registry panicked")?;
    if let Some(discovery) = discovery {
        discovery.join().map_err(|_| "discovery panicked")??;
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    println!("{strategy}, N = {N}, discovery driven by {driver}:");
    println!(
        "  no churn:            p50 {:.2} µs  p99 {:.2} µs  p99.9 {:.2} µs  max {:.0} µs  ({} requests)",
        us(quiet.0),
        us(quiet.1),
        us(quiet.2),
        us(quiet.3),
        quiet.4
    );
    println!(
        "  {} changes/s ({changes}): p50 {:.2} µs  p99 {:.2} µs  p99.9 {:.2} µs  max {:.0} µs  ({} requests)",
        CHANGES_PER_SECOND,
        us(busy.0),
        us(busy.1),
        us(busy.2),
        us(busy.3),
        busy.4
    );
    println!(
        "  p99 with churn / without: {:.2}",
        busy.1 as f64 / quiet.1 as f64
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("memory") => memory(),
        Some("churn") => {
            let strategy = args.get(1).map_or("round-robin", String::as_str);
            let driver = args.get(2).map_or("task", String::as_str);
            churn(strategy, driver).await
        }
        Some("change") => {
            let n = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(50_000);
            let names: Vec<&str> = args.iter().skip(2).map(String::as_str).collect();
            change(n, &names)
        }
        _ => Err(
            "usage: scale memory | scale churn [STRATEGY] [task|poll-ready] | scale change [N] [STRATEGY…]"
                .into(),
        ),
    }
}
