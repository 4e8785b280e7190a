//! [`ServerLoad`]: weights from the backends' own load reports (gRPC's weighted round
//! robin, gRFC A58), for balancers that cannot see each other's load.
//!
//! Every response may carry an [ORCA load report](crate::orca) — the backend's
//! utilisation, requests/s and errors/s. Its weight is
//!
//! > weight = qps ÷ (utilization + (eps ÷ qps) × error_utilization_penalty)
//!
//! — requests/s served per unit of utilisation, i.e. the backend's capacity as it
//! measures it, less a penalty for errors. Every client instance computes the same
//! weights from the same reports, so independent balancers agree on how busy each backend
//! is, where in-flight counts only show their own requests.
//!
//! gRFC A58's rules, with its defaults ([`ServerLoad::new`]):
//!
//! - a report with zero qps or zero utilisation is ignored;
//! - **blackout period** (10 s): a backend's weight counts only once it has reported for
//!   that long without a gap, so one early report does not decide its share;
//! - **weight expiration period** (3 min): a backend whose last report is older has no
//!   weight again (and a new blackout);
//! - **fallback**: backends without a weight get the mean of the others'; with fewer than
//!   two weighted backends, all are equal (round robin's shares);
//! - **weight update period** (1 s): the weights are recomputed at most this often.
//!
//! The pick draws from an alias table over the weights (O(1), like
//! [`WeightedRandom`](crate::WeightedRandom)); A58 uses a deterministic stride scheduler
//! for the same shares. The table is rebuilt by whichever pick first finds it older than
//! the update period (one thread, behind a `try_lock`; the others pick from the current
//! one), so no timer task is needed. Feed reports with [`ServerLoad::record`]: a clone of
//! the picker shares its reports, so keep one beside the pool, or use
//! [`Pool::picker`](crate::Pool::picker).
//!
//! Source: gRFC A58 "Weighted Round Robin LB Policy" (gRPC, 2023), and its
//! implementation in grpc-go's `balancer/weightedroundrobin`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

use super::weighted_random::AliasTable;
use super::{PickContext, Picker, eligible_at};
use crate::backend::BackendId;
use crate::clock::{nanos_since_epoch, now_nanos};
use crate::error::ConfigError;
use crate::orca::LoadReport;
use crate::rng::RandomSource;
use crate::snapshot::Snapshot;

/// gRFC A58's default blackout period.
pub const DEFAULT_BLACKOUT_PERIOD: Duration = Duration::from_secs(10);
/// gRFC A58's default weight expiration period.
pub const DEFAULT_WEIGHT_EXPIRATION_PERIOD: Duration = Duration::from_secs(180);
/// gRFC A58's default weight update period.
pub const DEFAULT_WEIGHT_UPDATE_PERIOD: Duration = Duration::from_secs(1);
/// gRFC A58's default error utilisation penalty.
pub const DEFAULT_ERROR_UTILIZATION_PENALTY: f64 = 1.0;

/// The largest integer weight in the alias table (weights are scaled to it).
const SCALE: f64 = 1_000_000.0;
/// `built_at` before the first build.
const NEVER: u64 = u64::MAX;

/// Weights from server-reported load (gRFC A58). See the [module docs](self).
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use tower_lb::orca::LoadReport;
/// use tower_lb::{PickContext, Pool, ServerLoad, Weight};
///
/// let load = ServerLoad::with_seed(1).blackout_period(Duration::ZERO);
/// let pool = Pool::new(load.clone());
/// let a = pool.insert("a", Weight::ONE)?;
/// let b = pool.insert("b", Weight::ONE)?;
/// let now = Instant::now();
/// // a serves 300 requests/s at 50% CPU, b 100 requests/s at 50%: a has 3× the capacity.
/// load.record_at(a, &LoadReport::new(0.5, 300.0, 0.0), now);
/// load.record_at(b, &LoadReport::new(0.5, 100.0, 0.0), now);
/// let ctx = PickContext::new().with_now(now);
/// let to_a = (0..4000).filter(|_| pool.pick(&ctx).unwrap().id() == a).count();
/// assert!((2800..3200).contains(&to_a));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ServerLoad {
    reports: Arc<Mutex<HashMap<BackendId, Entry>>>,
    rng: RandomSource,
    blackout: u64,
    expiration: u64,
    update: u64,
    penalty: f64,
}

/// One backend's latest weight and its history, in nanoseconds since the crate's epoch.
#[derive(Debug, Clone, Copy)]
struct Entry {
    weight: f64,
    non_empty_since: Option<u64>,
    last_update: u64,
}

impl ServerLoad {
    /// gRFC A58's defaults, drawing from a per-thread generator.
    pub fn new() -> Self {
        ServerLoad {
            reports: Arc::default(),
            rng: RandomSource::Thread,
            blackout: DEFAULT_BLACKOUT_PERIOD.as_nanos() as u64,
            expiration: DEFAULT_WEIGHT_EXPIRATION_PERIOD.as_nanos() as u64,
            update: DEFAULT_WEIGHT_UPDATE_PERIOD.as_nanos() as u64,
            penalty: DEFAULT_ERROR_UTILIZATION_PENALTY,
        }
    }

