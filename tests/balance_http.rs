//! `Balance` in front of real hyper HTTP/1.1 servers on loopback: distribution per
//! strategy, sticky cookies, failover, recovery through probes, shedding and waiting.
#![cfg(all(feature = "tower", feature = "http", feature = "tokio"))]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::header::{COOKIE, SET_COOKIE};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use proptest::prelude::*;
use support::servers::{HOLD, TestServer};
use tower::ServiceExt;
use tower_lb::balance::{
    Balance, BalanceLayer, BoxError, Client as OneClient, HttpStatus, HttpTarget, OnOverload,
    Sticky, StickyCookie,
};
use tower_lb::health::{OutlierDetection, ProbeConfig};
use tower_lb::{
    LeastLoaded, Overloaded, PeakEwma, Picker, Pool, PowerOfTwoChoices, Random, RoundRobin, Weight,
    WeightedRandom, WeightedRoundRobin,
};

type HttpClient = Client<HttpConnector, Empty<Bytes>>;
type Lb<P> =
    Balance<HttpTarget, P, OneClient<HttpClient>, tower_lb::balance::NoAffinity, HttpStatus>;

const SECRET: &[u8] = b"test secret, 32 bytes long......";

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn servers(names: &[&'static str]) -> Vec<TestServer> {
    let mut out = Vec::new();
    for &n in names {
        out.push(TestServer::start(n).await);
    }
    out
}

fn balance<P: Picker<HttpTarget>>(pool: &Pool<HttpTarget, P>) -> Lb<P> {
    BalanceLayer::new(pool.clone())
        .classify(HttpStatus::new())
        .build(OneClient(client()))
}

fn add<P: Picker<HttpTarget>>(pool: &Pool<HttpTarget, P>, servers: &[TestServer], weights: &[u32]) {
    for (s, &w) in servers.iter().zip(weights) {
        pool.insert(HttpTarget::http(s.addr), Weight::new(u64::from(w)).unwrap())
            .unwrap();
    }
}

fn get(cookie: Option<&str>) -> Request<Empty<Bytes>> {
    let mut req = Request::get("/hello");
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    req.body(Empty::new()).unwrap()
}

/// The backend that answered, from its `x-backend` header.
fn backend_of<B>(resp: &Response<B>) -> String {
    resp.headers()["x-backend"].to_str().unwrap().to_owned()
}

async fn run<P: Picker<HttpTarget>>(picker: P, weights: &[u32], requests: usize) -> Vec<usize> {
    let servers = servers(&["a", "b", "c"]).await;
    let pool = Pool::new(picker);
    add(&pool, &servers, weights);
    let lb = balance(&pool);
    for _ in 0..requests {
        let resp = lb.clone().oneshot(get(None)).await.expect("a response");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 1);
    }
    assert!(pool.stats().iter().all(|s| s.in_flight == 0));
    servers.iter().map(TestServer::hits).collect()
}

