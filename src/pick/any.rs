//! A strategy chosen at run time, by name: [`AnyPicker`].
//!
//! A [`Pool`](crate::Pool) is generic over its picker, and each picker has a table type of
//! its own, so a program that lets its user choose the strategy (a command-line flag, a
//! configuration file) needs one type that can be any of them. [`AnyPicker`] holds one of
//! the crate's strategies and delegates [`prepare`](Picker::prepare) and
//! [`pick`](Picker::pick) to it; its table, [`AnyTable`], holds that strategy's table.
//!
//! **Guarantee** (checked by the tests in `tests/any_picker.rs`): for the same seed and
//! snapshot, an `AnyPicker` picks exactly what the picker it wraps picks, and it reuses a
//! hashing table across health changes as that picker does. **Cost**: one `match` on the
//! pick path, over the strategy and its table together (the `pick` bench group's
//! `AnyPicker` rows sit beside the raw pickers' rows).
//!
//! The names, as [`AnyPicker::NAMES`] lists them:
//!
//! | name | strategy |
//! | --- | --- |
//! | `round-robin` | [`RoundRobin`] |
//! | `weighted` | [`WeightedRoundRobin`] (NGINX's smooth weighted round robin) |
//! | `random` | [`Random`] |
//! | `weighted-random` | [`WeightedRandom`] |
//! | `least-loaded` | [`LeastLoaded`] |
//! | `p2c` | [`PowerOfTwoChoices`] |
//! | `peak-ewma` | [`PeakEwma`] |
//! | `ring` | [`Ring`] |
//! | `maglev` | [`Maglev`] |
//! | `rendezvous` | [`Rendezvous`] |
//! | `jump` | [`Jump`] |
//! | `ring-bounded` | [`BoundedLoad`] over [`Ring`] |
//! | `maglev-bounded` | [`BoundedLoad`] over [`Maglev`] |
//! | `rendezvous-bounded` | [`BoundedLoad`] over [`Rendezvous`] |
//! | `server-load` | [`ServerLoad`] (feed it reports through [`AnyPicker::server_load`]) |
//!
//! Each name builds the strategy with its defaults; the hashing strategies place requests
//! without a key by round robin. A strategy configured otherwise (a Maglev table size, a
//! balance factor, a default latency) is wrapped with `From`.

use std::fmt;
use std::str::FromStr;

use super::hash::bounded_load::BoundedLoad;
use super::hash::jump::{Jump, JumpTable};
use super::hash::maglev::{Maglev, MaglevTable};
use super::hash::rendezvous::{Rendezvous, RendezvousTable};
use super::hash::ring::{Ring, RingTable};
use super::hash::{BackendKey, WithFallback};
use super::least_loaded::LeastLoaded;
use super::p2c::{Candidates, PowerOfTwoChoices};
use super::peak_ewma::{PeakEwma, PeakEwmaTable};
use super::random::Random;
use super::round_robin::RoundRobin;
use super::server_load::{ServerLoad, ServerLoadTable};
use super::weighted_random::{AliasTable, WeightedRandom};
use super::weighted_round_robin::{Schedule, WeightedRoundRobin};
use super::{PickContext, Picker, eligible_at};
use crate::rng::RandomSource;
use crate::snapshot::Snapshot;

/// Any of the crate's strategies, chosen at run time. See the [module docs](self).
///
/// Built from a name ([`FromStr`], [`with_seed`](Self::with_seed)) or from a configured
/// picker (`From`). `Clone` clones the strategy: see each picker for what its clone
/// keeps (a seeded one continues from the same state, a round robin has a counter of its
/// own). `Default` is power of two choices (`p2c`), the strategy of tower's balancer.
///
/// # Examples
///
/// ```
/// use tower_lb::{AnyPicker, Maglev, PickContext, Pool, Weight};
///
/// // From a command-line flag or a configuration file:
/// let picker: AnyPicker = "maglev".parse()?;
/// assert!(picker.is_hashing());
/// assert_eq!(picker.name(), "maglev");
///
/// let pool = Pool::new(picker);
/// pool.insert("10.0.0.1:80", Weight::ONE)?;
/// pool.insert("10.0.0.2:80", Weight::ONE)?;
/// let picked = pool.pick(&PickContext::new().with_hash(42))?;
/// assert_eq!(pool.pick(&PickContext::new().with_hash(42))?.addr(), picked.addr());
///
/// // A strategy configured in code.
/// let big = AnyPicker::from(Maglev::new().with_table_size(655_373)?);
/// assert_eq!(big.name(), "maglev");
///
/// // A name that is none of them.
/// let err = "fastest".parse::<AnyPicker>().unwrap_err();
/// assert_eq!(err.name, "fastest");
/// assert!(err.to_string().contains("round-robin"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct AnyPicker {
    kind: Kind,
}

