//! The `Balance` service.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use parking_lot::Mutex;
use tower::util::Oneshot;
use tower_service::Service;

use super::BoxError;
use super::backend_service::BackendService;
use super::classify::{Classify, ErrorsAsFailures};
use super::discover::Driver;
use super::future::{ResponseFuture, Tracked};
use super::layer::BalanceLayer;
use super::limit::{Limit, OnOverload};
use super::route::{PerBackend, Route};
use super::steer::{Steer, Steering};
use crate::affinity::AffinityKey;
use crate::clock::now_nanos;
use crate::error::{DiscoverError, Overloaded};
use crate::{BackendId, Picker, Pool, Snapshot};

/// No affinity: every request is placed by the picker alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAffinity;

impl<Req: ?Sized> AffinityKey<Req> for NoAffinity {
    #[inline]
    fn key(&self, _: &Req) -> Option<u64> {
        None
    }
}

pub(crate) struct Shared<A, P: Picker<A>, R, K, C> {
    pub(crate) pool: Pool<A, P>,
    pub(crate) router: R,
    pub(crate) affinity: K,
    pub(crate) classify: C,
    pub(crate) limit: Option<Arc<Limit>>,
    /// The per-attempt time-out.
    pub(crate) timeout: Option<std::time::Duration>,
    pub(crate) discover: Mutex<Option<Box<dyn Driver<A>>>>,
    /// Whether a discovery stream is set: spares `poll_ready` the mutex when none is.
    pub(crate) discovering: AtomicBool,
    /// Whether a discovery stream ended: nothing will bring a first member any more, so
    /// `poll_ready` stops waiting for one and `call` fails with `NoBackends`.
    pub(crate) discovery_ended: AtomicBool,
    /// Whether `poll_ready` waits for the set's first member instead of letting `call`
    /// fail with `NoBackends` (tower's p2c waits).
    pub(crate) wait_for_backends: bool,
}

/// A `tower::Service` that sends each request to one backend of a [`Pool`].
///
/// Built by [`Balance::new`] (one service per backend, as [`BackendService`]s),
/// [`Balance::from_discover`] (tower's `Discover`), or [`BalanceLayer`] (one client for
/// every backend, or any [`Route`]). See the [module docs](super) for the request flow,
/// the readiness policy and the errors.
///
/// # Examples
///
/// ```
/// use std::convert::Infallible;
/// use tower::{service_fn, ServiceExt};
/// use tower_lb::balance::{Balance, BackendService};
/// use tower_lb::{Pool, RoundRobin, Weight};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_lb::balance::BoxError> {
/// let pool = Pool::new(RoundRobin::new());
/// for name in ["a", "b"] {
///     let svc = service_fn(move |req: u32| async move { Ok::<_, Infallible>(format!("{name}:{req}")) });
///     pool.insert(BackendService::new(name, svc), Weight::ONE)?;
/// }
/// let balance = Balance::new(pool);
/// assert_eq!(balance.clone().oneshot(1).await?, "a:1");
/// assert_eq!(balance.clone().oneshot(2).await?, "b:2");
/// # Ok(())
/// # }
/// ```
pub struct Balance<A, P: Picker<A>, R, K = NoAffinity, C = ErrorsAsFailures> {
    pub(super) shared: Arc<Shared<A, P, R, K, C>>,
    /// A unit of capacity reserved by `poll_ready` for the next `call`.
    reserved: bool,
    /// Whether the last `poll_ready` returned `Pending` on the limit.
    waiting: bool,
}

impl<K, S, P> Balance<BackendService<K, S>, P, PerBackend>
where
    P: Picker<BackendService<K, S>>,
{
    /// A balancer over a pool of [`BackendService`]s, each with its own service.
    pub fn new(pool: Pool<BackendService<K, S>, P>) -> Self {
        BalanceLayer::new(pool).build(PerBackend)
    }
}

impl<A, P: Picker<A>, R, K, C> Balance<A, P, R, K, C> {
    pub(crate) fn from_shared(shared: Shared<A, P, R, K, C>) -> Self {
        Balance {
            shared: Arc::new(shared),
            reserved: false,
            waiting: false,
        }
    }

    /// The backend set: add, remove, reweight, drain, read stats.
    pub fn pool(&self) -> &Pool<A, P> {
        &self.shared.pool
    }

    /// Requests in flight through this balancer plus reservations, when limits are set.
    pub fn committed(&self) -> Option<usize> {
        self.shared.limit.as_ref().map(|l| l.committed())
    }

    /// Units of capacity: eligible backends × the per-backend limit.
    fn capacity(snapshot: &Snapshot<A>, limit: &Limit) -> usize {
        snapshot
            .eligible()
            .len()
            .saturating_mul(limit.max_in_flight)
    }
}

