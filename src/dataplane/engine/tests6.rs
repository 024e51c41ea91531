//! The engine on IPv6: NAT66, direct routing, IPv6-in-IPv6, extension headers, ICMPv6
//! errors, sync and a dual-stack engine. Checksums are checked by full recomputation.

use super::tests::run;
use super::*;
use crate::dataplane::settings::{Protocol, SchedulerKind, ServiceSettings as Service};
use crate::dataplane::sync::{SyncReceiver, SyncSender};
use crate::dataplane::testkit;
use crate::dataplane::wire::ipv6::next;
use crate::dataplane::wire::tcp::flags::{ACK, SYN};
use crate::dataplane::wire::{Ipv6Packet, build};
use proptest::prelude::*;

fn a(s: &str) -> Ipv6Addr {
    s.parse().expect("ipv6")
}

fn vip() -> Ipv6Addr {
    a("2001:db8:10::80")
}
fn client() -> Ipv6Addr {
    a("2001:db8:99::7")
}
fn s1() -> Ipv6Addr {
    a("fd00:1::3")
}
fn s2() -> Ipv6Addr {
    a("fd00:1::4")
}
fn local6() -> Ipv6Addr {
    a("2001:db8:10::1")
}

fn service6(forwarding: Forwarding, protocol: Protocol) -> Service {
    let port = if forwarding == Forwarding::Nat { 8080 } else { 80 };
    Service::builder("web6", vip(), 80)
        .protocol(protocol)
        .forwarding(forwarding)
        .scheduler(SchedulerKind::Rr)
        .server("s1", s1(), port, 1)
        .server("s2", s2(), port, 1)
        .build()
}

fn engine6(services: Vec<Service>, local6: Ipv6Addr) -> Engine {
    Engine::new(&EngineConfig {
        services,
        table: settings::Table { max_connections: 1000, ..settings::Table::default() },
        local_addr: Ipv4Addr::new(10, 0, 0, 1),
        local_addr6: local6,
        path_mtu: 1500,
        seed: 42,
    })
}

/// (src, sport, dst, dport) of a TCP/UDP IPv6 packet without extension headers.
fn ends(p: &[u8]) -> (Ipv6Addr, u16, Ipv6Addr, u16) {
    let ip = Ipv6Packet::new_checked(p).expect("ipv6");
    let l4 = &p[40..];
    (ip.src_addr(), u16::from_be_bytes([l4[0], l4[1]]), ip.dst_addr(), u16::from_be_bytes([l4[2], l4[3]]))
}

fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

#[test]
fn nat66_round_trip_rewrites_both_ways_with_valid_checksums() {
    let mut e = engine6(vec![service6(Forwarding::Nat, Protocol::Tcp)], local6());
    let syn = build::tcp6((client(), 40000), (vip(), 80), SYN, b"");
    let (v, out) = run(&mut e, t(0), &syn);
    assert!(matches!(v, Verdict::Tun { .. }), "{v:?}");
    assert!(build::checksums_valid6(&out));
    assert_eq!(ends(&out), (client(), 40000, s1(), 8080));
    // The server's SYN-ACK comes back as the VIP's.
    let synack = build::tcp6((s1(), 8080), (client(), 40000), SYN | ACK, b"");
    let (v, out) = run(&mut e, t(1), &synack);
    assert!(matches!(v, Verdict::Tun { .. }), "{v:?}");
    assert!(build::checksums_valid6(&out));
    assert_eq!(ends(&out), (vip(), 80, client(), 40000));
    let ack = build::tcp6((client(), 40000), (vip(), 80), ACK, b"GET / HTTP/1.1\r\n\r\n");
    let (_, out) = run(&mut e, t(2), &ack);
    assert!(build::checksums_valid6(&out));
    let key = FwdKey { proto: 6, client: client(), client_port: 40000, vip: vip(), vip_port: 80 };
    let slot = e.table6().find_fwd(&key).expect("tracked");
    assert_eq!(e.table6().get(slot).state, State::Established);
    assert_eq!(e.stats().table_len, 1);
    assert_eq!(e.table().len(), 0, "nothing in the IPv4 table");
    assert_eq!((e.stats().nat_to_server, e.stats().nat_to_client), (2, 1));
    // A second client goes to the other server (round robin).
    let (_, out) = run(&mut e, t(3), &build::tcp6((client(), 40001), (vip(), 80), SYN, b""));
    assert_eq!(ends(&out).2, s2());
}

