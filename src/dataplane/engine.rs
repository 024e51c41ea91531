//! The sans-IO packet engine: `process(now, rx, tx) -> Verdict`.
//!
//! One call handles one IPv4 packet from the I/O shell: parse (checked views), classify
//! (client → VIP, NAT reply, ICMP error), look up or create the connection, rewrite into
//! the caller's `tx` buffer, and say what to do with it. Nothing allocates, locks, logs or
//! reads a clock on this path; every dropped packet is counted by [`DropReason`].
//!
//! # Forwarding methods
//!
//! * **NAT**: client → VIP:port becomes client → server:port ([`Verdict::Tun`]); the
//!   server's reply (routed through the ATM by policy routing) matches the table's reverse
//!   index and leaves as VIP:port → client.
//! * **Direct routing**: the packet is copied unchanged and returned as [`Verdict::L2`] with
//!   the server as next hop: the shell frames it to the server's MAC.
//! * **Tunnel**: an outer header towards the server is prepended (IP-in-IP, IPv6-in-IPv6,
//!   or across families IPv4-in-IPv6 and IPv6-in-IPv4; see [`tunnel`] for the headers and
//!   the path-MTU rules: a packet that would not fit gets fragmentation-needed or Packet
//!   Too Big, as its own family says).
//!
//! # Validation and drops
//!
//! The IPv4 header checksum is verified (20 bytes, cheap); transport checksums are not
//! (end hosts verify them, and TUN offloads may hand us partial ones) but are patched
//! incrementally (RFC 1624) so a valid checksum stays valid. Malformed, truncated or unknown
//! packets are dropped and counted; no input makes `process` panic (fuzzed).
//!
//! The TTL is not decremented: NAT and tunnel packets go back to the kernel, which
//! decrements it when it routes them on; a direct-routed frame crosses one LAN hop like a
//! bridge's. A packet arriving with TTL 0 is dropped (`TtlExceeded`).
//!
//! # Fragments
//!
//! A *first* fragment (offset 0, more-fragments set) carries the transport header: it
//! follows its flow like any packet (the incremental checksum patch is valid for a partial
//! segment). **Later fragments (offset > 0) are counted and dropped**
//! ([`DropReason::LaterFragment`]): they carry no ports, and matching them would need
//! per-datagram reassembly state (memory an attacker could exhaust). TCP avoids
//! fragmentation through path-MTU discovery, which works through the balancer because ICMP
//! errors are translated (below); fragmented UDP to a VIP is not supported.
//!
//! # ICMP
//!
//! ICMP errors (destination unreachable including fragmentation-needed, time exceeded,
//! parameter problem, source quench) that quote a tracked flow are translated with it: from
//! the server side (quoting client → server of a NAT flow) the outer source and the quoted
//! destination become the VIP; from the client side (to the VIP, quoting VIP → client) the
//! error goes to the flow's server (rewritten for NAT, framed for DR, encapsulated for
//! tunnels). Other ICMP (echo) is dropped and counted: the VIP's owner kernel answers pings.
//!
//! # TCP state and timeouts
//!
//! See [`conntrack`](super::conntrack) for the states and their timeouts. A TCP entry is
//! created only by a SYN without ACK; any other segment without an entry is dropped
//! (`NoConnection`), except in active-active mode ([`Engine::set_mid_flow_pickup`]). Transitions: client SYN → `SynSent`; server SYN-ACK → `SynRecv` (NAT
//! only); then a client ACK → `Established`. In **DR and tunnel modes** the engine never sees
//! the server's packets, so a client ACK after the SYN is taken as the handshake's end
//! (`SynSent` → `Established`) and only the client's FIN/RST moves an entry to `Closing`:
//! a connection the server closes first stays `Established` until the client's FIN
//! (which normally follows at once) or its idle timeout. FIN or RST in either visible
//! direction → `Closing`; a client SYN on a `Closing` entry reuses it (`SynSent`, same
//! server). UDP flows are `Udp` throughout.
//!
//! # Driving it
//!
//! The shell calls [`Engine::process`] per packet and [`Engine::expire`] from a periodic
//! timer (say every 100 ms with a budget of a few thousand): `process` also reclaims a few
//! expired entries every 16 packets, but an idle engine only expires through `expire`.
//! Health and weight changes go through [`Engine::set_server_state`]; connection sync
//! through [`Engine::poll_sync`] (primary) and [`Engine::apply_sync`] (backup), usually
//! via [`crate::dataplane::sync`].
//!
//! `process` assumes complete transport checksums; a shell using vnet-header offloads
//! passes packets flagged `NEEDS_CSUM` to [`Engine::process_offloaded`] instead, which
//! patches the partial (pseudo-header) sum. A GSO super-packet in tunnel mode meets the
//! MTU check with its total length: the shell should segment (or clear GSO) for tunnel
//! services, since the check cannot see the segment size.
//!
//! # Active and shadow
//!
//! # Failed servers
//!
//! A server marked down takes no new connections. A client SYN that reuses the tuple of a
//! closing (or never answered) entry is a new connection: if that entry's server is down
//! or drained, the entry is dropped and the SYN scheduled afresh (clients reuse source
//! ports within the FIN timeout; without this a failed server would keep receiving new
//! connections). With `on_down: keep` its connections stay; with `on_down: reset` the next packet of one removes the entry: a UDP flow is
//! rescheduled to a healthy server, a TCP connection gets a RST from the VIP (RFC 9293
//! reset generation) so the client fails fast instead of hanging, and a SYN reusing the
//! tuple is scheduled afresh.
//!
//! An inactive engine (a backup) forwards nothing (`Inactive`) but applies connection-sync
//! records to its table; after [`Engine::set_active`]`(true)` those entries are live.

