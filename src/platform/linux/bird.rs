//! BIRD 2 as this ATM's BGP speaker (active-active mode): the config the daemon writes for
//! it ([`render`]) and the process and control socket it drives ([`Bird`]).
//!
//! We implement no BGP. The daemon owns one BIRD process per ATM: it writes BIRD's config
//! file with the VIPs to announce as static /32 (or /128) routes, starts `bird -f` as its
//! child, and after every change rewrites the file and runs `birdc configure` (BIRD then
//! re-announces or withdraws only what changed; sessions stay up). A VIP is announced only
//! while it is in the file, so the file is the whole state: a BIRD restarted for any reason
//! announces exactly what the daemon last decided.
//!
//! BIRD dies with the daemon (`PR_SET_PDEATHSIG`, see [`super::netsys::kill_with_parent`]):
//! its TCP sessions close and the router withdraws the ATM at once, instead of forwarding
//! to an ATM whose data plane is gone. A graceful stop withdraws first ([`crate::core::announce`]),
//! waits the drain time, then stops BIRD (`birdc down`).
//!
//! Exported routes are only the `vips*` static protocols' (the export filter names them), and
//! nothing is imported or written to this host's kernel: BIRD on an ATM speaks, never routes.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::config::{Bgp, Config};

/// The BIRD config for ATM `me` of `cfg` announcing `announced`. Pure; the daemon writes it.
pub fn render(cfg: &Config, me: usize, announced: &BTreeSet<IpAddr>) -> String {
    let bgp = cfg.bgp.as_ref().expect("active-active config has a bgp section");
    let atm = &cfg.atms[me];
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Written by clusterserverd for cluster {} ATM {}: do not edit,",
        cfg.cluster.name, atm.name
    );
    let _ = writeln!(s, "# it is rewritten on every announce or withdraw.");
    let _ = writeln!(s, "router id {};", crate::config::router_id(atm.address));
    let _ = writeln!(s, "log stderr all;");
    let _ = writeln!(s, "protocol device {{ scan time 10; }}");
    for (name, v4) in [("vips4", true), ("vips6", false)] {
        let _ = writeln!(s, "protocol static {name} {{");
        let _ = writeln!(s, "  {};", if v4 { "ipv4" } else { "ipv6" });
        for vip in announced.iter().filter(|v| v.is_ipv4() == v4) {
            let len = if v4 { 32 } else { 128 };
            let _ = writeln!(s, "  route {vip}/{len} blackhole;");
        }
        let _ = writeln!(s, "}}");
    }
    if bgp.bfd {
        let _ = writeln!(s, "protocol bfd {{");
        let _ = writeln!(s, "  interface \"*\" {{");
        let _ = writeln!(s, "    min rx interval {} ms;", bgp.bfd_interval_ms);
        let _ = writeln!(s, "    min tx interval {} ms;", bgp.bfd_interval_ms);
        let _ = writeln!(s, "    multiplier {};", bgp.bfd_multiplier);
        let _ = writeln!(s, "  }};");
        let _ = writeln!(s, "}}");
    }
    for (i, n) in bgp.neighbors.iter().enumerate() {
        neighbor(&mut s, bgp, i, n);
    }
    s
}

fn neighbor(s: &mut String, bgp: &Bgp, i: usize, n: &crate::config::BgpNeighbor) {
    let _ = writeln!(s, "protocol bgp peer{i} {{");
    let _ = writeln!(s, "  local as {};", bgp.local_as);
    let _ = writeln!(s, "  neighbor {} as {};", n.address, n.peer_as);
    if n.peer_as == bgp.local_as {
        // iBGP to a directly connected router.
        let _ = writeln!(s, "  direct;");
    }
    if bgp.hold_s == 0 {
        let _ = writeln!(s, "  hold time 0;");
    } else {
        let _ = writeln!(s, "  hold time {}; keepalive time {};", bgp.hold_s, bgp.keepalive_s);
    }
    // Fast reconnects: a restarted ATM or router is back in seconds, not BIRD's minute.
    let _ = writeln!(s, "  connect delay time 1; connect retry time 2; error wait time 1, 5;");
    if bgp.bfd {
        let _ = writeln!(s, "  bfd on;");
    }
    let (family, proto) = if n.address.is_ipv4() { ("ipv4", "vips4") } else { ("ipv6", "vips6") };
    let _ = writeln!(s, "  {family} {{");
    let _ = writeln!(s, "    import none;");
    let _ = writeln!(s, "    export where proto = \"{proto}\";");
    let _ = writeln!(s, "    next hop self;");
    let _ = writeln!(s, "  }};");
    let _ = writeln!(s, "}}");
}

