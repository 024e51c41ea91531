//! Long-lived client flows: each is a real TCP connection's packets (SYN, then an ACK with a
//! byte of data every [`SEGMENT_MS`]) sent to the VIP through the client's ARP cache and
//! forwarded by the primary's engine. The server that answers each flow is recorded; a flow
//! whose server changes, or that stops being answered, is lost.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clusterserver::dataplane::wire::build;

use crate::net::{SERVICE_PORT, SimClock, SimSocket};
use crate::world::Shared;

/// Port on which clients receive their servers' answers.
pub const FLOW_PORT: u16 = 9100;
/// Interval between two segments of a flow.
pub const SEGMENT_MS: u64 = 250;
const FIRST_PORT: u16 = 40_000;
const SYN: u8 = 0x02;
const ACK_PSH: u8 = 0x18;

/// One flow as the client sees it.
#[derive(Clone, Debug, Default)]
pub struct FlowRec {
    pub server: Option<String>,
    pub last_answer_ms: Option<u64>,
    /// Set when another server answered than the first.
    pub moved_at_ms: Option<u64>,
}

/// Runs `count` flows from this client until the host stops.
pub async fn run(world: Shared, name: String, vip: IpAddr, count: u16) -> std::io::Result<()> {
    let sock = SimSocket::bind(&world, &name, FLOW_PORT).await?;
    let clock = SimClock::start();
    let Some(me) = own_address(&world, &name, vip) else { return Ok(()) };
    let mut next = clock.ms();
    let mut buf = [0u8; 256];
    loop {
        let wait = Duration::from_millis(next.saturating_sub(clock.ms()));
        tokio::select! {
            biased;
            r = sock.recv(&mut buf) => {
                let (n, _) = r?;
                on_answer(&world, &name, clock.ms(), &buf[..n]);
            }
            _ = tokio::time::sleep(wait) => {
                next = clock.ms() + SEGMENT_MS;
                send_round(&world, &name, &sock, me, vip, count).await;
            }
        }
    }
}

/// One segment per flow to the VIP's current owner: a SYN until the flow is answered.
async fn send_round(world: &Shared, name: &str, sock: &SimSocket, me: IpAddr, vip: IpAddr, count: u16) {
    let (owner, started) = {
        let mut w = world.borrow_mut();
        let h = w.host(name);
        let owner = h.owner_of(vip);
        (owner, h.flows.clone())
    };
    let Some(owner) = owner else { return };
    for i in 0..count {
        let port = FIRST_PORT + i;
        let answered = started.get(&port).is_some_and(|f| f.server.is_some());
        let flags = if answered { ACK_PSH } else { SYN };
        let payload: &[u8] = if answered { b"x" } else { b"" };
        let pkt = segment((me, port), (vip, 80), flags, payload);
        let _ = sock.send(&pkt, SocketAddr::new(owner, SERVICE_PORT)).await;
    }
}

/// The client's own address in the VIP's family.
fn own_address(world: &Shared, name: &str, vip: IpAddr) -> Option<IpAddr> {
    let w = world.borrow();
    let h = w.hosts.get(name)?;
    match vip {
        IpAddr::V4(_) => h.addr.filter(IpAddr::is_ipv4),
        IpAddr::V6(_) => h.addr6.map(IpAddr::V6),
    }
}

/// A TCP segment `src → dst` in their family (both addresses of one family).
fn segment(src: (IpAddr, u16), dst: (IpAddr, u16), flags: u8, payload: &[u8]) -> Vec<u8> {
    match (src.0, dst.0) {
        (IpAddr::V4(s), IpAddr::V4(d)) => build::tcp((s, src.1), (d, dst.1), flags, payload),
        (IpAddr::V6(s), IpAddr::V6(d)) => build::tcp6((s, src.1), (d, dst.1), flags, payload),
        _ => Vec::new(),
    }
}

/// An answer: a TCP segment from the VIP whose payload names the server.
fn on_answer(world: &Shared, name: &str, now: u64, pkt: &[u8]) {
    let Some((port, server)) = parse_answer(pkt) else { return };
    let mut w = world.borrow_mut();
    let f = w.host(name).flows.entry(port).or_default();
    f.last_answer_ms = Some(now);
    match &f.server {
        None => f.server = Some(server),
        Some(s) if *s != server && f.moved_at_ms.is_none() => {
            f.moved_at_ms = Some(now);
            let first = s.clone();
            w.log(now, name, format!("flow {port} moved from {first} to {server}"));
        }
        Some(_) => {}
    }
}

