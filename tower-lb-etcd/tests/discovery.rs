//! Discovery against a real etcd: list + watch, the list → watch gap, compaction,
//! an outage, malformed values.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use support::{Etcd, eventually};
use tower_lb::{PickContext, Pool, RoundRobin, Weight};
use tower_lb_etcd::{Change, Discovery, Member, Status, sync_pool};

fn member(port: u16, weight: u64) -> String {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    Member::new(addr)
        .with_weight(Weight::new(weight).unwrap())
        .to_json()
}

/// The pool's members as (port, weight), sorted.
fn members(pool: &Pool<SocketAddr, RoundRobin>) -> Vec<(u16, u32)> {
    let mut m: Vec<_> = pool
        .snapshot()
        .backends()
        .iter()
        .map(|b| (b.addr().port(), b.weight().get()))
        .collect();
    m.sort();
    m
}

const LIMIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_list_then_watch_reach_the_pool_with_weights_and_skip_malformed_values() {
    support::trace();
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    c.put("/services/api/a", member(1001, 1), None)
        .await
        .unwrap();
    c.put("/services/api/b", member(1002, 5), None)
        .await
        .unwrap();
    // Malformed: bad JSON, zero weight, overflowing weight, bad address.
    c.put("/services/api/bad1", "{not json", None)
        .await
        .unwrap();
    c.put(
        "/services/api/bad2",
        r#"{"addr":"127.0.0.1:1","weight":0}"#,
        None,
    )
    .await
    .unwrap();
    c.put(
        "/services/api/bad3",
        r#"{"addr":"127.0.0.1:1","weight":4294967296}"#,
        None,
    )
    .await
    .unwrap();
    c.put(
        "/services/api/bad4",
        r#"{"addr":"nowhere","weight":1}"#,
        None,
    )
    .await
    .unwrap();
    c.put("/services/other/x", member(9999, 1), None)
        .await
        .unwrap();

    let pool = Pool::new(RoundRobin::new());
    let discover = Discovery::service([etcd.endpoint()], "api").spawn();
    let mut status = discover.status();
    let _task = sync_pool(discover, pool.clone(), |_, m| m.addr);
    let p = pool.clone();
    eventually(LIMIT, || members(&p) == [(1001, 1), (1002, 5)]).await;
    assert!(
        matches!(status.get(), Status::Synced { members: 2, .. }),
        "{:?}",
        status.get()
    );

    // Watch: an insert, a reweight, a delete, and a malformed overwrite (kept as it was).
    c.put("/services/api/c", member(1003, 2), None)
        .await
        .unwrap();
    c.put("/services/api/b", member(1002, 3), None)
        .await
        .unwrap();
    c.delete("/services/api/a", None).await.unwrap();
    c.put("/services/api/c", "garbage", None).await.unwrap();
    c.put("/services/api/d", member(1004, 1), None)
        .await
        .unwrap();
    eventually(LIMIT, || members(&p) == [(1002, 3), (1003, 2), (1004, 1)]).await;
    let s = status
        .wait_for(|s| matches!(s, Status::Synced { members: 3, .. }))
        .await;
    assert!(s.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_in_the_list_to_watch_gap_is_not_missed() {
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    c.put("/services/api/a", member(1001, 1), None)
        .await
        .unwrap();
    c.put("/services/api/b", member(1002, 1), None)
        .await
        .unwrap();
    let endpoint = etcd.endpoint();
    let once = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let discover = Discovery::service([etcd.endpoint()], "api")
        .on_listed(move |_revision| {
            let endpoint = endpoint.clone();
            let first = !once.swap(true, std::sync::atomic::Ordering::SeqCst);
            async move {
                if first {
                    // After the list, before the watch: a put and a delete.
                    let mut c = etcd_client::Client::connect([endpoint], None)
                        .await
                        .unwrap();
                    c.put("/services/api/gap", member(1003, 4), None)
                        .await
                        .unwrap();
                    c.delete("/services/api/a", None).await.unwrap();
                }
            }
        })
        .spawn();
    let pool = Pool::new(RoundRobin::new());
    let _task = sync_pool(discover, pool.clone(), |_, m| m.addr);
    eventually(LIMIT, || members(&pool) == [(1002, 1), (1003, 4)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_watch_start_relists_and_emits_only_the_difference() {
    support::trace();
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    for (key, port) in [("a", 1001), ("b", 1002), ("c", 1003)] {
        c.put(format!("/services/api/{key}"), member(port, 1), None)
            .await
            .unwrap();
    }
    let endpoint = etcd.endpoint();
    let lists = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = lists.clone();
    let mut discover = Discovery::service([etcd.endpoint()], "api")
        .on_listed(move |_revision| {
            let endpoint = endpoint.clone();
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n == 0 {
                    // Change the set, then compact past the watch's start revision.
                    let mut c = etcd_client::Client::connect([endpoint], None)
                        .await
                        .unwrap();
                    c.put("/services/api/d", member(1004, 1), None)
                        .await
                        .unwrap();
                    c.put("/services/api/b", member(1002, 7), None)
                        .await
                        .unwrap();
                    let rev = c.delete("/services/api/a", None).await.unwrap();
                    let now = rev.header().unwrap().revision();
                    c.compact(
                        now,
                        Some(etcd_client::CompactionOptions::new().with_physical()),
                    )
                    .await
                    .unwrap();
                }
            }
        })
        .spawn();
    let mut changes = Vec::new();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while changes.len() < 6 {
        let next = tokio::time::timeout_at(deadline, discover.next()).await;
        let Ok(Some(Ok(change))) = next else {
            panic!("stream stalled after {changes:?}")
        };
        changes.push(match change {
            Change::Insert(k, m) => format!("+{k}={}", m.weight.get()),
            Change::Remove(k) => format!("-{k}"),
        });
    }
    // Three from the first list, then only the difference of the second.
    changes[3..].sort();
    assert_eq!(
        changes,
        [
            "+/services/api/a=1",
            "+/services/api/b=1",
            "+/services/api/c=1",
            "+/services/api/b=7",
            "+/services/api/d=1",
            "-/services/api/a",
        ]
    );
    // Nothing more: c was not re-emitted.
    let more = tokio::time::timeout(Duration::from_millis(300), discover.next()).await;
    assert!(more.is_err(), "unexpected change {more:?}");
    assert_eq!(
        lists.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "listed again after the compaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_keeps_the_last_set_and_says_so_then_resyncs() {
    support::trace();
    let mut etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    for (key, port) in [("a", 1001), ("b", 1002), ("c", 1003)] {
        c.put(format!("/services/api/{key}"), member(port, 1), None)
            .await
            .unwrap();
    }
    let pool = Pool::new(RoundRobin::new());
    let discover = Discovery::service([etcd.endpoint()], "api")
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .timeout(Duration::from_millis(500))
        .spawn();
    let mut status = discover.status();
    let _task = sync_pool(discover, pool.clone(), |_, m| m.addr);
    eventually(LIMIT, || members(&pool).len() == 3).await;

    etcd.kill();
    let down = tokio::time::timeout(
        LIMIT,
        status.wait_for(|s| matches!(s, Status::Unreachable { .. })),
    )
    .await
    .expect("status turns Unreachable");
    assert!(
        matches!(down, Some(Status::Unreachable { members: 3, .. })),
        "{down:?}"
    );
    // Requests keep flowing on the last known set: 1,000 picks, 0 failures.
    let ctx = PickContext::new();
    let failures = (0..1000).filter(|_| pool.pick(&ctx).is_err()).count();
    assert_eq!(failures, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        members(&pool).len(),
        3,
        "the pool was not emptied during the outage"
    );
    assert!(matches!(status.get(), Status::Unreachable { .. }));

    etcd.restart().await;
    let mut c = etcd.client().await;
    c.delete("/services/api/a", None).await.unwrap();
    c.put("/services/api/d", member(1004, 2), None)
        .await
        .unwrap();
    eventually(Duration::from_secs(8), || {
        members(&pool) == [(1002, 1), (1003, 1), (1004, 2)]
    })
    .await;
    assert!(
        matches!(status.get(), Status::Synced { members: 3, .. }),
        "{:?}",
        status.get()
    );
}
