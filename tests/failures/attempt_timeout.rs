//! The per-attempt time-out.

use super::*;

/// `BalanceLayer::timeout`: an attempt on a hung backend fails with `TimedOut` naming
/// the backend and at least the time-out as elapsed, and counts as that backend's
/// failure.
#[tokio::test(start_paused = true)]
async fn the_attempt_timeout_names_the_backend_and_counts_as_a_failure() {
    let pool = Pool::new(RoundRobin::new());
    let hung = Arc::new(AtomicBool::new(true));
    let id = pool
        .insert(
            backend(0, LATENCY, Breaks::Hanging, hung.clone()),
            Weight::ONE,
        )
        .unwrap();
    let lb = BalanceLayer::new(pool.clone())
        .timeout(Duration::from_millis(250))
        .build(PerBackend);
    let started = Instant::now();
    let err = lb.clone().oneshot(1).await.unwrap_err();
    let timed_out = err.downcast_ref::<TimedOut>().expect("a TimedOut");
    assert_eq!(timed_out.backend, id);
    assert_eq!(timed_out.timeout, Duration::from_millis(250));
    assert!(
        timed_out.elapsed >= Duration::from_millis(250),
        "{timed_out:?}"
    );
    assert_eq!(Instant::now() - started, Duration::from_millis(250));
    let stats = &pool.stats()[0];
    assert_eq!((stats.failures, stats.in_flight), (1, 0), "{stats:?}");
    assert!(err.to_string().contains("backend#0"), "{err}");

    // An answer within the time-out is a success.
    hung.store(false, Ordering::SeqCst);
    assert_eq!(lb.clone().oneshot(2).await.unwrap(), 0);
    assert_eq!(pool.stats()[0].successes, 1);
}

/// The inner service's error names the backend it came from.
#[tokio::test(start_paused = true)]
async fn an_inner_error_names_its_backend() {
    let pool = Pool::new(RoundRobin::new());
    let id = pool
        .insert(
            backend(
                0,
                LATENCY,
                Breaks::Refusing,
                Arc::new(AtomicBool::new(true)),
            ),
            Weight::ONE,
        )
        .unwrap();
    let err = Balance::new(pool).oneshot(1).await.unwrap_err();
    let failed = err.downcast_ref::<BackendError>().expect("a BackendError");
    assert_eq!(failed.backend, id);
    let io = failed
        .downcast_ref::<std::io::Error>()
        .expect("the io error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    let found = tower_lb::balance::find_error::<std::io::Error>(&err).unwrap();
    assert_eq!(found.kind(), std::io::ErrorKind::ConnectionRefused);
}