#[cfg(test)]
mod active_active_tests;
mod affinity;
mod family;
mod forward;
mod icmp;
mod icmp6;
pub mod ratelimit;
#[cfg(test)]
mod ratelimit_tests;
mod reconfig;
pub mod select;
mod syncing;
mod tunnel;
pub use syncing::WALK_SLOTS_PER_CALL;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests6;
#[cfg(test)]
mod tunnel_tests;
mod verdict;

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::collections::VecDeque;

use crate::dataplane::conntrack::{ConnTable, Entry, FLAG_NAT, FwdKey, RevKey, State};
use crate::dataplane::settings::{self, Forwarding, OnDown};
use crate::dataplane::sync::SyncRecord;
use crate::dataplane::wire::{Ipv4Packet, TcpPacket, UdpPacket, proto, tcp::flags};
use crate::time::Instant;
use family::{Family, Flows, L3, PerFamily, V6};
pub use reconfig::{ORPHAN, Reload, ReloadStats};
pub use select::{Select, ServerSlot};
pub use verdict::{DropReason, EngineError, EngineStats, Verdict};

/// What the engine is built from.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub services: Vec<settings::ServiceSettings>,
    pub table: settings::Table,
    /// The ATM's own address: source of tunnel outer headers and of ICMP errors it makes.
    pub local_addr: Ipv4Addr,
    /// The same for IPv6 (IPv6-in-IPv6 outer headers, ICMPv6 errors); unspecified when
    /// the ATM has no IPv6 address (IPv6 tunnel services then drop with `NoServer`).
    pub local_addr6: Ipv6Addr,
    /// Path MTU towards tunnelled servers.
    pub path_mtu: u16,
    /// Seeds the table's hash and the schedulers.
    pub seed: u64,
}

/// A configured service as the engine keeps it.
#[derive(Debug)]
struct Svc {
    /// The VIP, of either family (a packet of the other family never matches it).
    vip: IpAddr,
    port: u16,
    proto: u8,
    forwarding: Forwarding,
    persistence_s: u32,
    on_down: OnDown,
    servers: Vec<ServerSlot>,
    /// Address of each server (of the VIP's family: `--check` refuses others).
    addrs: Vec<IpAddr>,
    sched: Box<dyn Select>,
    /// Per server, indexed like `servers`.
    counters: Vec<ServerCounters>,
    /// `mh` or `sh`: every ATM maps a flow to the same server (mid-flow pickup allowed).
    consistent: bool,
}

/// Traffic counters of one real server (monotonic), for the admin channel and metrics.
/// A GSO super-packet counts as one packet with all its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerCounters {
    /// Connections scheduled to it.
    pub connections: u64,
    /// Client packets and their IP bytes forwarded to it.
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Its NAT replies (and their IP bytes) forwarded to clients (NAT services only: with
    /// direct routing and tunnel the replies bypass the ATM).
    pub packets_out: u64,
    pub bytes_out: u64,
}

/// Capacity of the queue of changes waiting for connection sync.
const SYNC_QUEUE: usize = 16_384;
/// Expiry work: every `EXPIRE_EVERY` packets, up to `EXPIRE_BUDGET` entries.
const EXPIRE_EVERY: u64 = 16;
const EXPIRE_BUDGET: usize = 32;

