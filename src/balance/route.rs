//! How a request reaches the backend that was picked for it.

use tower_service::Service;

use super::backend_service::BackendService;

/// Sends a request to a picked backend: returns the service to call and the request,
/// adjusted if needed.
pub trait Route<A, Req> {
    /// The service that carries the request.
    type Service: Service<Req>;

    /// The service for `backend`, and the request to give it.
    fn route(&self, backend: &A, req: Req) -> (Self::Service, Req);
}

/// Each backend is an [`BackendService`] with a service of its own; the request goes to a
/// clone of it unchanged (cheap for clients such as hyper's).
#[derive(Debug, Clone, Copy, Default)]
pub struct PerBackend;

impl<K, S, Req> Route<BackendService<K, S>, Req> for PerBackend
where
    S: Service<Req> + Clone,
{
    type Service = S;

    fn route(&self, backend: &BackendService<K, S>, req: Req) -> (S, Req) {
        (backend.service().clone(), req)
    }
}

/// Points a request at a backend, for one client that serves every backend.
///
/// Implemented for `http::Request` (feature `http`): the URI's scheme and authority are
/// set to the backend's. Implement it for your own request types to route them too.
pub trait Retarget<A> {
    /// Points `self` at `backend`.
    fn retarget(&mut self, backend: &A);
}

/// One client for every backend: each request is [retargeted](Retarget) at the picked
/// backend and sent through a clone of the client.
#[derive(Debug, Clone)]
pub struct Client<S>(pub S);

impl<A, S, Req> Route<A, Req> for Client<S>
where
    S: Service<Req> + Clone,
    Req: Retarget<A>,
{
    type Service = S;

    fn route(&self, backend: &A, mut req: Req) -> (S, Req) {
        req.retarget(backend);
        (self.0.clone(), req)
    }
}
