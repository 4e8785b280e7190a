//! Peers: the client instances of a service learn their index and count from etcd.
//!
//! Each instance registers under `/clients/<service>/<id>` (with a lease, so a crashed
//! instance leaves) and watches that prefix. Its index is its key's position in the
//! sorted membership and the count is the membership's size — the `(i, C)` that
//! [`tower_lb::subset::Aperture`] needs. With the aperture, an instance joining or
//! leaving shifts each other instance's arc by at most 1/C of the ring, so each subset
//! changes by about S/C + 2 members: O(1) when backends and instances grow together
//! (checked by `tests/peers.rs`). `Deterministic` subsetting suits dense, stable indices
//! (a StatefulSet's ordinals) instead: here an index shifts when an instance with a
//! smaller key joins.

use std::collections::BTreeSet;
use std::num::{NonZeroU64, NonZeroUsize};
use std::time::Duration;

use tokio::sync::watch;
use tower_lb::subset::Aperture;

use crate::discover::{Change, Discovery};
use crate::member::Member;
use crate::register::{RegisterError, Registration};

/// The index of `me` in the sorted `members`, and their count; `None` when `me` is not
/// among them.
///
/// ```
/// use std::collections::BTreeSet;
/// let members: BTreeSet<String> = ["b", "a", "c"].map(String::from).into();
/// let (i, n) = tower_lb_etcd::position(&members, "b").unwrap();
/// assert_eq!((i, n.get()), (1, 3));
/// ```
pub fn position(members: &BTreeSet<String>, me: &str) -> Option<(u64, NonZeroU64)> {
    if !members.contains(me) {
        return None;
    }
    let index = members.iter().take_while(|m| m.as_str() < me).count() as u64;
    Some((index, NonZeroU64::new(members.len() as u64)?))
}

/// This instance's membership among the clients of a service.
#[derive(Debug)]
pub struct Peers {
    me: String,
    members: watch::Receiver<BTreeSet<String>>,
    registration: Registration,
    task: crate::AbortOnDrop,
}

impl Peers {
    /// Registers this instance as `id` among the clients of `service` (lease `ttl`) and
    /// starts watching the others.
    pub async fn join(
        endpoints: &[impl AsRef<str>],
        service: &str,
        id: &str,
        member: &Member,
        ttl: Duration,
    ) -> Result<Peers, RegisterError> {
        let prefix = crate::clients_prefix(service);
        let me = format!("{prefix}{id}");
        let registration = Registration::register(endpoints, me.clone(), member, ttl).await?;
        let mut discover =
            Discovery::prefix(endpoints.iter().map(|e| e.as_ref().to_owned()), prefix).spawn();
        let (tx, members) = watch::channel(BTreeSet::new());
        let task = tokio::spawn(async move {
            while let Some(change) = discover.rx.recv().await {
                tx.send_modify(|set| match change {
                    Change::Insert(key, _) => {
                        set.insert(key);
                    }
                    Change::Remove(key) => {
                        set.remove(&key);
                    }
                });
            }
        });
        Ok(Peers {
            me,
            members,
            registration,
            task: crate::AbortOnDrop(task),
        })
    }

    /// This instance's index and the instance count, once it sees itself.
    pub fn position(&self) -> Option<(u64, NonZeroU64)> {
        position(&self.members.borrow(), &self.me)
    }

    /// The sorted keys of the instances seen.
    pub fn members(&self) -> BTreeSet<String> {
        self.members.borrow().clone()
    }

    /// A receiver of the membership and this instance's key, for tasks that follow it.
    pub(crate) fn follow(&self) -> (watch::Receiver<BTreeSet<String>>, String) {
        (self.members.clone(), self.me.clone())
    }

    /// Waits until `count` instances (this one among them) are seen.
    pub async fn wait_for_count(&mut self, count: usize) {
        let me = self.me.clone();
        let _ = self
            .members
            .wait_for(|m| m.len() == count && m.contains(&me))
            .await;
    }

    /// This instance's aperture of at least `size` backends, once it sees itself.
    pub fn aperture(&self, size: NonZeroUsize) -> Option<Aperture> {
        let (i, n) = self.position()?;
        Aperture::new(i, n, size).ok()
    }

    /// Leaves at once (deregisters).
    pub async fn leave(self) -> Result<(), RegisterError> {
        self.task.0.abort();
        self.registration.deregister().await
    }
}
