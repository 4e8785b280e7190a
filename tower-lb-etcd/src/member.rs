//! The value stored under a registry key: `{"addr": "10.0.0.1:8080", "weight": 3,
//! "metadata": {"zone": "a"}}`.
//!
//! `weight` is optional (1 when absent) and must be in `1..=u32::MAX`, the core crate's
//! [`Weight`] range; `addr` must be an `ip:port` socket address; `metadata` is optional
//! and holds strings. Anything else is a [`ValueError`] naming the problem: discovery
//! skips such a value with a warning and never panics on it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tower_lb::Weight;

/// One registered instance: where it listens, its weight, and free-form metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The address to send traffic to.
    pub addr: SocketAddr,
    /// Its share of traffic relative to the other members.
    pub weight: Weight,
    /// Labels (zone, version...), passed through untouched.
    pub metadata: BTreeMap<String, String>,
}

/// Why a registry value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// Not JSON of the expected shape.
    #[error("registry value: not a member record: {0}")]
    Json(String),
    /// The address does not parse as `ip:port`.
    #[error("registry value: bad address {0:?} (expected ip:port)")]
    Addr(String),
    /// The weight is zero or above `u32::MAX`.
    #[error("registry value: weight {0} out of range (1..=4294967295)")]
    Weight(u64),
}

#[derive(Serialize, Deserialize)]
struct Wire {
    addr: String,
    #[serde(default = "one")]
    weight: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
}

fn one() -> u64 {
    1
}

impl Member {
    /// A member at `addr` with weight 1 and no metadata.
    pub fn new(addr: SocketAddr) -> Self {
        Member {
            addr,
            weight: Weight::ONE,
            metadata: BTreeMap::new(),
        }
    }

    /// The same member with `weight`.
    pub fn with_weight(mut self, weight: Weight) -> Self {
        self.weight = weight;
        self
    }

    /// The same member with one more metadata label.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Parses a registry value. Never panics, whatever the bytes.
    ///
    /// ```
    /// use tower_lb_etcd::{Member, ValueError};
    /// let m = Member::from_json(br#"{"addr":"127.0.0.1:80","weight":3}"#).unwrap();
    /// assert_eq!(m.weight.get(), 3);
    /// assert!(matches!(Member::from_json(br#"{"addr":"x","weight":1}"#), Err(ValueError::Addr(_))));
    /// assert!(matches!(Member::from_json(br#"{"addr":"127.0.0.1:80","weight":0}"#), Err(ValueError::Weight(0))));
    /// ```
    pub fn from_json(bytes: &[u8]) -> Result<Member, ValueError> {
        let wire: Wire =
            serde_json::from_slice(bytes).map_err(|e| ValueError::Json(e.to_string()))?;
        let addr: SocketAddr = wire
            .addr
            .parse()
            .map_err(|_| ValueError::Addr(wire.addr.clone()))?;
        let weight = Weight::new(wire.weight).map_err(|_| ValueError::Weight(wire.weight))?;
        Ok(Member {
            addr,
            weight,
            metadata: wire.metadata,
        })
    }

    /// The registry value for this member.
    pub fn to_json(&self) -> String {
        let wire = Wire {
            addr: self.addr.to_string(),
            weight: u64::from(self.weight.get()),
            metadata: self.metadata.clone(),
        };
        // A struct of strings and integers always serialises.
        serde_json::to_string(&wire).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_bad_values() {
        let m = Member::new("127.0.0.1:9".parse().unwrap())
            .with_weight(Weight::new(7).unwrap())
            .with_label("zone", "a");
        assert_eq!(Member::from_json(m.to_json().as_bytes()), Ok(m));
        let default = Member::from_json(br#"{"addr":"[::1]:80"}"#).unwrap();
        assert_eq!(default.weight, Weight::ONE);
        for (bad, want) in [
            (&b"not json"[..], "not a member"),
            (br#"{"weight":2}"#, "not a member"),
            (br#"{"addr":"host:80"}"#, "bad address"),
            (br#"{"addr":"127.0.0.1:80","weight":0}"#, "out of range"),
            (
                br#"{"addr":"127.0.0.1:80","weight":4294967296}"#,
                "out of range",
            ),
            (br#"{"addr":"127.0.0.1:80","weight":-1}"#, "not a member"),
            (br#"{"addr":"127.0.0.1:80","weight":1e99}"#, "not a member"),
            (b"\xff\xfe", "not a member"),
        ] {
            let err = Member::from_json(bad).unwrap_err().to_string();
            assert!(err.contains(want), "{bad:?}: {err}");
        }
    }
}