/// Why BIRD could not be driven.
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("cannot write the BIRD config {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot start {program}: {source}")]
    Spawn { program: PathBuf, source: io::Error },
    #[error("BIRD exited: {0}")]
    Exited(std::process::ExitStatus),
    #[error("BIRD did not open its control socket {0} in time")]
    NoSocket(PathBuf),
    #[error("`birdc {command}` failed: {output}")]
    Birdc { command: String, output: String },
}

/// How long a starting BIRD may take to open its control socket.
const START_LIMIT: Duration = Duration::from_secs(10);

/// One BIRD process owned by the daemon (module docs).
#[derive(Debug)]
pub struct Bird {
    bgp: Bgp,
    child: Child,
}

impl Bird {
    /// Writes `config` and starts BIRD in the foreground as a child that dies with the
    /// calling thread; returns once its control socket answers. A BIRD still answering on
    /// the socket (left by an earlier run of this daemon) is told to shut down first.
    pub async fn start(bgp: &Bgp, config: &str) -> Result<Bird, BirdError> {
        if birdc(bgp, &["show", "status"]).await.is_ok() {
            tracing::warn!(target: "clusterserverd::bgp", socket = %bgp.control_socket.display(), "a BIRD from an earlier run answers on the control socket: shutting it down");
            let _ = birdc(bgp, &["down"]).await;
        }
        write_config(bgp, config)?;
        let mut cmd = Command::new(&bgp.bird);
        cmd.arg("-f").arg("-c").arg(&bgp.config_file).arg("-s").arg(&bgp.control_socket);
        cmd.stdin(Stdio::null());
        super::netsys::kill_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|source| BirdError::Spawn { program: bgp.bird.clone(), source })?;
        let mut bird = Bird { bgp: bgp.clone(), child };
        let deadline = tokio::time::Instant::now() + START_LIMIT;
        loop {
            if let Some(st) = bird.child.try_wait().ok().flatten() {
                return Err(BirdError::Exited(st));
            }
            if birdc(bgp, &["show", "status"]).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bird.kill();
                return Err(BirdError::NoSocket(bgp.control_socket.clone()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(target: "clusterserverd::bgp", pid = bird.child.id(), "BIRD started");
        Ok(bird)
    }

    /// Rewrites the config and has BIRD apply it (`birdc configure`).
    pub async fn reconfigure(&mut self, config: &str) -> Result<(), BirdError> {
        if let Some(st) = self.child.try_wait().ok().flatten() {
            return Err(BirdError::Exited(st));
        }
        write_config(&self.bgp, config)?;
        let out = birdc(&self.bgp, &["configure"]).await?;
        if !out.contains("Reconfigured") && !out.contains("Reconfiguration in progress") {
            return Err(BirdError::Birdc { command: "configure".into(), output: out });
        }
        Ok(())
    }

    /// Whether the BIRD process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks BIRD to shut down (`birdc down`), then waits for it (killing it after a bound).
    pub async fn stop(mut self) {
        let _ = birdc(&self.bgp, &["down"]).await;
        for _ in 0..40 {
            if !self.running() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if self.running() {
            self.kill();
        }
    }
}

fn write_config(bgp: &Bgp, config: &str) -> Result<(), BirdError> {
    let err = |source| BirdError::Write { path: bgp.config_file.clone(), source };
    if let Some(dir) = bgp.config_file.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // Written beside and renamed: BIRD never reads a half-written file.
    let tmp = with_suffix(&bgp.config_file, ".tmp");
    std::fs::write(&tmp, config).map_err(err)?;
    std::fs::rename(&tmp, &bgp.config_file).map_err(err)
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Runs `birdc -s SOCKET ARGS` (bounded to 5 s); its output on success.
pub async fn birdc(bgp: &Bgp, args: &[&str]) -> Result<String, BirdError> {
    let command = args.join(" ");
    let mut cmd = tokio::process::Command::new(&bgp.birdc);
    cmd.arg("-s").arg(&bgp.control_socket).args(args).stdin(Stdio::null()).kill_on_drop(true);
    let fail = |output: String| BirdError::Birdc { command: command.clone(), output };
    let out = tokio::time::timeout(Duration::from_secs(5), cmd.output())
        .await
        .map_err(|_| fail("timed out".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // birdc exits 0 even for some errors; BIRD's error replies start with a 8xxx/9xxx code.
    let failed = !out.status.success() || text.lines().any(|l| l.starts_with('8') || l.starts_with('9'));
    if failed { Err(fail(text.trim().to_string())) } else { Ok(text) }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn config(bfd: bool) -> Config {
        let text = format!(
            r#"{{ cluster: {{ name: "www", id: 4, secret_file: "s", mode: "active-active" }},
            atms: [ {{ name: "lb1", address: "10.4.0.1", interface: "eth0" }},
                    {{ name: "lb2", address: "10.4.0.2", interface: "eth0" }} ],
            bgp: {{ local_as: 65001, bfd: {bfd},
                    neighbors: [ {{ address: "10.4.0.254", peer_as: 65000 }},
                                 {{ address: "fd00::fe", peer_as: 65001 }} ] }},
            services: [ {{ name: "a", vip: "10.4.0.80", port: 80, forwarding: "dr",
                          servers: [ {{ name: "s1", address: "10.4.0.11" }} ] }},
                        {{ name: "b", vip: "fd00::80", port: 80, forwarding: "dr",
                          servers: [ {{ name: "s1", address: "fd00::11" }} ] }} ] }}"#
        );
        crate::config::parse_str("t.json5", &text, &Default::default()).expect("valid")
    }

    #[test]
    fn the_config_announces_exactly_the_given_vips_per_family() {
        let cfg = config(true);
        let vips: BTreeSet<IpAddr> = ["10.4.0.80".parse().unwrap(), "fd00::80".parse().unwrap()].into();
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
        settings.bind(|| insta::assert_snapshot!("bird_conf_lb2", render(&cfg, 1, &vips)));
    }

    #[test]
    fn a_withdrawn_vip_leaves_the_config_and_bfd_is_off_by_default() {
        let text = render(&config(false), 0, &BTreeSet::new());
        assert!(!text.contains("route "), "{text}");
        assert!(!text.contains("bfd"), "{text}");
        assert!(text.contains("router id 10.4.0.1;"), "{text}");
    }
}

/// BIRD itself parses what [`render`] writes (`bird -p`), when it is installed.
#[cfg(test)]
mod parse_with_bird {
    use super::*;

    #[test]
    fn bird_accepts_the_rendered_config() {
        let bird = Path::new("/usr/sbin/bird");
        if !bird.exists() {
            eprintln!(
                "SKIP: /usr/sbin/bird is missing (scripts/install-deps installs bird2); the config is not checked by BIRD"
            );
            return;
        }
        let dir = std::env::temp_dir().join(format!("csd-bird-parse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (i, bfd) in [false, true].into_iter().enumerate() {
            let cfg = tests_config(bfd);
            let all: BTreeSet<IpAddr> = cfg.vips().into_iter().collect();
            for vips in [BTreeSet::new(), all] {
                let file = dir.join(format!("bird{i}.conf"));
                std::fs::write(&file, render(&cfg, 0, &vips)).unwrap();
                let out = Command::new(bird).arg("-p").arg("-c").arg(&file).output().unwrap();
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success(), "bird -p rejected:\n{}\n{err}", render(&cfg, 0, &vips));
            }
        }
        // The router config of the deployment guide parses too.
        let guide =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/active-active.md")).unwrap();
        let marker = "### BIRD 2 on the router\n\n```\n";
        let start = guide.find(marker).expect("guide section") + marker.len();
        let router = &guide[start..start + guide[start..].find("```").unwrap()];
        let file = dir.join("router.conf");
        std::fs::write(&file, router).unwrap();
        let out = Command::new(bird).arg("-p").arg("-c").arg(&file).output().unwrap();
        assert!(
            out.status.success(),
            "bird -p rejected the guide's router config:\n{router}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tests_config(bfd: bool) -> Config {
        super::tests::config(bfd)
    }
}
