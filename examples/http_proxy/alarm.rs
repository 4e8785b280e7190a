//! The lazy alarm both sides' time-outs use: the client connections' (`serve.rs`) and
//! each backend attempt's (`h1.rs`).
//!
//! A deadline that moves at every request (the next request's head is due `n` seconds
//! after the last one ended; a response head within `--timeout` of its request) would
//! register a timer and cancel it, twice per request. Instead the timer is set no later
//! than the deadline and moved only when a deadline comes earlier; when it rings and
//! finds the deadline moved on, it is set again. On a busy connection the timer wheel
//! is touched about once per time-out period. NGINX's lazy timers
//! (`NGX_TIMER_LAZY_DELAY`) save the same work.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::time::{Instant, Sleep};

/// Ready once `deadline` has passed. `alarm` is when `sleep` is set to ring (`None`:
/// not set, or rung); whoever moves the deadline reads it to know whether the timer
/// would ring too late.
pub fn poll_due(
    mut sleep: Pin<&mut Sleep>,
    alarm: &mut Option<Instant>,
    deadline: Instant,
    cx: &mut Context<'_>,
) -> Poll<()> {
    loop {
        if alarm.is_none_or(|at| at > deadline) {
            sleep.as_mut().reset(deadline);
            *alarm = Some(deadline);
        }
        ready!(sleep.as_mut().poll(cx));
        // It rang: the deadline has passed, or it moved on meanwhile (then the loop
        // sets the alarm for it).
        *alarm = None;
        if deadline <= Instant::now() {
            return Poll::Ready(());
        }
    }
}