/// The strategy, one variant per name.
#[derive(Debug, Clone)]
enum Kind {
    RoundRobin(RoundRobin),
    Weighted(WeightedRoundRobin),
    Random(Random),
    WeightedRandom(WeightedRandom),
    LeastLoaded(LeastLoaded),
    P2c(PowerOfTwoChoices),
    PeakEwma(PeakEwma),
    Ring(Ring),
    Maglev(Maglev),
    Rendezvous(Rendezvous),
    Jump(Jump),
    RingBounded(BoundedLoad<Ring>),
    MaglevBounded(BoundedLoad<Maglev>),
    RendezvousBounded(BoundedLoad<Rendezvous>),
    ServerLoad(ServerLoad),
}

impl AnyPicker {
    /// Every name [`FromStr`] accepts, in the order of the [module docs](self).
    pub const NAMES: &'static [&'static str] = &[
        "round-robin",
        "weighted",
        "random",
        "weighted-random",
        "least-loaded",
        "p2c",
        "peak-ewma",
        "ring",
        "maglev",
        "rendezvous",
        "jump",
        "ring-bounded",
        "maglev-bounded",
        "rendezvous-bounded",
        "server-load",
    ];

    /// The strategy `name` with its random draws reproducible from `seed` (random,
    /// weighted random, least loaded's tie-breaking, p2c, peak EWMA, server load); the other
    /// strategies draw nothing and ignore it. Fails as [`FromStr`] does.
    ///
    /// ```
    /// use tower_lb::{AnyPicker, PickContext, Picker, Snapshot, Weight};
    ///
    /// let snapshot = Snapshot::build((0u64..8).map(|i| (i, Weight::ONE)))?;
    /// let (a, b) = (AnyPicker::with_seed("random", 7)?, AnyPicker::with_seed("random", 7)?);
    /// let (ta, tb) = (a.prepare(&snapshot, None), b.prepare(&snapshot, None));
    /// for _ in 0..10 {
    ///     let ctx = PickContext::new();
    ///     assert_eq!(a.pick(&ta, &snapshot, &ctx), b.pick(&tb, &snapshot, &ctx));
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_seed(name: &str, seed: u64) -> Result<AnyPicker, UnknownStrategy> {
        Self::build(name, Some(seed))
    }

    /// The strategy's name, one of [`NAMES`](Self::NAMES).
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::RoundRobin(_) => "round-robin",
            Kind::Weighted(_) => "weighted",
            Kind::Random(_) => "random",
            Kind::WeightedRandom(_) => "weighted-random",
            Kind::LeastLoaded(_) => "least-loaded",
            Kind::P2c(_) => "p2c",
            Kind::PeakEwma(_) => "peak-ewma",
            Kind::Ring(_) => "ring",
            Kind::Maglev(_) => "maglev",
            Kind::Rendezvous(_) => "rendezvous",
            Kind::Jump(_) => "jump",
            Kind::RingBounded(_) => "ring-bounded",
            Kind::MaglevBounded(_) => "maglev-bounded",
            Kind::RendezvousBounded(_) => "rendezvous-bounded",
            Kind::ServerLoad(_) => "server-load",
        }
    }

    /// The [`ServerLoad`] strategy held, to feed it the backends' load reports; `None`
    /// for any other strategy.
    pub fn server_load(&self) -> Option<&ServerLoad> {
        match &self.kind {
            Kind::ServerLoad(s) => Some(s),
            _ => None,
        }
    }

    /// Whether the strategy places requests by their affinity hash
    /// ([`PickContext::with_hash`]): ring, maglev, rendezvous, jump and their bounded
    /// variants. The others ignore the hash.
    pub fn is_hashing(&self) -> bool {
        matches!(
            self.kind,
            Kind::Ring(_)
                | Kind::Maglev(_)
                | Kind::Rendezvous(_)
                | Kind::Jump(_)
                | Kind::RingBounded(_)
                | Kind::MaglevBounded(_)
                | Kind::RendezvousBounded(_)
        )
    }

    /// The strategy `name` (ASCII case ignored) with its defaults, its random draws
    /// seeded with `seed` if given.
    fn build(name: &str, seed: Option<u64>) -> Result<AnyPicker, UnknownStrategy> {
        let unknown = || UnknownStrategy {
            name: name.to_owned(),
        };
        let canonical = Self::NAMES
            .iter()
            .find(|n| n.eq_ignore_ascii_case(name))
            .ok_or_else(unknown)?;
        let kind = match *canonical {
            "round-robin" => Kind::RoundRobin(RoundRobin::new()),
            "weighted" => Kind::Weighted(WeightedRoundRobin::new()),
            "random" => Kind::Random(seed.map_or_else(Random::new, Random::with_seed)),
            "weighted-random" => Kind::WeightedRandom(
                seed.map_or_else(WeightedRandom::new, WeightedRandom::with_seed),
            ),
            "least-loaded" => {
                Kind::LeastLoaded(seed.map_or_else(LeastLoaded::new, LeastLoaded::with_seed))
            }
            "p2c" => {
                Kind::P2c(seed.map_or_else(PowerOfTwoChoices::new, PowerOfTwoChoices::with_seed))
            }
            "peak-ewma" => Kind::PeakEwma(seed.map_or_else(PeakEwma::new, PeakEwma::with_seed)),
            "ring" => Kind::Ring(Ring::new()),
            "maglev" => Kind::Maglev(Maglev::new()),
            "rendezvous" => Kind::Rendezvous(Rendezvous::new()),
            "jump" => Kind::Jump(Jump::new()),
            "ring-bounded" => Kind::RingBounded(BoundedLoad::new(Ring::new())),
            "maglev-bounded" => Kind::MaglevBounded(BoundedLoad::new(Maglev::new())),
            "rendezvous-bounded" => Kind::RendezvousBounded(BoundedLoad::new(Rendezvous::new())),
            "server-load" => {
                Kind::ServerLoad(seed.map_or_else(ServerLoad::new, ServerLoad::with_seed))
            }
            // Every name of NAMES has its arm (the unit tests check it).
            _ => return Err(unknown()),
        };
        Ok(AnyPicker { kind })
    }
}

