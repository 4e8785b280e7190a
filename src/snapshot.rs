//! [`Snapshot`]: an immutable view of a backend set.
//!
//! A snapshot holds every member with its id, address and weight, which of them are
//! eligible for traffic, their health verdicts and effective weights, and an id → index
//! map. Snapshots are published whole (see [`Pool`](crate::Pool)), so a picker never sees
//! a half-applied change; per-backend live state is shared with the members, not copied.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::backend::{Backend, BackendId, BackendState, BackendStats, DEFAULT_EWMA_DECAY, Weight};
use crate::clock::nanos_since_epoch;
use crate::error::MembershipError;
use crate::verdict::Verdict;

/// What health decided for one snapshot: each member's verdict, the eligible set, the
/// effective weights, and the panic state. Built by health's evaluation; a snapshot only
/// stores it.
#[derive(Debug)]
pub(crate) struct Eligibility {
    pub(crate) verdicts: Vec<Verdict>,
    pub(crate) eligible: Vec<bool>,
    pub(crate) effective: Vec<u32>,
    pub(crate) weight_scale: u32,
    /// `(healthy, in service, fail closed)` while the panic threshold is crossed.
    pub(crate) panic: Option<(usize, usize, bool)>,
}

/// An immutable view of a backend set: its members, their weights, and which are eligible.
///
/// Indices into [`backends`](Self::backends) are what pickers return. A snapshot never
/// changes; a change to the set publishes a new one.
///
/// # Examples
///
/// ```
/// use tower_lb::{Snapshot, Weight};
///
/// let snapshot = Snapshot::build([("a", Weight::ONE), ("b", Weight::new(3).unwrap())]).unwrap();
/// assert_eq!(snapshot.len(), 2);
/// assert_eq!(snapshot.total_weight(), 4);
/// ```
#[derive(Debug, Clone)]
pub struct Snapshot<A> {
    backends: Box<[Backend<A>]>,
    eligible: Box<[u32]>,
    eligible_mask: Box<[bool]>,
    verdicts: Box<[Verdict]>,
    effective: Box<[u32]>,
    weight_scale: u32,
    /// `(healthy, in service, fail closed)` while the panic threshold is crossed.
    panic: Option<(usize, usize, bool)>,
    total_weight: u64,
    uniform_weights: bool,
    version: u64,
    /// The version at which the members (ids, in order) last changed; health and weight
    /// changes keep it.
    members_version: u64,
}

impl<A> Snapshot<A> {
    /// A snapshot of the given members, all eligible and healthy, at their configured weights.
    pub(crate) fn from_members(backends: Vec<Backend<A>>, version: u64) -> Self {
        let n = backends.len();
        let effective = backends.iter().map(|b| b.weight().get()).collect();
        Self::assemble(
            backends,
            version,
            vec![true; n],
            vec![Verdict::Healthy; n],
            effective,
            1,
            None,
        )
    }

    /// A snapshot of the given members with health's verdicts, eligible set and weights.
    pub(crate) fn from_evaluation(
        backends: Vec<Backend<A>>,
        version: u64,
        eval: Eligibility,
    ) -> Self {
        Self::assemble(
            backends,
            version,
            eval.eligible,
            eval.verdicts,
            eval.effective,
            eval.weight_scale,
            eval.panic,
        )
    }

    fn assemble(
        backends: Vec<Backend<A>>,
        version: u64,
        mut eligible_mask: Vec<bool>,
        mut verdicts: Vec<Verdict>,
        mut effective: Vec<u32>,
        weight_scale: u32,
        panic: Option<(usize, usize, bool)>,
    ) -> Self {
        debug_assert!(
            backends.windows(2).all(|w| w[0].id() < w[1].id()),
            "members are kept in increasing id order"
        );
        let n = backends.len();
        // Health hands one entry per member; stay well-formed whatever it handed.
        eligible_mask.resize(n, false);
        verdicts.resize(n, Verdict::Healthy);
        effective.resize(n, 0);
        let eligible: Box<[u32]> = (0..n)
            .filter(|&i| eligible_mask[i])
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        let total_weight = eligible
            .iter()
            .map(|&i| u64::from(effective[i as usize]))
            .sum();
        let uniform_weights = eligible
            .windows(2)
            .all(|w| effective[w[0] as usize] == effective[w[1] as usize]);
        Snapshot {
            backends: backends.into_boxed_slice(),
            eligible,
            eligible_mask: eligible_mask.into_boxed_slice(),
            verdicts: verdicts.into_boxed_slice(),
            effective: effective.into_boxed_slice(),
            weight_scale,
            panic,
            total_weight,
            uniform_weights,
            version,
            members_version: version,
        }
    }

