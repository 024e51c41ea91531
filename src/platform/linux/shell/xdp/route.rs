//! Next hops for frames the AF_XDP backend sends itself.
//!
//! With TUN, a `Disposition::Tun` packet goes back to the kernel, which routes it and
//! resolves the next hop's MAC. With AF_XDP the worker frames it: the route comes from the
//! kernel (`RTM_GETROUTE` for the destination, as `ip route get` does, so policy rules and
//! every table count), cached per destination for [`ROUTE_TTL`]; the MAC from the
//! neighbour table through [`Neighbours`] (the same cache the TUN backend's direct-routing
//! output uses). A destination routed out of an interface the backend has no socket on, or
//! whose neighbour is unknown, is a [`Miss`]: the worker hands such a packet to the kernel
//! through a raw socket (counted), so nothing is lost while a neighbour is resolved; the
//! kernel resolves it meanwhile, and the miss is remembered only for [`MISS_TTL`]. The NAT
//! servers' entries are kept warm like the direct-routing servers' (a fresh primary finds
//! them resolved); a client's entry is made by the first reply to it (through the kernel).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};

use crate::platform::linux::shell::dr::Neighbours;
use crate::time::Instant;

/// How long a route lookup is trusted.
pub const ROUTE_TTL: Duration = Duration::from_secs(5);
/// How long a neighbour miss is remembered: short, since a miss costs a raw-socket send
/// (which makes the kernel resolve the address), not a drop.
pub const MISS_TTL: Duration = Duration::from_millis(10);
/// Bound on the route cache (cleared when full).
const MAX_ROUTES: usize = 4096;

/// Where a frame goes: a port (an interface with sockets) and the next hop's MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    pub port: usize,
    pub mac: [u8; 6],
}

/// Why no [`Hop`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// No route, or the lookup failed.
    NoRoute,
    /// Routed out of an interface without sockets (or locally delivered).
    OtherInterface,
    /// The next hop's MAC is not known (yet: the kernel was poked).
    NoNeighbour,
}

/// The (output interface, next hop) of a route reply for `dst`.
pub fn route_hop(msg: &RouteMessage, dst: IpAddr) -> Option<(u32, IpAddr)> {
    let mut oif = None;
    let mut via = None;
    for a in &msg.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => via = Some(IpAddr::V6(*g)),
            _ => {}
        }
    }
    Some((oif?, via.unwrap_or(dst)))
}

/// A route lookup's result: (port, next hop), or why not.
type Route = Result<(usize, IpAddr), Miss>;

/// Routes and neighbours of one worker.
#[derive(Debug)]
pub struct Router {
    handle: rtnetlink::Handle,
    /// One per port, in port order.
    neighbours: Vec<Neighbours>,
    /// Destination -> (port and next hop, or a miss; when looked up).
    routes: BTreeMap<IpAddr, (Route, Instant)>,
}

impl Router {
    /// `ports`: the interface index of each port.
    pub fn new(handle: rtnetlink::Handle, ports: &[u32]) -> Router {
        let neighbours =
            ports.iter().map(|&i| Neighbours::new(handle.clone(), i).with_miss_ttl(MISS_TTL)).collect();
        Router { handle, neighbours, routes: BTreeMap::new() }
    }

    /// The hop for a packet to `dst` (`on_link`: `dst` is the next hop itself, as for
    /// direct routing; only its interface is looked up).
    pub async fn hop(&mut self, now: Instant, dst: IpAddr, on_link: bool) -> Result<Hop, Miss> {
        let (port, via) = self.route(now, dst).await?;
        let via = if on_link { dst } else { via };
        match self.neighbours[port].resolve(now, via).await {
            Some(mac) => Ok(Hop { port, mac }),
            None => Err(Miss::NoNeighbour),
        }
    }

    /// Keeps `hops` resolved (the direct-routing servers): each on its own port.
    pub async fn warm(&mut self, now: Instant, hops: &[IpAddr]) {
        for &h in hops {
            if let Ok((port, _)) = self.route(now, h).await {
                self.neighbours[port].warm(now, &[h]).await;
            }
        }
    }

    async fn route(&mut self, now: Instant, dst: IpAddr) -> Route {
        if let Some((r, at)) = self.routes.get(&dst)
            && now.saturating_since(*at) < ROUTE_TTL
        {
            return *r;
        }
        let r = match self.lookup(dst).await {
            Some((oif, via)) => self
                .neighbours
                .iter()
                .position(|n| n.ifindex() == oif)
                .map(|p| (p, via))
                .ok_or(Miss::OtherInterface),
            None => Err(Miss::NoRoute),
        };
        if self.routes.len() >= MAX_ROUTES {
            self.routes.clear();
        }
        self.routes.insert(dst, (r, now));
        r
    }

    async fn lookup(&self, dst: IpAddr) -> Option<(u32, IpAddr)> {
        let msg = match dst {
            IpAddr::V4(a) => {
                RouteMessageBuilder::<std::net::Ipv4Addr>::new().destination_prefix(a, 32).build()
            }
            IpAddr::V6(a) => {
                RouteMessageBuilder::<std::net::Ipv6Addr>::new().destination_prefix(a, 128).build()
            }
        };
        let mut replies = self.handle.route().get(msg).execute();
        let reply = replies.try_next().await.ok().flatten()?;
        route_hop(&reply, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn hop_is_the_gateway_or_the_destination() {
        let dst = IpAddr::from([10, 0, 2, 20]);
        let mut m = RouteMessage::default();
        assert_eq!(route_hop(&m, dst), None, "no output interface");
        m.attributes.push(RouteAttribute::Oif(3));
        assert_eq!(route_hop(&m, dst), Some((3, dst)), "on-link");
        m.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(10, 0, 2, 1))));
        assert_eq!(route_hop(&m, dst), Some((3, IpAddr::from([10, 0, 2, 1]))));
    }
}
