//! `clusterlab config-sync`: seed 003's config synchronisation with running daemons, over
//! real OpenSSH and rsync (issue #7's "a digest mismatch shows in `cmc status` until it is
//! synced").
//!
//! Two ATMs and a real server, each with its own config directory at the same path (a
//! per-host view, [`Lab::set_view`]) and its own sshd ([`crate::sshd`]). The ATMs run
//! `clusterserverd`; every `cmc` runs on an ATM, in its namespace and view, as an operator
//! would. The run:
//! 1. both ATMs start on the same config: each sees the other's digest as the same;
//! 2. the operator edits atm1's config (a server weight) and reloads atm1: both ATMs show
//!    the other as DIFFERS (heartbeats carry the digest) and atm2's daemon logs it;
//! 3. `cmc sync config` (the dry run) lists the change for atm2 and the real server and
//!    changes nothing;
//! 4. `cmc sync config --apply` pushes it, reloads the real server's node daemon over SSH
//!    (`failover.ssh.node_reload`) and every ATM over its admin channel: both ATMs show
//!    "same" again, the node daemon logs the reload, and every host's copy of the config has
//!    atm1's digest;
//! 5. `cmc sync content` pushes a mirror set of many files (measured beside plain rsync).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clustersim::scenario::Scenario;

use crate::lab::{Lab, check_interrupted};
use crate::topology::{Plan, Role};
use crate::{nodes, ns, runner, sshd};

const SCENARIO: &str =
    "{ name: 'config-sync', topology: { atms: 2, nodes: 1, clients: 1, forwarding: 'nat' },
  failover: { services: ['www'] }, steps: [], duration_ms: 1000 }";

/// Files and bytes of the content pushed in step 5.
const FILES: usize = 500;
const FILE_BYTES: usize = 16 * 1024;

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
}

/// The config directory as every host sees it.
fn conf_dir(dir: &Path) -> PathBuf {
    dir.join("conf")
}

fn host_conf(dir: &Path, host: &str) -> PathBuf {
    dir.join("hosts").join(host).join("conf")
}

/// The mirror set as every host sees it, and each host's own copy.
fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

fn host_data(dir: &Path, host: &str) -> PathBuf {
    dir.join("hosts").join(host).join("data")
}

/// Where each host keeps its daemon's PID file (as an init script's `/run`), and each
/// host's own copy.
fn pid_dir(dir: &Path) -> PathBuf {
    dir.join("pids")
}

fn host_pids(dir: &Path, host: &str) -> PathBuf {
    dir.join("hosts").join(host).join("pids")
}

