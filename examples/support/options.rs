//! Option values both proxies parse alike: seconds, `ADDR[=WEIGHT]`, strategy names.
//!
//! The proxies' cores use these through `crate::support`, so a crate that compiles a
//! core declares this module at its root too (both `main.rs` and `tests/examples/` do).

use std::time::Duration;

use clap::ValueEnum;
use tower_lb::Weight;

/// A number of seconds from 0.001 to 86400 (one day), fractions allowed.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs >= 0.001 && *secs <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?} is not a number of seconds from 0.001 to 86400"))
}

/// Splits a `--backend` value, `ADDR[=WEIGHT]`, into the address (for the proxy to
/// parse) and the weight, 1 when not given.
pub fn split_weight(s: &str) -> Result<(&str, Weight), String> {
    let Some((addr, weight)) = s.rsplit_once('=') else {
        return Ok((s, Weight::ONE));
    };
    let weight = weight
        .parse::<u64>()
        .ok()
        .and_then(|w| Weight::new(w).ok())
        .ok_or_else(|| {
            format!("the weight {weight:?} is not a whole number from 1 to 4294967295")
        })?;
    Ok((addr, weight))
}

/// The first backend given twice (its second occurrence), if any.
pub fn repeated<T: PartialEq>(backends: &[(T, Weight)]) -> Option<&T> {
    backends
        .iter()
        .enumerate()
        .find(|(i, (target, _))| backends[..*i].iter().any(|(t, _)| t == target))
        .map(|(_, (target, _))| target)
}

/// A value's name as given on the command line (`--strategy least-loaded`).
pub fn value_name(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_owned())
}
