//! `clustersim run SCENARIO [--seed N | --seeds A..B] [--jobs N] [--quiet]`
//!
//! One seed prints the trace and the outcome figures; a sweep prints each failing seed with
//! the command that replays it. Exit status 1 when an invariant or expectation fails.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clustersim::scenario::Scenario;
use clustersim::{runner, sweep};

const USAGE: &str =
    "usage: clustersim run SCENARIO [--seed N | --seeds A..B] [--jobs N] [--quiet] [--chart FILE.svg]
       clustersim list
       clustersim bench [SCENARIO...] [--seeds N] [--jobs N]
SCENARIO is a path or a name in sim/scenarios/ (e.g. primary-crash).";

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("clustersim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn resolve(arg: &str) -> PathBuf {
    let p = PathBuf::from(arg);
    if p.exists() { p } else { scenarios_dir().join(format!("{arg}.json5")) }
}

fn real_main() -> anyhow::Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("list") => {
            let mut names: Vec<String> = std::fs::read_dir(scenarios_dir())?
                .filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(String::from))
                .collect();
            names.sort();
            println!("{}", names.join("\n"));
            Ok(true)
        }
        Some("run") => run(&args[1..]),
        Some("bench") => bench(&args[1..]),
        _ => bail!("{USAGE}"),
    }
}

/// The scenarios `bench` sweeps by default: the reference and the heaviest one
/// (the most simulated time: 70 s a seed).
const BENCH_SCENARIOS: [&str; 2] = ["primary-crash", "lossy-heartbeats"];

/// `clustersim bench`: seeds per second of a sweep of each scenario (a benchmark of the
/// simulator's speed, see docs/SIMULATOR-SPEED.md; the wall clock is read around sweeps
/// only, never inside a run).
fn bench(args: &[String]) -> anyhow::Result<bool> {
    let (mut names, mut seeds, mut jobs) = (Vec::new(), 200u64, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seeds" => seeds = it.next().context("--seeds N")?.parse()?,
            "--jobs" => jobs = Some(it.next().context("--jobs N")?.parse::<usize>()?),
            other if other.starts_with("--") => bail!("unknown argument {other:?}\n{USAGE}"),
            name => names.push(name.to_string()),
        }
    }
    if names.is_empty() {
        names = BENCH_SCENARIOS.iter().map(|s| s.to_string()).collect();
    }
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut ok = true;
    for name in &names {
        let scenario = Scenario::from_file(&resolve(name))?;
        #[allow(clippy::disallowed_methods)] // the sweep's own wall time, printed; never inside a run
        let started = std::time::Instant::now();
        let results = sweep::sweep(&scenario, 0..seeds, jobs);
        let secs = started.elapsed().as_secs_f64();
        let failed = results.iter().filter(|r| !r.failures.is_empty()).count();
        ok &= failed == 0;
        let sim_s = scenario.duration_ms() as f64 / 1000.0;
        println!(
            "bench {}: {seeds} seeds of {sim_s:.0} simulated s in {secs:.1} s: {:.1} seeds/s ({:.0} simulated s/s, {jobs} jobs, {failed} failed)",
            scenario.name,
            seeds as f64 / secs,
            seeds as f64 * sim_s / secs,
        );
    }
    Ok(ok)
}

fn run(args: &[String]) -> anyhow::Result<bool> {
    let mut it = args.iter();
    let arg = it.next().context(USAGE)?;
    let (mut seed, mut seeds, mut jobs, mut quiet, mut chart) = (None, None, None, false, None);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seed" => seed = Some(it.next().context("--seed N")?.parse::<u64>()?),
            "--seeds" => seeds = Some(sweep::parse_range(it.next().context("--seeds A..B")?)?),
            "--jobs" => jobs = Some(it.next().context("--jobs N")?.parse::<usize>()?),
            "--quiet" => quiet = true,
            "--chart" => chart = Some(PathBuf::from(it.next().context("--chart FILE.svg")?)),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let path = resolve(arg);
    let scenario = Scenario::from_file(&path)?;
    let replay = |s: u64| format!("cargo run --release -p clustersim -- run {} --seed {s}", path.display());
    if let Some(range) = seeds {
        let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let n = range.end - range.start;
        #[allow(clippy::disallowed_methods)] // the sweep's own wall time, printed; never inside a run
        let started = std::time::Instant::now();
        let results = sweep::sweep(&scenario, range.clone(), jobs);
        let secs = started.elapsed().as_secs_f64();
        let failed: Vec<_> = results.iter().filter(|r| !r.failures.is_empty()).collect();
        for r in &failed {
            println!("FAIL seed {}: {}\n  replay: {}", r.seed, r.failures.join("; "), replay(r.seed));
        }
        // The first seed of the worst outage, to replay it.
        let worst = results.iter().rev().max_by_key(|r| r.max_outage_ms);
        let (worst, worst_seed) = worst.map_or((0, range.start), |r| (r.max_outage_ms, r.seed));
        println!(
            "{}: {n} seeds, {} passed, {} failed, worst outage {worst} ms (seed {worst_seed}), {secs:.1} s ({:.1} seeds/s, {jobs} jobs)",
            scenario.name,
            n as usize - failed.len(),
            failed.len(),
            n as f64 / secs
        );
        return Ok(failed.is_empty());
    }
    let seed = seed.unwrap_or(1);
    let o = runner::run(&scenario, seed)?;
    if !quiet {
        println!("# {} seed {seed}", scenario.name);
        for line in &o.trace {
            println!("{line}");
        }
    }
    print!("{}", o.summary());
    if let Some(path) = chart {
        std::fs::write(&path, clustersim::chart::svg(&o))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("chart: {}", path.display());
    }
    if !o.passed() {
        println!("replay: {}", replay(seed));
    }
    Ok(o.passed())
}
