//! Membership churn under load: never a request to a removed backend.

use super::*;

// ---------------------------------------------------------------------------------------
// Membership churn
// ---------------------------------------------------------------------------------------

const CHURN_SERVERS: [&str; 24] = [
    "s00", "s01", "s02", "s03", "s04", "s05", "s06", "s07", "s08", "s09", "s10", "s11", "s12",
    "s13", "s14", "s15", "s16", "s17", "s18", "s19", "s20", "s21", "s22", "s23",
];
const CHURN_INITIAL: usize = 6;
const CHURN_OPS: usize = 30;
const CHURN_REQUESTS: usize = 8_000;

/// What a churn run did and saw.
#[derive(Debug, Default)]
struct Churned {
    inserts: usize,
    removes: usize,
    swaps: usize,
    most_members: usize,
    /// Requests in flight on a backend when it was removed that it then served.
    finished_after_removal: usize,
    elapsed: Duration,
}

/// Random inserts, removes and swaps (one update removing one backend and adding
/// another), seeded, during a load run of 32 clients. Each backend joins at most once
/// (spares are fresh servers), so a server that receives a request stamped with an
/// epoch at or after its removal's proves a request sent after the removal was published.
async fn churn<P, K>(picker: P, affinity: K, seed: u64) -> Churned
where
    P: Picker<HttpTarget> + 'static,
    K: tower_lb::AffinityKey<Get> + Clone + Send + Sync + 'static,
{
    let started = Instant::now();
    let servers = servers(&CHURN_SERVERS).await;
    let pool = Pool::new(picker);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let state_of = |pool: &Pool<HttpTarget, P>, id| {
        let prepared = pool.snapshot();
        let s = prepared.snapshot();
        Arc::clone(s.backends()[s.index_of(id).unwrap()].state())
    };
    let mut states: Vec<Arc<BackendState>> = Vec::new();
    let mut members: Vec<(usize, BackendId)> = Vec::new();
    let mut spares: Vec<usize> = (CHURN_INITIAL..CHURN_SERVERS.len()).collect();
    for (i, server) in servers.iter().enumerate().take(CHURN_INITIAL) {
        let id = pool
            .insert(HttpTarget::http(server.addr), Weight::ONE)
            .unwrap();
        states.push(state_of(&pool, id));
        members.push((i, id));
    }
    let lb: Lb<P, K> = BalanceLayer::new(pool.clone())
        .affinity(affinity)
        .classify(HttpStatus::new())
        .max_in_flight(16)
        .on_overload(OnOverload::Wait)
        .build(OneClient(client()));
    let epoch = Arc::new(AtomicU64::new(1));
    let done = Arc::new(AtomicUsize::new(0));
    let run = tokio::spawn(load(
        BoxCloneService::new(lb.clone()),
        CLIENTS,
        Bound::Requests(CHURN_REQUESTS),
        done.clone(),
        {
            let epoch = epoch.clone();
            move |i| {
                let stamp = epoch.load(Ordering::SeqCst);
                get(&[
                    (STAMP, stamp.to_string()),
                    ("x-user", (i % 997).to_string()),
                ])
            }
        },
    ));

    let mut out = Churned::default();
    // (server, epoch of its removal, hits then)
    let mut removed: Vec<(usize, u64, usize)> = Vec::new();
    for op in 0..CHURN_OPS {
        let due = (op + 1) * CHURN_REQUESTS / (CHURN_OPS + 1);
        assert!(
            wait_until(Duration::from_secs(60), Duration::from_millis(1), || {
                done.load(Ordering::Relaxed) >= due
            })
            .await,
            "the load stalled"
        );
        let can_insert = !spares.is_empty() && members.len() < 10;
        let can_remove = members.len() > 2;
        let weight = Weight::new(rng.random_range(1..=3)).unwrap();
        let (gone, added) = match rng.random_range(0..3) {
            0 if can_insert => {
                let s = spares.swap_remove(rng.random_range(0..spares.len()));
                let id = pool
                    .insert(HttpTarget::http(servers[s].addr), weight)
                    .unwrap();
                out.inserts += 1;
                (None, Some((s, id)))
            }
            1 if can_remove => {
                let (s, id) = members.swap_remove(rng.random_range(0..members.len()));
                pool.remove(id).unwrap();
                out.removes += 1;
                (Some(s), None)
            }
            _ if can_insert && can_remove => {
                let new = spares.swap_remove(rng.random_range(0..spares.len()));
                let (old, old_id) = members.swap_remove(rng.random_range(0..members.len()));
                let id = pool
                    .update(|set| {
                        set.remove(old_id)?;
                        set.insert(HttpTarget::http(servers[new].addr), weight)
                    })
                    .unwrap();
                out.swaps += 1;
                (Some(old), Some((new, id)))
            }
            _ => (None, None),
        };
        // Published: requests stamped from now on were picked over the new set.
        let now = epoch.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(s) = gone {
            removed.push((s, now, servers[s].hits()));
        }
        if let Some((s, id)) = added {
            states.push(state_of(&pool, id));
            members.push((s, id));
        }
        out.most_members = out.most_members.max(members.len());
    }
    let tally = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run finished")
        .expect("the run did not panic");
    assert_eq!(tally.failed, 0, "{tally:?}");
    assert!(!removed.is_empty());
    for &(s, at, hits_then) in &removed {
        let stamp = servers[s].max_stamp();
        assert!(
            stamp < at,
            "{} got a request stamped {stamp}, after its removal at {at}",
            CHURN_SERVERS[s]
        );
        out.finished_after_removal += servers[s].hits() - hits_then;
    }
    assert!(
        states.iter().all(|s| s.in_flight() == 0),
        "in flight left: {:?}",
        states.iter().map(|s| s.in_flight()).collect::<Vec<_>>()
    );
    assert_eq!(lb.committed(), Some(0));
    let picks: u64 = states.iter().map(|s| s.picks()).sum();
    let successes: u64 = states.iter().map(|s| s.successes()).sum();
    let hits: usize = servers.iter().map(TestServer::hits).sum();
    assert_eq!(
        (picks, successes, hits),
        (CHURN_REQUESTS as u64, CHURN_REQUESTS as u64, CHURN_REQUESTS)
    );
    let now: Vec<BackendId> = pool.stats().iter().map(|s| s.id).collect();
    let mut want: Vec<BackendId> = members.iter().map(|m| m.1).collect();
    want.sort();
    let mut now_sorted = now.clone();
    now_sorted.sort();
    assert_eq!(
        now_sorted, want,
        "the pool holds exactly the model's members"
    );
    out.elapsed = started.elapsed();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_churn_under_load_never_routes_to_a_removed_backend() {
    let p2c = churn(PowerOfTwoChoices::with_seed(11), NoAffinity, 11).await;
    let maglev = churn(Maglev::new(), HeaderKey::from_static("x-user"), 12).await;
    for (name, c) in [("PowerOfTwoChoices", &p2c), ("Maglev + HeaderKey", &maglev)] {
        println!(
            "membership churn ({name}): {CHURN_REQUESTS} requests from {CLIENTS} clients, 0 failed; \
             {} inserts, {} removes, {} swaps (up to {} members); 0 requests after a removal, \
             {} in flight at a removal finished there; every in-flight count 0; {:.2} s",
            c.inserts,
            c.removes,
            c.swaps,
            c.most_members,
            c.finished_after_removal,
            c.elapsed.as_secs_f64(),
        );
    }
}