#[test]
fn nat66_udp_and_offloaded_partial_checksums() {
    let mut e = engine6(vec![service6(Forwarding::Nat, Protocol::Udp)], local6());
    let d = build::udp6((client(), 5353), (vip(), 80), b"query");
    let (v, out) = run(&mut e, t(0), &d);
    assert!(matches!(v, Verdict::Tun { .. }));
    assert!(build::checksums_valid6(&out));
    assert_eq!(ends(&out), (client(), 5353, s1(), 8080));
    // With checksum offload the field holds the pseudo-header sum; the rewrite keeps it
    // the pseudo-header sum of the new addresses.
    let mut p = build::tcp6((client(), 41000), (vip(), 80), SYN, b"");
    let pseudo = |src: Ipv6Addr, dst: Ipv6Addr| {
        checksum::fold(checksum::pseudo_header_v6(src.octets(), dst.octets(), proto::TCP, 20))
    };
    let partial = pseudo(client(), vip());
    p[40 + 16..40 + 18].copy_from_slice(&partial.to_be_bytes());
    let mut e = engine6(vec![service6(Forwarding::Nat, Protocol::Tcp)], local6());
    let mut tx = vec![0u8; 2048];
    let v = e.process_offloaded(t(0), &p, &mut tx);
    assert!(matches!(v, Verdict::Tun { len: 60 }), "{v:?}");
    assert_eq!(u16::from_be_bytes([tx[56], tx[57]]), pseudo(client(), s1()));
}

use crate::dataplane::wire::checksum;

#[test]
fn extension_headers_are_walked_and_the_transport_header_found_behind_them() {
    let mut e = engine6(vec![service6(Forwarding::Nat, Protocol::Tcp)], local6());
    // Hop-by-hop (PadN) then destination options, then TCP.
    let ext = [next::DEST_OPTIONS, 0, 1, 4, 0, 0, 0, 0, proto::TCP, 0, 1, 4, 0, 0, 0, 0];
    let syn = build::tcp6_ext((client(), 40000), (vip(), 80), SYN, b"", next::HOP_BY_HOP, &ext);
    let (v, out) = run(&mut e, t(0), &syn);
    assert!(matches!(v, Verdict::Tun { .. }), "{v:?}");
    assert!(build::checksums_valid6(&out));
    assert_eq!(&out[40..56], &ext, "extension headers untouched");
    let ip = Ipv6Packet::new_checked(&out[..]).expect("ipv6");
    assert_eq!(ip.dst_addr(), s1());
    assert_eq!(u16::from_be_bytes([out[58], out[59]]), 8080, "port rewritten after the extensions");
    // ESP is not walked; a later fragment has no ports; hop limit 0.
    let mut esp = build::tcp6((client(), 1), (vip(), 80), SYN, b"");
    esp[6] = 50;
    assert_eq!(run(&mut e, t(0), &esp).0, Verdict::Drop(DropReason::UnsupportedProtocol));
    let frag = [proto::TCP, 0, 0x00, 0x09, 0, 0, 0, 1]; // offset 1, more fragments
    let later = build::tcp6_ext((client(), 2), (vip(), 80), ACK, b"", next::FRAGMENT, &frag);
    assert_eq!(run(&mut e, t(0), &later).0, Verdict::Drop(DropReason::LaterFragment));
    let first = [proto::TCP, 0, 0x00, 0x01, 0, 0, 0, 2]; // offset 0, more fragments
    let first = build::tcp6_ext((client(), 3), (vip(), 80), SYN, b"", next::FRAGMENT, &first);
    assert!(matches!(run(&mut e, t(0), &first).0, Verdict::Tun { .. }), "a first fragment follows its flow");
    let mut hl0 = build::tcp6((client(), 4), (vip(), 80), SYN, b"");
    hl0[7] = 0;
    assert_eq!(run(&mut e, t(0), &hl0).0, Verdict::Drop(DropReason::TtlExceeded));
    // An IPv4 packet to an IPv6-only engine matches no service.
    let v4 = build::tcp((Ipv4Addr::new(198, 51, 100, 1), 5), (Ipv4Addr::new(192, 0, 2, 1), 80), SYN, b"");
    assert_eq!(run(&mut e, t(0), &v4).0, Verdict::Drop(DropReason::NoService));
}

#[test]
fn direct_routing_frames_the_unchanged_packet_to_the_ipv6_server() {
    let mut e = engine6(vec![service6(Forwarding::Dr, Protocol::Tcp)], local6());
    let syn = build::tcp6((client(), 40000), (vip(), 80), SYN, b"");
    let (v, out) = run(&mut e, t(0), &syn);
    assert_eq!(v, Verdict::L2 { len: syn.len(), next_hop: IpAddr::V6(s1()) });
    assert_eq!(out, syn);
    // The client's ACK establishes the flow (DR sees no server packets).
    run(&mut e, t(1), &build::tcp6((client(), 40000), (vip(), 80), ACK, b""));
    let key = FwdKey { proto: 6, client: client(), client_port: 40000, vip: vip(), vip_port: 80 };
    let slot = e.table6().find_fwd(&key).expect("tracked");
    assert_eq!(e.table6().get(slot).state, State::Established);
}

