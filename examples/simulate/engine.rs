//! The event loop: virtual time, client instances with real pools, modelled backends.
//!
//! Time is a `u64` of nanoseconds since the start of the run; the library sees it as
//! `base + t` (an `Instant`) through `PickContext::with_now`, `Picked::start_at`,
//! `InFlight::finish` and a `ManualClock` driving each pool's health. Nothing sleeps: a
//! run of 100 000 requests takes well under a second.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tower_lb::clock::ManualClock;
use tower_lb::{InFlight, PickContext, Picker, Pool, Weight};

pub const MS: u64 = 1_000_000;
pub const SEC: u64 = 1_000 * MS;

/// A backend's service time.
#[derive(Debug, Clone, Copy)]
pub enum Latency {
    /// Uniform in [min, max] milliseconds.
    Uniform { min_ms: f64, max_ms: f64 },
    /// Exponential with this mean, in milliseconds.
    Exponential { mean_ms: f64 },
}

impl Latency {
    fn sample(self, rng: &mut SmallRng) -> u64 {
        let ms = match self {
            Latency::Uniform { min_ms, max_ms } => min_ms + rng.random::<f64>() * (max_ms - min_ms),
            Latency::Exponential { mean_ms } => -mean_ms * (1.0 - rng.random::<f64>()).ln(),
        };
        (ms * MS as f64) as u64
    }
}

/// A modelled backend: service time, capacity (requests served at once; more wait in
/// a FIFO queue), and when it is down (requests fail after `fail_after`).
#[derive(Debug, Clone)]
pub struct BackendModel {
    pub latency: Latency,
    pub slots: Option<usize>,
    pub down_from: Option<u64>,
    pub fail_after: u64,
}

impl BackendModel {
    pub fn new(latency: Latency) -> Self {
        BackendModel {
            latency,
            slots: None,
            down_from: None,
            fail_after: MS,
        }
    }
}

/// How clients generate load.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// Each client keeps `in_flight` requests outstanding until `total` (all clients
    /// together) have been sent: tower's `tower-balance` example.
    Closed { in_flight: usize, total: u64 },
    /// Each client sends Poisson arrivals at `rate` per second until `until`.
    Open { rate: f64, until: u64 },
}

/// What a run records.
#[derive(Debug, Default, Clone)]
pub struct Record {
    /// Latency of every finished request, in nanoseconds.
    pub latencies: Vec<u64>,
    pub failures: u64,
    /// Requests sent to each backend per time bucket: `sent[bucket][backend]`.
    pub sent: Vec<Vec<u64>>,
    pub bucket: u64,
    /// Requests sent to each backend in all.
    pub per_backend: Vec<u64>,
    pub end: u64,
}

struct BackendRt {
    model: BackendModel,
    busy: usize,
    queue: VecDeque<usize>,
}

struct Req {
    client: usize,
    backend: usize,
    start: u64,
    guard: Option<InFlight>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Issue(usize),
    Finish(usize, bool),
    Tick,
}

/// Called on every finished request: (client, backend, success, now); a scenario feeds
/// server-reported load through it.
pub type OnFinish<'a> = Box<dyn FnMut(usize, usize, bool, u64) + 'a>;

/// One run: `clients` real pools of `backends` members each (member `b` has address `b`).
pub struct Sim<'a, P: Picker<usize>> {
    now: u64,
    base: Instant,
    clock: ManualClock,
    pub pools: Vec<Pool<usize, P>>,
    backends: Vec<BackendRt>,
    events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    reqs: Vec<Option<Req>>,
    free: Vec<usize>,
    rng: SmallRng,
    load: Load,
    sent: u64,
    pub record: Record,
    pub on_finish: Option<OnFinish<'a>>,
    /// Health ticks every this often (0: never).
    pub tick_every: u64,
}

impl<'a, P: Picker<usize>> Sim<'a, P> {
    /// `make(client)` builds each client's picker; every pool holds every backend.
    pub fn new(
        models: Vec<BackendModel>,
        clients: usize,
        load: Load,
        seed: u64,
        bucket: u64,
        make: impl Fn(usize, &ManualClock) -> Pool<usize, P>,
    ) -> Self {
        let clock = ManualClock::new();
        let base = clock.now();
        let n = models.len();
        let pools = (0..clients)
            .map(|c| {
                let pool = make(c, &clock);
                if pool.snapshot().is_empty() {
                    pool.extend((0..n).map(|b| (b, Weight::ONE)))
                        .expect("distinct addresses");
                }
                pool
            })
            .collect();
        Sim {
            now: 0,
            base,
            clock,
            pools,
            backends: models
                .into_iter()
                .map(|model| BackendRt {
                    model,
                    busy: 0,
                    queue: VecDeque::new(),
                })
                .collect(),
            events: BinaryHeap::new(),
            seq: 0,
            reqs: Vec::new(),
            free: Vec::new(),
            rng: SmallRng::seed_from_u64(seed),
            load,
            sent: 0,
            record: Record {
                bucket,
                per_backend: vec![0; n],
                ..Record::default()
            },
            on_finish: None,
            tick_every: 0,
        }
    }

