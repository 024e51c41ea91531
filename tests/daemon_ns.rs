//! Two real `clusterserverd` processes in network namespaces: election, NAT through the VIP,
//! failover on SIGKILL (with an established connection that must survive), restart as
//! backup after crash-safe clean-up, a refused bad reload, and handover on SIGTERM.
//!
//! Topology (SPEC.md lab safety: every namespace is `csl-dm<pid>-*`, veth pairs are created
//! directly inside lab namespaces, nothing stays in the root namespace; a drop guard kills
//! the processes this test started, by PID, and deletes the namespaces, even on panic):
//!
//! ```text
//!   client 10.78.1.10 --+-- [sw: bridge brf] --+-- atm1 eth0 10.78.1.1   eth1 10.78.2.1 --+
//!                       |                      +-- atm2 eth0 10.78.1.2   eth1 10.78.2.2 --+
//!                                                   [sw: bridge brb] --- server 10.78.2.20
//! ```
//!
//! VIP 10.78.1.99:8080 (NAT) to the server; the server's default gateway is the
//! `gateway_vip` 10.78.2.254, which moves with the primary. Who is primary is read from the
//! daemons' `role change` log lines (format documented in `clusterserver::daemon`).
//! Skips loudly without root.
#![allow(clippy::disallowed_methods)] // reason: a real-network test measures and waits on the wall clock

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::daemon::DaemonLab;
use support::traffic::{echo_once, in_netns};
use support::wait::wait_until;
use support::{in_ns, is_root, ns_output, run};

const HELPER_ENV: &str = "CSL_DM_HELPER";
const VIP: &str = "10.78.1.99";
const PORT: u16 = 8080;

/// Helper process: a line echo server on `CSL_DM_HELPER=ADDR`, many connections, bounded life.
#[test]
fn helper_echo_server() {
    support::echo_server_helper(HELPER_ENV, Duration::from_secs(180));
}

/// The lab: its daemons and namespaces ([`DaemonLab`]), one config file per ATM.
type Lab = DaemonLab;

impl Lab {
    fn numbered() -> Lab {
        // Tests of this binary run in parallel: each lab has its own number.
        static LABS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Lab::new("csl-dm", &format!("-{n}"))
    }

    fn config(&self, atm: &str) -> PathBuf {
        self.net.dir.join(format!("{atm}.json5"))
    }

    fn start_atm(&mut self, atm: &str) {
        let config = self.config(atm);
        self.start_daemon(atm, &config);
    }
}

/// One request through the VIP: connect, send a line, read it back.
fn request(client: &str, timeout: Duration) -> bool {
    let addr: SocketAddr = format!("{VIP}:{PORT}").parse().expect("addr");
    echo_once(client, addr, timeout)
}

fn exchange(s: &mut TcpStream, word: &str) -> bool {
    let line = format!("{word}\n");
    if s.write_all(line.as_bytes()).is_err() {
        return false;
    }
    let mut buf = vec![0u8; line.len()];
    s.read_exact(&mut buf).is_ok() && buf == line.as_bytes()
}

fn topology(lab: &mut Lab) -> (String, String) {
    let (sw, client, server) = (lab.ns("sw"), lab.ns("client"), lab.ns("server"));
    let (a1, a2) = (lab.ns("atm1"), lab.ns("atm2"));
    lab.net.bridge(&sw, "brf");
    lab.net.bridge(&sw, "brb");
    for ns in [&a1, &a2] {
        lab.net.forwarding(ns);
    }
    lab.net.attach(&client, "eth0", "10.78.1.10/24", &sw, "c0", "brf");
    lab.net.attach(&a1, "eth0", "10.78.1.1/24", &sw, "a1f", "brf");
    lab.net.attach(&a2, "eth0", "10.78.1.2/24", &sw, "a2f", "brf");
    lab.net.attach(&a1, "eth1", "10.78.2.1/24", &sw, "a1b", "brb");
    lab.net.attach(&a2, "eth1", "10.78.2.2/24", &sw, "a2b", "brb");
    lab.net.attach(&server, "eth0", "10.78.2.20/24", &sw, "s0", "brb");
    in_ns(&server, &["ip", "route", "add", "default", "via", "10.78.2.254"]);
    (client, server)
}

const CONFIG: &str = r#"{
  cluster: { name: "lab", id: 78, heartbeat_port: 17100, secret_file: "secret" },
  atms: [ { name: "atm1", address: "10.78.1.1", interface: "eth0" },
          { name: "atm2", address: "10.78.1.2", interface: "eth0" } ],
  timers: { heartbeat_ms: 100, dead_after: 3 },
  arp: { gratuitous_count: 3, gratuitous_interval_ms: 100, refresh_s: 5 },
  services: [ { name: "echo", vip: "10.78.1.99", port: 8080, forwarding: "nat", scheduler: "rr",
                gateway_vip: "10.78.2.254",
                servers: [ { name: "s1", address: "10.78.2.20", port: 8080 } ] } ],
}
"#;

