//! The change path: edits, batches, and the publication of a new snapshot.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Pool, Prepared, Writer};
use crate::backend::{Backend, BackendId, BackendState, HealthShared, Weight};
use crate::error::MembershipError;
use crate::pick::Picker;
use crate::snapshot::Snapshot;

impl<A, P> Pool<A, P>
where
    A: Clone + Eq + Hash,
    P: Picker<A>,
{
    /// Applies several changes as one: either all of them are published in one new
    /// snapshot, or — when `change` returns an error — none is and the set is untouched.
    ///
    /// # Examples
    ///
    /// ```
    /// use tower_lb::{Pool, RoundRobin, Weight};
    ///
    /// let pool = Pool::new(RoundRobin::new());
    /// let ids = pool.update(|set| {
    ///     let a = set.insert("a", Weight::ONE)?;
    ///     let b = set.insert("b", Weight::ONE)?;
    ///     Ok::<_, tower_lb::MembershipError>([a, b])
    /// })?;
    /// assert_eq!(pool.snapshot().snapshot().len(), 2);
    ///
    /// // A failing batch changes nothing.
    /// let err = pool.update(|set| {
    ///     set.remove(ids[0])?;
    ///     set.insert("b", Weight::ONE) // duplicate address
    /// });
    /// assert!(err.is_err());
    /// assert_eq!(pool.snapshot().snapshot().len(), 2);
    /// # Ok::<(), tower_lb::MembershipError>(())
    /// ```
    pub fn update<R, E>(&self, change: impl FnOnce(&mut Edit<A>) -> Result<R, E>) -> Result<R, E> {
        let mut writer = self.inner.writer.lock();
        let current = self.inner.current.load_full();
        let mut edit = Edit {
            members: current.snapshot.backends().to_vec(),
            gone: Vec::new(),
            undo: Vec::new(),
            // The address index lives with the writer and is edited in place (undone on
            // error), so a change costs what it changes, not a rehash of every address.
            index: std::mem::take(&mut writer.index),
            next_id: writer.next_id,
            decay: self.inner.decay,
            shared: Arc::clone(&self.inner.shared),
            changed: false,
        };
        match change(&mut edit) {
            Ok(result) => {
                writer.index = std::mem::take(&mut edit.index);
                if edit.changed {
                    writer.next_id = edit.next_id;
                    let members = edit.into_members();
                    // Wakes the background task: new members get their first probe at once.
                    self.publish(&mut writer, members, &current, true);
                }
                Ok(result)
            }
            Err(e) => {
                writer.index = edit.rolled_back();
                Err(e)
            }
        }
    }

    /// Adds a backend; fails on a duplicate address.
    pub fn insert(&self, addr: A, weight: Weight) -> Result<BackendId, MembershipError> {
        self.update(|set| set.insert(addr, weight))
    }

    /// Adds several backends at once; on any error none is added.
    pub fn extend<I>(&self, members: I) -> Result<Vec<BackendId>, MembershipError>
    where
        I: IntoIterator<Item = (A, Weight)>,
    {
        self.update(|set| {
            members
                .into_iter()
                .map(|(addr, weight)| set.insert(addr, weight))
                .collect()
        })
    }

    /// Removes a backend, returning its address. Requests in flight on it finish normally.
    pub fn remove(&self, id: BackendId) -> Result<A, MembershipError> {
        self.update(|set| set.remove(id))
    }

    /// Changes a backend's weight; its live state is kept.
    pub fn set_weight(&self, id: BackendId, weight: Weight) -> Result<(), MembershipError> {
        self.update(|set| set.set_weight(id, weight))
    }
}

/// Publication, shared by membership and health changes.
impl<A: Clone, P: Picker<A>> Pool<A, P> {
    /// Builds the snapshot of `members` with health evaluated now and publishes it —
    /// unless `force` is false and nothing differs from `current`. Returns when health
    /// next has time-driven work.
    pub(super) fn publish(
        &self,
        writer: &mut Writer<A>,
        members: Vec<Backend<A>>,
        current: &Prepared<A, P::Table>,
        force: bool,
    ) -> Option<Instant> {
        let now = self.now();
        let evaluation = writer.engine.evaluate(&members, now);
        let next = evaluation.next;
        let old = &current.snapshot;
        let same_members = old.len() == members.len()
            && old
                .backends()
                .iter()
                .zip(&members)
                .all(|(a, b)| a.id() == b.id());
        let members_version = if same_members {
            old.members_version()
        } else {
            writer.version + 1
        };
        let snapshot =
            Snapshot::from_evaluation(members, writer.version + 1, evaluation.eligibility)
                .with_members_version(members_version);
        if !force && snapshot.same_as(old) {
            return next;
        }
        writer.version += 1;
        let table = self.inner.picker.prepare(&snapshot, Some(&current.table));
        // Writers are serialised by the mutex, so a plain store cannot lose an update.
        let had_members = !current.snapshot.is_empty();
        let prepared = Arc::new(Prepared { snapshot, table });
        self.inner.current.store(Arc::clone(&prepared));
        // Events and gauges (observe.rs).
        writer.observer.published(&prepared.snapshot);
        if !prepared.snapshot.is_empty() && !had_members {
            // Callers waiting for a first backend (`Balance`'s `wait_for_backends`).
            self.wake_waiters();
        }
        if !writer.in_task {
            // The background task, if any, recomputes when health next has work (a new
            // ejection's return, a ramp that began) and probes new members at once.
            self.inner.shared.wake();
        }
        next
    }

