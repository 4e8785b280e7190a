//! Peers: index and count from the sorted membership, fed to the aperture; churn when
//! instances join or leave.

mod support;

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::time::Duration;

use support::Etcd;
use tower_lb::subset::{Aperture, Subsetting};
use tower_lb_etcd::{Member, Peers, position};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_learn_their_index_and_count_from_etcd() {
    let etcd = Etcd::start().await;
    let endpoints = [etcd.endpoint()];
    let me = Member::new("127.0.0.1:4000".parse().unwrap());
    let ttl = Duration::from_secs(5);
    let mut peers = Vec::new();
    for id in ["c-2", "c-0", "c-1"] {
        peers.push(Peers::join(&endpoints, "api", id, &me, ttl).await.unwrap());
    }
    for p in &mut peers {
        tokio::time::timeout(Duration::from_secs(5), p.wait_for_count(3))
            .await
            .unwrap();
    }
    let seen: Vec<(u64, u64)> = peers
        .iter()
        .map(|p| p.position().map(|(i, n)| (i, n.get())).unwrap())
        .collect();
    assert_eq!(seen, [(2, 3), (0, 3), (1, 3)]);
    // Each builds its aperture over the same backends; together they cover all of them.
    let backends: Vec<String> = (0..9).map(|i| format!("10.0.0.{i}:80")).collect();
    let size = NonZeroUsize::new(3).unwrap();
    let mut covered = BTreeSet::new();
    for p in &peers {
        covered.extend(
            p.aperture(size)
                .unwrap()
                .select(&backends)
                .into_iter()
                .map(|c| c.index),
        );
    }
    assert_eq!(covered.len(), 9);

    // One leaves: the others renumber.
    let leaving = peers.remove(1);
    leaving.leave().await.unwrap();
    for p in &mut peers {
        tokio::time::timeout(Duration::from_secs(5), p.wait_for_count(2))
            .await
            .unwrap();
    }
    let seen: Vec<(u64, u64)> = peers
        .iter()
        .map(|p| p.position().map(|(i, n)| (i, n.get())).unwrap())
        .collect();
    assert_eq!(seen, [(1, 2), (0, 2)]);
}

/// A seeded xorshift, so the ids are the same every run.
fn ids(n: usize, seed: &mut u64) -> Vec<String> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            format!("/clients/api/{:016x}", *seed)
        })
        .collect()
}

fn subset(members: &BTreeSet<String>, me: &str, backends: &[String], k: usize) -> BTreeSet<usize> {
    let (i, n) = position(members, me).unwrap();
    let aperture = Aperture::new(i, n, NonZeroUsize::new(k).unwrap()).unwrap();
    aperture
        .select(backends)
        .into_iter()
        .map(|c| c.index)
        .collect()
}

/// Members lost by each surviving instance when `before` becomes `after`, averaged.
fn mean_churn(
    before: &BTreeSet<String>,
    after: &BTreeSet<String>,
    backends: &[String],
    k: usize,
) -> (f64, usize) {
    let survivors: Vec<&String> = before.intersection(after).collect();
    let lost: Vec<usize> = survivors
        .iter()
        .map(|me| {
            let a = subset(before, me, backends, k);
            let b = subset(after, me, backends, k);
            a.difference(&b).count()
        })
        .collect();
    let max = lost.iter().copied().max().unwrap_or(0);
    (
        lost.iter().sum::<usize>() as f64 / survivors.len() as f64,
        max,
    )
}

