//! The admin channel against two real `clusterserverd` processes in network namespaces:
//! the door (a namespace outside the allow list is refused; a wrong token changes nothing;
//! malformed, oversized and slow requests are cut off), a burst of 10,000 requests from an
//! allowed host while heartbeats and forwarding are measured, and every `cmc` action
//! end to end (the real `cmc` binary, run inside the management namespace).
//!
//! ```text
//!   client 10.79.1.10 --+                         +-- atm1 eth0 10.79.1.1  eth1 10.79.2.1 --+
//!   mgmt   10.79.1.50 --+-- [sw: bridge brf] -----+-- atm2 eth0 10.79.1.2  eth1 10.79.2.2 --+
//!   rogue  10.79.1.66 --+                              [sw: bridge brb] --- server 10.79.2.20
//! ```
//!
//! The admin allow list is loopback and 10.79.1.50/32 (mgmt); `rogue` is on the same segment
//! but not in it. The heartbeat jitter is measured by a UDP listener in `client` that
//! receives the primary's broadcast heartbeats (arrival gaps, before and during the burst).
//! Lab safety as in `daemon_ns.rs`: namespaces `csl-am<pid>-*`, processes killed by PID
//! and namespaces removed by a drop guard, even on panic. Skips loudly without root.
#![allow(clippy::disallowed_methods)] // reason: a real-network test measures and waits on the wall clock

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clusterserver::admin::client::{Client, ClientError};
use clusterserver::admin::model::{ServiceStatus, Stats, Status};
use support::daemon::DaemonLab;
use support::traffic::{echo_once, in_netns};
use support::wait::wait_until;
use support::{in_ns, is_root};

const HELPER_ENV: &str = "CSL_AM_HELPER";
const VIP: &str = "10.79.1.99";
const PORT: u16 = 8080;
const ADMIN_PORT: u16 = 17101;
const TOKEN: &str = "lab-admin-token-0123456789";
/// Requests in the burst, and how many run at once.
const BURST: usize = 10_000;
const BURST_PARALLEL: usize = 8;

/// Helper process: a line echo server on `CSL_AM_HELPER=ADDR`, bounded life.
#[test]
fn helper_echo_server() {
    support::echo_server_helper(HELPER_ENV, Duration::from_secs(300));
}

/// The lab: its daemons and namespaces ([`DaemonLab`]), one config for both ATMs.
type Lab = DaemonLab;

impl Lab {
    fn config(&self) -> PathBuf {
        self.net.dir.join("cs.json5")
    }

    fn start_atm(&mut self, atm: &str) {
        let config = self.config();
        self.start_daemon(atm, &config);
    }

    /// `cmc --config CFG --host ATM ARGS` run in namespace `ns`.
    fn cmc(&self, ns: &str, atm: &str, args: &[&str]) -> (bool, String, String) {
        support::daemon::cmc(ns, &self.config(), atm_addr(atm), args)
    }
}

fn atm_addr(atm: &str) -> &'static str {
    if atm == "atm1" { "10.79.1.1" } else { "10.79.1.2" }
}

fn other(atm: &str) -> &'static str {
    if atm == "atm1" { "atm2" } else { "atm1" }
}

fn block<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt").block_on(fut)
}

/// An admin client of `atm`, made and used inside `ns`.
fn admin<R: Send + 'static>(
    ns: &str,
    atm: &str,
    token: &str,
    f: impl AsyncFnOnce(Client) -> R + Send + 'static,
) -> R {
    let addr: SocketAddr = format!("{}:{ADMIN_PORT}", atm_addr(atm)).parse().expect("addr");
    let c = Client::new(addr, Some(token.to_string()));
    in_netns(ns, move || block(f(c))).join().expect("admin thread")
}

fn status(ns: &str, atm: &str) -> Option<Status> {
    admin(ns, atm, TOKEN, async |c| c.get::<Status>("/v1/status").await.ok())
}

