//! Regressions: trailers end a tracked body; a sticky session survives a momentary
//! overload.

use super::*;

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
