//! Registration under a lease against a real etcd: a killed registrant leaves within
//! the TTL (+ 1 s), a clean one at once.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Etcd, eventually};
use tower_lb::{Pool, RoundRobin, Weight};
use tower_lb_etcd::{Discovery, Member, RegisterError, Registration, sync_pool};

fn ports(pool: &Pool<SocketAddr, RoundRobin>) -> Vec<u16> {
    let mut p: Vec<_> = pool
        .snapshot()
        .backends()
        .iter()
        .map(|b| b.addr().port())
        .collect();
    p.sort();
    p
}

const TTL: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_process_leaves_every_balancer_within_the_ttl() {
    let etcd = Etcd::start().await;
    // A real process registers itself and keeps its lease alive.
    let mut child = Command::new(env!("CARGO_BIN_EXE_etcd-register"))
        .args([
            &etcd.endpoint(),
            "/services/api/crashy",
            "127.0.0.1:2001",
            "3",
            "2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    let read = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    assert_eq!(read.await.unwrap().unwrap().trim(), "registered");
    let steady = Registration::register(
        &[etcd.endpoint()],
        "/services/api/steady",
        &Member::new("127.0.0.1:2002".parse().unwrap()),
        TTL,
    )
    .await
    .unwrap();

    // Two balancers follow the service.
    let pools: Vec<Pool<SocketAddr, RoundRobin>> =
        (0..2).map(|_| Pool::new(RoundRobin::new())).collect();
    let _tasks: Vec<_> = pools
        .iter()
        .map(|p| {
            sync_pool(
                Discovery::service([etcd.endpoint()], "api").spawn(),
                p.clone(),
                |_, m| m.addr,
            )
        })
        .collect();
    for p in &pools {
        eventually(Duration::from_secs(5), || ports(p) == [2001, 2002]).await;
        let w: Vec<u32> = p
            .snapshot()
            .backends()
            .iter()
            .map(|b| b.weight().get())
            .collect();
        assert!(
            w.contains(&3),
            "the registrant's weight reached the pool: {w:?}"
        );
    }
    // Outlive the TTL: the keep-alive holds both registrations.
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    assert!(pools.iter().all(|p| ports(p) == [2001, 2002]));

    let killed = Instant::now();
    child.kill().unwrap();
    child.wait().unwrap();
    for p in &pools {
        eventually(
            TTL + Duration::from_secs(1) - killed.elapsed().min(TTL),
            || ports(p) == [2002],
        )
        .await;
    }
    let gone = killed.elapsed();
    println!("killed registrant gone from both balancers after {gone:?} (TTL {TTL:?})");
    assert!(gone <= TTL + Duration::from_secs(1), "{gone:?}");
    steady.deregister().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_deregisters_at_once() {
    let etcd = Etcd::start().await;
    let pool = Pool::new(RoundRobin::new());
    let _task = sync_pool(
        Discovery::service([etcd.endpoint()], "api").spawn(),
        pool.clone(),
        |_, m| m.addr,
    );
    let member =
        Member::new("127.0.0.1:3001".parse().unwrap()).with_weight(Weight::new(2).unwrap());
    let reg = Registration::register(
        &[etcd.endpoint()],
        "/services/api/x",
        &member,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(reg.key(), "/services/api/x");
    eventually(Duration::from_secs(5), || ports(&pool) == [3001]).await;
    let t = Instant::now();
    reg.deregister().await.unwrap();
    eventually(Duration::from_millis(1000), || ports(&pool).is_empty()).await;
    println!(
        "deregistered and gone from the pool after {:?} (lease TTL 30 s)",
        t.elapsed()
    );

    // A TTL under a second is refused with a typed error.
    let err = Registration::register(
        &[etcd.endpoint()],
        "/k",
        &member,
        Duration::from_millis(500),
    )
    .await;
    assert!(matches!(err, Err(RegisterError::Ttl(_))));
}