/// The packet engine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    svcs: Vec<Svc>,
    /// Connection and affinity tables of each family.
    flows: Flows,
    /// The seed the engine was built with (schedulers of services added by a reload).
    seed: u64,
    local_addr: Ipv4Addr,
    local_addr6: Ipv6Addr,
    path_mtu: u16,
    ident: u16,
    active: bool,
    sync_enabled: bool,
    /// Active-active: a TCP segment of an unknown flow is scheduled like a SYN (see
    /// [`Engine::set_mid_flow_pickup`]).
    pickup: bool,
    sync_queue: VecDeque<SyncRecord>,
    /// The packet being processed carries partial transport checksums (offload).
    partial_csum: bool,
    /// The packet being processed may be forwarded in place ([`Engine::process_in_place`]):
    /// NAT and direct routing leave their edit in `pending` instead of copying.
    in_place: bool,
    pending: Option<InPlace>,
    /// Segments of the packet being processed: a GSO super-packet counts as the wire
    /// packets it becomes in the per-server packet counters (1 otherwise).
    segments: u32,
    /// A planned handover is under way: half-open entries are synced too (see
    /// [`Engine::set_handing_over`]).
    handing_over: bool,
    /// Token buckets on the resets and ICMP errors the engine makes ([`ratelimit`]).
    limits: ratelimit::RateLimits,
    stats: EngineStats,
}

/// The edit [`Engine::process_in_place`] applies once the engine has let go of the packet.
#[derive(Clone, Copy, Debug)]
enum InPlace {
    Rewrite(forward::Rewrite),
    Unchanged,
}

fn secs(now: Instant) -> u32 {
    u32::try_from(now.as_nanos() / 1_000_000_000).unwrap_or(u32::MAX)
}

fn l4_proto(p: settings::Protocol) -> u8 {
    match p {
        settings::Protocol::Tcp => proto::TCP,
        settings::Protocol::Udp => proto::UDP,
    }
}

/// Records of a family's affinity table: a quarter of the connection table's, if any
/// service of the family uses persistence.
fn affinity_records(svcs: &[Svc], table: &settings::Table, v6: bool) -> usize {
    let persist = svcs.iter().any(|s| s.persistence_s > 0 && s.vip.is_ipv6() == v6);
    if persist { (table.max_connections as usize / 4).max(1024) } else { 0 }
}

/// Slots of a family's connection table: `max_connections` if a service of the family
/// exists, else one (an engine without IPv6 services holds no IPv6 table).
fn table_slots(svcs: &[Svc], table: &settings::Table, v6: bool) -> settings::Table {
    let any = svcs.iter().any(|s| s.vip.is_ipv6() == v6);
    settings::Table { max_connections: if any { table.max_connections } else { 1 }, ..table.clone() }
}

fn per_family<A: Family>(svcs: &[Svc], table: &settings::Table, seed: u64, v6: bool) -> PerFamily<A> {
    PerFamily {
        table: ConnTable::new(&table_slots(svcs, table, v6), seed),
        affinity: affinity::Affinity::new(affinity_records(svcs, table, v6), seed.rotate_left(17)),
        resync_cursor: None,
        affinity_cursor: None,
    }
}

impl Svc {
    /// A service of the config with these server slots (indexed like `s.servers`).
    fn build(s: &settings::ServiceSettings, servers: Vec<ServerSlot>, seed: u64) -> Svc {
        let addrs = s.servers.iter().map(|srv| srv.address).collect();
        let sched = select::build(s.scheduler, &servers, seed);
        Svc {
            vip: s.vip,
            port: s.port,
            proto: l4_proto(s.protocol),
            forwarding: s.forwarding,
            persistence_s: u32::try_from(s.persistence_s).unwrap_or(u32::MAX),
            on_down: s.on_down,
            counters: vec![ServerCounters::default(); servers.len()],
            servers,
            addrs,
            sched,
            consistent: matches!(s.scheduler, settings::SchedulerKind::Mh | settings::SchedulerKind::Sh),
        }
    }
}

/// Decrements the active count of the server an entry pointed at.
fn release<A: Family>(svcs: &mut [Svc], e: &Entry<A>) {
    if let Some(s) =
        svcs.get_mut(usize::from(e.service)).and_then(|s| s.servers.get_mut(usize::from(e.server_idx)))
    {
        s.active = s.active.saturating_sub(1);
    }
}

