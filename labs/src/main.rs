//! `clusterlab run SCENARIO [--out DIR] [--backend B]`
//! | `clusterlab compare SCENARIO [--seed N] [--out DIR] [--backend B]`
//! | `clusterlab compare --all [--seed N] [--out DIR] [--backend B] [--only A,B]`
//! | `clusterlab bench [...]` (the data-plane benchmark, [`clusterlab::bench`])
//! | `clusterlab active-active [--bench] [...]` ([`clusterlab::active_active`])
//!
//! Helpers run inside lab namespaces by the runner: `stream-server`, `load`, `forge`, `delay`,
//! `ndp-probe`.
#![allow(clippy::disallowed_methods)] // reason: the lab's helpers use the wall clock

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clusterlab::{active_active, bench, lab, report, rogue, runner, traffic};
use clusterserver::config::Backend;
use clustersim::scenario::Scenario;

const USAGE: &str = "usage: clusterlab run SCENARIO [--out DIR] [--backend tun|af_xdp]
       clusterlab compare SCENARIO [--seed N] [--out DIR] [--backend tun|af_xdp]
       clusterlab compare --all [--seed N] [--out DIR] [--backend tun|af_xdp] [--only NAME,NAME]
                                                          (every scenario, or those named; DIR/NAME per run)
       clusterlab bench [--reps N] [--seconds S] [--out DIR] (see scripts/bench)
       clusterlab active-active [--out DIR] [--flows N] [--bfd] [--no-join-sync]  (drain, crash, join, rolling reload adding a server, freeze over BGP/ECMP)
       clusterlab active-active --bench [--seconds S]     (throughput with 1, 2, 3 ATMs)
       clusterlab soak [--heartbeat-ms MS] [--seconds S] [--realtime-priority N] [--out DIR]
                                                          (fast heartbeats under saturating TCP and HTTP: role changes, heartbeat jitter)
       clusterlab config-sync [DIR]                       (cmc sync config with running daemons, real sshd)
SCENARIO is a path or a name in sim/scenarios/ (e.g. primary-crash). Needs root.";

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("clusterlab: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn resolve(arg: &str) -> PathBuf {
    let p = PathBuf::from(arg);
    if p.exists() {
        p
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../sim/scenarios").join(format!("{arg}.json5"))
    }
}

fn real_main() -> anyhow::Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().with_context(|| USAGE.to_string());
    match args.first().map(String::as_str) {
        Some("run") | Some("compare") => scenario_cmd(&args),
        Some("active-active") => {
            lab::install_signal_handler();
            active_active::run(&active_active::Opts::parse(&args[1..])?)
        }
        Some("config-sync") => {
            lab::install_signal_handler();
            let dir = args.get(1).map_or_else(|| PathBuf::from("target/lab/config-sync"), PathBuf::from);
            let r = clusterlab::config_sync::run(&dir)?;
            println!("# config-sync on namespaces ({})", dir.display());
            for l in &r.lines {
                println!("{l}");
            }
            Ok(true)
        }
        Some("bench") => {
            lab::install_signal_handler();
            bench::run(&bench::Opts::parse(&args[1..])?)?;
            Ok(true)
        }
        Some("soak") => {
            lab::install_signal_handler();
            clusterlab::soak::run(&clusterlab::soak::Opts::parse(&args[1..])?)
        }
        Some("stream-server") => {
            traffic::stream_server(arg(1)?.parse()?, &arg(2)?, arg(3)?.parse()?)?;
            Ok(true)
        }
        Some("load") => {
            let spec = traffic::LoadSpec {
                vip: arg(1)?.parse()?,
                stream: arg(2)?.parse()?,
                rate: arg(3)?.parse()?,
                duration_ms: arg(4)?.parse::<u64>()?.min(3_600_000),
                flows: arg(5)?.parse::<u32>()?.min(256),
                out: PathBuf::from(arg(6)?),
            };
            traffic::load(&spec)?;
            Ok(true)
        }
        Some("delay") => {
            clusterlab::delay::run(clusterlab::delay::DelaySpec {
                ms: arg(1)?.parse::<u64>()?.min(10_000),
                jitter_ms: arg(2)?.parse::<u64>()?.min(10_000),
                seed: arg(3)?.parse()?,
                max_s: arg(4)?.parse::<u64>()?.min(3_600),
            })?;
            Ok(true)
        }
        Some("lose-sync") => {
            clusterlab::lose_sync::run(arg(1)?.parse()?, arg(2)?.parse()?)?;
            Ok(true)
        }
        Some("ndp-probe") => {
            clusterlab::ndp::probe(&arg(1)?, arg(2)?.parse()?, arg(3)?.parse()?, &args[4.min(args.len())..])?;
            Ok(true)
        }
        Some("forge") => {
            let spec = rogue::ForgeSpec {
                kind: arg(1)?,
                count: arg(2)?.parse::<u32>()?.min(10_000),
                interval_ms: arg(3)?.parse()?,
                cluster_id: arg(4)?.parse()?,
                port: arg(5)?.parse()?,
                targets: args[6..].iter().map(|t| t.parse()).collect::<Result<_, _>>()?,
            };
            rogue::forge(&spec)?;
            Ok(true)
        }
        _ => bail!("{USAGE}"),
    }
}

