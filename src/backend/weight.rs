//! Weights: a backend's share of traffic relative to the others.

use std::fmt;
use std::num::NonZeroU32;

/// A weight outside `1..=Weight::MAX` was refused.
///
/// Zero is refused because a backend that should get no traffic is a *health* state
/// (draining or down), not a weight; values past `u32::MAX` are refused so that the sum
/// of any set's weights fits in a `u64` without overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("weight: {value} is out of range, a weight must be between 1 and {max}", max = Weight::MAX)]
pub struct WeightError {
    /// The refused value.
    pub value: u64,
}

/// A backend's share of traffic relative to the others: an integer in `1..=Weight::MAX`.
///
/// # Examples
///
/// ```
/// use tower_lb::Weight;
///
/// assert_eq!(Weight::new(5).unwrap().get(), 5);
/// assert!(Weight::new(0).is_err());
/// assert!(Weight::new(u64::from(u32::MAX) + 1).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight(NonZeroU32);

impl Weight {
    /// The largest weight: `u32::MAX`, so the sum over any set fits in a `u64`.
    pub const MAX: u32 = u32::MAX;
    /// Weight 1, the default.
    pub const ONE: Weight = Weight(NonZeroU32::MIN);

    /// A weight, or an error naming the value when it is zero or above [`Weight::MAX`].
    pub fn new(value: u64) -> Result<Weight, WeightError> {
        u32::try_from(value)
            .ok()
            .and_then(NonZeroU32::new)
            .map(Weight)
            .ok_or(WeightError { value })
    }

    /// The weight as a number.
    pub const fn get(self) -> u32 {
        self.0.get()
    }
}

impl Default for Weight {
    fn default() -> Self {
        Weight::ONE
    }
}

impl From<NonZeroU32> for Weight {
    fn from(value: NonZeroU32) -> Self {
        Weight(value)
    }
}

impl TryFrom<u32> for Weight {
    type Error = WeightError;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Weight::new(u64::from(value))
    }
}

impl TryFrom<u64> for Weight {
    type Error = WeightError;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        Weight::new(value)
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_bounds() {
        assert_eq!(Weight::new(0), Err(WeightError { value: 0 }));
        assert_eq!(Weight::new(1).map(Weight::get), Ok(1));
        assert_eq!(
            Weight::new(u64::from(u32::MAX)).map(Weight::get),
            Ok(u32::MAX)
        );
        let over = u64::from(u32::MAX) + 1;
        let err = Weight::new(over).unwrap_err();
        assert_eq!(err.value, over);
        assert!(err.to_string().contains(&over.to_string()));
    }
}
