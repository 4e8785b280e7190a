//! The outlier-detection pass of one health evaluation: the interval's rules (success
//! rate, failure percentage), ejections within the cap, and multipliers coming down. Run
//! by the [engine](super::engine) under the pool's writer lock, never on the pick path.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::engine::{TARGET, later, uneject};
use super::outlier::{Sample, failure_percentage_outliers, success_rate_outliers};
use super::{Ejection, OutlierDetection};
use crate::backend::{Backend, HealthCell, STREAK, TRIPPED};
use crate::rng::RandomSource;

/// One evaluation's outlier-detection work.
pub(super) struct OutlierPass<'a, A> {
    pub(super) config: &'a OutlierDetection,
    pub(super) rng: &'a RandomSource,
    pub(super) members: &'a [Backend<A>],
    pub(super) now: Instant,
    pub(super) now_ns: u64,
    /// How many members are ejected right now.
    pub(super) ejected: usize,
    pub(super) cap: usize,
}

impl<A> OutlierPass<'_, A> {
    fn cell(&self, index: usize) -> Option<&HealthCell> {
        self.members.get(index).map(|b| &b.state().health)
    }

    /// gRPC A50's interval: success rate, failure percentage, multipliers down.
    pub(super) fn interval(&mut self) {
        let samples: Vec<Sample> = self
            .members
            .iter()
            .enumerate()
            .filter_map(|(index, b)| {
                let state = b.state();
                let cell = &state.health;
                let (s, f) = (state.successes(), state.failures());
                let ds = s.saturating_sub(cell.base_successes.swap(s, Ordering::Relaxed));
                let df = f.saturating_sub(cell.base_failures.swap(f, Ordering::Relaxed));
                (!cell.is_ejected()).then_some(Sample {
                    index,
                    successes: ds,
                    total: ds.saturating_add(df),
                })
            })
            .collect();
        if let Some(rule) = &self.config.success_rate {
            for index in success_rate_outliers(rule, &samples) {
                self.eject(index, Ejection::SuccessRate);
            }
        }
        if let Some(rule) = &self.config.failure_percentage {
            for index in failure_percentage_outliers(rule, &samples) {
                self.eject(index, Ejection::FailurePercentage);
            }
        }
        for b in self.members {
            let cell = &b.state().health;
            if !cell.is_ejected() {
                // Only the writer changes the multiplier; a plain update is race-free.
                let k = cell.multiplier.load(Ordering::Relaxed);
                cell.multiplier
                    .store(k.saturating_sub(1), Ordering::Relaxed);
            }
        }
    }

    /// Ends the ejections whose time is up.
    pub(super) fn returns(&mut self) {
        for b in self.members {
            let cell = &b.state().health;
            let until = cell.ejected_until.load(Ordering::Relaxed);
            if until != 0 && until <= self.now_ns {
                uneject(cell);
                self.ejected = self.ejected.saturating_sub(1);
            }
        }
    }

    /// Ejects whoever reached the consecutive-failure threshold.
    pub(super) fn consecutive(&mut self) {
        let Some(threshold) = self.config.consecutive_failures else {
            return;
        };
        for index in 0..self.members.len() {
            // The crossing latched (a success may have reset the streak since), or a
            // streak still at the threshold (an ejection the cap put off).
            let reached = self.cell(index).is_some_and(|c| {
                // Cleared only when set: no write to every member's line at every
                // evaluation.
                let mut word = c.consecutive.load(Ordering::Relaxed);
                if word & TRIPPED != 0 {
                    word = c.consecutive.fetch_and(STREAK, Ordering::Relaxed);
                }
                !c.is_ejected()
                    && (word & TRIPPED != 0 || word & STREAK >= u64::from(threshold.get()))
            });
            if reached {
                self.eject(index, Ejection::ConsecutiveFailures);
            }
        }
    }

    /// Ejects the member at `index` if the cap, counted after the ejection, allows it.
    fn eject(&mut self, index: usize, kind: Ejection) {
        let Some(cell) = self.cell(index) else {
            return;
        };
        if cell.is_ejected() {
            return;
        }
        let beyond_cap = self.ejected + 1 > self.cap;
        if beyond_cap && kind == Ejection::ConsecutiveFailures && self.another_answers(index) {
            // A confirmed failure while another backend answers: the cap guards against
            // a broken network or health signal that fails everyone, which this is not.
            tracing::debug!(
                target: TARGET,
                backend = %self.members[index].id(),
                ejected = self.ejected,
                cap = self.cap,
                "ejecting beyond the ejection cap: consecutive failures while others answer"
            );
        } else if beyond_cap {
            tracing::debug!(
                target: TARGET,
                backend = %self.members[index].id(),
                reason = %kind,
                ejected = self.ejected,
                cap = self.cap,
                "ejection skipped: the ejection cap is reached"
            );
            return;
        }
        let k = cell
            .multiplier
            .load(Ordering::Relaxed)
            .saturating_add(1)
            .min(self.config.max_multiplier());
        let jitter_ns = u64::try_from(self.config.ejection_jitter.as_nanos()).unwrap_or(u64::MAX);
        // Uniform in 0..=jitter by multiply-shift, as `rng::below` but in u64.
        let jitter = ((u128::from(self.rng.next_u64()) * (u128::from(jitter_ns) + 1)) >> 64) as u64;
        let length = u64::try_from(self.config.ejection_time(k).as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(jitter);
        cell.multiplier.store(k, Ordering::Relaxed);
        cell.set_ejection_kind(kind);
        cell.ejected_at.store(self.now_ns, Ordering::Relaxed);
        cell.ejected_until
            .store(self.now_ns.saturating_add(length).max(1), Ordering::Relaxed);
        cell.ejections.fetch_add(1, Ordering::Relaxed);
        cell.consecutive.store(0, Ordering::Relaxed);
        self.ejected += 1;
        tracing::debug!(
            target: TARGET,
            backend = %self.members[index].id(),
            reason = %kind,
            multiplier = k,
            ejected_for = ?Duration::from_nanos(length),
            "backend ejected"
        );
    }

    /// Whether a member other than `index` answers: not ejected, its last outcome a
    /// success. Proof that the network and the caller work, so `index`'s failures are its own.
    fn another_answers(&self, index: usize) -> bool {
        self.members.iter().enumerate().any(|(j, b)| {
            let state = b.state();
            let cell = &state.health;
            j != index && !cell.is_ejected() && cell.streak() == 0 && state.successes() > 0
        })
    }

    /// When the set shrank under the ejected count, returns those closest to their return
    /// — statistical ejections first; a consecutive-failure ejection only while no other
    /// backend answers.
    pub(super) fn enforce_cap(&mut self) {
        if self.ejected <= self.cap {
            return;
        }
        let mut ejected: Vec<(bool, u64, usize)> = self
            .members
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let cell = &b.state().health;
                let until = cell.ejected_until.load(Ordering::Relaxed);
                let confirmed = cell.ejection() == Some(Ejection::ConsecutiveFailures)
                    && self.another_answers(i);
                (until != 0).then_some((confirmed, until, i))
            })
            .collect();
        ejected.sort_unstable();
        // Confirmed ejections stay; the others keep what room the cap leaves them.
        let confirmed = ejected.iter().filter(|e| e.0).count();
        let room = self.cap.saturating_sub(confirmed);
        let excess = (ejected.len() - confirmed).saturating_sub(room);
        if excess == 0 {
            return;
        }
        for &(_, _, index) in ejected.iter().take(excess) {
            if let Some(cell) = self.cell(index) {
                uneject(cell);
                tracing::debug!(
                    target: TARGET,
                    backend = %self.members[index].id(),
                    cap = self.cap,
                    "ejection ended early: the set shrank under the ejection cap"
                );
            }
        }
        self.ejected -= excess;
    }

    /// When the next ejection ends.
    pub(super) fn next_return(&self) -> Option<Instant> {
        self.members
            .iter()
            .map(|b| b.state().health.ejected_until.load(Ordering::Relaxed))
            .filter(|&until| until != 0)
            .min()
            .map(|until| {
                later(
                    self.now,
                    Duration::from_nanos(until.saturating_sub(self.now_ns)),
                )
            })
    }
}
