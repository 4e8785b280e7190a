//! gRPC outcomes for passive health: the rules are on [`GrpcStatus`].

use http::{HeaderMap, StatusCode};

use super::classify::{Classify, ClassifyTrailers};
use crate::error::ConfigError;

/// The highest status code gRPC defines (`UNAUTHENTICATED`).
const MAX_CODE: i32 = 16;
/// `UNKNOWN`: what an unreadable `grpc-status` counts as.
const UNKNOWN: i32 = 2;

/// gRPC outcomes for passive health: `grpc-status` in the response head
/// (trailers-only responses) and, with body tracking, in the trailers.
///
/// A gRPC call answers HTTP 200 whatever its outcome: the status travels in the
/// `grpc-status` field — in the response *headers* for a trailers-only response (an
/// error before any message, as tonic sends a unary handler's `Err(Status)`), else in
/// the *trailers* after the last message. So [`GrpcStatus`] classifies the head, and
/// hands body tracking ([`TrackBodyLayer`](super::TrackBodyLayer)) a check of the
/// trailers ([`Classify::trailers`]); without body tracking only the head is read (a
/// unary error still is, being trailers-only; an error in the trailers is not).
///
/// Which codes are failures: by default those that the canonical HTTP mapping of
/// `google.rpc.Code` (googleapis' `code.proto`, the one Envoy applies before counting
/// 5xx for outlier detection) sends to a 5xx — `UNKNOWN` (2), `DEADLINE_EXCEEDED` (4),
/// `UNIMPLEMENTED` (12), `INTERNAL` (13), `UNAVAILABLE` (14), `DATA_LOSS` (15). The
/// others are the caller's business (a bad argument, a missing entity, a denied
/// permission, `RESOURCE_EXHAUSTED` as HTTP 429) and say nothing about the backend's
/// health; `CANCELLED` (1) is the caller's own doing. gRPC's retry design (gRFC A6)
/// leaves the retryable codes to the service config and names `UNAVAILABLE` as the one
/// a server uses for "try elsewhere"; change the set with [`GrpcStatus::failure_code`].
///
/// A response whose HTTP status is not 200 is mapped as gRPC clients map it
/// (gRPC's `http-grpc-status-mapping.md`: 400 → `INTERNAL`, 401 → `UNAUTHENTICATED`,
/// 403 → `PERMISSION_DENIED`, 404 → `UNIMPLEMENTED`, 429, 502, 503, 504 →
/// `UNAVAILABLE`, any other → `UNKNOWN`), then classified by the same set. A
/// `grpc-status` that is not a number from 0 to 16 counts as `UNKNOWN`; a transport
/// error is a failure.
///
/// ```
/// use tower_lb::balance::{Classify, GrpcStatus};
///
/// let grpc = GrpcStatus::new();
/// let unavailable = http::Response::builder().header("grpc-status", "14").body(())?;
/// let not_found = http::Response::builder().header("grpc-status", "5").body(())?;
/// assert!(!Classify::<_, ()>::is_success(&grpc, Ok(&unavailable)));
/// assert!(Classify::<_, ()>::is_success(&grpc, Ok(&not_found)));
///
/// // RESOURCE_EXHAUSTED (8) as a failure too:
/// let strict = GrpcStatus::new().failure_code(8, true)?;
/// assert!(strict.is_failure_code(8));
/// assert!(GrpcStatus::new().failure_code(17, true).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcStatus {
    /// Bit `c` set: code `c` is a failure.
    failures: u32,
}

impl GrpcStatus {
    /// `UNKNOWN`, `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE` and
    /// `DATA_LOSS` are failures, as are transport errors.
    pub const fn new() -> Self {
        GrpcStatus {
            failures: 1 << 2 | 1 << 4 | 1 << 12 | 1 << 13 | 1 << 14 | 1 << 15,
        }
    }

    /// Counts `code` (0 to 16, as `tonic::Code as i32`) as a failure or not; an error
    /// for a code gRPC does not define. `OK` (0) may not be made a failure.
    pub fn failure_code(mut self, code: i32, is_failure: bool) -> Result<Self, ConfigError> {
        if !(0..=MAX_CODE).contains(&code) || (code == 0 && is_failure) {
            return Err(ConfigError::GrpcCode { code });
        }
        if is_failure {
            self.failures |= 1 << code;
        } else {
            self.failures &= !(1 << code);
        }
        Ok(self)
    }

    /// Whether `code` counts as a failure (a code outside 0..=16 as `UNKNOWN` does).
    pub fn is_failure_code(&self, code: i32) -> bool {
        failure(self.failures, code)
    }
}

impl Default for GrpcStatus {
    fn default() -> Self {
        GrpcStatus::new()
    }
}

