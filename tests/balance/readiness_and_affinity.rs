//! A backend that is not ready, affinity keys with a hashing picker, and counts through
//! clones on threads.

use super::*;

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
