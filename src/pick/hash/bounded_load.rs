//! Consistent hashing with bounded loads.
//!
//! Each backend may hold at most ⌈c · (m + 1) · wᵢ / Σw⌉ requests in flight, where m is
//! the number in flight over the eligible members and c ≥ 1 the balance factor (equal
//! weights: ⌈c · average⌉). A request walks its key's preference order — the same order
//! the wrapped picker fails over in — and goes to the first backend below its bound. A
//! key stays on its home backend until that backend is loaded past c times its share,
//! and then spills to its *own* next choices, so hot keys stop piling onto one backend
//! while most keys keep their affinity.
//!
//! **Guarantee** (checked by the property tests): placing requests one after another,
//! no backend's load ever exceeds ⌈c · m / n⌉ (m in flight, n eligible backends); at
//! c = 1.25 the mean number of backends asked per request stays ≤ 1.05 in the steady
//! state of 50 requests in flight per backend (see *Measured* below). A bound always
//! exists below which some backend lies (Σ bounds ≥ c · (m + 1) > m). Picks racing on
//! several threads read the same counts and may each take the last free place, so
//! under contention a backend may pass its bound by the number of racing picks.
//!
//! **Measured** (uniform random keys, c = 1.25, 8 to 100 backends), mean backends asked
//! per request: in the steady state (one request finishes, one arrives) 1.01–1.02 at 50
//! in flight per backend, 1.02–1.06 at 30, 1.08–1.18 at 10; filling from empty to 50 per
//! backend, 1.05–1.08. Probing falls as the load per backend grows, since the slack
//! ⌈1.25 · average⌉ − average grows faster than the load's fluctuations.
//!
//! **The default c = 1.25** ([`DEFAULT_BALANCE_FACTOR`]) is the tight end of the range
//! HAProxy's `hash-balance-factor` documentation calls reasonable (125 to 200): no
//! backend is held above 125 % of its share, while at a working load few requests are
//! asked past their first choice (see *Measured*). Larger c keeps more keys at home
//! (cache hit rate) at a looser bound; c = 1 forces a perfect spread and moves many keys.
//!
//! **Cost**: on top of the wrapped lookup, one in-flight read per backend asked; the
//! total in flight (an O(n) sum) is read only when the key's first choice is busy (a
//! backend with nothing in flight is always below its bound), and then an O(n) check
//! that some backend is below its bound comes before walking the key's order — a walk
//! that found none would visit the wrapped picker's whole table.
//!
//! **Failures are load**: a backend's load is its in-flight count charged for its recent
//! failures ((in flight + 1) × 2^score − 1, see the [`pick`](crate::pick) module docs),
//! so a key whose home fails fast spills to its next choice as if the home were full.
//!
//! Mirrokni, Thorup & Zadimoghaddam, "Consistent Hashing with Bounded Loads", SODA 2018;
//! HAProxy `hash-balance-factor`.

use super::{Accept, HashPicker, Lookup};
use crate::error::ConfigError;
use crate::pick::{PickContext, Picker};
use crate::snapshot::Snapshot;

/// The default balance factor c: 1.25 (see the [module docs](self)).
pub const DEFAULT_BALANCE_FACTOR: f64 = 1.25;

/// The largest accepted balance factor (past it, the bound never binds in practice).
const MAX_BALANCE_FACTOR: f64 = 65_536.0;

/// c is applied in units of 1/2¹⁶, in integer arithmetic: no rounding surprise at the
/// ceiling (1.25 is exact).
const FACTOR_ONE: u64 = 1 << 16;

/// A consistent-hashing picker with bounded loads. See the [module docs](self).
///
/// Wraps [`Maglev`](crate::Maglev), [`Ring`](crate::Ring) or
/// [`Rendezvous`](crate::Rendezvous) (any [`HashPicker`]); requests without a key go to
/// the wrapped picker's fallback.
///
/// # Examples
///
/// ```
/// use tower_lb::affinity::hash_key;
/// use tower_lb::{BoundedLoad, Maglev, PickContext, Picker, Snapshot, Weight};
///
/// let snapshot = Snapshot::build((0..4).map(|i| (format!("10.0.0.{i}:80"), Weight::ONE)))?;
/// let picker = BoundedLoad::new(Maglev::new());
/// let table = picker.prepare(&snapshot, None);
///
/// // One very hot key: its home fills up to ⌈1.25 · m / 4⌉, then it spills over.
/// let ctx = PickContext::new().with_hash(hash_key(b"hot"));
/// let mut guards = Vec::new();
/// for _ in 0..100 {
///     let i = picker.pick(&table, &snapshot, &ctx).unwrap();
///     guards.push(snapshot.backends()[i].state().start());
/// }
/// let max = snapshot.backends().iter().map(|b| b.state().in_flight()).max().unwrap();
/// assert!(max <= 32); // ⌈1.25 · 100 / 4⌉
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct BoundedLoad<H> {
    inner: H,
    /// c in units of 1/2¹⁶.
    factor: u64,
}

