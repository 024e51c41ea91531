//! The config diff's remap applied by the engine (`Engine::reconfigure`): reloads under
//! traffic. Here rather than in the engine's folder because it starts from configs. Flows stay on their servers, removed servers follow `on_down`,
//! new servers wait for their checks, Maglev moves only the flows of changed servers.

use core::net::Ipv4Addr;

use crate::config::{
    self, Check, CheckKind, Forwarding, OnDown, SchedulerKind, Server, Service, diff::Remap, testkit,
};
use crate::dataplane::engine::{Engine, EngineConfig, ORPHAN, Reload, ReloadStats, Verdict};
use crate::dataplane::wire::tcp::flags::{ACK, SYN};
use crate::dataplane::wire::{self, Ipv4Packet, build};
use crate::time::Instant;

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const VIP2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

fn server(i: u8) -> Server {
    testkit::server(&format!("s{i}"), Ipv4Addr::new(10, 0, 1, i), 8080, 1)
}

fn service(name: &str, vip: Ipv4Addr, sched: SchedulerKind, servers: Vec<Server>) -> Service {
    Service::builder(name, vip, 80).forwarding(Forwarding::Nat).scheduler(sched).servers(servers).build()
}

fn tcp_check() -> Check {
    Check { interval_ms: 1000, timeout_ms: 500, ..testkit::check(CheckKind::Tcp) }
}

fn engine(services: &[Service]) -> Engine {
    Engine::new(&EngineConfig {
        services: Service::all_settings(services),
        table: config::Table { max_connections: 10_000, ..config::Table::default() },
        local_addr: Ipv4Addr::new(10, 0, 0, 1),
        local_addr6: core::net::Ipv6Addr::UNSPECIFIED,
        path_mtu: 1500,
        seed: 7,
    })
}

fn as_config(services: &[Service]) -> config::Config {
    let opts = config::LoadOptions { check_files: false, base_dir: "/etc/clusterserver".into() };
    let text = include_str!("../../../config/nat-2atm.json5");
    let mut c = config::parse_str("nat-2atm.json5", text, &opts).expect("example config");
    c.services = services.to_vec();
    c
}

fn reload(e: &mut Engine, old: &[Service], new: &[Service]) -> ReloadStats {
    let remap = Remap::between(&as_config(old), &as_config(new));
    let table = config::Table { max_connections: 10_000, ..config::Table::default() };
    let (old, new) = (Service::all_settings(old), Service::all_settings(new));
    e.reconfigure(Instant::from_millis(5), &Reload { old: &old, new: &new, remap: &remap, table: &table })
}

/// The server a packet went to (NAT: its destination), or `None` if dropped.
fn send(e: &mut Engine, vip: Ipv4Addr, port: u16, fl: u8) -> Option<Ipv4Addr> {
    let mut tx = vec![0u8; 2048];
    let pkt = build::tcp((CLIENT, port), (vip, 80), fl, b"");
    match e.process(Instant::from_millis(10), &pkt, &mut tx) {
        Verdict::Tun { len } => Some(Ipv4Packet::new_checked(&tx[..len]).expect("ip").dst_addr()),
        _ => None,
    }
}

fn dst_port(e: &mut Engine, port: u16) -> Option<u16> {
    let mut tx = vec![0u8; 2048];
    let pkt = build::tcp((CLIENT, port), (VIP, 80), ACK, b"");
    match e.process(Instant::from_millis(10), &pkt, &mut tx) {
        Verdict::Tun { len } => {
            Some(wire::be16(Ipv4Packet::new_checked(&tx[..len]).expect("ip").payload(), 2))
        }
        _ => None,
    }
}

#[test]
fn a_weight_change_keeps_every_flow_and_a_new_server_waits_for_its_checks() {
    let mut old = vec![service("web", VIP, SchedulerKind::Wrr, vec![server(1), server(2)])];
    old[0].checks = vec![tcp_check()];
    let mut e = engine(&old);
    let before: Vec<_> = (1000..1100).map(|p| send(&mut e, VIP, p, SYN).expect("scheduled")).collect();
    let mut new = old.clone();
    new[0].servers[0].weight = 5;
    new[0].servers.push(server(3));
    let st = reload(&mut e, &old, &new);
    assert_eq!((st.entries_kept, st.entries_dropped, st.entries_reset), (100, 0, 0));
    assert_eq!(st.services_rebuilt, 1);
    for (p, was) in (1000..1100).zip(&before) {
        assert_eq!(send(&mut e, VIP, p, ACK).as_ref(), Some(was), "flow {p} moved");
    }
    let active: u32 = e.servers(0).iter().map(|s| s.active).sum();
    assert_eq!(active, 100, "active counts carried over");
    assert!(!e.servers(0)[2].up, "a new server of a checked service waits for its checks");
    assert!(e.servers(0)[0].up && e.servers(0)[0].weight == 5);
    let s3 = Ipv4Addr::new(10, 0, 1, 3);
    assert!((2000..2100).all(|p| send(&mut e, VIP, p, SYN) != Some(s3)), "no flow to the new server yet");
    e.set_server_state(0, 2, 1, true).expect("up");
    assert!((2000..2100).any(|p| send(&mut e, VIP, p + 1000, SYN) == Some(s3)), "it takes flows once up");
}

