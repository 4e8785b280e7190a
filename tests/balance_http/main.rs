//! `Balance` in front of real hyper HTTP/1.1 servers on loopback: distribution per
//! strategy, sticky cookies, failover, recovery through probes, shedding and waiting.
#![cfg(all(feature = "tower", feature = "http", feature = "tokio"))]

mod composition;
mod cookies_dns_bodies;
mod distribution;
mod regressions;
mod sessions_and_failover;

#[path = "../support/mod.rs"]
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