fn write_configs(lab: &Lab) {
    use std::os::unix::fs::PermissionsExt;
    let secret = lab.net.dir.join("secret");
    std::fs::write(&secret, "lab-secret-0123456789\n").expect("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    for atm in ["atm1", "atm2"] {
        std::fs::write(lab.config(atm), CONFIG).expect("config");
    }
}

/// Seconds since midnight UTC, now.
fn time_of_day() -> f64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_micros()) / 1e6
}

/// Seconds since midnight UTC of a log line's timestamp (`2026-11-22T03:10:00.123456Z ...`).
fn log_time_of_day(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = t.split(':');
    let (h, m, s): (f64, f64, f64) =
        (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Milliseconds from `since` (time of day) to `atm`'s last promotion line.
fn promoted_after_ms(lab: &mut Lab, atm: &str, since: f64) -> Option<f64> {
    let lines = lab.daemon_mut(atm).lines();
    let line = lines.iter().rev().find(|l| l.contains(" role change ") && l.contains("role=primary"))?;
    Some((log_time_of_day(line)? - since) * 1000.0)
}

/// Polls requests until one succeeds; returns the time it took.
fn outage(client: &str, limit: Duration) -> Duration {
    // Each attempt is bounded by 50 ms (the lab's RTT is microseconds): the figure is the
    // outage to within one attempt.
    wait_until("the service through the VIP", limit, || request(client, Duration::from_millis(50)))
}

fn steering_rules(ns: &str) -> usize {
    ns_output(ns, &["ip", "rule", "show"]).lines().filter(|l| l.starts_with("17100:")).count()
}

#[test]
fn two_daemons_elect_fail_over_and_hand_over() {
    if std::env::var(HELPER_ENV).is_ok() {
        return;
    }
    if !is_root() || !Path::new("/dev/net/tun").exists() {
        println!("SKIPPED: needs root (and /dev/net/tun)");
        eprintln!("SKIPPED: needs root (and /dev/net/tun)");
        return;
    }
    let mut lab = Lab::numbered();
    let (client, server) = topology(&mut lab);
    write_configs(&lab);
    let srv = support::spawn_echo_helper(&server, HELPER_ENV, &format!("0.0.0.0:{PORT}"));
    lab.net.others.push(srv);
    lab.start_atm("atm1");
    lab.start_atm("atm2");

    // Election: exactly one primary, and the service answers through the VIP.
    wait_until("one primary", Duration::from_secs(10), || lab.primaries().len() == 1);
    let first = lab.primaries()[0].clone();
    let other = if first == "atm1" { "atm2" } else { "atm1" };
    println!("primary: {first}");
    outage(&client, Duration::from_secs(5));

    // A long-lived connection, established through the first primary.
    let mut long = in_netns(&client, || {
        let addr: SocketAddr = format!("{VIP}:{PORT}").parse().expect("addr");
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("long-lived connect")
    })
    .join()
    .expect("client thread");
    long.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    assert!(exchange(&mut long, "before"), "long-lived connection before failover");
    // Warm-up: the connection talks for 3 s. The backup's heartbeat loss estimator starts
    // from a 1 % prior and needs about 20 clean heartbeats before it waits only `dead_after`
    // (core::arbitration); a primary killed younger than that is detected a heartbeat later.
    // It also lets the sync tick (100 ms) carry the connection to the backup.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(3) {
        assert!(exchange(&mut long, "warm"), "long-lived connection during warm-up");
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGKILL of the primary's daemon (its host stays up).
    let killed_at = Instant::now();
    let killed_tod = time_of_day();
    lab.daemon_mut(&first).child.kill().expect("kill");
    let _ = lab.daemon_mut(&first).child.wait();
    let took = outage(&client, Duration::from_secs(5));
    println!("SIGKILL failover: service back after {:?}", killed_at.elapsed().max(took));
    assert_eq!(lab.primaries(), vec![other.to_string()]);
    println!(
        "SIGKILL failover: {other} promoted {:?} ms after the kill",
        promoted_after_ms(&mut lab, other, killed_tod)
    );
    assert!(exchange(&mut long, "after-kill"), "the long-lived connection did not survive the failover");
    let first_ns = format!("{}-{first}", lab.net.prefix);
    assert!(ns_output(&first_ns, &["ip", "link", "show", "csd78"]).is_empty(), "TUN outlived its daemon");

    // Restart: it clears its leftovers and comes back as a backup.
    lab.start_atm(&first);
    wait_until("restarted daemon ready", Duration::from_secs(10), || {
        lab.daemon_mut(&first).logged(" ready ")
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(lab.primaries(), vec![other.to_string()], "exactly one primary after the restart");
    assert_eq!(
        steering_rules(&first_ns),
        2,
        "steering rules after restart: {}",
        ns_output(&first_ns, &["ip", "rule"])
    );
    assert!(request(&client, Duration::from_secs(1)));

    // A bad config on SIGHUP is refused and the running one kept.
    std::fs::write(lab.config(other), "{ cluster: ").expect("bad config");
    let pid = lab.daemon_mut(other).child.id().to_string();
    run(&["kill", "-HUP", &pid]);
    wait_until("reload refused", Duration::from_secs(5), || lab.daemon_mut(other).logged("reload refused"));
    assert!(lab.daemon_mut(other).alive() && lab.daemon_mut(other).is_primary());
    std::fs::write(lab.config(other), CONFIG).expect("config");

    // A valid, changed config on SIGHUP (to the backup) whose plan is live: applied in
    // place, no restart; the primary is untouched.
    std::fs::write(lab.config(&first), CONFIG.replace("refresh_s: 5", "refresh_s: 6")).expect("config");
    let first_pid = lab.daemon_mut(&first).child.id().to_string();
    run(&["kill", "-HUP", &first_pid]);
    wait_until("live reload applied", Duration::from_secs(10), || {
        lab.daemon_mut(&first).logged("reload applied live")
    });
    assert!(lab.daemon_mut(&first).logged("key=arp.refresh_s how=live"), "the plan is logged key by key");
    assert_eq!(lab.daemon_mut(&first).count(" ready "), 1, "a live reload does not restart");
    assert_eq!(lab.primaries(), vec![other.to_string()], "a backup's reload moved the primary");
    // A key that needs the planned handover (the table is allocated at start-up): the
    // in-process restart, the key named in the log; still the primary is untouched.
    let bigger = CONFIG
        .replace("refresh_s: 5", "refresh_s: 6")
        .replace("  timers:", "  table: { max_connections: 200000 },\n  timers:");
    std::fs::write(lab.config(&first), bigger).expect("config");
    run(&["kill", "-HUP", &first_pid]);
    wait_until("reload by restart", Duration::from_secs(10), || lab.daemon_mut(&first).count(" ready ") == 2);
    assert!(lab.daemon_mut(&first).logged("restarting with the reloaded config"));
    assert!(lab.daemon_mut(&first).logged("keys=table.max_connections"));
    assert_eq!(lab.primaries(), vec![other.to_string()], "a backup's reload moved the primary");
    assert_eq!(steering_rules(&first_ns), 2);

    // SIGTERM of the primary: it hands over to the backup and exits 0.
    let termed_at = Instant::now();
    let termed_tod = time_of_day();
    run(&["kill", "-TERM", &pid]);
    let mut status = None;
    wait_until("the stopped daemon to exit", Duration::from_secs(5), || {
        status = lab.daemon_mut(other).child.try_wait().expect("wait");
        status.is_some()
    });
    assert!(status.is_some_and(|s| s.success()), "exit status {status:?}");
    wait_until("handover", Duration::from_secs(5), || lab.daemon_mut(&first).is_primary());
    let took = outage(&client, Duration::from_secs(5));
    println!(
        "SIGTERM handover: old primary exited and the service answered {:?} after the signal",
        termed_at.elapsed().max(took)
    );
    println!(
        "SIGTERM handover: {first} promoted {:?} ms after the signal",
        promoted_after_ms(&mut lab, &first, termed_tod)
    );
    assert!(exchange(&mut long, "after-term"), "the long-lived connection did not survive the handover");
}

/// A host that is only a real server runs as a node until SIGTERM, then exits 0 (its NAT
/// service needs no set-up: it only checks the route); a host the config does not describe
/// exits 1 and says why. Both run in a lab namespace.
#[test]
fn role_from_addresses_node_and_none() {
    if std::env::var(HELPER_ENV).is_ok() {
        return;
    }
    if !is_root() {
        println!("SKIPPED: needs root");
        eprintln!("SKIPPED: needs root");
        return;
    }
    let mut lab = Lab::numbered();
    write_configs(&lab);
    let ns = lab.ns("host");
    run(&["ip", "link", "add", "v0", "netns", &ns, "type", "veth", "peer", "name", "v1", "netns", &ns]);
    in_ns(&ns, &["ip", "link", "set", "v0", "up"]);
    let daemon = |lab: &Lab| {
        Command::new("ip")
            .args(["netns", "exec", &ns, env!("CARGO_BIN_EXE_clusterserverd"), "--config"])
            .arg(lab.config("atm1"))
            .output()
            .expect("run daemon")
    };
    in_ns(&ns, &["ip", "addr", "add", "10.99.0.1/24", "dev", "v0"]);
    let out = daemon(&lab);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("neither an ATM nor a real server"), "{err}");
    in_ns(&ns, &["ip", "addr", "add", "10.78.2.20/24", "dev", "v0"]);
    let log = lab.net.dir.join("node.log");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns, env!("CARGO_BIN_EXE_clusterserverd"), "--config"])
        .arg(lab.config("atm1"))
        .env("CLUSTERSERVERD_RUN_DIR", lab.net.dir.join("run"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("run daemon");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the node's ready line", Duration::from_secs(5), || text().contains(" ready node=s1"));
    run(&["kill", "-TERM", &child.id().to_string()]);
    let mut status = None;
    wait_until("the node daemon's exit", Duration::from_secs(5), || {
        status = child.try_wait().expect("wait");
        status.is_some()
    });
    let err = text();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{err}");
    assert!(err.contains("cluster node only") && err.contains("stopped node=s1"), "{err}");
}
