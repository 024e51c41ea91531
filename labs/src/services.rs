//! Service failover in the lab: real S/K scripts (`/bin/sh`) that every ATM's daemon runs,
//! writing `MS ATM service NAME start|started|stop|stopped` lines to one shared log; the
//! runner adds its crash faults to the same log and the simulator's checker
//! ([`clustersim::services_check`]) reads it back: no service on two ATMs at once.
//!
//! Mirror sets go over real OpenSSH and rsync: every ATM runs Debian's sshd in its namespace
//! (generated host and user keys, host keys checked), and every ATM has its own copy of the
//! mirror set at the same path (`DIR/data/`, a per-host view of `DIR/hosts/ATM/data/`,
//! [`Lab::set_view`]), as separate machines would. The S scripts append to a journal in the
//! set, so after a hand-back the home ATM's copy must hold what the backup wrote while it
//! ran the services (seed 004's resynchronisation), which [`check_resync`] reads.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clusterserver::config::{Config, Ssh};

use crate::lab::Lab;
use crate::topology::{Plan, Role};

const SSHD: &str = "/usr/sbin/sshd";

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

fn ssh_dir(dir: &Path) -> PathBuf {
    dir.join("ssh")
}

/// Makes every failover command a script that logs its start and end (50 ms apart) and, on
/// a start, appends a line to the mirror set's journal; points the mirror sets at the lab's
/// data directory and SSH at the keys [`prepare_ssh`] made. Does nothing without groups.
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
    cfg.failover.ssh = Some(prepare_ssh(dir, plan)?);
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

/// Generates a user key and one host key per ATM (fresh each run), the `known_hosts` that
/// names each ATM's address with its key, and every ATM's empty copy of the mirror set.
fn prepare_ssh(dir: &Path, plan: &Plan) -> anyhow::Result<Ssh> {
    for tool in [SSHD, "/usr/bin/ssh-keygen", "/usr/bin/rsync", "/usr/bin/unshare"] {
        if !Path::new(tool).exists() {
            bail!(
                "{tool} is missing (service failover's mirror sets need it): run scripts/install-deps as root"
            );
        }
    }
    let keys = ssh_dir(dir);
    for d in [&keys, &dir.join("hosts"), &data_dir(dir)] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    std::fs::create_dir_all(&keys)?;
    std::fs::create_dir_all(data_dir(dir))?;
    let keygen = |path: &Path| -> anyhow::Result<String> {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "clusterlab", "-f"])
            .arg(path)
            .output()
            .context("running ssh-keygen")?;
        if !out.status.success() {
            bail!("ssh-keygen {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
        }
        let public = std::fs::read_to_string(path.with_extension("pub"))?;
        // "type key comment" -> "type key"
        Ok(public.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
    };
    let user = keys.join("user");
    std::fs::write(keys.join("authorized_keys"), keygen(&user)? + "\n")?;
    let mut known = String::new();
    for h in plan.of_role(Role::Atm) {
        let public = keygen(&keys.join(format!("host-{}", h.name)))?;
        known.push_str(&format!("{} {public}\n", h.addr()));
        std::fs::create_dir_all(host_data(dir, &h.name))?;
    }
    std::fs::write(keys.join("known_hosts"), known)?;
    Ok(Ssh { user: "root".into(), port: 22, identity_file: user, known_hosts: keys.join("known_hosts") })
}

/// Gives every ATM its own copy of the mirror set and starts its sshd (its own host key,
/// keys only). Does nothing without failover groups.
pub fn start_sshd(lab: &mut Lab, cfg: &Config) -> anyhow::Result<()> {
    if cfg.failover.groups.is_empty() {
        return Ok(());
    }
    let dir = lab.dir.clone();
    let keys = ssh_dir(&dir);
    // sshd's privilege-separation directory (Debian's package creates it at boot).
    std::fs::create_dir_all("/run/sshd")?;
    let atms: Vec<(String, std::net::Ipv4Addr)> =
        lab.plan.of_role(Role::Atm).iter().map(|h| (h.name.clone(), h.addr())).collect();
    for (name, addr) in atms {
        lab.set_view(&name, &host_data(&dir, &name), &data_dir(&dir))?;
        let config = keys.join(format!("sshd-{name}.conf"));
        std::fs::write(
            &config,
            format!(
                "ListenAddress {addr}\nPort 22\nHostKey {k}/host-{name}\nAuthorizedKeysFile {k}/authorized_keys\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                 StrictModes no\nUsePAM no\nPidFile none\n",
                k = keys.display()
            ),
        )?;
        let args = ["-D", "-e", "-f", &config.display().to_string()].map(String::from);
        lab.spawn(&format!("{name}/sshd"), &name, Path::new(SSHD), &args)?;
    }
    Ok(())
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