impl<A, P, R, K, C, Req> Service<Req> for Balance<A, P, R, K, C>
where
    A: Clone + Eq + Hash,
    P: Picker<A>,
    R: Route<A, Req>,
    <R::Service as Service<Req>>::Error: Into<BoxError>,
    K: AffinityKey<Req>,
    C: Classify<<R::Service as Service<Req>>::Response, <R::Service as Service<Req>>::Error>
        + Clone,
    Req: Steer,
{
    type Response = <R::Service as Service<Req>>::Response;
    type Error = BoxError;
    type Future = ResponseFuture<Oneshot<R::Service, Req>, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Discovery first, so the pick sees every change already announced. Another
        // clone polling it right now will apply them; skipping is fine.
        if self.shared.discovering.load(Ordering::Acquire)
            && let Some(mut slot) = self.shared.discover.try_lock()
            && let Some(driver) = slot.as_mut()
        {
            match driver.poll_apply(cx, &self.shared.pool) {
                // A batch still arriving (see `discover::MAX_DEFERRED`): the pick waits
                // for it, so it sees every change already announced.
                Poll::Pending if driver.is_deferring() => return Poll::Pending,
                Poll::Pending => {}
                Poll::Ready(Ok(())) => {
                    *slot = None;
                    self.shared.discovering.store(false, Ordering::Relaxed);
                    self.shared.discovery_ended.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(DiscoverError::new(e).into()));
                }
            }
        }
        if self.shared.wait_for_backends && !self.shared.discovery_ended.load(Ordering::Relaxed) {
            // No backend yet: wait for the first publication that brings one, as tower's
            // p2c does, instead of letting `call` fail with `NoBackends` — unless the
            // discovery stream ended (tower's would wait forever).
            ready!(self.shared.pool.poll_members(cx));
        }
        let Some(limit) = &self.shared.limit else {
            return Poll::Ready(Ok(()));
        };
        if self.reserved {
            return Poll::Ready(Ok(()));
        }
        // A guard, not an `Arc` clone: no shared reference count written per request.
        let capacity = Self::capacity(self.shared.pool.load().snapshot(), limit);
        if capacity == 0 {
            // No eligible backend: `call` fails at once with the reason; never hang.
            return Poll::Ready(Ok(()));
        }
        match limit.on_overload {
            OnOverload::Wait => {
                self.waiting = true;
                ready!(limit.poll_reserve(cx, capacity));
                self.waiting = false;
                self.reserved = true;
            }
            OnOverload::Shed => self.reserved = limit.try_reserve(capacity),
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.call_pinned(req, None)
    }
}

impl<A, P, R, K, C> Balance<A, P, R, K, C>
where
    A: Clone + Eq + Hash,
    P: Picker<A>,
{
    /// Calls with a preferred backend: `pinned`, when it is eligible and below its
    /// limit, takes the request instead of the picker's choice (how sticky sessions
    /// keep a client on its backend). Otherwise the same as `call`.
    pub fn call_pinned<Req>(
        &mut self,
        req: Req,
        pinned: Option<BackendId>,
    ) -> ResponseFuture<Oneshot<R::Service, Req>, C>
    where
        R: Route<A, Req>,
        K: AffinityKey<Req>,
        C: Clone,
        Req: Steer,
    {
        self.dispatch(req, pinned, &[])
    }

    /// Calls avoiding the backends in `tried` (a retry's earlier attempts, Envoy's
    /// `previous_hosts`): the picker chooses as usual, and when its choice was tried the
    /// request goes to the next eligible backend that was not. Fails at once with
    /// [`PickError::NoEligible`](crate::PickError::NoEligible) when every eligible
    /// backend was tried.
    pub fn call_excluding<Req>(
        &mut self,
        req: Req,
        tried: &[BackendId],
    ) -> ResponseFuture<Oneshot<R::Service, Req>, C>
    where
        R: Route<A, Req>,
        K: AffinityKey<Req>,
        C: Clone,
        Req: Steer,
    {
        self.dispatch(req, None, tried)
    }

    fn dispatch<Req>(
        &mut self,
        req: Req,
        pinned: Option<BackendId>,
        tried: &[BackendId],
    ) -> ResponseFuture<Oneshot<R::Service, Req>, C>
    where
        R: Route<A, Req>,
        K: AffinityKey<Req>,
        C: Clone,
        Req: Steer,
    {
        let reserved = std::mem::take(&mut self.reserved);
        let shared = &*self.shared;
        let release = || {
            if reserved && let Some(limit) = &shared.limit {
                limit.release();
            }
        };
        let fail = |e: BoxError| ResponseFuture::failed(e, shared.classify.clone());
        // A failure that crossed the ejection threshold is published before this pick.
        shared.pool.tick_if_signalled();
        // One clock read serves the pick (Peak EWMA) and the latency sample's start.
        let now = now_nanos();
        let current = shared.pool.load();
        let snapshot = current.snapshot();
        // The layers' hints travel with the request (see `steer`).
        let hints = req.steering();
        let also = hints.map_or(&[][..], Steering::tried);
        // A pinned backend that this request already tried (a retry) is not pinned.
        let pinned = pinned
            .or_else(|| hints.and_then(Steering::pinned))
            .filter(|id| !tried.contains(id) && !also.contains(id))
            .and_then(|id| snapshot.index_of(id))
            .filter(|&i| snapshot.is_eligible(i));
        let chosen = match pinned {
            Some(index) => Ok(index),
            None => {
                let ctx = shared.affinity.context(&req).with_now_nanos(now);
                current
                    .pick(shared.pool.picker(), &ctx)
                    .and_then(|index| untried(snapshot, index, tried, also))
            }
        };
        let mut index = match chosen {
            Ok(index) => index,
            Err(e) => {
                release();
                return fail(e.into());
            }
        };
        if let Some(limit) = &shared.limit {
            let capacity = Self::capacity(snapshot, limit);
            if !reserved && !limit.try_reserve(capacity) {
                return fail(overloaded(snapshot, limit).into());
            }
            match below_limit(snapshot, index, limit.max_in_flight) {
                Some(other) => index = other,
                None => {
                    limit.release();
                    return fail(overloaded(snapshot, limit).into());
                }
            }
        }
        let Some(backend) = snapshot.get(index) else {
            return fail(snapshot.empty_error().into());
        };
        let state = backend.state();
        let hold = req.steering().and_then(|s| {
            s.report(backend.id());
            s.held_slot().cloned()
        });
        let tracked = Tracked::new(state.start_at_nanos(now), shared.limit.clone());
        let (service, req) = shared.router.route(backend.addr(), req);
        ResponseFuture::called(
            Oneshot::new(service, req),
            tracked,
            shared.classify.clone(),
            backend.id(),
            shared.timeout,
            hold,
        )
    }
}

