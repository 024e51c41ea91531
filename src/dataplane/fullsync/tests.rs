use core::net::Ipv4Addr;

use super::*;
use crate::dataplane::sync::{MAX_DATAGRAM, Received, SyncReceiver, SyncSender};
use crate::dataplane::wire::build;

const SECRET: &[u8] = b"s3cret";
const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

fn engine() -> Engine {
    crate::dataplane::sync::tests::udp_engine(crate::dataplane::settings::SchedulerKind::Mh, 3).0
}

/// One ATM as the daemon's processor holds it.
struct Node {
    engine: Engine,
    sender: SyncSender,
    receiver: SyncReceiver,
    full: FullSync,
}

fn node(session: u64) -> Node {
    Node {
        engine: engine(),
        sender: SyncSender::new(SECRET, 7, session, 1_000_000),
        receiver: SyncReceiver::new(SECRET, 7),
        full: FullSync::new(),
    }
}

/// An ATM (session 1) whose engine holds `flows` UDP flows.
fn peer_with_flows(flows: u16) -> Node {
    let mut peer = node(1);
    let mut tx = [0u8; 256];
    for p in 0..flows {
        let d = build::udp((Ipv4Addr::new(198, 51, 100, 1), 1000 + p), (VIP, 53), b"q");
        peer.engine.process(Instant::ZERO, &d, &mut tx);
    }
    peer
}

/// `from` flushes its records and control datagrams to `to` (peer index 0 on both sides);
/// `drop_control` loses its requests and end markers. Returns the kinds `to` received.
fn exchange(now: Instant, from: &mut Node, to: &mut Node, drop_control: bool) -> Vec<Received> {
    exchange_losing(now, from, to, drop_control, |_| false)
}

/// [`exchange`], also losing the record datagrams `lose` picks.
fn exchange_losing(
    now: Instant,
    from: &mut Node,
    to: &mut Node,
    drop_control: bool,
    mut lose: impl FnMut(&[u8]) -> bool,
) -> Vec<Received> {
    let mut out = vec![0u8; MAX_DATAGRAM];
    let mut wire = Vec::new();
    while let Some(len) = from.sender.poll_transmit(now, &mut from.engine, &mut out) {
        if !lose(&out[..len]) {
            wire.push(out[..len].to_vec());
        }
    }
    while let Some((peer, len)) = from.full.poll_transmit(now, &from.engine, &mut from.sender, &mut out) {
        assert_eq!(peer, 0);
        if !drop_control {
            wire.push(out[..len].to_vec());
        }
    }
    let mut got = Vec::new();
    for d in wire {
        let r = to.receiver.handle_message(now, &d, &mut to.engine).unwrap();
        to.full.on_message(0, &r, &mut to.engine, &to.sender);
        got.push(r);
    }
    got
}