/// Runs the whole sequence in a fresh lab under `dir`; an error names the step that failed.
pub fn run(dir: &Path) -> anyhow::Result<Report> {
    runner::preflight()?;
    let daemon = runner::daemon_path()?;
    let cmc = daemon.with_file_name("cmc");
    if !cmc.exists() {
        bail!("cmc not found at {} (cargo build --bin cmc)", cmc.display());
    }
    let s = Scenario::parse(SCENARIO)?;
    let plan = Plan::new(&s, &ns::new_run_id())?;
    let conf = conf_dir(dir);
    for d in [&conf, &dir.join("hosts"), &data_dir(dir), &pid_dir(dir), &dir.join("plain")] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    std::fs::create_dir_all(&conf)?;
    let mut cfg = runner::lab_config(&s, &plan, &conf, false)?;
    let hosts = sshd::hosts(&plan, &[Role::Atm, Role::Node]);
    let mut ssh = sshd::prepare(dir, &hosts)?;
    // What an init script's `reload` does: SIGHUP to the PID in its PID file.
    ssh.node_reload = Some(format!("kill -HUP \"$(cat {}/clusterserverd.pid)\"", pid_dir(dir).display()));
    cfg.failover.ssh = Some(ssh);
    // atm1's group: a service that does nothing, and the mirror set `data` (never copied on
    // a schedule: only step 5's `cmc sync content` moves it).
    std::fs::create_dir_all(data_dir(dir))?;
    for g in &mut cfg.failover.groups {
        for svc in &mut g.services {
            svc.start = vec!["/bin/true".into()];
            svc.stop = vec!["/bin/true".into()];
        }
        for m in &mut g.mirrors {
            m.paths = vec![format!("{}/", data_dir(dir).display())];
            m.interval_s = 0;
        }
    }
    // cmc on atm1 asks every ATM to reload after a push: the ATMs admit each other.
    cfg.security.admin_allow = std::iter::once("127.0.0.0/8".parse()?)
        .chain(sshd::hosts(&plan, &[Role::Atm]).iter().map(|(_, a)| ipnet::IpNet::from(IpAddr::V4(*a))))
        .collect();
    let cfg_path = conf.join("clusterserver.json5");
    runner::write_config(&cfg, &cfg_path)?;
    std::fs::create_dir_all(pid_dir(dir))?;
    for (h, _) in &hosts {
        copy_dir(&conf, &host_conf(dir, h))?;
        std::fs::create_dir_all(host_data(dir, h))?;
        std::fs::create_dir_all(host_pids(dir, h))?;
    }
    let mut lab = Lab::up(plan, dir)?;
    for (h, _) in &hosts {
        lab.set_view(h, &host_conf(dir, h), &conf)?;
        lab.set_view(h, &host_data(dir, h), &data_dir(dir))?;
        lab.set_view(h, &host_pids(dir, h), &pid_dir(dir))?;
    }
    sshd::start(&mut lab, &hosts)?;
    // Both ATMs and the real server run clusterserverd (the server as a node).
    for h in ["atm1", "atm2", "node1"] {
        nodes::start_one(&mut lab, &daemon, h, &cfg_path)?;
        nodes::wait_ready(&mut lab, &format!("{h}/daemon"), 0, 10_000)?;
        let pid = lab.pid(&format!("{h}/daemon"))?;
        std::fs::write(host_pids(dir, h).join("clusterserverd.pid"), format!("{pid}\n"))?;
    }
    let mut r = Report::default();
    let c = |lab: &Lab, host: &str, args: &[&str]| cmc_in(lab, &cmc, host, &cfg_path, args);

    // 1. The same config everywhere.
    for (me, peer) in [("atm1", "atm2"), ("atm2", "atm1")] {
        wait_for(&lab, &cmc, &cfg_path, me, peer, false, Duration::from_secs(20))
            .with_context(|| format!("step 1: {me} never saw {peer} with the same config"))?;
    }
    r.lines.push("1. both ATMs start on one config: each shows the other as `same`".into());

    // 2. An operator edits atm1's config and reloads atm1 alone.
    let edited = host_conf(dir, "atm1").join("clusterserver.json5");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&edited)?)?;
    v["services"][0]["servers"][0]["weight"] = serde_json::json!(60);
    std::fs::write(&edited, serde_json::to_string_pretty(&v)?)?;
    let (ok, out) = c(&lab, "atm1", &["reload"])?;
    if !ok {
        bail!("step 2: cmc reload on atm1 failed:\n{out}");
    }
    let started = Instant::now();
    for (me, peer) in [("atm2", "atm1"), ("atm1", "atm2")] {
        wait_for(&lab, &cmc, &cfg_path, me, peer, true, Duration::from_secs(20))
            .with_context(|| format!("step 2: {me} never showed {peer}'s config as differing"))?;
    }
    let seen_ms = started.elapsed().as_millis();
    let (_, table) = c(&lab, "atm2", &["status"])?;
    let logged = lab.log_text("atm2/daemon").contains("peer runs a different config");
    if !logged {
        bail!("step 2: atm2's daemon did not log the mismatch");
    }
    r.lines.push(format!(
        "2. atm1 edited and reloaded: both ATMs show the other as DIFFERS within {seen_ms} ms, atm2 logs it; atm2's `cmc status`:"
    ));
    r.lines.extend(table.lines().map(|l| format!("     {l}")));

    // 3. The dry run names what would change and changes nothing.
    let before = digest(&host_conf(dir, "atm2").join("clusterserver.json5"))?;
    let (ok, out) = c(&lab, "atm1", &["sync", "config"])?;
    let would = |host: &str| out.lines().any(|l| l.starts_with(host) && l.contains(" 1 would change"));
    if !ok || !would("atm2") || !would("node1") {
        bail!("step 3: the dry run should list one change for atm2 and node1:\n{out}");
    }
    if digest(&host_conf(dir, "atm2").join("clusterserver.json5"))? != before {
        bail!("step 3: the dry run changed atm2's config");
    }
    wait_for(&lab, &cmc, &cfg_path, "atm1", "atm2", true, Duration::from_secs(1))
        .context("step 3: after the dry run atm2 should still differ")?;
    r.lines.push("3. `cmc sync config` (dry run) lists 1 change for atm2 and node1, changes nothing".into());
    r.lines.extend(out.lines().map(|l| format!("     {l}")));

    // 4. Push and reload: the digests agree again.
    let role_changes = |lab: &Lab| -> usize {
        ["atm1/daemon", "atm2/daemon"].iter().map(|l| lab.log_text(l).matches(" role change ").count()).sum()
    };
    let changes_before = role_changes(&lab);
    let started = Instant::now();
    let (ok, out) = c(&lab, "atm1", &["sync", "config", "--apply"])?;
    let reloaded = |host: &str| out.lines().any(|l| l.starts_with(host) && l.contains("reloaded"));
    if !ok || !reloaded("atm2") || !reloaded("node1") {
        bail!("step 4: `cmc sync config --apply` should push and reload node1 and atm2:\n{out}");
    }
    let pushed_ms = started.elapsed().as_millis();
    // node1's daemon got the SIGHUP over SSH and runs the pushed config.
    let node_log = lab.log_text("node1/daemon");
    if !node_log.contains("reload applied live") {
        bail!("step 4: node1's daemon did not reload the pushed config:\n{node_log}");
    }
    if lab.exited("node1/daemon").is_some() {
        bail!("step 4: node1's daemon exited after the reload:\n{node_log}");
    }
    for (me, peer) in [("atm1", "atm2"), ("atm2", "atm1")] {
        wait_for(&lab, &cmc, &cfg_path, me, peer, false, Duration::from_secs(20))
            .with_context(|| format!("step 4: {me} still shows {peer}'s config as differing"))?;
    }
    let agreed_ms = started.elapsed().as_millis();
    // A weight change is live (`cmc reload --plan` says so): the rolling reload moves no
    // role at all.
    let moved = role_changes(&lab) - changes_before;
    if moved > 0 {
        bail!("step 4: {moved} role changes during the push (a weight change reloads live: none)");
    }
    // atm1 kept running through the push (it already ran the new config) and saw atm2
    // take it up live.
    let agreed_logged = lab.log_text("atm1/daemon").contains("peer runs the same config again");
    if !agreed_logged {
        bail!("step 4: atm1 did not log that atm2 runs the same config again");
    }
    let want = digest(&edited)?;
    for (h, _) in &hosts {
        if digest(&host_conf(dir, h).join("clusterserver.json5"))? != want {
            bail!("step 4: {h}'s config does not have atm1's digest after the push");
        }
    }
    r.lines.push(format!(
        "4. `cmc sync config --apply`: pushed and reloaded in {pushed_ms} ms (node1 over SSH, then the ATMs: backup first, primary last; {moved} role changes); node1's daemon logged the reload; both ATMs show `same` {agreed_ms} ms after it began; every host's config has atm1's digest"
    ));
    r.lines.extend(out.lines().map(|l| format!("     {l}")));

    // 5. Content: many files from atm1 to every host, beside a plain local rsync.
    let source = host_data(dir, "atm1");
    for i in 0..FILES {
        let body: Vec<u8> = (0..FILE_BYTES).map(|b| ((b * 31 + i * 7) % 251) as u8).collect();
        std::fs::write(source.join(format!("file-{i:04}")), body)?;
    }
    let (ok, out) = c(&lab, "atm1", &["sync", "content", "data"])?;
    let would = |host: &str| {
        out.lines().any(|l| l.starts_with(host) && l.contains(&format!(" {FILES} would change")))
    };
    if !ok || !would("atm2") || !would("node1") {
        bail!("step 5: the dry run should list {FILES} new files for atm2 and node1:\n{out}");
    }
    let started = Instant::now();
    let (ok, out) = c(&lab, "atm1", &["sync", "content", "data", "--apply"])?;
    let ssh_s = started.elapsed().as_secs_f64();
    if !ok {
        bail!("step 5: `cmc sync content data --apply` failed:\n{out}");
    }
    for h in ["atm2", "node1"] {
        if !same_files(&source, &host_data(dir, h))? {
            bail!("step 5: {h}'s copy of the set differs from atm1's after the push");
        }
    }
    let started = Instant::now();
    let plain = std::process::Command::new("rsync")
        .arg("-a")
        .arg(format!("{}/", source.display()))
        .arg(dir.join("plain"))
        .status()?;
    let plain_s = started.elapsed().as_secs_f64();
    if !plain.success() {
        bail!("step 5: plain rsync failed");
    }
    let (files, mb) = ((2 * FILES) as f64, (2 * FILES * FILE_BYTES) as f64 / 1e6);
    r.lines.push(format!(
        "5. `cmc sync content data --apply` to 2 hosts over SSH: {FILES} files of {} KiB each: {ssh_s:.2} s ({:.0} files/s, {:.1} MB/s); plain local rsync of one copy: {plain_s:.2} s ({:.0} files/s, {:.1} MB/s)",
        FILE_BYTES / 1024,
        files / ssh_s,
        mb / ssh_s,
        FILES as f64 / plain_s,
        mb / 2.0 / plain_s,
    ));
    r.lines.extend(out.lines().map(|l| format!("     {l}")));
    drop(lab);
    Ok(r)
}

