//! `clusterlab soak`: fast heartbeats under a saturating load (issue 16). A benchmark, not a
//! test: it asserts no timing; it passes when no role changed during the soak.
//!
//! Two ATMs (NAT, one reachlist router, one real server running nginx, the lab's stream
//! server and `iperf3 -s`), the real `clusterserverd` on both with `timers.heartbeat_ms` as
//! given (default 5, the configurable minimum) and, if asked, `timers.realtime_priority`.
//! Once one is primary, for `--seconds` (default 600) the client runs, all through the VIP:
//!
//! * a 4-stream `iperf3` (saturating TCP: the data plane's queues and both cores busy);
//! * `wrk` with `Connection: close`, 50 connections (a new connection per request);
//! * the lab's own load (200 requests/s, each on a new connection, and 20 long-lived flows),
//!   which measures what a client saw: the longest gap and the requests lost.
//!
//! Every minute it reads each ATM's `cmc stats --json`: the heartbeat send-jitter and
//! receive-lateness histograms ([`clusterserver::admin::timing`]), so the report shows how
//! close the dead interval came to the worst delay. At the end: role changes during the soak
//! (from the daemons' role-change log lines), throughput of iperf3 and wrk, the client's
//! figures, `DIR/soak.json` and `DIR/soak.svg` (p99 and maximum of both histograms per ATM
//! over time, the dead interval drawn across).
//!
//! Lab safety as everywhere: `csl-lab*` namespaces owned by a [`Lab`] guard, every process
//! started and ended by PID, bounded duration (at most an hour).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clusterserver::config::{Protocol, Server, Service};
use clustersim::scenario::Scenario;
use nix::sys::signal::Signal;

use crate::lab::{Lab, check_interrupted};
use crate::measure::{ClientResult, parse_daemon_log};
use crate::ns;
use crate::runner;
use crate::topology::{Plan, Role};
use crate::{bench, bench_report};

const IPERF_PORT: u16 = 5201;
const WRK_CONNECTIONS: u32 = 50;
/// The lab load's request rate (the lab's cap).
const RATE: u32 = 200;
const MAX_SECONDS: u64 = 3_600;

pub const USAGE: &str =
    "clusterlab soak [--heartbeat-ms MS] [--seconds S] [--realtime-priority N] [--out DIR]";

/// Options of `clusterlab soak`.
#[derive(Clone, Debug, PartialEq)]
pub struct Opts {
    pub heartbeat_ms: u64,
    pub seconds: u64,
    pub realtime_priority: u8,
    pub out: PathBuf,
}

impl Opts {
    pub fn parse(args: &[String]) -> anyhow::Result<Opts> {
        let mut o = Opts {
            heartbeat_ms: 5,
            seconds: 600,
            realtime_priority: 0,
            out: PathBuf::from("target/lab/soak"),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().with_context(|| format!("{a} needs a value\n{USAGE}"));
            match a.as_str() {
                "--heartbeat-ms" => o.heartbeat_ms = val()?.parse().context("--heartbeat-ms")?,
                "--seconds" => o.seconds = val()?.parse().context("--seconds")?,
                "--realtime-priority" => {
                    o.realtime_priority = val()?.parse().context("--realtime-priority")?
                }
                "--out" => o.out = PathBuf::from(val()?),
                _ => bail!("unknown option {a}\n{USAGE}"),
            }
        }
        if o.seconds == 0 || o.seconds > MAX_SECONDS {
            bail!("--seconds must be 1..={MAX_SECONDS}");
        }
        Ok(o)
    }
}

/// One reading of one ATM's heartbeat histograms (microseconds).
#[derive(Clone, Debug, Default, serde::Serialize)]
struct Reading {
    at_s: u64,
    atm: String,
    jitter_p99_us: Option<u64>,
    jitter_max_us: Option<u64>,
    lateness_p99_us: Option<u64>,
    lateness_max_us: Option<u64>,
    sent: u64,
    received: u64,
}

