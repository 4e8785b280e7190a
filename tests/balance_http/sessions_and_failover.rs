//! Sticky cookies, fail-over when a server dies, recovery through probes, shedding and
//! waiting at the limit.

use super::*;

#[tokio::test]
async fn sticky_cookie_keeps_a_client_on_one_backend() {
    let servers = servers(&["a", "b", "c"]).await;
    let pool = Pool::new(RoundRobin::new());
    add(&pool, &servers, &[1, 1, 1]);
    let cookie = StickyCookie::new("lb", SECRET).unwrap();
    let lb = Sticky::new(balance(&pool), cookie.clone());

    let first = lb.clone().oneshot(get(None)).await.unwrap();
    let home = backend_of(&first);
    let set = first.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        set.starts_with("lb=") && set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    let jar = set.split(';').next().unwrap().to_owned();
    for _ in 0..999 {
        let resp = lb.clone().oneshot(get(Some(&jar))).await.unwrap();
        assert_eq!(backend_of(&resp), home);
        assert!(
            resp.headers().get(SET_COOKIE).is_none(),
            "no new cookie while it holds"
        );
    }
    // Round robin alone would have spread these: the cookie pinned all 1 000.
    let home_hits = servers.iter().find(|s| s.name == home).unwrap().hits();
    assert_eq!(home_hits, 1000);

    // Drain the home backend: the session moves and a new cookie is issued.
    let home_index = servers.iter().position(|s| s.name == home).unwrap();
    pool.drain(pool.stats()[home_index].id).unwrap();
    let moved = lb.clone().oneshot(get(Some(&jar))).await.unwrap();
    assert_ne!(backend_of(&moved), home);
    assert!(moved.headers().get(SET_COOKIE).is_some());

    // A cookie made with another secret is not honoured: balanced normally, re-issued.
    let other = StickyCookie::new("lb", b"another secret of enough length").unwrap();
    let forged = format!("lb={}", other.value_for(&HttpTarget::http(servers[0].addr)));
    let resp = lb.clone().oneshot(get(Some(&forged))).await.unwrap();
    assert!(resp.headers().get(SET_COOKIE).is_some());
}

#[tokio::test]
async fn fails_over_when_a_server_dies_mid_run() {
    let mut servers = servers(&["a", "b", "c"]).await;
    let pool = Pool::builder(PowerOfTwoChoices::with_seed(2))
        .outlier_detection(OutlierDetection::new().consecutive_failures(5))
        .build()
        .unwrap();
    add(&pool, &servers, &[1, 1, 1]);
    let lb = balance(&pool);
    let mut failures = 0;
    for i in 0..300 {
        if i == 100 {
            servers[1].stop().await;
        }
        match lb.clone().oneshot(get(None)).await {
            Ok(resp) if resp.status() == 200 => {}
            _ => failures += 1,
        }
    }
    // Failures: at most the consecutive-failure threshold (requests are sequential).
    assert!((1..=5).contains(&failures), "{failures} failures");
    let dead = &pool.stats()[1];
    // Out of rotation: ejected, or — P2C charging its failures as load — never picked
    // again after them (every pick of the dead server is a failure).
    assert!(
        !dead.eligible || dead.picks == dead.successes + failures as u64,
        "the dead server is out of rotation: {dead:?}"
    );
    assert_eq!(dead.failures, failures as u64);
    assert_eq!(
        servers[0].hits() + servers[2].hits() + servers[1].hits(),
        300 - failures
    );
}

#[tokio::test]
async fn recovers_through_active_probes() {
    let mut servers = servers(&["a", "b"]).await;
    let pool: Pool<HttpTarget, _> = Pool::new(RoundRobin::new());
    add(&pool, &servers, &[1, 1]);
    // HTTP probes straight at the pool's `HttpTarget`s: GET /health, 2xx is up.
    let probe = tower_lb::health::HttpProbe::new("/health").unwrap();
    let config = ProbeConfig::new()
        .interval(Duration::from_millis(40))
        .jitter(Duration::from_millis(5))
        .timeout(Duration::from_millis(200))
        .rise(2)
        .fall(2)
        .seed(1);
    let task = pool.spawn_health_probes(probe, config).unwrap();
    let lb = balance(&pool);
    servers[1].stop().await;
    let eligible = |pool: &Pool<HttpTarget, RoundRobin>| pool.stats()[1].eligible;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while eligible(&pool) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "probes never marked it down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..10 {
        assert_eq!(
            backend_of(&lb.clone().oneshot(get(None)).await.unwrap()),
            "a"
        );
    }
    servers[1].restart().await;
    while !eligible(&pool) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "probes never brought it back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut seen = HashMap::new();
    for _ in 0..10 {
        *seen
            .entry(backend_of(&lb.clone().oneshot(get(None)).await.unwrap()))
            .or_insert(0) += 1;
    }
    assert_eq!(seen.get("b"), Some(&5), "{seen:?}");
    task.abort();
}

/// Both servers hold a request at their limit of one: a third request is shed at its
/// first poll with the numbers, or waits — and cannot finish while both are held,
/// however long it is given — and is served once they are released. No wall-clock
/// bound: the servers hold their requests until the test releases them.
#[tokio::test]
async fn sheds_or_waits_when_every_server_is_at_its_limit() {
    use futures::FutureExt;
    for mode in [OnOverload::Shed, OnOverload::Wait] {
        let servers = servers(&["a", "b"]).await;
        let pool = Pool::new(RoundRobin::new());
        add(&pool, &servers, &[1, 1]);
        let lb = BalanceLayer::new(pool.clone())
            .classify(HttpStatus::new())
            .max_in_flight(1)
            .on_overload(mode)
            .build(OneClient(client()));
        let slow: Vec<_> = (0..2)
            .map(|_| tokio::spawn(lb.clone().oneshot(held())))
            .collect();
        until(|| lb.committed() == Some(2)).await;
        match mode {
            OnOverload::Shed => {
                let third = lb
                    .clone()
                    .oneshot(get(None))
                    .now_or_never()
                    .expect("shed at the first poll, not queued");
                let err: BoxError = third.unwrap_err();
                let o = err.downcast_ref::<Overloaded>().expect("Overloaded");
                assert_eq!((o.in_flight, o.max_in_flight, o.backends), (2, 1, 2));
            }
            OnOverload::Wait => {
                let third = tokio::spawn(lb.clone().oneshot(get(None)));
                for _ in 0..1_000 {
                    tokio::task::yield_now().await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                assert!(!third.is_finished(), "served while both servers were full");
                assert_eq!(lb.committed(), Some(2));
                servers.iter().for_each(TestServer::release);
                assert_eq!(third.await.unwrap().unwrap().status(), 200);
            }
        }
        servers.iter().for_each(TestServer::release);
        for s in slow {
            assert_eq!(s.await.unwrap().unwrap().status(), 200);
        }
        assert_eq!(lb.committed(), Some(0));
    }
}