#[test]
fn subsets_change_by_o1_members_when_instances_join_or_leave() {
    // C = 40 instances with random ids (so a newcomer lands anywhere in the order),
    // S = 80 backends, k = 6: the documented bound is S/C + 2 = 4 per instance.
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    let backends: Vec<String> = (0..80)
        .map(|i| format!("10.1.{}.{}:80", i / 200, i % 200))
        .collect();
    let k = 6;
    let mut members: BTreeSet<String> = ids(40, &mut seed).into_iter().collect();
    let (mut joins, mut leaves) = (Vec::new(), Vec::new());
    for round in 0..20 {
        let mut after = members.clone();
        if round % 2 == 0 {
            after.extend(ids(1, &mut seed));
            joins.push(mean_churn(&members, &after, &backends, k));
        } else {
            let gone = after
                .iter()
                .nth((round * 7) % after.len())
                .cloned()
                .unwrap();
            after.remove(&gone);
            leaves.push(mean_churn(&members, &after, &backends, k));
        }
        members = after;
    }
    let mean = |v: &[(f64, usize)]| v.iter().map(|c| c.0).sum::<f64>() / v.len() as f64;
    let max = |v: &[(f64, usize)]| v.iter().map(|c| c.1).max().unwrap();
    println!(
        "aperture churn per instance: join mean {:.2} max {}, leave mean {:.2} max {} (S/C + 2 = 4)",
        mean(&joins),
        max(&joins),
        mean(&leaves),
        max(&leaves)
    );
    // `tower_lb::subset`'s documented bound for an instance added or removed is
    // S/C + 2 = 4 per instance (the arc may grow or shrink by one instance width, S/C
    // backends, when ⌈k·C/S⌉ steps); O(1) in the fleet size, whatever C.
    assert!(
        mean(&joins) <= 4.0 && mean(&leaves) <= 4.0,
        "{joins:?} {leaves:?}"
    );
    assert!(
        max(&joins) <= 4 && max(&leaves) <= 4,
        "{joins:?} {leaves:?}"
    );
}

/// The addresses an aperture selects, as strings, sorted.
fn expected(all: &[String], index: u64, count: u64, k: usize) -> Vec<String> {
    let aperture = Aperture::new(
        index,
        std::num::NonZeroU64::new(count).unwrap(),
        NonZeroUsize::new(k).unwrap(),
    )
    .unwrap();
    let mut v: Vec<String> = aperture
        .select(all)
        .into_iter()
        .map(|c| all[c.index].clone())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instances_pool_holds_its_aperture_of_the_discovered_backends() {
    use tower_lb::{Pool, RoundRobin};
    use tower_lb_etcd::{Discovery, subset_pool};

    let etcd = Etcd::start().await;
    let endpoints = [etcd.endpoint()];
    let mut c = etcd.client().await;
    // Keys sorted as the addresses are, so `all` below is the discovered order.
    let all: Vec<String> = (0..9).map(|i| format!("127.0.0.1:{}", 5000 + i)).collect();
    for (i, addr) in all.iter().enumerate() {
        let m = Member::new(addr.parse().unwrap());
        c.put(format!("/services/api/b{i}"), m.to_json(), None)
            .await
            .unwrap();
    }
    let me = Member::new("127.0.0.1:4000".parse().unwrap());
    let k = NonZeroUsize::new(3).unwrap();
    let mut instances = Vec::new();
    for id in ["c-0", "c-1", "c-2"] {
        let peers = Peers::join(&endpoints, "api", id, &me, Duration::from_secs(5))
            .await
            .unwrap();
        let pool: Pool<String, RoundRobin> = Pool::new(RoundRobin::new());
        let task = subset_pool(
            Discovery::service(endpoints.clone(), "api").spawn(),
            &peers,
            k,
            pool.clone(),
            |_, m| m.addr.to_string(),
        );
        instances.push((peers, pool, task));
    }
    let held = |pool: &Pool<String, RoundRobin>| {
        let mut v: Vec<String> = pool
            .snapshot()
            .backends()
            .iter()
            .map(|b| b.addr().clone())
            .collect();
        v.sort();
        v
    };
    for (i, (_, pool, _)) in instances.iter().enumerate() {
        let want = expected(&all, i as u64, 3, 3);
        assert_eq!(want.len(), 3);
        support::eventually(Duration::from_secs(5), || held(pool) == want).await;
    }
    // c-1 leaves: c-0 and c-2 become instances 0 and 1 of 2 and widen their arcs.
    let (leaving, _, _) = instances.remove(1);
    leaving.leave().await.unwrap();
    for (i, (_, pool, _)) in instances.iter().enumerate() {
        let want = expected(&all, i as u64, 2, 3);
        support::eventually(Duration::from_secs(5), || held(pool) == want).await;
    }
    // A backend joins: each pool follows its arc over ten backends.
    let mut all = all;
    all.push("127.0.0.1:5009".into());
    let m = Member::new("127.0.0.1:5009".parse().unwrap());
    c.put("/services/api/b9", m.to_json(), None).await.unwrap();
    for (i, (_, pool, _)) in instances.iter().enumerate() {
        let want = expected(&all, i as u64, 2, 3);
        support::eventually(Duration::from_secs(5), || held(pool) == want).await;
    }
}
