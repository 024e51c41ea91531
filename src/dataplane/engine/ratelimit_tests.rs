//! The rate limits of [`super::ratelimit`] on the engine's own answers, end to end.

use super::tests::{CLIENT, VIP, engine, engine_with, run, t};
use super::*;
use crate::dataplane::settings::{SchedulerKind, ServiceSettings as Service};
use crate::dataplane::wire::build;
use crate::dataplane::wire::tcp::flags::{ACK, SYN};

fn nat_reset_service() -> Service {
    Service::builder("web", VIP, 80)
        .forwarding(Forwarding::Nat)
        .scheduler(SchedulerKind::Rr)
        .on_down(OnDown::Reset)
        .server("s1", [10, 0, 1, 3], 8080, 1)
        .server("s2", [10, 0, 1, 4], 8080, 1)
        .build()
}

/// 300 connections whose servers all fail: the first [`ratelimit::BURST`] segments get a
/// reset at once, the rest are dropped and counted, and time refills the bucket.
#[test]
fn resets_are_rate_limited() {
    let mut e = engine_with(vec![nat_reset_service()], 1000);
    for port in 1..=300 {
        run(&mut e, t(0), &build::tcp((CLIENT, port), (VIP, 80), SYN, b""));
    }
    e.set_server_state(0, 0, 1, false).unwrap();
    e.set_server_state(0, 1, 1, false).unwrap();
    let mut resets = 0;
    for port in 1..=300 {
        match run(&mut e, t(1), &build::tcp((CLIENT, port), (VIP, 80), ACK, b"")).0 {
            Verdict::Tun { .. } => resets += 1,
            v => assert_eq!(v, Verdict::Drop(DropReason::ServerDown)),
        }
    }
    // The bucket started full (a full bucket gains nothing from the first millisecond).
    assert_eq!(resets, ratelimit::BURST);
    assert_eq!(e.stats().resets_sent, u64::from(resets));
    assert_eq!(e.stats().limited.resets, 300 - u64::from(resets));
    assert_eq!(e.stats().limited.icmp_errors, 0);
    // Their entries are gone as a reset one's would be: their next segments find none.
    let ack = build::tcp((CLIENT, 300), (VIP, 80), ACK, b"");
    assert_eq!(run(&mut e, t(6), &ack).0, Verdict::Drop(DropReason::NoConnection));
}

/// Oversized DF packets to a tunnel service: fragmentation-needed up to the burst, then
/// drops (`TooBig`) counted as limited; 100 ms later 100 more may go.
#[test]
fn icmp_errors_are_rate_limited() {
    let mut e = engine(Forwarding::Tunnel);
    run(&mut e, t(0), &build::tcp((CLIENT, 40000), (VIP, 80), SYN, b""));
    let big = build::tcp((CLIENT, 40000), (VIP, 80), ACK, &[7u8; 1441]);
    let answered = (0..150).filter(|_| matches!(run(&mut e, t(0), &big).0, Verdict::Tun { .. })).count();
    assert_eq!(answered, ratelimit::BURST as usize);
    assert_eq!(e.stats().frag_needed_sent, u64::from(ratelimit::BURST));
    assert_eq!(e.stats().limited.icmp_errors, 50);
    assert_eq!(e.stats().dropped(DropReason::TooBig), 50);
    let later = (0..150).filter(|_| matches!(run(&mut e, t(100), &big).0, Verdict::Tun { .. })).count();
    assert_eq!(later, 100);
}