/// Power of two choices (`p2c`): the strategy of tower's balancer.
impl Default for AnyPicker {
    fn default() -> Self {
        AnyPicker {
            kind: Kind::P2c(PowerOfTwoChoices::new()),
        }
    }
}

/// One of [`AnyPicker::NAMES`], ASCII case ignored; the strategy with its defaults.
impl FromStr for AnyPicker {
    type Err = UnknownStrategy;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::build(name, None)
    }
}

/// The strategy's name.
impl fmt::Display for AnyPicker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

macro_rules! from_picker {
    ($($picker:ty => $variant:ident),* $(,)?) => {$(
        impl From<$picker> for AnyPicker {
            fn from(picker: $picker) -> Self {
                AnyPicker { kind: Kind::$variant(picker) }
            }
        }
    )*};
}

from_picker!(
    RoundRobin => RoundRobin,
    WeightedRoundRobin => Weighted,
    Random => Random,
    WeightedRandom => WeightedRandom,
    LeastLoaded => LeastLoaded,
    PowerOfTwoChoices => P2c,
    PeakEwma => PeakEwma,
    Ring => Ring,
    Maglev => Maglev,
    Rendezvous => Rendezvous,
    Jump => Jump,
    BoundedLoad<Ring> => RingBounded,
    BoundedLoad<Maglev> => MaglevBounded,
    BoundedLoad<Rendezvous> => RendezvousBounded,
    ServerLoad => ServerLoad,
);

