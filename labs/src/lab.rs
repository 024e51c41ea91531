//! The lab guard: owns the namespaces and processes of one run and removes them all on drop
//! (normal exit, error, panic) and on Ctrl-C / SIGTERM ([`install_signal_handler`] sets a
//! flag that the runner polls; it returns an error, and unwinding drops the guard).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::ns;
use crate::topology::{self, Plan};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Ctrl-C and SIGTERM set a flag instead of killing the process, so cleanup runs.
pub fn install_signal_handler() {
    let _ = ctrlc::set_handler(|| {
        eprintln!("clusterlab: interrupted, cleaning up");
        INTERRUPTED.store(true, Ordering::SeqCst);
    });
}

/// Fails once Ctrl-C or SIGTERM was received.
pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// One process the lab started, inside a lab namespace.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub host: String,
    pub log: PathBuf,
}

/// Namespaces and processes of one run; everything removed on drop.
#[derive(Debug)]
pub struct Lab {
    pub plan: Plan,
    pub dir: PathBuf,
    namespaces: Vec<String>,
    /// Keyed by a label like `atm1/daemon`.
    procs: BTreeMap<String, Proc>,
    /// Processes stopped or crashed on purpose, kept to be reaped.
    dead: Vec<Child>,
    /// Per host: bind mounts (source onto target) every process started on it sees, so
    /// that hosts which share this machine's filesystem still have files of their own at
    /// the same path (a mirror set, a config directory), as separate machines would.
    views: BTreeMap<String, Vec<(PathBuf, PathBuf)>>,
}

impl Lab {
    /// Removes stale lab namespaces, then builds `plan`'s topology.
    pub fn up(plan: Plan, dir: &Path) -> anyhow::Result<Lab> {
        let stale = ns::remove_stale();
        if !stale.is_empty() {
            eprintln!("clusterlab: removed stale namespaces of finished runs: {}", stale.join(" "));
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        clear_previous_run(dir)?;
        let mut lab = Lab {
            plan,
            dir: dir.to_path_buf(),
            namespaces: Vec::new(),
            procs: BTreeMap::new(),
            dead: Vec::new(),
            views: BTreeMap::new(),
        };
        let plan = lab.plan.clone();
        topology::build(&plan, &mut lab.namespaces)?;
        Ok(lab)
    }

    /// Gives `host` its own files at `target`: every process started on it from now on
    /// sees `source` there (a bind mount in a mount namespace of the process's own; nothing
    /// outside it changes, and it goes away with the process).
    pub fn set_view(&mut self, host: &str, source: &Path, target: &Path) -> anyhow::Result<()> {
        self.plan.host(host)?;
        self.views.entry(host.into()).or_default().push((source.into(), target.into()));
        Ok(())
    }

    /// The command that runs `program args` in `host`'s network namespace and file view.
    /// The process keeps its PID through every step (`ip netns exec`, `unshare` without
    /// `--fork` and `sh` all exec), so the lab signals the program itself.
    pub fn command(&self, host: &str, program: &Path, args: &[String]) -> anyhow::Result<Command> {
        let nsname = &self.plan.host(host)?.ns;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", nsname]);
        // Each host's daemon keeps its state files (node set-up, server overrides) in the
        // lab's directory, never in the machine's /run/clusterserverd.
        let run = self.dir.join("run").join(host);
        std::fs::create_dir_all(&run)?;
        cmd.env(clusterserver::platform::linux::node::STATE_DIR_ENV, &run);
        match self.views.get(host).filter(|v| !v.is_empty()) {
            None => {
                cmd.arg(program);
            }
            Some(binds) => {
                // `sh -c SCRIPT sh SRC1 DST1 … PROGRAM ARGS`: paths as arguments, never quoted
                // into the script.
                let mut script = String::new();
                for i in 0..binds.len() {
                    script.push_str(&format!("mount --bind \"${}\" \"${}\" && ", 2 * i + 1, 2 * i + 2));
                }
                script.push_str(&format!("shift {} && exec \"$@\"", 2 * binds.len()));
                cmd.args(["unshare", "--mount", "--propagation", "private", "sh", "-c", &script, "sh"]);
                for (src, dst) in binds {
                    cmd.arg(src).arg(dst);
                }
                cmd.arg(program);
            }
        }
        cmd.args(args);
        Ok(cmd)
    }

    /// Starts `program args` inside `host`'s namespace (and file view, [`Lab::set_view`]) as
    /// `label`, output to `DIR/label.log`.
    pub fn spawn(&mut self, label: &str, host: &str, program: &Path, args: &[String]) -> anyhow::Result<u32> {
        check_interrupted()?;
        let nsname = self.plan.host(host)?.ns.clone();
        let log = self.dir.join(format!("{}.log", label.replace('/', "-")));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let child = self
            .command(host, program, args)?
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {} in {nsname}", program.display()))?;
        let pid = child.id();
        if let Some(old) = self.procs.insert(label.into(), Proc { child, host: host.into(), log }) {
            self.dead.push(old.child);
        }
        Ok(pid)
    }

    pub fn pid(&self, label: &str) -> anyhow::Result<u32> {
        self.procs.get(label).map(|p| p.child.id()).with_context(|| format!("no process {label}"))
    }

    pub fn log_of(&self, label: &str) -> Option<&Path> {
        self.procs.get(label).map(|p| p.log.as_path())
    }

    /// What `label` has logged so far (empty if it never ran or the file is unreadable).
    pub fn log_text(&self, label: &str) -> String {
        self.log_of(label).and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
    }

    /// Sends `sig` to the process `label` (only processes this lab started, by PID).
    pub fn signal(&mut self, label: &str, sig: Signal) -> anyhow::Result<()> {
        let pid = self.pid(label)?;
        kill(Pid::from_raw(pid as i32), sig).with_context(|| format!("{sig} to {label} ({pid})"))
    }

    /// Whether `label` has exited (and its status).
    pub fn exited(&mut self, label: &str) -> Option<std::process::ExitStatus> {
        self.procs.get_mut(label).and_then(|p| p.child.try_wait().ok().flatten())
    }

    /// Waits up to `ms` for `label` to exit; kills it after.
    pub fn wait_or_kill(&mut self, label: &str, ms: u64) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let steps = ms / 10;
        for _ in 0..steps {
            if let Some(st) = self.exited(label) {
                return Ok(Some(st));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if let Some(p) = self.procs.get_mut(label) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        Ok(None)
    }

    /// Namespaces created so far.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Kills every process, deletes every namespace. Idempotent.
    pub fn teardown(&mut self) {
        for (_, p) in std::mem::take(&mut self.procs) {
            let mut c = p.child;
            // A stopped process must be woken to die promptly of SIGKILL? SIGKILL works on
            // stopped processes; SIGCONT anyway so nothing lingers in T state.
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
        for mut c in std::mem::take(&mut self.dead) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for name in std::mem::take(&mut self.namespaces).iter().rev() {
            if let Err(e) = ns::delete(name) {
                eprintln!("clusterlab: cleanup: {e:#}");
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Removes a previous run's process logs, captures and load records from `dir`: logs are
/// appended to within a run (a restarted daemon continues its file), so a reused output
/// directory would otherwise mix two runs' role changes.
fn clear_previous_run(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let stale =
            path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "log" | "csv" | "pcap"));
        if stale && path.is_file() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}
