//! Subsetting driven by etcd: the backends from discovery, this instance's index and
//! the instance count from [`Peers`], the pool kept equal to this instance's aperture.
//!
//! On every change of either membership the task computes
//! `Aperture::new(index, count, size)` over the full backend list and applies it with
//! [`tower_lb::subset::sync`] (one published update; members that stay keep their live
//! state). The pool's weights are then the aperture's coverage weights
//! ([`Chosen::weight`](tower_lb::subset::Chosen::weight)), not the registry's. Until
//! the instance sees itself among the peers the pool is left as it is.

use std::collections::BTreeMap;
use std::hash::Hash;
use std::num::NonZeroUsize;

use tokio::task::JoinHandle;
use tower_lb::subset::{self, Aperture};
use tower_lb::{BackendKey, Picker, Pool};

use crate::discover::{Change, EtcdDiscover};
use crate::member::Member;
use crate::peers::{Peers, position};

/// Spawns the task that keeps `pool` equal to this instance's aperture of at least
/// `size` of the backends `backends` reports, as `peers` places it; `make` builds each
/// backend's address. Ends when the discovery stream or the peers' watch ends.
pub fn subset_pool<A, P, F>(
    mut backends: EtcdDiscover,
    peers: &Peers,
    size: NonZeroUsize,
    pool: Pool<A, P>,
    mut make: F,
) -> JoinHandle<()>
where
    A: BackendKey + Clone + Eq + Hash + Send + Sync + 'static,
    P: Picker<A> + Send + Sync + 'static,
    P::Table: Send + Sync,
    F: FnMut(&str, &Member) -> A + Send + 'static,
{
    let (mut members, me) = peers.follow();
    tokio::spawn(async move {
        let mut known: BTreeMap<String, A> = BTreeMap::new();
        let mut apply =
            |known: &mut BTreeMap<String, A>, change: Change<String, Member>| match change {
                Change::Insert(key, member) => {
                    let addr = make(&key, &member);
                    known.insert(key, addr);
                }
                Change::Remove(key) => {
                    known.remove(&key);
                }
            };
        loop {
            tokio::select! {
                change = backends.rx.recv() => match change {
                    Some(change) => apply(&mut known, change),
                    None => return,
                },
                changed = members.changed() => if changed.is_err() {
                    return;
                },
            }
            while let Ok(change) = backends.rx.try_recv() {
                apply(&mut known, change);
            }
            let Some((index, count)) = position(&members.borrow_and_update(), &me) else {
                continue;
            };
            let Ok(aperture) = Aperture::new(index, count, size) else {
                continue;
            };
            let all: Vec<A> = known.values().cloned().collect();
            if let Err(error) = subset::sync(&pool, &all, &aperture) {
                tracing::warn!(%error, "subset update refused by the pool");
            }
        }
    })
}
