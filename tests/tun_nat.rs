//! Real TCP through the TUN shell in NAT mode, on namespaces this test creates (SPEC.md, lab
//! safety): `csl-tn<pid>-<n>-client` -- `…-atm` -- `…-server` (`support::tun`), veth pairs
//! created directly inside the namespaces (no end ever in the root namespace).
//!
//! The shell runs on a dedicated thread that enters the ATM namespace before creating its
//! runtime, TUN and sockets. The server is this test binary re-executed inside the server
//! namespace (`ip netns exec`, helper test `helper_echo_server`): a Rust TCP echo server. The
//! client runs on another dedicated thread inside the client namespace, connects to the VIP,
//! sends a bounded, patterned payload and checks every byte that comes back.
//!
//! Skips loudly without root or `/dev/net/tun`. Everything (namespaces, the server process,
//! by PID) is removed by a drop guard on success, failure and panic; stale namespaces of
//! earlier runs of *this* test (whose PID is gone) are removed first.
#![allow(clippy::disallowed_methods)] // reason: a real-network test measures and waits on the wall clock

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use clusterserver::platform::linux::netsys::enter_netns;
use clusterserver::platform::linux::shell::netlink::SteerRule;
use clusterserver::platform::linux::shell::tun::{Control, Shell};
use clusterserver::platform::linux::shell::{PacketProcessor, ShellConfig, StatsSnapshot};

mod support;
use support::netlab::NetLab;
use support::processors::{MiniDr, MiniNat, MiniTunnel};
use support::tun::{
    HELPER_ENV, PAYLOAD, PORT, SERVER, VIP, can_run, diag, lab, run_client, start_shell, start_shell_shared,
    topology,
};
use support::{in_ns, ns_output};

/// Helper process: a TCP echo server on `CSL_TN_HELPER=ADDR`, one connection, then exit.
#[test]
fn helper_echo_server() {
    let Ok(addr) = std::env::var(HELPER_ENV) else {
        return; // not a helper run
    };
    // Bounded lifetime: a helper orphaned by a killed test run exits on its own.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(60));
        std::process::exit(3);
    });
    let listener = TcpListener::bind(&addr).expect("bind");
    println!("LISTENING");
    let (mut s, _) = listener.accept().expect("accept");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let mut buf = vec![0u8; 65536];
    loop {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).expect("write");
    }
    let _ = w.shutdown(std::net::Shutdown::Write);
}

fn spawn_server(lab: &mut NetLab, ns: &str, listen: Ipv4Addr) {
    lab.others.push(support::spawn_echo_helper(ns, HELPER_ENV, &format!("{listen}:{PORT}")));
}

fn shell_config(offload: bool) -> ShellConfig {
    ShellConfig {
        tun_name: "cstun0".into(),
        queues: 1,
        offload,
        mtu: 1500,
        table_id: 7700,
        rule_priority: 7700,
        dr_interface: None,
    }
}

fn nat_run<P: PacketProcessor + 'static>(
    offload: bool,
    make: impl FnMut(usize) -> P + Send + 'static,
    change: Option<Control<P>>,
) -> Vec<P> {
    let mut lab = lab();
    let (c, a, s) = topology(&mut lab);
    spawn_server(&mut lab, &s, SERVER);
    let cfg = shell_config(offload);
    let steer = vec![SteerRule::to_vip(VIP), SteerRule::nat_replies(std::net::IpAddr::V4(SERVER))];
    let (stop, done) = start_shell(&a, cfg, steer, make);
    let result = run_client(&c, SocketAddr::from((VIP, PORT)));
    if let Some(change) = change {
        let _ = stop.send(Some(change));
    }
    let _ = stop.send(None);
    let (stats, processors) = done.recv_timeout(Duration::from_secs(10)).expect("shell stop").expect("shell");
    let (bytes, elapsed) = result.expect("client");
    assert_eq!(bytes, PAYLOAD);
    let mbit = (2 * bytes) as f64 * 8.0 / elapsed.as_secs_f64() / 1e6;
    println!(
        "NAT via TUN (offload {offload}): {bytes} bytes each way in {elapsed:?} ({mbit:.0} Mbit/s total); shell {stats:?}"
    );
    assert!(stats.rx_packets > 0 && stats.tx_tun_packets > 0);
    processors
}

