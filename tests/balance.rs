//! The `Balance` service against in-process services: tower's contract, limits,
//! discovery, passive health, affinity. Real HTTP servers are in `balance_http.rs`.
#![cfg(feature = "tower")]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use proptest::prelude::*;
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};
use tower_lb::affinity::KeyFn;
use tower_lb::balance::{BackendService, Balance, BalanceLayer, BoxError, Change, OnOverload};
use tower_lb::health::OutlierDetection;
use tower_lb::{Maglev, Overloaded, PickError, Pool, PowerOfTwoChoices, RoundRobin, Weight};

/// A service that answers with its name, after the request's own delay (0 = at once).
#[derive(Clone)]
struct Named {
    name: &'static str,
    fail: Arc<AtomicBool>,
}

impl Service<u64> for Named {
    type Response = &'static str;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<&'static str, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, delay_ms: u64) -> Self::Future {
        let (name, fail) = (self.name, self.fail.load(Ordering::SeqCst));
        Box::pin(async move {
            if delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            if fail {
                Err(format!("{name} failed").into())
            } else {
                Ok(name)
            }
        })
    }
}

fn named(name: &'static str) -> (BackendService<&'static str, Named>, Arc<AtomicBool>) {
    let fail = Arc::new(AtomicBool::new(false));
    (
        BackendService::new(
            name,
            Named {
                name,
                fail: fail.clone(),
            },
        ),
        fail,
    )
}

type NamedPool<P> = Pool<BackendService<&'static str, Named>, P>;

fn pool_of<P: tower_lb::Picker<BackendService<&'static str, Named>>>(
    picker: P,
    names: &[&'static str],
) -> (NamedPool<P>, Vec<Arc<AtomicBool>>) {
    let pool = Pool::new(picker);
    let fails = names
        .iter()
        .map(|&n| {
            let (endpoint, fail) = named(n);
            pool.insert(endpoint, Weight::ONE).unwrap();
            fail
        })
        .collect();
    (pool, fails)
}

fn in_flight<P: tower_lb::Picker<BackendService<&'static str, Named>>>(
    pool: &Pool<BackendService<&'static str, Named>, P>,
) -> Vec<usize> {
    pool.stats().iter().map(|s| s.in_flight).collect()
}

#[tokio::test(start_paused = true)]
async fn spreads_and_tracks_in_flight() {
    let (pool, _) = pool_of(RoundRobin::new(), &["a", "b", "c"]);
    let balance = Balance::new(pool.clone());
    let calls: Vec<_> = (0..6).map(|_| balance.clone().oneshot(100)).collect();
    // Each future has been called (oneshot drives ready + call on first poll).
    let mut calls: Vec<_> = calls.into_iter().map(Box::pin).collect();
    for c in &mut calls {
        assert!(futures::poll!(c.as_mut()).is_pending());
    }
    assert_eq!(in_flight(&pool), [2, 2, 2]);
    let answers = futures::future::join_all(calls).await;
    let mut names: Vec<_> = answers.into_iter().map(|r| r.unwrap()).collect();
    names.sort();
    assert_eq!(names, ["a", "a", "b", "b", "c", "c"]);
    assert_eq!(in_flight(&pool), [0, 0, 0]);
    assert!(
        pool.stats()
            .iter()
            .all(|s| s.successes == 2 && s.ewma.is_some())
    );
}

#[tokio::test(start_paused = true)]
async fn empty_or_all_down_fails_at_once_with_a_typed_error() {
    let (pool, _) = pool_of(PowerOfTwoChoices::with_seed(1), &[]);
    let balance = BalanceLayer::new(pool.clone())
        .max_in_flight(4)
        .build(tower_lb::balance::PerBackend);
    let err = balance.clone().oneshot(0).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<PickError>(),
        Some(&PickError::NoBackends)
    );
    let (a, _) = named("a");
    let id = pool.insert(a, Weight::ONE).unwrap();
    pool.drain(id).unwrap();
    let err = balance.clone().oneshot(0).await.unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<PickError>(),
            Some(PickError::NoEligible { total: 1 })
        ),
        "{err}"
    );
    assert_eq!(balance.committed(), Some(0));
}

