//! The picks of each strategy over a small set, printed as a table.
//!
//! Three backends: `a` (weight 5), `b` and `c` (weight 1 each); `c` is slow — each of
//! its requests stays in flight five times longer. Every strategy places 7 000 requests
//! in a small simulation (requests finish after their backend's service time), and the
//! table shows where they went and the first picks in order.
//!
//! Run with `cargo run --example demo`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tower_lb::{
    InFlight, LeastLoaded, PeakEwma, PickContext, Picker, Pool, PowerOfTwoChoices, Random,
    RoundRobin, Weight, WeightedRandom, WeightedRoundRobin,
};

const REQUESTS: usize = 7_000;
/// Simulated service time per backend, in ticks (one request arrives per tick).
const SERVICE_TICKS: [u64; 3] = [3, 3, 15];

fn run<P: Picker<&'static str>>(name: &str, picker: P) -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::new(picker);
    pool.insert("a", Weight::new(5)?)?;
    pool.insert("b", Weight::ONE)?;
    pool.insert("c", Weight::ONE)?;

    let start = Instant::now();
    let mut in_flight: VecDeque<(u64, InFlight)> = VecDeque::new();
    let mut first = String::new();
    for tick in 0..REQUESTS as u64 {
        // A simulated clock: one millisecond per tick, fed to the latency estimate.
        let now = start + Duration::from_millis(tick);
        while in_flight.front().is_some_and(|(done, _)| *done <= tick) {
            if let Some((_, guard)) = in_flight.pop_front() {
                guard.finish(true, now);
            }
        }
        let picked = pool.pick(&PickContext::new().with_now(now))?;
        if first.len() < 14 {
            first.push_str(picked.addr());
        }
        let done = tick + SERVICE_TICKS[picked.index()];
        let guard = picked.start();
        let at = in_flight.partition_point(|(d, _)| *d <= done);
        in_flight.insert(at, (done, guard));
    }
    let stats = pool.stats();
    let share = |i: usize| 100.0 * stats[i].picks as f64 / REQUESTS as f64;
    println!(
        "{name:<20} {:>6.1}% {:>6.1}% {:>6.1}%   {first}",
        share(0),
        share(1),
        share(2)
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("backends: a (weight 5), b (weight 1), c (weight 1, five times slower)\n");
    println!(
        "{:<20} {:>7} {:>7} {:>7}   first picks",
        "strategy", "a", "b", "c"
    );
    run("round robin", RoundRobin::new())?;
    run("smooth weighted RR", WeightedRoundRobin::new())?;
    run("random", Random::with_seed(1))?;
    run("weighted random", WeightedRandom::with_seed(1))?;
    run("least loaded", LeastLoaded::with_seed(1))?;
    run("power of two", PowerOfTwoChoices::with_seed(1))?;
    run("peak EWMA", PeakEwma::with_seed(1))?;
    println!("\nWeighted strategies follow 5:1:1; load-aware ones also steer away from slow c.");
    Ok(())
}
