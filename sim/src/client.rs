//! A simulated client: it resolves the VIP through its own ARP cache (a simplified Linux
//! neighbour state machine) and probes the service every [`PROBE_MS`]; the world records
//! which probes were answered, from which the outage is measured.
//!
//! Neighbour model: an entry learnt from an ARP reply is REACHABLE for a random 15–45 s
//! (Linux's `base_reachable_time` of 30 s, randomised), extended by every answered probe (the
//! "forward progress" confirmation TCP gives). Past that it is STALE: still used, and after
//! 5 s (`delay_first_probe_time`) probed by unicast ARP once a second, three times; no
//! answer deletes it and the next probe broadcasts a request (at most one a second). A
//! gratuitous ARP updates an existing entry and never creates one (`arp_accept=0`).
//!
//! An IPv6 VIP (or gateway) is resolved by Neighbor Discovery instead, through the host's
//! IPv6 neighbour cache, which follows Linux's rules more closely ([`crate::nud`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use crate::net::{ARP_PORT, BROADCAST, SERVICE_PORT, SimClock, SimSocket};
use crate::nud::Use;
use crate::world::Shared;

/// Interval between service probes.
pub const PROBE_MS: u64 = 10;
const DELAY_FIRST_PROBE_MS: u64 = 5_000;
const RETRANS_MS: u64 = 1_000;
const UCAST_PROBES: u32 = 3;
/// A probe answered later than this is counted as lost.
const ANSWER_WITHIN_MS: u64 = 50;

/// The software of a client host: its kernel, its long-lived flows, the service probes.
pub fn software(
    world: Shared,
    name: String,
    vip: IpAddr,
) -> impl Fn() -> Pin<Box<dyn Future<Output = turmoil::Result>>> {
    crate::kernel::with_kernel(world, name, move |world, name| async move {
        let (flows, rate) = {
            let mut w = world.borrow_mut();
            let h = w.host(&name);
            (h.flows_expected, h.conn_rate)
        };
        if flows > 0 {
            tokio::task::spawn_local(crate::flows::run(world.clone(), name.clone(), vip, flows));
        }
        if rate > 0 {
            let drain = flows == 0;
            tokio::task::spawn_local(crate::flows::new_connections(
                world.clone(),
                name.clone(),
                vip,
                rate,
                drain,
            ));
        }
        probe_loop(world, name, vip).await
    })
}

async fn probe_loop(world: Shared, name: String, vip: IpAddr) -> std::io::Result<()> {
    let sock = SimSocket::bind(&world, &name, 0).await?;
    let mut neigh = Neighbours::bind(&world, &name).await?;
    let clock = SimClock::start();
    let mut sent: BTreeMap<u64, u64> = BTreeMap::new();
    let mut seq = 0u64;
    let mut next_probe = clock.ms();
    let mut buf = [0u8; 128];
    loop {
        let wait = Duration::from_millis(next_probe.saturating_sub(clock.ms()));
        tokio::select! {
            biased;
            r = sock.recv(&mut buf) => {
                let (n, from) = r?;
                on_answer(&world, &name, clock.ms(), &buf[..n], from.ip(), vip, &mut sent);
            }
            _ = tokio::time::sleep(wait) => {
                let now = clock.ms();
                next_probe = now + PROBE_MS;
                seq += 1;
                sent.insert(seq, now);
                let first_ok = world.borrow_mut().host(&name).client.first_ok_ms;
                let expired = sent.values().filter(|t| now - **t > ANSWER_WITHIN_MS && first_ok.is_some_and(|f| **t >= f)).count();
                sent.retain(|_, t| now - *t <= ANSWER_WITHIN_MS);
                {
                    let mut w = world.borrow_mut();
                    let c = &mut w.host(&name).client;
                    c.sent += 1;
                    c.lost += expired as u64;
                }
                if let Some(owner) = neigh.lookup(&world, &name, now, vip).await {
                    let _ = sock.send(format!("REQ {seq} {vip}").as_bytes(), SocketAddr::new(owner, SERVICE_PORT)).await;
                }
            }
        }
    }
}

/// A host's use of its ARP cache: where to send a packet for `ip` now, with the ARP
/// requests the neighbour state machine calls for (broadcasts at most once a second).
#[derive(Debug)]
pub struct Neighbours {
    arp: SimSocket,
    next_broadcast: u64,
}

impl Neighbours {
    pub async fn bind(world: &Shared, name: &str) -> std::io::Result<Neighbours> {
        Ok(Neighbours { arp: SimSocket::bind(world, name, 0).await?, next_broadcast: 0 })
    }

