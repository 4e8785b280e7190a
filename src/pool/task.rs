//! The background health task: one per pool, on tokio.
//!
//! It runs [`Pool::tick`] whenever health has time-driven work (an ejection ending, an
//! outlier interval, a slow-start step) or something signals it (a consecutive-failure
//! threshold reached through an [`InFlight`](crate::InFlight) guard, a membership
//! change), and — when given a probe — probes every backend on its schedule, each probe
//! in a task of its own so that a slow backend delays no other. It holds only a weak
//! reference to the pool: it stops as soon as the pool is dropped, and it never takes a
//! lock that picks take (picks take none).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::{Pool, WeakPool};
use crate::backend::BackendId;
use crate::backend::HealthShared;
use crate::error::SpawnError;
use crate::health::probe::{Probe, ProbeConfig};
use crate::pick::Picker;
use crate::rng::RandomSource;

/// A handle on a pool's background health task.
///
/// Dropping the handle leaves the task running; it stops by itself when the pool is
/// dropped, or when [`abort`](Self::abort)ed. Awaiting the handle waits for it to stop.
#[derive(Debug)]
pub struct HealthTask {
    handle: JoinHandle<()>,
}

impl HealthTask {
    /// Stops the task (probes in flight are cancelled).
    pub fn abort(&self) {
        self.handle.abort();
    }

    /// Whether the task has stopped.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

impl Future for HealthTask {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A cancelled or panicked task has stopped just the same.
        Pin::new(&mut self.handle).poll(cx).map(drop)
    }
}

impl<A, P> Pool<A, P>
where
    A: Clone + Send + Sync + 'static,
    P: Picker<A> + 'static,
    P::Table: 'static,
{
    /// Spawns the background health task without probes: it ticks health (ejections
    /// ending, outlier intervals, slow-start ramps, guard-signalled ejections) on time.
    ///
    /// Fails outside a tokio runtime, or when the pool already has a health task.
    pub fn spawn_health(&self) -> Result<HealthTask, SpawnError> {
        self.spawn_task(None)
    }

    /// Spawns the background health task with active probes: every backend is probed
    /// with `probe` as `config` says, and health ticks on time as with
    /// [`spawn_health`](Self::spawn_health).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::net::SocketAddr;
    /// use tower_lb::health::{ProbeConfig, TcpProbe};
    /// use tower_lb::{Pool, PowerOfTwoChoices, Weight};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool: Pool<SocketAddr, _> = Pool::new(PowerOfTwoChoices::new());
    /// pool.insert("10.0.0.1:8080".parse()?, Weight::ONE)?;
    /// let _task = pool.spawn_health_probes(TcpProbe::new(), ProbeConfig::new())?;
    /// # Ok(()) }
    /// ```
    pub fn spawn_health_probes(
        &self,
        probe: impl Probe<A>,
        config: ProbeConfig,
    ) -> Result<HealthTask, SpawnError> {
        config.check()?;
        let rng = config
            .seed
            .map_or(RandomSource::Thread, RandomSource::seeded);
        self.spawn_task(Some(Probing {
            probe: Arc::new(probe),
            config,
            rng,
        }))
    }

    fn spawn_task(&self, probing: Option<Probing<A>>) -> Result<HealthTask, SpawnError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SpawnError::NoRuntime)?;
        let shared = Arc::clone(self.health_shared());
        // AcqRel: the flag guards the one-task rule; the winner's later writes need no
        // ordering through it, but a loser must see the winner's claim.
        if shared
            .task_running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(SpawnError::AlreadyRunning);
        }
        let weak = self.downgrade();
        let running = Running(Arc::clone(&shared));
        let handle = runtime.spawn(async move {
            let _running = running;
            run(weak, shared, probing).await;
        });
        Ok(HealthTask { handle })
    }
}

/// Clears the pool's "a task runs" flag when the task ends, however it ends.
struct Running(Arc<HealthShared>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.task_running.store(false, Ordering::Release);
    }
}

struct Probing<A> {
    probe: Arc<dyn Probe<A>>,
    config: ProbeConfig,
    rng: RandomSource,
}

