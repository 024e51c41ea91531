//! `cmc sync`: push the config directory or a mirror set to every listed ATM and real server,
//! one way, with rsync over SSH; a dry run by default, `--apply` to commit; a summary per host.
//! After a config push, [`reload_nodes`] runs `failover.ssh.node_reload` on the real servers
//! over the same SSH (their node daemons have no admin channel).

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use crate::config::{Config, Ssh};

use super::{Compare, rsync_argv};

/// What to push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    /// The directory holding the config file (`/etc/clusterserver/`).
    Config,
    /// A mirror set named in `failover.groups[].mirrors`.
    Content(String),
}

/// One host's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSummary {
    pub host: String,
    pub address: IpAddr,
    /// Itemized changes (files created, updated or deleted) over all paths.
    pub changes: usize,
    /// `None`: every rsync exited 0; else the first failure.
    pub error: Option<String>,
}

/// Every host to push to, in config order, once each: the ATMs, then the real servers.
pub fn targets(cfg: &Config) -> Vec<(String, IpAddr)> {
    let mut out: Vec<(String, IpAddr)> = cfg.atms.iter().map(|a| (a.name.clone(), a.address)).collect();
    for s in cfg.services.iter().flat_map(|s| &s.servers) {
        if !out.iter().any(|(_, a)| *a == s.address) {
            out.push((s.name.clone(), s.address));
        }
    }
    out
}

/// The paths `what` names: the config directory (with its trailing `/`) or the set's paths.
pub fn paths(cfg: &Config, config_path: &Path, what: &What) -> Result<Vec<String>, String> {
    match what {
        What::Config => {
            let dir = config_path.parent().filter(|p| p.is_absolute()).ok_or_else(|| {
                format!("{}: give the config file as an absolute path", config_path.display())
            })?;
            Ok(vec![format!("{}/", dir.display().to_string().trim_end_matches('/'))])
        }
        What::Content(set) => match cfg.failover.mirror(set) {
            Some((_, m)) => Ok(m.paths.clone()),
            None => {
                let known: Vec<&str> =
                    cfg.failover.groups.iter().flat_map(|g| &g.mirrors).map(|m| m.name.as_str()).collect();
                Err(format!(
                    "no mirror set {set:?} in failover.groups[].mirrors (known: {})",
                    known.join(", ")
                ))
            }
        },
    }
}

/// Pushes `paths` to every target and returns one summary per host.
pub fn push(
    ssh: &Ssh,
    hosts: &[(String, IpAddr)],
    paths: &[String],
    apply: bool,
    compare: Compare,
) -> Vec<HostSummary> {
    hosts
        .iter()
        .map(|(host, address)| {
            let mut s = HostSummary { host: host.clone(), address: *address, changes: 0, error: None };
            for p in paths {
                let argv = rsync_argv(ssh, *address, p, apply, compare);
                match Command::new(&argv[0]).args(&argv[1..]).output() {
                    Ok(o) if o.status.success() => {
                        s.changes += count_changes(&String::from_utf8_lossy(&o.stdout))
                    }
                    Ok(o) => {
                        let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
                        s.error = Some(format!("{p}: rsync {}: {err}", o.status));
                        break;
                    }
                    Err(e) => {
                        s.error = Some(format!("{p}: cannot run rsync: {e}"));
                        break;
                    }
                }
            }
            s
        })
        .collect()
}

/// Lines of `--itemize-changes` output that are changes (not the `--stats` block).
pub fn count_changes(stdout: &str) -> usize {
    let item = |l: &str| {
        l.starts_with("*deleting")
            || (l.len() > 11
                && matches!(l.as_bytes()[0], b'<' | b'>' | b'c' | b'h' | b'.')
                && l.as_bytes()[11] == b' ')
    };
    stdout.lines().filter(|l| item(l) && !l.starts_with(".d..t......")).count()
}

