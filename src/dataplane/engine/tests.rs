use super::*;
use crate::dataplane::settings::{Protocol, SchedulerKind, ServiceSettings as Service};
use crate::dataplane::sync::{SyncReceiver, SyncSender};
use crate::dataplane::wire::icmp::kind;
use crate::dataplane::wire::tcp::flags::{ACK, FIN, SYN};
use crate::dataplane::wire::{self, build};
use proptest::prelude::*;

pub(crate) const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub(crate) const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
pub(crate) const S1: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 3);
const S2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 4);

fn service(forwarding: Forwarding, protocol: Protocol) -> Service {
    Service::builder("web", VIP, 80)
        .protocol(protocol)
        .forwarding(forwarding)
        .scheduler(SchedulerKind::Rr)
        .server("s1", S1, 8080, 1)
        .server("s2", S2, 8080, 1)
        .build()
}

pub(crate) fn engine_with(services: Vec<Service>, max: u32) -> Engine {
    Engine::new(&EngineConfig {
        services,
        table: settings::Table { max_connections: max, ..settings::Table::default() },
        local_addr: LOCAL,
        local_addr6: core::net::Ipv6Addr::UNSPECIFIED,
        path_mtu: 1500,
        seed: 42,
    })
}

pub(crate) fn engine(f: Forwarding) -> Engine {
    engine_with(vec![service(f, Protocol::Tcp), service(f, Protocol::Udp)], 1000)
}

pub(crate) fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

pub(crate) fn run(e: &mut Engine, now: Instant, pkt: &[u8]) -> (Verdict, Vec<u8>) {
    let mut tx = vec![0u8; 2048];
    let v = e.process(now, pkt, &mut tx);
    let len = match v {
        Verdict::Tun { len } | Verdict::L2 { len, .. } => len,
        Verdict::Drop(_) => 0,
    };
    tx.truncate(len);
    (v, tx)
}

pub(crate) fn addrs(pkt: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let p = Ipv4Packet::new_checked(pkt).unwrap();
    let l4 = p.payload();
    (p.src_addr(), wire::be16(l4, 0), p.dst_addr(), wire::be16(l4, 2))
}

#[test]
fn nat_round_trip_tracks_tcp_state() {
    let mut e = engine(Forwarding::Nat);
    let syn = build::tcp((CLIENT, 40000), (VIP, 80), SYN, b"");
    let (v, out) = run(&mut e, t(0), &syn);
    assert!(matches!(v, Verdict::Tun { .. }), "{v:?}");
    assert!(build::checksums_valid(&out));
    assert_eq!(addrs(&out), (CLIENT, 40000, S1, 8080));
    let slot = e
        .table()
        .find_fwd(&FwdKey { proto: 6, client: CLIENT, client_port: 40000, vip: VIP, vip_port: 80 })
        .unwrap();
    assert_eq!(e.table().get(slot).state, State::SynSent);

    let synack = build::tcp((S1, 8080), (CLIENT, 40000), SYN | ACK, b"");
    let (v, out) = run(&mut e, t(1), &synack);
    assert!(matches!(v, Verdict::Tun { .. }));
    assert!(build::checksums_valid(&out));
    assert_eq!(addrs(&out), (VIP, 80, CLIENT, 40000));
    assert_eq!(e.table().get(slot).state, State::SynRecv);

    let ack = build::tcp((CLIENT, 40000), (VIP, 80), ACK, b"GET / HTTP/1.0\r\n\r\n");
    let (_, out) = run(&mut e, t(2), &ack);
    assert!(build::checksums_valid(&out));
    assert_eq!(e.table().get(slot).state, State::Established);
    assert_eq!(e.servers(0)[0].active, 1);

    let fin = build::tcp((S1, 8080), (CLIENT, 40000), FIN | ACK, b"");
    run(&mut e, t(3), &fin);
    assert_eq!(e.table().get(slot).state, State::Closing);
    let s = e.stats();
    assert_eq!((s.nat_to_server, s.nat_to_client, s.new_connections), (2, 2, 1));
    let c = e.server_counters(0)[0];
    let bytes_in = (syn.len() + ack.len()) as u64;
    let bytes_out = (synack.len() + fin.len()) as u64;
    assert_eq!(
        (c.connections, c.packets_in, c.bytes_in, c.packets_out, c.bytes_out),
        (1, 2, bytes_in, 2, bytes_out)
    );
    assert_eq!(e.server_counters(0)[1], Default::default(), "the other server saw nothing");
    assert!(e.server_counters(9).is_empty());
}

