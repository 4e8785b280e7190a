//! The example's core, also run by `tests/examples/`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::time::Duration;

use tokio::sync::mpsc;
use tower::util::BoxCloneSyncService;
use tower::{ServiceExt, service_fn};
use tower_lb::balance::{
    BackendService, BalanceLayer, BoxError, Change, Discovery, PerBackend, Weighted,
};
use tower_lb::{Pool, Weight, WeightedRoundRobin};

/// A backend: answers with its own name.
type Backend = BoxCloneSyncService<u32, &'static str, Infallible>;

fn backend(name: &'static str) -> Backend {
    BoxCloneSyncService::new(service_fn(move |_: u32| async move {
        Ok::<_, Infallible>(name)
    }))
}

/// What a registry sends: a backend's key, with its service and weight on insert.
type Announcement = Result<Change<&'static str, Weighted<Backend>>, Infallible>;

/// What the run saw, phase by phase.
#[derive(Debug, Default)]
pub struct Summary {
    /// The backend that served the request sent before any backend existed.
    pub first: &'static str,
    /// Requests per backend in phase 2 (a: 3, b: 1).
    pub before: BTreeMap<&'static str, usize>,
    /// The pool's members after the idle change (no request in between).
    pub members_while_idle: Vec<&'static str>,
    /// Requests per backend in phase 4 (b: 1, c: 2).
    pub after: BTreeMap<&'static str, usize>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "1. first request, sent before any backend: served by {}",
            self.first
        )?;
        writeln!(f, "2. 40 requests with a=3, b=1: {:?}", self.before)?;
        writeln!(
            f,
            "3. idle: a removed, c=2 added; members now {:?}",
            self.members_while_idle
        )?;
        writeln!(f, "4. 30 requests with b=1, c=2: {:?}", self.after)?;
        write!(f, "5. registry closed; discovery task ended")
    }
}

/// Runs the five phases (see the program's docs).
pub async fn run() -> Result<Summary, BoxError> {
    let pool = Pool::new(WeightedRoundRobin::new());
    let balance = BalanceLayer::new(pool.clone())
        .wait_for_backends()
        .build(PerBackend);
    let (registry, rx) = mpsc::unbounded_channel::<Announcement>();
    let changes =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let discovery = tokio::spawn(Discovery::new(
        &pool,
        changes,
        |key: &&'static str, w: Weighted<Backend>| (BackendService::new(*key, w.service), w.weight),
    ));
    let mut summary = Summary::default();

    // 1. A request before any backend: it waits for the first one.
    let first = tokio::spawn(balance.clone().oneshot(0));
    tokio::time::sleep(Duration::from_millis(20)).await;
    if first.is_finished() {
        return Err("the first request did not wait for a backend".into());
    }
    let announce = |name, weight| -> Result<(), BoxError> {
        let weighted = Weighted::new(backend(name), Weight::new(weight)?);
        registry.send(Ok(Change::Insert(name, weighted)))?;
        Ok(())
    };
    announce("a", 3)?;
    announce("b", 1)?;
    summary.first = tokio::time::timeout(Duration::from_secs(5), first).await???;

    // 2. Weighted traffic.
    for i in 0..40 {
        *summary
            .before
            .entry(balance.clone().oneshot(i).await?)
            .or_default() += 1;
    }

    // 3. Membership changes while idle, applied by the discovery task alone.
    registry.send(Ok(Change::Remove("a")))?;
    announce("c", 2)?;
    let members = |pool: &Pool<BackendService<&'static str, Backend>, _>| -> Vec<&'static str> {
        pool.stats().iter().map(|s| *s.addr.key()).collect()
    };
    for _ in 0..100 {
        if members(&pool) == ["b", "c"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    summary.members_while_idle = members(&pool);

    // 4. Traffic over the new set.
    for i in 0..30 {
        *summary
            .after
            .entry(balance.clone().oneshot(i).await?)
            .or_default() += 1;
    }

    // 5. The registry goes away: the task ends.
    drop(registry);
    tokio::time::timeout(Duration::from_secs(5), discovery).await???;
    Ok(summary)
}
