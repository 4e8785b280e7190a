//! Reliability under failure, against real hyper servers on loopback (and, where only
//! time matters, in-process backends on tokio's paused clock): a backend killed under
//! load, a slow backend, a flapping backend, every backend down, membership churn.
//!
//! Each test asserts counts and prints a one-line summary (`cargo test --all-features
//! --test reliability -- --nocapture` shows them). Every wait is bounded, every request
//! carries a timeout, every random choice is seeded.
#![cfg(all(feature = "tower", feature = "http", feature = "tokio"))]

#[path = "../support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt;
use http::Response;
use hyper::body::Incoming;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::load::{
    Bound, Get, HttpClient, HttpService, RetryIdempotent, Tally, client, get, load, wait_until,
};
use support::servers::{STAMP, TestServer};
use tower::retry::Retry;
use tower::util::{BoxCloneService, BoxCloneSyncService, Oneshot};
use tower::{Service, ServiceExt};
use tower_lb::affinity::HeaderKey;
use tower_lb::balance::future::ResponseFuture;
use tower_lb::balance::{
    BackendService, Balance, BalanceLayer, BoxError, Client as OneClient, HttpStatus, HttpTarget,
    NoAffinity, OnOverload,
};
use tower_lb::health::{
    Ejection, OutlierDetection, PanicMode, PanicThreshold, Probe, ProbeConfig, ProbeError, Reason,
    SlowStart, Verdict, probe_fn,
};
use tower_lb::{
    BackendId, BackendState, Maglev, PeakEwma, PickError, Picker, Pool, PowerOfTwoChoices,
    RoundRobin, Weight,
};

/// Concurrent clients of the load runs.
const CLIENTS: usize = 32;
/// Consecutive failures that eject a backend.
const THRESHOLD: u32 = 5;

type Lb<P, K = NoAffinity> = Balance<HttpTarget, P, OneClient<HttpClient>, K, HttpStatus>;

async fn servers(names: &[&'static str]) -> Vec<TestServer> {
    let mut out = Vec::new();
    for &n in names {
        out.push(TestServer::start(n).await);
    }
    out
}

fn add<P: Picker<HttpTarget>>(
    pool: &Pool<HttpTarget, P>,
    servers: &[TestServer],
) -> Vec<BackendId> {
    servers
        .iter()
        .map(|s| pool.insert(HttpTarget::http(s.addr), Weight::ONE).unwrap())
        .collect()
}

fn balance<P: Picker<HttpTarget>>(pool: &Pool<HttpTarget, P>) -> Lb<P> {
    BalanceLayer::new(pool.clone())
        .classify(HttpStatus::new())
        .build(OneClient(client()))
}

/// A TCP connect probe.
fn tcp_probe() -> impl Probe<HttpTarget> {
    probe_fn(|t: &HttpTarget| {
        let addr = t.authority().to_string();
        async move {
            tokio::net::TcpStream::connect(addr)
                .await
                .map_err(ProbeError::from)?;
            Ok(())
        }
    })
}

fn stats_of<A: Clone, P: Picker<A>>(pool: &Pool<A, P>, id: BackendId) -> tower_lb::BackendStats<A> {
    pool.stats()
        .into_iter()
        .find(|s| s.id == id)
        .expect("a member")
}

/// How long a wait for the probes may take before it counts as a hang (they need
/// ~200 ms; the bound only turns a hang into a failure).
const PROBE_WAIT: Duration = Duration::from_secs(30);

mod all_down;
mod churn;
mod flapping;
mod kill;
mod slow;
