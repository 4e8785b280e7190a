//! A strategy chosen at run time (a command-line flag), as one `Picker`.
//!
//! Each picker has its own table type, so a `Pool` is generic over the picker. A program
//! that lets its user choose the strategy wraps them in an enum that delegates
//! `prepare` and `pick`; the pick path then costs one extra `match`.

use tower_lb::pick::hash::{BackendKey, MaglevTable, RendezvousTable, RingTable, WithFallback};
use tower_lb::pick::{AliasTable, Candidates, Schedule};
use tower_lb::{
    LeastLoaded, Maglev, PeakEwma, PickContext, Picker, PowerOfTwoChoices, Random, Rendezvous,
    Ring, RoundRobin, Snapshot, WeightedRandom, WeightedRoundRobin,
};

/// Any of the crate's strategies.
#[derive(Debug)]
pub enum Strategy {
    /// Round robin (weights ignored).
    RoundRobin(RoundRobin),
    /// NGINX's smooth weighted round robin.
    Weighted(WeightedRoundRobin),
    /// Uniform random (weights ignored).
    Random(Random),
    /// Random in proportion to weights (alias method).
    WeightedRandom(WeightedRandom),
    /// Least in flight ÷ weight.
    LeastLoaded(LeastLoaded),
    /// Power of two choices over in-flight requests.
    P2c(PowerOfTwoChoices),
    /// Power of two choices over peak-EWMA latency × load.
    PeakEwma(PeakEwma),
    /// Consistent hashing on a ring (keyless requests: round robin).
    Ring(Ring),
    /// Maglev consistent hashing (keyless requests: round robin).
    Maglev(Maglev),
    /// Rendezvous (highest random weight) hashing (keyless requests: round robin).
    Rendezvous(Rendezvous),
}

impl Strategy {
    /// Whether requests are placed by their affinity key.
    pub fn is_hashing(&self) -> bool {
        matches!(
            self,
            Strategy::Ring(_) | Strategy::Maglev(_) | Strategy::Rendezvous(_)
        )
    }
}

/// The table of whichever strategy is in use.
pub enum StrategyTable {
    /// Strategies that precompute nothing.
    Empty,
    /// Smooth weighted round robin's schedule.
    Schedule(Schedule),
    /// Weighted random's alias table.
    Alias(AliasTable),
    /// The two-choice strategies' candidate sampler.
    Candidates(Candidates),
    /// The ring.
    Ring(WithFallback<RingTable, ()>),
    /// The Maglev lookup table.
    Maglev(WithFallback<MaglevTable, ()>),
    /// Rendezvous hashing's member list.
    Rendezvous(WithFallback<RendezvousTable, ()>),
}

impl<A: BackendKey> Picker<A> for Strategy {
    type Table = StrategyTable;

    fn prepare(&self, snapshot: &Snapshot<A>, previous: Option<&StrategyTable>) -> StrategyTable {
        // Hashing pickers reuse their previous table when only health changed.
        match (self, previous) {
            (Strategy::RoundRobin(_), _)
            | (Strategy::Random(_), _)
            | (Strategy::LeastLoaded(_), _) => StrategyTable::Empty,
            (Strategy::Weighted(p), _) => StrategyTable::Schedule(p.prepare(snapshot, None)),
            (Strategy::WeightedRandom(p), _) => StrategyTable::Alias(p.prepare(snapshot, None)),
            (Strategy::P2c(p), _) => StrategyTable::Candidates(p.prepare(snapshot, None)),
            (Strategy::PeakEwma(p), _) => StrategyTable::Candidates(p.prepare(snapshot, None)),
            (Strategy::Ring(p), prev) => StrategyTable::Ring(p.prepare(
                snapshot,
                match prev {
                    Some(StrategyTable::Ring(t)) => Some(t),
                    _ => None,
                },
            )),
            (Strategy::Maglev(p), prev) => StrategyTable::Maglev(p.prepare(
                snapshot,
                match prev {
                    Some(StrategyTable::Maglev(t)) => Some(t),
                    _ => None,
                },
            )),
            (Strategy::Rendezvous(p), prev) => StrategyTable::Rendezvous(p.prepare(
                snapshot,
                match prev {
                    Some(StrategyTable::Rendezvous(t)) => Some(t),
                    _ => None,
                },
            )),
        }
    }

    #[inline]
    fn pick(
        &self,
        table: &StrategyTable,
        snapshot: &Snapshot<A>,
        ctx: &PickContext,
    ) -> Option<usize> {
        match (self, table) {
            (Strategy::RoundRobin(p), StrategyTable::Empty) => p.pick(&(), snapshot, ctx),
            (Strategy::Random(p), StrategyTable::Empty) => p.pick(&(), snapshot, ctx),
            (Strategy::LeastLoaded(p), StrategyTable::Empty) => p.pick(&(), snapshot, ctx),
            (Strategy::Weighted(p), StrategyTable::Schedule(t)) => p.pick(t, snapshot, ctx),
            (Strategy::WeightedRandom(p), StrategyTable::Alias(t)) => p.pick(t, snapshot, ctx),
            (Strategy::P2c(p), StrategyTable::Candidates(t)) => p.pick(t, snapshot, ctx),
            (Strategy::PeakEwma(p), StrategyTable::Candidates(t)) => p.pick(t, snapshot, ctx),
            (Strategy::Ring(p), StrategyTable::Ring(t)) => p.pick(t, snapshot, ctx),
            (Strategy::Maglev(p), StrategyTable::Maglev(t)) => p.pick(t, snapshot, ctx),
            (Strategy::Rendezvous(p), StrategyTable::Rendezvous(t)) => p.pick(t, snapshot, ctx),
            // `prepare` made this table: a mismatch cannot happen.
            _ => None,
        }
    }
}