/// `cmc sync config|content SET [--apply] [--config PATH]`; returns the process exit code
/// (0: every host done, 1: a host failed, 2: usage or config error).
pub fn cli(args: &[String]) -> i32 {
    let mut apply = false;
    let mut config_path = std::path::PathBuf::from(crate::config::DEFAULT_CONFIG_PATH);
    let mut words = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--apply" => apply = true,
            "--config" => match it.next() {
                Some(p) => config_path = p.into(),
                None => return usage("--config needs a file"),
            },
            w => words.push(w.to_string()),
        }
    }
    let what = match words.as_slice() {
        [w] if w == "config" => What::Config,
        [w, set] if w == "content" => What::Content(set.clone()),
        _ => return usage("expected `config` or `content SET`"),
    };
    let cfg = match crate::config::load_file(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let Some(ssh) = cfg.failover.ssh.clone() else {
        eprintln!("{}: failover.ssh is not set (identity_file, known_hosts)", config_path.display());
        return 2;
    };
    let abs = std::path::absolute(&config_path).unwrap_or(config_path.clone());
    let paths = match paths(&cfg, &abs, &what) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    // The config directory is small and an edit must never go unseen: compare contents.
    let compare = if what == What::Config { Compare::Checksum } else { Compare::Times };
    let summary = push(&ssh, &targets(&cfg), &paths, apply, compare);
    let verb = if apply { "changed" } else { "would change (dry run; --apply commits)" };
    for s in &summary {
        match &s.error {
            None => println!("{:<16} {:<39} {} {verb}", s.host, s.address, s.changes),
            Some(e) => println!("{:<16} {:<39} FAILED: {e}", s.host, s.address),
        }
    }
    i32::from(summary.iter().any(|s| s.error.is_some()))
}

/// The real servers that are not ATMs (ATMs reload over their admin channel), in config
/// order.
pub fn nodes(cfg: &Config) -> Vec<(String, IpAddr)> {
    targets(cfg).into_iter().filter(|(_, a)| !cfg.atms.iter().any(|atm| atm.address == *a)).collect()
}

/// Runs `command` on every host over SSH; one summary per host (`changes` unused).
pub fn run_on(ssh: &Ssh, hosts: &[(String, IpAddr)], command: &str) -> Vec<HostSummary> {
    hosts
        .iter()
        .map(|(host, address)| {
            let argv = super::remote_argv(ssh, *address, command);
            let error = match Command::new(&argv[0]).args(&argv[1..]).output() {
                Ok(o) if o.status.success() => None,
                Ok(o) => {
                    Some(format!("`{command}`: {}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim()))
                }
                Err(e) => Some(format!("cannot run ssh: {e}")),
            };
            HostSummary { host: host.clone(), address: *address, changes: 0, error }
        })
        .collect()
}

/// After a committed config push: `failover.ssh.node_reload` on every real server that is
/// not an ATM, one line per host; the exit code as [`cli`]'s. Unset: says that the real
/// servers were left to their service manager.
pub fn reload_nodes(config_path: &Path) -> i32 {
    let cfg = match crate::config::load_file(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let nodes = nodes(&cfg);
    let command = cfg.failover.ssh.as_ref().and_then(|s| s.node_reload.clone());
    let (Some(ssh), Some(command)) = (cfg.failover.ssh.as_ref(), command) else {
        if !nodes.is_empty() {
            println!(
                "real servers not reloaded: failover.ssh.node_reload is not set (their node daemons keep the old config until their service manager reloads them)"
            );
        }
        return 0;
    };
    let done = run_on(ssh, &nodes, &command);
    for s in &done {
        match &s.error {
            None => println!("{:<16} {:<39} reloaded (node_reload ran)", s.host, s.address),
            Some(e) => println!("{:<16} {:<39} reload FAILED: {e}", s.host, s.address),
        }
    }
    i32::from(done.iter().any(|s| s.error.is_some()))
}

fn usage(why: &str) -> i32 {
    eprintln!(
        "cmc sync: {why}\nusage: cmc sync config [--apply] [--config FILE]\n       cmc sync content SET [--apply] [--config FILE]"
    );
    2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itemized_changes_are_counted_and_stats_are_not() {
        let out = "\
>f+++++++++ a.txt
>f.st...... b/c.txt
cd+++++++++ newdir/
*deleting   old.txt
.d..t...... ./

Number of files: 4 (reg: 3, dir: 1)
Total file size: 12 bytes
";
        assert_eq!(count_changes(out), 4);
    }
}
