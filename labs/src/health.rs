//! Health checks in the lab: real servers that fail and recover, and the figures that show
//! when the daemons took them out of the scheduler and back.
//!
//! * **Check**: a scenario with `cluster.check` gets, on its HTTP service, an exec check
//!   running `DIR/asa-http-flag {address} {port}`: a two-line wrapper that exits 1 while
//!   the flag file `DIR/check-fail-ADDRESS` exists and otherwise runs the shipped ASA
//!   program (`clusterserver-asa http ADDRESS PORT 1`, found next to `clusterserverd` or at
//!   `$CLUSTERSERVER_ASA`). The daemons run it from the ATMs' namespaces with the check's
//!   timeout (half the interval), so one check sees all three failures below.
//! * **Steps**: `backend_stop` / `backend_start` kill the server's nginx by PID (SIGKILL)
//!   and start it again; `server_down` / `server_up` (the runner's nftables drop) block the
//!   service ports; `check_fail` / `check_pass` create / remove the flag file.
//! * **Figures** ([`check`]): from the clients' request records (each a new TCP
//!   connection), per fault: the last request after the failure that reached the failed
//!   server (answered by it, or failed: nginx dead or port blocked; failures after
//!   another kind of fault, such as an ATM crash, are not counted) and the first request answered by it after its recovery, in
//!   ms after the step. They are checked against `expect.removed_within_ms` and
//!   `expect.returned_within_ms` like the simulator's.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clusterserver::config::{CheckKind, Config};
use clustersim::runner::{HealthFigure, Outcome};
use clustersim::scenario::{Scenario, Step};
use nix::sys::signal::Signal;

use crate::lab::Lab;
use crate::measure::ClientResult;
use crate::topology::Plan;

/// Step kinds this module performs (the runner performs `server_down` / `server_up`).
pub const KINDS: &[&str] = &["check_fail", "check_pass", "backend_stop", "backend_start"];

/// The ASA program: `$CLUSTERSERVER_ASA`, else next to `daemon`.
pub fn asa_path(daemon: &Path) -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("CLUSTERSERVER_ASA") {
        return Ok(PathBuf::from(p));
    }
    let p = daemon.parent().context("daemon dir")?.join("clusterserver-asa");
    if !p.exists() {
        bail!(
            "clusterserver-asa not found at {} (build it: cargo build --bin clusterserver-asa, or set CLUSTERSERVER_ASA)",
            p.display()
        );
    }
    Ok(p)
}

fn flag(dir: &Path, address: &str) -> PathBuf {
    dir.join(format!("check-fail-{address}"))
}

/// Gives the HTTP service (the first) an exec check through the flag-file wrapper, if the
/// scenario has checks; removes flags a previous run left.
pub fn configure_checks(cfg: &mut Config, dir: &Path, daemon: &Path) -> anyhow::Result<()> {
    let Some(check) = cfg.services.first_mut().and_then(|s| s.checks.first_mut()) else { return Ok(()) };
    let dir = std::fs::canonicalize(dir).with_context(|| format!("lab directory {}", dir.display()))?;
    let asa = std::fs::canonicalize(asa_path(daemon)?)?;
    for e in std::fs::read_dir(&dir)?.flatten() {
        if e.file_name().to_string_lossy().starts_with("check-fail-") {
            std::fs::remove_file(e.path())?;
        }
    }
    let script = dir.join("asa-http-flag");
    let budget_ms = check.timeout_ms.saturating_sub(10).max(10);
    let text = format!(
        "#!/bin/sh\n# Lab ASA check: fails while the flag file exists, else the shipped http ASA program.\n\
         if [ -e \"{}\" ]; then echo \"flag file set: failing on purpose\"; exit 1; fi\n\
         exec \"{}\" http \"$1\" \"$2\" 1 --timeout-ms {budget_ms}\n",
        flag(&dir, "$1").display(),
        asa.display()
    );
    std::fs::write(&script, text)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    check.kind = CheckKind::Exec;
    check.command = vec![script.display().to_string(), "{address}".into(), "{port}".into()];
    Ok(())
}

/// Performs a health step; `None` if `st` is not one.
pub fn apply(lab: &mut Lab, plan: &Plan, st: &Step) -> anyhow::Result<Option<String>> {
    let kind = st.kind()?;
    let host = [&st.check_fail, &st.check_pass, &st.backend_stop, &st.backend_start]
        .into_iter()
        .find_map(|h| h.clone());
    let Some(host) = host.filter(|_| KINDS.contains(&kind)) else { return Ok(None) };
    let label = format!("{host}/nginx");
    match kind {
        "backend_stop" => {
            lab.signal(&label, Signal::SIGKILL)?;
            lab.wait_or_kill(&label, 2_000)?;
        }
        "backend_start" => {
            let conf = lab.dir.join(format!("{host}-nginx.conf"));
            let args = ["-c".to_string(), conf.display().to_string()];
            lab.spawn(&label, &host, Path::new("/usr/sbin/nginx"), &args)?;
        }
        _ => {
            let dir = std::fs::canonicalize(&lab.dir)?;
            let f = flag(&dir, &plan.host(&host)?.addr().to_string());
            if kind == "check_fail" {
                std::fs::write(&f, "")?;
            } else {
                std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
            }
        }
    }
    Ok(Some(format!("fault: {kind} {host}")))
}

