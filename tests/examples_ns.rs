//! The real daemon on every example in `config/`: an accepted config must never crash it.
//! Each example runs as its first ATM in a namespace of its own (`csl-ex<pid>-N`) whose
//! interface (a veth named as the config says, its peer in the same namespace) carries the
//! ATM's address; the daemon must say `ready`, stay up 2 s and exit 0 on SIGTERM.
#![allow(clippy::disallowed_methods)] // reason: a real process is waited on with the wall clock

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clusterserver::config::load_file;
use support::{in_ns, is_root, json5_files, secrets_dir, stem};

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn the_daemon_starts_ready_and_stops_cleanly_on_every_example() {
    if !is_root() || !Path::new("/dev/net/tun").exists() {
        println!("SKIPPED: needs root (and /dev/net/tun)");
        eprintln!("SKIPPED: needs root (and /dev/net/tun)");
        return;
    }
    let dir = secrets_dir("examples-ns");
    for (i, path) in json5_files("config").iter().enumerate() {
        let copy = dir.path().join(path.file_name().expect("name"));
        std::fs::copy(path, &copy).expect("copy");
        let cfg = load_file(&copy).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let atm = &cfg.atms[0];
        let ns = Ns(format!("csl-ex{}-{i}", std::process::id()));
        assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().expect("ip").success());
        in_ns(&ns.0, &["ip", "link", "set", "lo", "up"]);
        in_ns(&ns.0, &["ip", "link", "add", &atm.interface, "type", "veth", "peer", "name", "peer0"]);
        let (plen, nodad) = if atm.address.is_ipv4() { (24, None) } else { (64, Some("nodad")) };
        let cidr = format!("{}/{plen}", atm.address);
        let mut add = vec!["ip", "addr", "add", cidr.as_str(), "dev", atm.interface.as_str()];
        add.extend(nodad);
        in_ns(&ns.0, &add);
        in_ns(&ns.0, &["ip", "link", "set", &atm.interface, "up"]);
        in_ns(&ns.0, &["ip", "link", "set", "peer0", "up"]);
        in_ns(&ns.0, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_clusterserverd"), "--config"])
            .arg(&copy)
            .env("CLUSTERSERVERD_RUN_DIR", dir.path().join(format!("run-{i}")))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("daemon");
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let name = stem(path);
        let start = Instant::now();
        let mut log = Vec::new();
        let ready = loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(l) => {
                    let r = l.contains(" ready ");
                    log.push(l);
                    if r {
                        break true;
                    }
                }
                Err(_) if start.elapsed() > Duration::from_secs(15) => break false,
                Err(_) => {
                    if child.try_wait().expect("wait").is_some() {
                        break false;
                    }
                }
            }
        };
        assert!(ready, "{name}: the daemon never said ready:\n{}", log.join("\n"));
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            child.try_wait().expect("wait").is_none(),
            "{name}: the daemon died after ready:\n{}",
            log.join("\n")
        );
        let pid = child.id() as i32;
        // `ip netns exec` execs the daemon: this PID is the daemon's.
        assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill").success());
        let t = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break Some(st);
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(l) = rx.try_recv() {
            log.push(l);
        }
        assert!(
            status.is_some_and(|s| s.success()),
            "{name}: exit {status:?} after SIGTERM:\n{}",
            log.join("\n")
        );
        assert!(!log.iter().any(|l| l.contains("panicked")), "{name}: a panic:\n{}", log.join("\n"));
        println!("{name}: ready in {:?}, stopped cleanly", start.elapsed());
    }
}