/// The minimal NAT processor (one VIP, one server) proves the shell, the steering and the
/// kernel configuration, independently of the engine.
#[test]
fn tcp_through_tun_nat_mini() {
    if std::env::var(HELPER_ENV).is_ok() || !can_run() {
        return;
    }
    let mark: Control<MiniNat> = std::sync::Arc::new(|p: &mut MiniNat| p.marked = true);
    let nats = nat_run(true, |_| MiniNat::new(VIP, SERVER, PORT), Some(mark));
    assert!(nats[0].ticks > 0, "on_tick never ran");
    assert!(nats[0].marked, "Shell::apply did not reach the processor");
}

/// The real engine's config for the echo service with `forwarding`.
fn engine_config(
    forwarding: clusterserver::config::Forwarding,
) -> clusterserver::dataplane::engine::EngineConfig {
    use clusterserver::config::{SchedulerKind, Service, Table};
    use clusterserver::dataplane::engine::EngineConfig;
    EngineConfig {
        services: vec![
            Service::builder("echo", VIP, PORT)
                .forwarding(forwarding)
                .scheduler(SchedulerKind::Wlc)
                .server("s1", SERVER, PORT, 1)
                .build()
                .settings(),
        ],
        table: Table {
            max_connections: 4096,
            tcp_timeout_s: 900,
            tcp_fin_timeout_s: 120,
            tcp_syn_timeout_s: 30,
            udp_timeout_s: 300,
            icmp_timeout_s: 30,
        },
        local_addr: Ipv4Addr::new(10, 77, 2, 1),
        local_addr6: core::net::Ipv6Addr::UNSPECIFIED,
        path_mtu: 1500,
        seed: 7,
    }
}

/// The done-criterion of issue 3: real TCP through the real packet engine in NAT mode.
#[test]
fn tcp_through_tun_nat_engine() {
    use clusterserver::config::Forwarding;
    use clusterserver::dataplane::engine::Engine;
    if std::env::var(HELPER_ENV).is_ok() || !can_run() {
        return;
    }
    let cfg = engine_config(Forwarding::Nat);
    let engines = nat_run(true, move |_| Engine::new(&cfg), None);
    println!("engine stats: {:?}", engines[0].stats());
}

/// NAT on four queues with one engine shared by all of them: the kernel picks a reply's queue
/// from the reply's own flow hash, so for most connections request and reply land on
/// different queues; with an engine per queue those replies would find no connection (and
/// the client no echo). Several connections in turn, each through the shared engine.
#[test]
fn tcp_through_tun_nat_engine_shared_queues() {
    use clusterserver::config::Forwarding;
    use clusterserver::dataplane::engine::Engine;
    if std::env::var(HELPER_ENV).is_ok() || !can_run() {
        return;
    }
    const CONNECTIONS: usize = 6;
    let mut lab = lab();
    let (c, a, s) = topology(&mut lab);
    let mut cfg = shell_config(true);
    cfg.queues = 4;
    let steer = vec![SteerRule::to_vip(VIP), SteerRule::nat_replies(std::net::IpAddr::V4(SERVER))];
    let (stop, done) = start_shell_shared(&a, cfg, steer, Engine::new(&engine_config(Forwarding::Nat)));
    let mut results = Vec::new();
    for _ in 0..CONNECTIONS {
        spawn_server(&mut lab, &s, SERVER);
        results.push(run_client(&c, SocketAddr::from((VIP, PORT))));
    }
    let _ = stop.send(None);
    let (stats, engines) = done.recv_timeout(Duration::from_secs(10)).expect("shell stop").expect("shell");
    for r in results {
        let (bytes, _) = r.unwrap_or_else(|e| panic!("client: {e}; shell {stats:?}\natm:\n{}", diag(&a)));
        assert_eq!(bytes, PAYLOAD);
    }
    assert_eq!(engines.len(), 1, "one shared engine comes back");
    let e = engines[0].stats();
    println!("4 queues, shared engine: shell {stats:?}; engine {e:?}");
    // At least one per client (a client retries while its server is not listening yet).
    assert!(e.new_connections >= CONNECTIONS as u64);
    assert!(e.nat_to_client > 0 && e.nat_to_server > 0);
    assert!(stats.rx_bursts > 0 && stats.rx_bursts <= stats.rx_batches);
}

/// The same without virtio offloads (one packet per read and write).
#[test]
fn tcp_through_tun_nat_mini_no_offload() {
    if std::env::var(HELPER_ENV).is_ok() || !can_run() {
        return;
    }
    nat_run(false, |_| MiniNat::new(VIP, SERVER, PORT), None);
}

