//! Feeds arbitrary IPv4 and IPv6 packets to `Engine::process` in NAT, DR and tunnel modes.
//!
//! Input: a control byte, then packets as `[len][bytes]`. Control bits: 0-1 forwarding
//! method, 2 prime the table with a handshake of a known flow per family (client
//! 198.51.100.7:40000 → VIP 192.0.2.10:80, server 10.0.1.3:8080; client 2001:db8:99::7 →
//! VIP [2001:db8:10::80]:80, server [fd00:1::3]:8080) so fuzzed packets can hit it, 3 fix each
//! packet's IPv4 header checksum (otherwise nearly every input stops at the checksum), 4 a
//! tiny table (evictions), 5 use `process_offloaded` (partial checksums), 6 mark the server
//! down (with `on_down: reset`: RSTs and rescheduling). Each packet advances time by a
//! second.
//!
//! `fuzz/seeds/engine/` holds hand-made seeds (valid flows, ICMP errors, fragments in each
//! mode; `v6_*`: IPv6 flows, extension headers, fragments and ICMPv6 errors, written by
//! `fuzz/seeds/v6_seeds.py`) that take coverage from ~650 to ~1000 edges in minutes:
//! `cargo +nightly fuzz run engine fuzz/corpus/engine fuzz/seeds/engine`.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use clusterserver::config::{self, Forwarding, OnDown, Protocol, SchedulerKind, Service};
use clusterserver::dataplane::engine::{Engine, EngineConfig};
use clusterserver::dataplane::wire::{build, checksum, tcp::flags};
use clusterserver::time::Instant;
use libfuzzer_sys::fuzz_target;

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const S1: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 3);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 0x80);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 7);
const S1_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 3);

/// `cross`: tunnel services get servers of the other family (IPv4-in-IPv6, IPv6-in-IPv4).
fn engine(forwarding: Forwarding, max: u32, cross: bool) -> Engine {
    let cross = cross && forwarding == Forwarding::Tunnel;
    let svc = |protocol, persistence_s, v6: bool| {
        let vip = if v6 { IpAddr::V6(VIP6) } else { IpAddr::V4(VIP) };
        let server = if v6 != cross { IpAddr::V6(S1_6) } else { IpAddr::V4(S1) };
        Service::builder("s", vip, 80)
            .protocol(protocol)
            .forwarding(forwarding)
            .scheduler(SchedulerKind::Rr)
            .persistence_s(persistence_s)
            .on_down(OnDown::Reset)
            .server("a", server, if forwarding == Forwarding::Nat { 8080 } else { 80 }, 1)
            .build()
    };
    Engine::new(&EngineConfig {
        services: vec![
            svc(Protocol::Tcp, 0, false).settings(),
            svc(Protocol::Udp, 30, false).settings(),
            svc(Protocol::Tcp, 0, true).settings(),
            svc(Protocol::Udp, 30, true).settings(),
        ],
        table: config::Table { max_connections: max, ..config::Table::default() },
        local_addr: Ipv4Addr::new(10, 0, 0, 1),
        local_addr6: Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 1),
        path_mtu: 576,
        seed: 3,
    })
}

fn fix_ip_checksum(p: &mut [u8]) {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return;
    }
    let hl = usize::from(p[0] & 0x0F) * 4;
    if hl < 20 || hl > p.len() {
        return;
    }
    p[10] = 0;
    p[11] = 0;
    let c = checksum::checksum(&p[..hl]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, mut rest)) = data.split_first() else { return };
    let forwarding = [Forwarding::Nat, Forwarding::Dr, Forwarding::Tunnel, Forwarding::Nat][usize::from(ctl & 3)];
    let mut e = engine(forwarding, if ctl & 16 != 0 { 4 } else { 1024 }, ctl & 128 != 0);
    e.set_sync(true);
    let mut tx = vec![0u8; 2048];
    let mut now = 0u64;
    if ctl & 4 != 0 {
        let _ = e.process(Instant::ZERO, &build::tcp((CLIENT, 40000), (VIP, 80), flags::SYN, b""), &mut tx);
        let _ = e.process(Instant::ZERO, &build::tcp((S1, 8080), (CLIENT, 40000), flags::SYN | flags::ACK, b""), &mut tx);
        let _ = e.process(Instant::ZERO, &build::tcp6((CLIENT6, 40000), (VIP6, 80), flags::SYN, b""), &mut tx);
        let syn_ack = build::tcp6((S1_6, 8080), (CLIENT6, 40000), flags::SYN | flags::ACK, b"");
        let _ = e.process(Instant::ZERO, &syn_ack, &mut tx);
    }
    let mut pkt = Vec::with_capacity(256);
    if ctl & 64 != 0 {
        let _ = e.set_server_state(0, 0, 1, false);
        let _ = e.set_server_state(1, 0, 0, true);
        let _ = e.set_server_state(2, 0, 1, false);
        let _ = e.set_server_state(3, 0, 0, true);
    }
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        pkt.clear();
        pkt.extend_from_slice(&tail[..n]);
        rest = &tail[n..];
        if ctl & 8 != 0 {
            fix_ip_checksum(&mut pkt);
        }
        now += 1_000_000_000;
        if ctl & 32 != 0 {
            let _ = e.process_offloaded(Instant::from_nanos(now), &pkt, &mut tx);
        } else {
            let _ = e.process(Instant::from_nanos(now), &pkt, &mut tx);
        }
        // A short tx buffer must be refused, never overrun.
        let _ = e.process(Instant::from_nanos(now), &pkt, &mut tx[..usize::from(len) % 64]);
    }
    while e.poll_sync(Instant::from_nanos(now)).is_some() {}
    let _ = e.stats();
});