/// Whether two flat directories hold the same file names with the same contents.
fn same_files(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let list = |d: &Path| -> anyhow::Result<Vec<(std::ffi::OsString, Vec<u8>)>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(d)? {
            let e = e?;
            v.push((e.file_name(), std::fs::read(e.path())?));
        }
        v.sort();
        Ok(v)
    };
    Ok(list(a)? == list(b)?)
}

/// Runs `cmc ARGS --config CFG` on `host` (its namespace and view): success and output.
fn cmc_in(lab: &Lab, cmc: &Path, host: &str, cfg: &Path, args: &[&str]) -> anyhow::Result<(bool, String)> {
    check_interrupted()?;
    let mut argv: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    argv.extend(["--config".into(), cfg.display().to_string(), "--timeout-ms".into(), "5000".into()]);
    let out = lab.command(host, cmc, &argv)?.output().with_context(|| format!("running cmc on {host}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// Polls `cmc status --json` on `me` until its view of `peer` has been heard and its config
/// differs (or not) as `differs` says.
fn wait_for(
    lab: &Lab,
    cmc: &Path,
    cfg: &Path,
    me: &str,
    peer: &str,
    differs: bool,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let (ok, out) = cmc_in(lab, cmc, me, cfg, &["status", "--json"])?;
        if ok && let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) {
            let p = v["peers"].as_array().and_then(|ps| ps.iter().find(|p| p["name"] == peer));
            if let Some(p) = p
                && p["up"] == true
                && p["config_differs"] == differs
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("last `cmc status --json` on {me}:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn digest(path: &Path) -> anyhow::Result<[u8; 32]> {
    // Loaded with the daemon's own loader: the digest the heartbeats carry.
    clusterserver::config::load_file(path)
        .map(|c| c.digest())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Copies the files of `from` (flat: a config directory) to `to`, keeping their modes and
/// modification times (and the directory's), as a previous `cmc sync` would have left them.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    let same_time = |src: &Path, dst: &Path| -> anyhow::Result<()> {
        let t = std::fs::metadata(src)?.modified()?;
        std::fs::File::open(dst)?.set_modified(t).with_context(|| format!("mtime of {}", dst.display()))
    };
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_file() {
            let dst = to.join(e.file_name());
            std::fs::copy(e.path(), &dst).with_context(|| format!("copying {}", e.path().display()))?;
            same_time(&e.path(), &dst)?;
        }
    }
    same_time(from, to)
}