#[test]
fn a_joiner_gets_the_whole_table_then_the_end_marker_and_retries_a_lost_request() {
    let mut peer = peer_with_flows(150);
    // The peer already sent these changes before the joiner was there.
    let mut out = vec![0u8; MAX_DATAGRAM];
    while peer.sender.poll_transmit(Instant::from_millis(100), &mut peer.engine, &mut out).is_some() {}
    let mut joiner = node(2);
    let t0 = Instant::from_millis(1000);
    joiner.full.join(t0, [0]);
    assert!(!joiner.full.synced());
    // The first request is lost: nothing happens until the retry.
    exchange(t0, &mut joiner, &mut peer, true);
    assert_eq!(joiner.full.poll_timeout(), Some(Instant::from_millis(1000 + REQUEST_EVERY_MS)));
    assert!(exchange(Instant::from_millis(1200), &mut joiner, &mut peer, false).is_empty());
    let t1 = Instant::from_millis(1000 + REQUEST_EVERY_MS);
    let got = exchange(t1, &mut joiner, &mut peer, false);
    assert!(matches!(got[..], [Received::FullSyncRequest { session: 2, .. }]), "{got:?}");
    // The peer walks its table; records first, the end marker last.
    let mut got = Vec::new();
    for ms in 0..10 {
        got.extend(exchange(t1 + std::time::Duration::from_millis(ms * 50), &mut peer, &mut joiner, false));
    }
    let applied: usize =
        got.iter().map(|r| if let Received::Records { applied, .. } = r { *applied } else { 0 }).sum();
    // (Records the peer still held back count too: what the joiner learns is the table.)
    assert!(applied >= 150, "{applied}");
    assert!(matches!(got.last(), Some(Received::FullSyncEnd { session: 2, .. })), "{got:?}");
    assert_eq!(got.iter().filter(|r| matches!(r, Received::FullSyncEnd { .. })).count(), 1);
    assert!(joiner.full.synced());
    assert_eq!(joiner.full.poll_timeout(), None);
    assert_eq!(joiner.engine.stats().sync_applied, 150);
    let s = joiner.full.stats();
    assert_eq!((s.requests_sent, s.ends_received, s.ends_ignored), (2, 1, 0));
    // Synced: no more requests.
    assert!(exchange(Instant::from_millis(5000), &mut joiner, &mut peer, false).is_empty());
}

#[test]
fn an_end_marker_for_another_session_proves_nothing() {
    let mut f = FullSync::new();
    f.join(Instant::ZERO, [0, 1]);
    f.on_end(0, 99, 5, None);
    assert_eq!(f.missing(), vec![0, 1]);
    f.on_end(1, 5, 5, None);
    assert_eq!(f.missing(), vec![0]);
    f.on_end(0, 5, 5, None);
    assert!(f.synced());
    assert_eq!(f.stats().ends_ignored, 1);
    // Not joining: synced, and an end marker is ignored.
    let mut g = FullSync::new();
    assert!(g.synced());
    g.on_end(0, 5, 5, None);
    assert_eq!(g.stats().ends_ignored, 1);
    // A lone ATM has nobody to ask.
    let mut h = FullSync::new();
    h.join(Instant::ZERO, []);
    assert!(h.synced());
}

#[test]
fn a_repeated_request_does_not_restart_the_walk_and_gets_one_end_marker() {
    let mut peer = node(1);
    let mut out = vec![0u8; MAX_DATAGRAM];
    peer.full.on_request(0, 2, 1, &mut peer.engine, &peer.sender);
    peer.full.on_request(0, 2, 2, &mut peer.engine, &peer.sender);
    // The walk of the (empty) table ends at the sender's next flush.
    assert!(peer.full.poll_transmit(Instant::ZERO, &peer.engine, &mut peer.sender, &mut out).is_none());
    assert!(peer.sender.poll_transmit(Instant::ZERO, &mut peer.engine, &mut out).is_none());
    let (to, len) = peer.full.poll_transmit(Instant::ZERO, &peer.engine, &mut peer.sender, &mut out).unwrap();
    assert_eq!(to, 0);
    let b = crate::dataplane::sync::decode(SECRET, 7, &out[..len]).unwrap();
    assert!(
        matches!(b.kind, Kind::FullSyncEnd { session: 2, seq: 2, count: Some(_) }),
        "echoes the latest request"
    );
    assert!(peer.full.poll_transmit(Instant::ZERO, &peer.engine, &mut peer.sender, &mut out).is_none());
}