/// Runs the soak; `Ok(true)` when no role changed during it.
pub fn run(opts: &Opts) -> anyhow::Result<bool> {
    runner::preflight()?;
    let daemon = runner::daemon_path()?;
    let cmc = daemon.with_file_name("cmc");
    if !cmc.exists() {
        bail!("cmc not found at {} (cargo build --release --bin cmc)", cmc.display());
    }
    let find = |t: &str| -> anyhow::Result<PathBuf> {
        ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
            .iter()
            .map(|d| Path::new(d).join(t))
            .find(|p| p.exists())
            .with_context(|| format!("{t} is missing: run scripts/install-deps as root"))
    };
    let (iperf3, wrk) = (find("iperf3")?, find("wrk")?);
    let duration_ms = opts.seconds * 1000;
    let s = Scenario::parse(&format!(
        r#"{{ name: "soak", topology: {{ atms: 2, nodes: 1, clients: 1, forwarding: "nat" }},
             cluster: {{ heartbeat_ms: {} }},
             load: {{ kind: "tcp", connections_per_s: {RATE}, long_lived: 20, new_connections: true }},
             duration_ms: {duration_ms} }}"#,
        opts.heartbeat_ms
    ))?;
    let plan = Plan::new(&s, &ns::new_run_id())?;
    let dir = opts.out.clone();
    std::fs::create_dir_all(&dir)?;
    let cfg_path = dir.join("clusterserver.json5");
    let mut cfg = runner::lab_config(&s, &plan, &dir, false)?;
    cfg.timers.realtime_priority = opts.realtime_priority;
    let base = cfg.services[0].clone();
    cfg.services.push(Service {
        name: "iperf".into(),
        port: IPERF_PORT,
        protocol: Protocol::Tcp,
        servers: base.servers.iter().map(|x| Server { port: IPERF_PORT, ..x.clone() }).collect(),
        ..base.clone()
    });
    runner::write_config(&cfg, &cfg_path)?;
    let vip = base.vip;
    let dead_ms = opts.heartbeat_ms * u64::from(cfg.timers.dead_after);

    let mut lab = Lab::up(plan, &dir)?;
    runner::start_backends(&mut lab, duration_ms)?;
    let node = lab.plan.of_role(Role::Node).first().map(|h| h.name.clone()).context("node")?;
    lab.spawn(
        &format!("{node}/iperf3-server"),
        &node,
        &iperf3,
        &["-s".into(), "-p".into(), IPERF_PORT.to_string()],
    )?;
    let atms: Vec<String> = lab.plan.of_role(Role::Atm).iter().map(|h| h.name.clone()).collect();
    for a in &atms {
        crate::nodes::start_one(&mut lab, &daemon, a, &cfg_path)?;
        crate::nodes::wait_ready(&mut lab, &format!("{a}/daemon"), 0, 5_000)?;
    }
    crate::nodes::start(&mut lab, &daemon, &cfg_path, "nat", &[])?;
    wait_primary(&mut lab, &atms)?;
    let t0 = crate::traffic::unix_ms();
    eprintln!(
        "soak: {} s, heartbeats every {} ms (dead interval {dead_ms} ms), realtime priority {}",
        opts.seconds, opts.heartbeat_ms, opts.realtime_priority
    );

    let loads = runner::start_load(&mut lab, &s, duration_ms)?;
    let client = lab.plan.of_role(Role::Client).first().map(|h| h.name.clone()).context("client")?;
    let secs = opts.seconds.to_string();
    let vip_s = vip.to_string();
    let iperf_args = bench::iperf_stream_args(&vip_s, IPERF_PORT, &secs, 4);
    let iperf_label = format!("{client}/iperf3");
    lab.spawn(&iperf_label, &client, &iperf3, &iperf_args)?;
    let url = match vip {
        IpAddr::V4(a) => format!("http://{a}/"),
        IpAddr::V6(a) => format!("http://[{a}]/"),
    };
    let wrk_args = [
        "-t",
        "2",
        "-c",
        &WRK_CONNECTIONS.to_string(),
        "-d",
        &format!("{secs}s"),
        "--timeout",
        "2s",
        "-H",
        "Connection: close",
        &url,
    ];
    let wrk_label = format!("{client}/wrk");
    lab.spawn(&wrk_label, &client, &wrk, &wrk_args.map(String::from))?;

    let mut readings: Vec<Reading> = Vec::new();
    let started = Instant::now();
    let limit = Duration::from_secs(opts.seconds + 30);
    let mut next_read = Duration::from_secs(10);
    let load_labels: Vec<String> = loads.iter().map(|(c, _, _)| format!("{c}/load")).collect();
    loop {
        check_interrupted()?;
        let running =
            [&iperf_label, &wrk_label].into_iter().chain(&load_labels).any(|l| lab.exited(l).is_none());
        if !running {
            break;
        }
        if started.elapsed() > limit {
            bail!("the soak's load did not end within {limit:?}");
        }
        if started.elapsed() >= next_read {
            let at_s = started.elapsed().as_secs();
            for a in &atms {
                let r = read_stats(&lab, &cmc, a, &cfg_path, at_s)?;
                eprintln!(
                    "soak: {at_s:>4} s {a}: send jitter p99<={} max {}, receive lateness p99<={} max {} (µs)",
                    opt(r.jitter_p99_us),
                    opt(r.jitter_max_us),
                    opt(r.lateness_p99_us),
                    opt(r.lateness_max_us)
                );
                readings.push(r);
            }
            next_read += Duration::from_secs(60);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let at_s = started.elapsed().as_secs();
    for a in &atms {
        readings.push(read_stats(&lab, &cmc, a, &cfg_path, at_s)?);
    }

    // Role changes during the soak, from each daemon's log.
    let mut changes: Vec<(u64, String, String)> = Vec::new();
    let mut primaries = Vec::new();
    for a in &atms {
        let d = parse_daemon_log(&lab.log_text(&format!("{a}/daemon")));
        if d.roles.last().is_some_and(|(_, r)| r == "primary") {
            primaries.push(a.clone());
        }
        changes.extend(d.roles.into_iter().filter(|(t, _)| *t >= t0).map(|(t, r)| (t - t0, a.clone(), r)));
    }
    changes.sort();
    let read_log = |l: &str| lab.log_of(l).map(std::fs::read_to_string).transpose();
    let gbps = read_log(&iperf_label)?.as_deref().and_then(bench_report::iperf_tcp_gbps);
    let rps = read_log(&wrk_label)?.as_deref().and_then(bench_report::wrk_rps);
    let mut clients = Vec::new();
    for (c, _, out) in &loads {
        let r = ClientResult::parse(&std::fs::read_to_string(out).unwrap_or_default());
        clients.push((c.clone(), r.requests.len(), r.lost(), r.outage_ms(RATE), r.flows, r.flows_lost));
    }
    for a in &atms {
        lab.signal(&format!("{a}/daemon"), Signal::SIGTERM)?;
    }
    for a in &atms {
        lab.wait_or_kill(&format!("{a}/daemon"), 5_000)?;
    }
    lab.teardown();

    let mut text = String::new();
    writeln!(
        text,
        "# soak: {} s, {} ms heartbeats (dead interval {dead_ms} ms), NAT, 2 ATMs ({})",
        opts.seconds,
        opts.heartbeat_ms,
        dir.display()
    )?;
    writeln!(text, "role changes during the soak: {}", changes.len())?;
    for (t, a, r) in &changes {
        writeln!(text, "  {t} ms: {a} -> {r}")?;
    }
    writeln!(
        text,
        "primary at the end: {}",
        if primaries.is_empty() { "none".into() } else { primaries.join("+") }
    )?;
    writeln!(text, "iperf3 -P 4: {} Gbit/s; wrk Connection: close: {} k req/s", opt_f(gbps), opt_f(rps))?;
    for (c, n, lost, outage, flows, flows_lost) in &clients {
        writeln!(
            text,
            "{c}: {n} requests, {lost} lost, longest gap {outage} ms; long-lived flows {flows} run, {flows_lost} lost"
        )?;
    }
    for a in &atms {
        if let Some(r) = readings.iter().rev().find(|r| &r.atm == a) {
            writeln!(
                text,
                "{a}: {} heartbeats sent, send jitter p99<={} max {} µs; {} received, lateness p99<={} max {} µs",
                r.sent,
                opt(r.jitter_p99_us),
                opt(r.jitter_max_us),
                r.received,
                opt(r.lateness_p99_us),
                opt(r.lateness_max_us)
            )?;
        }
    }
    print!("{text}");
    let json = serde_json::json!({
        "heartbeat_ms": opts.heartbeat_ms,
        "dead_interval_ms": dead_ms,
        "seconds": opts.seconds,
        "realtime_priority": opts.realtime_priority,
        "role_changes": changes.iter().map(|(t, a, r)| serde_json::json!({"at_ms": t, "atm": a, "role": r})).collect::<Vec<_>>(),
        "primaries_at_end": primaries,
        "iperf3_gbps": gbps,
        "wrk_k_rps": rps,
        "clients": clients.iter().map(|(c, n, lost, outage, flows, flows_lost)| serde_json::json!({
            "client": c, "requests": n, "lost": lost, "longest_gap_ms": outage, "flows": flows, "flows_lost": flows_lost,
        })).collect::<Vec<_>>(),
        "readings": readings,
    });
    std::fs::write(dir.join("soak.json"), serde_json::to_string_pretty(&json)?)?;
    std::fs::write(dir.join("soak.svg"), chart(&readings, &atms, dead_ms))?;
    println!("report: {}  chart: {}", dir.join("soak.json").display(), dir.join("soak.svg").display());
    Ok(changes.is_empty() && primaries.len() == 1)
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |x| x.to_string())
}

