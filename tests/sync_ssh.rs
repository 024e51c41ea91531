//! `cmc sync` over real OpenSSH and rsync, on loopback: an sshd of our own (generated host and
//! user keys in a temporary directory) runs in a private mount namespace where the mirror
//! set's directory is a bind mount of another directory, so "the remote host" sees other
//! files at the same path. Checks: the dry run (the default) changes nothing and counts what
//! would change; `--apply` copies every file; a host key that does not match fails the host.
//! Prints files/s and MB/s beside plain local rsync. Root, sshd, rsync and unshare needed,
//! else a loud SKIP.

#![allow(clippy::disallowed_methods)] // reason: waits on a real sshd and measures real copies with the wall clock

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use support::TempDir;

const FILES: usize = 1000;
const FILE_BYTES: usize = 16 * 1024;

/// The sshd we started, killed (by its pid) when dropped.
struct Sshd(Child);

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn skip_reason() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false);
    if !root {
        return Some("not root".into());
    }
    for bin in ["/usr/sbin/sshd", "/usr/bin/rsync", "/usr/bin/unshare", "/usr/bin/ssh-keygen"] {
        if !Path::new(bin).exists() {
            return Some(format!("{bin} missing (scripts/install-deps installs it)"));
        }
    }
    None
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn start_sshd(t: &Path, port: u16) -> Sshd {
    let cfg = format!(
        "Port {port}\nListenAddress 127.0.0.1\nListenAddress 127.0.0.3\nHostKey {t}/keys/host\n\
         AuthorizedKeysFile {t}/keys/authorized_keys\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n\
         PidFile none\n",
        t = t.display()
    );
    std::fs::write(t.join("sshd_config"), cfg).expect("sshd_config");
    std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
    let script = format!(
        "mount --bind {t}/remote {t}/data && mount --bind {t}/remote-conf {t}/conf && \
         exec /usr/sbin/sshd -D -e -f {t}/sshd_config",
        t = t.display()
    );
    let log = std::fs::File::create(t.join("sshd.log")).expect("log");
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stderr(log)
        .spawn()
        .expect("start sshd");
    let sshd = Sshd(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "sshd did not listen: {}",
            std::fs::read_to_string(t.join("sshd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sshd
}

fn write_config(t: &Path, port: u16, known_hosts: &str) -> std::path::PathBuf {
    let text = format!(
        r#"{{
  cluster: {{ name: "sync", id: 3, secret_file: "{t}/conf/secret" }},
  atms: [ {{ name: "atm1", address: "127.0.0.1", interface: "lo" }},
          {{ name: "atm2", address: "127.0.0.3", interface: "lo" }} ],
  services: [{{ name: "http", vip: "10.9.9.99", port: 80, forwarding: "dr",
               servers: [ {{ name: "web1", address: "127.0.0.1" }} ] }}],
  failover: {{
    ssh: {{ port: {port}, identity_file: "{t}/keys/user", known_hosts: "{t}/keys/{known_hosts}" }},
    groups: [{{ atm: "atm1", backup: "atm2",
               services: [ {{ name: "www", start_order: 10, start: ["true"], stop: ["true"] }} ],
               mirrors: [ {{ name: "content", paths: ["{t}/data/"] }} ] }}],
  }},
}}"#,
        t = t.display()
    );
    let path = t.join("conf").join(format!("cs-{known_hosts}.json5"));
    std::fs::write(&path, text).expect("config");
    path
}

fn cmc(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cmc")).args(args).output().expect("run cmc");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn content_sync_over_real_ssh_dry_run_apply_and_host_key_check() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP sync_ssh: {why}: cmc sync over real SSH NOT TESTED");
        return;
    }
    let dir = TempDir::new("sync-ssh");
    let t = dir.path();
    for d in ["keys", "data", "remote", "plain", "conf", "remote-conf"] {
        std::fs::create_dir_all(t.join(d)).expect("mkdir");
    }
    dir.write("conf/secret", "sync test secret", 0o600);
    for k in ["host", "user"] {
        let key = t.join("keys").join(k);
        sh(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", ""]).arg("-f").arg(&key));
    }
    std::fs::copy(t.join("keys/user.pub"), t.join("keys/authorized_keys")).expect("authorized_keys");
    let port = free_port();
    let host_pub = std::fs::read_to_string(t.join("keys/host.pub")).expect("host key");
    let user_pub = std::fs::read_to_string(t.join("keys/user.pub")).expect("user key");
    let known = |key: &str| format!("[127.0.0.1]:{port} {key}[127.0.0.3]:{port} {key}");
    std::fs::write(t.join("keys/known_hosts"), known(&host_pub)).expect("known_hosts");
    std::fs::write(t.join("keys/wrong_hosts"), known(&user_pub)).expect("wrong known_hosts");
    let payload = vec![b'x'; FILE_BYTES];
    for i in 0..FILES {
        std::fs::write(t.join(format!("data/f{i:04}")), &payload).expect("file");
    }
    let _sshd = start_sshd(t, port);
    let cfg = write_config(t, port, "known_hosts");
    let cfg = cfg.to_str().expect("utf-8 path");

    let (code, out) = cmc(&["sync", "content", "content", "--config", cfg]);
    assert_eq!(code, 0, "{out}");
    let counted = out.lines().filter(|l| l.contains(&format!(" {FILES} would change"))).count();
    assert_eq!(counted, 2, "the dry run counts every file for each host:\n{out}");
    assert_eq!(std::fs::read_dir(t.join("remote")).expect("remote").count(), 0, "a dry run changes nothing");

    let started = Instant::now();
    let (code, out) = cmc(&["sync", "content", "content", "--apply", "--config", cfg]);
    let ssh_s = started.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{out}");
    // atm1 and atm2 are one sshd and one remote directory: the second finds it in sync.
    assert!(out.lines().any(|l| l.starts_with("atm1") && l.ends_with(&format!(" {FILES} changed"))), "{out}");
    assert!(out.lines().any(|l| l.starts_with("atm2") && l.ends_with(" 0 changed")), "{out}");
    assert_eq!(std::fs::read_dir(t.join("remote")).expect("remote").count(), FILES);
    assert_eq!(std::fs::read(t.join("remote/f0999")).expect("copied"), payload);
    let (code, out) = cmc(&["sync", "content", "content", "--config", cfg]);
    assert!(code == 0 && out.contains(" 0 would change"), "in sync now:\n{out}");

    let started = Instant::now();
    sh(Command::new("rsync").arg("-a").arg(t.join("data/")).arg(t.join("plain/")));
    let plain_s = started.elapsed().as_secs_f64();
    let mb = (FILES * FILE_BYTES) as f64 / 1e6;
    // One real copy (atm1) plus one SSH round that finds nothing to do (atm2), against one
    // plain local copy: the figures include SSH's handshakes.
    eprintln!(
        "sync_ssh: cmc sync --apply over SSH ({FILES} files, {mb:.1} MB copied once, 2 hosts): {:.2} s ({:.0} files/s, {:.1} MB/s); plain local rsync: {:.2} s ({:.0} files/s, {:.1} MB/s)",
        ssh_s,
        FILES as f64 / ssh_s,
        mb / ssh_s,
        plain_s,
        FILES as f64 / plain_s,
        mb / plain_s
    );

    config_push_makes_the_digests_agree(t, port);

    let wrong = write_config(t, port, "wrong_hosts");
    let (code, out) = cmc(&["sync", "content", "content", "--config", wrong.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "a host key that does not match must fail:\n{out}");
    assert!(out.contains("FAILED"), "{out}");
}

/// `cmc sync config`: the config directory goes to the other hosts; a change made on this
/// host shows in the dry run and, once pushed, both sides load configs with equal digests.
fn config_push_makes_the_digests_agree(t: &Path, port: u16) {
    let cfg = write_config(t, port, "known_hosts");
    let remote = t.join("remote-conf").join(cfg.file_name().expect("name"));
    let cfg = cfg.to_str().expect("utf-8");
    let (code, out) = cmc(&["sync", "config", "--apply", "--no-reload", "--config", cfg]);
    assert_eq!(code, 0, "{out}");
    // The digest covers resolved file names: the config names its files absolutely, as
    // /etc/clusterserver/... would be on real hosts.
    let digest = |p: &Path| clusterserver::config::load_file(p).map(|c| c.digest()).expect("loads");
    assert_eq!(digest(Path::new(cfg)), digest(&remote), "pushed");
    // An operator edits the config here.
    let text = std::fs::read_to_string(cfg).expect("read").replace("id: 3", "id: 4");
    std::fs::write(cfg, text).expect("edit");
    // The edit keeps the size; give it the pushed copy's modification time as well, as an
    // edit within the same clock tick as the push would have: rsync's quick check then sees
    // nothing, and only comparing contents finds the change (CI once hit this by chance).
    let pushed_mtime = std::fs::metadata(&remote).and_then(|m| m.modified()).expect("mtime");
    std::fs::File::options()
        .write(true)
        .open(cfg)
        .and_then(|f| f.set_modified(pushed_mtime))
        .expect("set mtime");
    assert_ne!(digest(Path::new(cfg)), digest(&remote));
    let (code, out) = cmc(&["sync", "config", "--config", cfg]);
    assert!(
        code == 0 && out.lines().any(|l| l.starts_with("atm1") && l.contains(" 1 would change")),
        "{out}"
    );
    assert_ne!(digest(Path::new(cfg)), digest(&remote), "a dry run changes nothing");
    let (code, out) = cmc(&["sync", "config", "--apply", "--no-reload", "--config", cfg]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(digest(Path::new(cfg)), digest(&remote), "the digests agree once pushed");
}