/// The table of an [`AnyPicker`]: the table of the strategy it holds. Built by
/// [`Picker::prepare`]; opaque.
pub struct AnyTable {
    table: Table,
}

/// One variant per table type; the bounded variants share their hashing picker's table.
enum Table {
    /// Round robin, random, least loaded: nothing precomputed.
    Empty,
    Schedule(Schedule),
    Alias(AliasTable),
    Candidates(Candidates),
    PeakEwma(PeakEwmaTable),
    Ring(WithFallback<RingTable, ()>),
    Maglev(WithFallback<MaglevTable, ()>),
    Rendezvous(WithFallback<RendezvousTable, ()>),
    Jump(WithFallback<JumpTable, ()>),
    ServerLoad(ServerLoadTable),
}

impl fmt::Debug for AnyTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table: &dyn fmt::Debug = match &self.table {
            Table::Empty => &(),
            Table::Schedule(t) => t,
            Table::Alias(t) => t,
            Table::Candidates(t) => t,
            Table::PeakEwma(t) => t,
            Table::Ring(t) => t,
            Table::Maglev(t) => t,
            Table::Rendezvous(t) => t,
            Table::Jump(t) => t,
            Table::ServerLoad(t) => t,
        };
        f.debug_tuple("AnyTable").field(table).finish()
    }
}

impl<A: BackendKey> Picker<A> for AnyPicker {
    type Table = AnyTable;

    fn uses_affinity(&self) -> bool {
        self.is_hashing()
    }

    fn reads_latency(&self) -> bool {
        matches!(self.kind, Kind::PeakEwma(_))
    }

    fn prepare(&self, snapshot: &Snapshot<A>, previous: Option<&AnyTable>) -> AnyTable {
        let previous = previous.map(|p| &p.table);
        // The previous table, when it is of the variant this strategy builds (hashing
        // pickers reuse theirs across health changes).
        macro_rules! previous {
            ($variant:ident) => {
                match previous {
                    Some(Table::$variant(t)) => Some(t),
                    _ => None,
                }
            };
        }
        let table = match &self.kind {
            Kind::RoundRobin(_) | Kind::Random(_) | Kind::LeastLoaded(_) => Table::Empty,
            Kind::Weighted(p) => Table::Schedule(p.prepare(snapshot, previous!(Schedule))),
            Kind::WeightedRandom(p) => Table::Alias(p.prepare(snapshot, previous!(Alias))),
            Kind::P2c(p) => Table::Candidates(p.prepare(snapshot, previous!(Candidates))),
            Kind::PeakEwma(p) => Table::PeakEwma(p.prepare(snapshot, previous!(PeakEwma))),
            Kind::Ring(p) => Table::Ring(p.prepare(snapshot, previous!(Ring))),
            Kind::Maglev(p) => Table::Maglev(p.prepare(snapshot, previous!(Maglev))),
            Kind::Rendezvous(p) => Table::Rendezvous(p.prepare(snapshot, previous!(Rendezvous))),
            Kind::Jump(p) => Table::Jump(p.prepare(snapshot, previous!(Jump))),
            Kind::RingBounded(p) => Table::Ring(p.prepare(snapshot, previous!(Ring))),
            Kind::MaglevBounded(p) => Table::Maglev(p.prepare(snapshot, previous!(Maglev))),
            Kind::RendezvousBounded(p) => {
                Table::Rendezvous(p.prepare(snapshot, previous!(Rendezvous)))
            }
            Kind::ServerLoad(p) => Table::ServerLoad(p.prepare(snapshot, previous!(ServerLoad))),
        };
        AnyTable { table }
    }

