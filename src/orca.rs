//! Server-reported load: ORCA's `endpoint-load-metrics`.
//!
//! A balancer in each client instance sees only its own requests in flight; a backend
//! kept busy by 99 other clients looks idle to the hundredth. ORCA (Open Request Cost
//! Aggregation, xDS's `OrcaLoadReport`; Envoy and gRPC read it) lets the backend say how
//! loaded it is on every response, in the `endpoint-load-metrics` header (or trailer):
//!
//! ```text
//! endpoint-load-metrics: TEXT cpu_utilization=0.3, rps_fractional=120, eps=2
//! endpoint-load-metrics: JSON {"cpu_utilization": 0.3, "rps_fractional": 120, "eps": 2}
//! ```
//!
//! [`LoadReport::parse`] reads both forms (JSON with the `http` feature, through
//! `serde_json`); a value that is missing, not a number, negative, infinite or NaN is
//! ignored, a malformed entry is skipped, and nothing panics. Fields read:
//! `cpu_utilization`, `mem_utilization`, `application_utilization`, `rps_fractional`
//! and `eps`; others (`named_metrics.*`, `request_cost.*`, `utilization.*`) are
//! skipped. With the `http` feature, [`LoadReport::from_headers`] reads a header map —
//! a response's headers or a gRPC response's trailers. The binary form
//! (`endpoint-load-metrics-bin`, a serialised protobuf) is not read.
//!
//! The reports feed [`ServerLoad`](crate::ServerLoad), gRPC's weighted round robin
//! (gRFC A58) as a picker.

/// The response header (or gRPC trailer) that carries an ORCA load report.
pub const HEADER: &str = "endpoint-load-metrics";

/// The longest header value read; a longer one is ignored (a report is a few dozen bytes).
pub const MAX_REPORT_LEN: usize = 4096;

/// One ORCA load report, as a backend sent it. Each field is `None` when absent or
/// invalid (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct LoadReport {
    /// CPU utilisation, usually in [0, 1] (may exceed 1 on some platforms).
    pub cpu_utilization: Option<f64>,
    /// Memory utilisation in [0, 1].
    pub mem_utilization: Option<f64>,
    /// Application-defined utilisation; preferred over CPU when positive (gRFC A58).
    pub application_utilization: Option<f64>,
    /// Requests per second the backend is serving.
    pub rps_fractional: Option<f64>,
    /// Errors per second.
    pub eps: Option<f64>,
}

impl LoadReport {
    /// A report with these values (for tests and for servers that build their header).
    pub fn new(utilization: f64, rps: f64, eps: f64) -> Self {
        LoadReport {
            cpu_utilization: valid(utilization),
            rps_fractional: valid(rps),
            eps: valid(eps),
            ..LoadReport::default()
        }
    }

    /// Parses a header value in the TEXT form (`TEXT k=v, k=v`) or the JSON form
    /// (`JSON {...}`, with the `http` feature). A value with neither prefix is read as
    /// JSON when it starts with `{`, else as TEXT. `None` when nothing valid was found.
    ///
    /// # Examples
    ///
    /// ```
    /// use tower_lb::orca::LoadReport;
    ///
    /// let r = LoadReport::parse("TEXT cpu_utilization=0.3, rps_fractional=120").unwrap();
    /// assert_eq!(r.cpu_utilization, Some(0.3));
    /// assert_eq!(r.rps_fractional, Some(120.0));
    /// // Bad values are ignored, never a panic.
    /// let r = LoadReport::parse("TEXT cpu_utilization=-1, rps_fractional=NaN, eps=2").unwrap();
    /// assert_eq!((r.cpu_utilization, r.rps_fractional, r.eps), (None, None, Some(2.0)));
    /// assert_eq!(LoadReport::parse("garbage"), None);
    /// ```
    pub fn parse(value: &str) -> Option<LoadReport> {
        if value.len() > MAX_REPORT_LEN {
            return None;
        }
        let value = value.trim();
        let report = if let Some(rest) = strip_prefix(value, "TEXT") {
            parse_text(rest)
        } else if let Some(rest) = strip_prefix(value, "JSON") {
            parse_json(rest)
        } else if value.starts_with('{') {
            parse_json(value)
        } else {
            parse_text(value)
        };
        (report != LoadReport::default()).then_some(report)
    }

