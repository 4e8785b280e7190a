//! Discovery: a key prefix in etcd as a stream of [`Change`]s.
//!
//! The algorithm is the one Kubernetes' informers use (list, then watch from the
//! list's revision): a range read of the prefix gives the current members and the
//! store revision R at which they were read; a watch started at R + 1 then delivers
//! every later put and delete, so a change made between the two calls is not missed —
//! etcd keeps the history and replays it. When the watch is cancelled because R + 1 was
//! compacted away, or the connection is lost, the task lists again and emits only the
//! difference between what it had emitted and the new list (no spurious removals, no
//! re-insertion of members that stayed).
//!
//! While etcd is unreachable the task keeps retrying with exponential back-off, emits
//! nothing (so the pool keeps the last known set: a registry outage never empties a
//! balancer), logs a `tracing` warning and publishes [`Status::Unreachable`] through
//! [`StatusHandle`]. Malformed values are skipped with a warning.
//!
//! Guarantees checked by `tests/discovery.rs` against a real etcd: initial list and
//! watch; a change in the list → watch gap is seen; compaction leads to a re-list and
//! a diff; an etcd outage keeps the set and reports it, a restart resyncs.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use futures_core::Stream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
pub use tower::discover::Change;

use crate::member::Member;

/// What the discovery task knows about the registry, for the application to read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Not yet listed once.
    Connecting,
    /// Listed and watching; the set is current as of `revision`.
    Synced {
        /// The last etcd revision seen.
        revision: i64,
        /// Members known.
        members: usize,
    },
    /// etcd cannot be reached: the last known set is kept.
    Unreachable {
        /// When the outage was first noticed.
        since: Instant,
        /// The last error.
        error: String,
        /// Members kept from before the outage.
        members: usize,
    },
}

/// A cheap, cloneable reader of a discovery task's [`Status`].
#[derive(Debug, Clone)]
pub struct StatusHandle(watch::Receiver<Status>);

impl StatusHandle {
    /// The current status.
    pub fn get(&self) -> Status {
        self.0.borrow().clone()
    }

    /// Waits until the status satisfies `f` (returns at once if it already does), or
    /// the discovery task has stopped (then `None`).
    pub async fn wait_for(&mut self, f: impl FnMut(&Status) -> bool) -> Option<Status> {
        self.0.wait_for(f).await.ok().map(|s| s.clone())
    }
}

type Hook = Arc<dyn Fn(i64) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Settings of a discovery task; [`Discovery::spawn`] starts it.
#[derive(Clone)]
pub struct Discovery {
    endpoints: Vec<String>,
    prefix: String,
    timeout: Duration,
    backoff: (Duration, Duration),
    on_listed: Option<Hook>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Watches every key under `prefix` (used as given: end it with `/`).
    pub fn prefix(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        prefix: impl Into<String>,
    ) -> Self {
        Discovery {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: prefix.into(),
            timeout: Duration::from_secs(2),
            backoff: (Duration::from_millis(100), Duration::from_secs(2)),
            on_listed: None,
        }
    }

    /// Watches the backends of service `name`: keys `/services/<name>/<id>`.
    pub fn service(endpoints: impl IntoIterator<Item = impl Into<String>>, name: &str) -> Self {
        Discovery::prefix(endpoints, crate::service_prefix(name))
    }

    /// Time allowed to connect and to list (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Retry back-off while etcd is unreachable: from `min`, doubling, up to `max`
    /// (default 100 ms to 2 s).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max.max(min));
        self
    }

    /// Runs `hook(revision)` after every list, before the watch starts: a seam for tests
    /// that change the registry inside the list → watch gap.
    #[doc(hidden)]
    pub fn on_listed<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(i64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_listed = Some(Arc::new(move |rev| Box::pin(hook(rev))));
        self
    }

    /// Starts the list/watch task on the current tokio runtime. Panics outside one, as
    /// `tokio::spawn` does.
    pub fn spawn(self) -> EtcdDiscover {
        let (tx, rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(Status::Connecting);
        let task = tokio::spawn(run(self, tx, status_tx));
        EtcdDiscover {
            rx,
            status: StatusHandle(status_rx),
            task,
        }
    }
}

/// A `tower::discover::Discover` stream of the members under a prefix: feed it to
/// `Balance::discover`, or to [`sync_pool`](crate::sync_pool). Dropping it stops the task.
#[derive(Debug)]
pub struct EtcdDiscover {
    pub(crate) rx: mpsc::UnboundedReceiver<Change<String, Member>>,
    status: StatusHandle,
    task: JoinHandle<()>,
}

impl EtcdDiscover {
    /// A reader of the task's status.
    pub fn status(&self) -> StatusHandle {
        self.status.clone()
    }
}

