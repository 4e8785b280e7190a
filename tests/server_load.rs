//! Server-reported load: the ORCA header parser (never panics, bad values ignored) and
//! `ServerLoad` (gRFC A58's weights, blackout, expiration, fallback), ending with three
//! real HTTP backends of capacities 100, 100 and 25 requests/s whose reports settle the
//! shares at 4/9, 4/9, 1/9. Time is a `ManualClock`; every random source is seeded.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, RngAlgorithm, RngSeed};
use tokio::net::TcpListener;
use tower_lb::clock::ManualClock;
use tower_lb::orca::{HEADER, LoadReport};
use tower_lb::{ConfigError, PickContext, Pool, ServerLoad, Weight};

/// The outcome: each share within this of its capacity share once weights settle.
const SHARE_TOLERANCE: f64 = 0.07;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(0x4f52_4341),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Any string at all: a report or `None`, never a panic; every value it holds is
    /// finite and not negative.
    #[test]
    fn the_parser_never_panics_and_keeps_only_valid_values(s in ".{0,200}") {
        for input in [s.clone(), format!("TEXT {s}"), format!("JSON {s}"), format!("{{{s}}}")] {
            if let Some(r) = LoadReport::parse(&input) {
                for v in [r.cpu_utilization, r.mem_utilization, r.application_utilization, r.rps_fractional, r.eps].into_iter().flatten() {
                    prop_assert!(v.is_finite() && v >= 0.0, "{input:?} gave {v}");
                }
            }
        }
    }

    /// Valid values written in either form read back exactly; invalid ones (negative,
    /// NaN, infinite, not a number) are dropped while the valid ones beside them stay.
    #[test]
    fn both_forms_read_back_and_bad_values_are_ignored(
        cpu in 0.0f64..4.0, rps in 0.0f64..1e6, eps in 0.0f64..1e3,
        bad in prop::sample::select(vec!["-1", "NaN", "inf", "-inf", "x", "", "1e999"]),
    ) {
        let text = format!("TEXT cpu_utilization={cpu}, rps_fractional={rps}, eps={eps}, mem_utilization={bad}");
        let r = LoadReport::parse(&text).unwrap();
        prop_assert_eq!((r.cpu_utilization, r.rps_fractional, r.eps), (Some(cpu), Some(rps), Some(eps)));
        prop_assert_eq!(r.mem_utilization, None);
        let json = format!(r#"JSON {{"cpu_utilization": {cpu}, "rps_fractional": {rps}, "eps": {eps}}}"#);
        let r = LoadReport::parse(&json).unwrap();
        prop_assert_eq!((r.cpu_utilization, r.rps_fractional, r.eps), (Some(cpu), Some(rps), Some(eps)));
    }
}

fn shares(pool: &Pool<&'static str, ServerLoad>, at: Instant, picks: usize) -> Vec<f64> {
    let ctx = PickContext::new().with_now(at);
    let snapshot = pool.snapshot();
    let mut counts = vec![0usize; snapshot.len()];
    for _ in 0..picks {
        counts[pool.pick(&ctx).unwrap().index()] += 1;
    }
    counts.iter().map(|&c| c as f64 / picks as f64).collect()
}

fn close(got: &[f64], want: &[f64], tol: f64) -> bool {
    got.iter().zip(want).all(|(g, w)| (g - w).abs() <= tol)
}

/// A58's rules, one at a time, on a manual clock: weight = qps ÷ (utilization + eps/qps ×
/// penalty); nothing counts during the blackout; fewer than two weighted backends fall
/// back to equal shares; the unweighted get the mean; a report past expiration counts no
/// more; the weights change only once per update period.
#[test]
fn a58_weights_blackout_fallback_expiration_and_update_period() {
    let clock = ManualClock::new();
    let t0 = clock.now();
    let load = ServerLoad::with_seed(3)
        .blackout_period(Duration::from_secs(2))
        .weight_expiration_period(Duration::from_secs(30))
        .weight_update_period(Duration::from_millis(500));
    let pool = Pool::new(load.clone());
    let ids = pool
        .extend([("a", Weight::ONE), ("b", Weight::ONE), ("c", Weight::ONE)])
        .unwrap();
    const PICKS: usize = 30_000;
    const TOL: f64 = 0.02;
    // a: 300 qps at 0.5 → 600; b: 100 qps at 0.25 with 50 eps → 100 / (0.25 + 0.5) = 133.3.
    load.record_at(ids[0], &LoadReport::new(0.5, 300.0, 0.0), t0);
    load.record_at(ids[1], &LoadReport::new(0.25, 100.0, 50.0), t0);
    assert_eq!(load.weight_at(ids[0], t0), None, "in blackout");
    assert!(
        close(&shares(&pool, t0, PICKS), &[1.0 / 3.0; 3], TOL),
        "blackout: equal shares"
    );
    let t1 = t0 + Duration::from_secs(2);
    assert_eq!(load.weight_at(ids[0], t1), Some(600.0));
    let b = load.weight_at(ids[1], t1).unwrap();
    assert!((b - 100.0 / 0.75).abs() < 1e-9, "error penalty: {b}");
    // c has no weight: it gets the mean of a's and b's.
    let mean = (600.0 + b) / 2.0;
    let total = 600.0 + b + mean;
    let want = [600.0 / total, b / total, mean / total];
    let got = shares(&pool, t1, PICKS);
    assert!(close(&got, &want, TOL), "{got:?} vs {want:?}");
    // a reports again with 3× less capacity; within the update period nothing changes.
    load.record_at(ids[0], &LoadReport::new(0.5, 100.0, 0.0), t1);
    let got = shares(&pool, t1 + Duration::from_millis(100), PICKS);
    assert!(close(&got, &want, TOL), "within the update period: {got:?}");
    let t2 = t1 + Duration::from_millis(600);
    let total = 200.0 + b + (200.0 + b) / 2.0;
    let want = [200.0 / total, b / total, (200.0 + b) / 2.0 / total];
    let got = shares(&pool, t2, PICKS);
    assert!(
        close(&got, &want, TOL),
        "after the update period: {got:?} vs {want:?}"
    );
    // Past expiration (30 s after each last report): no weights, equal shares; a fresh
    // report starts a new blackout.
    let t3 = t1 + Duration::from_secs(31);
    assert_eq!(load.weight_at(ids[0], t3), None);
    assert!(close(&shares(&pool, t3, PICKS), &[1.0 / 3.0; 3], TOL));
    load.record_at(ids[0], &LoadReport::new(0.5, 100.0, 0.0), t3);
    assert_eq!(
        load.weight_at(ids[0], t3 + Duration::from_secs(1)),
        None,
        "new blackout"
    );
    // Empty and invalid reports are ignored.
    load.record_at(ids[2], &LoadReport::new(0.0, 100.0, 0.0), t3);
    load.record_at(ids[2], &LoadReport::new(0.5, 0.0, 0.0), t3);
    assert_eq!(load.weight_at(ids[2], t3 + Duration::from_secs(10)), None);
    assert!(matches!(
        ServerLoad::new().error_utilization_penalty(-1.0),
        Err(ConfigError::ErrorUtilizationPenalty { .. })
    ));
}

