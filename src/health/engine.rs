//! The evaluation that turns per-backend health state into a snapshot's eligible set and
//! effective weights. It runs on the change path only, under the pool's writer lock:
//! when membership changes, on [`Pool::tick`](crate::Pool::tick), and when the admin
//! switch or a probe changes a backend.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{HealthSource, OutlierDetection, PanicMode, PanicThreshold, SlowStart, Verdict};
use crate::backend::{Backend, HealthCell};
use crate::clock::nanos_since_epoch;
use crate::rng::RandomSource;
use crate::snapshot::Eligibility;

use super::ejection::OutlierPass;

/// Where health events go.
pub(crate) const TARGET: &str = "tower_lb::health";

/// The largest factor effective weights are scaled by while a ramp runs.
pub(crate) const MAX_WEIGHT_SCALE: u32 = 100;

/// A pool's health settings.
#[derive(Debug, Clone, Default)]
pub(crate) struct HealthConfig {
    pub(crate) outlier: Option<OutlierDetection>,
    pub(crate) panic: PanicThreshold,
    pub(crate) slow_start: Option<SlowStart>,
}

/// What an evaluation gives: the snapshot's eligibility, and when health next has
/// time-driven work (an interval, a return, a ramp step).
#[derive(Debug)]
pub(crate) struct Evaluation {
    pub(crate) eligibility: Eligibility,
    pub(crate) next: Option<Instant>,
}

/// The writer-side health machinery of one pool.
pub(crate) struct Engine<A> {
    pub(crate) config: HealthConfig,
    sources: Vec<Box<dyn HealthSource<A>>>,
    rng: RandomSource,
    next_interval: Option<Instant>,
    panicking: bool,
}

impl<A> Engine<A> {
    pub(crate) fn new(config: HealthConfig, seed: Option<u64>) -> Self {
        Engine {
            config,
            sources: Vec::new(),
            rng: seed.map_or(RandomSource::Thread, RandomSource::seeded),
            next_interval: None,
            panicking: false,
        }
    }

    pub(crate) fn add_source(&mut self, source: Box<dyn HealthSource<A>>) {
        self.sources.push(source);
    }

    /// Applies time-driven outlier changes, then computes every member's verdict, the
    /// eligible set and the effective weights at `now`, emitting an event per transition.
    pub(crate) fn evaluate(&mut self, members: &[Backend<A>], now: Instant) -> Evaluation {
        let now_ns = nanos_since_epoch(now).max(1);
        let mut next: Option<Instant> = None;
        if let Some(outlier) = &self.config.outlier {
            let mut pass = OutlierPass {
                config: outlier,
                rng: &self.rng,
                members,
                now,
                now_ns,
                ejected: members
                    .iter()
                    .filter(|b| b.state().health.is_ejected())
                    .count(),
                cap: outlier.ejection_cap(members.len()),
            };
            let due = *self
                .next_interval
                .get_or_insert(later(now, outlier.interval));
            if now >= due {
                pass.interval();
                let following = later(due, outlier.interval);
                self.next_interval = Some(if following > now {
                    following
                } else {
                    later(now, outlier.interval)
                });
            }
            pass.returns();
            pass.consecutive();
            pass.enforce_cap();
            next = earliest(next, self.next_interval);
            next = earliest(next, pass.next_return());
        }

        let slow_start = self.config.slow_start;
        let mut verdicts = Vec::with_capacity(members.len());
        let mut factors = Vec::with_capacity(members.len());
        for backend in members {
            let cell = &backend.state().health;
            let mut verdict = cell
                .admin_verdict()
                .combine(cell.outlier_verdict())
                .combine(cell.probe_verdict());
            for source in &self.sources {
                verdict = verdict.combine(source.verdict(backend, now));
            }
            transition(backend, cell, &verdict, slow_start.is_some(), now_ns);
            factors.push(ramp_factor(cell, slow_start.as_ref(), now_ns));
            verdicts.push(verdict);
        }

        // The panic threshold (see `health::panic` for the decision table): while any
        // backend is healthy, a backend whose failure is confirmed is out of service —
        // neither counted nor routed to in panic; with none healthy, every backend in
        // service counts and fail-open spreads over all of them.
        let healthy = verdicts.iter().filter(|v| v.is_healthy()).count();
        let confirmed_out = |v: &Verdict| healthy > 0 && v.is_confirmed_failure();
        let in_service = verdicts
            .iter()
            .filter(|v| !v.is_draining() && !confirmed_out(v))
            .count();
        let threshold = self.config.panic;
        let crossed = threshold.is_crossed(healthy, in_service);
        let fail_closed = threshold.panic_mode() == PanicMode::FailClosed;
        self.panic_event(crossed, healthy, in_service, threshold);
        let eligible = verdicts
            .iter()
            .map(|v| match (crossed, fail_closed) {
                (false, _) => v.is_healthy(),
                (true, false) => !v.is_draining() && !confirmed_out(v),
                (true, true) => false,
            })
            .collect();

        let ramping = factors.iter().any(|&f| f < 1.0);
        let max_weight = members.iter().map(|b| b.weight().get()).max().unwrap_or(1);
        let weight_scale = if ramping {
            (u32::MAX / max_weight).clamp(1, MAX_WEIGHT_SCALE)
        } else {
            1
        };
        let effective = members
            .iter()
            .zip(&factors)
            .map(|(b, &f)| {
                // `weight × scale` fits: the scale is at most u32::MAX / max weight.
                let full = b.weight().get().saturating_mul(weight_scale);
                if f >= 1.0 {
                    full
                } else {
                    ((f64::from(full) * f).round() as u32).clamp(1, full)
                }
            })
            .collect();
        if let (true, Some(ramp)) = (ramping, slow_start) {
            next = earliest(next, Some(later(now, ramp.interval())));
        }

        Evaluation {
            eligibility: Eligibility {
                verdicts,
                eligible,
                effective,
                weight_scale,
                panic: crossed.then_some((healthy, in_service, fail_closed)),
            },
            next,
        }
    }