#[test]
fn the_direct_routing_servers_are_listed_once_for_neighbour_warming() {
    let mut svcs = vec![service6(Forwarding::Dr, Protocol::Tcp), service6(Forwarding::Dr, Protocol::Udp)];
    svcs.push(service6(Forwarding::Tunnel, Protocol::Tcp));
    svcs[2].servers[0].address = IpAddr::V6(a("fd00:1::99"));
    let e = engine6(svcs, local6());
    let mut hops = Vec::new();
    e.dr_servers(&mut hops);
    assert_eq!(hops, vec![IpAddr::V6(s1()), IpAddr::V6(s2())], "DR servers once each, no tunnel server");
}

#[test]
fn ipv6_in_ipv6_tunnel_and_packet_too_big() {
    let mut e = engine6(vec![service6(Forwarding::Tunnel, Protocol::Tcp)], local6());
    let syn = build::tcp6((client(), 40000), (vip(), 80), SYN, b"");
    let (v, out) = run(&mut e, t(0), &syn);
    assert_eq!(v, Verdict::Tun { len: syn.len() + 40 });
    let outer = Ipv6Packet::new_checked(&out[..]).expect("outer");
    assert_eq!((outer.src_addr(), outer.dst_addr(), outer.next_header()), (local6(), s1(), proto::IPV6));
    assert_eq!(&out[40..], &syn[..], "the inner packet is the client's, untouched");
    // Over the path MTU with the outer header: Packet Too Big to the client, MTU 1460.
    let big = build::tcp6((client(), 40000), (vip(), 80), ACK, &[7u8; 1440]);
    let (v, out) = run(&mut e, t(1), &big);
    assert!(matches!(v, Verdict::Tun { .. }), "{v:?}");
    let ip = Ipv6Packet::new_checked(&out[..]).expect("icmpv6");
    assert_eq!((ip.src_addr(), ip.dst_addr(), ip.next_header()), (local6(), client(), proto::ICMPV6));
    assert_eq!((out[40], out[41]), (forward::icmp6::PACKET_TOO_BIG, 0));
    assert_eq!(u32::from_be_bytes([out[44], out[45], out[46], out[47]]), 1460);
    assert!(build::checksums_valid6(&out));
    assert!(out.len() <= 1280, "an ICMPv6 error fits the minimum MTU");
    assert_eq!(e.stats().frag_needed_sent, 1);
    // Without an IPv6 address of its own the ATM cannot tunnel over IPv6.
    let mut none = engine6(vec![service6(Forwarding::Tunnel, Protocol::Tcp)], Ipv6Addr::UNSPECIFIED);
    assert_eq!(run(&mut none, t(0), &syn).0, Verdict::Drop(DropReason::NoServer));
}

#[test]
fn icmpv6_errors_quoting_a_flow_are_translated_both_ways() {
    let mut e = engine6(vec![service6(Forwarding::Nat, Protocol::Tcp)], local6());
    let syn = build::tcp6((client(), 40000), (vip(), 80), SYN, b"");
    let (_, to_server) = run(&mut e, t(0), &syn);
    // A router on the server side: the NAT'd packet was too big.
    let router = a("fd00:1::fe");
    let ptb = build::icmp6_error(router, client(), forward::icmp6::PACKET_TOO_BIG, 0, 1400, &to_server);
    let (v, out) = run(&mut e, t(1), &ptb);
    assert!(matches!(v, Verdict::Tun { .. }), "{v:?}");
    assert!(build::checksums_valid6(&out), "ICMPv6 checksum (pseudo-header included)");
    let ip = Ipv6Packet::new_checked(&out[..]).expect("ipv6");
    assert_eq!((ip.src_addr(), ip.dst_addr()), (vip(), client()));
    let quoted = &out[48..];
    assert_eq!(ends(quoted), (client(), 40000, vip(), 80), "the quote is what the client sent");
    assert!(build::checksums_valid6(quoted), "the quoted segment's checksum too");
    // From the client's side, about the VIP's reply: goes to the server.
    let (_, reply) = run(&mut e, t(2), &build::tcp6((s1(), 8080), (client(), 40000), SYN | ACK, b""));
    let unreach = build::icmp6_error(client(), vip(), forward::icmp6::DEST_UNREACHABLE, 4, 0, &reply);
    let (v, out) = run(&mut e, t(3), &unreach);
    assert!(matches!(v, Verdict::Tun { .. }), "{v:?}");
    assert!(build::checksums_valid6(&out));
    assert_eq!(Ipv6Packet::new_checked(&out[..]).expect("ipv6").dst_addr(), s1());
    assert_eq!(ends(&out[48..]), (s1(), 8080, client(), 40000));
    assert_eq!(e.stats().icmp_translated, 2);
    // Echo and errors about unknown flows are dropped and counted.
    let other = build::tcp6((client(), 1), (vip(), 80), SYN, b"");
    let unknown = build::icmp6_error(router, a("2001:db8::55"), 1, 0, 0, &other);
    assert_eq!(run(&mut e, t(4), &unknown).0, Verdict::Drop(DropReason::IcmpNoFlow));
    let echo = build::icmp6_error(client(), vip(), 128, 0, 0, b"ping");
    assert_eq!(run(&mut e, t(4), &echo).0, Verdict::Drop(DropReason::IcmpNotError));
}

