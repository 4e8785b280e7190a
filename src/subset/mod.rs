//! Subsetting: each client instance talks to a few backends, not all of them.
//!
//! With C client instances and S backends, a balancer in every instance opens C·S
//! connections, and each backend holds one per client: connections grow with the
//! product of the two fleets. *Subsetting* gives each instance k of the S backends, so a
//! backend holds about C·k/S connections. Choosing the k at random is badly uneven (at
//! C = S = 300, k = 10 the busiest backend gets about twice the mean); the two
//! algorithms here balance both connections and load, and every instance computes its
//! own subset from its index and the backend set alone — no coordination, no shared
//! state, the same answer in every process, whatever order the backends were listed in
//! (backends are ordered by the crate's stable hash of their [`BackendKey`] bytes).
//!
//! - [`Deterministic`] — the Google SRE book's *deterministic subsetting* (Beyer et al.,
//!   *Site Reliability Engineering*, ch. 20, "Load Balancing in the Datacenter"):
//!   instances are grouped in *rounds* of ⌈S/k⌉; each round orders the backends by a
//!   hash seeded with the round number, and the i-th instance of the round takes the
//!   i-th run of k. Every round hands every backend out once (twice at most, where the
//!   last run wraps), so connections and load are even to within one round.
//! - [`Aperture`] — Finagle's *deterministic aperture* (Finagle, `Aperture` load
//!   balancer, "deterministic aperture", 2018): instances and backends are laid on the
//!   same unit ring, instance i of C at offset i/C with width 1/C; each instance takes
//!   the arc of d = ⌈k·C/S⌉ instance widths from its offset (at least k backends' worth),
//!   and every backend that arc touches, with the fraction of it that the arc covers as
//!   its *coverage*. Every point of the ring lies under exactly d arcs, so load weighted
//!   by coverage is exactly even; connections are even to within the arcs' partly covered
//!   ends; every change moves each instance's arc only a little.
//!
//! # Guarantees (checked by `tests/subset.rs`)
//!
//! At C = 300 instances, S = 300 backends, k = 10, with every instance spreading equal
//! load over its subset by the members' [shares](Chosen::share): connections per backend
//! max/mean ≤ 1.05 and request load per backend max/mean ≤ 1.10, for both algorithms.
//!
//! *Churn* — how many members of one instance's subset change (members lost; as many
//! are gained) when one backend or one instance comes or goes:
//!
//! | change | [`Deterministic`] | [`Aperture`] |
//! | --- | --- | --- |
//! | a backend added or removed, ⌈S/k⌉ unchanged | ≤ 2 per instance, ≤ 1 on average | ≤ S/C + 3 per instance; at C = S = 300, k = 10: ≤ 4, ≤ 2.5 on average |
//! | a backend added or removed, ⌈S/k⌉ changes (once every k backends) | rounds regroup: most subsets change | as above |
//! | a run of backend additions, amortised | ≤ 3 on average per instance per change | as above |
//! | an instance added or removed (the last index) | 0 for every other instance | ≤ S/C + 2 per instance |
//!
//! Why: a backend change removes or inserts one element of each round's (or the ring's)
//! order, so each run of k slides by at most one position (two for the run that wraps)
//! while the number of runs per round stays the same; an aperture arc also slides by at
//! most one backend, and grows or shrinks by one instance width (S/C backends) when
//! ⌈k·C/S⌉ steps; deterministic subsetting's instance i depends on i and S only, never
//! on C; an aperture arc moves by i/C − i/(C+1) ≤ 1/C of the ring, S/C backends, when C
//! changes. When the fleet of
//! backends churns often and the instance count is stable, prefer [`Aperture`]; when
//! instances come and go (autoscaling clients), [`Deterministic`].
//!
//! # Composing with a pool
//!
//! A subset is a *filter on membership*: [`Subsetting::select`] takes the full backend
//! list (from discovery, DNS, a config file) and returns the members this instance
//! should hold, and [`sync`] makes a [`Pool`] hold exactly those — inserting the new
//! ones, removing the others, setting each member's [`Chosen::weight`] — in one
//! published update, so survivors keep their live state. Any picker then balances
//! within the subset, and a [`BalanceLayer`](crate::balance) over the pool (addresses
//! in the pool, connections made by its router per address) never sees, and never
//! connects to, a backend outside it. Call `sync` again whenever discovery reports a
//! new list: the churn bounds below say how few members move. Filtering membership (rather than
//! wrapping a picker) keeps the pick path unchanged and lets health, slow start and
//! every strategy work as they do on a full set.
//!
//! ```
//! use std::num::NonZeroUsize;
//! use tower_lb::subset::{self, Deterministic};
//! use tower_lb::{Pool, PowerOfTwoChoices};
//!
//! let all: Vec<String> = (0..30).map(|i| format!("10.0.0.{i}:80")).collect();
//! let subsetting = Deterministic::new(7, NonZeroUsize::new(5).unwrap());
//! let pool = Pool::new(PowerOfTwoChoices::new());
//! subset::sync(&pool, &all, &subsetting)?;
//! assert_eq!(pool.snapshot().len(), 5);
//! # Ok::<(), tower_lb::MembershipError>(())
//! ```

