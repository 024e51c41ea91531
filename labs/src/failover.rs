//! Service failover in the lab: real S/K scripts (`/bin/sh`) that every ATM's daemon runs,
//! writing `MS ATM service NAME start|started|stop|stopped` lines to one shared log; the
//! runner adds its crash faults to the same log and the simulator's checker
//! ([`clustersim::failover_check`]) reads it back: no service on two ATMs at once.
//!
//! Mirror sets go over real OpenSSH and rsync: every ATM runs Debian's sshd in its namespace
//! (generated host and user keys, host keys checked), and every ATM has its own copy of the
//! mirror set at the same path (`DIR/data/`, a per-host view of `DIR/hosts/ATM/data/`,
//! [`Lab::set_view`]), as separate machines would. The S scripts append to a journal in the
//! set, so after a hand-back the home ATM's copy must hold what the backup wrote while it
//! ran the services (seed 004's resynchronisation), which [`check_resync`] reads.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clusterserver::config::Config;

use crate::lab::Lab;
use crate::sshd;
use crate::topology::{Plan, Role};

/// The shared log of a lab run.
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("services.log")
}

/// The mirror set's path as every ATM sees it.
fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

/// `host`'s own copy of the mirror set.
fn host_data(dir: &Path, host: &str) -> PathBuf {
    dir.join("hosts").join(host).join("data")
}

/// Makes every failover command a script that logs its start and end (50 ms apart) and, on
/// a start, appends a line to the mirror set's journal; points the mirror sets at the lab's
/// data directory and SSH at the keys [`sshd::prepare`] made. Does nothing without groups.
pub fn configure(cfg: &mut Config, dir: &Path, plan: &Plan) -> anyhow::Result<()> {
    if cfg.failover.groups.is_empty() {
        return Ok(());
    }
    let log = log_path(dir);
    let journal = data_dir(dir).join("journal");
    let script = format!(
        "e=started; [ \"$1\" = stop ] && e=stopped; \
         printf '%s %s service %s %s\\n' \"$(date +%s%3N)\" \"$CS_ATM\" \"$0\" \"$1\" >> '{log}'; \
         [ \"$1\" = start ] && printf '%s %s ran %s\\n' \"$(date +%s%3N)\" \"$CS_ATM\" \"$0\" >> '{journal}'; \
         sleep 0.05; \
         printf '%s %s service %s %s\\n' \"$(date +%s%3N)\" \"$CS_ATM\" \"$0\" \"$e\" >> '{log}'",
        log = log.display(),
        journal = journal.display(),
    );
    let atms = sshd::hosts(plan, &[Role::Atm]);
    reset_data(dir, &atms)?;
    cfg.failover.ssh = Some(sshd::prepare(dir, &atms)?);
    let data = format!("{}/", data_dir(dir).display());
    for g in &mut cfg.failover.groups {
        for m in &mut g.mirrors {
            m.paths = vec![data.clone()];
        }
        for s in &mut g.services {
            let argv =
                |step: &str| vec!["/bin/sh".into(), "-c".into(), script.clone(), s.name.clone(), step.into()];
            s.start = argv("start");
            s.stop = argv("stop");
        }
    }
    Ok(())
}

/// Empties every ATM's copy of the mirror set and the set's mount point.
fn reset_data(dir: &Path, atms: &[(String, Ipv4Addr)]) -> anyhow::Result<()> {
    for d in [&dir.join("hosts"), &data_dir(dir)] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    std::fs::create_dir_all(data_dir(dir))?;
    for (name, _) in atms {
        std::fs::create_dir_all(host_data(dir, name))?;
    }
    Ok(())
}

/// Gives every ATM its own copy of the mirror set and starts its sshd. Does nothing
/// without failover groups.
pub fn start_sshd(lab: &mut Lab, cfg: &Config) -> anyhow::Result<()> {
    if cfg.failover.groups.is_empty() {
        return Ok(());
    }
    let dir = lab.dir.clone();
    let atms = sshd::hosts(&lab.plan, &[Role::Atm]);
    for (name, _) in &atms {
        lab.set_view(name, &host_data(&dir, name), &data_dir(&dir))?;
    }
    sshd::start(lab, &atms)
}

/// Seed 004's resynchronisation, checked on the files: after a hand-back, the home ATM's
/// copy of the mirror set holds the journal lines its backup wrote while it ran the group.
/// Returns a summary line, or the violation.
pub fn check_resync(dir: &Path, home: &str, backup: &str) -> Result<String, String> {
    let journal = host_data(dir, home).join("journal");
    let text = std::fs::read_to_string(&journal).unwrap_or_default();
    let from_backup = text.lines().filter(|l| l.split_whitespace().nth(1) == Some(backup)).count();
    let own = text.lines().filter(|l| l.split_whitespace().nth(1) == Some(home)).count();
    if from_backup == 0 {
        return Err(format!(
            "resync: {home}'s copy of the mirror set ({}) holds no line {backup} wrote while it ran the services: the mirror-back did not reach {home}",
            journal.display()
        ));
    }
    Ok(format!(
        "resync: {home}'s copy of the mirror set holds {from_backup} journal lines {backup} wrote while it ran the services, and {own} of its own since"
    ))
}

/// Records a crash in the shared log (a crashed machine's services are gone).
pub fn log_crash(dir: &Path, host: &str, unix_ms: u64) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(log_path(dir))?;
    writeln!(f, "{unix_ms} sim fault: crash {host}")
}

/// The shared log's lines in time order.
pub fn read_log(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log_path(dir)).unwrap_or_default();
    let mut lines: Vec<(u64, usize, String)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            (l.split_whitespace().next().and_then(|t| t.parse().ok()).unwrap_or(0), i, l.to_string())
        })
        .collect();
    lines.sort();
    lines.into_iter().map(|(_, _, l)| l).collect()
}
