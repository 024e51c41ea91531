//! Tunnels across families: IPv4 services on IPv6 servers (4in6) and IPv6 services on IPv4
//! servers (6in4), their path-MTU errors, their stand-ins and their sync.

use super::tests::run;
use super::*;
use crate::dataplane::settings::{SchedulerKind, ServiceSettings as Service};
use crate::dataplane::sync::{SyncReceiver, SyncSender};
use crate::dataplane::testkit;
use crate::dataplane::wire::tcp::flags::{ACK, SYN};
use crate::dataplane::wire::{Ipv6Packet, build};

const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const S4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 3);

fn a(s: &str) -> Ipv6Addr {
    s.parse().expect("ipv6")
}

fn local6() -> Ipv6Addr {
    a("fd00:1::1")
}

/// A tunnel service on `vip` with servers `servers` (port 80 throughout).
fn tunnel(vip: IpAddr, servers: &[IpAddr]) -> Service {
    Service::builder("tun", vip, 80)
        .forwarding(Forwarding::Tunnel)
        .scheduler(SchedulerKind::Rr)
        .servers(servers.iter().enumerate().map(|(i, s)| testkit::server(&format!("s{i}"), *s, 80, 1)))
        .build()
}

fn engine(services: Vec<Service>, local6: Ipv6Addr) -> Engine {
    Engine::new(&EngineConfig {
        services,
        table: settings::Table { max_connections: 1000, ..settings::Table::default() },
        local_addr: LOCAL,
        local_addr6: local6,
        path_mtu: 1500,
        seed: 42,
    })
}

fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// `pkt` (IPv4) with DF cleared and its header checksum made valid again.
fn without_df(mut pkt: Vec<u8>) -> Vec<u8> {
    pkt[6] &= !0x40;
    pkt[10..12].fill(0);
    let c = crate::dataplane::decap::checksum(&pkt[..20]);
    pkt[10..12].copy_from_slice(&c.to_be_bytes());
    pkt
}

#[test]
fn an_ipv4_service_tunnels_to_an_ipv6_server_in_ipv6() {
    let server = a("fd00:1::3");
    let mut e = engine(vec![tunnel(VIP4.into(), &[server.into()])], local6());
    let syn = build::tcp((CLIENT4, 40000), (VIP4, 80), SYN, b"");
    let (v, out) = run(&mut e, t(0), &syn);
    assert_eq!(v, Verdict::Tun { len: syn.len() + 40 });
    let outer = Ipv6Packet::new_checked(&out[..]).expect("outer");
    assert_eq!((outer.src_addr(), outer.dst_addr(), outer.next_header()), (local6(), server, proto::IPIP));
    assert_eq!(&out[40..], &syn[..], "the inner IPv4 packet is the client's, untouched");
    // The flow's later packets follow it (the entry holds a stand-in, not the address).
    let (v, out) = run(&mut e, t(1), &build::tcp((CLIENT4, 40000), (VIP4, 80), ACK, b"x"));
    assert!(matches!(v, Verdict::Tun { .. }), "{v:?}");
    assert_eq!(Ipv6Packet::new_checked(&out[..]).expect("outer").dst_addr(), server);
    // Too big for the path with 40 bytes more: fragmentation-needed (DF), MTU 1460...
    let big = build::tcp((CLIENT4, 40000), (VIP4, 80), ACK, &[7u8; 1440]);
    let (v, out) = run(&mut e, t(2), &big);
    assert!(matches!(v, Verdict::Tun { .. }), "{v:?}");
    let icmp = Ipv4Packet::new_checked(&out[..]).expect("icmp");
    assert_eq!((icmp.src_addr(), icmp.dst_addr(), icmp.protocol()), (LOCAL, CLIENT4, proto::ICMP));
    assert_eq!(u16::from_be_bytes([out[26], out[27]]), 1460);
    // ...and without DF nobody may fragment the IPv6 outer packet: dropped.
    assert_eq!(run(&mut e, t(3), &without_df(big)).0, Verdict::Drop(DropReason::TooBig));
    assert_eq!(e.stats().frag_needed_sent, 1);
    // Without an IPv6 address of its own the ATM cannot tunnel over IPv6.
    let mut none = engine(vec![tunnel(VIP4.into(), &[server.into()])], Ipv6Addr::UNSPECIFIED);
    assert_eq!(run(&mut none, t(0), &syn).0, Verdict::Drop(DropReason::NoServer));
}

