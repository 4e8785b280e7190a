//! Per-backend concurrency limits: reservations, waiting, shedding.
//!
//! Each eligible backend takes at most `max_in_flight` requests from this balancer at
//! once, so the set takes at most `capacity = eligible × max_in_flight`. `poll_ready`
//! reserves one unit of that capacity with a compare-and-swap on one counter of
//! reservations plus requests in flight; `call` turns the reservation into a request on
//! a backend below its limit (one exists: fewer than `capacity` units are committed).
//! When none is left, the balancer either waits — `poll_ready` is `Pending` and the task
//! is woken when a request finishes — or sheds: the request fails at once with
//! [`Overloaded`](crate::Overloaded).
//!
//! Wake-ups never get lost: a waiter registers its waker and checks again before
//! returning `Pending`; every release wakes one waiter, and a woken waiter that finds
//! capacity left, or a waiting service that is dropped, passes the wake-up on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

/// What a balancer does when every eligible backend is at its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnOverload {
    /// `poll_ready` returns `Pending` until a request finishes (backpressure).
    #[default]
    Wait,
    /// `poll_ready` returns ready and the call fails at once with
    /// [`Overloaded`](crate::Overloaded) (load shedding).
    Shed,
}

#[derive(Debug)]
pub(crate) struct Limit {
    pub(crate) max_in_flight: usize,
    pub(crate) on_overload: OnOverload,
    /// Reservations plus requests in flight through this balancer.
    committed: AtomicUsize,
    waiters: Mutex<VecDeque<Waker>>,
}

impl Limit {
    pub(crate) fn new(max_in_flight: usize, on_overload: OnOverload) -> Self {
        Limit {
            max_in_flight,
            on_overload,
            committed: AtomicUsize::new(0),
            waiters: Mutex::new(VecDeque::new()),
        }
    }

    pub(crate) fn committed(&self) -> usize {
        self.committed.load(Ordering::Relaxed)
    }

    /// Takes one unit if fewer than `capacity` are committed.
    pub(crate) fn try_reserve(&self, capacity: usize) -> bool {
        // AcqRel on success pairs with the Release in `release`, so a waiter that sees
        // a freed unit also sees the state its releaser published before freeing it.
        self.committed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < capacity).then_some(c + 1)
            })
            .is_ok()
    }

    /// Reserves one unit, or registers `cx`'s waker and returns `Pending`.
    pub(crate) fn poll_reserve(&self, cx: &mut Context<'_>, capacity: usize) -> Poll<()> {
        if self.try_reserve(capacity) {
            self.pass_on(capacity);
            return Poll::Ready(());
        }
        {
            let mut waiters = self.waiters.lock();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push_back(cx.waker().clone());
            }
        }
        // Checked again after registering: a release in between is not missed.
        if self.try_reserve(capacity) {
            self.pass_on(capacity);
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Gives back one unit and wakes one waiter.
    pub(crate) fn release(&self) {
        self.committed.fetch_sub(1, Ordering::Release);
        self.wake_one();
    }

    /// Wakes the next waiter when capacity is left, so one release that woke a task
    /// which no longer waits does not strand the others.
    pub(crate) fn pass_on(&self, capacity: usize) {
        if self.committed() < capacity {
            self.wake_one();
        }
    }

    pub(crate) fn wake_one(&self) {
        let waker = self.waiters.lock().pop_front();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiters.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::task::Wake;

    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiter_is_woken_when_a_unit_is_released() {
        let limit = Limit::new(1, OnOverload::Wait);
        assert!(limit.try_reserve(1));
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(limit.poll_reserve(&mut cx, 1).is_pending());
        assert_eq!(limit.waiting(), 1);
        limit.release();
        assert!(flag.0.load(Ordering::SeqCst));
        assert!(limit.poll_reserve(&mut cx, 1).is_ready());
        assert_eq!(limit.committed(), 1);
    }
}
