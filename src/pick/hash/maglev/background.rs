//! The canonical table, built on a background thread once changes pause and written into
//! the live table in place.

use super::*;

/// Writes the canonical table of its members into `core` (a patched table), unless a
/// newer table was prepared from it first or nothing else holds it any more (a dropped
/// pool's table is not built).
pub(super) fn canonicalize(core: &Arc<Core>, size: u32) {
    let members = &*core.members;
    // Relaxed: a stale read only delays the stop; the decision to write is taken
    // under the lock, which orders it after a newer patch's bump (see `prepare`).
    let cancelled = || {
        core.lineage.generation.load(Ordering::Relaxed) != core.generation
            || Arc::strong_count(core) == 1
    };
    // Waits for the changes to pause: in a burst, each change stops the build of the
    // one before, and a build that has not started costs nothing. A newer table does
    // not wake this wait: it bumps the generation, seen when the wait ends.
    let state = core.lock();
    let (state, _) = core
        .settled
        .wait_timeout_while(state, QUIET, |_| !cancelled())
        .unwrap_or_else(PoisonError::into_inner);
    drop(state);
    let built = if cancelled() {
        None
    } else {
        build(members, size, &cancelled)
    };
    // Each number's slots, for the next patch: listed before taking the lock.
    let owned = built.as_ref().map(|built| {
        let mut owned = vec![Vec::new(); core.numbering.index_of.len()];
        for (&j, slot) in built.entries.iter().zip(0u32..) {
            let number = core.numbering.number_of.get(j as usize);
            if let Some(list) = number.and_then(|&n| owned.get_mut(n as usize)) {
                list.push(slot);
            }
        }
        owned
    });
    let mut state = core.lock();
    match built {
        Some(built) if !cancelled() && built.entries.len() == core.slots.len() => {
            // The members' numbers, written in place (chunks shared with the tables
            // before this one take them too: a pick on a superseded snapshot maps each
            // through its own numbering to one of its members, as any mix of tables
            // does).
            for (slot, &j) in built.entries.iter().enumerate() {
                let number = core.numbering.number_of.get(j as usize).copied();
                if let Some(number) = number
                    && core.slots.get(slot) != Some(number)
                {
                    core.slots.store(slot, number);
                }
            }
            if !state.owned.is_empty() {
                state.owned = owned.unwrap_or_default();
            }
            state.counts = built.counts;
            state.status = Status::Canonical;
        }
        _ => state.status = Status::Superseded,
    }
    drop(state);
    core.settled.notify_all();
}

/// How long changes must pause before the background build of the canonical table
/// starts: a tenth of the build's time at 5 000 011 slots.
pub(super) const QUIET: Duration = Duration::from_millis(100);

/// What the tables prepared one from another share: the generation, which each new
/// table bumps (stopping the background build of the one before), and one background
/// thread that builds the canonical tables of the patched ones, in turn — started with
/// the first patch and ended after [`IDLE`] without one, so a burst of changes does not
/// start a thread per change.
#[derive(Default)]
pub(super) struct Lineage {
    pub(super) generation: AtomicU64,
    job: Mutex<Job>,
    wake: Condvar,
}

#[derive(Default)]
struct Job {
    /// The newest patched table and its size, held weakly: a dropped table is not built.
    pending: Option<(Weak<Core>, u32)>,
    /// Whether a thread serves the lineage.
    worker: bool,
    /// Whether it waits for a table to build.
    idle: bool,
}

/// How long the background thread waits for a next patched table before it ends.
pub(super) const IDLE: Duration = Duration::from_secs(2);

impl Lineage {
    /// The next generation, for a new table.
    pub(super) fn bump(&self) -> u64 {
        self.generation
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
    }

    fn job(&self) -> MutexGuard<'_, Job> {
        self.job.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Has the background thread build `core`'s canonical table (and write it in
    /// place), starting the thread if none serves the lineage (in place if none can
    /// be started).
    pub(super) fn canonicalize(self: &Arc<Self>, core: &Arc<Core>, size: u32) {
        let mut job = self.job();
        let replaced = job.pending.replace((Arc::downgrade(core), size));
        if let Some(older) = replaced.and_then(|(older, _)| older.upgrade()) {
            // Never to be built: a newer table replaced it before its turn.
            older.lock().status = Status::Superseded;
            older.settled.notify_all();
        }
        if job.worker {
            // The thread is building or waiting for a previous table to settle (it
            // takes this one next), or idle waiting for work: only then wake it.
            let idle = job.idle;
            drop(job);
            if idle {
                self.wake.notify_all();
            }
            return;
        }
        job.worker = true;
        drop(job);
        let lineage = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("tower-lb-maglev".into())
            .spawn(move || lineage.serve());
        if spawned.is_err() {
            let pending = {
                let mut job = self.job();
                job.worker = false;
                job.pending.take()
            };
            if let Some(core) = pending.and_then(|(core, _)| core.upgrade()) {
                canonicalize(&core, size);
            }
        }
    }

    /// The background thread: builds each pending table in turn; ends after [`IDLE`]
    /// with none.
    fn serve(&self) {
        loop {
            let mut job = self.job();
            job.idle = true;
            let (mut job, _) = self
                .wake
                .wait_timeout_while(job, IDLE, |j| j.pending.is_none())
                .unwrap_or_else(PoisonError::into_inner);
            job.idle = false;
            let Some((core, size)) = job.pending.take() else {
                job.worker = false;
                return;
            };
            drop(job);
            if let Some(core) = core.upgrade() {
                canonicalize(&core, size);
            }
        }
    }
}