#[test]
fn round_robin_spreads_new_flows() {
    let mut e = engine(Forwarding::Nat);
    let a = run(&mut e, t(0), &build::tcp((CLIENT, 1), (VIP, 80), SYN, b"")).1;
    let b = run(&mut e, t(0), &build::tcp((CLIENT, 2), (VIP, 80), SYN, b"")).1;
    assert_eq!((addrs(&a).2, addrs(&b).2), (S1, S2));
}

#[test]
fn udp_nat_and_zero_checksum() {
    let mut e = engine(Forwarding::Nat);
    let mut d = build::udp((CLIENT, 5353), (VIP, 80), b"query");
    let (_, out) = run(&mut e, t(0), &d);
    assert!(build::checksums_valid(&out));
    assert_eq!(addrs(&out).2, S1);
    d[26] = 0;
    d[27] = 0; // no checksum
    let (_, out) = run(&mut e, t(1), &d);
    assert_eq!(&out[26..28], &[0, 0]);
    let reply = build::udp((S1, 8080), (CLIENT, 5353), b"answer");
    let (_, out) = run(&mut e, t(2), &reply);
    assert_eq!(addrs(&out), (VIP, 80, CLIENT, 5353));
    assert!(build::checksums_valid(&out));
}

#[test]
fn direct_routing_keeps_the_packet() {
    let mut e = engine(Forwarding::Dr);
    let syn = build::tcp((CLIENT, 40000), (VIP, 80), SYN, b"");
    let (v, out) = run(&mut e, t(0), &syn);
    assert_eq!(v, Verdict::L2 { len: syn.len(), next_hop: IpAddr::V4(S1) });
    assert_eq!(out, syn);
    let ack = build::tcp((CLIENT, 40000), (VIP, 80), ACK, b"");
    run(&mut e, t(1), &ack);
    let (_, e0) = e.table().iter().next().unwrap();
    assert_eq!(e0.state, State::Established);
    assert_eq!(e.stats().direct_routed, 2);
}

#[test]
fn tunnel_encapsulates_or_says_frag_needed() {
    let mut e = engine(Forwarding::Tunnel);
    let syn = build::tcp((CLIENT, 40000), (VIP, 80), SYN, b"");
    let (v, out) = run(&mut e, t(0), &syn);
    assert_eq!(v, Verdict::Tun { len: syn.len() + 20 });
    let outer = Ipv4Packet::new_checked(&out[..]).unwrap();
    assert!(outer.verify_checksum());
    assert_eq!((outer.src_addr(), outer.dst_addr(), outer.protocol()), (LOCAL, S1, proto::IPIP));
    assert!(outer.dont_frag());
    assert_eq!(outer.payload(), &syn[..]);

    // 1481 bytes + 20 > 1500 with DF: the client learns MTU 1480.
    let big = build::tcp((CLIENT, 40000), (VIP, 80), ACK, &[7u8; 1441]);
    let (v, out) = run(&mut e, t(1), &big);
    assert!(matches!(v, Verdict::Tun { .. }));
    assert!(build::checksums_valid(&out));
    let ip = Ipv4Packet::new_checked(&out[..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr(), ip.protocol()), (LOCAL, CLIENT, proto::ICMP));
    let icmp = wire::IcmpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((icmp.msg_type(), icmp.code(), icmp.next_hop_mtu()), (3, 4, 1480));
    assert_eq!(&icmp.payload()[..40], &big[..40]);
    assert_eq!(e.stats().frag_needed_sent, 1);

    // Without DF the outer packet goes out (the kernel fragments it), DF clear.
    let mut nodf = big.clone();
    let p = Ipv4Packet::new_checked(&nodf[..]).unwrap();
    let w = wire::be16(p.header(), 6) & !0x4000;
    let c = wire::checksum::update16(p.checksum(), 0x4000, w);
    wire::put16(&mut nodf, 6, w);
    wire::put16(&mut nodf, 10, c);
    let (v, out) = run(&mut e, t(2), &nodf);
    assert_eq!(v, Verdict::Tun { len: nodf.len() + 20 });
    assert!(!Ipv4Packet::new_checked(&out[..]).unwrap().dont_frag());
}

#[test]
fn fragments_first_follows_later_dropped() {
    let mut e = engine(Forwarding::Nat);
    let mut first = build::udp((CLIENT, 5000), (VIP, 80), &[1u8; 64]);
    set_frag(&mut first, 0x2000); // MF, offset 0
    let (v, out) = run(&mut e, t(0), &first);
    assert!(matches!(v, Verdict::Tun { .. }));
    assert_eq!(addrs(&out).2, S1);
    let mut later = build::udp((CLIENT, 5000), (VIP, 80), &[1u8; 64]);
    set_frag(&mut later, 0x0009); // offset 72
    assert_eq!(run(&mut e, t(0), &later).0, Verdict::Drop(DropReason::LaterFragment));
    assert_eq!(e.stats().dropped(DropReason::LaterFragment), 1);
}