fn primary_of(ns: &str) -> Option<String> {
    let p: Vec<String> = ["atm1", "atm2"]
        .iter()
        .filter(|a| status(ns, a).is_some_and(|s| s.role == "primary"))
        .map(|a| a.to_string())
        .collect();
    (p.len() == 1).then(|| p[0].clone())
}

/// One request through the VIP from `client` (the echo helper behind it).
fn request(client: &str, timeout: Duration) -> bool {
    let addr: SocketAddr = format!("{VIP}:{PORT}").parse().expect("addr");
    echo_once(client, addr, timeout)
}

/// Raw bytes to `atm`'s admin port from `ns`; the raw answer.
fn raw(ns: &str, atm: &str, bytes: Vec<u8>) -> String {
    let addr: SocketAddr = format!("{}:{ADMIN_PORT}", atm_addr(atm)).parse().expect("addr");
    in_netns(ns, move || {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            return "connect failed".into();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
        let _ = s.write_all(&bytes);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .join()
    .expect("raw")
}

const CONFIG: &str = r#"{
  cluster: { name: "lab", id: 79, heartbeat_port: 17100, admin_port: 17101, secret_file: "secret" },
  atms: [ { name: "atm1", address: "10.79.1.1", interface: "eth0" },
          { name: "atm2", address: "10.79.1.2", interface: "eth0" } ],
  timers: { heartbeat_ms: 100, dead_after: 3 },
  security: { admin_allow: ["127.0.0.1/32", "10.79.1.50/32"], admin_deny: ["0.0.0.0/0"],
              token_file: "admin.token" },
  services: [ { name: "echo", vip: "10.79.1.99", port: 8080, forwarding: "nat", scheduler: "wrr",
                gateway_vip: "10.79.2.254",
                servers: [ { name: "s1", address: "10.79.2.20", port: 8080, weight: 10 } ],
                checks: [ { kind: "tcp", interval_ms: 300, timeout_ms: 200, rise: 1, fall: 2 } ] } ],
}
"#;

fn setup(lab: &mut Lab) -> (String, String, String) {
    let (sw, client, server) = (lab.ns("sw"), lab.ns("client"), lab.ns("server"));
    let (mgmt, rogue) = (lab.ns("mgmt"), lab.ns("rogue"));
    let (a1, a2) = (lab.ns("atm1"), lab.ns("atm2"));
    for br in ["brf", "brb"] {
        lab.net.bridge(&sw, br);
    }
    for ns in [&a1, &a2] {
        lab.net.forwarding(ns);
    }
    lab.net.attach_broadcast(&client, "eth0", "10.79.1.10/24", &sw, "c0", "brf");
    lab.net.attach_broadcast(&mgmt, "eth0", "10.79.1.50/24", &sw, "m0", "brf");
    lab.net.attach_broadcast(&rogue, "eth0", "10.79.1.66/24", &sw, "r0", "brf");
    lab.net.attach_broadcast(&a1, "eth0", "10.79.1.1/24", &sw, "a1f", "brf");
    lab.net.attach_broadcast(&a2, "eth0", "10.79.1.2/24", &sw, "a2f", "brf");
    lab.net.attach_broadcast(&a1, "eth1", "10.79.2.1/24", &sw, "a1b", "brb");
    lab.net.attach_broadcast(&a2, "eth1", "10.79.2.2/24", &sw, "a2b", "brb");
    lab.net.attach_broadcast(&server, "eth0", "10.79.2.20/24", &sw, "s0", "brb");
    in_ns(&server, &["ip", "route", "add", "default", "via", "10.79.2.254"]);
    use std::os::unix::fs::PermissionsExt;
    for (f, t) in [("secret", "lab-secret-0123456789\n"), ("admin.token", TOKEN)] {
        let p = lab.net.dir.join(f);
        std::fs::write(&p, t).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    std::fs::write(lab.config(), CONFIG).expect("config");
    let srv = support::spawn_echo_helper(&server, HELPER_ENV, &format!("0.0.0.0:{PORT}"));
    lab.net.others.push(srv);
    lab.start_atm("atm1");
    lab.start_atm("atm2");
    (client, mgmt, rogue)
}

/// Arrival gaps (ms) of the heartbeats from `from` seen by a listener in `ns`, until `stop`.
fn heartbeat_gaps(
    ns: &str,
    from: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, f64)>> {
    in_netns(ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:17100").expect("heartbeat listener");
        sock.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        let mut buf = [0u8; 256];
        let mut last: Option<Instant> = None;
        let mut gaps = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok((_, src)) = sock.recv_from(&mut buf) else { continue };
            if src.ip().to_string() != from {
                continue;
            }
            let now = Instant::now();
            if let Some(l) = last {
                gaps.push((now, now.duration_since(l).as_secs_f64() * 1000.0));
            }
            last = Some(now);
        }
        gaps
    })
}