impl<H> BoundedLoad<H> {
    /// Bounded loads over `inner` with the balance factor [`DEFAULT_BALANCE_FACTOR`].
    pub fn new(inner: H) -> Self {
        BoundedLoad {
            inner,
            factor: (DEFAULT_BALANCE_FACTOR * FACTOR_ONE as f64) as u64,
        }
    }

    /// The same picker with balance factor `c`; fails unless `1 ≤ c ≤ 65536`. Applied
    /// to a precision of 1/65536.
    ///
    /// ```
    /// use tower_lb::{BoundedLoad, Maglev};
    ///
    /// assert!(BoundedLoad::new(Maglev::new()).with_balance_factor(1.5).is_ok());
    /// assert!(BoundedLoad::new(Maglev::new()).with_balance_factor(0.9).is_err());
    /// assert!(BoundedLoad::new(Maglev::new()).with_balance_factor(f64::NAN).is_err());
    /// ```
    pub fn with_balance_factor(self, c: f64) -> Result<Self, ConfigError> {
        if !(1.0..=MAX_BALANCE_FACTOR).contains(&c) {
            return Err(ConfigError::BalanceFactor { factor: c });
        }
        Ok(BoundedLoad {
            inner: self.inner,
            factor: (c * FACTOR_ONE as f64).round() as u64,
        })
    }

    /// The balance factor c.
    pub fn balance_factor(&self) -> f64 {
        self.factor as f64 / FACTOR_ONE as f64
    }

    /// The wrapped picker.
    pub fn inner(&self) -> &H {
        &self.inner
    }
}

/// Bounded loads over `H`'s default with the balance factor [`DEFAULT_BALANCE_FACTOR`].
impl<H: Default> Default for BoundedLoad<H> {
    fn default() -> Self {
        BoundedLoad::new(H::default())
    }
}

/// The load bound of this pick: Σ in flight and Σ weight over the eligible members.
struct Bound {
    in_flight: u128,
    total_weight: u128,
    uniform: bool,
    eligible: u128,
}

impl Bound {
    fn read<A>(snapshot: &Snapshot<A>) -> Self {
        let mut in_flight = 0u128;
        let mut total_weight = 0u128;
        let mut first_weight = None;
        let mut uniform = true;
        for &i in snapshot.eligible() {
            let i = i as usize;
            if let Some(b) = snapshot.get(i) {
                in_flight += b.state().in_flight() as u128;
            }
            let w = snapshot.effective_weight(i);
            total_weight += u128::from(w);
            uniform &= *first_weight.get_or_insert(w) == w;
        }
        Bound {
            in_flight,
            total_weight,
            uniform,
            eligible: snapshot.eligible().len() as u128,
        }
    }

    /// ⌈c · (m + 1) · wᵢ / Σw⌉ (⌈c · (m + 1) / n⌉ at equal weights), saturating.
    fn capacity(&self, factor: u64, weight: u32) -> u128 {
        let c_m = u128::from(factor).saturating_mul(self.in_flight.saturating_add(1));
        let (num, den) = if self.uniform {
            (c_m, self.eligible)
        } else {
            (c_m.saturating_mul(u128::from(weight)), self.total_weight)
        };
        num.div_ceil(den.saturating_mul(u128::from(FACTOR_ONE)).max(1))
    }
}

impl<A, H: HashPicker<A>> Picker<A> for BoundedLoad<H> {
    type Table = H::Table;

    fn uses_affinity(&self) -> bool {
        true
    }

    fn reads_latency(&self) -> bool {
        self.inner.reads_latency()
    }

    fn prepare(&self, snapshot: &Snapshot<A>, previous: Option<&Self::Table>) -> Self::Table {
        self.inner.prepare(snapshot, previous)
    }