#[test]
fn a_removed_server_follows_on_down_keep_and_reset() {
    for on_down in [OnDown::Keep, OnDown::Reset] {
        let mut old = vec![service("web", VIP, SchedulerKind::Rr, vec![server(1), server(2)])];
        old[0].on_down = on_down;
        let mut e = engine(&old);
        for p in 1000..1010 {
            send(&mut e, VIP, p, SYN);
        }
        let mut new = old.clone();
        new[0].servers.remove(0);
        let st = reload(&mut e, &old, &new);
        let s1 = Ipv4Addr::new(10, 0, 1, 1);
        match on_down {
            OnDown::Keep => {
                assert_eq!((st.entries_kept, st.entries_orphaned), (5, 5));
                // Its flows carry on to the old address; new SYNs go to the server left.
                assert_eq!(send(&mut e, VIP, 1000, ACK), Some(s1));
                assert_eq!(e.servers(0)[0].active, 5, "orphans count on no server");
                assert!((3000..3010).all(|p| send(&mut e, VIP, p, SYN) == Some(Ipv4Addr::new(10, 0, 1, 2))));
                // A SYN reusing an orphan's tuple is a new connection, never the removed server.
                let orphan = (1000..1010).find(|&p| send(&mut e, VIP, p, ACK) == Some(s1)).expect("orphan");
                let slot = e
                    .table()
                    .find_fwd(&crate::dataplane::conntrack::FwdKey {
                        proto: 6,
                        client: CLIENT,
                        client_port: orphan,
                        vip: VIP,
                        vip_port: 80,
                    })
                    .expect("entry");
                assert_eq!(e.table().get(slot).server_idx, ORPHAN);
            }
            OnDown::Reset => {
                assert_eq!((st.entries_kept, st.entries_reset), (5, 5));
                assert_eq!(e.table().len(), 5);
                assert_eq!(send(&mut e, VIP, 1000, ACK), None, "the removed server's flow is gone");
            }
        }
    }
}

#[test]
fn a_service_added_removed_and_reordered() {
    let old = vec![
        service("a", VIP, SchedulerKind::Rr, vec![server(1)]),
        service("b", VIP2, SchedulerKind::Rr, vec![server(2)]),
    ];
    let mut e = engine(&old);
    send(&mut e, VIP, 1000, SYN);
    send(&mut e, VIP2, 1001, SYN);
    // "a" removed, "b" now first, "c" added on a new VIP.
    let vip3 = Ipv4Addr::new(192, 0, 2, 12);
    let new = vec![old[1].clone(), service("c", vip3, SchedulerKind::Rr, vec![server(3)])];
    let st = reload(&mut e, &old, &new);
    assert_eq!((st.services_kept, st.services_rebuilt, st.entries_kept, st.entries_dropped), (1, 1, 1, 1));
    assert_eq!(send(&mut e, VIP2, 1001, ACK), Some(Ipv4Addr::new(10, 0, 1, 2)));
    assert_eq!(e.servers(0)[0].active, 1, "b's count moved with it");
    assert_eq!(send(&mut e, VIP, 1000, ACK), None, "a is gone");
    assert!(e.servers(1)[0].up, "a new service starts up, as at start-up");
    assert_eq!(send(&mut e, vip3, 1002, SYN), Some(Ipv4Addr::new(10, 0, 1, 3)));
}

#[test]
fn maglev_moves_only_the_flows_of_the_changed_server() {
    let old = vec![service("web", VIP, SchedulerKind::Mh, (1..=5).map(server).collect())];
    let mut e = engine(&old);
    let mut fresh = engine(&old);
    let ports = 10_000..12_000u16;
    let before: Vec<_> = ports.clone().map(|p| send(&mut fresh, VIP, p, SYN)).collect();
    let mut new = old.clone();
    new[0].servers.push(server(6));
    reload(&mut e, &old, &new);
    let after: Vec<_> = ports.map(|p| send(&mut e, VIP, p, SYN)).collect();
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let to_new = after.iter().filter(|a| **a == Some(Ipv4Addr::new(10, 0, 1, 6))).count();
    // About 1/6 of new flows go to the new server; only those (and Maglev's small churn) move.
    assert!(to_new > 200 && to_new < 500, "{to_new}");
    assert!(moved < to_new + 100, "moved {moved}, to the new server {to_new}");
}

#[test]
fn a_changed_server_port_is_a_new_server() {
    let old = vec![service("web", VIP, SchedulerKind::Rr, vec![server(1)])];
    let mut e = engine(&old);
    send(&mut e, VIP, 1000, SYN);
    assert_eq!(dst_port(&mut e, 1000), Some(8080));
    let mut new = old.clone();
    new[0].servers[0].port = 8081;
    let st = reload(&mut e, &old, &new);
    assert_eq!(st.entries_orphaned, 1, "same name, other port: the old server's flow keeps its port");
    assert_eq!(dst_port(&mut e, 1000), Some(8080));
    assert_eq!(dst_port(&mut e, 1001), None, "no SYN: no new flow");
    send(&mut e, VIP, 1001, SYN);
    assert_eq!(dst_port(&mut e, 1001), Some(8081));
}
