use core::net::{IpAddr, SocketAddr};

use super::*;
use crate::auth::{Mac, TAG_LEN as MAC_LEN};
use crate::dataplane::conntrack::State;
use proptest::prelude::*;

/// The fixed header's length (`super`'s layout).
const HEADER: usize = 28;

const SECRET: &[u8] = b"s3cret";

fn rec(n: u16) -> SyncRecord {
    SyncRecord {
        kind: RecordKind::Connection,
        proto: 6,
        state: State::Established,
        client: SocketAddr::from(([198, 51, 100, 7], 40000 + n)),
        vip: SocketAddr::from(([192, 0, 2, 10], 80)),
        server: SocketAddr::from(([10, 0, 1, 3], 8080)),
        remaining_ms: 900_000 - u32::from(n),
    }
}

fn header(seq: u64) -> BatchHeader {
    BatchHeader { cluster_id: 7, session: 5, seq }
}

#[test]
fn round_trip() {
    let recs: Vec<_> = (0..MAX_RECORDS as u16).map(rec).collect();
    let mut buf = [0u8; MAX_DATAGRAM];
    let len = encode(SECRET, &header(1), &recs, &mut buf).unwrap();
    assert_eq!(len, MAX_DATAGRAM);
    const { assert!(MAX_DATAGRAM <= 1400) };
    let b = decode(SECRET, 7, &buf[..len]).unwrap();
    assert_eq!(b.header, header(1));
    assert_eq!(b.records().collect::<Vec<_>>(), recs);
}

#[test]
fn refuses_tampering_wrong_key_and_cluster() {
    let mut buf = [0u8; MAX_DATAGRAM];
    let len = encode(SECRET, &header(1), &[rec(1)], &mut buf).unwrap();
    for i in [5, 10, 30, len - 1] {
        let mut d = buf[..len].to_vec();
        d[i] ^= 0x80;
        assert_eq!(decode(SECRET, 7, &d).unwrap_err(), SyncError::BadMac, "byte {i}");
    }
    assert_eq!(decode(b"other", 7, &buf[..len]).unwrap_err(), SyncError::BadMac);
    assert_eq!(decode(SECRET, 8, &buf[..len]).unwrap_err(), SyncError::WrongCluster(7));
    assert_eq!(decode(SECRET, 7, &buf[..20]).unwrap_err(), SyncError::TooShort);
    let mut d = buf[..len].to_vec();
    d[4] = 2;
    assert_eq!(decode(SECRET, 7, &d).unwrap_err(), SyncError::UnsupportedVersion(2));
    let ipv6 = SyncRecord { client: "[2001:db8::1]:1".parse().unwrap(), ..rec(1) };
    let len = encode(SECRET, &header(1), &[ipv6, rec(2)], &mut buf).unwrap();
    assert_eq!(decode(SECRET, 7, &buf[..len]).unwrap().len(), 1);
}

/// An engine with one UDP service (`192.0.2.10:53`, scheduler `scheduler`, `servers` real
/// servers `10.0.0.3:53` upwards), sync on; also used by the full-sync tests.
pub(crate) fn udp_engine(
    scheduler: crate::dataplane::settings::SchedulerKind,
    servers: u8,
) -> (crate::dataplane::engine::Engine, core::net::Ipv4Addr) {
    udp_engine_with(scheduler, servers, 0)
}

/// [`udp_engine`] with `persistence_s`.
fn udp_engine_with(
    scheduler: crate::dataplane::settings::SchedulerKind,
    servers: u8,
    persistence_s: u64,
) -> (crate::dataplane::engine::Engine, core::net::Ipv4Addr) {
    use crate::dataplane::engine::{Engine, EngineConfig};
    use crate::dataplane::settings::{Forwarding, Protocol, ServiceSettings};
    use core::net::Ipv4Addr;
    let vip = Ipv4Addr::new(192, 0, 2, 10);
    let name = |i: u8| if servers == 1 { "a".to_string() } else { format!("s{i}") };
    let svc = ServiceSettings::builder("u", vip, 53)
        .protocol(Protocol::Udp)
        .forwarding(Forwarding::Dr)
        .scheduler(scheduler)
        .persistence_s(persistence_s)
        .servers(
            (0..servers)
                .map(|i| crate::dataplane::testkit::server(&name(i), Ipv4Addr::new(10, 0, 0, 3 + i), 53, 1)),
        )
        .build();
    let mut e = Engine::new(&EngineConfig {
        services: vec![svc],
        table: crate::dataplane::settings::Table::default(),
        local_addr: Ipv4Addr::new(10, 0, 0, 1),
        local_addr6: core::net::Ipv6Addr::UNSPECIFIED,
        path_mtu: 1500,
        seed: 1,
    });
    e.set_sync(true);
    (e, vip)
}

