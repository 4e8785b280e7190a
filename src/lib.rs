//! An embeddable, client-side load balancer.
//!
//! `tower-lb` chooses a backend for each request inside your process: there is no
//! balancer to run, to scale, or to lose. Pickers are lock-free and allocate nothing on
//! the hot path; membership changes are published as immutable snapshots; per-backend
//! live state (in flight, totals, a peak-EWMA latency estimate) survives them.
//!
//! The pieces:
//!
//! - [`Pool`] — a shared backend set with its [`Picker`]; `insert`, `remove`,
//!   `set_weight` from any thread while others `pick`;
//! - [`Picker`] — the strategy: [`RoundRobin`], [`WeightedRoundRobin`] (NGINX's smooth
//!   interleaving), [`Random`], [`WeightedRandom`] (alias method), [`LeastLoaded`],
//!   [`PowerOfTwoChoices`], [`PeakEwma`] and [`ServerLoad`] (weights from the
//!   backends' [`orca`] load reports); each documents its guarantee and cost;
//!   [`AnyPicker`] chooses one of them at run time, by name;
//! - [`Snapshot`] — an immutable view of the set, for calling pickers directly;
//! - [`health`] — which backends may receive traffic: passive outlier ejection, active
//!   probes, the panic threshold, slow start, drain and admin, your own
//!   [`HealthSource`](health::HealthSource)s. Health changes the snapshot, never the
//!   pick path.
//! - session affinity — an [`AffinityKey`] extracts a request's key (header, cookie,
//!   path, query parameter, peer address; see [`affinity`]) and a consistent-hashing
//!   picker maps it to the same backend in every balancer instance: [`Maglev`],
//!   [`Ring`], [`Rendezvous`], [`Jump`], and [`BoundedLoad`] over them (see
//!   [`pick::hash`]).
//! - [`subset`] — many client instances: each holds a few backends (deterministic
//!   subsetting, deterministic aperture), balanced in connections and load.
//!
//! # Quick start
//!
//! ```
//! use tower_lb::{PickContext, Pool, PowerOfTwoChoices, Weight};
//!
//! let pool = Pool::new(PowerOfTwoChoices::new());
//! pool.insert("10.0.0.1:8080", Weight::ONE)?;
//! pool.insert("10.0.0.2:8080", Weight::new(2)?)?;
//!
//! let picked = pool.pick(&PickContext::new())?;
//! let request = picked.start(); // in flight until finished or dropped
//! println!("sending to {}", picked.addr());
//! request.success();
//!
//! for s in pool.stats() {
//!     println!("{} {} in flight {} picks {}", s.id, s.addr, s.in_flight, s.picks);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Features
//!
//! - `tower` (default): the tower integration — `Balance`, `BalanceLayer`, retries
//!   (`RetryLayer`), and the request's `Steering` that lets the layers compose (an
//!   `http::Request` carries it, so this feature takes the small `http` crate). Pickers
//!   and the backend model need no async runtime and no tower.
//! - `tokio`: the background health task (`Pool::spawn_health`,
//!   `Pool::spawn_health_probes`), the TCP probe, DNS discovery and the per-attempt
//!   time-out (`BalanceLayer::timeout`); health's clock then reads tokio's, so tests with
//!   a paused clock drive it.
//! - `http`: Layer 7 affinity keys on `http::Request` — `HeaderKey`, `CookieKey`,
//!   `PathKey`, `QueryKey` in [`affinity`] (`HeaderKey` also keys on gRPC metadata) —,
//!   the HTTP health probe (`HttpProbe`, with `tokio`), sticky cookies (`StickyCookie`,
//!   `StickyLayer`: the balancer issues a signed cookie naming the backend), body
//!   tracking (`TrackBodyLayer`: in flight until the response body ends), `HttpTarget`
//!   routing (one HTTP client retargeted at each picked backend), `HttpBalance` (that
//!   stack's type), and the outcome classifiers `HttpStatus` (5xx are failures) and
//!   `GrpcStatus` (`grpc-status` in heads and trailers).
//! - `metrics`: per-backend counters, gauges and a latency histogram through the
//!   [`metrics`](https://docs.rs/metrics) facade (`tower_lb_backend_requests_total`,
//!   `tower_lb_backend_in_flight`, `tower_lb_backend_healthy`,
//!   `tower_lb_backend_ejections_total`, `tower_lb_backend_weight`,
//!   `tower_lb_request_duration_seconds`); install any recorder (Prometheus, StatsD...)
//!   before building pools, and name backends with `PoolBuilder::metrics_label`. Off,
//!   it compiles to nothing: no field, no branch on the request path.
//!
//! Health and membership changes are also [events](PoolEvent): `Pool::on_event` (any
//! features) and `Pool::subscribe` (a tokio `broadcast` channel, with `tokio`).
//!
//! # Metrics
//!
//! With the `metrics` feature, each backend's series, after Envoy's and HAProxy's
//! per-backend ones:
//!
//! | name | kind | labels |
//! | --- | --- | --- |
//! | `tower_lb_backend_requests_total` | counter | `backend`, `outcome` = `success` \| `failure` \| `timeout` \| `cancelled` |
//! | `tower_lb_backend_in_flight` | gauge | `backend` |
//! | `tower_lb_backend_healthy` | gauge, 1 or 0 (the health verdict) | `backend` |
//! | `tower_lb_backend_ejections_total` | counter | `backend` |
//! | `tower_lb_backend_weight` | gauge (the configured weight) | `backend` |
//! | `tower_lb_request_duration_seconds` | histogram | `backend` |
//!
//! `failure` is a request its classifier judged failed; `timeout` one the balancer's
//! per-attempt time-out ended; `cancelled` one whose future or guard was dropped
//! unfinished (whether passive health counted it as a failure or not). The series of a
//! backend register with the recorder current when the backend is first published:
//! install the recorder before building pools. A removed backend's gauges drop to 0
//! (the facade cannot unregister a series).
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

pub mod affinity;
mod backend;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod balance;
pub mod clock;
mod error;
pub mod health;
pub mod orca;
pub mod pick;
pub mod pool;
mod rng;
mod snapshot;
mod stable_hash;
pub mod subset;
mod verdict;

pub use affinity::AffinityKey;
pub use backend::{
    Backend, BackendId, BackendState, BackendStats, DEFAULT_EWMA_DECAY, FAILURE_DECAY, InFlight,
    Weight, WeightError,
};
#[allow(deprecated)]
pub use error::HealthConfigError;
pub use error::{
    BackendError, ConfigError, DiscoverError, MembershipError, Overloaded, PickError, ProbeError,
    SpawnError, TimedOut,
};
pub use pick::any::{AnyPicker, UnknownStrategy};
pub use pick::hash::bounded_load::BoundedLoad;
pub use pick::hash::jump::Jump;
pub use pick::hash::maglev::Maglev;
pub use pick::hash::rendezvous::Rendezvous;
pub use pick::hash::ring::Ring;
pub use pick::hash::{Accept, BackendKey, HashPicker, Lookup};
pub use pick::least_loaded::LeastLoaded;
pub use pick::p2c::PowerOfTwoChoices;
pub use pick::peak_ewma::PeakEwma;
pub use pick::random::Random;
pub use pick::round_robin::RoundRobin;
pub use pick::server_load::ServerLoad;
pub use pick::weighted_random::WeightedRandom;
pub use pick::weighted_round_robin::WeightedRoundRobin;
pub use pick::{PickContext, Picker};
pub use pool::{CachedPick, Edit, Picked, Pool, PoolBuilder, PoolCache, PoolEvent, Prepared};
pub use snapshot::Snapshot;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
