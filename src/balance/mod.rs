//! The tower integration: [`Balance`], a `tower::Service` that spreads requests over a
//! [`Pool`](crate::Pool) of backends, and [`BalanceLayer`], its builder and layer.
//!
//! Unlike tower's own balancer, which chooses an endpoint in `poll_ready` before the
//! request is known, `Balance` chooses in `call`, where the request is at hand: affinity
//! keys (a header, a cookie, the peer address) can steer it, and a picker that hashes
//! sees every request. The flow of one request:
//!
//! 1. `poll_ready` applies pending discovery changes and, when a per-backend limit is
//!    set, reserves one unit of the set's capacity (Σ limits over eligible backends),
//!    or waits for one (`Pending`, woken when a request finishes), or lets the request
//!    through to be shed — as configured. A reservation not followed by `call` is
//!    released when the service is dropped; `Clone` never copies one.
//! 2. `call` extracts the affinity key, picks a backend over the current snapshot, skips
//!    to another eligible backend when the picked one is at its limit, starts an
//!    in-flight guard, and routes the request ([`Route`]): to the backend's own service
//!    ([`PerBackend`]), or through one shared client pointed at the backend
//!    ([`Client`] + [`Retarget`], as `BalanceLayer::layer` does).
//! 3. The response future awaits the inner service's readiness, then its response.
//!    When it completes, the outcome is classified ([`Classify`]) and reported — in
//!    flight − 1, latency into the backend's peak-EWMA estimate, success or failure to
//!    passive health; when it is dropped, the guard still releases the in-flight count.
//!
//! Readiness policy: the inner service's readiness is awaited inside the response
//! future, so one slow-to-ready backend never blocks requests bound elsewhere, and a
//! backend whose service stays not ready accumulates in-flight requests, which the
//! load-aware strategies steer around. `Balance` is `Clone` and cheap to clone: clones
//! share the backend set, its live state and its limits, so many tasks use one balancer
//! without a `Buffer`.
//!
//! Errors follow tower's convention: the service's error is a [`BoxError`] that is one
//! of [`PickError`](crate::PickError) (no backend), [`Overloaded`](crate::Overloaded),
//! [`DiscoverError`](crate::DiscoverError), [`TimedOut`](crate::TimedOut) (the
//! per-attempt time-out, naming the backend), or [`BackendError`](crate::BackendError):
//! the inner service's own error with the backend it came from, found by
//! [`find_error`] or `BackendError::downcast_ref`.

mod backend_service;
#[cfg(feature = "http")]
mod body;
mod classify;
mod discover;
#[cfg(feature = "tokio")]
mod dns;
pub mod future;
#[cfg(feature = "http")]
mod grpc;
#[cfg(feature = "http")]
mod http;
mod layer;
mod limit;
pub mod retry;
mod route;
mod service;
pub mod steer;
#[cfg(feature = "http")]
pub mod sticky;

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use self::http::{HttpBalance, HttpStatus, HttpTarget, InvalidTarget};
pub use backend_service::BackendService;
#[allow(deprecated)]
pub use backend_service::Endpoint;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use body::{TrackBody, TrackBodyFuture, TrackBodyLayer, TrackedBody};
#[allow(deprecated)]
pub use classify::AnyError;
pub use classify::{Classify, ClassifyTrailers, ErrorsAsFailures};
pub use discover::{Change, Discovery, Weighted};
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use dns::DnsDiscover;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use grpc::GrpcStatus;
pub use layer::BalanceLayer;
pub use limit::OnOverload;
pub use retry::{Retry, RetryLayer, RetryPolicy};
pub use route::{Client, PerBackend, Retarget, Route};
pub use service::{Balance, NoAffinity};
pub use steer::{Steer, Steering};
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use sticky::{SameSite, Sticky, StickyCookie, StickyError, StickyLayer};

/// The boxed error type of [`Balance`], as in tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The first error of type `T` in `error`'s chain (itself, then its sources): how to find
/// an inner service's error under the [`BackendError`](crate::BackendError) that names
/// its backend.
///
/// ```
/// use tower_lb::balance::{BoxError, find_error};
/// use tower_lb::{BackendError, TimedOut};
///
/// # fn check(error: BoxError) {
/// if let Some(io) = find_error::<std::io::Error>(&error) {
///     println!("transport error: {io}");
/// }
/// # }
/// ```
pub fn find_error<T: std::error::Error + 'static>(error: &BoxError) -> Option<&T> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&**error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}