fn summary(gaps: &[f64]) -> (f64, f64, f64, f64) {
    let mut g = gaps.to_vec();
    g.sort_by(f64::total_cmp);
    let n = g.len().max(1) as f64;
    let mean = g.iter().sum::<f64>() / n;
    let sd = (g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let p99 = g.get(((g.len() as f64) * 0.99) as usize).or(g.last()).copied().unwrap_or(0.0);
    (mean, sd, p99, g.last().copied().unwrap_or(0.0))
}

#[test]
fn admin_channel_in_a_lab() {
    if std::env::var(HELPER_ENV).is_ok() {
        return;
    }
    if !is_root() || !Path::new("/dev/net/tun").exists() {
        println!("SKIPPED: needs root (and /dev/net/tun)");
        eprintln!("SKIPPED: needs root (and /dev/net/tun)");
        return;
    }
    let mut lab = Lab::new("csl-am", "");
    let (client, mgmt, rogue) = setup(&mut lab);
    wait_until("one primary, by the admin API", Duration::from_secs(15), || primary_of(&mgmt).is_some());
    let p = primary_of(&mgmt).expect("primary");
    let b = other(&p);
    println!("primary: {p}");
    wait_until("the service through the VIP", Duration::from_secs(5), || {
        request(&client, Duration::from_millis(200))
    });
    wait_until("peers see each other", Duration::from_secs(5), || {
        status(&mgmt, &p).is_some_and(|s| s.peers.iter().all(|x| x.up && !x.config_differs))
    });

    door(&lab, &mgmt, &rogue, &p);
    let through_vip = burst(&lab, &client, &mgmt, &p, b);
    actions(&lab, &client, &mgmt, &p, through_vip);
}

/// ACL, token, malformed, oversized and slow requests.
fn door(lab: &Lab, mgmt: &str, rogue: &str, p: &str) {
    let (ok, _, err) = lab.cmc(rogue, p, &["status"]);
    assert!(!ok && err.contains("admin_allow"), "rogue: {err}");
    let r = raw(rogue, p, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
    assert!(!r.contains("HTTP/1.1"), "rogue got an answer: {r}");
    let st: Stats = admin(mgmt, p, TOKEN, async |c| c.get("/v1/stats").await.expect("stats"));
    assert!(st.admin_refused_acl >= 2, "{st:?}");

    for token in ["", "wrong-token-0123456789"] {
        let e = admin(mgmt, p, token, async |c| {
            c.post("/v1/services/echo/servers/s1/weight", Some(r#"{"weight": 1}"#))
                .await
                .expect_err("refused")
        });
        assert!(matches!(e, ClientError::Unauthorized(_)), "{e}");
        let e = admin(mgmt, p, token, async |c| c.post("/v1/demote", None).await.expect_err("refused"));
        assert!(matches!(e, ClientError::Unauthorized(_)), "{e}");
    }
    let svcs: Vec<ServiceStatus> =
        admin(mgmt, p, TOKEN, async |c| c.get("/v1/services").await.expect("services"));
    assert_eq!(svcs[0].servers[0].weight, 10, "a refused request changed the weight");
    assert_eq!(status(mgmt, p).expect("status").role, "primary", "a refused demote demoted");

    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let big = "x".repeat(1 << 20);
    let r = raw(mgmt, p, format!("POST /v1/services/echo/servers/s1/weight HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{big}", big.len()).into_bytes());
    assert!(r.starts_with("HTTP/1.1 413"), "oversized: {r}");
    let r = raw(mgmt, p, format!("POST /v1/services/echo/servers/s1/weight HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 9\r\nConnection: close\r\n\r\n{{\"weight\"").into_bytes());
    assert!(r.starts_with("HTTP/1.1 400"), "malformed: {r}");
    let r = raw(mgmt, p, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n".to_vec());
    assert!(!r.contains(" 200 "), "binary garbage: {r}");
    let t0 = Instant::now();
    let _ = raw(mgmt, p, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n".to_vec());
    let slow = t0.elapsed();
    assert!(slow < Duration::from_secs(8), "a never-ending request head was held {slow:?}");
    println!("slow request head cut after {slow:?}");
    let svcs: Vec<ServiceStatus> =
        admin(mgmt, p, TOKEN, async |c| c.get("/v1/services").await.expect("services"));
    assert_eq!(svcs[0].servers[0].weight, 10, "bad requests changed the weight");
    assert_eq!(status(mgmt, p).expect("still serving").role, "primary");
}

/// 10,000 requests from mgmt; heartbeats and forwarding measured meanwhile.
/// Returns how many requests went through the VIP during the burst.
fn burst(lab: &Lab, client: &str, mgmt: &str, p: &str, b: &str) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let gaps = heartbeat_gaps(client, atm_addr(p), Arc::clone(&stop));
    std::thread::sleep(Duration::from_secs(3)); // baseline: 30 heartbeats
    let burst_from = Instant::now();
    let failures = Arc::new(AtomicU64::new(0));
    let f = Arc::clone(&failures);
    let addr: SocketAddr = format!("{}:{ADMIN_PORT}", atm_addr(p)).parse().expect("addr");
    let load = in_netns(mgmt, move || {
        block(async move {
            let c = Client::new(addr, Some(TOKEN.to_string()));
            let next = Arc::new(AtomicU64::new(0));
            let workers = (0..BURST_PARALLEL).map(|_| {
                let (c, next, f) = (c.clone(), Arc::clone(&next), Arc::clone(&f));
                async move {
                    while next.fetch_add(1, Ordering::Relaxed) < BURST as u64 {
                        if c.get::<Status>("/v1/status").await.is_err() {
                            f.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
            futures::future::join_all(workers).await;
        })
    });
    // Forwarding during the burst: one request through the VIP every 50 ms.
    let (mut fwd_ok, mut fwd_fail) = (0u64, 0u64);
    while !load.is_finished() {
        if request(client, Duration::from_secs(1)) {
            fwd_ok += 1
        } else {
            fwd_fail += 1
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    load.join().expect("burst");
    let burst_took = burst_from.elapsed();
    stop.store(true, Ordering::Relaxed);
    let gaps = gaps.join().expect("gaps");
    let before: Vec<f64> = gaps.iter().filter(|(t, _)| *t < burst_from).map(|(_, g)| *g).collect();
    let during: Vec<f64> = gaps.iter().filter(|(t, _)| *t >= burst_from).map(|(_, g)| *g).collect();
    let (bm, bsd, bp99, bmax) = summary(&before);
    let (dm, dsd, dp99, dmax) = summary(&during);
    println!(
        "burst: {BURST} requests ({BURST_PARALLEL} at once) in {burst_took:?} = {:.0}/s, {} failed",
        BURST as f64 / burst_took.as_secs_f64(),
        failures.load(Ordering::Relaxed)
    );
    println!(
        "heartbeat gaps before: n={} mean={bm:.1} ms sd={bsd:.2} ms p99={bp99:.1} ms max={bmax:.1} ms",
        before.len()
    );
    println!(
        "heartbeat gaps during: n={} mean={dm:.1} ms sd={dsd:.2} ms p99={dp99:.1} ms max={dmax:.1} ms",
        during.len()
    );
    println!("forwarding during the burst: {fwd_ok} ok, {fwd_fail} failed");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "admin requests failed in the burst");
    assert!(during.len() >= 10, "too few heartbeats seen during the burst: {}", during.len());
    // The dead interval is 300 ms (3 x 100 ms): a gap reaching it would be a failover. The
    // figures above are the measurement; the machine may be shared, so the bound is the
    // one that matters to the cluster.
    assert!(dmax < 300.0, "a heartbeat gap of {dmax:.1} ms during the burst (dead interval 300 ms)");
    assert_eq!(fwd_fail, 0, "forwarding failed during the burst");
    assert_eq!(lab.daemon(b).count("role=primary"), 0, "the backup promoted during the burst");
    assert_eq!(status(mgmt, p).expect("status").role, "primary");
    fwd_ok
}

/// Every cmc action against the lab's daemons (`through_vip`: requests that went through the
/// VIP before).
fn actions(lab: &Lab, client: &str, mgmt: &str, p: &str, through_vip: u64) {
    let b = other(p);
    let (ok, out, _) = lab.cmc(mgmt, p, &["status"]);
    assert!(
        ok && out.contains("role primary")
            && out.contains(b)
            && out.contains("ms ago")
            && out.contains("same"),
        "{out}"
    );
    let (ok, out, _) = lab.cmc(mgmt, p, &["status", "--json"]);
    assert!(ok && serde_json::from_str::<Status>(&out).is_ok(), "{out}");
    for read in [
        &["servers"][..],
        &["stats"],
        &["connections"],
        &["servers", "--json"],
        &["stats", "--json"],
        &["connections", "--json", "--service", "echo"],
    ] {
        let (ok, _, err) = lab.cmc(mgmt, p, read);
        assert!(ok, "{read:?}: {err}");
    }
    let (ok, out, _) = lab.cmc(mgmt, p, &["metrics"]);
    for want in [
        "clusterserver_role_primary 1",
        "clusterserver_heartbeats_sent_total",
        "clusterserver_check_latency_seconds{service=\"echo\",server=\"s1\",check=\"0\",kind=\"tcp\"}",
        "clusterserver_check_runs_total{service=\"echo\",server=\"s1\",check=\"0\",kind=\"tcp\",result=\"pass\"}",
        "clusterserver_server_health{service=\"echo\",server=\"s1\",address=\"10.79.2.20\"} 1",
    ] {
        assert!(ok && out.contains(want), "{want} missing in:\n{out}");
    }
    // The heartbeat timing histograms count heartbeats: every scheduled one sent (at most
    // the heartbeats sent), and the peer's accepted ones after its first.
    let value = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing in:\n{out}"))
    };
    let jitter = value("clusterserver_heartbeat_send_jitter_seconds_count");
    let lateness = value("clusterserver_heartbeat_receive_lateness_seconds_count");
    let sent = value("clusterserver_heartbeats_sent_total");
    let received = value("clusterserver_heartbeats_received_total");
    assert!(jitter > 10.0 && jitter <= sent, "send jitter counts {jitter} of {sent} heartbeats sent");
    assert!(lateness > 10.0 && lateness <= received, "lateness counts {lateness} of {received} received");
    assert!(
        out.contains("clusterserver_heartbeat_send_jitter_seconds_bucket{le=\"+Inf\"}"),
        "no +Inf bucket:\n{out}"
    );
    let (ok, text, err) = lab.cmc(mgmt, p, &["stats"]);
    assert!(
        ok && text.contains("heartbeat send jitter") && text.contains("p99<="),
        "cmc stats: {err}\n{text}"
    );
    let bytes = out
        .lines()
        .find(|l| l.starts_with("clusterserver_server_bytes_total{") && l.contains("to_client"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert!(bytes.is_some_and(|b| b > 0), "no reply bytes counted for s1:\n{out}");
    let svcs: Vec<ServiceStatus> =
        admin(mgmt, p, TOKEN, async |c| c.get("/v1/services").await.expect("services"));
    let s1 = &svcs[0].servers[0];
    // s1 is the only server: every request that went through the VIP during the burst was
    // a connection scheduled to it (how many there were depends on the burst's speed).
    assert!(through_vip > 0, "no request went through the VIP during the burst");
    assert!(
        s1.connections_total >= through_vip && s1.packets_in > 0 && s1.bytes_in > 0,
        "{s1:?}, {through_vip} requests through the VIP"
    );

    // An event follower sees the weight change.
    let events = {
        let (ns, cfg, host) = (mgmt.to_string(), lab.config(), atm_addr(p));
        Command::new("ip")
            .args(["netns", "exec", &ns, env!("CARGO_BIN_EXE_cmc"), "--config"])
            .arg(cfg)
            .args(["--host", host, "events", "--count", "1"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("events")
    };
    std::thread::sleep(Duration::from_millis(500)); // the follower subscribes; an event before that is simply not seen
    let server = |ns: &str, atm: &str| -> (u32, String) {
        let s: Vec<ServiceStatus> =
            admin(ns, atm, TOKEN, async |c| c.get("/v1/services").await.expect("services"));
        (s[0].servers[0].weight, s[0].servers[0].admin.clone())
    };
    let (ok, _, err) = lab.cmc(mgmt, p, &["weight", "echo", "s1", "42"]);
    assert!(ok, "{err}");
    assert_eq!(server(mgmt, p), (42, "enabled".into()));
    let out = events.wait_with_output().expect("events");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("weight echo/s1 = 42"), "events: {text}");
    let (ok, _, _) = lab.cmc(mgmt, p, &["drain", "echo", "s1"]);
    assert!(ok);
    assert_eq!(server(mgmt, p), (0, "drained".into()));
    assert!(!request(client, Duration::from_millis(500)), "a drained only server took a new connection");
    let (ok, _, _) = lab.cmc(mgmt, p, &["disable", "echo", "s1"]);
    assert!(ok);
    assert_eq!(server(mgmt, p).1, "disabled");
    let (ok, _, _) = lab.cmc(mgmt, p, &["enable", "echo", "s1"]);
    assert!(ok);
    // Enable clears every override: back to the configured weight.
    assert_eq!(server(mgmt, p), (10, "enabled".into()));
    wait_until("service back after enable", Duration::from_secs(5), || {
        request(client, Duration::from_millis(300))
    });
    let (ok, _, err) = lab.cmc(mgmt, p, &["weight", "echo", "nope", "1"]);
    assert!(!ok && err.contains("no server \"nope\""), "{err}");

    // Roles through the core: demote hands over, promote takes back, stop holds it out.
    let (ok, _, err) = lab.cmc(mgmt, b, &["demote"]);
    assert!(!ok && err.contains("not primary"), "{err}");
    let (ok, _, err) = lab.cmc(mgmt, p, &["demote"]);
    assert!(ok, "{err}");
    wait_until("the backup takes over on demote", Duration::from_secs(5), || {
        primary_of(mgmt).as_deref() == Some(b)
    });
    wait_until("service after the demote", Duration::from_secs(5), || {
        request(client, Duration::from_millis(300))
    });
    let (ok, _, err) = lab.cmc(mgmt, p, &["promote"]);
    assert!(ok, "{err}");
    wait_until("promoted back", Duration::from_secs(5), || primary_of(mgmt).as_deref() == Some(p));
    let (ok, _, err) = lab.cmc(mgmt, p, &["stop"]);
    assert!(ok, "{err}");
    wait_until("stop hands over", Duration::from_secs(5), || primary_of(mgmt).as_deref() == Some(b));
    assert!(status(mgmt, p).expect("status").stopped);
    let (ok, _, err) = lab.cmc(mgmt, p, &["promote"]);
    assert!(!ok && err.contains("forwarding is stopped here"), "{err}");
    let (ok, _, err) = lab.cmc(mgmt, p, &["stop"]);
    assert!(!ok && err.contains("already stopped"), "{err}");
    let (ok, _, err) = lab.cmc(mgmt, p, &["start"]);
    assert!(ok, "{err}");
    assert!(!status(mgmt, p).expect("status").stopped);
    assert_eq!(primary_of(mgmt).as_deref(), Some(b), "start does not preempt");

    // Reload: unchanged; then invalid (refused, the daemon runs on); restart comes back.
    let (ok, out, _) = lab.cmc(mgmt, p, &["reload"]);
    assert!(ok && out.contains("unchanged"), "{out}");
    let good = std::fs::read_to_string(lab.config()).expect("config");
    std::fs::write(lab.net.dir.join("cs.json5"), good.replace("heartbeat_ms: 100", "heartbeat_ms: \"x\""))
        .expect("bad");
    // cmc reads its own copy (the daemon's file is now invalid).
    let good_copy = lab.net.dir.join("good.json5");
    std::fs::write(&good_copy, &good).expect("good copy");
    let reload = || {
        let out = Command::new("ip")
            .args(["netns", "exec", mgmt, env!("CARGO_BIN_EXE_cmc"), "--config"])
            .arg(&good_copy)
            .args(["--host", atm_addr(p), "reload"])
            .output()
            .expect("cmc");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = reload();
    assert!(!ok && err.contains("running one is kept"), "{err}");
    std::fs::write(lab.config(), &good).expect("restore");
    let ready_before = lab.daemon(p).count(" ready ");
    let (ok, _, err) = lab.cmc(mgmt, p, &["restart"]);
    assert!(ok, "{err}");
    wait_until("restarted", Duration::from_secs(15), || lab.daemon(p).count(" ready ") > ready_before);
    wait_until("admin back after restart", Duration::from_secs(10), || status(mgmt, p).is_some());
    assert_eq!(primary_of(mgmt).as_deref(), Some(b));
    assert!(request(client, Duration::from_secs(1)));
}

/// `cmc serve` in the management namespace, driven by headless Chromium over WebDriver:
/// the page loads, its charts move as traffic flows, a weight set on the page reaches the
/// daemon, and a demote pressed on the page shows as a failover on the role timeline.
/// Screenshots go to `target/tmp/console/` (`traffic.png`, `weight.png`, `failover.png`).
#[test]
fn console_in_a_lab() {
    if std::env::var(HELPER_ENV).is_ok() {
        return;
    }
    if !is_root() || !Path::new("/dev/net/tun").exists() {
        println!("SKIPPED: needs root (and /dev/net/tun)");
        eprintln!("SKIPPED: needs root (and /dev/net/tun)");
        return;
    }
    let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(driver) = driver else {
        println!("SKIPPED: needs chromedriver (scripts/install-deps installs chromium-driver)");
        eprintln!("SKIPPED: needs chromedriver (scripts/install-deps installs chromium-driver)");
        return;
    };
    let mut lab = Lab::new("csl-am", "");
    let (client, mgmt, _rogue) = setup(&mut lab);
    wait_until("one primary", Duration::from_secs(15), || primary_of(&mgmt).is_some());
    let p = primary_of(&mgmt).expect("primary");
    let b = other(&p);
    wait_until("the service", Duration::from_secs(5), || request(&client, Duration::from_millis(200)));
    wait_until("peers up", Duration::from_secs(5), || {
        status(&mgmt, &p).is_some_and(|s| s.peers.iter().all(|x| x.up))
    });

    // Traffic: one short connection every 20 ms from the client, until stopped (bounded).
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, client) = (Arc::clone(&stop), client.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut ok = 0u64;
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(120) {
                ok += u64::from(request(&client, Duration::from_millis(300)));
                std::thread::sleep(Duration::from_millis(20));
            }
            ok
        })
    };
    let console = Command::new("ip")
        .args(["netns", "exec", &mgmt, env!("CARGO_BIN_EXE_cmc"), "--config"])
        .arg(lab.config())
        .args(["--host", atm_addr(&p), "serve", "--listen", "127.0.0.1:9101"])
        .stdout(Stdio::null())
        .spawn()
        .expect("cmc serve");
    lab.net.others.push(console);
    let chromedriver = Command::new("ip")
        .args(["netns", "exec", &mgmt, driver, "--port=9515"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver");
    lab.net.others.push(chromedriver);
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let daemon: SocketAddr = format!("{}:{ADMIN_PORT}", atm_addr(&p)).parse().expect("addr");
    let (pn, bn) = (p.clone(), b.to_string());
    let result = in_netns(&mgmt, move || block(browse(shots, daemon, pn, bn))).join();
    stop.store(true, Ordering::Relaxed);
    let served = traffic.join().expect("traffic");
    println!("traffic: {served} requests served during the console test");
    result.expect("browser thread");
    assert_eq!(primary_of(&mgmt).as_deref(), Some(b), "the demote from the console handed over");
}

async fn browse(shots: PathBuf, daemon: SocketAddr, p: String, b: String) {
    use fantoccini::{ClientBuilder, Locator};
    let port_open = || {
        std::net::TcpStream::connect("127.0.0.1:9515").is_ok()
            && std::net::TcpStream::connect("127.0.0.1:9101").is_ok()
    };
    wait_until("chromedriver and cmc serve", Duration::from_secs(20), port_open);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1100"] }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let web = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect("http://127.0.0.1:9515")
        .await
        .expect("webdriver session");
    let run = async {
        web.goto("http://127.0.0.1:9101/").await.expect("open console");
        let text = async |css: &str| -> String {
            match web.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        };
        let until = async |what: &str, secs: u64, js: &str| {
            let t0 = Instant::now();
            loop {
                let v = web.execute(js, vec![]).await.expect("script");
                if v.as_bool() == Some(true) {
                    break;
                }
                assert!(t0.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        until(
            "the page to show the role",
            20,
            "return document.getElementById('role').textContent === 'primary'",
        )
        .await;
        assert_eq!(text("#node").await, p);
        until(
            "the connections chart to move",
            30,
            "return csState.samples.some(s => Object.values(s.servers).some(v => v.connsPerS > 0 && v.bytesPerS > 0))",
        )
        .await;
        let peer = text(&format!("[data-peer='{b}']")).await;
        assert!(peer.contains("up") && peer.contains("same"), "peer row: {peer}");
        std::fs::write(shots.join("traffic.png"), web.screenshot().await.expect("shot")).expect("save");

        // A weight set on the page, behind its confirmation, reaches the daemon.
        let input = web.find(Locator::Css("[id='weight-echo/s1']")).await.expect("weight input");
        input.clear().await.expect("clear");
        input.send_keys("33").await.expect("type");
        web.find(Locator::Css("[id='set-weight-echo/s1']"))
            .await
            .expect("button")
            .click()
            .await
            .expect("click");
        web.accept_alert().await.expect("confirm");
        let c = Client::new(daemon, Some(TOKEN.to_string()));
        let t0 = Instant::now();
        loop {
            let s: Vec<ServiceStatus> = c.get("/v1/services").await.expect("services");
            if s[0].servers[0].weight == 33 {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "the daemon never showed weight 33");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        until(
            "the page to show weight 33",
            10,
            "return document.querySelector(\"[data-server='echo/s1'] .weight\").textContent === '33'",
        )
        .await;
        std::fs::write(shots.join("weight.png"), web.screenshot().await.expect("shot")).expect("save");

        // Demote from the page: the role timeline marks the failover.
        web.find(Locator::Id("act-demote")).await.expect("demote").click().await.expect("click");
        web.accept_alert().await.expect("confirm");
        until(
            "the failover on the timeline",
            15,
            &format!("return csState.failovers.some(f => f.to === '{b}')"),
        )
        .await;
        until(
            "this ATM shown as backup",
            10,
            "return document.getElementById('role').textContent === 'backup'",
        )
        .await;
        // The daemon's events reach the page through cmc serve's relay, and are listed.
        until(
            "the demote's events on the page",
            10,
            "return csState.events.some(e => e.kind === 'handover') && csState.events.some(e => e.kind === 'role') && document.querySelectorAll('#events li').length >= 2",
        )
        .await;
        // A few more samples so the chart shows traffic moving to the new primary.
        tokio::time::sleep(Duration::from_secs(3)).await;
        std::fs::write(shots.join("failover.png"), web.screenshot().await.expect("shot")).expect("save");
    };
    run.await;
    let _ = web.close().await;
}
