//! One engine, two address families: what differs between IPv4 and IPv6 and nothing else.
//!
//! The flow logic (classify, look up, schedule, track TCP state, sync) is written once over
//! [`L3`], a parsed network header of either family, and [`Family`], which gives each
//! family its own connection and affinity tables ([`Flows`]). The transforms that differ
//! (a tunnel's outer header, the RST the engine makes, the ICMP error for an oversized
//! tunnel packet) are methods of [`L3`]; the NAT rewrite and the direct-routing copy work
//! on either family's bytes ([`super::forward`]).
//!
//! IPv6 packets reach the flow logic after [`V6::parse`] has walked their extension headers
//! (see [`crate::dataplane::wire::ipv6`]): the transport header is wherever the walk ended,
//! so every offset into the packet comes from [`L3::l4_offset`].

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::affinity::Affinity;
use super::{DropReason, Engine, Verdict, forward};
use crate::dataplane::conntrack::{ConnTable, FlowAddr};
use crate::dataplane::wire::ipv6::{Ipv6Packet, UpperLayer, Walk};
use crate::dataplane::wire::{Ipv4Packet, Result as WireResult};

/// One family's tables.
#[derive(Debug)]
pub(crate) struct PerFamily<A: FlowAddr> {
    pub table: ConnTable<A>,
    pub affinity: Affinity<A>,
    /// Next slot of a full resync of this table in progress.
    pub resync_cursor: Option<u32>,
    /// Next position of a full resync of the affinity table (after every table's entries).
    pub affinity_cursor: Option<usize>,
}

/// Both families' tables.
#[derive(Debug)]
pub(crate) struct Flows {
    pub v4: PerFamily<Ipv4Addr>,
    pub v6: PerFamily<Ipv6Addr>,
}

/// An address family the engine forwards.
pub(crate) trait Family: FlowAddr {
    /// IPv6 (its tables are allocated only when a service has an IPv6 VIP).
    const IS_V6: bool;
    fn of(f: &Flows) -> &PerFamily<Self>;
    fn of_mut(f: &mut Flows) -> &mut PerFamily<Self>;
    /// The hashing schedulers' flow hash input: both addresses in 64 bits, unseeded (every
    /// ATM must map a flow to the same Maglev slot).
    fn flow_word(client: Self, vip: Self) -> u64;
    /// The server `ip` as this family's entries and sync records hold it: itself, or for a
    /// tunnel server of the other family a stand-in no real server has (an IPv4 server in
    /// an IPv6 entry: its IPv4-mapped address; an IPv6 server in an IPv4 entry: 28 bits
    /// folded from it in the reserved 240.0.0.0/4). Every ATM computes the same one.
    fn token(ip: IpAddr) -> Self;
    /// Whether `self` is a stand-in made by [`Family::token`].
    fn is_token(self) -> bool;
}

impl Family for Ipv4Addr {
    const IS_V6: bool = false;
    fn of(f: &Flows) -> &PerFamily<Self> {
        &f.v4
    }
    fn of_mut(f: &mut Flows) -> &mut PerFamily<Self> {
        &mut f.v4
    }
    #[inline]
    fn flow_word(client: Self, vip: Self) -> u64 {
        u64::from(client.to_bits()) << 32 | u64::from(vip.to_bits())
    }
    fn token(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => a,
            IpAddr::V6(a) => {
                let b = a.to_bits();
                let folded = (b >> 96) as u32 ^ (b >> 64) as u32 ^ (b >> 32) as u32 ^ b as u32;
                Ipv4Addr::from_bits(0xf000_0000 | (folded & 0x0fff_ffff))
            }
        }
    }
    #[inline]
    fn is_token(self) -> bool {
        self.octets()[0] >= 240
    }
}

impl Family for Ipv6Addr {
    const IS_V6: bool = true;
    fn of(f: &Flows) -> &PerFamily<Self> {
        &f.v6
    }
    fn of_mut(f: &mut Flows) -> &mut PerFamily<Self> {
        &mut f.v6
    }
    #[inline]
    fn flow_word(client: Self, vip: Self) -> u64 {
        let (c, v) = (client.to_bits(), vip.to_bits());
        let fold = |x: u128| (x >> 64) as u64 ^ (x as u64).rotate_left(21);
        fold(c) ^ fold(v).rotate_left(32)
    }
    fn token(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V6(a) => a,
            IpAddr::V4(a) => a.to_ipv6_mapped(),
        }
    }
    #[inline]
    fn is_token(self) -> bool {
        self.to_ipv4_mapped().is_some()
    }
}