impl Engine {
    /// Builds an engine: allocates the table (and the affinity table if any service uses
    /// persistence) once, here. The engine starts active, with sync disabled.
    pub fn new(cfg: &EngineConfig) -> Engine {
        let svcs: Vec<Svc> = cfg
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Svc::build(s, s.servers.iter().map(ServerSlot::from_config).collect(), cfg.seed ^ i as u64)
            })
            .collect();
        let flows = Flows {
            v4: per_family(&svcs, &cfg.table, cfg.seed, false),
            v6: per_family(&svcs, &cfg.table, cfg.seed ^ 0x6666, true),
        };
        Engine {
            svcs,
            flows,
            seed: cfg.seed,
            local_addr: cfg.local_addr,
            local_addr6: cfg.local_addr6,
            path_mtu: cfg.path_mtu,
            ident: cfg.seed as u16,
            active: true,
            sync_enabled: false,
            pickup: false,
            sync_queue: VecDeque::with_capacity(SYNC_QUEUE),
            handing_over: false,
            partial_csum: false,
            in_place: false,
            pending: None,
            segments: 1,
            limits: ratelimit::RateLimits::default(),
            stats: EngineStats::default(),
        }
    }

    /// Processes one IPv4 or IPv6 packet. `tx` should hold at least `rx.len() + 40` bytes
    /// (tunnel outer header) or 1280 (ICMP errors); a smaller one drops with
    /// `BufferTooSmall`.
    pub fn process(&mut self, now: Instant, rx: &[u8], tx: &mut [u8]) -> Verdict {
        self.stats.packets += 1;
        self.limits.set_now(now);
        if self.stats.packets % EXPIRE_EVERY == 0 {
            self.expire(now, EXPIRE_BUDGET);
        }
        let v = self.dispatch(now, rx, tx);
        match v {
            Verdict::Drop(r) => self.stats.drops[r as usize] += 1,
            Verdict::L2 { .. } => self.stats.direct_routed += 1,
            Verdict::Tun { .. } => {}
        }
        v
    }

    /// Like [`Engine::process`] for a packet whose TCP/UDP checksum field holds only the
    /// pseudo-header sum, to be finished by the device (vnet-header `NEEDS_CSUM` with
    /// checksum offload): NAT patches that partial sum for the address change and leaves
    /// the port change to the device. The shell keeps the packet's vnet header.
    pub fn process_offloaded(&mut self, now: Instant, rx: &[u8], tx: &mut [u8]) -> Verdict {
        self.partial_csum = true;
        let v = self.process(now, rx, tx);
        self.partial_csum = false;
        v
    }

    /// Like [`Engine::process_offloaded`], forwarding in place where it can: a NAT rewrite
    /// is applied to `pkt` itself and a direct-routed packet is left as it is, so a 64 KB
    /// super-packet is never copied in user space. Returns the verdict and whether its
    /// output is `pkt` (`true`) or was written into `tx` (`false`: a reset or an ICMP error
    /// the engine made, or a tunnelled packet); `tx` needs room only for those. `segments`:
    /// how many packets `pkt` becomes on the wire (a super-packet's GSO segments; 1 else),
    /// for the per-server packet counters.
    pub fn process_in_place(
        &mut self,
        now: Instant,
        pkt: &mut [u8],
        tx: &mut [u8],
        segments: u32,
    ) -> (Verdict, bool) {
        self.partial_csum = true;
        self.in_place = true;
        self.pending = None;
        self.segments = segments.max(1);
        let v = self.process(now, pkt, tx);
        self.partial_csum = false;
        self.in_place = false;
        self.segments = 1;
        match (self.pending.take(), v) {
            (Some(InPlace::Rewrite(rw)), Verdict::Tun { len }) => match pkt.get_mut(..len) {
                Some(out) => {
                    forward::apply(out, rw);
                    (v, true)
                }
                None => (Verdict::Drop(DropReason::Truncated), false),
            },
            (Some(InPlace::Unchanged), Verdict::L2 { .. }) => (v, true),
            (_, v) => (v, false),
        }
    }

    /// A NAT rewrite: copied into `tx`, or held for [`Engine::process_in_place`].
    fn nat<P: L3>(&mut self, ip: &P, tx: &mut [u8], rw: forward::Rewrite) -> Verdict {
        if self.in_place {
            self.pending = Some(InPlace::Rewrite(rw));
            return Verdict::Tun { len: ip.bytes().len() };
        }
        forward::rewrite(ip.bytes(), tx, rw)
    }

    /// Direct routing: copied into `tx`, or left in place for [`Engine::process_in_place`].
    fn direct<P: L3>(&mut self, ip: &P, tx: &mut [u8], server: IpAddr) -> Verdict {
        if self.in_place {
            self.pending = Some(InPlace::Unchanged);
            return Verdict::L2 { len: ip.bytes().len(), next_hop: server };
        }
        forward::direct(ip.bytes(), tx, server)
    }

    /// Whether `rx` may be processed whole by [`Engine::process_offloaded`] as a GSO
    /// super-packet (see `platform::linux::shell::vnet`): true unless it is a client packet of a
    /// tunnel service (an outer header and the MTU check need each segment). NAT rewrites
    /// keep the packet's layout, direct routing copies it unchanged (the shell frames it
    /// with its GSO header); packets of no service are NAT replies or drops. No side effect.
    pub(crate) fn takes_whole(&self, rx: &[u8]) -> bool {
        if rx.first().is_some_and(|b| b >> 4 == 6) {
            return V6::parse(rx).is_ok_and(|ip| self.whole(&ip));
        }
        Ipv4Packet::new_checked(rx).is_ok_and(|ip| self.whole(&ip))
    }

    fn whole<P: L3>(&self, ip: &P) -> bool {
        let p = ip.proto();
        if p != proto::TCP && p != proto::UDP {
            return false;
        }
        let Ok((_, dport, _)) = l4_ports(p, ip.l4()) else { return false };
        match self.find_service(ip.dst(), dport, p) {
            Some(i) => self.svcs[i].forwarding != Forwarding::Tunnel,
            None => true,
        }
    }

    /// Reclaims up to `budget` expired entries (of both families); the shell may call it
    /// when idle.
    pub fn expire(&mut self, now: Instant, budget: usize) -> usize {
        let svcs = &mut self.svcs;
        let n = self.flows.v4.table.expire(now, budget, &mut |e| release(svcs, e));
        n + self.flows.v6.table.expire(now, budget.saturating_sub(n), &mut |e| release(svcs, e))
    }

    fn tab<A: Family>(&self) -> &ConnTable<A> {
        &A::of(&self.flows).table
    }

    fn tab_mut<A: Family>(&mut self) -> &mut ConnTable<A> {
        &mut A::of_mut(&mut self.flows).table
    }

    fn dispatch(&mut self, now: Instant, rx: &[u8], tx: &mut [u8]) -> Verdict {
        if !self.active {
            return Verdict::Drop(DropReason::Inactive);
        }
        match rx.first() {
            None => return Verdict::Drop(DropReason::Truncated),
            Some(b) if b >> 4 == 6 => return self.dispatch6(now, rx, tx),
            Some(_) => {}
        }
        let ip = match Ipv4Packet::new_checked(rx) {
            Ok(p) => p,
            Err(e) => return Verdict::Drop(e.into()),
        };
        if !ip.verify_checksum() {
            return Verdict::Drop(DropReason::BadChecksum);
        }
        if ip.frag_offset() != 0 {
            return Verdict::Drop(DropReason::LaterFragment);
        }
        if ip.ttl() == 0 {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        match ip.protocol() {
            proto::TCP | proto::UDP => self.transport(now, &ip, tx),
            proto::ICMP => icmp::handle(self, now, &ip, tx),
            _ => Verdict::Drop(DropReason::UnsupportedProtocol),
        }
    }

    /// An IPv6 packet: the fixed header checked, the extension headers walked (anything
    /// the walk refuses is counted and dropped), later fragments dropped as for IPv4.
    fn dispatch6(&mut self, now: Instant, rx: &[u8], tx: &mut [u8]) -> Verdict {
        let ip = match V6::parse(rx) {
            Ok(ip) => ip,
            Err(r) => return Verdict::Drop(r),
        };
        if ip.up.frag_offset.is_some_and(|o| o != 0) {
            return Verdict::Drop(DropReason::LaterFragment);
        }
        if ip.ip.hop_limit() == 0 {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        match ip.up.proto {
            proto::TCP | proto::UDP => self.transport(now, &ip, tx),
            proto::ICMPV6 => icmp6::handle(self, now, &ip, tx),
            _ => Verdict::Drop(DropReason::UnsupportedProtocol),
        }
    }

    fn find_service<A: Family>(&self, vip: A, port: u16, proto: u8) -> Option<usize> {
        self.svcs.iter().position(|s| family::same(s.vip, vip) && s.port == port && s.proto == proto)
    }

    /// The slot of a live entry; an expired one found on the way is reclaimed.
    fn lookup_fwd<A: Family>(&mut self, key: &FwdKey<A>, now: Instant) -> Option<u32> {
        let slot = self.tab::<A>().find_fwd(key)?;
        if self.tab::<A>().is_expired(slot, now) {
            self.remove_slot::<A>(slot);
            return None;
        }
        Some(slot)
    }

    fn lookup_rev<A: Family>(&mut self, key: &RevKey<A>, now: Instant) -> Option<u32> {
        let slot = self.tab::<A>().find_rev(key)?;
        if self.tab::<A>().is_expired(slot, now) {
            self.remove_slot::<A>(slot);
            return None;
        }
        Some(slot)
    }

    fn remove_slot<A: Family>(&mut self, slot: u32) {
        let e = self.tab_mut::<A>().remove(slot);
        release(&mut self.svcs, &e);
    }

    fn transport<P: L3>(&mut self, now: Instant, ip: &P, tx: &mut [u8]) -> Verdict {
        let p = ip.proto();
        let (sport, dport, fl) = match l4_ports(p, ip.l4()) {
            Ok(x) => x,
            Err(r) => return Verdict::Drop(r),
        };
        let (src, dst) = (ip.src(), ip.dst());
        if let Some(svc) = self.find_service(dst, dport, p) {
            let key = FwdKey { proto: p, client: src, client_port: sport, vip: dst, vip_port: dport };
            return self.client_packet(now, ip, tx, svc, &key, fl);
        }
        let rk = RevKey { proto: p, server: src, server_port: sport, client: dst, client_port: dport };
        match self.lookup_rev(&rk, now) {
            Some(slot) => self.nat_reply(now, ip, tx, slot, fl),
            None => Verdict::Drop(DropReason::NoService),
        }
    }

    fn client_packet<P: L3>(
        &mut self,
        now: Instant,
        ip: &P,
        tx: &mut [u8],
        svc: usize,
        key: &FwdKey<P::A>,
        fl: u8,
    ) -> Verdict {
        let slot = match self.lookup_fwd(key, now) {
            Some(slot) => {
                let e = self.tab::<P::A>().get(slot);
                let s = &self.svcs[svc];
                // An entry whose server a reload removed (`on_down: keep`) points at no slot:
                // it carries on to its address but is never reused for a new connection.
                let server = s.servers.get(usize::from(e.server_idx));
                let slot_ok = server.is_some_and(ServerSlot::available);
                // A fresh SYN on a closing (or never answered) entry is a new connection
                // reusing the tuple: it must not reach a failed or drained server.
                let new_conn = key.proto == proto::TCP
                    && fl & (flags::SYN | flags::ACK) == flags::SYN
                    && matches!(e.state, State::Closing | State::SynSent);
                if !slot_ok && new_conn {
                    self.remove_slot::<P::A>(slot);
                    match self.new_flow(now, svc, key, fl) {
                        Ok(slot) => slot,
                        Err(r) => return Verdict::Drop(r),
                    }
                } else if server.is_some_and(|x| !x.up) && s.on_down == OnDown::Reset {
                    self.remove_slot::<P::A>(slot);
                    match self.new_flow(now, svc, key, fl) {
                        Ok(slot) => slot,
                        Err(_)
                            if key.proto == proto::TCP
                                && fl & flags::RST == 0
                                && self.limits.allow(ratelimit::Kind::Reset) =>
                        {
                            let v = ip.reset(tx);
                            if matches!(v, Verdict::Tun { .. }) {
                                self.stats.resets_sent += 1;
                            }
                            return v;
                        }
                        Err(_) => return Verdict::Drop(DropReason::ServerDown),
                    }
                } else {
                    self.hit::<P::A>(now, slot, fl, true);
                    slot
                }
            }
            None => match self.new_flow(now, svc, key, fl) {
                Ok(slot) => slot,
                Err(r) => return Verdict::Drop(r),
            },
        };
        let e = *self.tab::<P::A>().get(slot);
        if let Some(c) = self.svcs[svc].counters.get_mut(usize::from(e.server_idx)) {
            c.packets_in += u64::from(self.segments);
            c.bytes_in += ip.bytes().len() as u64;
        }
        let server = e.server;
        match self.svcs[svc].forwarding {
            Forwarding::Nat => {
                let rw = forward::Rewrite {
                    side: forward::Side::Dst,
                    addr: server.into(),
                    port: e.server_port,
                    partial: self.partial_csum,
                    l4_offset: ip.l4_offset(),
                    proto: ip.proto(),
                };
                let v = self.nat(ip, tx, rw);
                if matches!(v, Verdict::Tun { .. }) {
                    self.stats.nat_to_server += 1;
                }
                v
            }
            Forwarding::Dr => self.direct(ip, tx, server.into()),
            Forwarding::Tunnel => self.tunnel_flow(ip, tx, &e, true),
        }
    }

    fn nat_reply<P: L3>(&mut self, now: Instant, ip: &P, tx: &mut [u8], slot: u32, fl: u8) -> Verdict {
        self.hit::<P::A>(now, slot, fl, false);
        let e = *self.tab::<P::A>().get(slot);
        if let Some(c) = self
            .svcs
            .get_mut(usize::from(e.service))
            .and_then(|s| s.counters.get_mut(usize::from(e.server_idx)))
        {
            c.packets_out += u64::from(self.segments);
            c.bytes_out += ip.bytes().len() as u64;
        }
        let rw = forward::Rewrite {
            side: forward::Side::Src,
            addr: e.vip.into(),
            port: e.vip_port,
            partial: self.partial_csum,
            l4_offset: ip.l4_offset(),
            proto: ip.proto(),
        };
        let v = self.nat(ip, tx, rw);
        if matches!(v, Verdict::Tun { .. }) {
            self.stats.nat_to_client += 1;
        }
        v
    }

    /// Updates state and idle time of a hit, offering changes to sync.
    #[inline]
    fn hit<A: Family>(&mut self, now: Instant, slot: u32, fl: u8, from_client: bool) {
        let e = self.tab::<A>().get(slot);
        let next = if e.proto == proto::TCP {
            tcp_next(e.state, fl, from_client, e.flags & FLAG_NAT != 0)
        } else {
            e.state
        };
        if next != e.state {
            self.tab_mut::<A>().set_state(slot, next, now);
            self.offer_sync::<A>(slot, now, true);
        } else {
            self.tab_mut::<A>().touch(slot, now);
            self.offer_sync::<A>(slot, now, false);
        }
    }

    fn new_flow<A: Family>(
        &mut self,
        now: Instant,
        svc_idx: usize,
        key: &FwdKey<A>,
        fl: u8,
    ) -> Result<u32, DropReason> {
        let mid_flow =
            key.proto == proto::TCP && fl & (flags::SYN | flags::ACK | flags::RST | flags::FIN) != flags::SYN;
        if mid_flow && !self.picks_up(svc_idx, fl) {
            return Err(DropReason::NoConnection);
        }
        let now_s = secs(now);
        let svc_id = u16::try_from(svc_idx).map_err(|_| DropReason::NoService)?;
        let svc = &mut self.svcs[svc_idx];
        let sticky = if svc.persistence_s > 0 {
            A::of(&self.flows)
                .affinity
                .get(svc_id, key.client, now_s)
                .map(usize::from)
                .filter(|&i| svc.servers.get(i).is_some_and(ServerSlot::available))
        } else {
            None
        };
        let idx = match sticky {
            Some(i) => i,
            None => {
                let h = flow_hash(key);
                svc.sched
                    .pick(h, key.client.into(), &svc.servers)
                    .filter(|&i| i < svc.servers.len())
                    .ok_or(DropReason::NoServer)?
            }
        };
        // A tunnel server of the other family is kept as its stand-in (`Family::token`).
        let addr = svc.addrs[idx];
        let server = match A::from_ip(addr) {
            Some(a) => a,
            None if svc.forwarding == Forwarding::Tunnel => A::token(addr),
            None => return Err(DropReason::NoServer),
        };
        let server_idx = u16::try_from(idx).map_err(|_| DropReason::NoServer)?;
        let persistence_s = svc.persistence_s;
        let server_port = svc.servers[idx].port;
        let nat = svc.forwarding == Forwarding::Nat;
        if persistence_s > 0
            && A::of_mut(&mut self.flows).affinity.put(svc_id, key.client, server_idx, now_s, persistence_s)
        {
            self.offer_affinity::<A>(svc_idx, key.client, server_idx, persistence_s);
        }
        if nat {
            let rk = RevKey {
                proto: key.proto,
                server,
                server_port,
                client: key.client,
                client_port: key.client_port,
            };
            if self.lookup_rev(&rk, now).is_some() {
                return Err(DropReason::NatConflict);
            }
        }
        let state = match (key.proto == proto::TCP, mid_flow) {
            (false, _) => State::Udp,
            (true, false) => State::SynSent,
            (true, true) if fl & flags::FIN != 0 => State::Closing,
            (true, true) => State::Established,
        };
        if mid_flow {
            self.stats.picked_up += 1;
        }
        let entry = Entry::new(
            key.proto,
            (key.client, key.client_port),
            (key.vip, key.vip_port),
            (server, server_port),
            svc_id,
            server_idx,
            state,
            if nat { FLAG_NAT } else { 0 },
        );
        let slot = self.insert(entry, now);
        self.stats.new_connections += 1;
        if let Some(c) = self.svcs[usize::from(svc_id)].counters.get_mut(usize::from(server_idx)) {
            c.connections += 1;
        }
        self.offer_sync::<A>(slot, now, true);
        Ok(slot)
    }

    /// Whether a mid-flow TCP segment (no entry here) of service `svc_idx` is picked up.
    fn picks_up(&self, svc_idx: usize, fl: u8) -> bool {
        let svc = &self.svcs[svc_idx];
        self.pickup
            && fl & (flags::SYN | flags::RST) == 0
            && svc.consistent
            && svc.forwarding != Forwarding::Nat
            && svc.persistence_s == 0
    }

    /// Active-active mode: a TCP segment of a flow this engine has no entry for (the router
    /// moved it here from a lost or drained ATM, and its sync record has not arrived or never
    /// will) is scheduled as its SYN was, instead of dropped (`NoConnection`), for direct
    /// routing and tunnel services with a consistent scheduler (`mh`, `sh`) and no
    /// persistence: every ATM with the same server set picks the same server (Maglev's
    /// "connection tracking + consistent hashing"). Counted in `picked_up`.
    pub fn set_mid_flow_pickup(&mut self, on: bool) {
        self.pickup = on;
    }

    fn insert<A: Family>(&mut self, entry: Entry<A>, now: Instant) -> u32 {
        let svcs = &mut self.svcs;
        let slot = A::of_mut(&mut self.flows).table.insert(entry, now, &mut |e| release(svcs, e));
        if let Some(s) = self.svcs[usize::from(entry.service)].servers.get_mut(usize::from(entry.server_idx))
        {
            s.active += 1;
        }
        slot
    }

    /// Active (primary: forwards) or shadow (backup: drops with `Inactive`, applies sync).
    pub fn set_active(&mut self, active: bool) {
        self.active = active;
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Applies a health or weight change. Weight 0 drains (no new connections); a server
    /// going down leaves its connections in place unless the service's `on_down` is
    /// `reset`, in which case they are dropped on their next packet.
    pub fn set_server_state(
        &mut self,
        service: usize,
        server: usize,
        weight: u32,
        up: bool,
    ) -> Result<(), EngineError> {
        let svc = self
            .svcs
            .get_mut(service)
            .filter(|s| server < s.servers.len())
            .ok_or(EngineError::NoSuchServer { service, server })?;
        svc.servers[server].weight = weight;
        svc.servers[server].up = up;
        svc.sched.update(&svc.servers);
        Ok(())
    }

    /// The servers of a service as the scheduler sees them (with active counts).
    /// Appends the addresses of every direct-routing service's servers (deduplicated): the
    /// next hops of [`Verdict::L2`].
    pub fn dr_servers(&self, out: &mut Vec<IpAddr>) {
        for s in self.svcs.iter().filter(|s| s.forwarding == Forwarding::Dr) {
            for a in &s.addrs {
                if !out.contains(a) {
                    out.push(*a);
                }
            }
        }
    }

    pub fn servers(&self, service: usize) -> &[ServerSlot] {
        self.svcs.get(service).map_or(&[], |s| &s.servers)
    }

    /// Traffic counters of the servers of a service (empty for an unknown service).
    pub fn server_counters(&self, service: usize) -> &[ServerCounters] {
        self.svcs.get(service).map_or(&[], |s| &s.counters)
    }

    /// Counters.
    pub fn stats(&self) -> EngineStats {
        let (t4, t6) = (self.flows.v4.table.stats(), self.flows.v6.table.stats());
        EngineStats {
            table_len: (self.flows.v4.table.len() + self.flows.v6.table.len()) as u64,
            table_expired: t4.expired + t6.expired,
            evicted_embryonic: t4.evicted_embryonic + t6.evicted_embryonic,
            evicted_other: t4.evicted_other + t6.evicted_other,
            limited: self.limits.limited(),
            ..self.stats
        }
    }

    /// The IPv4 connection table (read-only: listings, memory figures).
    pub fn table(&self) -> &ConnTable<Ipv4Addr> {
        &self.flows.v4.table
    }

    /// The IPv6 connection table (one slot unless a service has an IPv6 VIP).
    pub fn table6(&self) -> &ConnTable<Ipv6Addr> {
        &self.flows.v6.table
    }

    /// Heap bytes of the tables and the affinity tables of both families.
    pub fn memory_bytes(&self) -> usize {
        let f = &self.flows;
        f.v4.table.memory_bytes()
            + f.v4.affinity.memory_bytes()
            + f.v6.table.memory_bytes()
            + f.v6.affinity.memory_bytes()
    }
}

/// Ports and TCP flags of a transport header.
fn l4_ports(p: u8, l4: &[u8]) -> Result<(u16, u16, u8), DropReason> {
    if p == proto::TCP {
        let t = TcpPacket::new_checked(l4)?;
        Ok((t.src_port(), t.dst_port(), t.flags()))
    } else {
        let u = UdpPacket::new_checked(l4)?;
        Ok((u.src_port(), u.dst_port(), 0))
    }
}

/// The hash of a flow for hashing schedulers. Unseeded on purpose: every ATM must map a flow
/// to the same Maglev slot (the table index uses its own seeded hash against collisions).
fn flow_hash<A: Family>(k: &FwdKey<A>) -> u64 {
    let a = A::flow_word(k.client, k.vip);
    let b = u64::from(k.client_port) << 24 | u64::from(k.vip_port) << 8 | u64::from(k.proto);
    let h = a.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let h = (h.rotate_left(27) ^ b).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    h ^ (h >> 31)
}

/// The TCP state after a segment with flags `fl` (module docs).
fn tcp_next(state: State, fl: u8, from_client: bool, nat: bool) -> State {
    let syn = fl & flags::SYN != 0;
    let ack = fl & flags::ACK != 0;
    if fl & (flags::RST | flags::FIN) != 0 {
        return State::Closing;
    }
    match (state, from_client) {
        (State::SynSent, false) if syn && ack => State::SynRecv,
        (State::SynSent, true) if !nat && ack && !syn => State::Established,
        (State::SynRecv, true) if ack && !syn => State::Established,
        (State::Closing, true) if syn && !ack => State::SynSent,
        (s, _) => s,
    }
}