#[test]
fn ipv6_flows_sync_to_a_backup_that_then_carries_them() {
    let svc = || vec![service6(Forwarding::Nat, Protocol::Tcp)];
    let mut primary = engine6(svc(), local6());
    primary.set_sync(true);
    let mut backup = engine6(svc(), local6());
    backup.set_active(false);
    // 30 established flows: more than one IPv6 datagram holds.
    for port in 0..30u16 {
        run(&mut primary, t(0), &build::tcp6((client(), 40000 + port), (vip(), 80), SYN, b""));
        let server = if port % 2 == 0 { s1() } else { s2() };
        run(&mut primary, t(1), &build::tcp6((server, 8080), (client(), 40000 + port), SYN | ACK, b""));
        run(&mut primary, t(2), &build::tcp6((client(), 40000 + port), (vip(), 80), ACK, b""));
    }
    let secret = b"0123456789abcdef0123456789abcdef";
    let mut sender = SyncSender::new(secret, 7, 1, 10_000);
    let mut receiver = SyncReceiver::new(secret, 7);
    let mut out = vec![0u8; crate::dataplane::sync::MAX_DATAGRAM];
    let mut datagrams = 0;
    for ms in (100..2000).step_by(50) {
        while let Some(n) = sender.poll_transmit(t(ms), &mut primary, &mut out) {
            assert!(n <= crate::dataplane::sync::MAX_DATAGRAM);
            receiver.handle(t(ms), &out[..n], &mut backup).expect("accepted");
            datagrams += 1;
        }
    }
    assert!(datagrams >= 2, "{datagrams} datagrams");
    assert_eq!(backup.table6().len(), 30);
    backup.set_active(true);
    let (v, out) = run(&mut backup, t(3000), &build::tcp6((client(), 40001), (vip(), 80), ACK, b"x"));
    assert!(matches!(v, Verdict::Tun { .. }), "{v:?}");
    assert_eq!(ends(&out).2, s2(), "the synced flow keeps its server");
}

#[test]
fn a_dual_stack_engine_keeps_both_families_apart() {
    let svc4 = Service {
        name: "web4".into(),
        vip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
        servers: vec![testkit::server("s1", Ipv4Addr::new(10, 0, 1, 3), 8080, 1)],
        ..service6(Forwarding::Nat, Protocol::Tcp)
    };
    let mut e = engine6(vec![svc4, service6(Forwarding::Nat, Protocol::Tcp)], local6());
    let (v, _) = run(
        &mut e,
        t(0),
        &build::tcp((Ipv4Addr::new(198, 51, 100, 7), 1000), (Ipv4Addr::new(192, 0, 2, 10), 80), SYN, b""),
    );
    assert!(matches!(v, Verdict::Tun { .. }));
    let (v, _) = run(&mut e, t(0), &build::tcp6((client(), 1000), (vip(), 80), SYN, b""));
    assert!(matches!(v, Verdict::Tun { .. }));
    assert_eq!((e.table().len(), e.table6().len()), (1, 1));
    assert_eq!(e.servers(0)[0].active + e.servers(1)[0].active, 2);
    // An IPv4-only engine allocates no IPv6 table; a reload adding an IPv6 service does.
    let only4 = super::tests::engine_with(vec![], 1000);
    assert_eq!(only4.table6().capacity(), 1);
    let mut e4 = engine6(vec![], local6());
    let new = vec![service6(Forwarding::Nat, Protocol::Tcp)];
    let remap = crate::dataplane::settings::Remap { services: vec![], servers: vec![] };
    let table = settings::Table { max_connections: 1000, ..settings::Table::default() };
    e4.reconfigure(t(0), &Reload { old: &[], new: &new, remap: &remap, table: &table });
    assert_eq!(e4.table6().capacity(), 1000);
    assert!(matches!(
        run(&mut e4, t(1), &build::tcp6((client(), 5), (vip(), 80), SYN, b"")).0,
        Verdict::Tun { .. }
    ));
}