fn opt_f(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.2}"))
}

/// Waits until one ATM has logged its promotion (bounded).
fn wait_primary(lab: &mut Lab, atms: &[String]) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        check_interrupted()?;
        for a in atms {
            let d = parse_daemon_log(&lab.log_text(&format!("{a}/daemon")));
            if d.roles.last().is_some_and(|(_, r)| r == "primary") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("no ATM became primary within 15 s (see {})", lab.dir.display())
}

/// One ATM's heartbeat histograms from `cmc stats --json`, run in its namespace.
fn read_stats(lab: &Lab, cmc: &Path, atm: &str, cfg: &Path, at_s: u64) -> anyhow::Result<Reading> {
    let args =
        ["stats", "--json", "--config", &cfg.display().to_string(), "--timeout-ms", "5000"].map(String::from);
    let out = lab.command(atm, cmc, &args)?.output().with_context(|| format!("cmc stats on {atm}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!("cmc stats --json on {atm}: {text}{}", String::from_utf8_lossy(&out.stderr))
    })?;
    let find = |key: &str| find_key(&v, key).cloned().unwrap_or(serde_json::Value::Null);
    let (j, l) = (find("heartbeat_send_jitter"), find("heartbeat_receive_lateness"));
    Ok(Reading {
        at_s,
        atm: atm.to_string(),
        jitter_p99_us: j["p99_us"].as_u64(),
        jitter_max_us: j["max_us"].as_u64(),
        lateness_p99_us: l["p99_us"].as_u64(),
        lateness_max_us: l["max_us"].as_u64(),
        sent: j["count"].as_u64().unwrap_or(0),
        received: l["count"].as_u64().unwrap_or(0),
    })
}

