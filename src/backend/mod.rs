//! The backend model: ids, weights and per-backend live state.
//!
//! What changes on every request — in-flight count, totals, the latency estimate, the
//! failure score, health's counters — lives in [`BackendState`], a block of atomics
//! shared by every [`Snapshot`](crate::Snapshot) the backend appears in, so a backend
//! that survives a membership change keeps it. This module is a leaf: it knows nothing
//! of health's rules, pickers or pools.

use std::sync::Arc;

mod health;
mod id;
mod in_flight;
#[cfg(feature = "metrics")]
pub(crate) mod metrics;
mod state;
mod stats;
mod weight;

pub(crate) use health::{
    ADMIN_DOWN, ADMIN_DRAIN, ADMIN_UP, HealthCell, HealthShared, STREAK, TRIPPED,
};
pub use id::BackendId;
pub use in_flight::InFlight;
pub use state::{BackendState, DEFAULT_EWMA_DECAY, FAILURE_DECAY};
pub use stats::BackendStats;
pub use weight::{Weight, WeightError};

/// One member of a backend set.
///
/// Cheap to clone whatever the address type: the address is shared (an `Arc`), so a
/// new snapshot of N members copies N pointers and allocates nothing per member.
#[derive(Debug)]
pub struct Backend<A> {
    id: BackendId,
    addr: Arc<A>,
    weight: Weight,
    state: Arc<BackendState>,
}

impl<A> Clone for Backend<A> {
    fn clone(&self) -> Self {
        Backend {
            id: self.id,
            addr: Arc::clone(&self.addr),
            weight: self.weight,
            state: Arc::clone(&self.state),
        }
    }
}

impl<A> Backend<A> {
    pub(crate) fn new(id: BackendId, addr: A, weight: Weight, state: Arc<BackendState>) -> Self {
        Backend {
            id,
            addr: Arc::new(addr),
            weight,
            state,
        }
    }

    /// The backend's id.
    #[inline]
    pub fn id(&self) -> BackendId {
        self.id
    }

    /// The backend's address (whatever the user keyed it by).
    #[inline]
    pub fn addr(&self) -> &A {
        &self.addr
    }

    /// The configured weight.
    #[inline]
    pub fn weight(&self) -> Weight {
        self.weight
    }

    /// The live state shared across snapshots.
    #[inline]
    pub fn state(&self) -> &Arc<BackendState> {
        &self.state
    }

    pub(crate) fn with_weight(&self, weight: Weight) -> Self {
        Backend {
            weight,
            ..self.clone()
        }
    }
}
