//! Tunnel forwarding: an outer header towards the flow's server, whatever the two families.
//!
//! | inner (VIP) | outer (server) | outer header |
//! | --- | --- | --- |
//! | IPv4 | IPv4 | IPv4, protocol 4 (RFC 2003), DF copied from the inner packet |
//! | IPv6 | IPv6 | IPv6, next header 41 (RFC 2473) |
//! | IPv4 | IPv6 | IPv6, next header 4 (RFC 2473) |
//! | IPv6 | IPv4 | IPv4, protocol 41 (RFC 4213), DF set |
//!
//! The outer source is the ATM's own address of the outer family (`local_addr`,
//! `local_addr6`); without one the packet is dropped (`NoServer`). A packet whose outer
//! packet would exceed `path_mtu` gets its own family's error when `may_reply` (IPv4 with
//! DF: fragmentation-needed; IPv6: Packet Too Big, at least 1280), so the client's path-MTU
//! discovery shrinks it; the exception is IPv4 without DF in an IPv4 outer header, which the
//! kernel fragments on its way out (it routes the outer packet). In an IPv6 outer header no
//! one may fragment it (the ATM is not the outer packet's source to the kernel, it only
//! forwards it), so it is dropped (`TooBig`) when no error may be sent.
//!
//! A server of the other family than the flow's cannot be stored in the flow's entry: the
//! entry keeps a stand-in ([`Family::token`]) and the address is looked up by the entry's
//! server index; a flow whose cross-family server a reload removed is dropped.

use core::net::IpAddr;

use super::family::{Family, L3};
use super::{DropReason, Engine, Verdict, forward};
use crate::dataplane::conntrack::Entry;
use crate::dataplane::wire::{ipv4, ipv6, proto};

impl Engine {
    /// The outer destination of flow `e`: its server's address (the entry's own, or for a
    /// stand-in the server it stands for, while the service still has it).
    fn tunnel_server<A: Family>(&self, e: &Entry<A>) -> Option<IpAddr> {
        if !A::is_token(e.server) {
            return Some(e.server.into());
        }
        let addr = *self.svcs.get(usize::from(e.service))?.addrs.get(usize::from(e.server_idx))?;
        (A::from_ip(addr).is_none() && A::token(addr) == e.server).then_some(addr)
    }

    /// Encapsulates a packet of flow `e` towards its server (module docs).
    pub(super) fn tunnel_flow<P: L3>(
        &mut self,
        ip: &P,
        tx: &mut [u8],
        e: &Entry<P::A>,
        may_reply: bool,
    ) -> Verdict {
        let Some(server) = self.tunnel_server(e) else { return Verdict::Drop(DropReason::NoServer) };
        let inner_v6 = <P::A as Family>::IS_V6;
        let outer = match server {
            IpAddr::V4(_) => ipv4::HEADER_LEN,
            IpAddr::V6(_) => ipv6::HEADER_LEN,
        };
        let len = ip.bytes().len();
        let mtu = usize::from(self.path_mtu);
        let fragmentable = server.is_ipv4() && ip.may_fragment();
        if len + outer > mtu && !fragmentable {
            if !may_reply || !self.limits.allow(super::ratelimit::Kind::IcmpError) {
                return Verdict::Drop(DropReason::TooBig);
            }
            let v = ip.too_big(self, tx, u16::try_from(mtu.saturating_sub(outer)).unwrap_or(u16::MAX));
            if matches!(v, Verdict::Tun { .. }) {
                self.stats.frag_needed_sent += 1;
            }
            return v;
        }
        let inner_proto = if inner_v6 { proto::IPV6 } else { proto::IPIP };
        let v = match server {
            IpAddr::V4(dst) => {
                if self.local_addr.is_unspecified() {
                    return Verdict::Drop(DropReason::NoServer);
                }
                self.ident = self.ident.wrapping_add(1);
                let df = !ip.may_fragment();
                forward::encapsulate(ip.bytes(), tx, self.local_addr, dst, (inner_proto, self.ident, df))
            }
            IpAddr::V6(dst) => {
                if self.local_addr6.is_unspecified() {
                    return Verdict::Drop(DropReason::NoServer);
                }
                forward::encapsulate6(ip.bytes(), tx, self.local_addr6, dst, inner_proto)
            }
        };
        if matches!(v, Verdict::Tun { .. }) {
            self.stats.tunnelled += 1;
        }
        v
    }
}
