//! Deterministic aperture, after Finagle.

use std::num::{NonZeroU64, NonZeroUsize};

use super::{Chosen, Subsetting, order};
use crate::error::ConfigError;
use crate::pick::hash::BackendKey;

/// The seed of the ring's backend order (any constant; every instance must use the same).
const RING_SEED: u64 = 0x6170_6572_7475_7265; // "aperture"

/// Coverage below this is rounding noise of the arc's ends, not a member.
const MIN_COVERAGE: f64 = 1e-9;

/// Where this instance sits on the ring.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Coordinate {
    /// Instance `i` of `n`: offset i/n, width 1/n, computed exactly in backend units.
    Index { i: u64, n: u64 },
    /// A ring coordinate given directly: offset in [0, 1), width in (0, 1].
    Ring { offset: f64, width: f64 },
}

/// Finagle's deterministic aperture: the instance's arc of the unit ring, and every
/// backend it touches with the fraction it covers.
///
/// Backends sit on the ring in an order every instance agrees on (their keys' stable
/// hash), backend p of S on [p/S, (p+1)/S). Instance i of C sits at offset i/C with
/// width 1/C; its *aperture* is the arc [i/C, i/C + w), w = max(k/S, 1/C) — at least k
/// backends' worth, and never less than the instance's own slice, so that the arcs of
/// all instances cover the whole ring and no backend is left without clients. A backend
/// at an arc's end is a member with [`coverage`](Chosen::coverage) below 1; weighting
/// members by coverage ([`Chosen::weight`]) makes the load each backend receives the
/// sum of the arcs over it, even to within one instance's share. See the
/// [module docs](super) for the guarantees.
///
/// Source: Finagle's `Aperture` balancer, "deterministic aperture" (Twitter, 2018), and
/// its `ProcessCoordinate` (offset = instance ÷ instances, width = 1 ÷ instances).
///
/// # Examples
///
/// ```
/// use std::num::{NonZeroU64, NonZeroUsize};
/// use tower_lb::subset::{Aperture, Subsetting};
///
/// let backends: Vec<String> = (0..8).map(|i| format!("b{i}")).collect();
/// let aperture = Aperture::new(1, NonZeroU64::new(3).unwrap(), NonZeroUsize::new(2).unwrap())?;
/// // 8/3 backends' worth: two whole backends and two thirds of a third (or 3 partial).
/// let chosen = aperture.select(&backends);
/// let covered: f64 = chosen.iter().map(|c| c.coverage).sum();
/// assert!((covered - 8.0 / 3.0).abs() < 1e-9);
/// # Ok::<(), tower_lb::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aperture {
    coordinate: Coordinate,
    size: NonZeroUsize,
}

impl Aperture {
    /// The aperture of instance `instance` of `instances` (0-based), at least `size`
    /// backends wide. Fails when `instance` is not below `instances`.
    pub fn new(
        instance: u64,
        instances: NonZeroU64,
        size: NonZeroUsize,
    ) -> Result<Self, ConfigError> {
        if instance >= instances.get() {
            return Err(ConfigError::ApertureInstance {
                instance,
                instances: instances.get(),
            });
        }
        Ok(Aperture {
            coordinate: Coordinate::Index {
                i: instance,
                n: instances.get(),
            },
            size,
        })
    }

    /// The aperture at a ring coordinate given directly — `offset` in [0, 1) and the
    /// instance's `width` in (0, 1] — as when instances place themselves (Finagle's
    /// `ProcessCoordinate`). Fails on a value out of range or not finite.
    pub fn from_coordinate(
        offset: f64,
        width: f64,
        size: NonZeroUsize,
    ) -> Result<Self, ConfigError> {
        let offset_ok = offset.is_finite() && (0.0..1.0).contains(&offset);
        let width_ok = width.is_finite() && width > 0.0 && width <= 1.0;
        if !offset_ok || !width_ok {
            return Err(ConfigError::RingCoordinate { offset, width });
        }
        Ok(Aperture {
            coordinate: Coordinate::Ring { offset, width },
            size,
        })
    }

    /// The minimum number of backends k.
    pub const fn size(&self) -> usize {
        self.size.get()
    }

    /// The arc in backend units for `s` backends: its start in [0, s) and its length in
    /// (0, s].
    fn arc(&self, s: usize) -> (f64, f64) {
        let s_f = s as f64;
        let (start, own) = match self.coordinate {
            // i·S/C and S/C: exact whenever C divides i·S.
            Coordinate::Index { i, n } => (
                (u128::from(i) * s as u128) as f64 / n as f64,
                s_f / n as f64,
            ),
            Coordinate::Ring { offset, width } => (offset * s_f, width * s_f),
        };
        let len = (self.size.get() as f64).max(own).min(s_f);
        (start % s_f, len)
    }
}

impl Subsetting for Aperture {
    fn select<K: BackendKey>(&self, backends: &[K]) -> Vec<Chosen> {
        let s = backends.len();
        if s == 0 {
            return Vec::new();
        }
        let ordered = order(backends, RING_SEED);
        let (start, len) = self.arc(s);
        let end = start + len;
        // Coverage per ring position; an arc as long as the ring meets its first
        // position again at its end, and the two parts add up.
        let mut coverage = vec![0.0_f64; s];
        let mut p = start.floor();
        while p < end {
            let overlap = (p + 1.0).min(end) - p.max(start);
            if let Some(c) = coverage.get_mut(p as usize % s) {
                *c += overlap.max(0.0);
            }
            p += 1.0;
        }
        coverage
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c > MIN_COVERAGE)
            .map(|(pos, &c)| Chosen {
                index: ordered[pos],
                coverage: c.min(1.0),
            })
            .collect()
    }
}