fn failure(mask: u32, code: i32) -> bool {
    let code = if (0..=MAX_CODE).contains(&code) {
        code
    } else {
        UNKNOWN
    };
    mask & (1 << code) != 0
}

/// The `grpc-status` field of `headers`: `None` when absent, `UNKNOWN` when unreadable.
fn status_field(headers: &HeaderMap) -> Option<i32> {
    let value = headers.get("grpc-status")?;
    Some(
        std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .unwrap_or(UNKNOWN),
    )
}

/// The gRPC code a client gives a non-200 HTTP response (gRPC's
/// `http-grpc-status-mapping.md`).
fn code_of_http_status(status: StatusCode) -> i32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => UNKNOWN,
    }
}

fn trailers_ok(trailers: &HeaderMap, mask: u64) -> bool {
    // A trailers frame without `grpc-status` is left to the client to report.
    status_field(trailers).is_none_or(|code| !failure(mask as u32, code))
}

impl<B, E> Classify<http::Response<B>, E> for GrpcStatus {
    fn is_success(&self, result: Result<&http::Response<B>, &E>) -> bool {
        let Ok(response) = result else {
            return false;
        };
        if response.status() != StatusCode::OK {
            return !failure(self.failures, code_of_http_status(response.status()));
        }
        // Trailers-only: the status is in the head. Otherwise it comes in the trailers.
        status_field(response.headers()).is_none_or(|code| !failure(self.failures, code))
    }

    fn trailers(&self) -> Option<ClassifyTrailers> {
        Some(ClassifyTrailers::new(trailers_ok, u64::from(self.failures)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, grpc: Option<&str>) -> http::Response<()> {
        let mut b = http::Response::builder().status(status);
        if let Some(g) = grpc {
            b = b.header("grpc-status", g);
        }
        b.body(()).unwrap()
    }

    fn ok(c: &GrpcStatus, r: &http::Response<()>) -> bool {
        Classify::<_, ()>::is_success(c, Ok(r))
    }

    #[test]
    fn default_failures_are_the_codes_mapped_to_5xx() {
        let c = GrpcStatus::new();
        let failing: Vec<i32> = (0..=16).filter(|&k| c.is_failure_code(k)).collect();
        assert_eq!(failing, vec![2, 4, 12, 13, 14, 15]);
        for code in 0..=16 {
            let r = head(200, Some(&code.to_string()));
            assert_eq!(ok(&c, &r), !failing.contains(&code), "code {code}");
        }
    }

    #[test]
    fn heads_without_a_status_wait_for_the_trailers() {
        let c = GrpcStatus::new();
        assert!(ok(&c, &head(200, None)));
        let check = Classify::<http::Response<()>, ()>::trailers(&c).unwrap();
        let mut t = HeaderMap::new();
        assert!(check.is_success(&t));
        t.insert("grpc-status", "0".parse().unwrap());
        assert!(check.is_success(&t));
        t.insert("grpc-status", "14".parse().unwrap());
        assert!(!check.is_success(&t));
        t.insert("grpc-status", "5".parse().unwrap());
        assert!(check.is_success(&t));
        t.insert("grpc-status", "banana".parse().unwrap());
        assert!(!check.is_success(&t), "unreadable counts as UNKNOWN");
        t.insert("grpc-status", "99".parse().unwrap());
        assert!(!check.is_success(&t), "undefined counts as UNKNOWN");
    }

    #[test]
    fn non_200_responses_map_as_grpc_clients_map_them() {
        let c = GrpcStatus::new();
        for (status, success) in [
            (400, false), // INTERNAL
            (401, true),  // UNAUTHENTICATED
            (403, true),  // PERMISSION_DENIED
            (404, false), // UNIMPLEMENTED
            (429, false), // UNAVAILABLE
            (502, false),
            (503, false),
            (504, false),
            (500, false), // UNKNOWN
            (302, false), // UNKNOWN
        ] {
            assert_eq!(ok(&c, &head(status, None)), success, "HTTP {status}");
        }
        assert!(!Classify::<http::Response<()>, ()>::is_success(
            &c,
            Err(&())
        ));
    }

    #[test]
    fn failure_codes_are_configurable_and_checked() {
        let c = GrpcStatus::new()
            .failure_code(8, true)
            .unwrap()
            .failure_code(12, false)
            .unwrap();
        assert!(!ok(&c, &head(200, Some("8"))));
        assert!(ok(&c, &head(200, Some("12"))));
        for bad in [-1, 17, i32::MAX] {
            let err = GrpcStatus::new().failure_code(bad, true).unwrap_err();
            assert!(err.to_string().contains("grpc"), "{err}");
        }
        assert!(GrpcStatus::new().failure_code(0, true).is_err());
        assert!(GrpcStatus::new().failure_code(0, false).is_ok());
    }
}