#[test]
fn an_ipv6_service_tunnels_to_an_ipv4_server_in_ipv4() {
    let (vip, client) = (a("2001:db8:10::80"), a("2001:db8:99::7"));
    let mut e = engine(vec![tunnel(vip.into(), &[S4.into()])], local6());
    let syn = build::tcp6((client, 40000), (vip, 80), SYN, b"");
    let (v, out) = run(&mut e, t(0), &syn);
    assert_eq!(v, Verdict::Tun { len: syn.len() + 20 });
    let outer = Ipv4Packet::new_checked(&out[..]).expect("outer");
    assert_eq!((outer.src_addr(), outer.dst_addr(), outer.protocol()), (LOCAL, S4, proto::IPV6));
    assert!(outer.dont_frag(), "RFC 4213: an IPv6 packet is never fragmented on its way");
    assert_eq!(crate::dataplane::decap::checksum(&out[..20]), 0, "outer header checksum");
    assert_eq!(&out[20..], &syn[..]);
    // Over the path MTU with 20 bytes more: Packet Too Big, MTU 1480.
    let big = build::tcp6((client, 40000), (vip, 80), ACK, &[7u8; 1450]);
    let (v, out) = run(&mut e, t(1), &big);
    assert!(matches!(v, Verdict::Tun { .. }), "{v:?}");
    let ip = Ipv6Packet::new_checked(&out[..]).expect("icmpv6");
    assert_eq!((ip.dst_addr(), out[40]), (client, forward::icmp6::PACKET_TOO_BIG));
    assert_eq!(u32::from_be_bytes([out[44], out[45], out[46], out[47]]), 1480);
    assert!(build::checksums_valid6(&out));
}

#[test]
fn stand_ins_are_never_real_addresses_and_the_same_family_is_itself() {
    let v6: IpAddr = a("2001:db8::1234:5678").into();
    let v4: IpAddr = S4.into();
    let t4 = <Ipv4Addr as Family>::token(v6);
    assert!(t4.is_token() && t4.octets()[0] >= 240, "{t4}");
    assert_eq!(<Ipv4Addr as Family>::token(v4), S4);
    assert!(!S4.is_token());
    let t6 = <Ipv6Addr as Family>::token(v4);
    assert_eq!(t6, S4.to_ipv6_mapped());
    assert!(t6.is_token() && !a("fd00::1").is_token());
    assert_ne!(
        <Ipv4Addr as Family>::token(a("2001:db8::1").into()),
        <Ipv4Addr as Family>::token(a("2001:db8::2").into())
    );
}

#[test]
fn cross_family_flows_sync_to_a_backup_that_sends_them_to_the_same_server() {
    let (vip6, client6) = (a("2001:db8:10::80"), a("2001:db8:99::7"));
    let (s6a, s6b) = (a("fd00:1::3"), a("fd00:1::4"));
    let svc = || {
        vec![
            tunnel(VIP4.into(), &[s6a.into(), s6b.into()]),
            tunnel(vip6.into(), &[S4.into(), Ipv4Addr::new(10, 0, 1, 4).into()]),
        ]
    };
    let mut primary = engine(svc(), local6());
    primary.set_sync(true);
    let mut backup = engine(svc(), local6());
    backup.set_active(false);
    let mut first = Vec::new();
    for port in 0..4u16 {
        for pkt in [
            build::tcp((CLIENT4, 40000 + port), (VIP4, 80), SYN, b""),
            build::tcp6((client6, 40000 + port), (vip6, 80), SYN, b""),
        ] {
            let (_, out) = run(&mut primary, t(0), &pkt);
            first.push(out);
        }
        run(&mut primary, t(1), &build::tcp((CLIENT4, 40000 + port), (VIP4, 80), ACK, b""));
        run(&mut primary, t(1), &build::tcp6((client6, 40000 + port), (vip6, 80), ACK, b""));
    }
    let secret = b"0123456789abcdef0123456789abcdef";
    let mut sender = SyncSender::new(secret, 7, 1, 10_000);
    let mut receiver = SyncReceiver::new(secret, 7);
    let mut out = vec![0u8; crate::dataplane::sync::MAX_DATAGRAM];
    for ms in (100..2000).step_by(50) {
        while let Some(n) = sender.poll_transmit(t(ms), &mut primary, &mut out) {
            receiver.handle(t(ms), &out[..n], &mut backup).expect("accepted");
        }
    }
    assert_eq!((backup.table().len(), backup.table6().len()), (4, 4));
    backup.set_active(true);
    for port in 0..4u16 {
        let (_, o4) = run(&mut backup, t(3000), &build::tcp((CLIENT4, 40000 + port), (VIP4, 80), ACK, b"x"));
        let (_, o6) = run(&mut backup, t(3000), &build::tcp6((client6, 40000 + port), (vip6, 80), ACK, b"x"));
        let was4 = Ipv6Packet::new_checked(&first[2 * usize::from(port)][..]).expect("v6 outer").dst_addr();
        let was6 =
            Ipv4Packet::new_checked(&first[2 * usize::from(port) + 1][..]).expect("v4 outer").dst_addr();
        assert_eq!(Ipv6Packet::new_checked(&o4[..]).expect("v6 outer").dst_addr(), was4, "port {port}");
        assert_eq!(Ipv4Packet::new_checked(&o6[..]).expect("v4 outer").dst_addr(), was6, "port {port}");
    }
}
