//! Applying discovery to a [`Pool`] directly, with weights, in batches.
//!
//! `Balance::discover` takes the stream too (its `make` closure returns the address and
//! [`Member::weight`]); [`sync_pool`] is for a pool used without `Balance`, and it
//! changes a member's weight in place (`set_weight`) when only the weight changed, so
//! the backend keeps its live state (in flight, latency, health). Every change ready at
//! once is applied in one published update.

use std::collections::HashMap;
use std::hash::Hash;

use tokio::task::JoinHandle;
use tower_lb::{BackendId, Picker, Pool};

use crate::discover::{Change, EtcdDiscover};
use crate::member::Member;

/// Spawns a task that keeps `pool` equal to what `discover` reports, building each
/// backend's address with `make(key, member)`. The task ends when the discovery stream
/// ends; abort the handle to stop it sooner.
pub fn sync_pool<A, P, F>(
    mut discover: EtcdDiscover,
    pool: Pool<A, P>,
    mut make: F,
) -> JoinHandle<()>
where
    A: Clone + Eq + Hash + Send + Sync + 'static,
    P: Picker<A> + Send + Sync + 'static,
    P::Table: Send + Sync,
    F: FnMut(&str, &Member) -> A + Send + 'static,
{
    tokio::spawn(async move {
        let mut ids: HashMap<String, (BackendId, A)> = HashMap::new();
        while let Some(first) = discover.rx.recv().await {
            let mut batch = vec![first];
            while let Ok(more) = discover.rx.try_recv() {
                batch.push(more);
            }
            let applied = pool.update(|edit| {
                for change in batch {
                    match change {
                        Change::Insert(key, member) => {
                            let addr = make(&key, &member);
                            match ids.get(&key) {
                                Some((id, old)) if *old == addr => {
                                    edit.set_weight(*id, member.weight)?;
                                }
                                _ => {
                                    if let Some((id, _)) = ids.remove(&key) {
                                        let _ = edit.remove(id);
                                    }
                                    // Two keys with one address: the first keeps it.
                                    match edit.insert(addr.clone(), member.weight) {
                                        Ok(id) => {
                                            ids.insert(key, (id, addr));
                                        }
                                        Err(error) => {
                                            tracing::warn!(key, %error, "registry member not added")
                                        }
                                    }
                                }
                            }
                        }
                        Change::Remove(key) => {
                            if let Some((id, _)) = ids.remove(&key) {
                                let _ = edit.remove(id);
                            }
                        }
                    }
                }
                Ok::<_, tower_lb::MembershipError>(())
            });
            if let Err(error) = applied {
                tracing::warn!(%error, "registry update refused by the pool");
            }
        }
    })
}
