//! A `Balance` fed by etcd discovery, over real TCP backends: weights reach it, an etcd
//! outage costs no request, a deregistered backend finishes what it was sent.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use support::Etcd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{Service, service_fn};
use tower_lb::balance::{BackendService, Balance, BoxError};
use tower_lb::{Pool, Weight, WeightedRoundRobin};
use tower_lb_etcd::{Discovery, Member, Registration, Status};

/// A backend: reads an 8-byte delay in ms, waits that long, answers with its name.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut delay = [0u8; 8];
                if conn.read_exact(&mut delay).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(u64::from_be_bytes(delay))).await;
                    let _ = conn.write_all(name.as_bytes()).await;
                }
            });
        }
    });
    addr
}

/// The client side of one backend: a request is a delay in ms, the answer its name.
fn tcp(
    addr: SocketAddr,
) -> impl Service<u64, Response = String, Error = std::io::Error, Future: Send> + Clone + Send + Sync
{
    service_fn(move |delay: u64| async move {
        let mut conn = TcpStream::connect(addr).await?;
        conn.write_all(&delay.to_be_bytes()).await?;
        let mut name = String::new();
        conn.read_to_string(&mut name).await?;
        Ok::<_, std::io::Error>(name)
    })
}

async fn call<B: Service<u64, Response = String, Error = BoxError>>(
    balance: &mut B,
    delay: u64,
) -> Result<String, BoxError> {
    std::future::poll_fn(|cx| balance.poll_ready(cx)).await?;
    balance.call(delay).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_follows_etcd_serves_through_an_outage_and_drains_a_deregistered_backend() {
    support::trace();
    let mut etcd = Etcd::start().await;
    let endpoints = [etcd.endpoint()];
    let mut regs = BTreeMap::new();
    for (name, weight) in [("a", 1), ("b", 1), ("c", 2)] {
        let me = Member::new(backend(name).await).with_weight(Weight::new(weight).unwrap());
        let reg = Registration::register(
            &endpoints,
            format!("/services/tcp/{name}"),
            &me,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        regs.insert(name, reg);
    }
    let discover = Discovery::service(endpoints.clone(), "tcp")
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .timeout(Duration::from_millis(500))
        .spawn();
    let mut status = discover.status();
    let pool = Pool::new(WeightedRoundRobin::new());
    let mut balance = Balance::new(pool.clone());
    balance.discover(discover, |_: &String, m: Member| {
        (BackendService::new(m.addr, tcp(m.addr)), m.weight)
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pool.snapshot().len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "discovery did not fill the pool"
        );
        let _ = call(&mut balance, 0).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Weights from the registry: smooth WRR over 1, 1, 2 serves 10, 10, 20 of 40.
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..40 {
        *served
            .entry(call(&mut balance, 0).await.unwrap())
            .or_default() += 1;
    }
    assert_eq!(
        served,
        BTreeMap::from([("a".into(), 10), ("b".into(), 10), ("c".into(), 20)])
    );

    // etcd dies: requests keep flowing on the last known set, with 0 failures.
    etcd.kill();
    let down = tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|s| matches!(s, Status::Unreachable { .. })),
    )
    .await
    .unwrap();
    assert!(
        matches!(down, Some(Status::Unreachable { members: 3, .. })),
        "{down:?}"
    );
    let mut failures = 0;
    for _ in 0..200 {
        failures += usize::from(call(&mut balance, 0).await.is_err());
    }
    assert_eq!(failures, 0);
    assert_eq!(pool.snapshot().len(), 3);

    // etcd is back: the set resyncs.
    etcd.restart().await;
    let up = tokio::time::timeout(
        Duration::from_secs(8),
        status.wait_for(|s| matches!(s, Status::Synced { .. })),
    )
    .await
    .unwrap();
    assert!(up.is_some());

    // Slow requests in flight on every backend; b deregisters: it leaves the pool at
    // once and still answers the request it was sent.
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let mut b = balance.clone();
            tokio::spawn(async move { call(&mut b, 600).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    regs.remove("b").unwrap().deregister().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while pool.snapshot().len() != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b did not leave the pool"
        );
        let _ = call(&mut balance, 0).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut answers: Vec<String> = Vec::new();
    for s in slow {
        answers.push(s.await.unwrap().unwrap());
    }
    answers.sort();
    assert_eq!(
        answers,
        ["a", "b", "c", "c"],
        "the in-flight request on b finished"
    );
    for _ in 0..20 {
        assert_ne!(call(&mut balance, 0).await.unwrap(), "b");
    }
}