    /// Defaults, with draws reproducible from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        ServerLoad {
            rng: RandomSource::seeded(seed),
            ..ServerLoad::new()
        }
    }

    /// How long a backend must report before its weight counts (default 10 s).
    pub fn blackout_period(mut self, period: Duration) -> Self {
        self.blackout = nanos(period);
        self
    }

    /// How old a backend's last report may be before its weight expires (default 3 min).
    pub fn weight_expiration_period(mut self, period: Duration) -> Self {
        self.expiration = nanos(period);
        self
    }

    /// How often the weights are recomputed, at most (default 1 s).
    pub fn weight_update_period(mut self, period: Duration) -> Self {
        self.update = nanos(period);
        self
    }

    /// The multiplier of eps ÷ qps added to utilisation (default 1). Fails on a
    /// negative, infinite or NaN value.
    pub fn error_utilization_penalty(mut self, penalty: f64) -> Result<Self, ConfigError> {
        if !(penalty.is_finite() && penalty >= 0.0) {
            return Err(ConfigError::ErrorUtilizationPenalty { penalty });
        }
        self.penalty = penalty;
        Ok(self)
    }

    /// Records a load report that backend `id` sent with a response just now.
    pub fn record(&self, id: BackendId, report: &LoadReport) {
        self.record_nanos(id, report, now_nanos());
    }

    /// Records a load report received at `at` (a clock of the caller's, the one its
    /// picks pass through [`PickContext::with_now`]).
    pub fn record_at(&self, id: BackendId, report: &LoadReport, at: Instant) {
        self.record_nanos(id, report, nanos_since_epoch(at));
    }

    fn record_nanos(&self, id: BackendId, report: &LoadReport, now: u64) {
        let (Some(qps), Some(utilization)) = (report.rps_fractional, report.utilization()) else {
            return;
        };
        if qps <= 0.0 || utilization <= 0.0 {
            return; // A58: an empty report is ignored.
        }
        let eps = report.eps.unwrap_or(0.0);
        let weight = qps / (utilization + eps / qps * self.penalty);
        if !weight.is_finite() || weight <= 0.0 {
            return;
        }
        let mut reports = self.reports.lock();
        let entry = reports.entry(id).or_insert(Entry {
            weight,
            non_empty_since: None,
            last_update: now,
        });
        // A backend that had gone quiet past expiration starts a new blackout.
        if now.saturating_sub(entry.last_update) >= self.expiration {
            entry.non_empty_since = None;
        }
        entry.weight = weight;
        entry.non_empty_since.get_or_insert(now);
        entry.last_update = now;
    }

    /// Backend `id`'s weight in effect at `at`: `None` while it has no report, is in its
    /// blackout period or its last report has expired.
    pub fn weight_at(&self, id: BackendId, at: Instant) -> Option<f64> {
        let now = nanos_since_epoch(at);
        self.reports
            .lock()
            .get(&id)
            .and_then(|e| self.effective(e, now))
    }

    fn effective(&self, e: &Entry, now: u64) -> Option<f64> {
        if now.saturating_sub(e.last_update) >= self.expiration {
            return None;
        }
        let since = e.non_empty_since?;
        (now.saturating_sub(since) >= self.blackout).then_some(e.weight)
    }

    /// The alias table over `ids` at `now`, or `None` for equal shares (fewer than two
    /// weighted backends).
    fn build(&self, ids: &[BackendId], now: u64) -> Option<AliasTable> {
        let weights: Vec<Option<f64>> = {
            let reports = self.reports.lock();
            ids.iter()
                .map(|id| reports.get(id).and_then(|e| self.effective(e, now)))
                .collect()
        };
        let known: Vec<f64> = weights.iter().flatten().copied().collect();
        if known.len() < 2 {
            return None;
        }
        let mean = known.iter().sum::<f64>() / known.len() as f64;
        let max = known.iter().copied().fold(0.0, f64::max);
        let scaled: Vec<u64> = weights
            .iter()
            .map(|w| ((w.unwrap_or(mean) / max * SCALE) as u64).max(1))
            .collect();
        Some(AliasTable::new(&scaled))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Default for ServerLoad {
    fn default() -> Self {
        ServerLoad::new()
    }
}

/// [`ServerLoad`]'s table: the eligible backends' ids and the current weights, rebuilt
/// every weight update period. Built by [`Picker::prepare`]; opaque.
#[derive(Debug)]
pub struct ServerLoadTable {
    ids: Vec<BackendId>,
    weights: ArcSwapOption<AliasTable>,
    built_at: AtomicU64,
    rebuilding: Mutex<()>,
}

impl<A> Picker<A> for ServerLoad {
    type Table = ServerLoadTable;

    fn prepare(&self, snapshot: &Snapshot<A>, _: Option<&ServerLoadTable>) -> ServerLoadTable {
        let ids = snapshot
            .eligible()
            .iter()
            .filter_map(|&i| snapshot.get(i as usize).map(|b| b.id()))
            .collect();
        ServerLoadTable {
            ids,
            weights: ArcSwapOption::empty(),
            built_at: AtomicU64::new(NEVER),
            rebuilding: Mutex::new(()),
        }
    }

    fn pick(
        &self,
        table: &ServerLoadTable,
        snapshot: &Snapshot<A>,
        ctx: &PickContext,
    ) -> Option<usize> {
        let n = snapshot.eligible().len();
        match n {
            0 => return None,
            1 => return eligible_at(snapshot, 0),
            _ => {}
        }
        if table.ids.len() != n {
            // A table from another snapshot: equal shares over this one.
            return eligible_at(snapshot, self.rng.below(n));
        }
        let now = ctx.now_nanos().unwrap_or_else(now_nanos);
        // Relaxed: the stamp only decides whether to rebuild; the table itself is
        // published through the ArcSwap.
        let built = table.built_at.load(Ordering::Relaxed);
        if (built == NEVER || now.saturating_sub(built) >= self.update)
            && let Some(_one) = table.rebuilding.try_lock()
        {
            table
                .weights
                .store(self.build(&table.ids, now).map(Arc::new));
            table.built_at.store(now, Ordering::Relaxed);
        }
        let slot = match &*table.weights.load() {
            Some(alias) if alias.len() == n => alias.sample(self.rng.next_u64()),
            _ => self.rng.below(n),
        };
        eligible_at(snapshot, slot)
    }
}
