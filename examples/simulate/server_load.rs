//! `server-load`: three backends of unequal capacity, ten clients that each see only
//! their own requests.
//!
//! Backends serve one request at a time with exponential service times of mean 10, 10
//! and 40 ms: capacities 100, 100 and 25 requests/s. Ten clients each send Poisson
//! traffic at 15 requests/s (150 in all, two thirds of the capacity) for 60 s. Every
//! answer carries the backend's ORCA report (utilisation = its requests/s over the last
//! second ÷ capacity); `ServerLoad` (gRFC A58, its default 10 s blackout) weighs by it,
//! the others ignore it. An even split sends the small backend 50 requests/s, twice what
//! it can serve.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use tower_lb::orca::LoadReport;
use tower_lb::{AnyPicker, BackendId, Picker, Pool, ServerLoad};

use crate::chart;
use crate::engine::{BackendModel, Latency, Load, Record, SEC, Sim};
use crate::latency::summary;

const MEAN_MS: [f64; 3] = [10.0, 10.0, 40.0];
const CLIENTS: usize = 10;
const RATE: f64 = 15.0;
const UNTIL: u64 = 60 * SEC;

fn models() -> Vec<BackendModel> {
    MEAN_MS
        .iter()
        .map(|&mean_ms| BackendModel {
            slots: Some(1),
            ..BackendModel::new(Latency::Exponential { mean_ms })
        })
        .collect()
}

fn sim<'a, P: Picker<usize>>(seed: u64, make: impl Fn(usize) -> P) -> Sim<'a, P> {
    Sim::new(
        models(),
        CLIENTS,
        Load::Open {
            rate: RATE,
            until: UNTIL,
        },
        seed,
        SEC,
        |c, clock| {
            Pool::builder(make(c))
                .clock(clock.reader())
                .build()
                .expect("valid settings")
        },
    )
}

/// Runs `ServerLoad`, every client feeding the reports of the answers it gets.
pub fn run_server_load(seed: u64) -> Record {
    let loads: Vec<ServerLoad> = (0..CLIENTS)
        .map(|c| ServerLoad::with_seed(seed + c as u64))
        .collect();
    let mut s = sim(seed, |c| loads[c].clone());
    let ids: Vec<Vec<BackendId>> = s
        .pools
        .iter()
        .map(|p| {
            let snap = p.snapshot();
            let mut by_addr: Vec<(usize, BackendId)> = snap
                .backends()
                .iter()
                .map(|b| (*b.addr(), b.id()))
                .collect();
            by_addr.sort();
            by_addr.into_iter().map(|(_, id)| id).collect()
        })
        .collect();
    let base = s.instant(0);
    // Each backend's answers over the last second: its requests/s as it measures them.
    let mut recent: Vec<VecDeque<u64>> = vec![VecDeque::new(); MEAN_MS.len()];
    s.on_finish = Some(Box::new(move |client, backend, ok, now| {
        let window = &mut recent[backend];
        window.push_back(now);
        while window.front().is_some_and(|&t| t + SEC <= now) {
            window.pop_front();
        }
        if ok {
            let rps = window.len() as f64;
            let capacity = 1000.0 / MEAN_MS[backend];
            let report = LoadReport::new(rps / capacity, rps, 0.0);
            loads[client].record_at(
                ids[client][backend],
                &report,
                base + Duration::from_nanos(now),
            );
        }
    }));
    s.run()
}

pub fn run_named(name: &str, seed: u64) -> Result<Record, String> {
    if name == "server-load" {
        return Ok(run_server_load(seed));
    }
    AnyPicker::with_seed(name, seed).map_err(|e| e.to_string())?;
    Ok(sim(seed, |c| {
        AnyPicker::with_seed(name, seed + c as u64).expect("known")
    })
    .run())
}

pub const STRATEGIES: [&str; 5] = [
    "round-robin",
    "p2c",
    "least-loaded",
    "peak-ewma",
    "server-load",
];

pub fn main(seed: u64, svg: Option<&Path>) -> Result<(), Box<dyn std::error::Error>> {
    let mut runs = Vec::new();
    for name in STRATEGIES {
        let mut record = run_named(name, seed)?;
        // Shares after the blackout and warm-up: the last 40 s.
        let late: Vec<u64> = (0..3)
            .map(|b| record.sent.iter().skip(20).map(|bucket| bucket[b]).sum())
            .collect();
        let total: u64 = late.iter().sum();
        let shares: Vec<String> = late
            .iter()
            .map(|&c| format!("{:.3}", c as f64 / total.max(1) as f64))
            .collect();
        println!(
            "{name:<14} shares from 20 s on [{}] (capacity shares 0.444, 0.444, 0.111)",
            shares.join(", ")
        );
        println!("{}", summary(name, &mut record));
        runs.push((name, record));
    }
    if let Some(path) = svg {
        let refs: Vec<(&str, &Record)> = runs.iter().map(|(n, r)| (*n, r)).collect();
        let names: Vec<String> = MEAN_MS
            .iter()
            .enumerate()
            .map(|(b, m)| format!("backend {b} ({:.0} req/s)", 1000.0 / m))
            .collect();
        chart::load_over_time(
            path,
            "server load: requests/s per backend, capacities 100, 100, 25",
            &refs,
            &names,
        )?;
    }
    Ok(())
}
