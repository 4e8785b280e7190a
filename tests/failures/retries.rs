//! Retries on another backend, within a budget.

use super::*;

/// Counts the calls each backend received.
/// A backend taking HTTP requests (which carry the retry's exclusions in their
/// extensions), counting the calls it receives.
type HttpEp = BackendService<usize, BoxCloneSyncService<http::Request<u64>, usize, BoxError>>;

fn counting(i: usize, fail: bool, calls: Arc<AtomicU64>) -> HttpEp {
    let svc = tower::service_fn(move |_req: http::Request<u64>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if fail {
                Err::<usize, BoxError>(format!("backend {i} fails").into())
            } else {
                Ok(i)
            }
        }
    });
    BackendService::new(i, BoxCloneSyncService::new(svc))
}

/// A round-robin pool (no ejection) of `n` backends, backend `i` made by
/// `make(i, its call counter)`; the pool and the counters.
fn counted(
    n: usize,
    make: impl Fn(usize, Arc<AtomicU64>) -> HttpEp,
) -> (Pool<HttpEp, RoundRobin>, Vec<Arc<AtomicU64>>) {
    let calls: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::default()).collect();
    let pool = Pool::new(RoundRobin::new());
    for (i, c) in calls.iter().enumerate() {
        pool.insert(make(i, c.clone()), Weight::ONE).unwrap();
    }
    (pool, calls)
}

/// The calls all backends received.
fn total(calls: &[Arc<AtomicU64>]) -> u64 {
    calls.iter().map(|c| c.load(Ordering::SeqCst)).sum()
}

/// One of 3 backends fails every request: with one retry, every request succeeds, and a
/// retry never goes back to the backend that failed it.
#[tokio::test(start_paused = true)]
async fn a_retry_goes_to_another_backend() {
    // Round robin without ejection: the failing backend keeps its turn, so only the
    // retry's exclusion keeps it from answering twice.
    let (pool, calls) = counted(3, |i, c| counting(i, i == 1, c));
    let svc = tower::ServiceBuilder::new()
        .layer(RetryLayer::new().policy(Always))
        .service(Balance::new(pool.clone()));
    for req in 0..300 {
        let answer = svc.clone().oneshot(http::Request::new(req)).await.unwrap();
        assert_ne!(answer, 1);
    }
    // Each request was answered once by 0 or 2; every call to backend 1 failed and was
    // retried once, elsewhere (a retry back to 1 would have failed the request).
    let failed = calls[1].load(Ordering::SeqCst);
    assert!((90..=300).contains(&failed), "{failed} calls to backend 1");
    assert_eq!(
        calls[0].load(Ordering::SeqCst) + calls[2].load(Ordering::SeqCst),
        300
    );
}

/// Every backend fails: retries stay within the budget (10% of requests here, no
/// floor), so an outage is not multiplied by retries; and a request is never sent twice
/// to one backend (3 attempts at most over 3 backends even with 5 retries allowed).
#[tokio::test(start_paused = true)]
async fn retries_stay_within_the_budget() {
    let (pool, calls) = counted(3, |i, c| counting(i, true, c));
    let svc = tower::ServiceBuilder::new()
        .layer(
            RetryLayer::new()
                .policy(Always)
                .max_retries(5)
                .budget(TpsBudget::new(Duration::from_secs(10), 0, 0.1)),
        )
        .service(Balance::new(pool.clone()));
    const REQUESTS: u64 = 1_000;
    for req in 0..REQUESTS {
        assert!(svc.clone().oneshot(http::Request::new(req)).await.is_err());
    }
    let attempts = total(&calls);
    let retries = attempts - REQUESTS;
    println!("all backends failing: {REQUESTS} requests, {retries} retries");
    assert!(retries > 0, "the budget allows some retries");
    // 10% of the requests, with TpsBudget's rounding slack.
    assert!(
        retries <= REQUESTS / 10 + 2,
        "{retries} retries for {REQUESTS} requests"
    );

    // With a generous budget: at most one attempt per backend.
    let generous = tower::ServiceBuilder::new()
        .layer(RetryLayer::new().policy(Always).max_retries(5))
        .service(Balance::new(pool.clone()));
    let before = total(&calls);
    assert!(
        generous
            .clone()
            .oneshot(http::Request::new(0))
            .await
            .is_err()
    );
    let after = total(&calls);
    assert_eq!(after - before, 3, "each backend once");
}