/// A health fault's server and whether it fails, from its fault-log text.
fn health_fault(text: &str) -> Option<(String, bool)> {
    let (kind, rest) = text.strip_prefix("fault: ")?.split_once(' ')?;
    let host = rest.split_whitespace().next()?;
    let failing = match kind {
        // A reload that removed or added a server (see `runner::reload`), an operator's
        // drain or enable (`runner::server_op`).
        "backend_stop" | "server_down" | "check_fail" | "server_removed" | "drain" => true,
        "backend_start" | "server_up" | "check_pass" | "server_added" | "enable" => false,
        _ => return None,
    };
    Some((host.to_string(), failing))
}

/// The health faults applied (from the fault log, ms after t0): (ms, server, failing).
fn health_faults(faults: &[(u64, String)]) -> Vec<(u64, String, bool)> {
    faults.iter().filter_map(|(t, text)| health_fault(text).map(|(h, f)| (*t, h, f))).collect()
}

/// Health figures and their bounds (see the module docs), added to `o`.
pub fn check(s: &Scenario, o: &mut Outcome, results: &[(String, ClientResult)], t0: u64) {
    let steps = health_faults(&o.faults);
    // (start ms after t0, ok, server) of every request of every client.
    let mut reqs: Vec<(u64, bool, String)> = results
        .iter()
        .flat_map(|(_, r)| r.requests.iter())
        .map(|(start, _, ok, server)| (start.saturating_sub(t0), *ok, server.clone()))
        .collect();
    reqs.sort();
    // Other faults (a crash, a partition) fail requests too: failures count only before them.
    let others: Vec<u64> =
        o.faults.iter().filter(|(_, text)| health_fault(text).is_none()).map(|(t, _)| *t).collect();
    for (i, (at, server, failing)) in steps.iter().enumerate() {
        let until = steps[i + 1..].iter().find(|(_, n, _)| n == server).map_or(o.duration_ms, |(t, _, _)| *t);
        let blur = others.iter().copied().filter(|t| t > at).min().unwrap_or(u64::MAX);
        let mut window = reqs.iter().filter(|(t, _, _)| (*at..until).contains(t));
        let figure = if *failing {
            let reached = |(t, ok, srv): &&(u64, bool, String)| srv == server || (!ok && *t < blur);
            Some(window.rfind(reached).map_or(0, |(t, _, _)| t - at))
        } else {
            window.filter(|(_, ok, srv)| *ok && srv == server).map(|(t, _, _)| t - at).next()
        };
        let (what, bound) = if *failing {
            ("removed", s.expect.removed_within_ms)
        } else {
            ("returned", s.expect.returned_within_ms)
        };
        match (figure, bound) {
            (Some(f), Some(b)) if f > b => o
                .violations
                .push(format!("{server}: {what} {f} ms after the fault at {at} ms (bound {b} ms)")),
            (None, Some(_)) => o
                .violations
                .push(format!("{server}: no request answered by it after it recovered at {at} ms")),
            _ => {}
        }
        o.health.push(HealthFigure {
            at_ms: *at,
            server: server.clone(),
            failing: *failing,
            after_ms: figure,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(rows: &[(u64, bool, &str)]) -> Vec<(String, ClientResult)> {
        let requests = rows.iter().map(|(t, ok, s)| (1000 + t, 1000 + t + 1, *ok, s.to_string())).collect();
        vec![("client1".into(), ClientResult { requests, ..ClientResult::default() })]
    }

    #[test]
    fn figures_from_requests_and_bounds() {
        let s = Scenario::parse(
            "{ name: 'x', topology: { atms: 2, nodes: 2 }, expect: { removed_within_ms: 1500, returned_within_ms: 800 } }",
        )
        .expect("scenario");
        let mut o = clustersim::runner::run(&s, 1).expect("a tiny sim run for the outcome shape");
        o.duration_ms = 10_000;
        o.violations.clear();
        o.faults = vec![
            (1000, "fault: backend_stop node1".into()),
            (2500, "fault: crash atm1".into()),
            (5000, "fault: backend_start node1".into()),
        ];
        // node1 fails requests until 2200 (removed after 1200 ms); the crash's failures at
        // 2600 do not count; node1 answers again from 5900 (900 ms: over the bound).
        let r = requests(&[
            (900, true, "node1"),
            (1100, false, "connection refused"),
            (2200, false, "connection refused"),
            (2300, true, "node2"),
            (2600, false, "timed out"),
            (5100, true, "node2"),
            (5900, true, "node1"),
        ]);
        check(&s, &mut o, &r, 1000);
        let figs: Vec<Option<u64>> = o.health.iter().map(|h| h.after_ms).collect();
        assert_eq!(figs, [Some(1200), Some(900)]);
        assert_eq!(o.violations, ["node1: returned 900 ms after the fault at 5000 ms (bound 800 ms)"]);
    }
}
