//! A simulator in virtual time: many client instances, each with its own real `Pool`
//! and picker (this library's code), against modelled backends (latency distribution,
//! capacity, failure), with SVG charts.
//!
//! ```text
//! cargo run --release --example simulate -- latency [--requests N] [--in-flight N] [--seed S] [--svg FILE]
//! cargo run --release --example simulate -- subsetting --clients C --backends S --subset K --algorithm deterministic|aperture|random [--svg FILE]
//! cargo run --release --example simulate -- failure [--seed S] [--svg FILE]
//! cargo run --release --example simulate -- server-load [--seed S] [--svg FILE]
//! ```
//!
//! Virtual time: a run of 100 000 requests takes a fraction of a second and gives the
//! same numbers for the same seed. The charts in `docs/` come from these commands (see
//! the README's "Choosing a strategy").

mod chart;
mod engine;
mod failure;
mod latency;
mod server_load;
mod subsetting;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Simulate tower-lb's strategies in virtual time")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// tower's `tower-balance` workload, every strategy; `--svg`: latency CDFs.
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
        svg: Option<PathBuf>,
    },
    /// C clients, S backends, subsets of k; `--svg`: connections per backend.
    Subsetting {
        #[arg(long, default_value_t = 300)]
        clients: u64,
        #[arg(long, default_value_t = 300)]
        backends: usize,
        #[arg(long, default_value_t = 10)]
        subset: usize,
        #[arg(long, default_value = "deterministic")]
        algorithm: String,
        /// Requests each client sends.
        #[arg(long, default_value_t = 1000)]
        requests: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Three backends, two die at 5 s; `--svg`: load per backend over time.
    Failure {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Server-reported load (ORCA, gRFC A58 weights) against unequal capacities.
    ServerLoad {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        svg: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().scenario) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simulate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(scenario: Scenario) -> Result<(), Box<dyn std::error::Error>> {
    match scenario {
        Scenario::Latency {
            requests,
            in_flight,
            seed,
            strategy,
            svg,
        } => {
            let mut runs = Vec::new();
            for (name, picker) in latency::strategies(seed) {
                if strategy.as_deref().is_some_and(|s| s != name) {
                    continue;
                }
                let mut record = latency::run(picker, requests, in_flight, seed);
                println!("{}", latency::summary(name, &mut record));
                runs.push((name, record));
            }
            if let Some(path) = svg {
                let lines: Vec<(&str, &[u64])> = runs
                    .iter()
                    .map(|(n, r)| (*n, r.latencies.as_slice()))
                    .collect();
                chart::latency_cdf(
                    &path,
                    "tower-balance workload: latency CDF per strategy",
                    &lines,
                )?;
            }
        }
        Scenario::Subsetting {
            clients,
            backends,
            subset,
            algorithm,
            requests,
            seed,
            svg,
        } => {
            let outcome = subsetting::run(clients, backends, subset, &algorithm, requests, seed)?;
            if let Some(path) = svg {
                let mean = outcome.connections.iter().sum::<f64>() / backends as f64;
                let rel: Vec<f64> = outcome.connections.iter().map(|c| c / mean).collect();
                let title = format!(
                    "{algorithm} subsetting: connections per backend ÷ mean (C = {clients}, S = {backends}, k = {subset})"
                );
                chart::bars(&path, &title, &rel, "connections ÷ mean")?;
            }
            println!("{}", outcome.line(&algorithm));
        }
        Scenario::Failure { seed, svg } => {
            let mut runs = Vec::new();
            for name in failure::STRATEGIES {
                let mut record = failure::run(name, seed)?;
                let total = record.latencies.len() as u64 + record.failures;
                println!(
                    "{name:<14} failed {:>5} of {total} ({:.2}%)",
                    record.failures,
                    100.0 * record.failures as f64 / total.max(1) as f64
                );
                println!("{}", latency::summary(name, &mut record));
                runs.push((name, record));
            }
            if let Some(path) = svg {
                let refs: Vec<(&str, &engine::Record)> =
                    runs.iter().map(|(n, r)| (*n, r)).collect();
                let names: Vec<String> = (0..3)
                    .map(|b| format!("backend {b}{}", if b > 0 { " (dies at 5 s)" } else { "" }))
                    .collect();
                chart::load_over_time(
                    &path,
                    "failure: requests/s per backend (two of three die at 5 s)",
                    &refs,
                    &names,
                )?;
            }
        }
        Scenario::ServerLoad { seed, svg } => server_load::main(seed, svg.as_deref())?,
    }
    Ok(())
}