#[tokio::test]
async fn every_strategy_distributes_over_real_servers() {
    assert_eq!(
        run(RoundRobin::new(), &[1, 1, 1], 300).await,
        [100, 100, 100]
    );
    assert_eq!(
        run(WeightedRoundRobin::new(), &[1, 2, 3], 300).await,
        [50, 100, 150]
    );
    // Seeded random families: shares within a generous band of the expected ones (their
    // distributions are checked by chi-square in tests/pickers.rs and tests/proptests.rs).
    let hits = run(Random::with_seed(4), &[1, 1, 1], 300).await;
    assert!(hits.iter().all(|&h| (70..=130).contains(&h)), "{hits:?}");
    let hits = run(WeightedRandom::with_seed(4), &[1, 2, 3], 300).await;
    for (h, want) in hits.iter().zip([50, 100, 150]) {
        assert!(h.abs_diff(want) <= 35, "{hits:?}");
    }
    // Load-aware ones: one request held in flight on a server, then sequential requests.
    // Each load-aware strategy sends none of them to the busy server (it loses every
    // comparison: 1 in flight against 0; for Peak EWMA, unmeasured with one in flight).
    // For least loaded and P2C, each idle server gets at least the picks where it is
    // compared with the busy one (a third, less 5σ); Peak EWMA instead keeps the cheaper
    // idle server as its leader (see `pick::peak_ewma`), so only the busy server's zero
    // is claimed for it. Round robin, the control, sends the busy server its third.
    const SEQUENTIAL: usize = 150;
    let (busy, hits) = run_beside_a_held_request(RoundRobin::new(), SEQUENTIAL).await;
    assert_eq!(
        hits[busy],
        SEQUENTIAL / 3,
        "round robin ignores load: {hits:?}"
    );
    for (name, (busy, hits)) in [
        (
            "LeastLoaded",
            run_beside_a_held_request(LeastLoaded::with_seed(4), SEQUENTIAL).await,
        ),
        (
            "PowerOfTwoChoices",
            run_beside_a_held_request(PowerOfTwoChoices::with_seed(4), SEQUENTIAL).await,
        ),
        (
            "PeakEwma",
            run_beside_a_held_request(PeakEwma::with_seed(4), SEQUENTIAL).await,
        ),
    ] {
        assert_eq!(
            hits[busy], 0,
            "{name} sent requests to the busy server: {hits:?}"
        );
        assert_eq!(hits.iter().sum::<usize>(), SEQUENTIAL, "{name}: {hits:?}");
        if name != "PeakEwma" {
            for (i, &h) in hits.iter().enumerate() {
                assert!(i == busy || h >= 20, "{name}: {hits:?}");
            }
        }
    }
}

/// A `GET` that its server holds in flight until released.
fn held() -> Request<Empty<Bytes>> {
    Request::get("/hello")
        .header(HOLD, "1")
        .body(Empty::new())
        .unwrap()
}

/// Waits until `cond` holds, yielding to the runtime in between: a wait measured in
/// turns, not in time; only a hang fails it.
async fn until(mut cond: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the condition never held");
}

/// One request held in flight on whichever server `picker` chooses, then `requests`
/// sequential ones; returns the busy server's index and every server's hits from the
/// sequential requests (a held request counts as a hit only once released).
async fn run_beside_a_held_request<P: Picker<HttpTarget> + 'static>(
    picker: P,
    requests: usize,
) -> (usize, Vec<usize>) {
    let servers = servers(&["a", "b", "c"]).await;
    let pool = Pool::new(picker);
    add(&pool, &servers, &[1, 1, 1]);
    let lb = balance(&pool);
    let first = tokio::spawn(lb.clone().oneshot(held()));
    until(|| pool.stats().iter().any(|s| s.in_flight == 1)).await;
    let busy = pool.stats().iter().position(|s| s.in_flight == 1).unwrap();
    for _ in 0..requests {
        let resp = lb.clone().oneshot(get(None)).await.expect("a response");
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
    }
    let hits = servers.iter().map(TestServer::hits).collect();
    assert_eq!(pool.stats()[busy].in_flight, 1, "still held");
    servers.iter().for_each(TestServer::release);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    (busy, hits)
}

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

// ---------------------------------------------------------------------------------------
// Regressions: trailers end a tracked body; a sticky session survives a momentary overload
// ---------------------------------------------------------------------------------------

/// A trailers frame ends a tracked body: its outcome is recorded when the trailers are
/// read, as tonic reads a gRPC response (the trailers, then it drops the body without
/// polling for the end). Before the fix the request stayed in flight with no outcome
/// until the body was dropped, and then recorded nothing.
#[tokio::test]
async fn a_trailers_frame_ends_a_tracked_body_with_its_outcome() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let make = |_req: Request<()>| async {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"message"))),
            Ok(Frame::trailers(trailers)),
        ];
        Ok::<_, BoxError>(Response::new(StreamBody::new(futures::stream::iter(
            frames,
        ))))
    };
    let pool = Pool::new(RoundRobin::new());
    pool.insert(
        tower_lb::balance::BackendService::new("grpc", tower::service_fn(make)),
        Weight::ONE,
    )
    .unwrap();
    let lb = Balance::new(pool.clone()).track_body();
    let stats = |pool: &Pool<_, RoundRobin>| {
        let s = &pool.stats()[0];
        (s.in_flight, s.successes, s.failures)
    };
    let mut body = lb.oneshot(Request::new(())).await.unwrap().into_body();
    let data = body.frame().await.unwrap().unwrap();
    assert!(data.is_data());
    assert_eq!(stats(&pool), (1, 0, 0), "mid-body");
    let trailers = body.frame().await.unwrap().unwrap();
    assert!(trailers.is_trailers());
    // The body is still alive, never polled to its end: the exchange is over anyway.
    assert!(!body.is_tracked());
    assert_eq!(stats(&pool), (0, 1, 0), "ended by its trailers");
    drop(body);
    assert_eq!(stats(&pool), (0, 1, 0), "recorded once");
}