/// `max_in_flight(0)` is no limit (as NGINX's `max_conns=0`), not a limit of one.
#[tokio::test(start_paused = true)]
async fn a_zero_in_flight_limit_means_none() {
    let (pool, _) = pool_of(RoundRobin::new(), &["a", "b"]);
    let balance = BalanceLayer::new(pool.clone())
        .max_in_flight(0)
        .on_overload(OnOverload::Shed)
        .build(tower_lb::balance::PerBackend);
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut f = Box::pin(balance.clone().oneshot(1_000));
        assert!(futures::poll!(f.as_mut()).is_pending());
        held.push(f);
    }
    assert_eq!(in_flight(&pool), [10, 10]);
    assert_eq!(balance.clone().oneshot(0).await.unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn sheds_with_the_numbers_when_every_backend_is_full() {
    let (pool, _) = pool_of(RoundRobin::new(), &["a", "b"]);
    let balance = BalanceLayer::new(pool.clone())
        .max_in_flight(2)
        .on_overload(OnOverload::Shed)
        .build(tower_lb::balance::PerBackend);
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut f = Box::pin(balance.clone().oneshot(1_000));
        assert!(futures::poll!(f.as_mut()).is_pending());
        held.push(f);
    }
    assert_eq!(in_flight(&pool), [2, 2]);
    let err = balance.clone().oneshot(0).await.unwrap_err();
    let overloaded = err
        .downcast_ref::<Overloaded>()
        .expect("an Overloaded error");
    assert_eq!(
        (
            overloaded.in_flight,
            overloaded.max_in_flight,
            overloaded.backends
        ),
        (4, 2, 2)
    );
    // One finishes: the next request gets through.
    held.pop();
    assert_eq!(balance.clone().oneshot(0).await.unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn waits_and_is_woken_when_capacity_frees() {
    let (pool, _) = pool_of(RoundRobin::new(), &["a"]);
    let balance = BalanceLayer::new(pool.clone())
        .max_in_flight(1)
        .on_overload(OnOverload::Wait)
        .build(tower_lb::balance::PerBackend);
    let first = tokio::spawn(balance.clone().oneshot(50));
    tokio::task::yield_now().await;
    assert_eq!(in_flight(&pool), [1]);
    // The second caller waits in poll_ready: no busy loop, woken by the first's end.
    let mut second = balance.clone();
    let ready = tokio::spawn(async move {
        std::future::poll_fn(|cx| second.poll_ready(cx))
            .await
            .unwrap();
        second.call(0).await
    });
    tokio::task::yield_now().await;
    assert!(!ready.is_finished());
    assert_eq!(first.await.unwrap().unwrap(), "a");
    assert_eq!(ready.await.unwrap().unwrap(), "a");
    assert_eq!(balance.committed(), Some(0));
}

#[tokio::test]
async fn a_reservation_is_released_if_call_never_comes_and_never_cloned() {
    let (pool, _) = pool_of(RoundRobin::new(), &["a"]);
    let mut balance = BalanceLayer::new(pool)
        .max_in_flight(1)
        .build(tower_lb::balance::PerBackend);
    std::future::poll_fn(|cx| balance.poll_ready(cx))
        .await
        .unwrap();
    assert_eq!(balance.committed(), Some(1));
    let mut clone = balance.clone();
    // The clone has no reservation of its own and the set is full: it must wait.
    let pending = std::future::poll_fn(|cx| Poll::Ready(clone.poll_ready(cx))).await;
    assert!(pending.is_pending());
    drop(balance);
    assert_eq!(clone.committed(), Some(0));
    std::future::poll_fn(|cx| clone.poll_ready(cx))
        .await
        .unwrap();
    assert_eq!(clone.call(0).await.unwrap(), "a");
}

/// A waker that records whether it was woken.
struct Flag(AtomicBool);

impl std::task::Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Flag {
    fn new() -> (Arc<Flag>, std::task::Waker) {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        (flag.clone(), std::task::Waker::from(flag))
    }

    fn woken(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A release wakes one waiter; if that waiter goes away without taking the unit, its
/// wake-up passes to the next, which would otherwise wait for ever with capacity free.
#[tokio::test]
async fn a_dropped_waiter_passes_its_wake_up_on() {
    let (pool, _) = pool_of(RoundRobin::new(), &["a"]);
    let mut holder = BalanceLayer::new(pool)
        .max_in_flight(1)
        .on_overload(OnOverload::Wait)
        .build(tower_lb::balance::PerBackend);
    std::future::poll_fn(|cx| holder.poll_ready(cx))
        .await
        .unwrap();
    let (mut first, mut second) = (holder.clone(), holder.clone());
    let (first_flag, first_waker) = Flag::new();
    let (second_flag, second_waker) = Flag::new();
    let mut second_cx = Context::from_waker(&second_waker);
    assert!(
        first
            .poll_ready(&mut Context::from_waker(&first_waker))
            .is_pending()
    );
    assert!(second.poll_ready(&mut second_cx).is_pending());
    // The holder's reservation goes back: one waiter, the first in line, is woken.
    drop(holder);
    assert!(first_flag.woken());
    assert!(!second_flag.woken(), "a release woke more than one waiter");
    // The first goes away without polling again.
    drop(first);
    assert!(second_flag.woken(), "the dropped waiter kept its wake-up");
    assert!(second.poll_ready(&mut second_cx).is_ready());
    assert_eq!(second.call(0).await.unwrap(), "a");
    assert_eq!(second.committed(), Some(0));
}

/// A woken waiter that takes a unit and finds more capacity left wakes the next one: a
/// wake-up spent on a stale registration (the same waiter, registered twice under two
/// wakers) does not strand a waiter behind it.
#[tokio::test]
async fn a_woken_waiter_passes_spare_capacity_on() {
    let (pool, _) = pool_of(RoundRobin::new(), &["a"]);
    let balance = BalanceLayer::new(pool)
        .max_in_flight(2)
        .on_overload(OnOverload::Wait)
        .build(tower_lb::balance::PerBackend);
    let (mut holder_1, mut holder_2) = (balance.clone(), balance.clone());
    for holder in [&mut holder_1, &mut holder_2] {
        std::future::poll_fn(|cx| holder.poll_ready(cx))
            .await
            .unwrap();
    }
    let (mut first, mut second) = (balance.clone(), balance.clone());
    // The first waiter registers twice (its task moved: a new waker), then the second.
    let (old_flag, old_waker) = Flag::new();
    let (first_flag, first_waker) = Flag::new();
    let (second_flag, second_waker) = Flag::new();
    let mut first_cx = Context::from_waker(&first_waker);
    assert!(
        first
            .poll_ready(&mut Context::from_waker(&old_waker))
            .is_pending()
    );
    assert!(first.poll_ready(&mut first_cx).is_pending());
    assert!(
        second
            .poll_ready(&mut Context::from_waker(&second_waker))
            .is_pending()
    );
    // Two units come back; their two wake-ups both go to the first waiter's wakers.
    drop(holder_1);
    drop(holder_2);
    assert!(old_flag.woken() && first_flag.woken());
    assert!(!second_flag.woken());
    // The first takes one unit and, one being left, wakes the second.
    assert!(first.poll_ready(&mut first_cx).is_ready());
    assert!(
        second_flag.woken(),
        "spare capacity stranded the second waiter"
    );
    assert!(
        second
            .poll_ready(&mut Context::from_waker(&second_waker))
            .is_ready()
    );
    assert_eq!(balance.committed(), Some(2));
}

/// DNS discovery keeps the last set when a resolution fails or comes back empty (the
/// balancer keeps serving from it), and follows the records again when they return. The
/// resolver is the test's: scripted answers, one per interval of the paused clock.
#[cfg(feature = "tokio")]
#[tokio::test(start_paused = true)]
async fn dns_discovery_keeps_the_last_set_when_a_resolution_fails() {
    use std::collections::{BTreeSet, VecDeque};
    use std::net::SocketAddr;

    let addr = |last: u8| SocketAddr::from(([10, 0, 0, last], 80));
    let script: VecDeque<std::io::Result<Vec<SocketAddr>>> = VecDeque::from([
        Ok(vec![addr(1), addr(2)]),
        Err(std::io::Error::other("SERVFAIL")),
        Ok(vec![]),
        Ok(vec![addr(2), addr(3)]),
    ]);
    let script = Arc::new(parking_lot::Mutex::new(script));
    let asked = Arc::new(AtomicUsize::new(0));
    let dns = tower_lb::balance::DnsDiscover::with_resolver("backends.test", 80, {
        let (script, asked) = (script.clone(), asked.clone());
        move |host, port| {
            assert_eq!((host, port), ("backends.test", 80));
            asked.fetch_add(1, Ordering::SeqCst);
            let answer = script.lock().pop_front().expect("a scripted answer");
            async move { answer }
        }
    })
    .interval(Duration::from_secs(10));
    let pool = Pool::new(RoundRobin::new());
    let mut balance = Balance::new(pool.clone());
    // 10.0.0.1 is "a", 10.0.0.2 "b", 10.0.0.3 "c".
    balance.discover(dns, |addr: &SocketAddr, _| {
        let std::net::IpAddr::V4(ip) = addr.ip() else {
            unreachable!("the script has IPv4 addresses only")
        };
        (
            named(["a", "b", "c"][usize::from(ip.octets()[3]) - 1]).0,
            Weight::ONE,
        )
    });
    let mut served = async || -> BTreeSet<&'static str> {
        let mut names = BTreeSet::new();
        for _ in 0..4 {
            std::future::poll_fn(|cx| balance.poll_ready(cx))
                .await
                .unwrap();
            names.insert(balance.call(0).await.unwrap());
        }
        names
    };
    let members = |pool: &NamedPool<RoundRobin>| -> BTreeSet<&'static str> {
        pool.stats().iter().map(|s| *s.addr.key()).collect()
    };
    assert_eq!(served().await, BTreeSet::from(["a", "b"]));
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    // A failed resolution, then an empty one: the set stays, and so does the service.
    for resolutions in [2, 3] {
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(served().await, BTreeSet::from(["a", "b"]));
        assert_eq!(asked.load(Ordering::SeqCst), resolutions);
        assert_eq!(members(&pool), BTreeSet::from(["a", "b"]));
    }
    // The records are back, changed: a leaves, c joins.
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(served().await, BTreeSet::from(["b", "c"]));
    assert_eq!(asked.load(Ordering::SeqCst), 4);
    assert_eq!(members(&pool), BTreeSet::from(["b", "c"]));
    assert!(script.lock().is_empty());
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_eject_through_the_service() {
    let pool = Pool::builder(RoundRobin::new())
        .outlier_detection(OutlierDetection::new().consecutive_failures(5))
        .build()
        .unwrap();
    let (a, fail_a) = named("a");
    let (b, _) = named("b");
    pool.insert(a, Weight::ONE).unwrap();
    pool.insert(b, Weight::ONE).unwrap();
    fail_a.store(true, Ordering::SeqCst);
    let balance = Balance::new(pool.clone());
    let mut failures = 0;
    for _ in 0..40 {
        if balance.clone().oneshot(0).await.is_err() {
            failures += 1;
        }
    }
    assert_eq!(failures, 5, "ejected after exactly the threshold");
    let stats = pool.stats();
    assert!(!stats[0].eligible);
    assert_eq!(stats[0].failures, 5);
}

/// tower#856: after `Change::Remove`, no request reaches the removed endpoint.
#[tokio::test(start_paused = true)]
async fn discovery_remove_is_honoured_at_once() {
    let (tx, rx) = mpsc::unbounded_channel::<Result<Change<&'static str, Named>, Infallible>>();
    for n in ["a", "b", "c"] {
        tx.send(Ok(Change::Insert(n, named(n).0.service().clone())))
            .unwrap();
    }
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let mut balance = Balance::from_discover(RoundRobin::new(), Box::pin(stream));
    std::future::poll_fn(|cx| balance.poll_ready(cx))
        .await
        .unwrap();
    assert_eq!(balance.pool().stats().len(), 3);
    tx.send(Ok(Change::Remove("b"))).unwrap();
    for _ in 0..30 {
        std::future::poll_fn(|cx| balance.poll_ready(cx))
            .await
            .unwrap();
        assert_ne!(balance.call(0).await.unwrap(), "b");
    }
    // Re-inserting under an existing key replaces the endpoint.
    tx.send(Ok(Change::Insert("a", named("a").0.service().clone())))
        .unwrap();
    std::future::poll_fn(|cx| balance.poll_ready(cx))
        .await
        .unwrap();
    assert_eq!(balance.pool().stats().len(), 2);
}

/// A service that is not ready until `open` is set, then answers "late".
#[derive(Clone)]
struct Gate {
    open: Arc<AtomicBool>,
    waker: Arc<parking_lot::Mutex<Option<std::task::Waker>>>,
}

impl Service<u64> for Gate {
    type Response = &'static str;
    type Error = Infallible;
    type Future = std::future::Ready<Result<&'static str, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.open.load(Ordering::SeqCst) {
            Poll::Ready(Ok(()))
        } else {
            *self.waker.lock() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn call(&mut self, _: u64) -> Self::Future {
        std::future::ready(Ok("late"))
    }
}

/// tower#824: an endpoint that was not ready is driven again when it becomes ready,
/// without any new request arriving.
#[tokio::test(start_paused = true)]
async fn a_not_ready_backend_completes_without_new_requests() {
    let gate = Gate {
        open: Arc::new(AtomicBool::new(false)),
        waker: Default::default(),
    };
    let pool = Pool::new(RoundRobin::new());
    pool.insert(BackendService::new("gate", gate.clone()), Weight::ONE)
        .unwrap();
    let call = tokio::spawn(Balance::new(pool.clone()).oneshot(0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!call.is_finished());
    assert_eq!(
        pool.stats()[0].in_flight,
        1,
        "a request waiting for readiness is load"
    );
    gate.open.store(true, Ordering::SeqCst);
    if let Some(w) = gate.waker.lock().take() {
        w.wake();
    }
    assert_eq!(call.await.unwrap().unwrap(), "late");
    assert_eq!(pool.stats()[0].in_flight, 0);
}

/// Keys stick and spread: each of 64 keys is served by one backend every time, that
/// backend is the one the pool's Maglev table gives the key's hash (the service passes
/// the key through, unchanged), every backend serves some keys and none more than twice
/// its share. A balancer that ignored the key and pinned every request to one backend
/// would pass the first check only.
#[tokio::test(start_paused = true)]
async fn affinity_keys_stick_with_a_hashing_picker() {
    const KEYS: u64 = 64;
    let names = ["a", "b", "c", "d"];
    let (pool, _) = pool_of(Maglev::new(), &names);
    let hash = |req: &u64| tower_lb::affinity::hash_key(&(req % KEYS).to_be_bytes());
    let balance = BalanceLayer::new(pool.clone())
        .affinity(KeyFn::new(move |req: &u64| Some(hash(req))))
        .build(tower_lb::balance::PerBackend);
    let mut seen = std::collections::HashMap::new();
    for req in 0..4 * KEYS {
        let name = balance.clone().oneshot(req).await.unwrap();
        let first = *seen.entry(req % KEYS).or_insert(name);
        assert_eq!(first, name, "key {} moved", req % KEYS);
    }
    let mut keys_per_backend = std::collections::HashMap::new();
    for (&key, &name) in &seen {
        let ctx = tower_lb::PickContext::new().with_hash(hash(&key));
        assert_eq!(*pool.pick(&ctx).unwrap().addr().key(), name, "key {key}");
        *keys_per_backend.entry(name).or_insert(0u64) += 1;
    }
    for name in names {
        let keys = keys_per_backend.get(name).copied().unwrap_or(0);
        assert!(
            (1..=2 * KEYS / 4).contains(&keys),
            "{name} holds {keys} of {KEYS} keys: {keys_per_backend:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        rng_seed: proptest::test_runner::RngSeed::Fixed(5),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    })]

    /// Futures dropped at random points release their in-flight counts and units.
    #[test]
    fn dropped_futures_release_everything(
        plan in prop::collection::vec((0u64..3, any::<bool>(), 0u8..3), 1..40),
        limit in prop::option::of(1usize..4),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let (pool, _) = pool_of(PowerOfTwoChoices::with_seed(9), &["a", "b", "c"]);
            let mut layer = BalanceLayer::new(pool.clone()).on_overload(OnOverload::Shed);
            if let Some(l) = limit {
                layer = layer.max_in_flight(l);
            }
            let balance = layer.build(tower_lb::balance::PerBackend);
            let mut live = Vec::new();
            for (delay, keep, polls) in plan {
                let mut f = Box::pin(balance.clone().oneshot(delay * 10));
                let mut done = false;
                for _ in 0..polls {
                    if (&mut f).now_or_never().is_some() {
                        done = true;
                        break;
                    }
                }
                if keep && !done { live.push(f) }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(live);
            prop_assert!(pool.stats().iter().all(|s| s.in_flight == 0), "{:?}", in_flight(&pool));
            prop_assert_eq!(balance.committed().unwrap_or(0), 0);
            Ok(())
        })?;
    }
}

#[test]
fn counts_requests_through_clones_on_threads() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (pool, _) = pool_of(PowerOfTwoChoices::new(), &["a", "b", "c"]);
    let balance = Balance::new(pool.clone());
    let done = Arc::new(AtomicUsize::new(0));
    rt.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (b, done) = (balance.clone(), done.clone());
                tokio::spawn(async move {
                    for _ in 0..250 {
                        b.clone().oneshot(0).await.unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert_eq!(done.load(Ordering::Relaxed), 2000);
    let stats = pool.stats();
    assert_eq!(stats.iter().map(|s| s.successes).sum::<u64>(), 2000);
    assert!(stats.iter().all(|s| s.in_flight == 0));
}