/// `index`, unless its backend was tried: then the next eligible backend (in index
/// order, wrapping) that was not.
fn untried<A>(
    snapshot: &Snapshot<A>,
    index: usize,
    tried: &[BackendId],
    also: &[BackendId],
) -> Result<usize, crate::PickError> {
    if tried.is_empty() && also.is_empty() {
        return Ok(index);
    }
    let untried = |i: usize| {
        snapshot
            .get(i)
            .is_some_and(|b| !tried.contains(&b.id()) && !also.contains(&b.id()))
    };
    first_from(snapshot, index, untried).ok_or(crate::PickError::NoEligible {
        total: snapshot.len(),
    })
}

/// `index` if `ok(index)`, else the next eligible member after it (in index order,
/// wrapping, so detours spread) for which `ok` holds.
fn first_from<A>(
    snapshot: &Snapshot<A>,
    index: usize,
    ok: impl Fn(usize) -> bool,
) -> Option<usize> {
    if ok(index) {
        return Some(index);
    }
    let eligible = snapshot.eligible();
    let start = eligible.partition_point(|&i| (i as usize) <= index);
    eligible[start..]
        .iter()
        .chain(&eligible[..start])
        .map(|&i| i as usize)
        .find(|&i| ok(i))
}

/// `index` if that backend is below `max` in flight, else another eligible one that is
/// (scanning from `index` on, so the detour spreads), else `None`.
fn below_limit<A>(snapshot: &Snapshot<A>, index: usize, max: usize) -> Option<usize> {
    first_from(snapshot, index, |i| {
        snapshot.get(i).is_some_and(|b| b.state().in_flight() < max)
    })
}

fn overloaded<A>(snapshot: &Snapshot<A>, limit: &Limit) -> Overloaded {
    let backends = snapshot.eligible().len();
    let now = Instant::now();
    // A hint for Retry-After: the quickest eligible backend's latency estimate.
    let retry_after = snapshot
        .eligible()
        .iter()
        .filter_map(|&i| snapshot.get(i as usize)?.state().rtt_estimate(now))
        .min();
    Overloaded {
        in_flight: limit.committed(),
        max_in_flight: limit.max_in_flight,
        backends,
        retry_after,
    }
}

impl<A, P: Picker<A>, R, K, C> Clone for Balance<A, P, R, K, C> {
    /// A handle on the same balancer; a reservation is never copied.
    fn clone(&self) -> Self {
        Balance {
            shared: Arc::clone(&self.shared),
            reserved: false,
            waiting: false,
        }
    }
}

impl<A, P: Picker<A>, R, K, C> Drop for Balance<A, P, R, K, C> {
    fn drop(&mut self) {
        if let Some(limit) = &self.shared.limit {
            if self.reserved {
                limit.release();
            } else if self.waiting {
                // Our waker may be the one the next release wakes: pass it on.
                limit.wake_one();
            }
        }
    }
}

impl<A: fmt::Debug, P: Picker<A> + fmt::Debug, R: fmt::Debug, K: fmt::Debug, C> fmt::Debug
    for Balance<A, P, R, K, C>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("pool", &self.shared.pool)
            .field("router", &self.shared.router)
            .field("affinity", &self.shared.affinity)
            .field("limit", &self.shared.limit)
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}
