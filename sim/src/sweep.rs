//! Seed sweeps: many runs of one scenario, one worker thread per core (each run is
//! single-threaded and independent), results reported in seed order.

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::runner::{self, Outcome};
use crate::scenario::Scenario;

/// The verdict of one seed: violations (empty = passed) or the error that stopped the run.
#[derive(Debug)]
pub struct SeedResult {
    pub seed: u64,
    pub failures: Vec<String>,
    pub max_outage_ms: u64,
}

/// Runs every seed of `seeds` on `jobs` threads.
pub fn sweep(scenario: &Scenario, seeds: Range<u64>, jobs: usize) -> Vec<SeedResult> {
    let next = AtomicU64::new(seeds.start);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds.end {
                        break;
                    }
                    let r = judge(seed, runner::run(scenario, seed));
                    results.lock().expect("no worker panics while holding the lock").push(r);
                }
            });
        }
    });
    let mut v = results.into_inner().expect("workers done");
    v.sort_by_key(|r| r.seed);
    v
}

fn judge(seed: u64, r: anyhow::Result<Outcome>) -> SeedResult {
    match r {
        Ok(o) => SeedResult {
            seed,
            max_outage_ms: o.outage_ms.values().copied().max().unwrap_or(0),
            failures: o.violations,
        },
        Err(e) => SeedResult { seed, failures: vec![format!("run failed: {e:#}")], max_outage_ms: 0 },
    }
}

/// Parses `A..B` (end exclusive).
pub fn parse_range(s: &str) -> anyhow::Result<Range<u64>> {
    let (a, b) = s.split_once("..").ok_or_else(|| anyhow::anyhow!("--seeds: expected A..B, got {s:?}"))?;
    let (a, b): (u64, u64) = (a.parse()?, b.parse()?);
    anyhow::ensure!(a < b, "--seeds: empty range {s:?}");
    Ok(a..b)
}