/// Each peer has its own session: a peer whose session is older than another's (a primary
/// that was never restarted, after one that was) is still heard; a replay from the same peer
/// is not, and an address that is no peer is refused before any check. One shared receiver
/// would refuse the older session.
#[test]
fn peer_receivers_keep_one_window_per_peer() {
    let (mut e, _) = udp_engine(crate::dataplane::settings::SchedulerKind::Rr, 1);
    let (a, b, stranger): (IpAddr, IpAddr, IpAddr) =
        ("10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap(), "10.0.0.9".parse().unwrap());
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut datagram = |session: u64, seq: u64, n: u16| {
        let h = BatchHeader { cluster_id: 7, session, seq };
        // A flow of the engine's service, so that applying it counts.
        let r = SyncRecord {
            proto: 17,
            state: State::Udp,
            vip: SocketAddr::from(([192, 0, 2, 10], 53)),
            server: SocketAddr::from(([10, 0, 0, 3], 53)),
            ..rec(n)
        };
        let len = encode(SECRET, &h, &[r], &mut buf).unwrap();
        buf[..len].to_vec()
    };
    let (newer, older) = (datagram(900, 1, 1), datagram(100, 1, 2));
    let mut peers = PeerReceivers::new(SyncReceiver::new(SECRET, 7), vec![a, b]);
    assert_eq!(peers.handle(Instant::ZERO, a, &newer, &mut e), Ok(1));
    assert_eq!(peers.handle(Instant::ZERO, b, &older, &mut e), Ok(1));
    assert_eq!(peers.handle(Instant::ZERO, b, &older, &mut e), Err(PeerSyncError::Sync(SyncError::Replay)));
    assert_eq!(peers.handle(Instant::ZERO, stranger, &newer, &mut e), Err(PeerSyncError::UnknownSender));
    let mut shared = SyncReceiver::new(SECRET, 7);
    assert_eq!(shared.handle(Instant::ZERO, &newer, &mut e), Ok(1));
    assert_eq!(shared.handle(Instant::ZERO, &older, &mut e), Err(SyncError::Replay));
}

#[test]
fn sender_batches_and_respects_the_rate() {
    use crate::dataplane::wire::build;
    use core::net::Ipv4Addr;
    let (mut e, vip) = udp_engine(crate::dataplane::settings::SchedulerKind::Rr, 1);
    let mut tx = [0u8; 256];
    for p in 0..200u16 {
        let d = build::udp((Ipv4Addr::new(198, 51, 100, 1), 1000 + p), (vip, 53), b"q");
        e.process(Instant::ZERO, &d, &mut tx);
    }
    let mut s = SyncSender::new(SECRET, 7, 1, 10); // 10 datagrams/s
    let mut out = [0u8; MAX_DATAGRAM];
    let mut sent = Vec::new();
    let mut now = Instant::ZERO;
    for _ in 0..100 {
        while let Some(len) = s.poll_transmit(now, &mut e, &mut out) {
            sent.push((now, decode(SECRET, 7, &out[..len]).unwrap().len()));
        }
        match s.poll_timeout() {
            Some(t) => now = t,
            None => break,
        }
    }
    let counts: Vec<usize> = sent.iter().map(|&(_, n)| n).collect();
    assert_eq!(counts, vec![48, 48, 48, 48, 8]);
    for w in sent.windows(2) {
        assert!(w[1].0.as_nanos() - w[0].0.as_nanos() >= 100_000_000);
    }
    assert_eq!(s.stats().records, 200);
}

/// A prompt sender (a handover) sends a partial batch at once, still no faster than its
/// rate; a normal one holds it for `FLUSH_AFTER_MS`.
#[test]
fn a_prompt_sender_does_not_wait_to_batch_but_keeps_the_rate() {
    use crate::dataplane::wire::build;
    use core::net::Ipv4Addr;
    let (mut e, vip) = udp_engine(crate::dataplane::settings::SchedulerKind::Rr, 1);
    let mut tx = [0u8; 256];
    let mut out = [0u8; MAX_DATAGRAM];
    let flow = |e: &mut crate::dataplane::engine::Engine, p: u16, tx: &mut [u8]| {
        let d = build::udp((Ipv4Addr::new(198, 51, 100, 1), 1000 + p), (vip, 53), b"q");
        e.process(Instant::ZERO, &d, tx);
    };
    let mut s = SyncSender::new(SECRET, 7, 1, 10); // 10 datagrams/s
    flow(&mut e, 0, &mut tx);
    assert_eq!(s.poll_transmit(Instant::ZERO, &mut e, &mut out), None, "normal: batches");
    assert_eq!(s.poll_timeout(), Some(Instant::from_millis(FLUSH_AFTER_MS)));
    s.set_prompt(true);
    assert!(s.poll_transmit(Instant::ZERO, &mut e, &mut out).is_some(), "prompt: at once");
    flow(&mut e, 1, &mut tx);
    assert_eq!(s.poll_transmit(Instant::from_millis(1), &mut e, &mut out), None, "the rate still holds");
    assert_eq!(s.poll_timeout(), Some(Instant::from_millis(100)));
    assert!(s.poll_transmit(Instant::from_millis(100), &mut e, &mut out).is_some());
}

/// A datagram signed with `SECRET` whatever its content (to reach the checks behind the MAC).
fn signed(mut d: Vec<u8>) -> Vec<u8> {
    let tag = Mac::new(SECRET).tag(&d);
    d.extend_from_slice(&tag);
    d
}

#[test]
fn full_sync_request_and_end_round_trip() {
    let mut buf = [0u8; MAX_DATAGRAM];
    let len = encode_control(SECRET, &header(3), Kind::FullSyncRequest, &mut buf).unwrap();
    assert_eq!(len, HEADER + MAC_LEN);
    let b = decode(SECRET, 7, &buf[..len]).unwrap();
    assert_eq!((b.header, b.kind, b.len()), (header(3), Kind::FullSyncRequest, 0));
    // An end marker from a sender before the count (16 bytes), and one with it (32).
    let end = Kind::FullSyncEnd { session: 0x0102_0304_0506_0708, seq: 42, count: None };
    let len = encode_control(SECRET, &header(4), end, &mut buf).unwrap();
    assert_eq!(len, HEADER + 16 + MAC_LEN);
    let b = decode(SECRET, 7, &buf[..len]).unwrap();
    assert_eq!((b.header, b.kind, b.len()), (header(4), end, 0));
    let end = Kind::FullSyncEnd { session: 5, seq: 42, count: Some(EndCount { first: 7, datagrams: 300 }) };
    let len = encode_control(SECRET, &header(4), end, &mut buf).unwrap();
    assert_eq!(len, HEADER + 32 + MAC_LEN);
    assert_eq!(decode(SECRET, 7, &buf[..len]).unwrap().kind, end);
    // Records carry kind 0.
    let len = encode(SECRET, &header(5), &[rec(1)], &mut buf).unwrap();
    assert_eq!(decode(SECRET, 7, &buf[..len]).unwrap().kind, Kind::Records);
    // The sender numbers control datagrams in its session, after its records.
    let mut s = SyncSender::new(SECRET, 7, 9, 10);
    let len = s.control(Kind::FullSyncRequest, &mut buf).unwrap();
    let len2 = s.control(end, &mut buf[len..]).unwrap();
    assert_eq!(
        decode(SECRET, 7, &buf[..len]).unwrap().header,
        BatchHeader { cluster_id: 7, session: 9, seq: 1 }
    );
    assert_eq!(decode(SECRET, 7, &buf[len..len + len2]).unwrap().header.seq, 2);
    assert_eq!((s.last_seq(), s.session(), s.stats().control), (2, 9, 2));
}

#[test]
fn malformed_or_unauthenticated_full_sync_messages_are_refused_and_counted() {
    let mut buf = [0u8; MAX_DATAGRAM];
    let len = encode_control(SECRET, &header(1), Kind::FullSyncRequest, &mut buf).unwrap();
    let good = buf[..len].to_vec();
    assert_eq!(decode(b"other", 7, &good).unwrap_err(), SyncError::BadMac);
    assert_eq!(decode(SECRET, 8, &good).unwrap_err(), SyncError::WrongCluster(7));
    let mut flipped = good.clone();
    flipped[5] = 2; // a request turned into an end marker without re-signing
    assert_eq!(decode(SECRET, 7, &flipped).unwrap_err(), SyncError::BadMac);
    // Properly signed but malformed: unknown kind, a record count on a control message,
    // a request with a body, an end marker of the wrong length.
    let body = |kind: u8, count: u16, extra: usize| {
        let mut d = good[..HEADER].to_vec();
        d[5] = kind;
        d[6..8].copy_from_slice(&count.to_be_bytes());
        d.extend(std::iter::repeat_n(0u8, extra));
        signed(d)
    };
    assert_eq!(decode(SECRET, 7, &body(4, 0, 0)).unwrap_err(), SyncError::UnknownKind(4));
    assert_eq!(decode(SECRET, 7, &body(1, 1, 0)).unwrap_err(), SyncError::BadLength);
    assert_eq!(decode(SECRET, 7, &body(1, 0, 4)).unwrap_err(), SyncError::BadLength);
    assert_eq!(decode(SECRET, 7, &body(2, 0, 15)).unwrap_err(), SyncError::BadLength);
    assert_eq!(decode(SECRET, 7, &body(2, 0, 24)).unwrap_err(), SyncError::BadLength);
    assert_eq!(decode(SECRET, 7, &body(2, 1, 16)).unwrap_err(), SyncError::BadLength);
    assert!(decode(SECRET, 7, &body(2, 0, 16)).is_ok());
    // The receiver counts each refusal and hands nothing on; a replayed request is refused.
    let mut e = crate::dataplane::engine::Engine::new(&crate::dataplane::engine::EngineConfig {
        services: vec![],
        table: crate::dataplane::settings::Table::default(),
        local_addr: core::net::Ipv4Addr::new(10, 0, 0, 1),
        local_addr6: core::net::Ipv6Addr::UNSPECIFIED,
        path_mtu: 1500,
        seed: 1,
    });
    let mut r = SyncReceiver::new(SECRET, 7);
    for bad in [flipped, body(4, 0, 0), body(1, 1, 0), body(2, 0, 15)] {
        assert!(r.handle_message(Instant::ZERO, &bad, &mut e).is_err());
    }
    assert_eq!((r.stats().rejected, r.stats().bad_mac, r.stats().control), (4, 1, 0));
    let got = r.handle_message(Instant::ZERO, &good, &mut e).unwrap();
    assert_eq!(got, Received::FullSyncRequest { session: 5, seq: 1 });
    assert_eq!(r.handle_message(Instant::ZERO, &good, &mut e).unwrap_err(), SyncError::Replay);
    assert_eq!((r.stats().rejected, r.stats().replayed, r.stats().control), (5, 1, 1));
}

proptest! {
    /// The decoder is total on arbitrary bytes.
    #[test]
    fn decode_never_panics(d in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode(SECRET, 7, &d);
    }

    /// ...and on authenticated datagrams with arbitrary bodies (past the MAC check).
    #[test]
    fn decode_authenticated_garbage(
        body in proptest::collection::vec(any::<u8>(), 0..300),
        count in any::<u16>(),
        kind in 0u8..4,
    ) {
        let mut d = Vec::from(&MAGIC[..]);
        d.push(VERSION);
        d.push(kind);
        d.extend_from_slice(&count.to_be_bytes());
        d.extend_from_slice(&7u32.to_be_bytes());
        d.extend_from_slice(&[0u8; 16]);
        d.extend_from_slice(&body);
        let tag = Mac::new(SECRET).tag(&d);
        d.extend_from_slice(&tag);
        if let Ok(b) = decode(SECRET, 7, &d) {
            prop_assert_eq!(b.records().count(), b.len());
            prop_assert!(b.kind == Kind::Records || b.is_empty());
        }
    }
}

/// A persistent client keeps its server across a failover: the primary's affinity entries
/// travel in kind-3 datagrams beside its connection records, and the promoted backup sends
/// the client's next new flow to the server it had, not where its own scheduler would.
#[test]
fn affinity_entries_are_synced_so_a_persistent_client_keeps_its_server() {
    use crate::dataplane::settings::SchedulerKind;
    use crate::dataplane::wire::build;
    use core::net::Ipv4Addr;
    let t0 = Instant::ZERO;
    let (mut primary, vip) = udp_engine_with(SchedulerKind::Rr, 3, 300);
    primary.set_active(true);
    let mut tx = [0u8; 256];
    let (c1, c2) = (Ipv4Addr::new(198, 51, 100, 1), Ipv4Addr::new(198, 51, 100, 2));
    primary.process(t0, &build::udp((c1, 1000), (vip, 53), b"q"), &mut tx);
    primary.process(t0, &build::udp((c2, 1000), (vip, 53), b"q"), &mut tx);
    let on = |e: &crate::dataplane::engine::Engine| -> Vec<u64> {
        e.server_counters(0).iter().map(|c| c.connections).collect()
    };
    assert_eq!(on(&primary), [1, 1, 0], "round robin: c1 on s0, c2 on s1");

    let mut sender = SyncSender::new(SECRET, 7, 1, 1_000_000);
    let mut out = [0u8; MAX_DATAGRAM];
    let mut wire = Vec::new();
    let later = Instant::from_millis(FLUSH_AFTER_MS);
    for now in [t0, later, Instant::from_millis(FLUSH_AFTER_MS + 1)] {
        while let Some(len) = sender.poll_transmit(now, &mut primary, &mut out) {
            wire.push(out[..len].to_vec());
        }
    }
    let kinds: Vec<u8> = wire.iter().map(|d| d[5]).collect();
    assert_eq!(kinds, [0, 3], "connection records, then affinity records in their own datagram");

    let mut failover = |sync: bool| {
        let (mut backup, _) = udp_engine_with(SchedulerKind::Rr, 3, 300);
        backup.set_active(false);
        let mut rx = SyncReceiver::new(SECRET, 7);
        for d in wire.iter().filter(|_| sync) {
            rx.handle(later, d, &mut backup).unwrap();
        }
        backup.set_active(true);
        // c2's next connection (a new flow): first on the promoted backup.
        backup.process(later, &build::udp((c2, 2000), (vip, 53), b"q"), &mut tx);
        (on(&backup), rx.stats().records_applied)
    };
    assert_eq!(failover(true), (vec![0, 1, 0], 4), "c2 kept s1 after the failover");
    assert_eq!(failover(false), (vec![1, 0, 0], 0), "without the sync, round robin would pick s0");
}

/// A backup from before affinity records refuses their datagram as a whole (unknown kind)
/// and applies the connection records; a record for a service without persistence is refused.
#[test]
fn affinity_records_decode_and_are_refused_where_they_do_not_fit() {
    let aff = SyncRecord { kind: RecordKind::Affinity, client: "198.51.100.7:0".parse().unwrap(), ..rec(1) };
    let mut buf = [0u8; MAX_DATAGRAM];
    let len = encode(SECRET, &header(1), &[aff, rec(2)], &mut buf).unwrap();
    assert_eq!(buf[5], 3);
    let b = decode(SECRET, 7, &buf[..len]).unwrap();
    assert_eq!(b.kind, Kind::Affinity);
    assert_eq!(b.records().collect::<Vec<_>>(), [aff], "the connection record of the other kind is skipped");
    let (mut e, _) = udp_engine(crate::dataplane::settings::SchedulerKind::Rr, 1);
    let udp = SyncRecord {
        proto: 17,
        state: State::Udp,
        vip: SocketAddr::from(([192, 0, 2, 10], 53)),
        server: SocketAddr::from(([10, 0, 0, 3], 53)),
        ..aff
    };
    assert!(e.apply_sync(Instant::ZERO, &udp).is_err(), "the service has no persistence");
}