/// Tunnel mode end to end: the ATM's shell wraps requests in IP-in-IP (minimal processor,
/// two queues), the node's user-space decapsulator (raw socket -> TUN) hands them to its
/// stack, the echo server listens on the VIP on the node's loopback and answers the client
/// directly (through the ATM's plain forwarding, not its TUN).
#[test]
fn tcp_through_tun_tunnel_and_decap() {
    use clusterserver::dataplane::decap::DecapPolicy;
    use clusterserver::platform::linux::shell::decap_loop::NodeDecap;
    if std::env::var(HELPER_ENV).is_ok() || !can_run() {
        return;
    }
    let mut lab = lab();
    let (c, a, s) = topology(&mut lab);
    in_ns(&s, &["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
    spawn_server(&mut lab, &s, VIP);
    // The node's decapsulator, on its own thread inside the server namespace.
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let (done_tx, done_rx) = mpsc::channel();
    let path = format!("/var/run/netns/{s}");
    std::thread::spawn(move || {
        if let Err(e) = enter_netns(Path::new(&path)) {
            let _ = ready_tx.send(Err(format!("setns: {e}")));
            return;
        }
        let policy = DecapPolicy {
            kinds: Vec::new(),
            allowed_sources: vec![Ipv4Addr::new(10, 77, 2, 1).into()],
            allowed_destinations: vec![VIP.into()],
        };
        // The kernel's ipip where present (then there are no user-space counters), else ours.
        match NodeDecap::start("csdecap0", policy) {
            Ok(NodeDecap::User(d)) => {
                let _ = ready_tx.send(Ok(()));
                let _ = stop_rx.recv();
                let _ = done_tx.send(d.stop().map(Some).map_err(|e| e.to_string()));
            }
            Ok(NodeDecap::Kernel { .. }) => {
                let _ = ready_tx.send(Ok(()));
                let _ = stop_rx.recv();
                let _ = done_tx.send(Ok(None));
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("decap start timed out").expect("decap start");
    let mut cfg = shell_config(true);
    cfg.queues = 2; // tunnel mode sees one direction only: multi-queue is safe
    let (stop, done) = start_shell(&a, cfg, vec![SteerRule::to_vip(VIP)], |_| {
        MiniTunnel::new(VIP, PORT, Ipv4Addr::new(10, 77, 2, 1), SERVER)
    });
    let result = run_client(&c, SocketAddr::from((VIP, PORT)));
    let _ = stop.send(None);
    let _ = stop_tx.send(());
    let (shell, _) = done.recv_timeout(Duration::from_secs(10)).expect("shell stop").expect("shell");
    let decap = done_rx.recv_timeout(Duration::from_secs(10)).expect("decap stop").expect("decap");
    let (bytes, elapsed) = result.unwrap_or_else(|e| {
        panic!("client: {e}; shell {shell:?}; decap {decap:?}\natm:\n{}\nserver:\n{}", diag(&a), diag(&s))
    });
    assert_eq!(bytes, PAYLOAD);
    let mbit = (2 * bytes) as f64 * 8.0 / elapsed.as_secs_f64() / 1e6;
    println!(
        "tunnel via TUN + user-space decap: {bytes} bytes each way in {elapsed:?} ({mbit:.0} Mbit/s total); shell {shell:?}; decap {decap:?}"
    );
    if let Some(d) = decap {
        assert!(d.decapsulated > 0);
    }
}

/// Direct routing end to end: the shell sends requests unchanged in Ethernet frames to the
/// server's MAC (AF_PACKET, MAC from the neighbour table; the first SYN finds no entry, pokes
/// the kernel into ARP and is retransmitted), the server holds the VIP on its loopback and
/// answers the client directly.
#[test]
fn tcp_through_tun_direct_routing() {
    if std::env::var(HELPER_ENV).is_ok() || !can_run() {
        return;
    }
    dr_run(2, |_| MiniDr::new(VIP, PORT, SERVER));
}

/// Direct routing with the real engine: TCP super-packets go out whole, one framed send
/// each with their virtio-net header (`PACKET_VNET_HDR`), and the server gets every byte.
#[test]
fn tcp_through_tun_direct_routing_engine() {
    use clusterserver::config::Forwarding;
    use clusterserver::dataplane::engine::Engine;
    if std::env::var(HELPER_ENV).is_ok() || !can_run() {
        return;
    }
    let cfg = engine_config(Forwarding::Dr);
    let (shell, engines) = dr_run(1, move |_| Engine::new(&cfg));
    let engine = engines[0].stats();
    println!("engine stats: {engine:?}");
    // The engine saw super-packets (one call each), the shell counts their segments.
    assert!(engine.direct_routed > 0 && engine.packets < shell.rx_packets, "no super-packet went whole");
}

fn dr_run<P: PacketProcessor + 'static>(
    queues: usize,
    make: impl FnMut(usize) -> P + Send + 'static,
) -> (StatsSnapshot, Vec<P>) {
    let mut lab = lab();
    let (c, a, s) = topology(&mut lab);
    in_ns(&s, &["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
    spawn_server(&mut lab, &s, VIP);
    let mut cfg = shell_config(true);
    cfg.queues = queues;
    cfg.dr_interface = Some("a1".into());
    let (stop, done) = start_shell(&a, cfg, vec![SteerRule::to_vip(VIP)], make);
    let result = run_client(&c, SocketAddr::from((VIP, PORT)));
    let _ = stop.send(None);
    let (shell, processors) = done.recv_timeout(Duration::from_secs(10)).expect("shell stop").expect("shell");
    let (bytes, elapsed) = result.unwrap_or_else(|e| {
        panic!("client: {e}; shell {shell:?}\natm:\n{}\nserver:\n{}", diag(&a), diag(&s))
    });
    assert_eq!(bytes, PAYLOAD);
    let mbit = (2 * bytes) as f64 * 8.0 / elapsed.as_secs_f64() / 1e6;
    println!(
        "direct routing via TUN + AF_PACKET: {bytes} bytes each way in {elapsed:?} ({mbit:.0} Mbit/s total); shell {shell:?}"
    );
    assert!(shell.tx_l2_packets > 0);
    (shell, processors)
}

/// Leftovers of a crashed run (rules with our priority and table, routes in our table, the
/// TUN by name) are removed by `cleanup`; a rule with another priority is left alone.
#[test]
fn netlink_cleanup_removes_leftovers() {
    use clusterserver::platform::linux::shell::netlink;
    if std::env::var(HELPER_ENV).is_ok() || !can_run() {
        return;
    }
    let mut lab = lab();
    let a = lab.add_ns("atm");
    in_ns(&a, &["ip", "tuntap", "add", "cstun9", "mode", "tun"]);
    in_ns(&a, &["ip", "link", "set", "cstun9", "up"]);
    in_ns(&a, &["ip", "route", "add", "default", "dev", "cstun9", "table", "7701"]);
    in_ns(&a, &["ip", "rule", "add", "to", "10.77.9.1", "lookup", "7701", "pref", "7701"]);
    in_ns(&a, &["ip", "rule", "add", "from", "10.77.2.2", "lookup", "7701", "pref", "7701"]);
    in_ns(&a, &["ip", "rule", "add", "to", "10.77.9.2", "lookup", "7701", "pref", "7702"]);
    let path = format!("/var/run/netns/{a}");
    let removed = std::thread::spawn(move || {
        enter_netns(Path::new(&path)).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let h = netlink::connect().expect("netlink");
            netlink::cleanup(&h, "cstun9", 7701, 7701).await
        })
    })
    .join()
    .expect("thread")
    .expect("cleanup");
    assert_eq!(removed, 4, "2 rules + 1 route + 1 link");
    let rules = ns_output(&a, &["ip", "rule", "show"]);
    assert!(!rules.contains("7701:"), "{rules}");
    assert!(rules.contains("7702:"), "{rules}");
    assert!(!ns_output(&a, &["ip", "link", "show"]).contains("cstun9"));
}

/// A worker that cannot set up (DR interface missing) makes `Shell::start` fail, and the
/// failed start leaves no rule, route or TUN behind.
#[test]
fn shell_start_failure_cleans_up() {
    use clusterserver::platform::linux::shell::Echo;
    if std::env::var(HELPER_ENV).is_ok() || !can_run() {
        return;
    }
    let mut lab = lab();
    let a = lab.add_ns("atm");
    let path = format!("/var/run/netns/{a}");
    let err = std::thread::spawn(move || {
        enter_netns(Path::new(&path)).expect("setns");
        let mut cfg = shell_config(true);
        cfg.dr_interface = Some("nope0".into());
        Shell::start(cfg, vec![SteerRule::to_vip(VIP)], |_| Echo).map(|_| ())
    })
    .join()
    .expect("thread")
    .expect_err("start must fail");
    assert!(err.to_string().contains("nope0"), "{err}");
    assert!(!ns_output(&a, &["ip", "rule", "show"]).contains("7700:"));
    assert!(!ns_output(&a, &["ip", "link", "show"]).contains("cstun0"));
}
