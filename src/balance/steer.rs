//! Steering: what the layers around a [`Balance`](super::Balance) tell it about one
//! request, and what it tells them back — carried by the request itself, so that sticky
//! sessions, retries, body tracking and time-outs are each a `Layer<S>` for any `S` and
//! stack in any order (tower's `ServiceBuilder`, `Timeout`, `Buffer`, your own layers).
//!
//! A [`Steering`] holds a backend to prefer (a sticky session's), the backends already
//! tried (a retry's, Envoy's `previous_hosts`), a slot where the balancer writes the
//! backend it chose, and a slot where it leaves a request's tracking for the layer that
//! follows its response body. An `http::Request` carries it in its extensions; any other
//! request type can carry one by implementing [`Steer`] (or opt out with
//! `impl Steer for MyRequest {}`, which every balancer then simply reads as "no hints").

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::future::Tracked;
use crate::BackendId;

/// The hints a request carries for the balancer, and the balancer's answers.
///
/// Cloning shares the answer slots: a clone of a request (a retry's next attempt) reports
/// to the same layers, and [`served_by`](Self::served_by) tells the last attempt's
/// backend.
#[derive(Clone, Default)]
pub struct Steering {
    pin: Option<BackendId>,
    tried: Vec<BackendId>,
    served: Arc<ServedSlot>,
    hold: Option<Arc<HeldSlot>>,
}

impl Steering {
    /// No hints.
    pub fn new() -> Self {
        Steering::default()
    }

    /// The backend the request should go to when it is eligible and below its limit
    /// (a sticky session's).
    pub fn pinned(&self) -> Option<BackendId> {
        self.pin
    }

    /// Prefers `backend` (see [`pinned`](Self::pinned)).
    pub fn pin(&mut self, backend: Option<BackendId>) {
        self.pin = backend;
    }

    /// The backends the request must not go to (earlier attempts).
    pub fn tried(&self) -> &[BackendId] {
        &self.tried
    }

    /// Adds `backend` to the backends not to use.
    pub fn exclude(&mut self, backend: BackendId) {
        if !self.tried.contains(&backend) {
            self.tried.push(backend);
        }
    }

    /// The backend the balancer chose for this request, once it has (the last attempt's,
    /// when the request was sent several times).
    pub fn served_by(&self) -> Option<BackendId> {
        self.served.get()
    }

    /// Forgets the backend reported so far, before another attempt: every layer sharing
    /// this steering then sees the next attempt's backend, or none if it chose none.
    pub(crate) fn clear_served(&self) {
        self.served.clear();
    }

    /// Asks the balancer to keep the request tracked past its response head, for a body
    /// tracking layer to take with [`take_held`](Self::take_held).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn hold(&mut self) -> Arc<HeldSlot> {
        Arc::clone(self.hold.get_or_insert_with(Arc::default))
    }

    pub(crate) fn report(&self, backend: BackendId) {
        self.served.set(backend);
    }

    pub(crate) fn held_slot(&self) -> Option<&Arc<HeldSlot>> {
        self.hold.as_ref()
    }
}

impl fmt::Debug for Steering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Steering")
            .field("pinned", &self.pin)
            .field("tried", &self.tried)
            .field("served_by", &self.served_by())
            .field("holds", &self.hold.is_some())
            .finish()
    }
}

/// Where the balancer writes the backend it chose.
#[derive(Debug)]
pub(crate) struct ServedSlot(AtomicU64);

impl Default for ServedSlot {
    fn default() -> Self {
        ServedSlot(AtomicU64::new(u64::MAX))
    }
}

impl ServedSlot {
    fn get(&self) -> Option<BackendId> {
        // Relaxed: written by the balancer's `call` before the response future that the
        // reader awaits is even returned; the future's completion orders the rest.
        let raw = self.0.load(Ordering::Relaxed);
        (raw != u64::MAX).then(|| BackendId::new(raw))
    }

    fn set(&self, backend: BackendId) {
        self.0.store(backend.get(), Ordering::Relaxed);
    }

    fn clear(&self) {
        self.0.store(u64::MAX, Ordering::Relaxed);
    }
}

/// Where the balancer leaves a request's tracking (and its response's classification)
/// for the body tracking layer.
#[derive(Debug, Default)]
pub(crate) struct HeldSlot(Mutex<Option<(Tracked, bool)>>);

impl HeldSlot {
    pub(crate) fn put(&self, held: (Tracked, bool)) {
        *self.0.lock() = Some(held);
    }

    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn take(&self) -> Option<(Tracked, bool)> {
        self.0.lock().take()
    }
}

/// A request type that can carry a [`Steering`].
///
/// Implemented for `http::Request` (in its extensions) and for the
/// standard library's plain value types (which carry none). For a request type of your
/// own, return a `Steering` you keep in it — or write `impl Steer for MyRequest {}`:
/// the balancer then reads no hints (no sticky pin, no retry exclusion), and works as
/// before.
pub trait Steer {
    /// The request's steering, if it carries one.
    fn steering(&self) -> Option<&Steering> {
        None
    }

    /// The request's steering, added if it has none; `None` if this type cannot carry one.
    fn steering_mut(&mut self) -> Option<&mut Steering> {
        None
    }
}

impl<B> Steer for http::Request<B> {
    fn steering(&self) -> Option<&Steering> {
        self.extensions().get::<Steering>()
    }

    fn steering_mut(&mut self) -> Option<&mut Steering> {
        let extensions = self.extensions_mut();
        if extensions.get::<Steering>().is_none() {
            extensions.insert(Steering::default());
        }
        extensions.get_mut::<Steering>()
    }
}

macro_rules! plain {
    ($($t:ty),* $(,)?) => { $(impl Steer for $t {})* };
}

plain!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    String,
    &'static str,
    Vec<u8>,
    std::net::SocketAddr,
);
