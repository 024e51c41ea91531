//! Lab namespaces: names, netlink sessions inside a namespace, stale-run cleanup.
//!
//! Safety contract (SPEC.md, lab safety): every name starts with [`PREFIX`] followed by the
//! creating process's PID and a per-process counter (`csl-lab<pid>x<n>-<host>`), so a later
//! run can tell its own leftovers (creator gone) from another live lab's namespaces. Every
//! netlink call goes through [`netlink_in`], which opens the netlink socket *inside* the
//! namespace on a dedicated thread with its own runtime: no tokio worker ever calls setns.

use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, anyhow, bail};
use netns_rs::NetNs;

/// Prefix of every namespace a lab run creates.
pub const PREFIX: &str = "csl-lab";
const NETNS_DIR: &str = "/var/run/netns";
static RUNS: AtomicUsize = AtomicUsize::new(0);

/// A fresh run id: `<pid>x<n>`.
pub fn new_run_id() -> String {
    format!("{}x{}", std::process::id(), RUNS.fetch_add(1, Ordering::Relaxed))
}

/// The namespace name of `host` in run `run_id`.
pub fn ns_name(run_id: &str, host: &str) -> String {
    format!("{PREFIX}{run_id}-{host}")
}

/// Lab namespaces that exist now (all runs).
pub fn list_lab_namespaces() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut v: Vec<String> = dir
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(PREFIX))
        .collect();
    v.sort();
    v
}

/// The PID that created a lab namespace, from its name.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split(['x', '-']).next()?.parse().ok()
}

/// Removes `csl-lab*` namespaces whose creating process is gone (other labs may be running in
/// parallel: theirs are kept). Processes still running inside a stale namespace are left to
/// the kernel: a namespace file is only unlinked, never a process killed that we did not start.
pub fn remove_stale() -> Vec<String> {
    let mut removed = Vec::new();
    for name in list_lab_namespaces() {
        let alive = owner_pid(&name).is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive && delete(&name).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// Creates a named namespace (like `ip netns add`).
pub fn create(name: &str) -> anyhow::Result<()> {
    if !name.starts_with(PREFIX) {
        bail!("refusing to create namespace {name:?}: lab namespaces start with {PREFIX}");
    }
    NetNs::new(name).map_err(|e| anyhow!("creating namespace {name}: {e}"))?;
    Ok(())
}

/// Deletes a lab namespace (its interfaces go with it).
pub fn delete(name: &str) -> anyhow::Result<()> {
    if !name.starts_with(PREFIX) {
        bail!("refusing to delete namespace {name:?}: not a lab namespace");
    }
    let ns = NetNs::get(name).map_err(|e| anyhow!("opening namespace {name}: {e}"))?;
    ns.remove().map_err(|e| anyhow!("removing namespace {name}: {e}"))
}

/// Path of a namespace file (for `setns_by_fd`).
pub fn path(name: &str) -> String {
    format!("{NETNS_DIR}/{name}")
}

/// Runs `f` with a netlink handle whose socket lives in namespace `ns`, on a dedicated thread
/// with a current-thread runtime, and returns its result.
pub fn netlink_in<F, Fut, T>(ns: &str, f: F) -> anyhow::Result<T>
where
    F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    let name = ns.to_string();
    let thread = std::thread::Builder::new().name(format!("nl-{ns}")).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = {
            let _guard = rt.enter();
            let netns = NetNs::get(&name).map_err(|e| anyhow!("opening namespace {name}: {e}"))?;
            let (conn, handle, _) = netns
                .run(|_| rtnetlink::new_connection())
                .map_err(|e| anyhow!("entering namespace {name}: {e}"))?
                .context("netlink socket")?;
            rt.spawn(conn);
            handle
        };
        rt.block_on(f(handle))
    })?;
    thread.join().map_err(|_| anyhow!("netlink thread for {ns} panicked"))?
}

/// Runs a command inside a lab namespace (`ip netns exec NS ...`) and checks its status.
pub fn exec(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    exec_input(ns, args, None)
}

/// Like [`exec`], with `input` on the command's standard input.
pub fn exec_input(ns: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    use std::io::Write;
    use std::process::Stdio;
    if !ns.starts_with(PREFIX) {
        bail!("refusing to run {args:?} outside a lab namespace ({ns})");
    }
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("ip netns exec {ns} {}", args.join(" ")))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip netns exec {ns} {}: {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_is_read_from_the_name() {
        assert_eq!(owner_pid("csl-lab1234x0-atm1"), Some(1234));
        assert_eq!(owner_pid("csl-lab1234x12-switch"), Some(1234));
        assert_eq!(owner_pid("csl-tn33-0-atm"), None);
        assert_eq!(ns_name("9x1", "atm1"), "csl-lab9x1-atm1");
    }
}
