//! `subsetting`: C client instances, S backends, subsets of k.
//!
//! Each client builds its own real `Pool` holding its subset (`subset::sync`), then
//! sends the same number of requests through it with a round robin (deterministic and
//! random subsets) or a smooth weighted round robin over the coverage weights (aperture),
//! so every client spreads equal load over its subset. Connections per backend are the
//! pools that hold it; load is the requests it receives.

use std::num::{NonZeroU64, NonZeroUsize};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use tower_lb::subset::{self, Aperture, Chosen, Deterministic, Subsetting};
use tower_lb::{PickContext, Pool, RoundRobin, WeightedRoundRobin};

/// Random subsets: k distinct backends drawn uniformly, per client.
struct RandomSubset {
    size: usize,
    seed: u64,
}

impl Subsetting for RandomSubset {
    fn select<K: tower_lb::BackendKey>(&self, backends: &[K]) -> Vec<Chosen> {
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let all: Vec<usize> = (0..backends.len()).collect();
        all.choose_multiple(&mut rng, self.size)
            .map(|&index| Chosen {
                index,
                coverage: 1.0,
            })
            .collect()
    }
}

pub struct Outcome {
    pub connections: Vec<f64>,
    pub load: Vec<f64>,
}

fn ratio(v: &[f64]) -> f64 {
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    v.iter().cloned().fold(0.0, f64::max) / mean
}

impl Outcome {
    pub fn line(&self, algorithm: &str) -> String {
        format!(
            "subsetting {algorithm}: connections max/mean {:.2}, load max/mean {:.2}",
            ratio(&self.connections),
            ratio(&self.load)
        )
    }
}

pub fn run(
    clients: u64,
    backends: usize,
    size: usize,
    algorithm: &str,
    requests: u64,
    seed: u64,
) -> Result<Outcome, String> {
    let k = NonZeroUsize::new(size).ok_or("--subset must be at least 1")?;
    let c = NonZeroU64::new(clients).ok_or("--clients must be at least 1")?;
    if backends == 0 {
        return Err("--backends must be at least 1".into());
    }
    let all: Vec<String> = (0..backends).map(|i| format!("backend-{i}")).collect();
    let index_of = |addr: &str| addr.trim_start_matches("backend-").parse::<usize>().ok();
    let mut connections = vec![0.0; backends];
    let mut load = vec![0.0; backends];
    let mut count = |pool_stats: Vec<tower_lb::BackendStats<String>>| {
        for s in pool_stats {
            if let Some(i) = index_of(&s.addr) {
                connections[i] += 1.0;
                load[i] += s.picks as f64;
            }
        }
    };
    for i in 0..clients {
        match algorithm {
            "aperture" => {
                let rule = Aperture::new(i, c, k).map_err(|e| e.to_string())?;
                let pool = Pool::new(WeightedRoundRobin::new());
                subset::sync(&pool, &all, &rule).map_err(|e| e.to_string())?;
                drive(&pool, requests);
                count(pool.stats());
            }
            "deterministic" | "random" => {
                let pool = Pool::new(RoundRobin::new());
                let result = if algorithm == "random" {
                    subset::sync(
                        &pool,
                        &all,
                        &RandomSubset {
                            size,
                            seed: seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                        },
                    )
                } else {
                    subset::sync(&pool, &all, &Deterministic::new(i, k))
                };
                result.map_err(|e| e.to_string())?;
                drive(&pool, requests);
                count(pool.stats());
            }
            other => {
                return Err(format!(
                    "unknown algorithm {other:?}: deterministic, aperture or random"
                ));
            }
        }
    }
    Ok(Outcome { connections, load })
}

fn drive<P: tower_lb::Picker<String>>(pool: &Pool<String, P>, requests: u64) {
    for _ in 0..requests {
        if let Ok(picked) = pool.pick(&PickContext::new()) {
            picked.start().success();
        }
    }
}