    /// Re-evaluates health with the current members and publishes if anything changed.
    pub(super) fn republish(&self, writer: &mut Writer<A>) -> Option<Instant> {
        let current = self.inner.current.load_full();
        let members = current.snapshot.backends().to_vec();
        self.publish(writer, members, &current, false)
    }
}

/// A pending change to a pool's set, inside [`Pool::update`].
///
/// Edits cost what they change: an insert or a removal is O(1) expected (a hash lookup
/// of the address, a binary search of the id), and the whole batch is published once,
/// with one snapshot and one picker table, when the closure returns. This is the path
/// for callers who apply many changes at once (a registry's full listing, a discovery
/// batch); [`Pool::insert`], [`Pool::remove`], [`Pool::extend`] and
/// [`Pool::set_weight`] are each one `update`.
#[derive(Debug)]
pub struct Edit<A> {
    /// The current members, then the inserted ones: in increasing id order.
    members: Vec<Backend<A>>,
    /// `gone[i]`: member `i` was removed by this edit (grown on the first removal).
    gone: Vec<bool>,
    /// What to undo in the address index if the batch fails, in order.
    undo: Vec<Undo>,
    /// Address → id of every member, for duplicate checks in O(1).
    index: HashMap<A, BackendId>,
    next_id: u64,
    decay: Duration,
    shared: Arc<HealthShared>,
    changed: bool,
}

/// One change to the address index, by position in `Edit::members`.
#[derive(Debug, Clone, Copy)]
enum Undo {
    Inserted(usize),
    Removed(usize),
}

impl<A: Clone + Eq + Hash> Edit<A> {
    /// Adds a backend with fresh live state; fails on a duplicate address.
    pub fn insert(&mut self, addr: A, weight: Weight) -> Result<BackendId, MembershipError> {
        // One hash of the address: the entry both checks and records it.
        let id = BackendId::new(self.next_id);
        match self.index.entry(addr.clone()) {
            Entry::Occupied(e) => {
                return Err(MembershipError::Duplicate { existing: *e.get() });
            }
            Entry::Vacant(e) => {
                e.insert(id);
            }
        }
        self.next_id += 1;
        self.undo.push(Undo::Inserted(self.members.len()));
        let state = Arc::new(BackendState::linked(self.decay, Arc::clone(&self.shared)));
        self.members.push(Backend::new(id, addr, weight, state));
        self.changed = true;
        Ok(id)
    }

    /// Removes a backend, returning its address.
    pub fn remove(&mut self, id: BackendId) -> Result<A, MembershipError> {
        let index = self.position(id)?;
        if self.gone.is_empty() {
            self.gone = vec![false; self.members.len()];
        }
        // Inserted after the first removal: the mask grows to cover them.
        self.gone.resize(self.members.len(), false);
        self.gone[index] = true;
        self.changed = true;
        let addr = self.members[index].addr().clone();
        self.index.remove(&addr);
        self.undo.push(Undo::Removed(index));
        Ok(addr)
    }

    /// Changes a backend's weight, keeping its live state.
    pub fn set_weight(&mut self, id: BackendId, weight: Weight) -> Result<(), MembershipError> {
        let index = self.position(id)?;
        if self.members[index].weight() != weight {
            self.members[index] = self.members[index].with_weight(weight);
            self.changed = true;
        }
        Ok(())
    }

    /// The backend with this address, if it is a member as the edit stands.
    pub fn find(&self, addr: &A) -> Option<BackendId> {
        self.index.get(addr).copied()
    }

    /// The members as the edit stands, in id order.
    pub fn members(&self) -> impl Iterator<Item = &Backend<A>> + '_ {
        self.members
            .iter()
            .enumerate()
            .filter(|&(i, _)| !self.is_gone(i))
            .map(|(_, b)| b)
    }

    /// How many members the set holds as the edit stands.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the set is empty as the edit stands.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn is_gone(&self, i: usize) -> bool {
        self.gone.get(i).copied().unwrap_or(false)
    }

    /// Members are in increasing id order (ids grow with every insert): a binary search.
    fn position(&self, id: BackendId) -> Result<usize, MembershipError> {
        self.members
            .binary_search_by_key(&id, Backend::id)
            .ok()
            .filter(|&i| !self.is_gone(i))
            .ok_or(MembershipError::Unknown(id))
    }

    /// The surviving members, in id order.
    fn into_members(self) -> Vec<Backend<A>> {
        let Edit {
            mut members, gone, ..
        } = self;
        if !gone.is_empty() {
            let mut i = 0;
            members.retain(|_| {
                let keep = !gone.get(i).copied().unwrap_or(false);
                i += 1;
                keep
            });
        }
        members
    }

    /// The address index as it was before this edit.
    fn rolled_back(mut self) -> HashMap<A, BackendId> {
        for undo in std::mem::take(&mut self.undo).into_iter().rev() {
            match undo {
                Undo::Inserted(i) => {
                    self.index.remove(self.members[i].addr());
                }
                Undo::Removed(i) => {
                    let b = &self.members[i];
                    self.index.insert(b.addr().clone(), b.id());
                }
            }
        }
        self.index
    }
}