#[test]
fn persistence_keeps_an_ipv6_client_on_its_server() {
    let mut svc = service6(Forwarding::Nat, Protocol::Tcp);
    svc.persistence_s = 300;
    let mut e = engine6(vec![svc], local6());
    let first = ends(&run(&mut e, t(0), &build::tcp6((client(), 1000), (vip(), 80), SYN, b"")).1).2;
    for port in 1001..1010 {
        let (_, out) = run(&mut e, t(1), &build::tcp6((client(), port), (vip(), 80), SYN, b""));
        assert_eq!(ends(&out).2, first, "port {port}");
    }
    let other = a("2001:db8:99::8");
    let (_, out) = run(&mut e, t(2), &build::tcp6((other, 1000), (vip(), 80), SYN, b""));
    assert_ne!(ends(&out).2, first, "round robin for another client");
}

#[test]
fn a_million_ipv6_connections_fit_in_256_mb() {
    let mut tab = crate::dataplane::conntrack::ConnTable::<Ipv6Addr>::new(
        &settings::Table { max_connections: 1_000_000, ..settings::Table::default() },
        7,
    );
    let mut sink = |_: &Entry<Ipv6Addr>| {};
    for n in 0..1_000_000u32 {
        let c = Ipv6Addr::from_bits(0x2001_0db8_0099_0000_0000_0000_0000_0000 | u128::from(n));
        let e = Entry::new(6, (c, 40000), (vip(), 80), (s1(), 8080), 0, 0, State::Established, FLAG_NAT);
        tab.insert(e, t(1), &mut sink);
    }
    assert_eq!(tab.len(), 1_000_000);
    let bytes = tab.memory_bytes();
    println!(
        "IPv6 entry: {} bytes; 1,000,000: {:.1} MB",
        core::mem::size_of::<Entry<Ipv6Addr>>(),
        bytes as f64 / 1e6
    );
    assert!(bytes <= 256 * 1024 * 1024, "{bytes} bytes");
}

proptest! {
    #[test]
    fn nat66_rewrites_keep_checksums_valid(
        c in any::<u128>(), srv in any::<u128>(), cport in 1u16.., sport in 1u16..,
        tcp in any::<bool>(), payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let (c, srv) = (Ipv6Addr::from_bits(c), Ipv6Addr::from_bits(srv));
        let pkt = if tcp {
            build::tcp6((c, cport), (vip(), 80), ACK, &payload)
        } else {
            build::udp6((c, cport), (vip(), 80), &payload)
        };
        let l4 = if tcp { proto::TCP } else { proto::UDP };
        let mut tx = vec![0u8; pkt.len()];
        let rw = forward::Rewrite { side: forward::Side::Dst, addr: IpAddr::V6(srv), port: sport, partial: false, l4_offset: 40, proto: l4 };
        prop_assert_eq!(forward::rewrite(&pkt, &mut tx, rw), Verdict::Tun { len: pkt.len() });
        prop_assert!(build::checksums_valid6(&tx));
        let mut back = vec![0u8; pkt.len()];
        let rw = forward::Rewrite { side: forward::Side::Dst, addr: IpAddr::V6(vip()), port: 80, partial: false, l4_offset: 40, proto: l4 };
        forward::rewrite(&tx, &mut back, rw);
        prop_assert_eq!(&back, &pkt);
    }

    #[test]
    fn no_ipv6_input_makes_the_engine_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), nh in any::<u8>()) {
        let mut e = engine6(vec![service6(Forwarding::Nat, Protocol::Tcp), service6(Forwarding::Tunnel, Protocol::Udp)], local6());
        let mut p = build::tcp6((client(), 1), (vip(), 80), SYN, b"");
        p.truncate(40);
        p[6] = nh;
        p.extend_from_slice(&bytes);
        let plen = (p.len() - 40) as u16;
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        let mut tx = vec![0u8; 2048];
        let _ = e.process(t(0), &p, &mut tx);
        let mut small = vec![0u8; 64];
        let _ = e.process(t(0), &p, &mut small);
    }
}