    /// The same snapshot, its members last changed at `version`.
    pub(crate) fn with_members_version(mut self, version: u64) -> Self {
        self.members_version = version;
        self
    }

    /// The version at which the members (their ids, in order) last changed: an index
    /// built over the members stays valid while this does not move.
    pub(crate) fn members_version(&self) -> u64 {
        self.members_version
    }

    /// Whether `other` has the same members with the same health, eligibility and weights.
    pub(crate) fn same_as(&self, other: &Snapshot<A>) -> bool {
        self.backends.len() == other.backends.len()
            && self
                .backends
                .iter()
                .zip(other.backends.iter())
                .all(|(a, b)| a.id() == b.id() && a.weight() == b.weight())
            && self.eligible_mask == other.eligible_mask
            && self.verdicts == other.verdicts
            && self.effective == other.effective
            && self.panic == other.panic
    }

    /// A standalone snapshot, for calling pickers directly without a [`Pool`](crate::Pool).
    ///
    /// Ids are assigned in order from 0. Fails on a duplicate address.
    pub fn build<I>(members: I) -> Result<Self, MembershipError>
    where
        I: IntoIterator<Item = (A, Weight)>,
        A: Eq + Hash,
    {
        Self::build_with_decay(members, DEFAULT_EWMA_DECAY)
    }

    pub(crate) fn build_with_decay<I>(members: I, decay: Duration) -> Result<Self, MembershipError>
    where
        I: IntoIterator<Item = (A, Weight)>,
        A: Eq + Hash,
    {
        let members: Vec<(A, Weight)> = members.into_iter().collect();
        let mut seen: HashMap<&A, usize> = HashMap::with_capacity(members.len());
        for (i, (addr, _)) in members.iter().enumerate() {
            if let Some(&first) = seen.get(addr) {
                return Err(MembershipError::Duplicate {
                    existing: BackendId::new(first as u64),
                });
            }
            seen.insert(addr, i);
        }
        drop(seen);
        let backends = members
            .into_iter()
            .enumerate()
            .map(|(i, (addr, weight))| {
                let state = Arc::new(BackendState::new(decay));
                Backend::new(BackendId::new(i as u64), addr, weight, state)
            })
            .collect();
        Ok(Self::from_members(backends, 0))
    }

    /// A copy of this snapshot in which the member at index `i` is eligible exactly when
    /// `eligible(i)` holds; members, weights, live state and version are kept.
    ///
    /// For driving pickers directly (tests, simulations, a custom health source); a
    /// [`Pool`](crate::Pool) publishes eligibility changes itself.
    ///
    /// ```
    /// use tower_lb::{Snapshot, Weight};
    ///
    /// let all = Snapshot::build([("a", Weight::ONE), ("b", Weight::ONE)]).unwrap();
    /// let b_down = all.with_eligibility(|i| i != 1);
    /// assert_eq!(b_down.eligible(), [0]);
    /// assert_eq!(b_down.total_weight(), 1);
    /// ```
    pub fn with_eligibility(&self, eligible: impl Fn(usize) -> bool) -> Self
    where
        A: Clone,
    {
        let mut next = Self::from_members(self.backends.to_vec(), self.version)
            .with_members_version(self.members_version);
        let mask: Box<[bool]> = (0..next.backends.len()).map(&eligible).collect();
        next.eligible = (0..next.backends.len())
            .filter(|&i| mask[i])
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        next.total_weight = next
            .eligible
            .iter()
            .map(|&i| u64::from(next.effective_weight(i as usize)))
            .sum();
        next.eligible_mask = mask;
        next
    }

    /// Every member, eligible or not, in insertion order.
    #[inline]
    pub fn backends(&self) -> &[Backend<A>] {
        &self.backends
    }

    /// The member at `index`, if any.
    #[inline]
    pub fn get(&self, index: usize) -> Option<&Backend<A>> {
        self.backends.get(index)
    }

    /// The index of the member with this id: a binary search, O(log n) — members are in
    /// insertion order, and ids are assigned in increasing order.
    #[inline]
    pub fn index_of(&self, id: BackendId) -> Option<usize> {
        self.backends.binary_search_by_key(&id, Backend::id).ok()
    }

