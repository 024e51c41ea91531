//! `clusterserverd` processes of a namespace test, with their logs ([`Daemon`]: captured line
//! by line; [`spawn_logged`]: to a file), and the real `cmc` run against them ([`cmc`]).
//!
//! Why here: the tests read the daemon's documented log lines (` ready `, ` role change `,
//! `reload refused`, ...) to synchronise on, so each needs the same capture and the same
//! kill-on-drop; one copy keeps the tests' waits on the same footing.
#![allow(clippy::disallowed_methods)] // reason: real processes of real-network tests

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// One daemon process (killed by PID and reaped on drop) and the log lines it wrote.
#[derive(Debug)]
pub struct Daemon {
    pub name: String,
    pub child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `clusterserverd --config CONFIG` in namespace `ns` at `RUST_LOG=info`, its state
    /// files in `run_dir` (never the machine's `/run/clusterserverd`); every stderr line is kept and echoed as `[NAME] line` (shown for a failing test).
    pub fn spawn(name: &str, ns: &str, config: &Path, run_dir: &Path) -> Daemon {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_clusterserverd"), "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("CLUSTERSERVERD_RUN_DIR", run_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn daemon");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let (sink, tag) = (Arc::clone(&log), name.to_string());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                sink.lock().expect("log").push(line);
            }
        });
        Daemon { name: name.to_string(), child, log }
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    /// Lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.lines().iter().any(|l| l.contains(needle))
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The role of its last `role change` line (`None`: never changed, i.e. backup).
    pub fn role(&self) -> Option<String> {
        self.lines().iter().rev().find_map(|l| field(l, " role change ", "role"))
    }

    pub fn is_primary(&self) -> bool {
        self.role().as_deref() == Some("primary")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A namespace lab with its daemons: the daemons are declared first, so they are killed
/// before the namespaces go ([`NetLab`] removes those, and its files and helpers). The tests
/// add their topology and config helpers in their own `impl` blocks.
#[derive(Debug)]
pub struct DaemonLab {
    pub daemons: Vec<Daemon>,
    pub net: super::netlab::NetLab,
}

impl DaemonLab {
    /// Namespaces named `FAMILY-...TAG` (see [`super::netlab::NetLab::new`]).
    pub fn new(family: &str, tag: &str) -> DaemonLab {
        DaemonLab { daemons: Vec::new(), net: super::netlab::NetLab::new(family, tag) }
    }

    pub fn ns(&mut self, role: &str) -> String {
        self.net.add_ns(role)
    }

    /// Starts `atm`'s daemon in its namespace with `config`; a running one of that name is
    /// killed first (a restart).
    pub fn start_daemon(&mut self, atm: &str, config: &Path) {
        self.daemons.retain(|d| d.name != atm);
        let run_dir = self.net.dir.join("run").join(atm);
        std::fs::create_dir_all(&run_dir).expect("run dir");
        let d = Daemon::spawn(atm, &self.net.name(atm), config, &run_dir);
        self.daemons.push(d);
    }

    pub fn daemon(&self, atm: &str) -> &Daemon {
        self.daemons.iter().find(|d| d.name == atm).expect("daemon")
    }

    pub fn daemon_mut(&mut self, atm: &str) -> &mut Daemon {
        self.daemons.iter_mut().find(|d| d.name == atm).expect("daemon")
    }

    /// The ATMs whose daemon runs and last logged the primary role.
    pub fn primaries(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for d in &mut self.daemons {
            if d.alive() && d.is_primary() {
                out.push(d.name.clone());
            }
        }
        out
    }
}

/// Starts `clusterserverd --config CONFIG` in namespace `ns` at `RUST_LOG=info` with
/// `CLUSTERSERVERD_RUN_DIR=run_dir`, its stderr appended to `log` (kept across restarts of
/// the same host, so a test can count its ` ready ` lines). The caller kills it by PID.
pub fn spawn_logged(ns: &str, config: &Path, run_dir: &Path, log: &Path) -> Child {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log");
    Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_clusterserverd"), "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("CLUSTERSERVERD_RUN_DIR", run_dir)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("daemon")
}

/// Daemons started with [`spawn_logged`], one per host, killed by PID and reaped on drop
/// (declare it before the test's [`super::netlab::NetLab`]: they run in its namespaces).
#[derive(Debug, Default)]
pub struct LoggedDaemons(Vec<(String, Child)>);

impl LoggedDaemons {
    /// `host`'s daemon is now `child` (a previous one, normally already gone, is killed).
    pub fn insert(&mut self, host: &str, child: Child) {
        if let Some(mut old) = self.take(host) {
            let _ = old.kill();
            let _ = old.wait();
        }
        self.0.push((host.to_string(), child));
    }

    /// `host`'s daemon; panics if none was started.
    pub fn get(&mut self, host: &str) -> &mut Child {
        &mut self.0.iter_mut().find(|(h, _)| h == host).expect("running").1
    }

    /// Takes `host`'s daemon out (the caller stops it).
    pub fn take(&mut self, host: &str) -> Option<Child> {
        let i = self.0.iter().position(|(h, _)| h == host)?;
        Some(self.0.remove(i).1)
    }
}

impl Drop for LoggedDaemons {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `cmc --config CONFIG --host HOST ARGS` (the real binary) run in namespace `ns`: whether
/// it succeeded, its stdout and its stderr (all three printed, for a failing test).
pub fn cmc(ns: &str, config: &Path, host: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_cmc"), "--config"])
        .arg(config)
        .args(["--host", host])
        .args(args)
        .output()
        .expect("cmc");
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    println!("cmc {host} {args:?} -> {}\n{o}{e}", out.status);
    (out.status.success(), o, e)
}

/// The value of `key=` on a line containing `marker` (the daemon's `key=value` log format).
pub fn field(line: &str, marker: &str, key: &str) -> Option<String> {
    let rest = &line[line.find(marker)? + marker.len()..];
    rest.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}