/// One backend of capacity `capacity` requests/s: answers every request with its ORCA
/// report, utilisation = its requests over the last second (on `clock`) ÷ capacity.
async fn backend(capacity: f64, clock: ManualClock) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recent: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (recent, clock) = (Arc::clone(&recent), clock.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_: Request<hyper::body::Incoming>| {
                    let now = clock.now();
                    let rps = {
                        let mut r = recent.lock();
                        r.push_back(now);
                        while r
                            .front()
                            .is_some_and(|&t| t + Duration::from_secs(1) <= now)
                        {
                            r.pop_front();
                        }
                        r.len() as f64
                    };
                    let report = format!(
                        "TEXT cpu_utilization={}, rps_fractional={rps}",
                        rps / capacity
                    );
                    let resp = Response::builder()
                        .header(HEADER, report)
                        .body(Full::new(Bytes::from_static(b"ok")))
                        .unwrap();
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Three real HTTP backends with capacities 100, 100 and 25 requests/s, each reporting
/// utilisation = its recent requests/s ÷ capacity; one client sends 100 requests per
/// virtual second through a `ServerLoad` pool. Once weights settle (after the 1 s
/// blackout), the shares are within 0.07 of 4/9, 4/9 and 1/9.
#[tokio::test]
async fn shares_settle_at_the_backends_capacities() {
    const REQUESTS: usize = 2000;
    const SETTLED_AFTER: usize = 500;
    let clock = ManualClock::new();
    let capacities = [100.0, 100.0, 25.0];
    let mut addrs = Vec::new();
    for c in capacities {
        addrs.push(backend(c, clock.clone()).await);
    }
    let load = ServerLoad::with_seed(11)
        .blackout_period(Duration::from_secs(1))
        .weight_update_period(Duration::from_millis(100));
    let pool = Pool::new(load.clone());
    let ids = pool
        .extend(addrs.iter().map(|&a| (a, Weight::ONE)))
        .unwrap();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut settled = [0usize; 3];
    for i in 0..REQUESTS {
        clock.advance(Duration::from_millis(10));
        let now = clock.now();
        let picked = pool.pick(&PickContext::new().with_now(now)).unwrap();
        let (id, addr) = (picked.id(), *picked.addr());
        drop(picked);
        let uri = format!("http://{addr}/").parse::<hyper::Uri>().unwrap();
        let resp = client.get(uri).await.expect("a real answer");
        let report = LoadReport::from_headers(resp.headers()).expect("every answer reports");
        resp.into_body().collect().await.unwrap();
        load.record_at(id, &report, now);
        if i >= SETTLED_AFTER {
            settled[ids.iter().position(|&x| x == id).unwrap()] += 1;
        }
    }
    let n = (REQUESTS - SETTLED_AFTER) as f64;
    let got: Vec<f64> = settled.iter().map(|&c| c as f64 / n).collect();
    let want = [4.0 / 9.0, 4.0 / 9.0, 1.0 / 9.0];
    assert!(
        close(&got, &want, SHARE_TOLERANCE),
        "shares {got:?}, want {want:?}"
    );
    // And the weights are the capacities, as A58's qps ÷ utilization makes them.
    for (id, c) in ids.iter().zip(capacities) {
        let w = load.weight_at(*id, clock.now()).unwrap();
        assert!((w - c).abs() / c < 0.05, "weight {w} for capacity {c}");
    }
}