    /// The held strategy's pick: one `match` over the strategy and its table.
    #[inline]
    fn pick(&self, table: &AnyTable, snapshot: &Snapshot<A>, ctx: &PickContext) -> Option<usize> {
        match (&self.kind, &table.table) {
            (Kind::RoundRobin(p), _) => p.pick(&(), snapshot, ctx),
            (Kind::Random(p), _) => p.pick(&(), snapshot, ctx),
            (Kind::LeastLoaded(p), _) => p.pick(&(), snapshot, ctx),
            (Kind::Weighted(p), Table::Schedule(t)) => p.pick(t, snapshot, ctx),
            (Kind::WeightedRandom(p), Table::Alias(t)) => p.pick(t, snapshot, ctx),
            (Kind::P2c(p), Table::Candidates(t)) => p.pick(t, snapshot, ctx),
            (Kind::PeakEwma(p), Table::PeakEwma(t)) => p.pick(t, snapshot, ctx),
            (Kind::Ring(p), Table::Ring(t)) => p.pick(t, snapshot, ctx),
            (Kind::Maglev(p), Table::Maglev(t)) => p.pick(t, snapshot, ctx),
            (Kind::Rendezvous(p), Table::Rendezvous(t)) => p.pick(t, snapshot, ctx),
            (Kind::Jump(p), Table::Jump(t)) => p.pick(t, snapshot, ctx),
            (Kind::RingBounded(p), Table::Ring(t)) => p.pick(t, snapshot, ctx),
            (Kind::MaglevBounded(p), Table::Maglev(t)) => p.pick(t, snapshot, ctx),
            (Kind::RendezvousBounded(p), Table::Rendezvous(t)) => p.pick(t, snapshot, ctx),
            (Kind::ServerLoad(p), Table::ServerLoad(t)) => p.pick(t, snapshot, ctx),
            // A table another strategy prepared: stay correct, if not as asked.
            _ => mismatched(snapshot),
        }
    }
}

/// A uniformly random eligible member: the pick for a table of another strategy.
#[cold]
fn mismatched<A>(snapshot: &Snapshot<A>) -> Option<usize> {
    match snapshot.eligible().len() {
        0 => None,
        n => eligible_at(snapshot, RandomSource::Thread.below(n)),
    }
}

/// A strategy name that [`AnyPicker`] does not know; the message lists
/// the names it knows ([`AnyPicker::NAMES`](crate::AnyPicker::NAMES)).
///
/// ```
/// use tower_lb::AnyPicker;
///
/// let err = "fastest".parse::<AnyPicker>().unwrap_err();
/// assert_eq!(err.name, "fastest");
/// assert!(err.to_string().starts_with("any picker: unknown strategy \"fastest\""));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "any picker: unknown strategy {name:?}, expected one of: {names}",
    names = crate::AnyPicker::NAMES.join(", ")
)]
#[non_exhaustive]
pub struct UnknownStrategy {
    /// The name as given.
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Weight;

    #[test]
    fn every_name_round_trips() {
        for &name in AnyPicker::NAMES {
            let picker: AnyPicker = name.parse().unwrap();
            assert_eq!(picker.name(), name);
            assert_eq!(AnyPicker::with_seed(name, 1).unwrap().name(), name);
            assert_eq!(picker.clone().name(), name);
            assert_eq!(picker.to_string(), name);
        }
        assert_eq!("P2C".parse::<AnyPicker>().unwrap().name(), "p2c");
    }

    #[test]
    fn a_mismatched_table_still_picks_an_eligible_member() {
        let snapshot = Snapshot::build((0..4u64).map(|i| (i, Weight::ONE))).unwrap();
        let maglev: AnyPicker = "maglev".parse().unwrap();
        let schedule = "weighted".parse::<AnyPicker>().unwrap();
        let table = Picker::<u64>::prepare(&schedule, &snapshot, None);
        for _ in 0..16 {
            let i = maglev.pick(&table, &snapshot, &PickContext::new().with_hash(7));
            assert!(i.is_some_and(|i| snapshot.is_eligible(i)));
        }
        let empty = Snapshot::<u64>::build([]).unwrap();
        assert_eq!(maglev.pick(&table, &empty, &PickContext::new()), None);
    }
}