/// A parsed network header of either family, over the packet's bytes.
pub(crate) trait L3 {
    type A: Family;
    fn src(&self) -> Self::A;
    fn dst(&self) -> Self::A;
    /// The upper-layer protocol (after IPv6 extension headers).
    fn proto(&self) -> u8;
    /// Offset of the transport header.
    fn l4_offset(&self) -> usize;
    /// The whole packet.
    fn bytes(&self) -> &[u8];
    /// The transport header and its payload.
    fn l4(&self) -> &[u8] {
        &self.bytes()[self.l4_offset()..]
    }
    /// Whether a router may fragment this packet (IPv4 without DF).
    fn may_fragment(&self) -> bool;
    /// This family's "too big" error to the packet's source, for a path MTU of `mtu`
    /// (IPv4: fragmentation-needed, only with DF; IPv6: Packet Too Big, at least 1280).
    fn too_big(&self, eng: &Engine, tx: &mut [u8], mtu: u16) -> Verdict;
    /// A TCP RST answering this TCP segment, from its destination to its source.
    fn reset(&self, tx: &mut [u8]) -> Verdict;
}

impl L3 for Ipv4Packet<&[u8]> {
    type A = Ipv4Addr;
    fn src(&self) -> Ipv4Addr {
        self.src_addr()
    }
    fn dst(&self) -> Ipv4Addr {
        self.dst_addr()
    }
    fn proto(&self) -> u8 {
        self.protocol()
    }
    fn l4_offset(&self) -> usize {
        self.header_len()
    }
    fn bytes(&self) -> &[u8] {
        self.packet()
    }
    fn may_fragment(&self) -> bool {
        !self.dont_frag()
    }
    fn too_big(&self, eng: &Engine, tx: &mut [u8], mtu: u16) -> Verdict {
        if !self.dont_frag() {
            return Verdict::Drop(DropReason::TooBig);
        }
        forward::frag_needed(self, tx, eng.local_addr, mtu)
    }
    fn reset(&self, tx: &mut [u8]) -> Verdict {
        forward::tcp_reset(self, tx)
    }
}

/// An IPv6 packet whose extension headers were walked to its upper layer.
#[derive(Debug, Clone)]
pub(crate) struct V6<'a> {
    pub ip: Ipv6Packet<&'a [u8]>,
    pub up: UpperLayer,
}

impl<'a> V6<'a> {
    /// Checks the fixed header and walks the extension headers (module docs of
    /// [`crate::dataplane::wire::ipv6`]).
    pub fn parse(rx: &'a [u8]) -> Result<V6<'a>, DropReason> {
        let ip: WireResult<Ipv6Packet<&[u8]>> = Ipv6Packet::new_checked(rx);
        let ip = ip?;
        match ip.upper_layer() {
            Walk::Upper(up) => Ok(V6 { ip, up }),
            Walk::Truncated => Err(DropReason::Truncated),
            Walk::Unsupported(_) => Err(DropReason::UnsupportedProtocol),
        }
    }
}

impl L3 for V6<'_> {
    type A = Ipv6Addr;
    fn src(&self) -> Ipv6Addr {
        self.ip.src_addr()
    }
    fn dst(&self) -> Ipv6Addr {
        self.ip.dst_addr()
    }
    fn proto(&self) -> u8 {
        self.up.proto
    }
    fn l4_offset(&self) -> usize {
        self.up.offset
    }
    fn bytes(&self) -> &[u8] {
        self.ip.packet()
    }
    fn may_fragment(&self) -> bool {
        false
    }
    fn too_big(&self, eng: &Engine, tx: &mut [u8], mtu: u16) -> Verdict {
        let mtu = u32::from(mtu).max(1280);
        forward::icmp6_error(self.ip.packet(), tx, eng.local_addr6, forward::icmp6::PACKET_TOO_BIG, 0, mtu)
    }
    fn reset(&self, tx: &mut [u8]) -> Verdict {
        forward::tcp_reset6(self, tx)
    }
}

/// Whether `ip` is of family `A` (the engine keeps service addresses as [`IpAddr`]).
#[inline]
pub(crate) fn same<A: Family>(ip: IpAddr, a: A) -> bool {
    ip == a.into()
}
