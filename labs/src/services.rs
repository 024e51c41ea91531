//! Service failover in the lab: real S/K scripts (`/bin/sh`) that every ATM's daemon runs,
//! writing `MS ATM service NAME start|started|stop|stopped` lines to one shared log; the
//! runner adds its crash faults to the same log and the simulator's checker
//! ([`clustersim::services_check`]) reads it back: no service on two ATMs at once.
//!
//! Mirror sets are left out: the lab has no sshd yet.

use std::io::Write;
use std::path::{Path, PathBuf};

use clusterserver::config::Config;

/// The shared log of a lab run.
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("services.log")
}

/// Makes every failover command a script that logs its start and end (50 ms apart).
pub fn configure(cfg: &mut Config, dir: &Path) {
    let log = log_path(dir);
    let script = format!(
        "e=started; [ \"$1\" = stop ] && e=stopped; \
         printf '%s %s service %s %s\\n' \"$(date +%s%3N)\" \"$CS_ATM\" \"$0\" \"$1\" >> '{log}'; \
         sleep 0.05; \
         printf '%s %s service %s %s\\n' \"$(date +%s%3N)\" \"$CS_ATM\" \"$0\" \"$e\" >> '{log}'",
        log = log.display()
    );
    for g in &mut cfg.failover.groups {
        g.mirrors.clear();
        for s in &mut g.services {
            let argv =
                |step: &str| vec!["/bin/sh".into(), "-c".into(), script.clone(), s.name.clone(), step.into()];
            s.start = argv("start");
            s.stop = argv("stop");
        }
    }
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
