//! The `Balance` service against in-process services: tower's contract, limits,
//! discovery, passive health, affinity. Real HTTP servers are in `balance_http.rs`.
#![cfg(feature = "tower")]

mod discovery_and_health;
mod limits;
mod readiness_and_affinity;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use proptest::prelude::*;
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};
use tower_lb::affinity::KeyFn;
use tower_lb::balance::{BackendService, Balance, BalanceLayer, BoxError, Change, OnOverload};
use tower_lb::health::OutlierDetection;
use tower_lb::{Maglev, Overloaded, PickError, Pool, PowerOfTwoChoices, RoundRobin, Weight};

/// A service that answers with its name, after the request's own delay (0 = at once).
#[derive(Clone)]
struct Named {
    name: &'static str,
    fail: Arc<AtomicBool>,
}

impl Service<u64> for Named {
    type Response = &'static str;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<&'static str, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, delay_ms: u64) -> Self::Future {
        let (name, fail) = (self.name, self.fail.load(Ordering::SeqCst));
        Box::pin(async move {
            if delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            if fail {
                Err(format!("{name} failed").into())
            } else {
                Ok(name)
            }
        })
    }
}

fn named(name: &'static str) -> (BackendService<&'static str, Named>, Arc<AtomicBool>) {
    let fail = Arc::new(AtomicBool::new(false));
    (
        BackendService::new(
            name,
            Named {
                name,
                fail: fail.clone(),
            },
        ),
        fail,
    )
}

type NamedPool<P> = Pool<BackendService<&'static str, Named>, P>;

fn pool_of<P: tower_lb::Picker<BackendService<&'static str, Named>>>(
    picker: P,
    names: &[&'static str],
) -> (NamedPool<P>, Vec<Arc<AtomicBool>>) {
    let pool = Pool::new(picker);
    let fails = names
        .iter()
        .map(|&n| {
            let (endpoint, fail) = named(n);
            pool.insert(endpoint, Weight::ONE).unwrap();
            fail
        })
        .collect();
    (pool, fails)
}

fn in_flight<P: tower_lb::Picker<BackendService<&'static str, Named>>>(
    pool: &Pool<BackendService<&'static str, Named>, P>,
) -> Vec<usize> {
    pool.stats().iter().map(|s| s.in_flight).collect()
}
