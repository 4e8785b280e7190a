//! Health and membership events, and the per-backend gauges of the `metrics` feature:
//! what changed between two published snapshots.
//!
//! Every snapshot the pool publishes is compared, under the writer lock, with the state
//! seen at the previous one: members that appeared or left, ejections that began or
//! ended, active-probe verdicts that flipped, the panic threshold crossed or cleared.
//! Each change becomes a [`PoolEvent`], handed to the callbacks registered with
//! [`Pool::on_event`] (or a [`Pool::subscribe`] channel) in the order it was seen. A
//! change that begins and ends between two publications (an ejection that a single
//! evaluation both starts and ends) is not seen, as it never reached a snapshot.

use std::fmt;
use std::sync::Arc;

use super::Pool;
use crate::backend::{Backend, BackendId, Weight};
use crate::health::{Ejection, Reason, Verdict};
use crate::pick::Picker;
use crate::snapshot::Snapshot;

/// A change in a pool's membership or health, with the backend and the reason.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PoolEvent<A> {
    /// A backend joined the pool.
    Inserted {
        /// Its id.
        id: BackendId,
        /// Its address.
        addr: A,
        /// Its weight.
        weight: Weight,
    },
    /// A backend left the pool.
    Removed {
        /// Its id.
        id: BackendId,
        /// Its address.
        addr: A,
    },
    /// Passive outlier detection ejected a backend.
    Ejected {
        /// Its id.
        id: BackendId,
        /// Its address.
        addr: A,
        /// The rule that ejected it.
        reason: Ejection,
    },
    /// An ejection ended (its time was up, a probe succeeded, or the set shrank under
    /// the ejection cap).
    Returned {
        /// Its id.
        id: BackendId,
        /// Its address.
        addr: A,
        /// The rule that had ejected it.
        reason: Ejection,
    },
    /// Active probes marked a backend down (`fall` failures in a row).
    ProbeDown {
        /// Its id.
        id: BackendId,
        /// Its address.
        addr: A,
        /// The last probe's error.
        error: Arc<str>,
    },
    /// Active probes marked a backend up again (`rise` successes in a row).
    ProbeUp {
        /// Its id.
        id: BackendId,
        /// Its address.
        addr: A,
    },
    /// Too few backends are healthy: the panic threshold is crossed.
    PanicEntered {
        /// Healthy backends.
        healthy: usize,
        /// Backends in service (not draining, not confirmed down while others answer).
        total: usize,
    },
    /// Enough backends are healthy again: routing to healthy backends only.
    PanicLeft {
        /// Healthy backends.
        healthy: usize,
        /// Members.
        total: usize,
    },
}

type Listener<A> = Box<dyn Fn(&PoolEvent<A>) + Send + Sync>;

/// What the observer saw of one member at the last publication.
struct Seen<A> {
    /// The member as first published (kept for its `Removed` event and metrics).
    backend: Backend<A>,
    ejection: Option<Ejection>,
    probe_down: bool,
}

/// The writer-side memory that turns publications into events and gauges.
pub(crate) struct Observer<A> {
    /// The members at the last publication observed, in id order (as snapshots are).
    seen: Vec<Seen<A>>,
    /// Whether publications went unobserved (no listener, no metrics): `seen` is then
    /// out of date and is brought up to date, silently, when a listener arrives.
    stale: bool,
    panicking: bool,
    listeners: Vec<Listener<A>>,
    #[cfg(feature = "metrics")]
    pub(crate) label: Option<super::builder::Label<A>>,
}

impl<A> Default for Observer<A> {
    fn default() -> Self {
        Observer {
            seen: Vec::new(),
            stale: false,
            panicking: false,
            listeners: Vec::new(),
            #[cfg(feature = "metrics")]
            label: None,
        }
    }
}