    #[inline]
    fn pick(&self, table: &H::Table, snapshot: &Snapshot<A>, ctx: &PickContext) -> Option<usize> {
        let Some(hash) = ctx.hash() else {
            return self.inner.pick(table, snapshot, ctx);
        };
        self.find(Lookup::new(table, snapshot, hash), |_| true)
            // Every eligible backend at its bound (load from outside this picker): the
            // key's first choice with no recent failure, else its first choice.
            .or_else(|| {
                let now = crate::clock::now_nanos();
                let sound = |i: usize| {
                    snapshot
                        .get(i)
                        .is_some_and(|b| b.state().failure_score_at(now) == 0.0)
                };
                // (Checked first: a walk that finds none visits the whole table.)
                snapshot
                    .eligible()
                    .iter()
                    .any(|&i| sound(i as usize))
                    .then(|| self.inner.find(Lookup::new(table, snapshot, hash), sound))
                    .flatten()
            })
            .or_else(|| self.inner.pick(table, snapshot, ctx))
    }
}

impl<A, H: HashPicker<A>> HashPicker<A> for BoundedLoad<H> {
    /// The wrapped picker's preference order, restricted to backends below their bound.
    fn find(&self, key: Lookup<'_, A, Self::Table>, mut accept: impl Accept) -> Option<usize> {
        let snapshot = key.snapshot;
        let mut bound: Option<Bound> = None;
        let now = std::cell::OnceCell::new();
        let mut below = |i: usize| {
            // In flight, with recent failures counted as load (see `BackendState::load`).
            let load = snapshot.get(i).map_or(f64::INFINITY, |b| {
                b.state()
                    .load_with(|| *now.get_or_init(crate::clock::now_nanos))
            });
            // Nothing in flight is below any bound (every bound is at least 1).
            load == 0.0 || {
                let bound = bound.get_or_insert_with(|| Bound::read(snapshot));
                load < bound.capacity(self.factor, snapshot.effective_weight(i)) as f64
            }
        };
        // The common case: the key's first choice is below its bound.
        let first = self.inner.find(key, |_| true)?;
        if below(first) && accept(first) {
            return Some(first);
        }
        // Walk the key's order only if some backend can take the request: a walk that
        // finds none would visit the wrapped picker's whole table (65 537 Maglev slots).
        let any = snapshot
            .eligible()
            .iter()
            .any(|&i| below(i as usize) && accept(i as usize));
        if !any {
            return None;
        }
        self.inner.find(key, |i| below(i) && accept(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(in_flight: u128, n: u128) -> Bound {
        Bound {
            in_flight,
            total_weight: n,
            uniform: true,
            eligible: n,
        }
    }

    #[test]
    fn capacity_is_the_exact_ceiling() {
        let c = (1.25 * FACTOR_ONE as f64) as u64;
        // ⌈1.25 · 4 / 5⌉ = 1, ⌈1.25 · 5 / 5⌉ = 2, ⌈1.25 · 8 / 5⌉ = 2, ⌈1.25 · 100 / 4⌉ = 32
        assert_eq!(bound(3, 5).capacity(c, 1), 1);
        assert_eq!(bound(4, 5).capacity(c, 1), 2);
        assert_eq!(bound(7, 5).capacity(c, 1), 2);
        assert_eq!(bound(99, 4).capacity(c, 1), 32);
        let weighted = Bound {
            in_flight: 9,
            total_weight: 4,
            uniform: false,
            eligible: 2,
        };
        // weights 1 and 3: ⌈1.25 · 10 · 1/4⌉ = 4, ⌈1.25 · 10 · 3/4⌉ = 10
        assert_eq!(weighted.capacity(c, 1), 4);
        assert_eq!(weighted.capacity(c, 3), 10);
        assert!(bound(u128::MAX, 1).capacity(u64::MAX, 1) > 0);
        assert!(bound(0, 0).capacity(c, 1) >= 1);
    }

    #[test]
    fn factor_range() {
        struct Nothing;
        for bad in [0.0, 0.999, f64::NAN, f64::INFINITY, -1.0, 1e9] {
            assert!(BoundedLoad::new(Nothing).with_balance_factor(bad).is_err());
        }
        let ok = BoundedLoad::new(Nothing).with_balance_factor(1.0).unwrap();
        assert_eq!(ok.balance_factor(), 1.0);
        assert_eq!(BoundedLoad::new(Nothing).balance_factor(), 1.25);
    }
}