/// The first value under `key` anywhere in `v` (depth first).
fn find_key<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m.get(key).or_else(|| m.values().find_map(|x| find_key(x, key))),
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}

/// A chart series: its name, the value it draws, its stroke dash.
type Series = (&'static str, fn(&Reading) -> Option<u64>, &'static str);

/// p99 and maximum of both histograms per ATM over the soak, in ms, on a log-free linear
/// axis up to the dead interval (drawn across: a delay there is a false failover).
fn chart(readings: &[Reading], atms: &[String], dead_ms: u64) -> String {
    let (w, h, pad) = (760.0, 320.0, 50.0);
    let t_max = readings.iter().map(|r| r.at_s).max().unwrap_or(1).max(1) as f64;
    let y_max = (dead_ms as f64).max(1.0) * 1.2;
    let x = |t: u64| pad + (t as f64 / t_max) * (w - 2.0 * pad);
    let y = |us: u64| h - pad - ((us as f64 / 1000.0).min(y_max) / y_max) * (h - 2.0 * pad);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{pad}\" y=\"20\" font-size=\"13\">heartbeat delays during the soak (ms; cumulative p99 and max)</text>\n"
    );
    let yd = y(dead_ms * 1000);
    let _ = writeln!(
        s,
        "<line x1=\"{pad}\" y1=\"{yd}\" x2=\"{}\" y2=\"{yd}\" stroke=\"red\" stroke-dasharray=\"4 3\"/><text x=\"{}\" y=\"{}\" fill=\"red\">dead interval {dead_ms} ms</text>",
        w - pad,
        w - pad - 110.0,
        yd - 4.0
    );
    let _ = writeln!(
        s,
        "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        h - pad,
        w - pad,
        h - pad
    );
    let _ = writeln!(s, "<line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>", h - pad);
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\">{t_max} s</text><text x=\"{pad}\" y=\"{}\">0</text>",
        w - pad - 20.0,
        h - pad + 15.0,
        h - pad + 15.0
    );
    let colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
    let mut legend = 0;
    for a in atms {
        let mine: Vec<&Reading> = readings.iter().filter(|r| &r.atm == a).collect();
        let series: [Series; 4] = [
            ("send jitter p99", |r| r.jitter_p99_us, ""),
            ("send jitter max", |r| r.jitter_max_us, "4 2"),
            ("lateness p99", |r| r.lateness_p99_us, ""),
            ("lateness max", |r| r.lateness_max_us, "4 2"),
        ];
        for (i, (name, get, dash)) in series.iter().enumerate() {
            let pts: Vec<String> =
                mine.iter().filter_map(|r| get(r).map(|v| format!("{:.1},{:.1}", x(r.at_s), y(v)))).collect();
            if pts.is_empty() {
                continue;
            }
            let c = colours[(i / 2 + 2 * (legend / 4)) % colours.len()];
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{c}\" stroke-dasharray=\"{dash}\" points=\"{}\"/>",
                pts.join(" ")
            );
            let ly = 40.0 + 14.0 * legend as f64;
            let _ = writeln!(s, "<text x=\"{}\" y=\"{ly}\" fill=\"{c}\">{a} {name}</text>", pad + 10.0);
            legend += 1;
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_bound_the_duration() {
        let o = Opts::parse(&["--heartbeat-ms", "10", "--seconds", "60"].map(String::from)).unwrap();
        assert_eq!((o.heartbeat_ms, o.seconds, o.realtime_priority), (10, 60, 0));
        assert!(Opts::parse(&["--seconds", "0"].map(String::from)).is_err());
        assert!(Opts::parse(&["--seconds", "7200"].map(String::from)).is_err());
        assert!(Opts::parse(&["--bogus"].map(String::from)).is_err());
    }

    #[test]
    fn stats_keys_are_found_at_any_depth() {
        let v = serde_json::json!({"stats": {"heartbeat_send_jitter": {"p99_us": 90}}});
        assert_eq!(find_key(&v, "heartbeat_send_jitter").unwrap()["p99_us"], 90);
        assert!(find_key(&v, "nothing").is_none());
    }

    #[test]
    fn the_chart_draws_the_dead_interval_and_each_series() {
        let r = |t, j| Reading { at_s: t, atm: "atm1".into(), jitter_p99_us: Some(j), ..Reading::default() };
        let svg = chart(&[r(10, 300), r(70, 900)], &["atm1".into()], 15);
        assert!(svg.contains("dead interval 15 ms") && svg.contains("atm1 send jitter p99"), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 1);
    }
}
