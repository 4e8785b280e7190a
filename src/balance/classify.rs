//! Classifying a finished request as a success or a failure, for passive health.

use std::fmt;

/// Decides whether a finished request counts as a success (for passive health and the
/// success/failure totals).
pub trait Classify<T, E> {
    /// `true` when the request succeeded.
    fn is_success(&self, result: Result<&T, &E>) -> bool;

    /// How the response's trailers change the outcome, for a classifier whose verdict
    /// may arrive at the end of the body (gRPC's `grpc-status`). Read by body tracking
    /// ([`TrackBodyLayer`](super::TrackBodyLayer)) when the trailers frame passes;
    /// without body tracking the outcome is decided on the response head. `None` (the
    /// default): trailers do not matter.
    fn trailers(&self) -> Option<ClassifyTrailers> {
        None
    }
}

/// A check of a response's trailers: a function and one word of configuration, so that
/// it is `Copy` and travels with the request's tracking without an allocation.
/// [`GrpcStatus`](super::GrpcStatus) builds one that reads `grpc-status`.
#[derive(Clone, Copy)]
pub struct ClassifyTrailers {
    check: fn(&http::HeaderMap, u64) -> bool,
    config: u64,
}

impl ClassifyTrailers {
    /// A check that calls `check(trailers, config)`; `true` is a success.
    pub const fn new(check: fn(&http::HeaderMap, u64) -> bool, config: u64) -> Self {
        ClassifyTrailers { check, config }
    }

    /// Whether `trailers` tell a success.
    pub fn is_success(&self, trailers: &http::HeaderMap) -> bool {
        (self.check)(trailers, self.config)
    }
}

impl fmt::Debug for ClassifyTrailers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyTrailers")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Every response is a success, every error a failure: the default classifier (named as
/// tower-http names its `ServerErrorsAsFailures`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsAsFailures;

impl<T, E> Classify<T, E> for ErrorsAsFailures {
    fn is_success(&self, result: Result<&T, &E>) -> bool {
        result.is_ok()
    }
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(Result<&T, &E>) -> bool,
{
    fn is_success(&self, result: Result<&T, &E>) -> bool {
        self(result)
    }
}

/// The former name of [`ErrorsAsFailures`].
#[deprecated(
    since = "0.2.0",
    note = "renamed `ErrorsAsFailures`: it classifies, it is not an error"
)]
pub type AnyError = ErrorsAsFailures;