    /// How many members the snapshot holds.
    #[inline]
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether the snapshot has no members.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// Indices of the members that may receive traffic, ascending.
    #[inline]
    pub fn eligible(&self) -> &[u32] {
        &self.eligible
    }

    /// Whether the member at `index` may receive traffic.
    #[inline]
    pub fn is_eligible(&self, index: usize) -> bool {
        self.eligible_mask.get(index).copied().unwrap_or(false)
    }

    /// The weight a picker should use for the member at `index` (0 for no such member):
    /// the configured weight, ramped down while the member is in
    /// [slow start](crate::health::SlowStart) and then multiplied, like every member's,
    /// by [`weight_scale`](Self::weight_scale).
    #[inline]
    pub fn effective_weight(&self, index: usize) -> u32 {
        self.effective.get(index).copied().unwrap_or(0)
    }

    /// The common factor of this snapshot's effective weights: 1, unless a slow-start ramp
    /// runs, when weights are scaled up so that a ramp moves in steps of 1%.
    #[inline]
    pub fn weight_scale(&self) -> u32 {
        self.weight_scale
    }

    /// The sum of the eligible members' effective weights.
    #[inline]
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// Whether every eligible member has the same effective weight (pickers take a faster
    /// path).
    #[inline]
    pub fn uniform_weights(&self) -> bool {
        self.uniform_weights
    }

    /// The health verdict of the member at `index` when this snapshot was published.
    #[inline]
    pub fn verdict(&self, index: usize) -> Option<&Verdict> {
        self.verdicts.get(index)
    }

    /// Whether the member at `index` was healthy when this snapshot was published. Outside
    /// panic mode, exactly the healthy members are eligible.
    #[inline]
    pub fn is_healthy(&self, index: usize) -> bool {
        self.verdicts.get(index).is_some_and(Verdict::is_healthy)
    }

    /// Whether the [panic threshold](crate::health::PanicThreshold) was crossed: the
    /// eligible set is then every member in service (fail open) or empty (fail closed).
    pub fn is_panicking(&self) -> bool {
        self.panic.is_some()
    }

    /// `(healthy, in service)` while the panic threshold is crossed.
    pub(crate) fn panic_counts(&self) -> Option<(usize, usize)> {
        self.panic.map(|(healthy, total, _)| (healthy, total))
    }

    /// A number that grows with every published change of the set.
    #[inline]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The reason no backend can be picked, for a picker that found none.
    pub fn empty_error(&self) -> crate::PickError {
        if let Some((healthy, total, true)) = self.panic {
            crate::PickError::PanicThreshold { healthy, total }
        } else if self.backends.is_empty() {
            crate::PickError::NoBackends
        } else {
            crate::PickError::NoEligible {
                total: self.backends.len(),
            }
        }
    }
}

impl<A: Clone> Snapshot<A> {
    /// Reads the member at `index`; `now` is the latency clock, `health_now` the pool's.
    pub(crate) fn stats(
        &self,
        index: usize,
        now: Instant,
        health_now: Instant,
    ) -> Option<BackendStats<A>> {
        let snapshot = self;
        let b = snapshot.get(index)?;
        let s = b.state();
        let h = &s.health;
        let until = h.ejected_until.load(Ordering::Relaxed);
        let now_ns = nanos_since_epoch(health_now);
        let effective_weight = snapshot.effective_weight(index);
        let full = f64::from(b.weight().get()) * f64::from(snapshot.weight_scale());
        let ramping =
            h.ramp_start.load(Ordering::Relaxed) != 0 && f64::from(effective_weight) < full;
        Some(BackendStats {
            id: b.id(),
            addr: b.addr().clone(),
            weight: b.weight(),
            eligible: snapshot.is_eligible(index),
            in_flight: s.in_flight(),
            picks: s.picks(),
            successes: s.successes(),
            failures: s.failures(),
            ewma: s.rtt_estimate(now),
            health: snapshot.verdict(index).cloned().unwrap_or_default(),
            effective_weight,
            ramp: ramping.then(|| f64::from(effective_weight) / full),
            ejections: h.ejections.load(Ordering::Relaxed),
            returns_in: (until != 0).then(|| Duration::from_nanos(until.saturating_sub(now_ns))),
            probes: h.probe.lock().completed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_address_is_refused() {
        let err = Snapshot::build([("a", Weight::ONE), ("a", Weight::ONE)]).unwrap_err();
        assert_eq!(
            err,
            MembershipError::Duplicate {
                existing: BackendId::new(0)
            }
        );
    }
}
