//! 1,000 registered backends: initial sync time, and put-to-balancer watch latency.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use etcd_client::{Txn, TxnOp};
use support::{Etcd, eventually};
use tower_lb::{Pool, RoundRobin};
use tower_lb_etcd::{Discovery, Member, sync_pool};

fn value(i: u32) -> String {
    let addr: SocketAddr = ([10, 0, (i / 250) as u8, (i % 250) as u8], 80).into();
    Member::new(addr).to_json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_backends_sync_and_watch_latency() {
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    // 8 transactions of 125 puts (etcd allows 128 operations per transaction).
    for chunk in (0..1000u32).collect::<Vec<_>>().chunks(125) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|&i| TxnOp::put(format!("/services/big/{i:04}"), value(i), None))
            .collect();
        c.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    let pool = Pool::new(RoundRobin::new());
    let started = Instant::now();
    let _task = sync_pool(
        Discovery::service([etcd.endpoint()], "big").spawn(),
        pool.clone(),
        |_, m| m.addr,
    );
    eventually(Duration::from_secs(10), || pool.snapshot().len() == 1000).await;
    let sync = started.elapsed();

    // Watch latency: from a put's return to the member being in the pool, 100 times.
    let mut latencies = Vec::new();
    for i in 0..100u32 {
        let addr: SocketAddr = ([10, 9, (i / 250) as u8, (i % 250) as u8], 81).into();
        let t = Instant::now();
        c.put(
            format!("/services/big/new{i:03}"),
            Member::new(addr).to_json(),
            None,
        )
        .await
        .unwrap();
        let p = pool.clone();
        eventually(Duration::from_secs(5), || {
            p.snapshot().backends().iter().any(|b| *b.addr() == addr)
        })
        .await;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let (p50, p99) = (latencies[49], latencies[98]);
    println!(
        "1000 backends: initial sync {sync:?}; put-to-pool latency p50 {p50:?} p99 {p99:?} (100 puts)"
    );
    assert!(sync < Duration::from_secs(5), "initial sync {sync:?}");
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");
}
