//! Shared by the integration tests: a temporary directory holding the secret and token files
//! that example and bad configs name (git keeps no 0600 modes, so they are made here), and
//! the clean-up of namespaces a killed test run left behind. For the namespace tests, one
//! module per concern:
//!
//! * [`netlab`]: namespaces, bridges and veth links, and the guard that removes them;
//! * [`daemon`]: `clusterserverd` processes with their logs, and `cmc` against them;
//! * [`traffic`]: code inside a namespace, the servers' responder, clients through a VIP;
//! * [`wait`]: polling with a deadline;
//! * [`ipv6`]: what the IPv6 tests share (skip rule, addresses without DAD, neighbours);
//! * [`tun`], [`processors`]: the TUN shell tests' topology, shell thread and checking
//!   client, and their minimal NAT, IP-in-IP and DR processors.
//!
//! One harness for every test binary (`mod support;`): the TUN tests used to have their own
//! (`tests/common/`) with a second namespace guard, root check and `ip netns exec` wrapper.
//!
//! (Each test binary compiles this module on its own and uses part of it, hence the
//! `dead_code` allowance.)

#![allow(dead_code)]

pub mod daemon;
pub mod ipv6;
pub mod netlab;
pub mod processors;
pub mod traffic;
pub mod tun;
pub mod wait;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("clusterserver-test-{label}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, contents: &str, mode: u32) {
        let path = self.0.join(name);
        fs::write(&path, contents).expect("write file");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The files configs refer to: good ones (`secret`, `admin.token`, mode 0600) and bad ones
/// (`world-readable.secret` 0644, `group-readable.token` 0640, `empty.secret`, and the
/// directory `secret.d`). `missing.secret` and `missing.token` are left out on purpose.
pub fn secrets_dir(label: &str) -> TempDir {
    let dir = TempDir::new(label);
    dir.write("secret", "0123456789abcdef0123456789abcdef\n", 0o600);
    dir.write("admin.token", "test-admin-token\n", 0o600);
    dir.write("world-readable.secret", "0123456789abcdef\n", 0o644);
    dir.write("group-readable.token", "token\n", 0o640);
    dir.write("empty.secret", "", 0o600);
    fs::create_dir(dir.path().join("secret.d")).expect("mkdir");
    dir
}

/// `*.json5` files of a directory under the crate, sorted by name.
pub fn json5_files(dir: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(Path::new(MANIFEST_DIR).join(dir))
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json5"))
        .collect();
    out.sort();
    out
}

pub fn stem(path: &Path) -> String {
    path.file_stem().expect("file stem").to_string_lossy().into_owned()
}

/// Deletes the namespaces `PREFIX<pid>-*` whose creating test process is gone (a run killed
/// before its guard could clean up); other runs' namespaces are kept.
pub fn remove_stale_namespaces(prefix: &str) {
    let Ok(dir) = fs::read_dir("/var/run/netns") else { return };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else { continue };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::process::Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// Runs a command to completion; panics with its stderr unless it succeeded.
pub fn run(args: &[&str]) {
    let out = std::process::Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The standard output of a command run in namespace `ns`.
pub fn ns_output(ns: &str, args: &[&str]) -> String {
    let out =
        std::process::Command::new("ip").args(["netns", "exec", ns]).args(args).output().expect("spawn");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command in namespace `ns` to completion; panics with its stderr unless it succeeded.
pub fn in_ns(ns: &str, args: &[&str]) {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    run(&all);
}

/// Whether the tests run as root (namespace tests skip loudly otherwise).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Starts this test binary's `helper_echo_server` test in namespace `ns` as a real echo
/// server on `listen` ([`echo_server_helper`] reads it from `env`). The caller keeps the
/// child and kills it by PID (a lab's `others`).
pub fn spawn_echo_helper(ns: &str, env: &str, listen: &str) -> std::process::Child {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(std::env::current_exe().expect("current test binary"))
        .args(["helper_echo_server", "--exact", "--nocapture", "--test-threads=1"])
        .env(env, listen)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("echo helper")
}

/// The body of a namespace test's helper process: a line echo server on the address in the
/// environment variable `env` (nothing to do without it: then it is a plain test run), one
/// thread a connection, exiting after `life` so a lost helper cannot outlive its test for long.
#[allow(clippy::disallowed_methods)] // reason: a real helper process's bounded life, no simulator
pub fn echo_server_helper(env: &str, life: std::time::Duration) {
    use std::io::{BufRead, BufReader, Write};
    let Ok(addr) = std::env::var(env) else { return };
    std::thread::spawn(move || {
        std::thread::sleep(life);
        std::process::exit(3);
    });
    let listener = std::net::TcpListener::bind(&addr).expect("bind");
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut w = conn.try_clone().expect("clone");
            let mut r = BufReader::new(conn);
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if w.write_all(line.as_bytes()).is_err() {
                    break;
                }
                line.clear();
            }
        });
    }
}