    fn panic_event(&mut self, crossed: bool, healthy: usize, total: usize, t: PanicThreshold) {
        if crossed == self.panicking {
            return;
        }
        self.panicking = crossed;
        if crossed {
            tracing::warn!(
                target: TARGET,
                healthy,
                total,
                threshold_percent = t.percent(),
                mode = ?t.panic_mode(),
                "panic threshold crossed: too few healthy backends"
            );
        } else {
            tracing::info!(
                target: TARGET,
                healthy,
                total,
                threshold_percent = t.percent(),
                "panic threshold cleared: routing to healthy backends only"
            );
        }
    }
}

/// Records `verdict` as the backend's published one; on a change, emits the transition
/// event and starts or stops the slow-start ramp.
fn transition<A>(
    backend: &Backend<A>,
    cell: &HealthCell,
    verdict: &Verdict,
    slow_start: bool,
    now_ns: u64,
) {
    let mut published = cell.published.lock();
    if published.as_ref() == Some(verdict) {
        return;
    }
    let was_healthy = published.as_ref().is_some_and(Verdict::is_healthy);
    if slow_start && verdict.is_healthy() && !was_healthy {
        cell.ramp_start.store(now_ns, Ordering::Relaxed);
    }
    if !verdict.is_healthy() {
        cell.ramp_start.store(0, Ordering::Relaxed);
    }
    match published.as_ref() {
        None if verdict.is_healthy() => {}
        None => tracing::info!(
            target: TARGET,
            backend = %backend.id(),
            from = "new",
            to = %verdict,
            reason = %verdict.reason().map(ToString::to_string).unwrap_or_default(),
            "backend health changed"
        ),
        Some(old) => {
            // A return to health is explained by what it returns from.
            let reason = verdict.reason().or(old.reason());
            tracing::info!(
                target: TARGET,
                backend = %backend.id(),
                from = %old,
                to = %verdict,
                reason = %reason.map(ToString::to_string).unwrap_or_default(),
                "backend health changed"
            );
        }
    }
    *published = Some(verdict.clone());
}

/// The backend's slow-start factor now; ends the ramp when its window is over.
fn ramp_factor(cell: &HealthCell, slow_start: Option<&SlowStart>, now_ns: u64) -> f64 {
    let Some(ramp) = slow_start else {
        return 1.0;
    };
    let start = cell.ramp_start.load(Ordering::Relaxed);
    if start == 0 {
        return 1.0;
    }
    let elapsed = now_ns.saturating_sub(start);
    if ramp.factor(Duration::from_nanos(elapsed)) >= 1.0 {
        cell.ramp_start.store(0, Ordering::Relaxed);
        return 1.0;
    }
    // The ramp moves in steps of the update interval: between two steps the weights do
    // not change, so a tick in between publishes nothing (at most one publication per
    // interval, however often `tick` runs).
    let step = u64::try_from(ramp.interval().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    ramp.factor(Duration::from_nanos(elapsed - elapsed % step))
}

/// `at + by`, or as late as representable: durations come from the user's settings.
pub(crate) fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by)
        .or_else(|| at.checked_add(Duration::from_secs(86_400 * 365 * 30)))
        .unwrap_or(at)
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Ends a backend's ejection: a fresh start, where failures of requests from before
/// it (still in flight during the ejection) do not count, whether they made a run or
/// tripped the threshold (one word holds both).
pub(crate) fn uneject(cell: &HealthCell) {
    cell.ejected_until.store(0, Ordering::Relaxed);
    cell.ejected_at.store(0, Ordering::Relaxed);
    cell.consecutive.store(0, Ordering::Relaxed);
}