/// (destination port, payload as text) of an IPv4/TCP or IPv6/TCP packet.
fn parse_answer(pkt: &[u8]) -> Option<(u16, String)> {
    let ihl = if pkt.first()? >> 4 == 6 { 40 } else { usize::from(pkt.first()? & 0x0f) * 4 };
    let tcp = pkt.get(ihl..)?;
    let port = u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]);
    let off = usize::from(tcp.get(12)? >> 4) * 4;
    let payload = std::str::from_utf8(tcp.get(off..)?).ok()?;
    (!payload.is_empty()).then(|| (port, payload.to_string()))
}

/// Flows counted as lost at the end of a run of `end` ms: moved, never answered, or silent
/// for the last two seconds.
/// As [`lost`], not counting the flows whose server a reload removed (they end by design,
/// as `on_down` says): (lost, of those the flows on removed servers).
pub fn lost_except_removed(
    flows: &BTreeMap<u16, FlowRec>,
    expected: u16,
    end: u64,
    removed: &std::collections::BTreeSet<String>,
) -> (u64, u64) {
    let on_removed = |i: u16| {
        flows.get(&(FIRST_PORT + i)).and_then(|f| f.server.as_ref()).is_some_and(|s| removed.contains(s))
    };
    let gone = (0..expected).filter(|i| {
        flows.get(&(FIRST_PORT + i)).is_none_or(|f| {
            f.moved_at_ms.is_some() || f.last_answer_ms.is_none_or(|t| end.saturating_sub(t) > 2_000)
        })
    });
    let (mut lost, mut removed_n) = (0, 0);
    for i in gone {
        if on_removed(i) {
            removed_n += 1;
        } else {
            lost += 1;
        }
    }
    (lost, removed_n)
}

pub fn lost(flows: &BTreeMap<u16, FlowRec>, expected: u16, end: u64) -> u64 {
    (0..expected)
        .filter(|i| {
            flows.get(&(FIRST_PORT + i)).is_none_or(|f| {
                f.moved_at_ms.is_some() || f.last_answer_ms.is_none_or(|t| end.saturating_sub(t) > 2_000)
            })
        })
        .count() as u64
}

/// Source ports of new connections cycle through this range (far from the long-lived
/// flows' ports): at 100 connections a second a port comes back after 200 s.
const NEW_CONN_PORTS: std::ops::Range<u16> = 20_000..40_000;

/// Opens `rate` new TCP connections a second (a SYN each, from a fresh source port) to the
/// VIP's current owner, until the host stops. Answers go to [`FLOW_PORT`]: read and dropped
/// here unless the host runs long-lived flows, whose task reads them. The real servers
/// record which of them each connection reached ([`crate::world::HostState::syns`]).
pub async fn new_connections(
    world: Shared,
    name: String,
    vip: IpAddr,
    rate: u32,
    drain: bool,
) -> std::io::Result<()> {
    let sock = SimSocket::bind(&world, &name, 0).await?;
    let answers = if drain { Some(SimSocket::bind(&world, &name, FLOW_PORT).await?) } else { None };
    let clock = SimClock::start();
    let Some(me) = own_address(&world, &name, vip) else { return Ok(()) };
    let every_us = 1_000_000 / u64::from(rate.max(1));
    let mut k: u64 = 0;
    let mut buf = [0u8; 256];
    let start = clock.now();
    loop {
        let next = start + Duration::from_micros(k * every_us);
        let wait = next.saturating_since(clock.now());
        tokio::select! {
            biased;
            r = async { match &answers { Some(a) => a.recv(&mut buf).await, None => std::future::pending().await } } => {
                r?;
            }
            _ = tokio::time::sleep(wait) => {
                let owner = world.borrow_mut().host(&name).owner_of(vip);
                let span = u64::from(NEW_CONN_PORTS.end - NEW_CONN_PORTS.start);
                let port = NEW_CONN_PORTS.start + (k % span) as u16;
                k += 1;
                if let Some(owner) = owner {
                    let pkt = segment((me, port), (vip, 80), SYN, b"");
                    let _ = sock.send(&pkt, SocketAddr::new(owner, SERVICE_PORT)).await;
                }
            }
        }
    }
}

/// Lowest port used by flows (for tests).
pub const fn first_port() -> u16 {
    FIRST_PORT
}