/// A sticky session stays pinned through a momentary overload: while its backend is at
/// `max_in_flight`, a request is served elsewhere and gets **no** new cookie; once the
/// backend has room again, the session is back on it. Before the fix the detour
/// re-issued the cookie and moved the session for good.
#[tokio::test]
async fn a_sticky_session_stays_pinned_through_a_momentary_overload() {
    use std::sync::Arc;
    use tokio::sync::Notify;
    let release = Arc::new(Notify::new());
    let named = |name: &'static str| {
        let release = release.clone();
        let svc = tower::service_fn(move |req: Request<()>| {
            let release = release.clone();
            async move {
                if req.headers().contains_key("x-hold") {
                    release.notified().await;
                }
                let mut resp = Response::new(String::new());
                resp.headers_mut()
                    .insert("x-backend", http::HeaderValue::from_static(name));
                Ok::<_, BoxError>(resp)
            }
        });
        tower_lb::balance::BackendService::new(name, svc)
    };
    let pool = Pool::new(RoundRobin::new());
    pool.insert(named("a"), Weight::ONE).unwrap();
    pool.insert(named("b"), Weight::ONE).unwrap();
    let lb = Sticky::new(
        BalanceLayer::new(pool.clone())
            .max_in_flight(1)
            .build(tower_lb::balance::PerBackend),
        StickyCookie::new("lb", SECRET).unwrap(),
    );
    let request = |cookie: Option<&str>, hold: bool| {
        let mut req = Request::new(());
        if let Some(cookie) = cookie {
            req.headers_mut()
                .insert(COOKIE, http::HeaderValue::from_str(cookie).unwrap());
        }
        if hold {
            req.headers_mut()
                .insert("x-hold", http::HeaderValue::from_static("1"));
        }
        req
    };
    let served = |resp: &Response<String>| resp.headers()["x-backend"].to_str().unwrap().to_owned();

    let first = lb.clone().oneshot(request(None, false)).await.unwrap();
    let home = served(&first);
    let cookie = first.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    // The home backend is busy with one request: at its limit.
    let held = tokio::spawn(lb.clone().oneshot(request(Some(&cookie), true)));
    while pool.stats().iter().map(|s| s.in_flight).sum::<usize>() == 0 {
        tokio::task::yield_now().await;
    }
    let detour = lb
        .clone()
        .oneshot(request(Some(&cookie), false))
        .await
        .unwrap();
    assert_ne!(served(&detour), home, "served elsewhere this once");
    assert!(
        detour.headers().get(SET_COOKIE).is_none(),
        "the session keeps its cookie: {:?}",
        detour.headers()
    );

    release.notify_one();
    let held = held.await.unwrap().unwrap();
    assert_eq!(served(&held), home);
    for _ in 0..5 {
        let back = lb
            .clone()
            .oneshot(request(Some(&cookie), false))
            .await
            .unwrap();
        assert_eq!(served(&back), home, "back home");
        assert!(back.headers().get(SET_COOKIE).is_none());
    }
}

// ---------------------------------------------------------------------------------------
// Middleware composes: sticky sessions, retries, body tracking and time-outs in any order
// ---------------------------------------------------------------------------------------

type Composing = tower_lb::balance::BackendService<
    &'static str,
    tower::util::BoxCloneSyncService<
        Request<String>,
        Response<http_body_util::Full<Bytes>>,
        BoxError,
    >,
>;

