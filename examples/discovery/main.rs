//! A balancer fed from a channel, as a service registry would feed it.
//!
//! A registry task sends `Change`s over a tokio channel — each backend with its weight —
//! and a spawned `Discovery` applies them to the pool as they arrive: every change ready
//! at once in one publication, whether or not requests come. The balancer waits for its
//! first backend instead of failing (`wait_for_backends`, as tower's p2c balancer does).
//!
//! 1. A request sent before any backend exists waits, and is served when the registry
//!    announces `a` (weight 3) and `b` (weight 1).
//! 2. 40 requests under smooth weighted round robin: 30 to `a`, 10 to `b`.
//! 3. While no request comes, the registry removes `a` and adds `c` (weight 2): the
//!    pool's members follow at once (no `poll_ready` needed).
//! 4. 30 more requests: 10 to `b`, 20 to `c`.
//! 5. The registry closes the channel; the discovery task ends.
//!
//! Run with `cargo run --example discovery` (default features; about a second).

mod registry;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), tower_lb::balance::BoxError> {
    let summary = registry::run().await?;
    println!("{summary}");
    Ok(())
}