/// `compare --all`: every scenario of `sim/scenarios`, simulator and lab in turn, then one
/// table of verdicts. Passes when every scenario the lab can run passes in both and the
/// verdicts agree; a scenario the lab cannot run is listed as skipped (never as passed).
fn compare_all(args: &[String]) -> anyhow::Result<bool> {
    let mut it = args.iter();
    let (mut seed, mut out) = (1u64, std::path::absolute("target/clusterlab")?);
    let mut only: Option<Vec<String>> = None;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seed" => seed = it.next().context("--seed N")?.parse()?,
            "--out" => out = std::path::absolute(it.next().context("--out DIR")?)?,
            "--backend" => runner::set_backend(parse_backend(it.next().context("--backend B")?)?),
            "--only" => {
                only = Some(it.next().context("--only NAME,NAME")?.split(',').map(String::from).collect())
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sim/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json5"))
        .collect();
    files.sort();
    if let Some(names) = &only {
        let stem = |p: &PathBuf| p.file_stem().map(|x| x.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(n) = names.iter().find(|n| !files.iter().any(|f| stem(f) == **n)) {
            bail!("--only: no scenario {n:?} in {}", dir.display());
        }
        files.retain(|f| names.contains(&stem(f)));
    }
    let backend = runner::backend();
    lab::install_signal_handler();
    let mut rows: Vec<(String, String, String, &str)> = Vec::new();
    let (mut failed, mut skipped) = (0, 0);
    for f in &files {
        let s = Scenario::from_file(f)?;
        let sim = clustersim::runner::run(&s, seed)?;
        let sim_v =
            if sim.passed() { "pass".to_string() } else { format!("FAIL: {}", sim.violations.join("; ")) };
        let cannot = runner::unsupported(&s);
        if !cannot.is_empty() {
            skipped += 1;
            rows.push((s.name.clone(), sim_v, format!("SKIPPED: {}", cannot.join("; ")), "-"));
            continue;
        }
        eprintln!("== {} (lab)", s.name);
        let (lab_v, lab_ok) = match runner::run(&s, &out.join(&s.name)) {
            Ok(lo) => {
                report::write(&lo)?;
                let o = &lo.outcome;
                let mut v = if o.passed() {
                    "pass".to_string()
                } else {
                    format!("FAIL: {}", o.violations.join("; "))
                };
                if backend != Backend::Tun && runner::fell_back(&lo.dir) {
                    v += " (the daemons fell back to the TUN backend)";
                }
                (v, o.passed())
            }
            Err(e) => {
                lab::check_interrupted()?;
                (format!("FAILED TO RUN: {e:#}"), false)
            }
        };
        let agree = lab_ok == sim.passed();
        if !(lab_ok && agree) {
            failed += 1;
        }
        rows.push((s.name.clone(), sim_v, lab_v, if agree { "yes" } else { "NO" }));
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(8).max(8);
    println!("# every scenario: simulator (seed {seed}) vs lab, data-plane backend {backend:?}");
    println!("{:w0$}  {:10}  {:10}  lab", "scenario", "agree", "simulator");
    for (n, sv, lv, a) in &rows {
        println!("{n:w0$}  {a:10}  {sv:10}  {lv}");
    }
    let ran = rows.len() - skipped;
    println!(
        "compare: {ran} run, {} passed and agree, {failed} failed or disagree, {skipped} skipped",
        ran - failed
    );
    Ok(failed == 0)
}

/// `tun` or `af_xdp` (the config's spelling).
fn parse_backend(s: &str) -> anyhow::Result<Backend> {
    match s {
        "tun" => Ok(Backend::Tun),
        "af_xdp" | "af-xdp" | "xdp" => Ok(Backend::AfXdp),
        other => bail!("unknown backend {other:?} (tun, af_xdp)"),
    }
}

fn scenario_cmd(args: &[String]) -> anyhow::Result<bool> {
    let compare = args[0] == "compare";
    if compare && args.get(1).is_some_and(|a| a == "--all") {
        return compare_all(&args[2..]);
    }
    let mut it = args[1..].iter();
    let path = resolve(it.next().context(USAGE)?);
    let (mut seed, mut out) = (1u64, None);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seed" => seed = it.next().context("--seed N")?.parse()?,
            // Absolute: the generated config names its secret files by this path.
            "--out" => out = Some(std::path::absolute(it.next().context("--out DIR")?)?),
            "--backend" => runner::set_backend(parse_backend(it.next().context("--backend B")?)?),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let s = Scenario::from_file(&path)?;
    let dir = match out {
        Some(d) => d,
        None => std::path::absolute(format!("target/clusterlab/{}", s.name))?,
    };
    lab::install_signal_handler();
    let sim = if compare { Some(clustersim::runner::run(&s, seed)?) } else { None };
    let lo = match runner::run(&s, &dir) {
        Ok(lo) => lo,
        Err(e) if compare => {
            let sim = sim.as_ref().context("sim")?;
            println!("{}", compare_table(&s, sim, None));
            println!("lab: FAILED: {e:#}");
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    report::write(&lo)?;
    if runner::backend() != Backend::Tun && runner::fell_back(&lo.dir) {
        println!("note: the daemons fell back to the TUN backend (AF_XDP not available)");
    }
    match &sim {
        Some(sim) => println!("{}", compare_table(&s, sim, Some(&lo.outcome))),
        None => {
            println!("# {} on namespaces ({})", s.name, dir.display());
            print!("{}", report::summary(&lo));
        }
    }
    println!("report: {}  chart: {}", dir.join("report.json").display(), dir.join("chart.svg").display());
    let sim_ok = sim.as_ref().is_none_or(|o| o.passed());
    Ok(lo.outcome.passed() && sim_ok)
}

fn compare_table(
    s: &Scenario,
    sim: &clustersim::runner::Outcome,
    lab: Option<&clustersim::runner::Outcome>,
) -> String {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let both = |f: &dyn Fn(&clustersim::runner::Outcome) -> String| (f(sim), lab.map_or("-".into(), f));
    let mut push = |k: &str, (a, b): (String, String)| rows.push((k.into(), a, b));
    let clients: Vec<String> = sim.outage_ms.keys().cloned().collect();
    for c in &clients {
        push(&format!("outage {c} (ms)"), both(&|o| o.outage_ms.get(c).map_or("-".into(), u64::to_string)));
    }
    for c in &clients {
        push(&format!("arp owner {c}"), both(&|o| o.arp_owner.get(c).cloned().unwrap_or("-".into())));
    }
    push(
        "primaries over time",
        both(&|o| o.primaries.iter().map(|(t, p)| format!("{t}:{p}")).collect::<Vec<_>>().join(" ")),
    );
    push("final primary", both(&|o| o.primaries.last().map_or("-".into(), |p| p.1.clone())));
    push("promotions", both(&|o| o.promotions.to_string()));
    push("long-lived lost", both(&|o| format!("{}/{}", o.long_lived_lost, o.long_lived)));
    push("requests lost", both(&|o| o.lost_requests.values().sum::<u64>().to_string()));
    // Health faults, drains and reloads that take a server out or bring it back: when it
    // took its last (first) new connection after the step.
    for (i, h) in sim.health.iter().enumerate() {
        let what = if h.failing { "removed" } else { "returned" };
        let figure = |o: &clustersim::runner::Outcome| {
            o.health.get(i).and_then(|f| f.after_ms).map_or("-".into(), |ms| format!("{ms} ms"))
        };
        push(&format!("{} {what} (step {} ms)", h.server, h.at_ms), both(&figure));
    }
    push(
        "heartbeats rejected",
        (sim.rejected.to_string(), lab.map_or("-".into(), |o| format!(">= {} (daemon logs)", o.rejected))),
    );
    push(
        "expectations",
        both(&|o| if o.passed() { "pass".into() } else { format!("FAIL: {}", o.violations.join("; ")) }),
    );
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(10);
    let mut t = format!(
        "# {}: simulator (seed {}) vs lab\n{:w0$}  {:w1$}  lab\n",
        s.name, sim.seed, "figure", "simulator"
    );
    for (k, a, b) in rows {
        t += &format!("{k:w0$}  {a:w1$}  {b}\n");
    }
    t
}