/// A backend failing every call with `error()`, counting the calls it receives.
fn failing_with(i: usize, error: fn() -> BoxError, calls: Arc<AtomicU64>) -> HttpEp {
    let svc = tower::service_fn(move |_req: http::Request<u64>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { Err::<usize, BoxError>(error()) }
    });
    BackendService::new(i, BoxCloneSyncService::new(svc))
}

/// The default policy (`RetryLayer::new()`: `Idempotent`, one retry, the default budget):
/// an idempotent method (RFC 9110 §9.2.2) is sent again after a failed attempt, any
/// other only after a refused connect (nothing was sent); at most one retry, two
/// backends in all; an answer is never sent again.
#[tokio::test(start_paused = true)]
async fn the_default_policy_retries_once_what_is_safe_to_send_again() {
    use http::Method;
    let reset: fn() -> BoxError = || "connection reset before the response".into();
    let refused: fn() -> BoxError =
        || std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
    let idempotent = [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ];
    for method in idempotent.iter().chain(&[Method::POST, Method::PATCH]) {
        for (error, connect) in [(reset, false), (refused, true)] {
            // Every backend fails, so the calls made count the attempts.
            let (pool, calls) = counted(3, |i, c| failing_with(i, error, c));
            let svc = tower::ServiceBuilder::new()
                .layer(RetryLayer::new())
                .service(Balance::new(pool));
            let request = http::Request::builder()
                .method(method.clone())
                .body(0)
                .unwrap();
            assert!(svc.oneshot(request).await.is_err());
            let attempts = total(&calls);
            let retried = connect || idempotent.contains(method);
            assert_eq!(
                attempts,
                if retried { 2 } else { 1 },
                "{method} after {}",
                if connect {
                    "a refused connect"
                } else {
                    "a reset"
                }
            );
        }
    }
    // An answer is final, for any method.
    let (pool, calls) = counted(2, |i, c| counting(i, false, c));
    let svc = tower::ServiceBuilder::new()
        .layer(RetryLayer::new())
        .service(Balance::new(pool));
    for request in 0..10 {
        svc.clone()
            .oneshot(http::Request::new(request))
            .await
            .unwrap();
    }
    assert_eq!(total(&calls), 10);
}

/// The balancer's own refusals — no eligible backend, or every backend at its limit —
/// are not failed attempts: no policy of the crate retries them.
#[tokio::test(start_paused = true)]
async fn the_balancers_own_refusals_are_never_retried() {
    use tower_lb::balance::retry::{Idempotent, RetryPolicy};
    let request = http::Request::new(0u64);
    // No backend at all.
    let empty: Pool<HttpEp, _> = Pool::new(RoundRobin::new());
    let no_backend = Balance::new(empty)
        .oneshot(http::Request::new(0))
        .await
        .unwrap_err();
    assert!(no_backend.is::<tower_lb::PickError>(), "{no_backend}");
    // Every backend at its limit, shedding.
    let calls = Arc::<AtomicU64>::default();
    let pool = Pool::new(RoundRobin::new());
    pool.insert(counting(0, false, calls.clone()), Weight::ONE)
        .unwrap();
    let mut holder = BalanceLayer::new(pool)
        .max_in_flight(1)
        .on_overload(tower_lb::balance::OnOverload::Shed)
        .build(PerBackend);
    std::future::poll_fn(|cx| tower::Service::poll_ready(&mut holder, cx))
        .await
        .unwrap();
    let overloaded = holder
        .clone()
        .oneshot(http::Request::new(0))
        .await
        .unwrap_err();
    assert!(overloaded.is::<tower_lb::Overloaded>(), "{overloaded}");
    for error in [&no_backend, &overloaded] {
        assert!(!Idempotent.may_retry(&request, error), "{error}");
        assert!(!Always.may_retry(&request, error), "{error}");
    }
    // A failed attempt, by contrast, is retried by both.
    let failing = Pool::new(RoundRobin::new());
    failing
        .insert(counting(0, true, Arc::default()), Weight::ONE)
        .unwrap();
    let attempt = Balance::new(failing)
        .oneshot(http::Request::new(0))
        .await
        .unwrap_err();
    assert!(attempt.is::<BackendError>(), "{attempt}");
    assert!(Idempotent.may_retry(&request, &attempt));
    assert!(Always.may_retry(&request, &attempt));
}