/// Three in-process HTTP backends; "c" fails every request.
fn composing_pool() -> Pool<Composing, RoundRobin> {
    let pool = Pool::new(RoundRobin::new());
    for name in ["a", "b", "c"] {
        let svc = tower::service_fn(move |_req: Request<String>| async move {
            if name == "c" {
                return Err::<_, BoxError>("c is broken".into());
            }
            let mut resp = Response::new(http_body_util::Full::new(Bytes::from(name)));
            resp.headers_mut()
                .insert("x-backend", http::HeaderValue::from_static(name));
            Ok(resp)
        });
        pool.insert(
            tower_lb::balance::BackendService::new(
                name,
                tower::util::BoxCloneSyncService::new(svc),
            ),
            Weight::ONE,
        )
        .unwrap();
    }
    pool
}

/// Drives a stacked client: a session gets a cookie for a working backend (its first
/// attempt may hit "c" and be retried elsewhere), stays there for 20 requests without a
/// new cookie, every request without a cookie succeeds (a retry never goes back to "c"),
/// and each request stays in flight until its body has been read.
async fn exercise<S, B>(svc: S, pool: &Pool<impl Clone + Send + Sync + 'static, RoundRobin>)
where
    S: tower::Service<Request<String>, Response = Response<B>, Error = BoxError> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let in_flight = || pool.stats().iter().map(|s| s.in_flight).sum::<usize>();
    let served = |resp: &Response<B>| resp.headers()["x-backend"].to_str().unwrap().to_owned();
    let request = |cookie: Option<&str>| {
        let mut req = Request::new(String::from("payload"));
        if let Some(cookie) = cookie {
            req.headers_mut()
                .insert(COOKIE, http::HeaderValue::from_str(cookie).unwrap());
        }
        req
    };
    for _ in 0..12 {
        let resp = svc.clone().oneshot(request(None)).await.unwrap();
        assert_ne!(served(&resp), "c");
        assert_eq!(in_flight(), 1, "held until the body is read");
        resp.into_body().collect().await.unwrap();
        assert_eq!(in_flight(), 0);
    }
    let first = svc.clone().oneshot(request(None)).await.unwrap();
    let home = served(&first);
    let cookie = first.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    drop(first);
    for _ in 0..20 {
        let resp = svc.clone().oneshot(request(Some(&cookie))).await.unwrap();
        assert_eq!(served(&resp), home, "the session stays home");
        assert!(resp.headers().get(SET_COOKIE).is_none());
        assert_eq!(
            resp.into_body().collect().await.unwrap().to_bytes(),
            Bytes::from(home.clone())
        );
    }
    assert_eq!(in_flight(), 0);
}

#[tokio::test]
async fn sticky_retry_body_tracking_and_timeouts_stack_in_any_order() {
    use tower::ServiceBuilder;
    use tower::timeout::TimeoutLayer;
    use tower_lb::balance::retry::Always;
    use tower_lb::balance::{PerBackend, RetryLayer, StickyLayer, TrackBodyLayer};
    let cookie = || StickyCookie::new("lb", SECRET).unwrap();

    // Sticky outermost, then retries, body tracking, a time-out, the balancer.
    let pool = composing_pool();
    let svc = ServiceBuilder::new()
        .layer(StickyLayer::new(cookie(), &pool))
        .layer(RetryLayer::new().policy(Always))
        .layer(TrackBodyLayer::new())
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .service(BalanceLayer::new(pool.clone()).build(PerBackend));
    exercise(svc, &pool).await;
    let c = &pool.stats()[2];
    assert!(c.failures > 0, "c was tried and failed: {c:?}");

    // The reverse: body tracking outermost, a time-out, retries, sticky next to the
    // balancer.
    let pool = composing_pool();
    let svc = ServiceBuilder::new()
        .layer(TrackBodyLayer::new())
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .layer(RetryLayer::new().policy(Always))
        .layer(StickyLayer::new(cookie(), &pool))
        .service(BalanceLayer::new(pool.clone()).build(PerBackend));
    exercise(svc, &pool).await;
    let c = &pool.stats()[2];
    assert!(c.failures > 0, "c was tried and failed: {c:?}");
}
