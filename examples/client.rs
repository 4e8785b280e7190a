//! A balanced HTTP client, and a picker called directly from custom code.
//!
//! 1. hyper-util's pooled client wrapped in `BalanceLayer`: each request is sent to the
//!    backend power-of-two-choices picks (its URI pointed there), its outcome feeds
//!    passive health (5xx and transport errors are failures), its latency the backend's
//!    estimate. The rest of the program sees one `tower::Service`.
//! 2. The same pool picked from by hand: `pool.pick`, then an in-flight guard around a
//!    request of our own.
//! 3. A consistent-hashing picker over a `Snapshot`, no pool and no tower: the same user
//!    always maps to the same backend, and removing a backend moves only its users.
//!
//! Run with `cargo run --example client --features http`.

mod support;

use std::collections::BTreeMap;
use std::time::Instant;

use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_lb::affinity::hash_key;
use tower_lb::balance::{BalanceLayer, HttpStatus, HttpTarget};
use tower_lb::{Maglev, PickContext, Picker, Pool, PowerOfTwoChoices, Snapshot, Weight};

use support::backend::HttpBackend;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let backends = support::backend::start_http(&["backend-1", "backend-2", "backend-3"]).await?;
    let name_of = |target: &HttpTarget| -> String {
        backends
            .iter()
            .find(|b| target.authority().as_str() == b.addr().to_string())
            .map_or_else(|| target.to_string(), |b: &HttpBackend| b.name().to_owned())
    };

    // 1. One hyper client for every backend, balanced. P2C reads no latency, so the
    // pool keeps none unless asked: asked here, for the stats printed below.
    let pool = Pool::builder(PowerOfTwoChoices::new())
        .track_latency(true)
        .build()?;
    for (backend, weight) in backends.iter().zip([2, 1, 1]) {
        pool.insert(HttpTarget::http(backend.addr()), Weight::new(weight)?)?;
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let service = ServiceBuilder::new()
        .layer(BalanceLayer::new(pool.clone()).classify(HttpStatus::new()))
        .service(client.clone());

    println!(
        "1. hyper-util client + BalanceLayer (p2c, weights 2:1:1), 400 requests, 8 at a time\n"
    );
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let service = service.clone();
        tasks.spawn(async move {
            let mut seen = BTreeMap::<String, u32>::new();
            for i in 0..50 {
                // A relative URI: the balancer fills in the picked backend's scheme and authority.
                let req = Request::get(format!("/items/{worker}-{i}")).body(Empty::new())?;
                let response = service.clone().oneshot(req).await?;
                let name = response.headers()["x-backend"].to_str()?.to_owned();
                response.into_body().collect().await?;
                *seen.entry(name).or_default() += 1;
            }
            Ok::<_, Error>(seen)
        });
    }
    let mut seen = BTreeMap::<String, u32>::new();
    while let Some(done) = tasks.join_next().await {
        for (name, n) in done?? {
            *seen.entry(name).or_default() += n;
        }
    }
    for (name, n) in &seen {
        println!("  {name}: {n:>3} responses");
    }
    println!("\n  pool stats:");
    for s in pool.stats() {
        println!(
            "  {}  picks {:>3}  successes {:>3}  failures {}  latency estimate {:?}",
            name_of(&s.addr),
            s.picks,
            s.successes,
            s.failures,
            s.ewma.unwrap_or_default()
        );
    }

    // 2. The same pool, picked from by hand.
    println!("\n2. pool.pick() in custom code\n");
    for _ in 0..3 {
        let picked = pool.pick(&PickContext::new())?;
        let guard = picked.start(); // in flight until finished or dropped
        let uri = format!("{}/by-hand", picked.addr()).parse()?;
        let started = Instant::now();
        let result = client.get(uri).await;
        let ok = result.as_ref().is_ok_and(|r| r.status().is_success());
        guard.finish(ok, Instant::now()); // latency and outcome to the backend's state
        println!(
            "  picked {} → {} in {:?}",
            name_of(picked.addr()),
            if ok { "200" } else { "failed" },
            started.elapsed()
        );
    }

    // 3. A hashing picker over a snapshot: no pool, no tower, no I/O.
    println!("\n3. Maglev over a snapshot: user → backend\n");
    let all = Snapshot::build([
        ("backend-1", Weight::ONE),
        ("backend-2", Weight::ONE),
        ("backend-3", Weight::ONE),
    ])?;
    let without_3 = Snapshot::build([("backend-1", Weight::ONE), ("backend-2", Weight::ONE)])?;
    let maglev = Maglev::new();
    let (table_all, table_without_3) =
        (maglev.prepare(&all, None), maglev.prepare(&without_3, None));
    println!("  {:<8} {:<12} backend-3 removed", "user", "3 backends");
    for user in [
        "ada", "bob", "cy", "dee", "eve", "fay", "gus", "hal", "ivy", "jo",
    ] {
        let ctx = PickContext::new().with_hash(hash_key(user.as_bytes()));
        let before = maglev
            .pick(&table_all, &all, &ctx)
            .map_or("-", |i| *all.backends()[i].addr());
        let after = maglev
            .pick(&table_without_3, &without_3, &ctx)
            .map_or("-", |i| *without_3.backends()[i].addr());
        let note = if before == after { "" } else { "  (moved)" };
        println!("  {user:<8} {before:<12} {after}{note}");
    }
    println!("\n  Only backend-3's users moved; everyone else kept their backend.");
    Ok(())
}
