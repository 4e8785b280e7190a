//! The [`Picker`] trait and the strategies that implement it.
//!
//! A picker chooses one backend of a [`Snapshot`] for one request. Picking is split in
//! two, after the two speeds of a load balancer:
//!
//! - [`Picker::prepare`] runs on the *change path*, once per published snapshot: it
//!   builds whatever the strategy needs (a weighted schedule, an alias table, a hash
//!   table) so that picking is cheap;
//! - [`Picker::pick`] runs on the *hot path*, once per request, from many threads: it
//!   takes `&self`, touches only atomics, allocates nothing, takes no lock, and returns
//!   `None` rather than panicking when no backend can be chosen.
//!
//! [`Pool`](crate::Pool) calls both for you; custom code can call them directly:
//!
//! ```
//! use tower_lb::{PickContext, Picker, RoundRobin, Snapshot, Weight};
//!
//! let snapshot = Snapshot::build([("10.0.0.1:80", Weight::ONE), ("10.0.0.2:80", Weight::ONE)])?;
//! let picker = RoundRobin::new();
//! let table = picker.prepare(&snapshot, None);
//! let first = picker.pick(&table, &snapshot, &PickContext::new()).unwrap();
//! let second = picker.pick(&table, &snapshot, &PickContext::new()).unwrap();
//! assert_ne!(snapshot.backends()[first].addr(), snapshot.backends()[second].addr());
//! # Ok::<(), tower_lb::MembershipError>(())
//! ```
//!
//! | strategy | guarantee | pick cost |
//! | --- | --- | --- |
//! | [`RoundRobin`] | any k·N consecutive picks hit each backend k times | O(1), one shared atomic |
//! | [`WeightedRoundRobin`] | NGINX smooth interleaving; every window of Σw picks holds wᵢ of backend i | O(1), one shared atomic |
//! | [`Random`] | uniform | O(1), no shared write |
//! | [`WeightedRandom`] | shares ∝ weights (alias method) | O(1), no shared write |
//! | [`LeastLoaded`] | a backend with the least load ÷ weight (load: in flight, failures counted) | O(n) reads |
//! | [`PowerOfTwoChoices`] | max load ≤ ln ln n / ln 2 + O(1) (two distinct candidates) | O(1), no shared write |
//! | [`PeakEwma`] | latency × load over a random candidate and the remembered leader; reacts to a slowing or failing backend at once | O(1), a shared write only when the lead changes |
//! | [`ServerLoad`] | shares ∝ server-reported capacity, qps ÷ (utilization + error penalty) (gRFC A58) | O(1), a rebuild per update period |
//! | [`Maglev`] | same key → same backend; ≤ 1 % collateral on removal | O(1), one table read |
//! | [`Ring`] | same key → same backend; only the changed backend's keys move | O(1) expected |
//! | [`Rendezvous`] | same key → same backend; only the changed backend's keys move | O(n) |
//! | [`Jump`] | same key → same bucket; growing at the end moves 1/(n+1) | O(log n) |
//! | [`BoundedLoad`] | a hashing picker holding each backend ≤ ⌈c · average⌉ in flight | + O(1) per backend asked |
//!
//! The consistent-hashing family lives in [`hash`]; see there for how to choose.
//!
//! [`AnyPicker`](crate::AnyPicker) is any of them, chosen at run time by name (a
//! command-line flag, a configuration file): `"maglev".parse::<AnyPicker>()`.
//!
//! # Pickers as values
//!
//! Every picker is `Clone`, and `Default` (its `new()`) where it has no required
//! setting. A clone is configured as the original and carries on from its state, then
//! goes its own way: a seeded picker's clone makes the draws the original would make
//! next, a round robin's clone has a counter of its own starting at the original's
//! position. Tables are not `Clone`: each pool prepares its own.
//!
//! # Failures are load
//!
//! A backend that fails in microseconds never has anything in flight, so a strategy that
//! compares in-flight counts alone would send it every request. Every load-aware strategy
//! ([`LeastLoaded`], [`PowerOfTwoChoices`], [`PeakEwma`], [`BoundedLoad`]'s bound check)
//! therefore charges a backend for its recent failures. Each backend keeps a *failure
//! score*: +1 per failure, halved by each success, fading as e^(−t/1 s)
//! ([`FAILURE_DECAY`](crate::FAILURE_DECAY)) while the backend gets nothing. Its load
//! is then
//!
//! > (in flight + 1) × 2^score − 1
//!
//! — the in-flight count itself with no recent failure, doubled (plus one) per recent
//! failure. A backend that just failed loses to any peer carrying fewer than about
//! 2^score requests, so a fast-failing backend loses traffic from its first failures on,
//! before any ejection; as its score fades it is tried again (about every
//! τ · ln((k + 1)/k) with k ≈ log₂ of its peers' load, a few times a second), and a
//! success halves the score, so a recovered backend is back in rotation after a few
//! answers. [`PeakEwma`] multiplies its cost by the same 2^score and charges a failing
//! backend at least its rival's latency.
//!
//! This is Linkerd's *failure accrual* and Finagle's `FailureAccrualFactory` (both
//! count failures per backend and back off from it) folded into the load metric, as
//! gRPC's weighted round robin folds its error rate into the weight (gRFC A58's
//! `error_utilization_penalty`), rather than a separate breaker: the pickers steer away
//! at once, and ejection ([`health`](crate::health)) takes the backend out of every
//! strategy's rotation, hashing included, once its failure is confirmed.
//!
//! [`RoundRobin`]: crate::RoundRobin
//! [`WeightedRoundRobin`]: crate::WeightedRoundRobin
//! [`Random`]: crate::Random
//! [`WeightedRandom`]: crate::WeightedRandom
//! [`LeastLoaded`]: crate::LeastLoaded
//! [`PowerOfTwoChoices`]: crate::PowerOfTwoChoices
//! [`PeakEwma`]: crate::PeakEwma
//! [`ServerLoad`]: crate::ServerLoad
//! [`Maglev`]: crate::Maglev
//! [`Ring`]: crate::Ring
//! [`Rendezvous`]: crate::Rendezvous
//! [`Jump`]: crate::Jump
//! [`BoundedLoad`]: crate::BoundedLoad

