//! Classifying a finished request as a success or a failure, for passive health.

/// Decides whether a finished request counts as a success (for passive health and the
/// success/failure totals).
pub trait Classify<T, E> {
    /// `true` when the request succeeded.
    fn is_success(&self, result: Result<&T, &E>) -> bool;
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
