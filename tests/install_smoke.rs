//! `scripts/install` into a temporary DESTDIR, then the installed daemon through the
//! installed SysV init script: start (waits for `ready`), status, reload, stop, status; and
//! `systemd-analyze verify` on the installed unit when systemd-analyze exists.
//!
//! The daemon runs as a cluster node of a NAT service whose real server is 127.0.0.1: a NAT
//! node configures nothing (it only reads the routing table), so the run changes nothing.
//! As root it runs in a throwaway namespace `csl-is<pid>` anyway (a node's start-up clears
//! `lo:csd<cluster id>` addresses it finds, which must never touch the host's own); without root it
//! runs as is (it could not change anything).
#![allow(clippy::disallowed_methods)] // reason: waits on a real process with the wall clock

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod support;
use support::is_root;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_clusterserverd")).parent().expect("bin dir").to_path_buf()
}

fn install(envs: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(Path::new(REPO).join("scripts/install"));
    c.arg("--bin-dir").arg(bin_dir()).current_dir(REPO);
    for k in ["DESTDIR", "PREFIX", "SYSCONFDIR", "SYSTEMD_UNIT_DIR"] {
        c.env_remove(k);
    }
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("run scripts/install")
}

struct Guard {
    dir: PathBuf,
    ns: Option<String>,
    pidfile: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Only the daemon this test started (its PID file), never by name.
        if let Some(pid) =
            std::fs::read_to_string(&self.pidfile).ok().and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        if let Some(ns) = &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn install_then_init_script_start_status_reload_stop() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("install-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let root = dir.join("root");
    let mut guard = Guard { dir: dir.clone(), ns: None, pidfile: dir.join("clusterserverd.pid") };

    // 1. Install into DESTDIR.
    let out = install(&[("DESTDIR", &root)]);
    assert!(out.status.success(), "install failed:\n{}", text(&out));
    let daemon = root.join("usr/sbin/clusterserverd");
    for (f, mode) in [
        ("usr/sbin/clusterserverd", 0o755),
        ("usr/bin/cmc", 0o755),
        ("etc/init.d/clusterserverd", 0o755),
        ("usr/lib/systemd/system/clusterserverd.service", 0o644),
        ("etc/clusterserver/secret", 0o600),
        ("etc/clusterserver/admin.token", 0o600),
    ] {
        let m = std::fs::metadata(root.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(m.permissions().mode() & 0o777, mode, "{f}");
    }
    let cfg = root.join("etc/clusterserver/clusterserver.json5");
    let check = Command::new(&daemon).args(["--check", "--config"]).arg(&cfg).output().expect("check");
    assert!(check.status.success(), "the installed example config is invalid:\n{}", text(&check));
    let asa = bin_dir().join("clusterserver-asa");
    if asa.exists() {
        for p in ["http", "smtp", "dns"] {
            let l = root.join("usr/lib/clusterserver/asa").join(p);
            assert_eq!(std::fs::read_link(&l).expect("symlink"), Path::new("../clusterserver-asa"));
        }
    } else {
        assert!(text(&out).contains("no clusterserver-asa"), "{}", text(&out));
        println!("NOTE: no clusterserver-asa binary in this build: the ASA symlinks were skipped");
    }
    // 2. A second install keeps an edited config and the secret.
    std::fs::write(&cfg, "// edited by the operator\n").expect("edit");
    let secret = std::fs::read(root.join("etc/clusterserver/secret")).expect("secret");
    let out = install(&[("DESTDIR", &root)]);
    assert!(out.status.success() && text(&out).contains("kept the existing"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&cfg).expect("cfg"), "// edited by the operator\n");
    assert_eq!(std::fs::read(root.join("etc/clusterserver/secret")).expect("secret"), secret);

    // 3. The installed init script runs the installed daemon (a NAT node of 127.0.0.1).
    let smoke = root.join("etc/clusterserver/smoke.json5");
    std::fs::write(
        &smoke,
        "{ cluster: { name: 'smoke', id: 9, secret_file: 'secret' },\n  atms: [ { name: 'atm1', address: '192.0.2.1', interface: 'eth0' } ],\n  services: [ { name: 'loop', vip: '192.0.2.99', port: 8080, forwarding: 'nat', gateway_vip: '192.0.2.254',\n                servers: [ { name: 'self', address: '127.0.0.1', port: 8080 } ] } ] }\n",
    )
    .expect("smoke config");
    let daemon_cmd = if is_root() && Command::new("ip").arg("-V").output().is_ok() {
        let ns = format!("csl-is{}", std::process::id());
        let st = Command::new("ip").args(["netns", "add", &ns]).status().expect("ip netns add");
        assert!(st.success());
        let _ = Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]).status();
        guard.ns = Some(ns.clone());
        let wrapper = dir.join("clusterserverd-in-ns");
        std::fs::write(&wrapper, format!("#!/bin/sh\nexec ip netns exec {ns} {} \"$@\"\n", daemon.display()))
            .expect("wrapper");
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        wrapper
    } else {
        daemon.clone()
    };
    let log = dir.join("clusterserverd.log");
    let init = |action: &str| -> Output {
        Command::new("sh")
            .arg(root.join("etc/init.d/clusterserverd"))
            .arg(action)
            .env("DEFAULTS", dir.join("no-defaults"))
            .env("DAEMON", &daemon_cmd)
            .env("CONFIG", &smoke)
            .env("PIDFILE", &guard.pidfile)
            .env("LOG", &log)
            .env("CLUSTERSERVERD_RUN_DIR", dir.join("run"))
            .env("READY_TIMEOUT", "10")
            .output()
            .expect("init script")
    };
    let st = init("status");
    assert_eq!(st.status.code(), Some(3), "stopped before start: {}", text(&st));
    let st = init("start");
    assert!(st.status.success() && text(&st).contains("started (pid"), "{}", text(&st));
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains(" ready node=self role=node "), "{logged}");
    let pid: u32 = std::fs::read_to_string(&guard.pidfile).expect("pid file").trim().parse().expect("pid");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let st = init("status");
    assert!(st.status.success() && text(&st).contains(&format!("running (pid {pid})")), "{}", text(&st));
    let st = init("reload");
    assert!(st.status.success(), "{}", text(&st));
    let start = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("reload: config unchanged") {
        assert!(start.elapsed() < Duration::from_secs(5), "no reload line");
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = init("stop");
    assert!(st.status.success() && text(&st).contains("stopped"), "{}", text(&st));
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the daemon still runs after stop");
    assert!(std::fs::read_to_string(&log).unwrap_or_default().contains("stopped node=self"));
    let st = init("status");
    assert_eq!(st.status.code(), Some(3), "{}", text(&st));

    // 4. systemd-analyze verify on a unit installed with PREFIX (its ExecStart must exist).
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        println!("SKIPPED: systemd-analyze is missing: the unit was not verified");
        eprintln!("SKIPPED: systemd-analyze is missing: the unit was not verified");
        return;
    }
    let prefix = dir.join("prefix");
    let units = prefix.join("units");
    let out = install(&[("PREFIX", &prefix), ("SYSTEMD_UNIT_DIR", &units)]);
    assert!(out.status.success(), "{}", text(&out));
    let unit = units.join("clusterserverd.service");
    let body = std::fs::read_to_string(&unit).expect("unit");
    assert!(
        body.contains(&format!(
            "ExecStart={}/sbin/clusterserverd --config {}/etc/clusterserver/",
            prefix.display(),
            prefix.display()
        )),
        "{body}"
    );
    let v = Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("verify");
    let complaints: Vec<String> =
        text(&v).lines().filter(|l| l.contains("clusterserverd.service")).map(str::to_string).collect();
    assert!(v.status.success() && complaints.is_empty(), "systemd-analyze verify:\n{}", text(&v));
    println!("systemd-analyze verify: the unit is valid");
}
