//! Forged and garbled cookies (property test), DNS discovery, body tracking.

use super::*;

type LocalService = tower::util::BoxCloneSyncService<Request<()>, Response<String>, BoxError>;
type LocalPool = Pool<tower_lb::balance::BackendService<String, LocalService>, RoundRobin>;

/// In-process HTTP backends (no sockets), for the cookie property test.
fn local_pool(n: usize) -> LocalPool {
    let pool = Pool::new(RoundRobin::new());
    for i in 0..n {
        let name = format!("backend-{i}");
        let answer = name.clone();
        let svc =
            tower::util::BoxCloneSyncService::new(tower::service_fn(move |_req: Request<()>| {
                let answer = answer.clone();
                async move { Ok::<_, BoxError>(Response::new(answer)) }
            }));
        pool.insert(
            tower_lb::balance::BackendService::new(name, svc),
            Weight::ONE,
        )
        .unwrap();
    }
    pool
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        rng_seed: proptest::test_runner::RngSeed::Fixed(11),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    })]

    /// Arbitrary Cookie headers: never a panic, never an error, never a backend outside
    /// the eligible set; a valid cookie for an ineligible backend is not honoured.
    #[test]
    fn cookie_codec_survives_arbitrary_bytes(
        headers in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..4),
        valid_for in prop::option::of(0usize..4),
        drained in prop::option::of(0usize..4),
        prefix in "[a-z=; ]{0,8}",
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let pool = local_pool(4);
            let ids: Vec<_> = pool.stats().iter().map(|s| s.id).collect();
            if let Some(d) = drained {
                pool.drain(ids[d]).unwrap();
            }
            let cookie = StickyCookie::new("lb", SECRET).unwrap();
            let lb = Sticky::new(Balance::new(pool.clone()), cookie.clone());
            let mut req = Request::get("/");
            for h in &headers {
                if let Ok(v) = http::HeaderValue::from_bytes(&[prefix.as_bytes(), h].concat()) {
                    req = req.header(COOKIE, v);
                }
            }
            if let Some(v) = valid_for {
                req = req.header(COOKIE, format!("lb={}", cookie.value_for(&format!("backend-{v}"))));
            }
            let resp = lb.oneshot(req.body(()).unwrap()).await.expect("never an error");
            let served = resp.body().clone();
            let drained_name = drained.map(|d| format!("backend-{d}"));
            prop_assert!(Some(&served) != drained_name.as_ref(), "served by the drained backend");
            if let Some(v) = valid_for {
                let honoured = headers.is_empty() && Some(v) != drained;
                if honoured {
                    prop_assert_eq!(served, format!("backend-{v}"));
                    prop_assert!(resp.headers().get(SET_COOKIE).is_none());
                }
            }
            Ok(())
        })?;
    }
}

/// A host name resolved through the system resolver becomes the backend set.
#[tokio::test]
async fn dns_discovery_follows_the_resolver() {
    let server = TestServer::start("a").await;
    let pool: Pool<HttpTarget, _> = Pool::new(RoundRobin::new());
    let mut lb = balance(&pool);
    let dns = tower_lb::balance::DnsDiscover::new("localhost", server.addr.port())
        .interval(Duration::from_millis(50));
    lb.discover(dns, |addr, _| (HttpTarget::http(*addr), Weight::ONE));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let want = HttpTarget::http(server.addr);
    while !pool.stats().iter().any(|s| s.addr == want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "localhost never resolved"
        );
        std::future::poll_fn(|cx| tower::Service::<Request<Empty<Bytes>>>::poll_ready(&mut lb, cx))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The resolution is stable: polling again changes nothing.
    let before = pool.stats().len();
    tokio::time::sleep(Duration::from_millis(120)).await;
    std::future::poll_fn(|cx| tower::Service::<Request<Empty<Bytes>>>::poll_ready(&mut lb, cx))
        .await
        .unwrap();
    assert_eq!(pool.stats().len(), before);
}

/// Streaming responses are load: with `track_body`, a request stays in flight until its
/// body ends (or is dropped), not only until the headers arrive.
#[tokio::test]
async fn track_body_holds_in_flight_until_the_body_ends() {
    use http_body_util::channel::{Channel, Sender};
    use std::sync::Mutex;

    type Slot = std::sync::Arc<Mutex<Option<Sender<Bytes, BoxError>>>>;
    let slot: Slot = Default::default();
    let make = {
        let slot = slot.clone();
        move |_req: Request<()>| {
            let slot = slot.clone();
            async move {
                let (tx, body) = Channel::<Bytes, BoxError>::new(4);
                *slot.lock().unwrap() = Some(tx);
                Ok::<_, BoxError>(Response::new(body))
            }
        }
    };
    let pool = Pool::new(RoundRobin::new());
    pool.insert(
        tower_lb::balance::BackendService::new("stream", tower::service_fn(make)),
        Weight::ONE,
    )
    .unwrap();
    let in_flight = |pool: &Pool<_, RoundRobin>| pool.stats()[0].in_flight;
    let lb = Balance::new(pool.clone()).track_body();

    // Read to the end: in flight until the last frame, then one success.
    let resp = lb.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(
        in_flight(&pool),
        1,
        "headers arrived, the body has not ended"
    );
    let mut tx = slot.lock().unwrap().take().unwrap();
    let reader =
        tokio::spawn(async move { resp.into_body().collect().await.map(|b| b.to_bytes()) });
    tx.send_data(Bytes::from_static(b"chunk")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(in_flight(&pool), 1, "mid-stream");
    drop(tx);
    assert_eq!(reader.await.unwrap().unwrap(), Bytes::from_static(b"chunk"));
    assert_eq!((in_flight(&pool), pool.stats()[0].successes), (0, 1));

    // Dropped mid-stream by its reader: released, recorded with the response's own
    // outcome (a success: the reader's choice is not the backend's failure).
    let resp = lb.clone().oneshot(Request::new(())).await.unwrap();
    assert!(resp.body().is_tracked());
    drop(resp);
    assert_eq!(in_flight(&pool), 0);
    assert_eq!(
        (pool.stats()[0].successes, pool.stats()[0].failures),
        (2, 0)
    );
}