fn set_frag(pkt: &mut [u8], word: u16) {
    let old = wire::be16(pkt, 6);
    let c = wire::checksum::update16(wire::be16(pkt, 10), old, word);
    wire::put16(pkt, 6, word);
    wire::put16(pkt, 10, c);
}

#[test]
fn bad_packets_are_counted_by_reason() {
    let mut e = engine(Forwarding::Nat);
    let syn = build::tcp((CLIENT, 1), (VIP, 80), SYN, b"");
    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        (vec![], DropReason::Truncated),
        (syn[..10].to_vec(), DropReason::Truncated),
        (syn[..30].to_vec(), DropReason::Truncated),
        (
            {
                // An IPv4 packet whose version says 6: its "payload length" runs past it.
                let mut b = syn.clone();
                b[0] = 0x60;
                b
            },
            DropReason::Truncated,
        ),
        (
            {
                let mut b = syn.clone();
                b[0] = 0x43;
                b
            },
            DropReason::BadHeader,
        ),
        (
            {
                let mut b = syn.clone();
                b[15] ^= 1;
                b
            },
            DropReason::BadChecksum,
        ),
        (build::tcp((CLIENT, 1), (VIP, 81), SYN, b""), DropReason::NoService),
        (build::tcp((CLIENT, 1), (VIP, 80), ACK, b""), DropReason::NoConnection),
        (build::tcp((S1, 8080), (CLIENT, 9), ACK, b""), DropReason::NoService),
        (
            {
                let mut b = syn.clone();
                b[9] = 47;
                let c = wire::checksum::update16(wire::be16(&b, 10), 0x4006, 0x402f);
                wire::put16(&mut b, 10, c);
                b
            },
            DropReason::UnsupportedProtocol,
        ),
        (
            {
                let mut b = syn.clone();
                b[32] = 0x40;
                b
            },
            DropReason::BadHeader,
        ),
    ];
    for (pkt, reason) in &cases {
        assert_eq!(run(&mut e, t(0), pkt).0, Verdict::Drop(*reason), "{pkt:?}");
    }
    let total: u64 = e.stats().drops.iter().sum();
    assert_eq!(total, cases.len() as u64);
    let mut small = [0u8; 8];
    assert_eq!(e.process(t(0), &syn, &mut small), Verdict::Drop(DropReason::BufferTooSmall));
}

