//! `failure`: three backends, two of which die mid-run.
//!
//! Ten clients, each with its own pool (passive outlier detection at its defaults: five
//! consecutive failures eject), send Poisson traffic at 100 requests/s each to three
//! backends (exponential latency, mean 10 ms, 50 requests at once). At 5 s backends 1
//! and 2 die: their requests fail after 1 ms. The run shows how many requests each
//! strategy loses before ejection takes the dead backends out, and where the load goes.

use tower_lb::health::OutlierDetection;
use tower_lb::{AnyPicker, Pool};

use crate::engine::{BackendModel, Latency, Load, MS, Record, SEC, Sim};

pub const STRATEGIES: [&str; 4] = ["round-robin", "p2c", "least-loaded", "peak-ewma"];

pub fn run(strategy: &str, seed: u64) -> Result<Record, String> {
    let picker = AnyPicker::with_seed(strategy, seed).map_err(|e| e.to_string())?;
    let models = (0..3)
        .map(|b| BackendModel {
            slots: Some(50),
            down_from: (b > 0).then_some(5 * SEC),
            ..BackendModel::new(Latency::Exponential { mean_ms: 10.0 })
        })
        .collect();
    let load = Load::Open {
        rate: 100.0,
        until: 15 * SEC,
    };
    let mut sim = Sim::new(models, 10, load, seed, 250 * MS, |c, clock| {
        let picker =
            AnyPicker::with_seed(picker.name(), seed.wrapping_add(c as u64)).expect("known");
        Pool::builder(picker)
            .clock(clock.reader())
            .outlier_detection(OutlierDetection::new())
            .health_seed(seed)
            .build()
            .expect("valid settings")
    });
    sim.tick_every = 100 * MS;
    Ok(sim.run())
}