use std::time::Instant;

use crate::snapshot::Snapshot;

pub mod any;
pub mod hash;
pub mod least_loaded;
pub mod p2c;
pub mod peak_ewma;
pub mod random;
pub mod round_robin;
pub mod server_load;
pub mod weighted_random;
pub mod weighted_round_robin;

/// What a picker may know about the request being placed.
///
/// Cheap to build and `Copy`: an optional affinity hash (for the hashing strategies) and
/// an optional "now" (strategies that read time use it instead of reading the clock).
#[derive(Debug, Clone, Copy, Default)]
pub struct PickContext {
    hash: Option<u64>,
    /// Nanoseconds since the crate's epoch.
    now: Option<u64>,
}

impl PickContext {
    /// A context that carries nothing: no affinity key, the picker reads the clock itself.
    pub const fn new() -> Self {
        PickContext {
            hash: None,
            now: None,
        }
    }

    /// The request's affinity key, already hashed to 64 bits.
    pub const fn with_hash(mut self, hash: u64) -> Self {
        self.hash = Some(hash);
        self
    }

    /// The current time, when the caller has already read the clock.
    pub fn with_now(mut self, now: Instant) -> Self {
        self.now = Some(crate::clock::nanos_since_epoch(now));
        self
    }

    /// The current time in the crate's clock, already read (the tower service's path).
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) const fn with_now_nanos(mut self, now: u64) -> Self {
        self.now = Some(now);
        self
    }

    /// The caller's "now" in nanoseconds since the crate's epoch, if given.
    pub(crate) const fn now_nanos(&self) -> Option<u64> {
        self.now
    }

    /// The affinity hash, if any.
    pub const fn hash(&self) -> Option<u64> {
        self.hash
    }

    /// The caller's "now", if given.
    pub fn now(&self) -> Option<Instant> {
        self.now.map(crate::clock::instant_at_nanos)
    }
}

/// A load-balancing strategy: chooses one backend of a snapshot for one request.
///
/// Implementations must not panic in `pick`, whatever the snapshot holds (0, 1 or many
/// members, any eligibility), and must return only indices of eligible members.
pub trait Picker<A>: Send + Sync {
    /// What the picker precomputes for one snapshot.
    type Table: Send + Sync;

    /// Builds the table for `snapshot` (the change path). `previous` is the table of the
    /// snapshot this one replaces, for pickers that can reuse part of it: a member with
    /// the same [`BackendId`](crate::BackendId) in both is taken to have the same
    /// address, as in a [`Pool`](crate::Pool), which never reuses an id nor changes a
    /// member's address (pass `None` after an unrelated snapshot).
    fn prepare(&self, snapshot: &Snapshot<A>, previous: Option<&Self::Table>) -> Self::Table;

    /// Picks one eligible member, by its index in [`Snapshot::backends`]; `None` when
    /// there is none. `table` must come from [`prepare`](Self::prepare) on this snapshot.
    fn pick(&self, table: &Self::Table, snapshot: &Snapshot<A>, ctx: &PickContext)
    -> Option<usize>;

    /// Whether picks follow the request's affinity hash ([`PickContext::with_hash`]):
    /// `true` for the consistent-hashing pickers (and an [`AnyPicker`](crate::AnyPicker)
    /// set to one), `false` (the default) for the others, which ignore it. A balancer
    /// given an affinity key warns when its picker ignores keys.
    fn uses_affinity(&self) -> bool {
        false
    }

    /// Whether picks read the backends' latency estimates: `true` for
    /// [`PeakEwma`](crate::PeakEwma) (and an [`AnyPicker`](crate::AnyPicker) set to it), `false` (the
    /// default) for the others. A [`Pool`](crate::Pool) whose picker does not read them
    /// keeps none — no clock read at the end of a request, no estimate to update —
    /// unless told to with
    /// [`PoolBuilder::track_latency`](crate::PoolBuilder::track_latency).
    fn reads_latency(&self) -> bool {
        false
    }
}

/// With no eligible member none, with one that one, else the eligible member at the
/// position `choose(n)` returns (below `n`, the number eligible): the skeleton of the
/// pickers that choose a position without looking at the members.
#[inline]
pub(crate) fn eligible_by<A>(
    snapshot: &Snapshot<A>,
    choose: impl FnOnce(usize) -> usize,
) -> Option<usize> {
    match snapshot.eligible().len() {
        0 => None,
        1 => eligible_at(snapshot, 0),
        n => eligible_at(snapshot, choose(n)),
    }
}

/// The eligible member at position `slot` of the eligible list, as a backend index.
#[inline]
pub(crate) fn eligible_at<A>(snapshot: &Snapshot<A>, slot: usize) -> Option<usize> {
    snapshot.eligible().get(slot).map(|&i| i as usize)
}
