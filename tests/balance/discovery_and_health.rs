//! DNS discovery that keeps the last set, passive ejection through the service, discovery
//! removals.

use super::*;

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
