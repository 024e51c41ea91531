//! Debian's OpenSSH server on lab hosts, for the sync tools and service failover's mirror
//! sets: fresh keys every run (a user key, one host key per host), keys only, host keys
//! checked against a `known_hosts` naming each host's address. Each host's sshd listens on
//! its own address, port 22, inside its namespace, and sees the host's file view
//! ([`Lab::set_view`]), so what a client writes over SSH lands in that host's own files.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clusterserver::config::Ssh;

use crate::lab::Lab;
use crate::topology::{Plan, Role};

const SSHD: &str = "/usr/sbin/sshd";

/// Where the keys and sshd configs of a run are.
pub fn keys_dir(dir: &Path) -> PathBuf {
    dir.join("ssh")
}

/// The plan's hosts of `roles`, by name and address, in plan order.
pub fn hosts(plan: &Plan, roles: &[Role]) -> Vec<(String, Ipv4Addr)> {
    roles.iter().flat_map(|r| plan.of_role(*r)).map(|h| (h.name.clone(), h.addr())).collect()
}

/// Generates the keys and `known_hosts` for `hosts` (removing a previous run's) and returns
/// the client side as the config's `failover.ssh`.
pub fn prepare(dir: &Path, hosts: &[(String, Ipv4Addr)]) -> anyhow::Result<Ssh> {
    for tool in [SSHD, "/usr/bin/ssh-keygen", "/usr/bin/rsync", "/usr/bin/unshare"] {
        if !Path::new(tool).exists() {
            bail!("{tool} is missing (the lab's SSH hosts need it): run scripts/install-deps as root");
        }
    }
    let keys = keys_dir(dir);
    if keys.exists() {
        std::fs::remove_dir_all(&keys).with_context(|| format!("removing {}", keys.display()))?;
    }
    std::fs::create_dir_all(&keys)?;
    let user = keys.join("user");
    std::fs::write(keys.join("authorized_keys"), keygen(&user)? + "\n")?;
    let mut known = String::new();
    for (name, addr) in hosts {
        known.push_str(&format!("{addr} {}\n", keygen(&keys.join(format!("host-{name}")))?));
    }
    std::fs::write(keys.join("known_hosts"), known)?;
    Ok(Ssh {
        user: "root".into(),
        port: 22,
        identity_file: user,
        known_hosts: keys.join("known_hosts"),
        node_reload: None,
    })
}

/// A new ed25519 key at `path`; its public half as `type key`.
fn keygen(path: &Path) -> anyhow::Result<String> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "clusterlab", "-f"])
        .arg(path)
        .output()
        .context("running ssh-keygen")?;
    if !out.status.success() {
        bail!("ssh-keygen {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
    let public = std::fs::read_to_string(path.with_extension("pub"))?;
    Ok(public.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
}

/// Starts sshd on every host of `hosts` (keys from [`prepare`]), as `HOST/sshd`. Set the
/// hosts' file views first: sshd and its sessions see the view it started with.
pub fn start(lab: &mut Lab, hosts: &[(String, Ipv4Addr)]) -> anyhow::Result<()> {
    let keys = keys_dir(&lab.dir);
    // The privilege-separation directory (Debian's package makes it at boot).
    std::fs::create_dir_all("/run/sshd")?;
    for (name, addr) in hosts {
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
        lab.spawn(&format!("{name}/sshd"), name, Path::new(SSHD), &args)?;
    }
    Ok(())
}
