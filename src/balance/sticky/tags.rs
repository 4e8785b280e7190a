//! The tags of a pool's members, for the [`Sticky`](super::Sticky) layer.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::cookie::{StickyCookie, Tag};
use crate::pick::hash::BackendKey;
use crate::{BackendId, Picker, Pool, Snapshot};

/// Tags of one set of members.
struct TagIndex {
    members_version: u64,
    by_tag: HashMap<Tag, BackendId>,
    /// `(id, tag)` in id order, for a binary search by id.
    by_id: Vec<(BackendId, Tag)>,
}

/// Where a [`Sticky`] layer reads the backend set: the pool of the balancer below it,
/// type-erased so that `Sticky<S>` names only the service it wraps.
pub(super) trait Tags: Send + Sync {
    /// The eligible backend `tag` names, if any.
    fn lookup(&self, tag: &Tag) -> Option<BackendId>;
    /// The tag of `backend`.
    fn tag_of(&self, backend: BackendId) -> Option<Tag>;
}

/// The tags of a pool's members, rebuilt when the members change (health, weight and
/// slow-start republications keep them).
struct PoolTags<A, P: Picker<A>> {
    pool: Pool<A, P>,
    cookie: Arc<StickyCookie>,
    index: ArcSwapOption<TagIndex>,
}

impl<A: BackendKey, P: Picker<A>> PoolTags<A, P> {
    /// `read` over the index of `snapshot`'s members: the cached one through an
    /// `arc-swap` guard (no reference-count write on the request path), rebuilt only when
    /// the members changed.
    fn with_index<T>(&self, snapshot: &Snapshot<A>, read: impl FnOnce(&TagIndex) -> T) -> T {
        {
            let cached = self.index.load();
            if let Some(index) = cached.as_deref()
                && index.members_version == snapshot.members_version()
            {
                return read(index);
            }
        }
        let by_id: Vec<(BackendId, Tag)> = snapshot
            .backends()
            .iter()
            .map(|b| (b.id(), self.cookie.tag(b.addr())))
            .collect();
        let by_tag = by_id.iter().map(|&(id, tag)| (tag, id)).collect();
        let index = Arc::new(TagIndex {
            members_version: snapshot.members_version(),
            by_tag,
            by_id,
        });
        let answer = read(&index);
        self.index.store(Some(index));
        answer
    }
}

impl<A, P> Tags for PoolTags<A, P>
where
    A: BackendKey + Send + Sync,
    P: Picker<A>,
    P::Table: Send + Sync,
{
    fn lookup(&self, tag: &Tag) -> Option<BackendId> {
        let current = self.pool.load();
        let snapshot = current.snapshot();
        let id = self.with_index(snapshot, |index| index.by_tag.get(tag).copied())?;
        snapshot
            .index_of(id)
            .filter(|&i| snapshot.is_eligible(i))
            .map(|_| id)
    }

    fn tag_of(&self, backend: BackendId) -> Option<Tag> {
        let current = self.pool.load();
        self.with_index(current.snapshot(), |index| {
            let at = index.by_id.binary_search_by_key(&backend, |e| e.0).ok()?;
            Some(index.by_id[at].1)
        })
    }
}

pub(super) fn pool_tags<A, P>(pool: &Pool<A, P>, cookie: &Arc<StickyCookie>) -> Arc<dyn Tags>
where
    A: BackendKey + Send + Sync + 'static,
    P: Picker<A> + 'static,
    P::Table: Send + Sync,
{
    Arc::new(PoolTags {
        pool: pool.clone(),
        cookie: Arc::clone(cookie),
        index: ArcSwapOption::empty(),
    })
}
