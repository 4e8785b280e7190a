//! The canonical table, built on a background thread once changes pause and written into
//! the live table in place.

use super::*;

/// Writes the canonical table of `members` into `core` (a patched table), unless a
/// newer table was prepared from it first.
pub(super) fn canonicalize(core: &Core, members: &Set, size: u32) {
    // Relaxed: a stale read only delays the stop; the decision to write is taken
    // under the lock, which orders it after a newer patch's bump (see `prepare`).
    let cancelled = || core.lineage.load(Ordering::Relaxed) != core.generation;
    // Waits for the changes to pause: in a burst, each change stops the build of the
    // one before, and a build that has not started costs nothing. A newer table wakes
    // this wait (it bumps the lineage, then takes the lock and notifies).
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
                state.owned = owned_lists(&core.slots, &core.numbering, built.counts.len());
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

/// Runs [`canonicalize`] on a thread of its own (in place if none can be started).
pub(super) fn spawn_canonical(core: Arc<Core>, members: Set, size: u32) {
    let job = Arc::new(Mutex::new(Some((core, members))));
    let run = move |job: &Mutex<Option<(Arc<Core>, Set)>>| {
        let taken = job.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some((core, members)) = taken {
            canonicalize(&core, &members, size);
        }
    };
    let theirs = Arc::clone(&job);
    let spawned = thread::Builder::new()
        .name("tower-lb-maglev".into())
        .spawn(move || run(&theirs));
    if spawned.is_err() {
        run(&job);
    }
}
