//! etcd membership for [`tower_lb`]: backends and peer instances through a real
//! distributed registry.
//!
//! - **Discovery** ([`Discovery`] → [`EtcdDiscover`]): the members under a key prefix
//!   (`/services/<name>/<id>` → a JSON [`Member`]: address, weight, metadata) as a
//!   `tower::discover::Discover` stream — list, then watch from the list's revision + 1;
//!   re-list and diff after a compaction or a lost watch; the last known set kept, a
//!   warning logged and [`Status::Unreachable`] reported while etcd is down.
//!   Feed it to `Balance::discover` or to [`sync_pool`].
//! - **Registration** ([`Registration`]): a key under a lease renewed in the
//!   background; a crashed process leaves within the TTL, a clean one at once.
//! - **Peers** ([`Peers`]): client instances register under `/clients/<service>/` and
//!   learn their index and count for [`tower_lb::subset::Aperture`]; [`subset_pool`]
//!   keeps a pool equal to this instance's aperture of the discovered backends.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_lb::{Pool, PowerOfTwoChoices};
//! use tower_lb_etcd::{sync_pool, Discovery, Member, Registration};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let endpoints = ["http://127.0.0.1:2379"];
//! // A backend registers itself.
//! let me = Member::new("127.0.0.1:8080".parse()?);
//! let registration =
//!     Registration::register(&endpoints, "/services/api/b1", &me, Duration::from_secs(5)).await?;
//! // A client follows the service's members.
//! let pool = Pool::new(PowerOfTwoChoices::new());
//! let discover = Discovery::service(endpoints, "api").spawn();
//! let status = discover.status(); // Synced, or Unreachable with the set kept
//! let _task = sync_pool(discover, pool.clone(), |_key, m| m.addr);
//! // ...
//! registration.deregister().await?;
//! # let _ = status; Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

mod discover;
mod member;
mod peers;
mod pool_sync;
mod register;
mod subset_pool;

pub use discover::{Change, Discovery, EtcdDiscover, Status, StatusHandle};
pub use member::{Member, ValueError};
pub use peers::{Peers, position};
pub use pool_sync::sync_pool;
pub use register::{RegisterError, Registration};
pub use subset_pool::subset_pool;

/// The key prefix of service `name`'s backends: `/services/<name>/`.
pub fn service_prefix(name: &str) -> String {
    format!("/services/{name}/")
}

/// The key prefix of service `name`'s client instances: `/clients/<name>/`.
pub fn clients_prefix(name: &str) -> String {
    format!("/clients/{name}/")
}

/// Aborts a background task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