/// One backend's place in the probe schedule.
struct Slot<A> {
    addr: A,
    /// When the next probe is due; `None` while one runs.
    due: Option<Instant>,
}

/// A finished probe: the backend, when it began (tokio's clock, for the schedule; the
/// pool's health clock, for ending ejections) and its result.
type ProbeResult = (
    BackendId,
    Instant,
    std::time::Instant,
    Result<(), std::sync::Arc<str>>,
);

async fn run<A, P>(weak: WeakPool<A, P>, shared: Arc<HealthShared>, probing: Option<Probing<A>>)
where
    A: Clone + Send + Sync + 'static,
    P: Picker<A> + 'static,
{
    let mut slots: HashMap<BackendId, Slot<A>> = HashMap::new();
    let mut running: JoinSet<ProbeResult> = JoinSet::new();
    // Which backend each probe task checks, to reschedule it even if the task panics.
    let mut probing_ids: HashMap<tokio::task::Id, BackendId> = HashMap::new();
    let mut seen_version = None;
    let mut tick_due: Option<Instant> = None;
    let mut woken = true;
    loop {
        // The strong reference lives only in this block, never across an await.
        {
            let Some(pool) = weak.upgrade() else {
                return;
            };
            let now = Instant::now();
            if woken || tick_due.is_some_and(|due| due <= now) {
                woken = false;
                tick_due = pool.tick_from(true).map(Instant::from_std);
            }
            if let Some(probing) = &probing {
                let prepared = pool.snapshot();
                let snapshot = prepared.snapshot();
                if seen_version != Some(snapshot.version()) {
                    seen_version = Some(snapshot.version());
                    slots.retain(|id, _| snapshot.index_of(*id).is_some());
                    for backend in snapshot.backends() {
                        slots.entry(backend.id()).or_insert_with(|| Slot {
                            addr: backend.addr().clone(),
                            due: Some(now),
                        });
                    }
                }
                let began = pool.now();
                for (&id, slot) in slots.iter_mut() {
                    if slot.due.is_some_and(|due| due <= now) {
                        slot.due = None;
                        let probe = probing.probe.probe(&slot.addr);
                        let timeout = probing.config.timeout;
                        let task = running.spawn(async move {
                            let result = match tokio::time::timeout(timeout, probe).await {
                                Ok(Ok(())) => Ok(()),
                                Ok(Err(e)) => Err(e.into_message()),
                                Err(_) => Err(format!("timed out after {timeout:?}").into()),
                            };
                            (id, now, began, result)
                        });
                        probing_ids.insert(task.id(), id);
                    }
                }
            }
        }

        let next_probe = slots.values().filter_map(|s| s.due).min();
        let wake_at = match (tick_due, next_probe) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            _ = shared.wake.notified() => woken = true,
            Some(joined) = running.join_next(), if !running.is_empty() => {
                let now = Instant::now();
                let (id, started, began, result) = match joined {
                    Ok((id, started, began, result)) => (id, started, began, Some(result)),
                    // A probe that panicked (a user probe's bug) proves nothing either
                    // way; its backend is probed again next round.
                    Err(e) => match probing_ids.get(&e.id()) {
                        Some(&id) => (id, now, std::time::Instant::now(), None),
                        None => continue,
                    },
                };
                probing_ids.retain(|_, b| *b != id);
                let Some(pool) = weak.upgrade() else {
                    return;
                };
                if let (Some(probing), Some(slot)) = (&probing, slots.get_mut(&id)) {
                    let config = &probing.config;
                    if let Some(result) = result {
                        pool.record_probe(
                            id,
                            result,
                            began,
                            config.rise,
                            config.fall,
                        );
                        // A flip may start a slow-start ramp: recompute the next tick.
                        woken = true;
                    }
                    slot.due = Some(later(started, config.next_delay(&probing.rng)));
                }
            }
            _ = sleep_until(wake_at) => {}
        }
    }
}

/// `at + by`, or as late as representable.
fn later(at: Instant, by: std::time::Duration) -> Instant {
    at.checked_add(by)
        .or_else(|| at.checked_add(std::time::Duration::from_secs(86_400 * 365 * 30)))
        .unwrap_or(at)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