    pub fn instant(&self, t: u64) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, ev)));
    }

    /// Runs to the end of the load and returns what was recorded.
    pub fn run(mut self) -> Record {
        let clients = self.pools.len();
        match self.load {
            Load::Closed { in_flight, .. } => {
                for c in 0..clients {
                    for _ in 0..in_flight {
                        self.push(0, Ev::Issue(c));
                    }
                }
            }
            Load::Open { rate, .. } => {
                for c in 0..clients {
                    let gap = self.gap(rate);
                    self.push(gap, Ev::Issue(c));
                }
            }
        }
        if self.tick_every > 0 {
            self.push(self.tick_every, Ev::Tick);
        }
        while let Some(Reverse((at, _, ev))) = self.events.pop() {
            if at > self.now {
                self.clock.advance(Duration::from_nanos(at - self.now));
                self.now = at;
            }
            match ev {
                Ev::Issue(c) => self.issue(c),
                Ev::Finish(r, ok) => self.finish(r, ok),
                Ev::Tick => {
                    for pool in &self.pools {
                        pool.tick();
                    }
                    if self.in_progress() {
                        self.push(self.now + self.tick_every, Ev::Tick);
                    }
                }
            }
        }
        self.record.end = self.now;
        self.record
    }

    fn in_progress(&self) -> bool {
        match self.load {
            Load::Closed { total, .. } => {
                self.sent < total || self.reqs.iter().any(Option::is_some)
            }
            Load::Open { until, .. } => self.now < until || self.reqs.iter().any(Option::is_some),
        }
    }

    fn gap(&mut self, rate: f64) -> u64 {
        (-(1.0 - self.rng.random::<f64>()).ln() / rate * SEC as f64) as u64
    }

    fn issue(&mut self, client: usize) {
        match self.load {
            Load::Closed { total, .. } => {
                if self.sent >= total {
                    return;
                }
            }
            Load::Open { rate, until } => {
                if self.now >= until {
                    return;
                }
                let next = self.now + self.gap(rate);
                self.push(next, Ev::Issue(client));
            }
        }
        self.sent += 1;
        let at = self.instant(self.now);
        let picked = match self.pools[client].pick(&PickContext::new().with_now(at)) {
            Ok(p) => p,
            Err(_) => {
                // No eligible backend: a failure, retried by the closed loop a moment later.
                self.record.failures += 1;
                if let Load::Closed { .. } = self.load {
                    self.push(self.now + MS, Ev::Issue(client));
                }
                return;
            }
        };
        let backend = *picked.addr();
        let guard = picked.start_at(at);
        drop(picked);
        self.count(backend);
        let req = Req {
            client,
            backend,
            start: self.now,
            guard: Some(guard),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.reqs[id] = Some(req);
                id
            }
            None => {
                self.reqs.push(Some(req));
                self.reqs.len() - 1
            }
        };
        let rt = &mut self.backends[backend];
        if rt.model.down_from.is_some_and(|t| self.now >= t) {
            let fail = rt.model.fail_after;
            self.push(self.now + fail, Ev::Finish(id, false));
        } else if rt.model.slots.is_none_or(|s| rt.busy < s) {
            rt.busy += 1;
            let service = rt.model.latency.sample(&mut self.rng);
            self.push(self.now + service, Ev::Finish(id, true));
        } else {
            rt.queue.push_back(id);
        }
    }

    fn count(&mut self, backend: usize) {
        let bucket = (self.now / self.record.bucket.max(1)) as usize;
        let n = self.backends.len();
        while self.record.sent.len() <= bucket {
            self.record.sent.push(vec![0; n]);
        }
        self.record.sent[bucket][backend] += 1;
        self.record.per_backend[backend] += 1;
    }

    fn finish(&mut self, id: usize, ok: bool) {
        let Some(mut req) = self.reqs[id].take() else {
            return;
        };
        self.free.push(id);
        let at = self.instant(self.now);
        if let Some(guard) = req.guard.take() {
            guard.finish(ok, at);
        }
        if ok {
            self.record.latencies.push(self.now - req.start);
            let rt = &mut self.backends[req.backend];
            rt.busy -= 1;
            if let Some(next) = rt.queue.pop_front() {
                rt.busy += 1;
                let service = rt.model.latency.sample(&mut self.rng);
                self.push(self.now + service, Ev::Finish(next, true));
            }
        } else {
            self.record.failures += 1;
        }
        if let Some(f) = self.on_finish.as_mut() {
            f(req.client, req.backend, ok, self.now);
        }
        if let Load::Closed { .. } = self.load {
            self.push(self.now, Ev::Issue(req.client));
        }
    }
}

/// The q-quantile (0..=1) of sorted nanoseconds, in milliseconds.
pub fn quantile_ms(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / MS as f64
}