impl Drop for EtcdDiscover {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for EtcdDiscover {
    type Item = Result<Change<String, Member>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

type Tx = mpsc::UnboundedSender<Change<String, Member>>;

/// Why one list/watch round ended.
enum End {
    /// The watch start was compacted away: list again at once.
    Compacted(i64),
    /// The receiver is gone: stop.
    Closed,
}

async fn run(cfg: Discovery, tx: Tx, status: watch::Sender<Status>) {
    let mut known: BTreeMap<String, Member> = BTreeMap::new();
    let mut backoff = cfg.backoff.0;
    loop {
        match round(&cfg, &mut known, &tx, &status).await {
            Ok(End::Closed) => return,
            Ok(End::Compacted(at)) => {
                tracing::info!(prefix = %cfg.prefix, compacted = at, "etcd watch start compacted; listing again");
                backoff = cfg.backoff.0;
                continue;
            }
            Err((error, listed)) => {
                if listed {
                    backoff = cfg.backoff.0;
                }
                tracing::warn!(
                    prefix = %cfg.prefix, %error, kept = known.len(),
                    "etcd unreachable; keeping the last known members"
                );
                let since = match &*status.borrow() {
                    Status::Unreachable { since, .. } => *since,
                    _ => Instant::now(),
                };
                status.send_replace(Status::Unreachable {
                    since,
                    error,
                    members: known.len(),
                });
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(cfg.backoff.1);
    }
}

/// One list + watch. `Err((message, listed))`: `listed` when the list had succeeded.
async fn round(
    cfg: &Discovery,
    known: &mut BTreeMap<String, Member>,
    tx: &Tx,
    status: &watch::Sender<Status>,
) -> Result<End, (String, bool)> {
    let err = |listed: bool| move |e: etcd_client::Error| (e.to_string(), listed);
    // HTTP/2 pings find a silently dead connection (a partition, not a closed socket):
    // every 10 s, since etcd refuses pings more often than every 5 s by default.
    let options = ConnectOptions::new()
        .with_connect_timeout(cfg.timeout)
        .with_keep_alive(Duration::from_secs(10), cfg.timeout);
    let connect = Client::connect(&cfg.endpoints, Some(options));
    let mut client = tokio::time::timeout(cfg.timeout, connect)
        .await
        .map_err(|_| ("connect timed out".to_string(), false))?
        .map_err(err(false))?;
    let list = client.get(cfg.prefix.as_bytes(), Some(GetOptions::new().with_prefix()));
    let listed = tokio::time::timeout(cfg.timeout, list)
        .await
        .map_err(|_| ("list timed out".to_string(), false))?
        .map_err(err(false))?;
    let revision = listed.header().map_or(0, |h| h.revision());
    let mut fresh = BTreeMap::new();
    for kv in listed.kvs() {
        if let Some((key, member)) = parse(kv.key(), kv.value()) {
            fresh.insert(key, member);
        }
    }
    if !apply_diff(known, fresh, tx) {
        return Ok(End::Closed);
    }
    status.send_replace(Status::Synced {
        revision,
        members: known.len(),
    });
    if let Some(hook) = &cfg.on_listed {
        hook(revision).await;
    }

    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut stream = client
        .watch(cfg.prefix.as_bytes(), Some(options))
        .await
        .map_err(err(true))?;
    loop {
        let Some(resp) = stream.message().await.map_err(err(true))? else {
            return Err(("watch stream ended".into(), true));
        };
        if resp.compact_revision() > 0 {
            return Ok(End::Compacted(resp.compact_revision()));
        }
        if resp.canceled() {
            return Err((format!("watch cancelled: {}", resp.cancel_reason()), true));
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let sent = match event.event_type() {
                EventType::Put => match parse(kv.key(), kv.value()) {
                    Some((key, member)) if known.get(&key) != Some(&member) => {
                        known.insert(key.clone(), member.clone());
                        tx.send(Change::Insert(key, member)).is_ok()
                    }
                    _ => true,
                },
                EventType::Delete => match std::str::from_utf8(kv.key()) {
                    Ok(key) if known.remove(key).is_some() => {
                        tx.send(Change::Remove(key.to_owned())).is_ok()
                    }
                    _ => true,
                },
            };
            if !sent {
                return Ok(End::Closed);
            }
        }
        if let Some(h) = resp.header() {
            status.send_replace(Status::Synced {
                revision: h.revision(),
                members: known.len(),
            });
        }
    }
}

/// Parses one key/value; a malformed one is logged and skipped.
fn parse(key: &[u8], value: &[u8]) -> Option<(String, Member)> {
    let Ok(key) = std::str::from_utf8(key) else {
        tracing::warn!(key = ?key, "registry key is not UTF-8; skipped");
        return None;
    };
    match Member::from_json(value) {
        Ok(member) => Some((key.to_owned(), member)),
        Err(error) => {
            tracing::warn!(key, %error, "malformed registry value; skipped");
            None
        }
    }
}

/// Makes `known` equal `fresh`, sending one change per difference. False when the
/// receiver is gone.
fn apply_diff(
    known: &mut BTreeMap<String, Member>,
    fresh: BTreeMap<String, Member>,
    tx: &Tx,
) -> bool {
    let gone: Vec<String> = known
        .keys()
        .filter(|k| !fresh.contains_key(*k))
        .cloned()
        .collect();
    for key in gone {
        known.remove(&key);
        if tx.send(Change::Remove(key)).is_err() {
            return false;
        }
    }
    for (key, member) in fresh {
        if known.get(&key) != Some(&member) {
            known.insert(key.clone(), member.clone());
            if tx.send(Change::Insert(key, member)).is_err() {
                return false;
            }
        }
    }
    true
}