#[test]
fn the_end_marker_is_not_starved_by_a_steady_stream_of_new_connections() {
    // The sender's batch is never empty after a flush (a new flow every 10 ms, a batch sent
    // every 50 ms), yet the end marker goes out once the walk's records have been sent.
    let mut peer = peer_with_flows(150);
    let mut tx = [0u8; 256];
    let mut out = vec![0u8; MAX_DATAGRAM];
    while peer.sender.poll_transmit(Instant::ZERO, &mut peer.engine, &mut out).is_some() {}
    peer.full.on_request(0, 2, 1, &mut peer.engine, &peer.sender);
    let mut end_at = None;
    for i in 1..100u16 {
        let now = Instant::from_millis(u64::from(i) * 10);
        while peer.sender.poll_transmit(now, &mut peer.engine, &mut out).is_some() {}
        // A new flow's record joins the sender's batch (not due yet): it is never idle.
        let d = build::udp((Ipv4Addr::new(198, 51, 100, 2), 1000 + i), (VIP, 53), b"q");
        peer.engine.process(now, &d, &mut tx);
        assert!(peer.sender.poll_transmit(now, &mut peer.engine, &mut out).is_none());
        assert!(peer.sender.poll_timeout().is_some(), "a batch is always waiting");
        if let Some((_, len)) = peer.full.poll_transmit(now, &peer.engine, &mut peer.sender, &mut out) {
            let b = crate::dataplane::sync::decode(SECRET, 7, &out[..len]).unwrap();
            assert!(matches!(b.kind, Kind::FullSyncEnd { session: 2, seq: 1, count: Some(_) }));
            end_at = Some(i);
            break;
        }
    }
    let end_at = end_at.expect("the end marker went out");
    assert!(end_at <= 10, "after about one batch interval, not {end_at} ticks");
    // Every record of the walk (150 + those queued before it) was sent before the marker.
    assert!(peer.sender.stats().records >= 300, "{:?}", peer.sender.stats());
}

/// A record datagram of the answer is lost: the end marker's count shows it, the joiner asks
/// again at once (no wait for the retry interval) and is synced by the second answer.
#[test]
fn a_joiner_that_lost_a_datagram_of_the_answer_asks_again() {
    let mut peer = peer_with_flows(150);
    let mut out = vec![0u8; MAX_DATAGRAM];
    while peer.sender.poll_transmit(Instant::from_millis(100), &mut peer.engine, &mut out).is_some() {}
    let mut joiner = node(2);
    let t0 = Instant::from_millis(1000);
    joiner.full.join(t0, [0]);
    exchange(t0, &mut joiner, &mut peer, false);
    // The walk's datagrams, the first record datagram lost on the way.
    let mut lost = false;
    for ms in 0..10 {
        let now = t0 + std::time::Duration::from_millis(ms * 50);
        exchange_losing(now, &mut peer, &mut joiner, false, |d| {
            !std::mem::replace(&mut lost, true) && d[5] == 0
        });
    }
    assert!(lost);
    assert!(!joiner.full.synced(), "an answer with a hole is not taken");
    assert_eq!((joiner.full.stats().ends_received, joiner.full.stats().ends_incomplete), (1, 1));
    // Asked again at once, then the whole answer.
    let t1 = t0 + std::time::Duration::from_millis(460);
    let got = exchange(t1, &mut joiner, &mut peer, false);
    assert!(matches!(got[..], [Received::FullSyncRequest { session: 2, .. }]), "{got:?}");
    for ms in 0..10 {
        exchange(t1 + std::time::Duration::from_millis(ms * 50), &mut peer, &mut joiner, false);
    }
    assert!(joiner.full.synced());
    assert_eq!(joiner.full.stats().ends_incomplete, 1);
    assert!(joiner.engine.stats().sync_applied >= 150);
}

/// A peer whose daemon is gone (its host said "port unreachable") is not waited for; the
/// others still are.
#[test]
fn a_join_does_not_wait_for_a_peer_whose_daemon_is_gone() {
    let mut f = FullSync::new();
    f.join(Instant::ZERO, [0, 1]);
    assert!(f.peer_gone(1));
    assert!(!f.synced());
    assert_eq!(f.missing(), [0]);
    assert!(!f.peer_gone(1));
    assert_eq!(f.stats().peers_gone, 1, "counted once");
    assert!(f.peer_gone(0));
    assert!(f.synced());
}