    /// The report in a header map (a response's headers, or a gRPC response's trailers).
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn from_headers(headers: &http::HeaderMap) -> Option<LoadReport> {
        headers
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(LoadReport::parse)
    }

    /// The utilisation gRFC A58 weighs by: `application_utilization` when positive,
    /// else `cpu_utilization`.
    pub fn utilization(&self) -> Option<f64> {
        match self.application_utilization {
            Some(u) if u > 0.0 => Some(u),
            _ => self.cpu_utilization,
        }
    }

    fn set(&mut self, key: &str, value: f64) {
        let value = valid(value);
        match key {
            "cpu_utilization" => self.cpu_utilization = value,
            "mem_utilization" => self.mem_utilization = value,
            "application_utilization" => self.application_utilization = value,
            "rps_fractional" => self.rps_fractional = value,
            "eps" => self.eps = value,
            _ => {}
        }
    }
}

/// `value` when finite and not negative.
fn valid(value: f64) -> Option<f64> {
    (value.is_finite() && value >= 0.0).then_some(value)
}

/// The rest after `prefix` and at least one space, or after `prefix` alone at the end.
fn strip_prefix<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = value.get(prefix.len()..)?;
    (rest.is_empty() || rest.starts_with(char::is_whitespace)).then(|| rest.trim_start())
}

fn parse_text(body: &str) -> LoadReport {
    let mut report = LoadReport::default();
    for entry in body.split(',') {
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            report.set(key.trim(), v);
        }
    }
    report
}

#[cfg(feature = "http")]
fn parse_json(body: &str) -> LoadReport {
    let mut report = LoadReport::default();
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(body) {
        for (key, value) in &map {
            if let Some(v) = value.as_f64() {
                report.set(key, v);
            }
        }
    }
    report
}

#[cfg(not(feature = "http"))]
fn parse_json(_: &str) -> LoadReport {
    LoadReport::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_with_spaces_case_and_unknown_keys() {
        let r = LoadReport::parse(
            "  text   cpu_utilization = 0.5 ,rps_fractional=10,named_metrics.x=3, eps=1e0 ",
        )
        .unwrap();
        assert_eq!(r.cpu_utilization, Some(0.5));
        assert_eq!(r.rps_fractional, Some(10.0));
        assert_eq!(r.eps, Some(1.0));
        assert_eq!(r.utilization(), Some(0.5));
    }

    #[test]
    fn application_utilization_is_preferred_when_positive() {
        let r =
            LoadReport::parse("TEXT cpu_utilization=0.5, application_utilization=0.25").unwrap();
        assert_eq!(r.utilization(), Some(0.25));
        let r = LoadReport::parse("TEXT cpu_utilization=0.5, application_utilization=0").unwrap();
        assert_eq!(r.utilization(), Some(0.5));
    }

    #[test]
    fn prefixes_must_be_whole_words() {
        // "TEXTcpu..." is not the TEXT prefix: read as TEXT without one, key "TEXTcpu_utilization".
        assert_eq!(LoadReport::parse("TEXTcpu_utilization=0.5"), None);
        assert_eq!(LoadReport::parse(""), None);
        assert_eq!(LoadReport::parse("TEXT"), None);
        assert_eq!(LoadReport::parse(&"x".repeat(MAX_REPORT_LEN + 1)), None);
    }

    #[cfg(feature = "http")]
    #[test]
    fn json_form() {
        let r = LoadReport::parse(
            r#"JSON {"cpu_utilization": 0.3, "rps_fractional": 120, "eps": 2, "named_metrics": {"a": 1}, "mem_utilization": "x"}"#,
        )
        .unwrap();
        assert_eq!(r.cpu_utilization, Some(0.3));
        assert_eq!(r.rps_fractional, Some(120.0));
        assert_eq!(r.eps, Some(2.0));
        assert_eq!(r.mem_utilization, None);
        assert_eq!(LoadReport::parse(r#"{"cpu_utilization": -2}"#), None);
        assert_eq!(LoadReport::parse("JSON {not json"), None);
    }
}
