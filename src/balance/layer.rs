//! `BalanceLayer`: the configuration of a [`Balance`], and a tower `Layer`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tower::Layer;

use super::classify::ErrorsAsFailures;
use super::limit::{Limit, OnOverload};
use super::route::Client;
use super::service::{Balance, NoAffinity, Shared};
use crate::pick::hash::HashPicker;
use crate::{Picker, Pool};

/// Configures a [`Balance`] over a [`Pool`]; as a tower `Layer`, wraps one client that
/// serves every backend (each request is [retargeted](super::Retarget) at the picked one).
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_lb::balance::{BalanceLayer, OnOverload, Retarget};
/// use tower_lb::{Pool, PowerOfTwoChoices, Weight};
///
/// // A request type of ours that knows how to point itself at a backend.
/// struct Query { backend: Option<&'static str> }
/// impl Retarget<&'static str> for Query {
///     fn retarget(&mut self, backend: &&'static str) { self.backend = Some(*backend); }
/// }
///
/// let pool = Pool::new(PowerOfTwoChoices::new());
/// pool.insert("db-1", Weight::ONE).unwrap();
/// let client = tower::service_fn(|q: Query| async move {
///     Ok::<_, std::convert::Infallible>(q.backend)
/// });
/// let balanced = ServiceBuilder::new()
///     .layer(BalanceLayer::new(pool).max_in_flight(64).on_overload(OnOverload::Shed))
///     .service(client);
/// # let _ = balanced;
/// ```
pub struct BalanceLayer<A, P: Picker<A>, K = NoAffinity, C = ErrorsAsFailures> {
    pool: Pool<A, P>,
    affinity: K,
    classify: C,
    limit: Option<(usize, OnOverload)>,
    timeout: Option<Duration>,
    wait_for_backends: bool,
}

impl<A, P: Picker<A>> BalanceLayer<A, P> {
    /// Balances over `pool`, with no affinity, every error a failure, and no limit.
    ///
    /// Every *response* counts as a success here, an HTTP 503 included: the layer
    /// cannot know the response type yet. For HTTP use [`http`](Self::http) (5xx are
    /// failures), for gRPC [`grpc`](Self::grpc) (`grpc-status`), or
    /// [`classify`](Self::classify).
    pub fn new(pool: Pool<A, P>) -> Self {
        BalanceLayer {
            pool,
            affinity: NoAffinity,
            classify: ErrorsAsFailures,
            limit: None,
            timeout: None,
            wait_for_backends: false,
        }
    }
}

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
impl<A, P: Picker<A>> BalanceLayer<A, P, NoAffinity, super::HttpStatus> {
    /// Balances HTTP requests over `pool`: transport errors and 5xx responses are
    /// failures ([`HttpStatus`](super::HttpStatus)), as Envoy's outlier detection counts
    /// them. The same as `new(pool).classify(HttpStatus::new())`.
    ///
    /// ```
    /// use tower_lb::balance::{BalanceLayer, HttpTarget};
    /// use tower_lb::{Pool, PowerOfTwoChoices};
    ///
    /// let pool = Pool::<HttpTarget, _>::new(PowerOfTwoChoices::new());
    /// let layer = BalanceLayer::http(pool); // a 503 counts against its backend
    /// # let _ = layer;
    /// ```
    pub fn http(pool: Pool<A, P>) -> Self {
        BalanceLayer::new(pool).classify(super::HttpStatus::new())
    }
}

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
impl<A, P: Picker<A>> BalanceLayer<A, P, NoAffinity, super::GrpcStatus> {
    /// Balances gRPC calls over `pool`: transport errors and the server-fault
    /// `grpc-status` codes are failures ([`GrpcStatus`](super::GrpcStatus); add
    /// [`TrackBodyLayer`](super::TrackBodyLayer) above the balancer to read the codes
    /// that arrive in trailers). The same as `new(pool).classify(GrpcStatus::new())`.
    pub fn grpc(pool: Pool<A, P>) -> Self {
        BalanceLayer::new(pool).classify(super::GrpcStatus::new())
    }
}

impl<A, P: Picker<A>, K, C> BalanceLayer<A, P, K, C> {
    /// Extracts each request's affinity key with `affinity`, for a hashing picker.
    ///
    /// A picker that ignores keys (round robin, p2c, ...; see
    /// [`Picker::uses_affinity`]) would silently balance keyed requests anywhere, so
    /// this logs a warning (target `tower_lb::balance`) when the pool's picker ignores
    /// them. [`hash_affinity`](Self::hash_affinity) makes that a compile-time error
    /// instead; [`affinity_if_hashing`](Self::affinity_if_hashing) states that the key
    /// is meant for whichever strategy a configuration picks.
    pub fn affinity<K2>(self, affinity: K2) -> BalanceLayer<A, P, K2, C> {
        if !self.pool.picker().uses_affinity() {
            tracing::warn!(
                target: "tower_lb::balance",
                picker = std::any::type_name::<P>(),
                "an affinity key is set but the picker ignores it: use a hashing picker \
                 (Maglev, Ring, Rendezvous, Jump, BoundedLoad), `hash_affinity` to have the \
                 compiler check it, or `affinity_if_hashing` for a strategy chosen at run time"
            );
        }
        self.with_affinity(affinity)
    }

