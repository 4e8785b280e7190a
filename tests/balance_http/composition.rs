//! Middleware composes (sticky sessions, retries, body tracking, time-outs in any order),
//! and subsetting composes with `Balance`.

use super::*;

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

/// Subsetting composes with `Balance`: a pool synced to this instance's deterministic
/// subset sends requests only to the subset's servers — the others get no request (and
/// so no connection) — and after a resync with one subset server gone from discovery, only
/// to the new subset.
#[tokio::test]
async fn a_pool_synced_to_a_subset_sends_nothing_outside_it() {
    use std::num::NonZeroUsize;
    use tower_lb::subset::{self, Deterministic, Subsetting};

    let servers = servers(&["s0", "s1", "s2", "s3", "s4", "s5"]).await;
    let all: Vec<HttpTarget> = servers.iter().map(|s| HttpTarget::http(s.addr)).collect();
    let rule = Deterministic::new(4, NonZeroUsize::new(2).unwrap());
    let pool = Pool::new(RoundRobin::new());
    subset::sync(&pool, &all, &rule).unwrap();
    let lb = balance(&pool);
    let send = |n: usize| {
        let lb = lb.clone();
        async move {
            for _ in 0..n {
                let resp = lb.clone().oneshot(get(None)).await.expect("a response");
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.unwrap();
            }
        }
    };
    send(40).await;
    let chosen: Vec<usize> = rule.select(&all).iter().map(|c| c.index).collect();
    let hits: Vec<usize> = servers.iter().map(TestServer::hits).collect();
    for (i, &h) in hits.iter().enumerate() {
        if chosen.contains(&i) {
            assert_eq!(h, 20, "subset member {i}: {hits:?}");
        } else {
            assert_eq!(h, 0, "outside the subset {i}: {hits:?}");
        }
    }
    // Discovery drops one subset member: the resync brings in its replacement only.
    let gone = chosen[0];
    let fewer: Vec<HttpTarget> = all
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != gone)
        .map(|(_, t)| t.clone())
        .collect();
    let report = subset::sync(&pool, &fewer, &rule).unwrap();
    // The dropped member, and at most one more (the churn bound of `subset`'s docs).
    assert!((1..=2).contains(&report.removed), "{report:?}");
    let now: Vec<String> = rule
        .select(&fewer)
        .iter()
        .map(|c| fewer[c.index].to_string())
        .collect();
    send(40).await;
    let after: Vec<usize> = servers.iter().map(TestServer::hits).collect();
    for (i, s) in servers.iter().enumerate() {
        let got = after[i] - hits[i];
        let member = now.contains(&HttpTarget::http(s.addr).to_string());
        assert_eq!(
            got > 0,
            member,
            "server {i}: {hits:?} then {after:?}, subset {now:?}"
        );
    }
    assert_eq!(
        after[gone], hits[gone],
        "the dropped member got nothing more"
    );
}
