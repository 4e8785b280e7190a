//! A backend's identity within a pool.

use std::fmt;

/// A backend's identity within one [`Pool`](crate::Pool): assigned on insertion, never
/// reused by that pool, stable for the backend's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendId(u64);

impl BackendId {
    /// The id as a number.
    pub const fn get(self) -> u64 {
        self.0
    }

    pub(crate) const fn new(raw: u64) -> Self {
        BackendId(raw)
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend#{}", self.0)
    }
}