impl<A> fmt::Debug for Observer<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observer")
            .field("members", &self.seen.len())
            .field("listeners", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

fn probe_error(verdict: Verdict) -> Option<Arc<str>> {
    match verdict {
        Verdict::Unhealthy(Reason::ProbeFailed { error }) => Some(error),
        _ => None,
    }
}

impl<A: Clone> Observer<A> {
    /// Compares `snapshot`, just published, with what was seen before; emits the events.
    /// With no listener (and no metrics) it only notes that it missed a publication: the
    /// comparison is O(members), and nobody would hear its events.
    pub(crate) fn published(&mut self, snapshot: &Snapshot<A>) {
        if self.listeners.is_empty() && !cfg!(feature = "metrics") {
            self.stale = true;
            return;
        }
        self.observe(snapshot);
    }

    /// Brings `seen` up to date with `snapshot` without telling anyone (before the first
    /// listener is added, so that it hears of changes from then on only).
    fn catch_up(&mut self, snapshot: &Snapshot<A>) {
        if std::mem::take(&mut self.stale) {
            let listeners = std::mem::take(&mut self.listeners);
            self.observe(snapshot);
            self.listeners = listeners;
        }
    }

    /// The comparison: one merge of two id-ordered lists, cloning only new members.
    fn observe(&mut self, snapshot: &Snapshot<A>) {
        let mut events = Vec::new();
        let mut old = std::mem::take(&mut self.seen).into_iter().peekable();
        let mut next = Vec::with_capacity(snapshot.len());
        let mut gone = Vec::new();
        for (index, backend) in snapshot.backends().iter().enumerate() {
            let cell = &backend.state().health;
            let ejection = cell.ejection();
            let probe = probe_error(cell.probe_verdict());
            let (id, addr) = (backend.id(), || backend.addr().clone());
            // Seen members with a smaller id are not in this snapshot any more.
            while let Some(left) = old.next_if(|s| s.backend.id() < id) {
                gone.push(left);
            }
            let (was_ejected, was_down, kept) = match old.next_if(|s| s.backend.id() == id) {
                Some(old) => (old.ejection, old.probe_down, old.backend),
                None => {
                    events.push(PoolEvent::Inserted {
                        id,
                        addr: addr(),
                        weight: backend.weight(),
                    });
                    (None, false, backend.clone())
                }
            };
            match (was_ejected, ejection) {
                (None, Some(reason)) => events.push(PoolEvent::Ejected {
                    id,
                    addr: addr(),
                    reason,
                }),
                (Some(reason), None) => events.push(PoolEvent::Returned {
                    id,
                    addr: addr(),
                    reason,
                }),
                _ => {}
            }
            match (was_down, &probe) {
                (false, Some(error)) => events.push(PoolEvent::ProbeDown {
                    id,
                    addr: addr(),
                    error: Arc::clone(error),
                }),
                (true, None) => events.push(PoolEvent::ProbeUp { id, addr: addr() }),
                _ => {}
            }
            #[cfg(feature = "metrics")]
            self.gauges(snapshot, index, backend);
            #[cfg(not(feature = "metrics"))]
            let _ = index;
            next.push(Seen {
                backend: kept,
                ejection,
                probe_down: probe.is_some(),
            });
        }
        gone.extend(old);
        for gone in gone {
            #[cfg(feature = "metrics")]
            if let Some(m) = gone.backend.state().metrics.get() {
                m.removed();
            }
            events.push(PoolEvent::Removed {
                id: gone.backend.id(),
                addr: gone.backend.addr().clone(),
            });
        }
        self.seen = next;
        let panicking = snapshot.is_panicking();
        if panicking != self.panicking {
            self.panicking = panicking;
            let healthy = (0..snapshot.len())
                .filter(|&i| snapshot.is_healthy(i))
                .count();
            events.push(match snapshot.panic_counts() {
                Some((healthy, total)) => PoolEvent::PanicEntered { healthy, total },
                None => PoolEvent::PanicLeft {
                    healthy,
                    total: snapshot.len(),
                },
            });
        }
        for event in &events {
            for listener in &self.listeners {
                listener(event);
            }
        }
    }

    /// The member's gauges: registered at its first publication, then kept current.
    #[cfg(feature = "metrics")]
    fn gauges(&self, snapshot: &Snapshot<A>, index: usize, backend: &Backend<A>) {
        let state = backend.state();
        let m = state.metrics.get_or_init(|| {
            let label = match &self.label {
                Some(label) => label(backend.addr()),
                None => backend.id().to_string(),
            };
            crate::backend::metrics::BackendMetrics::new(label)
        });
        m.healthy
            .set(if snapshot.is_healthy(index) { 1.0 } else { 0.0 });
        m.weight.set(f64::from(backend.weight().get()));
        m.ejections.absolute(
            state
                .health
                .ejections
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    }
}

impl<A: Clone, P: Picker<A>> Pool<A, P> {
    /// Calls `listener` with every health and membership change from now on (see
    /// [`PoolEvent`]): to log, alert, or feed a channel.
    ///
    /// The listener runs on the thread that publishes the change, under the pool's
    /// writer lock: keep it short, and do not change the pool from it (send the event
    /// elsewhere). The current members count as seen: no `Inserted` for them.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use tower_lb::pool::PoolEvent;
    /// use tower_lb::{Pool, RoundRobin, Weight};
    ///
    /// let pool = Pool::new(RoundRobin::new());
    /// let log = Arc::new(Mutex::new(Vec::new()));
    /// let sink = Arc::clone(&log);
    /// pool.on_event(move |e: &PoolEvent<&str>| sink.lock().unwrap().push(e.clone()));
    /// let id = pool.insert("10.0.0.1:80", Weight::ONE)?;
    /// pool.remove(id)?;
    /// assert!(matches!(log.lock().unwrap()[..], [
    ///     PoolEvent::Inserted { addr: "10.0.0.1:80", .. },
    ///     PoolEvent::Removed { addr: "10.0.0.1:80", .. },
    /// ]));
    /// # Ok::<(), tower_lb::MembershipError>(())
    /// ```
    pub fn on_event(&self, listener: impl Fn(&PoolEvent<A>) + Send + Sync + 'static) {
        let mut writer = self.inner.writer.lock();
        // Under the writer lock: no publication between this snapshot and the listener.
        writer
            .observer
            .catch_up(&self.inner.current.load().snapshot);
        writer.observer.listeners.push(Box::new(listener));
    }

    /// A channel of every health and membership change from now on (tokio's
    /// `broadcast`: a receiver that falls more than `capacity` events behind loses the
    /// oldest and is told how many). Built on [`on_event`](Self::on_event).
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn subscribe(&self, capacity: usize) -> tokio::sync::broadcast::Receiver<PoolEvent<A>>
    where
        A: Send + Sync + 'static,
    {
        let (tx, rx) = tokio::sync::broadcast::channel(capacity.max(1));
        self.on_event(move |event| {
            // No receiver left is not an error of the pool's.
            let _ = tx.send(event.clone());
        });
        rx
    }
}