    /// [`affinity`](Self::affinity), checked at compile time: only a consistent-hashing
    /// picker ([`HashPicker`]) is accepted.
    ///
    /// ```
    /// use tower_lb::affinity::HeaderKey;
    /// use tower_lb::balance::BalanceLayer;
    /// use tower_lb::{Maglev, Pool};
    ///
    /// let pool = Pool::<&str, _>::new(Maglev::new());
    /// let layer = BalanceLayer::new(pool).hash_affinity(HeaderKey::from_static("x-user"));
    /// # let _ = layer;
    /// ```
    ///
    /// A picker that ignores keys does not compile:
    ///
    /// ```compile_fail
    /// use tower_lb::affinity::HeaderKey;
    /// use tower_lb::balance::BalanceLayer;
    /// use tower_lb::{Pool, PowerOfTwoChoices};
    ///
    /// let pool = Pool::<&str, _>::new(PowerOfTwoChoices::new());
    /// let layer = BalanceLayer::new(pool).hash_affinity(HeaderKey::from_static("x-user"));
    /// ```
    pub fn hash_affinity<K2>(self, affinity: K2) -> BalanceLayer<A, P, K2, C>
    where
        P: HashPicker<A>,
    {
        self.with_affinity(affinity)
    }

    /// [`affinity`](Self::affinity) without the warning: for a strategy chosen at run
    /// time ([`AnyPicker`](crate::AnyPicker) from a configuration), where the key
    /// matters only if the strategy hashes.
    pub fn affinity_if_hashing<K2>(self, affinity: K2) -> BalanceLayer<A, P, K2, C> {
        self.with_affinity(affinity)
    }

    fn with_affinity<K2>(self, affinity: K2) -> BalanceLayer<A, P, K2, C> {
        BalanceLayer {
            pool: self.pool,
            affinity,
            classify: self.classify,
            limit: self.limit,
            timeout: self.timeout,
            wait_for_backends: self.wait_for_backends,
        }
    }

    /// Classifies outcomes with `classify` (for passive health).
    pub fn classify<C2>(self, classify: C2) -> BalanceLayer<A, P, K, C2> {
        BalanceLayer {
            pool: self.pool,
            affinity: self.affinity,
            classify,
            limit: self.limit,
            timeout: self.timeout,
            wait_for_backends: self.wait_for_backends,
        }
    }

    /// A time-out for each attempt: a request whose backend has not answered `timeout`
    /// after it was sent fails with [`TimedOut`](crate::TimedOut) (naming the backend
    /// and the time elapsed), the request is cancelled, and the attempt counts as a
    /// failure of that backend (its failure score, outlier detection). Unset by default.
    /// Needs the `tokio` feature and a tokio runtime with its timer; outside one the
    /// request runs without a time-out.
    ///
    /// Put it here rather than in a `Timeout` around the balancer when a retry layer
    /// sits outside: each attempt then gets its own time-out.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// At most `max` requests in flight per backend from this balancer; 0 means no limit
    /// (as NGINX's `max_conns=0`), the default.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        let on_overload = self.limit.map(|(_, o)| o).unwrap_or_default();
        let max = if max == 0 { usize::MAX } else { max };
        self.limit = Some((max, on_overload));
        self
    }

    /// What to do when every eligible backend is at its limit (default: wait).
    pub fn on_overload(mut self, on_overload: OnOverload) -> Self {
        if let Some((_, o)) = &mut self.limit {
            *o = on_overload;
        } else {
            self.limit = Some((usize::MAX, on_overload));
        }
        self
    }

    /// While the set has no member, `poll_ready` waits for the first one (woken by the
    /// publication that brings it, from discovery or a direct insert) instead of letting
    /// `call` fail at once with [`PickError::NoBackends`](crate::PickError::NoBackends),
    /// as tower's p2c balancer waits for its first endpoint. Bound the wait with a
    /// time-out layer. A set whose members are all ineligible still fails at once, and
    /// so does an empty set once the balancer's discovery stream has ended (nothing will
    /// bring a member then; tower's balancer would wait forever).
    pub fn wait_for_backends(mut self) -> Self {
        self.wait_for_backends = true;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<A, P> {
        &self.pool
    }

    /// A balancer that reaches backends through `router`.
    pub fn build<R>(&self, router: R) -> Balance<A, P, R, K, C>
    where
        K: Clone,
        C: Clone,
    {
        Balance::from_shared(Shared {
            pool: self.pool.clone(),
            router,
            affinity: self.affinity.clone(),
            classify: self.classify.clone(),
            limit: self
                .limit
                .map(|(max, on_overload)| Arc::new(Limit::new(max, on_overload))),
            timeout: self.timeout,
            discover: Mutex::new(None),
            discovering: Default::default(),
            discovery_ended: Default::default(),
            wait_for_backends: self.wait_for_backends,
        })
    }
}

impl<A, P: Picker<A>, K: Clone, C: Clone, S> Layer<S> for BalanceLayer<A, P, K, C> {
    type Service = Balance<A, P, Client<S>, K, C>;

    fn layer(&self, client: S) -> Self::Service {
        self.build(Client(client))
    }
}

impl<A, P: Picker<A>, K: Clone, C: Clone> Clone for BalanceLayer<A, P, K, C> {
    fn clone(&self) -> Self {
        BalanceLayer {
            pool: self.pool.clone(),
            affinity: self.affinity.clone(),
            classify: self.classify.clone(),
            limit: self.limit,
            timeout: self.timeout,
            wait_for_backends: self.wait_for_backends,
        }
    }
}

impl<A: fmt::Debug, P: Picker<A> + fmt::Debug, K: fmt::Debug, C> fmt::Debug
    for BalanceLayer<A, P, K, C>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalanceLayer")
            .field("pool", &self.pool)
            .field("affinity", &self.affinity)
            .field("limit", &self.limit)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