use std::hash::Hash;

use crate::backend::Weight;
use crate::error::MembershipError;
use crate::pick::Picker;
use crate::pick::hash::BackendKey;
use crate::pool::Pool;
use crate::stable_hash::seeded;

mod aperture;
mod deterministic;

pub use aperture::Aperture;
pub use deterministic::Deterministic;

/// The weight a member covering a whole backend gets from [`Chosen::weight`]; a partly
/// covered member (an aperture's ends) gets its fraction of it, at least 1.
pub const FULL_WEIGHT: u32 = 1000;

/// One member of an instance's subset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chosen {
    /// Its position in the backend list given to [`Subsetting::select`].
    pub index: usize,
    /// The fraction of this backend the instance covers, in (0, 1]: 1 for every member
    /// of a deterministic subset and an aperture's inner members, less at an arc's ends.
    pub coverage: f64,
}

impl Chosen {
    /// The pool weight that spreads this instance's load in proportion to coverage:
    /// [`FULL_WEIGHT`] × coverage, rounded, at least 1.
    pub fn weight(&self) -> Weight {
        let w = (self.coverage * f64::from(FULL_WEIGHT)).round();
        // `as` saturates; the clamp keeps a coverage outside (0, 1] in range.
        Weight::new(u64::from((w as u32).clamp(1, FULL_WEIGHT))).unwrap_or(Weight::ONE)
    }

    /// The share of this instance's load the member should get when load follows
    /// coverage: its coverage over the subset's total.
    pub fn share(&self, subset: &[Chosen]) -> f64 {
        let total: f64 = subset.iter().map(|c| c.coverage).sum();
        if total > 0.0 {
            self.coverage / total
        } else {
            0.0
        }
    }
}

/// A rule that chooses this instance's subset of a backend list.
pub trait Subsetting {
    /// The members of `backends` this instance should hold, each once, in no particular
    /// order. Depends only on the backends' keys (not their order in the slice) and the
    /// rule's settings, so every instance computes its own without talking to others.
    fn select<K: BackendKey>(&self, backends: &[K]) -> Vec<Chosen>;
}

/// Makes `pool` hold exactly the subset of `all` that `subsetting` selects, with the
/// members' [weights](Chosen::weight), in one published update: members that stay keep
/// their live state; members that leave are removed. Returns how many members were
/// inserted and removed.
///
/// Fails only if the pool refuses an edit (it cannot: the subset holds each address
/// once), in which case nothing is published.
pub fn sync<A, P, S>(
    pool: &Pool<A, P>,
    all: &[A],
    subsetting: &S,
) -> Result<SyncReport, MembershipError>
where
    A: BackendKey + Clone + Eq + Hash,
    P: Picker<A>,
    S: Subsetting + ?Sized,
{
    let chosen = subsetting.select(all);
    pool.update(|edit| {
        let mut report = SyncReport::default();
        let wanted: std::collections::HashMap<&A, Weight> = chosen
            .iter()
            .filter_map(|c| all.get(c.index).map(|a| (a, c.weight())))
            .collect();
        let leaving: Vec<_> = edit
            .members()
            .filter(|b| !wanted.contains_key(b.addr()))
            .map(|b| b.id())
            .collect();
        for id in leaving {
            edit.remove(id)?;
            report.removed += 1;
        }
        let present: std::collections::HashMap<A, crate::BackendId> =
            edit.members().map(|b| (b.addr().clone(), b.id())).collect();
        for (addr, weight) in wanted {
            match present.get(addr) {
                Some(&id) => edit.set_weight(id, weight)?,
                None => {
                    edit.insert(addr.clone(), weight)?;
                    report.inserted += 1;
                }
            }
        }
        Ok(report)
    })
}

/// What [`sync`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Members added to the pool.
    pub inserted: usize,
    /// Members removed from the pool.
    pub removed: usize,
}

/// The positions of `backends` sorted by their key's stable hash with `seed` (ties by
/// the key bytes, then by position): the order every instance agrees on.
pub(crate) fn order<K: BackendKey>(backends: &[K], seed: u64) -> Vec<usize> {
    let mut keyed: Vec<(u64, Vec<u8>, usize)> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut bytes = Vec::new();
            b.write_key(&mut bytes);
            (seeded(&bytes, seed), bytes, i)
        })
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, _, i)| i).collect()
}
