//! Per-backend metrics through the [`metrics`] facade (the `metrics` feature).
//!
//! Handles are registered with the recorder installed when the backend is first
//! published (install the recorder — Prometheus, StatsD... — before building pools), so
//! the request path only bumps a registered handle: no label formatting, no map lookup.
//! The series are listed in the crate docs (`# Metrics`).
//!
//! A request cancelled (its guard dropped unfinished) counts as `cancelled` whether or
//! not passive health counted it as a failure; `timeout` is the balancer's per-attempt
//! time-out. The `backend` label is the pool's label for the backend
//! ([`PoolBuilder::metrics_label`](crate::PoolBuilder::metrics_label); by default the
//! backend id, `backend#3`). A removed backend's gauges are set to 0.

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

/// How a request ended, for `tower_lb_backend_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Failure,
    Timeout,
    Cancelled,
}

/// One backend's registered handles.
pub(crate) struct BackendMetrics {
    requests: [Counter; 4],
    in_flight: Gauge,
    pub(crate) healthy: Gauge,
    pub(crate) ejections: Counter,
    pub(crate) weight: Gauge,
    duration: Histogram,
}

impl std::fmt::Debug for BackendMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendMetrics").finish_non_exhaustive()
    }
}

impl BackendMetrics {
    /// Registers the backend's series with the current recorder.
    pub(crate) fn new(backend: String) -> Self {
        let requests = |outcome: &'static str| {
            counter!(
                "tower_lb_backend_requests_total",
                "backend" => backend.clone(),
                "outcome" => outcome
            )
        };
        BackendMetrics {
            requests: [
                requests("success"),
                requests("failure"),
                requests("timeout"),
                requests("cancelled"),
            ],
            in_flight: gauge!("tower_lb_backend_in_flight", "backend" => backend.clone()),
            healthy: gauge!("tower_lb_backend_healthy", "backend" => backend.clone()),
            ejections: counter!("tower_lb_backend_ejections_total", "backend" => backend.clone()),
            weight: gauge!("tower_lb_backend_weight", "backend" => backend.clone()),
            duration: histogram!("tower_lb_request_duration_seconds", "backend" => backend),
        }
    }

    pub(crate) fn started(&self) {
        self.in_flight.increment(1.0);
    }

    pub(crate) fn ended(&self) {
        self.in_flight.decrement(1.0);
    }

    pub(crate) fn finished(&self, outcome: Outcome, seconds: f64) {
        self.requests[outcome as usize].increment(1);
        self.duration.record(seconds);
    }

    /// The backend left the pool: its gauges read 0 from now on.
    pub(crate) fn removed(&self) {
        self.healthy.set(0.0);
        self.weight.set(0.0);
    }
}
