//! Every backend down: the typed error at the first poll, nothing spins, service resumes.

use super::*;

// ---------------------------------------------------------------------------------------
// All backends down
// ---------------------------------------------------------------------------------------

/// One request through `svc` with every backend down: ready at the first poll, and the
/// typed error at the first poll of the response future.
fn fails_at_once<S>(svc: &mut S) -> PickError
where
    S: Service<Get, Error = BoxError>,
{
    std::future::poll_fn(|cx| svc.poll_ready(cx))
        .now_or_never()
        .expect("ready at once, never Pending")
        .expect("readiness is not an error");
    match svc.call(get(&[])).now_or_never() {
        Some(Err(e)) => *e
            .downcast_ref::<PickError>()
            .unwrap_or_else(|| panic!("not a PickError: {e}")),
        Some(Ok(_)) => panic!("a response with every backend down"),
        None => panic!("the response future was Pending with every backend down"),
    }
}

/// Every backend down: each request fails at once with the typed error — ready and
/// failed at the first poll, with and without a concurrency limit that waits — while
/// nothing spins: paced clients sleep 2 ms between rounds, and the runtime running
/// everything (servers, probes, balancer, clients) goes idle — parks its one thread —
/// at least once per round. A task that kept waking itself (a retry loop, a readiness
/// that never settles) would keep it from parking. Counted in parks, not CPU time over
/// wall time, so a loaded machine changes nothing. Then the backends return and service
/// resumes.
#[tokio::test]
async fn all_backends_down_fails_at_once_without_spinning_then_resumes() {
    const ROUNDS: u64 = 300;
    let mut servers = servers(&["a", "b", "c"]).await;
    let pool = Pool::builder(RoundRobin::new())
        .panic_threshold(PanicThreshold::new(50).unwrap().mode(PanicMode::FailClosed))
        .build()
        .unwrap();
    add(&pool, &servers);
    let probes = pool
        .spawn_health_probes(
            tcp_probe(),
            ProbeConfig::new()
                .interval(Duration::from_millis(50))
                .jitter(Duration::from_millis(5))
                .timeout(Duration::from_millis(200))
                .rise(2)
                .fall(2)
                .seed(5),
        )
        .unwrap();
    let mut plain = balance(&pool);
    let mut limited = BalanceLayer::new(pool.clone())
        .classify(HttpStatus::new())
        .max_in_flight(4)
        .on_overload(OnOverload::Wait)
        .build(OneClient(client()));
    let warm = |lb: &Lb<RoundRobin>| {
        let lb = lb.clone();
        async move {
            for _ in 0..30 {
                let resp =
                    tokio::time::timeout(Duration::from_secs(5), lb.clone().oneshot(get(&[])))
                        .await
                        .expect("no hang")
                        .expect("a response");
                assert_eq!(resp.status(), 200);
            }
        }
    };
    warm(&plain).await;
    warm(&limited).await;

    for s in &mut servers {
        s.stop().await;
    }
    let stopped = Instant::now();
    assert!(
        wait_until(PROBE_WAIT, Duration::from_millis(5), || {
            pool.stats().iter().all(|s| !s.health.is_healthy())
        })
        .await,
        "the probes never marked them all down"
    );
    let marked_down = stopped.elapsed();

    let want = PickError::PanicThreshold {
        healthy: 0,
        total: 3,
    };
    // This test's runtime has one thread, worker 0.
    let metrics = tokio::runtime::Handle::current().metrics();
    let parks_before = metrics.worker_park_count(0);
    let mut failed = 0u64;
    let mut slowest = Duration::ZERO;
    let wall = Instant::now();
    for _ in 0..ROUNDS {
        for lb in [&mut plain, &mut limited] {
            let one = Instant::now();
            assert_eq!(fails_at_once(lb), want);
            slowest = slowest.max(one.elapsed());
            failed += 1;
        }
        // Paced clients: the runtime should go idle but for them and the probes.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let parks = metrics.worker_park_count(0) - parks_before;
    let wall = wall.elapsed();
    assert_eq!(
        limited.committed(),
        Some(0),
        "a failed request holds no capacity"
    );
    assert!(
        parks >= ROUNDS,
        "the runtime parked {parks} times in {ROUNDS} paced rounds: something spins with every backend down"
    );

    for s in &mut servers {
        s.restart().await;
    }
    let restarted = Instant::now();
    assert!(
        wait_until(PROBE_WAIT, Duration::from_millis(5), || {
            pool.stats().iter().all(|s| s.eligible)
        })
        .await,
        "the probes never brought them back"
    );
    let resumed = restarted.elapsed();
    warm(&plain).await;
    warm(&limited).await;
    probes.abort();
    println!(
        "all backends down: marked down {:.0} ms after the stop; {failed} requests failed with \
         `{want}` at the first poll (slowest {:.0} µs); the runtime parked {parks} times in \
         {ROUNDS} paced rounds ({:.0} ms); all back {:.0} ms after the restart, 60 requests served",
        marked_down.as_secs_f64() * 1e3,
        slowest.as_secs_f64() * 1e6,
        wall.as_secs_f64() * 1e3,
        resumed.as_secs_f64() * 1e3,
    );
}