#[test]
fn icmp_frag_needed_from_server_side_is_translated() {
    let mut e = engine(Forwarding::Nat);
    let syn = build::tcp((CLIENT, 40000), (VIP, 80), SYN, b"");
    let (_, to_server) = run(&mut e, t(0), &syn);
    let router = Ipv4Addr::new(10, 0, 1, 254);
    let err = build::icmp_error(
        router,
        CLIENT,
        kind::DEST_UNREACHABLE,
        kind::CODE_FRAG_NEEDED,
        [0, 0, 5, 0],
        &to_server,
    );
    let (v, out) = run(&mut e, t(1), &err);
    assert!(matches!(v, Verdict::Tun { .. }), "{v:?}");
    assert!(build::checksums_valid(&out));
    let ip = Ipv4Packet::new_checked(&out[..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (VIP, CLIENT));
    let quoted = &ip.payload()[8..];
    assert_eq!(quoted, &syn[..], "the quote is what the client sent");
    assert_eq!(e.stats().icmp_translated, 1);
}

#[test]
fn icmp_from_client_side_reaches_the_server() {
    let mut e = engine(Forwarding::Nat);
    run(&mut e, t(0), &build::tcp((CLIENT, 40000), (VIP, 80), SYN, b""));
    let (_, reply) = run(&mut e, t(1), &build::tcp((S1, 8080), (CLIENT, 40000), SYN | ACK, b""));
    let router = Ipv4Addr::new(203, 0, 113, 1);
    let err =
        build::icmp_error(router, VIP, kind::DEST_UNREACHABLE, kind::CODE_FRAG_NEEDED, [0, 0, 5, 0], &reply);
    let (v, out) = run(&mut e, t(2), &err);
    assert!(matches!(v, Verdict::Tun { .. }), "{v:?}");
    assert!(build::checksums_valid(&out));
    let ip = Ipv4Packet::new_checked(&out[..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (router, S1));
    let q = Ipv4Packet::new_checked(&ip.payload()[8..]).unwrap();
    assert!(q.verify_checksum());
    assert_eq!((q.src_addr(), q.dst_addr()), (S1, CLIENT));
    // Unrelated errors and echo requests are dropped.
    let other = build::icmp_error(router, VIP, 3, 1, [0; 4], &build::tcp((VIP, 80), (CLIENT, 1), ACK, b""));
    assert_eq!(run(&mut e, t(3), &other).0, Verdict::Drop(DropReason::IcmpNoFlow));
    let echo = build::icmp_error(router, VIP, kind::ECHO_REQUEST, 0, [0; 4], &[0u8; 28]);
    assert_eq!(run(&mut e, t(3), &echo).0, Verdict::Drop(DropReason::IcmpNotError));
}

#[test]
fn persistence_keeps_a_client_on_its_server() {
    let mut svc = service(Forwarding::Nat, Protocol::Tcp);
    svc.persistence_s = 60;
    let mut e = engine_with(vec![svc], 100);
    let first = run(&mut e, t(0), &build::tcp((CLIENT, 1), (VIP, 80), SYN, b"")).1;
    let other = Ipv4Addr::new(198, 51, 100, 8);
    run(&mut e, t(0), &build::tcp((other, 1), (VIP, 80), SYN, b""));
    let again = run(&mut e, t(1000), &build::tcp((CLIENT, 2), (VIP, 80), SYN, b"")).1;
    assert_eq!(addrs(&first).2, addrs(&again).2);
    // After the timeout the scheduler decides again (round robin moves on).
    let third = Ipv4Addr::new(198, 51, 100, 9);
    run(&mut e, t(200_000), &build::tcp((third, 1), (VIP, 80), SYN, b""));
    let later = run(&mut e, t(200_000), &build::tcp((CLIENT, 3), (VIP, 80), SYN, b"")).1;
    assert_ne!(addrs(&later).2, addrs(&first).2);
}

#[test]
fn drain_down_and_reset() {
    let mut svc = service(Forwarding::Nat, Protocol::Tcp);
    svc.on_down = OnDown::Reset;
    let mut e = engine_with(vec![svc], 100);
    run(&mut e, t(0), &build::tcp((CLIENT, 1), (VIP, 80), SYN, b""));
    e.set_server_state(0, 1, 0, true).unwrap(); // drain S2
    let b = run(&mut e, t(0), &build::tcp((CLIENT, 2), (VIP, 80), SYN, b"")).1;
    assert_eq!(addrs(&b).2, S1);
    e.set_server_state(0, 0, 1, false).unwrap(); // S1 down, reset
    let ack = build::tcp((CLIENT, 1), (VIP, 80), ACK, b"");
    let (v, rst) = run(&mut e, t(1), &ack);
    assert_eq!(v, Verdict::Tun { len: 40 });
    assert!(build::checksums_valid(&rst));
    assert_eq!(addrs(&rst), (VIP, 80, CLIENT, 1));
    let seg = wire::TcpPacket::new_checked(&rst[20..]).unwrap();
    assert_eq!((seg.flags(), seg.seq_number()), (wire::tcp::flags::RST, 0x0a0b_0c0d));
    assert_eq!(e.stats().resets_sent, 1);
    assert_eq!(e.servers(0)[0].active, 1, "the other S1 connection waits for its next packet");
    // The entry is gone: later segments of that connection have none.
    assert_eq!(run(&mut e, t(1), &ack).0, Verdict::Drop(DropReason::NoConnection));
    assert_eq!(
        run(&mut e, t(1), &build::tcp((CLIENT, 3), (VIP, 80), SYN, b"")).0,
        Verdict::Drop(DropReason::NoServer)
    );
    assert!(e.set_server_state(0, 9, 1, true).is_err());
}

#[test]
fn entries_expire_and_release_servers() {
    let mut e = engine(Forwarding::Nat);
    run(&mut e, t(0), &build::tcp((CLIENT, 1), (VIP, 80), SYN, b""));
    assert_eq!(e.servers(0)[0].active, 1);
    assert_eq!(e.expire(t(31_000), 10), 1);
    assert_eq!(e.servers(0)[0].active, 0);
    assert_eq!(e.stats().table_expired, 1);
}

/// The primary's changes reach a backup through the sync sender and receiver; after
/// promotion the backup forwards mid-connection packets to the same server.
#[test]
fn sync_then_promote() {
    let mut primary = engine(Forwarding::Nat);
    primary.set_sync(true);
    let mut backup = engine(Forwarding::Nat);
    backup.set_active(false);
    let secret = b"cluster secret";
    let mut sender = SyncSender::new(secret, 7, 1, 1000);
    let mut receiver = SyncReceiver::new(secret, 7);
    for port in 1..=3u16 {
        run(&mut primary, t(0), &build::tcp((CLIENT, port), (VIP, 80), SYN, b""));
    }
    let srv = |p: u16| if p % 2 == 1 { S1 } else { S2 };
    for port in 1..=3u16 {
        run(&mut primary, t(1), &build::tcp((srv(port), 8080), (CLIENT, port), SYN | ACK, b""));
        run(&mut primary, t(2), &build::tcp((CLIENT, port), (VIP, 80), ACK, b""));
    }
    let mut buf = vec![0u8; crate::dataplane::sync::MAX_DATAGRAM];
    assert_eq!(sender.poll_transmit(t(3), &mut primary, &mut buf), None, "waits to batch");
    let due = sender.poll_timeout().unwrap();
    let len = sender.poll_transmit(due, &mut primary, &mut buf).unwrap();
    assert_eq!(receiver.handle(t(60), &buf[..len], &mut backup), Ok(3));
    assert_eq!(
        receiver.handle(t(61), &buf[..len], &mut backup),
        Err(crate::dataplane::sync::SyncError::Replay)
    );
    let ack = build::tcp((CLIENT, 2), (VIP, 80), ACK, b"x");
    assert_eq!(run(&mut backup, t(62), &ack).0, Verdict::Drop(DropReason::Inactive));
    backup.set_active(true);
    let (v, out) = run(&mut backup, t(63), &ack);
    assert!(matches!(v, Verdict::Tun { .. }));
    assert_eq!(addrs(&out).2, S2);
    assert_eq!(backup.servers(0)[1].active, 1);
    let reply = build::tcp((S2, 8080), (CLIENT, 2), ACK, b"y");
    assert_eq!(addrs(&run(&mut backup, t(64), &reply).1).0, VIP);
}

proptest! {
    /// NAT rewrite then the reverse rewrite gives back the original bytes, and every
    /// intermediate checksum equals a full recomputation.
    #[test]
    fn nat_rewrite_reverses_to_identity(
        client in any::<u32>(), cport in 1u16.., server in any::<u32>(), sport in 1u16..,
        tcp in any::<bool>(), fl in any::<u8>(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let (client, server) = (Ipv4Addr::from_bits(client), Ipv4Addr::from_bits(server));
        let pkt = if tcp {
            build::tcp((client, cport), (VIP, 80), fl, &payload)
        } else {
            build::udp((client, cport), (VIP, 80), &payload)
        };
        let ip = Ipv4Packet::new_checked(&pkt[..]).unwrap();
        let mut tx = vec![0u8; pkt.len()];
        let rw = forward::Rewrite { side: forward::Side::Dst, addr: IpAddr::V4(server), port: sport, partial: false, l4_offset: 20, proto: ip.protocol() };
        let v = forward::rewrite(ip.packet(), &mut tx, rw);
        prop_assert_eq!(v, Verdict::Tun { len: pkt.len() });
        prop_assert!(build::checksums_valid(&tx));
        let ip2 = Ipv4Packet::new_checked(&tx[..]).unwrap();
        let mut back = vec![0u8; pkt.len()];
        let rw = forward::Rewrite { side: forward::Side::Dst, addr: IpAddr::V4(VIP), port: 80, partial: false, l4_offset: 20, proto: ip2.protocol() };
        forward::rewrite(ip2.packet(), &mut back, rw);
        prop_assert_eq!(&back, &pkt);
        // The reply direction too.
        let reply = if tcp { build::tcp((server, sport), (client, cport), fl, &payload) } else { build::udp((server, sport), (client, cport), &payload) };
        let ip3 = Ipv4Packet::new_checked(&reply[..]).unwrap();
        let mut out = vec![0u8; reply.len()];
        let rw = forward::Rewrite { side: forward::Side::Src, addr: IpAddr::V4(VIP), port: 80, partial: false, l4_offset: 20, proto: ip3.protocol() };
        forward::rewrite(ip3.packet(), &mut out, rw);
        prop_assert!(build::checksums_valid(&out));
    }

    /// Arbitrary bytes never panic the engine, in any forwarding mode.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), mode in 0u8..3) {
        let f = [Forwarding::Nat, Forwarding::Dr, Forwarding::Tunnel][usize::from(mode)];
        let mut e = engine(f);
        let mut tx = vec![0u8; 256];
        let _ = e.process(t(0), &bytes, &mut tx);
    }
}

#[test]
fn tcp_state_table() {
    use State::*;
    let cases = [
        // (state, flags, from_client, nat) -> next
        (SynSent, SYN | ACK, false, true, SynRecv),
        (SynSent, ACK, true, true, SynSent), // NAT waits for the server's SYN-ACK
        (SynSent, ACK, true, false, Established), // DR/tunnel: client ACK ends the handshake
        (SynRecv, ACK, true, true, Established),
        (Established, ACK, true, true, Established),
        (Established, FIN | ACK, false, true, Closing),
        (Established, wire::tcp::flags::RST, true, false, Closing),
        (Closing, SYN, true, false, SynSent),
        (Closing, ACK, true, false, Closing),
    ];
    for (s, fl, c, nat, want) in cases {
        assert_eq!(tcp_next(s, fl, c, nat), want, "{s:?} {fl:#x} {c} {nat}");
    }
}

#[test]
fn full_resync_walks_live_entries_once() {
    let mut e = engine(Forwarding::Dr);
    e.set_sync(true);
    for port in 1..=5u16 {
        run(&mut e, t(0), &build::udp((CLIENT, port), (VIP, 80), b"q"));
    }
    run(&mut e, t(0), &build::tcp((CLIENT, 9), (VIP, 80), SYN, b"")); // half-open: not synced
    while e.poll_sync(t(1)).is_some() {}
    e.start_full_sync();
    let mut ports: Vec<u16> = std::iter::from_fn(|| e.poll_sync(t(1))).map(|r| r.client.port()).collect();
    ports.sort_unstable();
    assert_eq!(ports, vec![1, 2, 3, 4, 5]);
    assert_eq!(e.poll_sync(t(1)), None);
}

/// A walk looks only at slots ever used (a million-slot table with five flows is walked in
/// one short call), and in bounded steps: a call that finds nothing in its
/// `WALK_SLOTS_PER_CALL` slots returns `None` with the walk still running.
#[test]
fn full_resync_stops_at_the_used_slots_and_walks_in_bounded_steps() {
    use super::WALK_SLOTS_PER_CALL;
    let mut big = engine_with(vec![service(Forwarding::Dr, Protocol::Udp)], 1_000_000);
    big.set_sync(true);
    for port in 1..=5u16 {
        run(&mut big, t(0), &build::udp((CLIENT, port), (VIP, 80), b"q"));
    }
    while big.poll_sync(t(1)).is_some() {}
    assert_eq!(big.table().used_end(), 5);
    big.start_full_sync();
    assert_eq!(std::iter::from_fn(|| big.poll_sync(t(1))).count(), 5);
    assert!(!big.full_sync_running(), "one call reached the end of the used slots");

    // Entries at both ends of a stretch of freed slots longer than one step.
    let n = WALK_SLOTS_PER_CALL * 2 + 10;
    let mut e = engine_with(vec![service(Forwarding::Dr, Protocol::Udp)], n + 10);
    e.set_sync(true);
    for i in 0..n {
        let (a, p) = (Ipv4Addr::from(0x0a00_0000 + i), 1000);
        run(&mut e, t(0), &build::udp((a, p), (VIP, 80), b"q"));
    }
    while e.poll_sync(t(1)).is_some() {}
    // Only the first and last five stay: the rest expire and are reclaimed.
    let keep = |i: u32| i < 5 || i >= n - 5;
    for i in (0..n).filter(|&i| keep(i)) {
        run(&mut e, t(200_000), &build::udp((Ipv4Addr::from(0x0a00_0000 + i), 1000), (VIP, 80), b"q"));
    }
    let later = t(400_000);
    while e.expire(later, 1024) > 0 {}
    assert_eq!(e.table().len(), 10);
    while e.poll_sync(later).is_some() {}
    e.start_full_sync();
    let (mut got, mut empty_calls) = (0, 0);
    while e.full_sync_running() {
        match e.poll_sync(later) {
            Some(_) => got += 1,
            None => empty_calls += 1,
        }
        assert!(empty_calls < 10, "the walk ends");
    }
    assert_eq!(got, 10);
    assert!(empty_calls >= 2, "a long stretch of free slots takes more than one call");
}

/// During a handover half-open flows are synced (at once, and in a walk); otherwise never.
#[test]
fn half_open_flows_are_synced_only_while_handing_over() {
    let mut e = engine(Forwarding::Dr);
    e.set_sync(true);
    run(&mut e, t(0), &build::tcp((CLIENT, 9), (VIP, 80), SYN, b""));
    assert_eq!(e.poll_sync(t(0)), None, "no handover: a SYN is not synced");
    e.start_full_sync();
    assert_eq!(e.poll_sync(t(0)), None, "nor walked");
    e.set_handing_over(true);
    e.start_full_sync();
    let walked = e.poll_sync(t(1)).expect("walked while handing over");
    assert_eq!((walked.client.port(), walked.state), (9, State::SynSent));
    run(&mut e, t(2), &build::tcp((CLIENT, 10), (VIP, 80), SYN, b""));
    let new = e.poll_sync(t(2)).expect("a new SYN is synced at once");
    assert_eq!((new.client.port(), new.state), (10, State::SynSent));

    // The successor learns it and takes the client's ACK to the same server.
    let mut successor = engine(Forwarding::Dr);
    successor.apply_sync(t(3), &new).unwrap();
    let (v, _) = run(&mut successor, t(3), &build::tcp((CLIENT, 10), (VIP, 80), ACK, b"GET"));
    assert!(matches!(v, Verdict::L2 { next_hop, .. } if next_hop == new.server.ip()), "{v:?}");
}

/// Offloaded packets: the partial checksum patched by the engine, then finished as the
/// device would, verifies.
#[test]
fn offloaded_partial_checksums() {
    let mut e = engine(Forwarding::Nat);
    let to_partial = |mut p: Vec<u8>, at: usize| {
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        let len = ip.payload().len() as u16;
        let partial = wire::checksum::fold(wire::checksum::pseudo_header_v4(
            ip.src_bytes(),
            ip.dst_bytes(),
            ip.protocol(),
            len,
        ));
        wire::put16(&mut p, 20 + at, partial);
        p
    };
    let finish = |mut p: Vec<u8>, at: usize| {
        let c = wire::checksum::checksum(&p[20..]);
        wire::put16(&mut p, 20 + at, c);
        p
    };
    let syn = to_partial(build::tcp((CLIENT, 7), (VIP, 80), SYN, b"hello"), 16);
    let (v, out) = {
        let mut tx = vec![0u8; 2048];
        let v = e.process_offloaded(t(0), &syn, &mut tx);
        tx.truncate(syn.len());
        (v, tx)
    };
    assert!(matches!(v, Verdict::Tun { .. }));
    assert_eq!(addrs(&out), (CLIENT, 7, S1, 8080));
    assert!(build::checksums_valid(&finish(out, 16)));
    let reply = to_partial(build::udp((S1, 8080), (CLIENT, 9), b"x"), 6);
    run(&mut e, t(0), &build::udp((CLIENT, 9), (VIP, 80), b"x"));
    let mut tx = vec![0u8; 2048];
    e.process_offloaded(t(1), &reply, &mut tx);
    tx.truncate(reply.len());
    assert_eq!(addrs(&tx), (VIP, 80, CLIENT, 9));
    assert!(build::checksums_valid(&finish(tx, 6)));
}

#[test]
fn a_syn_reusing_the_tuple_of_a_closed_connection_avoids_a_failed_server() {
    for (down, drained) in [(true, false), (false, true)] {
        let mut e = engine(Forwarding::Dr);
        let syn = build::tcp((CLIENT, 40000), (VIP, 80), SYN, b"");
        let (v, _) = run(&mut e, t(0), &syn);
        assert!(matches!(v, Verdict::L2 { next_hop, .. } if next_hop == S1), "{v:?}");
        run(&mut e, t(1), &build::tcp((CLIENT, 40000), (VIP, 80), ACK, b"x"));
        run(&mut e, t(2), &build::tcp((CLIENT, 40000), (VIP, 80), FIN | ACK, b""));
        let weight = if drained { 0 } else { 1 };
        e.set_server_state(0, 0, weight, !down).unwrap();
        // Same source port, a new connection: S2, not the failed S1.
        let (v, _) = run(&mut e, t(3), &syn);
        assert!(matches!(v, Verdict::L2 { next_hop, .. } if next_hop == S2), "{v:?}");
        // An established connection to S1 keeps it (on_down: keep).
        run(&mut e, t(4), &build::tcp((CLIENT, 40001), (VIP, 80), SYN, b""));
        e.set_server_state(0, 0, 1, true).unwrap();
        let (v, _) = run(&mut e, t(5), &build::tcp((CLIENT, 40002), (VIP, 80), SYN, b""));
        let first = match v {
            Verdict::L2 { next_hop, .. } => next_hop,
            other => panic!("{other:?}"),
        };
        run(&mut e, t(6), &build::tcp((CLIENT, 40002), (VIP, 80), ACK, b"x"));
        e.set_server_state(0, usize::from(first != S1), weight, !down).unwrap();
        let (v, _) = run(&mut e, t(7), &build::tcp((CLIENT, 40002), (VIP, 80), ACK, b"y"));
        assert!(matches!(v, Verdict::L2 { next_hop, .. } if next_hop == first), "{v:?}");
    }
}

/// In place and copied, the whole-packet path gives the same bytes and the same verdicts
/// (NAT both ways, direct routing unchanged), and what the engine makes itself (a reset for
/// a server gone down with `on_down: reset`) lands in `tx`, the packet untouched.
#[test]
fn in_place_matches_the_copying_path() {
    let flows = |e: &mut Engine| {
        run(e, t(0), &build::tcp((CLIENT, 7), (VIP, 80), SYN, b""));
        run(e, t(1), &build::tcp((S1, 8080), (CLIENT, 7), SYN | ACK, b""));
    };
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
    for f in [Forwarding::Nat, Forwarding::Dr] {
        let (mut copying, mut in_place) = (engine(f), engine(f));
        flows(&mut copying);
        flows(&mut in_place);
        for (i, pkt) in [
            build::tcp((CLIENT, 7), (VIP, 80), ACK, &payload),
            build::tcp((S1, 8080), (CLIENT, 7), ACK, b"reply"),
            build::udp((CLIENT, 9), (VIP, 80), b"datagram"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut tx = vec![0u8; 65535];
            let want = copying.process_offloaded(t(2 + i as u64), &pkt, &mut tx);
            let mut buf = pkt.clone();
            let mut scratch = vec![0u8; 65535];
            let (got, out_in_place) = in_place.process_in_place(t(2 + i as u64), &mut buf, &mut scratch, 1);
            assert_eq!(got, want, "{f:?} packet {i}");
            match want {
                Verdict::Tun { len } | Verdict::L2 { len, .. } => {
                    assert!(out_in_place, "{f:?} packet {i} forwarded in place");
                    assert_eq!(&buf[..len], &tx[..len], "{f:?} packet {i} bytes");
                }
                Verdict::Drop(_) => {
                    assert!(!out_in_place);
                    assert_eq!(buf, pkt, "a dropped packet is left as it was");
                }
            }
        }
        assert_eq!(copying.stats(), in_place.stats(), "{f:?} counters");
    }
    let mut e = engine_with(
        vec![Service {
            on_down: OnDown::Reset,
            servers: vec![service(Forwarding::Nat, Protocol::Tcp).servers[0].clone()],
            ..service(Forwarding::Nat, Protocol::Tcp)
        }],
        1000,
    );
    run(&mut e, t(0), &build::tcp((CLIENT, 7), (VIP, 80), SYN, b""));
    e.set_server_state(0, 0, 1, false).unwrap();
    let pkt = build::tcp((CLIENT, 7), (VIP, 80), ACK, b"late");
    let mut buf = pkt.clone();
    let mut tx = vec![0u8; 2048];
    let (v, out_in_place) = e.process_in_place(t(1), &mut buf, &mut tx, 1);
    assert!(matches!(v, Verdict::Tun { len: 40 }), "{v:?}");
    assert!(!out_in_place, "the reset is in tx");
    assert_eq!(buf, pkt, "the packet is untouched");
    assert_eq!(addrs(&tx[..40]), (VIP, 80, CLIENT, 7));
}

/// A super-packet counts as the packets it becomes on the wire in the per-server counters
/// (operators compare them with switch counters), both ways; its bytes once.
#[test]
fn super_packets_count_as_their_segments() {
    let mut e = engine(Forwarding::Nat);
    run(&mut e, t(0), &build::tcp((CLIENT, 7), (VIP, 80), SYN, b""));
    run(&mut e, t(1), &build::tcp((S1, 8080), (CLIENT, 7), SYN | ACK, b""));
    let before = e.server_counters(0)[0];
    let payload = vec![7u8; 5000];
    let mut tx = vec![0u8; 65535];
    for (pkt, segments) in [
        (build::tcp((CLIENT, 7), (VIP, 80), ACK, &payload), 4),
        (build::tcp((S1, 8080), (CLIENT, 7), ACK, &payload), 4),
        (build::tcp((CLIENT, 7), (VIP, 80), ACK, b"one"), 1),
    ] {
        let mut buf = pkt.clone();
        let (v, _) = e.process_in_place(t(2), &mut buf, &mut tx, segments);
        assert!(matches!(v, Verdict::Tun { .. }), "{v:?}");
    }
    let c = e.server_counters(0)[0];
    assert_eq!((c.packets_in - before.packets_in, c.packets_out - before.packets_out), (5, 4));
    assert_eq!(c.bytes_in - before.bytes_in, (40 + 5000 + 40 + 3) as u64);
}
