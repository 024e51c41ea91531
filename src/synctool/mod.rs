//! rsync over OpenSSH, one way, for mirror sets (service failover's mirror-back and its
//! schedule) and, later, `cmc sync`.
//!
//! Every copy goes through [`rsync_argv`]: keys only (`BatchMode=yes`: a password prompt
//! fails instead of hanging), host keys checked against the config's `known_hosts`
//! (`StrictHostKeyChecking=yes`, nothing learnt on the fly), and a dry run unless asked to
//! commit (seed 003: "there is no turning back"). A directory (a path ending in `/`) is
//! copied with `--delete`, so the target becomes identical to the source; a file is copied
//! as it is. Missing parent directories are created (`--mkpath`, rsync 3.2.3 and later).
//!
//! What counts as changed: rsync's quick check (size and modification time) by default
//! compares whole seconds only, so an edit that keeps the size within the second of the
//! last push went unseen (an operator changing `id: 3` to `id: 4` right after a sync). Times
//! are compared to the nanosecond (`--modify-window=-1`), and [`Compare::Checksum`] (used
//! for the config directory, which is small) compares contents.

pub mod push;

use std::net::IpAddr;

use crate::config::Ssh;

/// The `ssh` client and its options: keys only, host keys checked, bounded connect.
fn ssh_argv(ssh: &Ssh) -> Vec<String> {
    let mut argv: Vec<String> = vec!["ssh".into(), "-p".into(), ssh.port.to_string()];
    argv.extend(["-i".into(), ssh.identity_file.display().to_string()]);
    for opt in ["BatchMode=yes", "StrictHostKeyChecking=yes"] {
        argv.extend(["-o".into(), opt.into()]);
    }
    argv.extend(["-o".into(), format!("UserKnownHostsFile={}", ssh.known_hosts.display())]);
    for opt in ["IdentitiesOnly=yes", "ConnectTimeout=10"] {
        argv.extend(["-o".into(), opt.into()]);
    }
    argv
}

/// The `ssh` command rsync runs (`-e`), as one string.
pub fn ssh_command(ssh: &Ssh) -> String {
    ssh_argv(ssh).iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
}

/// `user@host` as ssh and rsync take it (an IPv6 address in brackets for rsync's `:`).
fn login(ssh: &Ssh, host: IpAddr, brackets: bool) -> String {
    match host {
        IpAddr::V6(a) if brackets => format!("{}@[{a}]", ssh.user),
        a => format!("{}@{a}", ssh.user),
    }
}

/// The argv that runs the shell command `command` on `host` over SSH (same options as the
/// copies).
pub fn remote_argv(ssh: &Ssh, host: IpAddr, command: &str) -> Vec<String> {
    let mut argv = ssh_argv(ssh);
    argv.push(login(ssh, host, false));
    argv.push("--".into());
    argv.push(command.into());
    argv
}

/// How rsync decides that a file differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    /// Size and modification time to the nanosecond: cheap, for content of any size.
    Times,
    /// Contents (`--checksum`): every file is read on both sides; for small trees.
    Checksum,
}

/// The argv that copies `path` (absolute; a trailing `/` marks a directory) to the same path
/// on `host`. `apply: false` is a dry run that itemises what would change.
pub fn rsync_argv(ssh: &Ssh, host: IpAddr, path: &str, apply: bool, compare: Compare) -> Vec<String> {
    let mut argv: Vec<String> =
        ["rsync", "-a", "--mkpath", "--itemize-changes", "--stats", "--modify-window=-1"]
            .map(String::from)
            .into();
    if compare == Compare::Checksum {
        argv.push("--checksum".into());
    }
    if crate::config::MirrorSet::is_dir(path) {
        argv.push("--delete".into());
    }
    if !apply {
        argv.push("--dry-run".into());
    }
    argv.push("-e".into());
    argv.push(ssh_command(ssh));
    argv.push("--".into());
    argv.push(path.to_string());
    argv.push(format!("{}:{path}", login(ssh, host, true)));
    argv
}

/// Quotes `s` for the shell rsync hands `-e` to (single quotes, `'` escaped).
fn shell_quote(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn ssh() -> Ssh {
        Ssh {
            user: "root".into(),
            port: 2222,
            identity_file: PathBuf::from("/etc/cs/keys/id ed25519"),
            known_hosts: PathBuf::from("/etc/cs/keys/known_hosts"),
            node_reload: Some("systemctl reload clusterserverd".into()),
        }
    }

    #[test]
    fn a_remote_command_uses_the_same_checked_keys_only_ssh() {
        let a = remote_argv(&ssh(), "fd00::2".parse().expect("ip"), "systemctl reload clusterserverd");
        let tail: Vec<&str> = a[a.len() - 3..].iter().map(String::as_str).collect();
        assert_eq!(tail, ["root@fd00::2", "--", "systemctl reload clusterserverd"]);
        let opts = a.join(" ");
        assert!(opts.contains("-o BatchMode=yes") && opts.contains("-o StrictHostKeyChecking=yes"), "{opts}");
        assert!(opts.contains("-o UserKnownHostsFile=/etc/cs/keys/known_hosts") && opts.contains("-p 2222"));
    }

    #[test]
    fn directories_are_mirrored_with_delete_and_dry_run_is_the_default() {
        let a = rsync_argv(&ssh(), "10.0.0.2".parse().expect("ip"), "/var/spool/lpd/", false, Compare::Times);
        assert!(a.contains(&"--delete".to_string()) && a.contains(&"--dry-run".to_string()));
        assert_eq!(a.last().map(String::as_str), Some("root@10.0.0.2:/var/spool/lpd/"));
        assert_eq!(a[a.len() - 2], "/var/spool/lpd/");
        let e = &a[a.iter().position(|x| x == "-e").expect("-e") + 1];
        assert!(e.contains("StrictHostKeyChecking=yes") && e.contains("BatchMode=yes"), "{e}");
        assert!(e.contains("-i '/etc/cs/keys/id ed25519'") && e.contains("-p 2222"), "{e}");
    }

    #[test]
    fn files_are_copied_without_delete_and_apply_commits() {
        let a = rsync_argv(&ssh(), "fd00::2".parse().expect("ip"), "/etc/printcap", true, Compare::Checksum);
        assert!(!a.contains(&"--delete".to_string()) && !a.contains(&"--dry-run".to_string()));
        assert!(a.contains(&"--checksum".to_string()) && a.contains(&"--modify-window=-1".to_string()));
        assert_eq!(a.last().map(String::as_str), Some("root@[fd00::2]:/etc/printcap"));
    }
}