    /// The owner to send to now, if the cache has one.
    pub async fn lookup(&mut self, world: &Shared, name: &str, now: u64, ip: IpAddr) -> Option<IpAddr> {
        if let IpAddr::V6(v6) = ip {
            return self.lookup6(world, name, now, v6).await;
        }
        match resolve(world, name, now, ip) {
            Resolve::Send(owner) => Some(owner),
            Resolve::Probe(owner) => {
                let _ = self.arp.send(format!("WHO {ip}").as_bytes(), SocketAddr::new(owner, ARP_PORT)).await;
                Some(owner)
            }
            Resolve::Broadcast => {
                if now >= self.next_broadcast {
                    self.next_broadcast = now + RETRANS_MS;
                    let _ = self
                        .arp
                        .send(format!("WHO {ip}").as_bytes(), SocketAddr::new(BROADCAST, ARP_PORT))
                        .await;
                }
                None
            }
        }
    }
}

impl Neighbours {
    /// [`Neighbours::lookup`] for an IPv6 address: one use of the NDP cache entry, with the
    /// solicitation it calls for (multicast to resolve, unicast to probe).
    async fn lookup6(&mut self, world: &Shared, name: &str, now: u64, ip: Ipv6Addr) -> Option<IpAddr> {
        let (usage, failed) = world.borrow_mut().nd(name).use_at(now, ip);
        if let Some(last) = failed {
            let mut w = world.borrow_mut();
            let owner = last.map_or("none".to_string(), |a| w.name_of(a));
            w.log(now, name, format!("nd {ip}: entry for {owner} failed, resolving again"));
        }
        let (send, solicit) = match usage {
            Use::Send(a) => (Some(a), None),
            Use::SendAndProbe(a) => (Some(a), Some(Some(a))),
            Use::Solicit => (None, Some(None)),
            Use::Wait => (None, None),
        };
        if let Some(to) = solicit
            && let Some(frame) = crate::ndp::solicitation(world, name, ip, to)
        {
            crate::ndp::send(&self.arp, &frame).await;
        }
        send
    }
}

enum Resolve {
    Send(IpAddr),
    /// Send, and also probe the (stale) owner by unicast ARP.
    Probe(IpAddr),
    Broadcast,
}

/// Runs the neighbour state machine for one use of the entry.
fn resolve(world: &Shared, name: &str, now: u64, vip: IpAddr) -> Resolve {
    let mut w = world.borrow_mut();
    let Some(n) = w.host(name).neigh.get_mut(&vip) else { return Resolve::Broadcast };
    let stale_at = n.confirmed_ms + n.reachable_ms;
    if now < stale_at + DELAY_FIRST_PROBE_MS {
        return Resolve::Send(n.owner);
    }
    if n.probes < UCAST_PROBES {
        if now >= n.next_probe_ms {
            n.probes += 1;
            n.next_probe_ms = now + RETRANS_MS;
            return Resolve::Probe(n.owner);
        }
        return Resolve::Send(n.owner);
    }
    if now >= n.next_probe_ms {
        let owner_addr = n.owner;
        let owner = w.name_of(owner_addr);
        h_remove(&mut w, name, vip);
        w.log(now, name, format!("arp {vip}: entry for {owner} failed, resolving again"));
        return Resolve::Broadcast;
    }
    Resolve::Send(n.owner)
}

fn h_remove(w: &mut crate::world::World, name: &str, vip: IpAddr) {
    w.host(name).neigh.remove(&vip);
}

/// An answer from the service: confirms the neighbour entry and counts for the outage.
fn on_answer(
    world: &Shared,
    name: &str,
    now: u64,
    msg: &[u8],
    from: IpAddr,
    vip: IpAddr,
    sent: &mut BTreeMap<u64, u64>,
) {
    let Some(seq) =
        std::str::from_utf8(msg).ok().and_then(|t| t.strip_prefix("RSP ")).and_then(|s| s.parse().ok())
    else {
        return;
    };
    if sent.remove(&seq).is_none() {
        return; // late or unknown
    }
    let mut w = world.borrow_mut();
    let owner = w.name_of(from);
    let h = w.host(name);
    if let Some(n) = h.neigh.get_mut(&vip).filter(|n| n.owner == from) {
        n.confirmed_ms = now;
        n.probes = 0;
    }
    if let (IpAddr::V6(v6), Some(nd)) = (vip, h.nd.as_mut()) {
        nd.confirm(now, v6, from);
    }
    let c = &mut h.client;
    c.answered += 1;
    let bucket = (now / 100) as usize;
    if c.buckets.len() <= bucket {
        c.buckets.resize(bucket + 1, 0);
    }
    c.buckets[bucket] += 1;
    c.first_ok_ms.get_or_insert(now);
    let gap = c.last_ok_ms.map_or(0, |last| now - last);
    c.last_ok_ms = Some(now);
    c.max_gap_ms = c.max_gap_ms.max(gap);
    if gap > 3 * PROBE_MS {
        w.log(now, name, format!("service back after {} ms (answered by {owner})", gap - PROBE_MS));
    }
}
