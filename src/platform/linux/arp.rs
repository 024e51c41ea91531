//! ARP for the VIPs, answered from user space on `AF_PACKET` sockets.
//!
//! ## Why user space answers ARP (and the VIP is not a local address)
//!
//! The classic keepalived failure: the VIP is a local address on the primary's interface;
//! the daemon dies but the host stays up, the kernel keeps answering ARP for the VIP, the
//! backup promotes and announces itself, and the dead host's kernel goes on answering every
//! ARP request for the VIP (and accepting the traffic): clients flap between the two, and
//! whatever lands on the dead host is black-holed. Here nothing outside the daemon process
//! answers for a VIP:
//!
//! * the VIP is **never** a local address: the data plane's policy rules route traffic *to*
//!   it into the daemon's non-persistent TUN device (which vanishes with the process, its
//!   route with it);
//! * the daemon itself answers ARP requests for the VIPs it holds, and sends the gratuitous
//!   ARPs, on a packet socket per interface ([`ArpResponder`]).
//!
//! So a SIGKILLed daemon answers nothing: once the backup's gratuitous ARP has updated the
//! clients' caches, no traffic reaches the dead host, and until then what reaches it is
//! routed by its kernel's main table (no black hole made by us). A daemon death is no worse
//! than a host loss.
//!
//! Each VIP is answered on the interface whose connected subnet contains it (a NAT
//! `gateway_vip` lives on the server-side subnet), else on the ATM's own interface.
//!
//! ## IPv6: Neighbor Discovery, the same way
//!
//! An IPv6 VIP is owned the same way over NDP ([`crate::dataplane::wire::ndp`]): a second
//! packet socket per port takes only Neighbor Solicitations (a classic BPF filter in the
//! kernel, so IPv6 traffic through the ATM is not copied to user space), the port joins
//! each IPv6 VIP's solicited-node multicast group (so the interface's multicast filter lets
//! the solicitations in; never the kernel's address, so the kernel answers nothing), the
//! primary answers with a solicited Neighbor Advertisement (Override set) and announces on
//! promotion with unsolicited ones to all nodes, as often as the `arp` settings say. A
//! host with IPv6 disabled gets no NDP socket (IPv4 is served as before).
//!
//! ## Two threads
//!
//! The serve loops run on the daemon's main runtime; taking, releasing and announcing VIPs
//! come from the heartbeat thread (see [`crate::daemon`]), so that the first gratuitous ARP
//! leaves at the instant of promotion whatever the main runtime is busy with. The held set,
//! the VIP map and the counters are behind short `Mutex`es (never held across an `await`);
//! an announcement is a direct, non-blocking `send` on the packet socket, which is safe
//! from any thread while the socket's reactor registration belongs to the main runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard, PoisonError};

use socket2::{Domain, Protocol, SockFilter, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::netsys::{async_socket, bind_packet_socket};
use crate::dataplane::wire::ndp;

/// `ETH_P_IPV6` in host order.
const ETH_P_IPV6: u16 = 0x86DD;

/// `ETH_P_ARP` in host order.
pub const ETH_P_ARP: u16 = 0x0806;
/// Length of an ARP frame over Ethernet (without padding).
pub const FRAME_LEN: usize = 42;
const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// An ARP request as read from the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

/// Parses an Ethernet/IPv4 ARP *request*; anything else is `None`.
pub fn parse_request(frame: &[u8]) -> Option<Request> {
    let f = frame.get(..FRAME_LEN)?;
    let ok = f[12..14] == [0x08, 0x06] && f[14..22] == [0, 1, 0x08, 0x00, 6, 4, 0, 1];
    if !ok {
        return None;
    }
    let mac = |o: usize| <[u8; 6]>::try_from(&f[o..o + 6]).ok();
    let ip = |o: usize| Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3]);
    Some(Request { sender_mac: mac(22)?, sender_ip: ip(28), target_ip: ip(38) })
}

/// An ARP frame: `op` 1 request, 2 reply.
fn frame(dst: [u8; 6], op: u8, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&sha);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, op]);
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa.octets());
    f[32..38].copy_from_slice(&tha);
    f[38..42].copy_from_slice(&tpa.octets());
    f
}

/// The reply to `req` saying `req.target_ip` is at `mac`.
pub fn reply(mac: [u8; 6], req: &Request) -> [u8; FRAME_LEN] {
    frame(req.sender_mac, 2, mac, req.target_ip, req.sender_mac, req.sender_ip)
}

/// A gratuitous ARP (broadcast request, sender = target = `vip`): updates every neighbour
/// entry for `vip` on the segment (Linux does so with the default `arp_accept=0`).
pub fn gratuitous(mac: [u8; 6], vip: Ipv4Addr) -> [u8; FRAME_LEN] {
    frame(BROADCAST_MAC, 1, mac, vip, [0; 6], vip)
}

/// One interface's packet sockets: ARP, and Neighbor Solicitations.
#[derive(Debug)]
pub struct ArpPort {
    pub iface: String,
    pub mac: [u8; 6],
    ifindex: u32,
    fd: AsyncFd<Socket>,
    /// `None` where IPv6 is off (the socket or its filter could not be set up).
    nd: Option<AsyncFd<Socket>>,
    /// Holds the solicited-node memberships of the IPv6 VIPs answered here.
    groups: Option<std::net::UdpSocket>,
    joined: Mutex<BTreeSet<Ipv6Addr>>,
}

/// A lock that a panicking holder cannot poison for good (the daemon aborts on panic anyway).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Classic BPF: accept IPv6 frames carrying ICMPv6 type 135 right after the fixed header
/// (a Neighbor Solicitation); drop everything else in the kernel.
fn ns_filter() -> [SockFilter; 8] {
    // BPF_LD|BPF_H|BPF_ABS = 0x28, BPF_LD|BPF_B|BPF_ABS = 0x30, BPF_JMP|BPF_JEQ|BPF_K = 0x15,
    // BPF_RET|BPF_K = 0x06.
    [
        SockFilter::new(0x28, 0, 0, 12),
        SockFilter::new(0x15, 0, 5, u32::from(ETH_P_IPV6)),
        SockFilter::new(0x30, 0, 0, 20),
        SockFilter::new(0x15, 0, 3, 58),
        SockFilter::new(0x30, 0, 0, 54),
        SockFilter::new(0x15, 0, 1, u32::from(ndp::NEIGHBOR_SOLICITATION)),
        SockFilter::new(0x06, 0, 0, 0xFFFF),
        SockFilter::new(0x06, 0, 0, 0),
    ]
}

fn open_nd(ifindex: u32) -> io::Result<(AsyncFd<Socket>, std::net::UdpSocket)> {
    let socket = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(i32::from(ETH_P_IPV6.to_be()))))?;
    socket.attach_filter(&ns_filter())?;
    bind_packet_socket(&socket, ifindex, ETH_P_IPV6)?;
    socket.set_nonblocking(true)?;
    let groups = std::net::UdpSocket::bind("[::]:0")?;
    Ok((async_socket(socket)?, groups))
}

async fn recv_on(fd: &AsyncFd<Socket>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|fd| {
            let mut s: &Socket = fd.get_ref();
            s.read(buf)
        }) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

impl ArpPort {
    /// Opens an ARP packet socket on interface `ifindex` (needs `CAP_NET_RAW`), and the NDP
    /// one where IPv6 is on; call inside a tokio runtime.
    pub fn open(iface: &str, ifindex: u32, mac: [u8; 6]) -> io::Result<Self> {
        let socket =
            Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(i32::from(ETH_P_ARP.to_be()))))?;
        bind_packet_socket(&socket, ifindex, ETH_P_ARP)?;
        socket.set_nonblocking(true)?;
        let (nd, groups) = match open_nd(ifindex) {
            Ok((nd, g)) => (Some(nd), Some(g)),
            Err(e) => {
                tracing::info!(%iface, error = %e, "no NDP socket (IPv6 off?): IPv6 VIPs are not answered here");
                (None, None)
            }
        };
        Ok(ArpPort {
            iface: iface.to_string(),
            mac,
            ifindex,
            fd: async_socket(socket)?,
            nd,
            groups,
            joined: Mutex::new(BTreeSet::new()),
        })
    }

    /// Joins the solicited-node group of every IPv6 VIP in `vips` not joined yet.
    fn join(&self, vips: impl Iterator<Item = Ipv6Addr>) {
        let Some(g) = &self.groups else { return };
        let mut joined = lock(&self.joined);
        for v in vips {
            let group = ndp::solicited_node(v);
            if !joined.contains(&group) {
                match g.join_multicast_v6(&group, self.ifindex) {
                    Ok(()) => {
                        joined.insert(group);
                    }
                    Err(e) => {
                        tracing::warn!(iface = %self.iface, %group, error = %e, "cannot join the solicited-node group of an IPv6 VIP")
                    }
                }
            }
        }
    }

    fn send(&self, f: &[u8; FRAME_LEN]) -> io::Result<()> {
        self.fd.get_ref().send(f).map(|_| ())
    }

    fn send_nd(&self, f: &[u8]) -> io::Result<()> {
        match &self.nd {
            Some(nd) => nd.get_ref().send(f).map(|_| ()),
            None => Err(io::Error::other(format!("no NDP socket on {}", self.iface))),
        }
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| {
                let mut s: &Socket = fd.get_ref();
                s.read(buf)
            }) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

/// Counters of the responder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArpStats {
    pub requests_answered: u64,
    pub gratuitous_sent: u64,
    pub send_errors: u64,
    /// Neighbor Solicitations answered and unsolicited advertisements sent (IPv6).
    pub solicitations_answered: u64,
    pub advertisements_sent: u64,
}

/// Answers ARP for the VIPs this ATM holds and sends its gratuitous ARPs (module docs).
#[derive(Debug)]
pub struct ArpResponder {
    ports: Vec<ArpPort>,
    /// VIP -> index in `ports`.
    port_of: Mutex<BTreeMap<IpAddr, usize>>,
    held: Mutex<BTreeSet<IpAddr>>,
    stats: Mutex<ArpStats>,
}

impl ArpResponder {
    /// `port_of` maps every VIP to its port; VIPs missing from it are never answered.
    pub fn new(ports: Vec<ArpPort>, port_of: BTreeMap<IpAddr, usize>) -> Self {
        assert!(port_of.values().all(|i| *i < ports.len()), "VIP mapped to a missing port");
        join_groups(&ports, &port_of);
        ArpResponder {
            ports,
            port_of: Mutex::new(port_of),
            held: Mutex::new(BTreeSet::new()),
            stats: Mutex::default(),
        }
    }

    /// A live reload: the VIPs and the interface each is answered on. Every interface must
    /// have a port already (sockets are opened at start-up); otherwise nothing changes and
    /// the error names the VIP and interface.
    pub fn map_vips(&self, per_vip: &BTreeMap<IpAddr, String>) -> Result<(), String> {
        let map = self.resolve(per_vip)?;
        join_groups(&self.ports, &map);
        *lock(&self.port_of) = map;
        Ok(())
    }

    /// Whether [`ArpResponder::map_vips`] would succeed (changes nothing).
    pub fn check_vips(&self, per_vip: &BTreeMap<IpAddr, String>) -> Result<(), String> {
        self.resolve(per_vip).map(|_| ())
    }

    fn resolve(&self, per_vip: &BTreeMap<IpAddr, String>) -> Result<BTreeMap<IpAddr, usize>, String> {
        let mut map = BTreeMap::new();
        for (vip, iface) in per_vip {
            let Some(i) = self.ports.iter().position(|p| &p.iface == iface) else {
                return Err(format!(
                    "VIP {vip} is answered on interface {iface}, which has no ARP socket yet"
                ));
            };
            map.insert(*vip, i);
        }
        Ok(map)
    }

    /// Starts answering for `vips`.
    pub fn hold(&self, vips: impl IntoIterator<Item = IpAddr>) {
        lock(&self.held).extend(vips);
    }

    /// Stops answering for `vips`.
    pub fn release(&self, vips: impl IntoIterator<Item = IpAddr>) {
        let mut held = lock(&self.held);
        for v in vips {
            held.remove(&v);
        }
    }

    pub fn stats(&self) -> ArpStats {
        *lock(&self.stats)
    }

    /// One gratuitous ARP (IPv4) or unsolicited Neighbor Advertisement (IPv6) per VIP,
    /// each on its port. The first error is returned after every VIP has been tried.
    pub fn announce(&self, vips: impl IntoIterator<Item = IpAddr>) -> io::Result<()> {
        let mut first = None;
        for v in vips {
            let Some(port) = lock(&self.port_of).get(&v).map(|i| &self.ports[*i]) else { continue };
            let mut st = lock(&self.stats);
            let sent = match v {
                IpAddr::V4(a) => port.send(&gratuitous(port.mac, a)),
                IpAddr::V6(a) => port.send_nd(&ndp::unsolicited(port.mac, a)),
            };
            match (sent, v.is_ipv4()) {
                (Ok(()), true) => st.gratuitous_sent += 1,
                (Ok(()), false) => st.advertisements_sent += 1,
                (Err(e), _) => {
                    st.send_errors += 1;
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Whether `target` is held and answered on `port`.
    fn answers(&self, target: IpAddr, port: &ArpPort) -> bool {
        lock(&self.held).contains(&target)
            && lock(&self.port_of).get(&target).map(|i| &self.ports[*i].iface) == Some(&port.iface)
    }

    /// Answers requests forever (returns only on a socket error).
    pub async fn serve(&self) -> io::Result<()> {
        if self.ports.is_empty() {
            // No VIP to answer for: nothing to serve (and `select_all` needs one future).
            return std::future::pending().await;
        }
        let arp = self.ports.iter().map(|p| {
            Box::pin(self.serve_port(p))
                as std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<()>> + '_>>
        });
        let nd = self.ports.iter().filter(|p| p.nd.is_some()).map(|p| {
            Box::pin(self.serve_nd(p))
                as std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<()>> + '_>>
        });
        let (r, _, _) = futures::future::select_all(arp.chain(nd)).await;
        r
    }

    /// Answers Neighbor Solicitations for the IPv6 VIPs held on this port.
    async fn serve_nd(&self, port: &ArpPort) -> io::Result<()> {
        let Some(fd) = &port.nd else { return std::future::pending().await };
        let mut buf = [0u8; 256];
        loop {
            let n = recv_on(fd, &mut buf).await?;
            let Some(ns) = ndp::parse_solicitation(&buf[..n]) else { continue };
            let target = IpAddr::V6(ns.target);
            if ns.src_mac == port.mac || !self.answers(target, port) {
                continue;
            }
            let mut st = lock(&self.stats);
            match port.send_nd(&ndp::answer(port.mac, &ns)) {
                Ok(()) => st.solicitations_answered += 1,
                Err(_) => st.send_errors += 1,
            }
        }
    }

    async fn serve_port(&self, port: &ArpPort) -> io::Result<()> {
        let mut buf = [0u8; 128];
        loop {
            let n = port.recv(&mut buf).await?;
            let Some(req) = parse_request(&buf[..n]) else { continue };
            let target = IpAddr::V4(req.target_ip);
            // Our own frames (packet sockets also see outgoing traffic) and requests for
            // addresses we do not hold (or hold on another interface).
            if req.sender_mac == port.mac || !self.answers(target, port) {
                continue;
            }
            let mut st = lock(&self.stats);
            match port.send(&reply(port.mac, &req)) {
                Ok(()) => st.requests_answered += 1,
                Err(_) => st.send_errors += 1,
            }
        }
    }
}

/// Joins, on each port, the solicited-node groups of the IPv6 VIPs it answers.
fn join_groups(ports: &[ArpPort], port_of: &BTreeMap<IpAddr, usize>) {
    for (i, p) in ports.iter().enumerate() {
        p.join(port_of.iter().filter(|(_, j)| **j == i).filter_map(|(v, _)| match v {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const PEER: [u8; 6] = [2, 0, 0, 0, 0, 9];

    #[test]
    fn garp_is_a_broadcast_request_for_itself() {
        let vip = Ipv4Addr::new(10, 0, 0, 99);
        let f = gratuitous(MAC, vip);
        assert_eq!(&f[0..6], &[0xff; 6]);
        let r = parse_request(&f).expect("a request");
        assert_eq!(r, Request { sender_mac: MAC, sender_ip: vip, target_ip: vip });
    }

    #[test]
    fn reply_answers_the_asker() {
        let req = Request {
            sender_mac: PEER,
            sender_ip: Ipv4Addr::new(10, 0, 0, 5),
            target_ip: Ipv4Addr::new(10, 0, 0, 99),
        };
        let f = reply(MAC, &req);
        assert_eq!(&f[0..6], &PEER);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(f[21], 2, "op reply");
        assert_eq!(&f[22..28], &MAC);
        assert_eq!(&f[28..32], &[10, 0, 0, 99]);
        assert_eq!(&f[32..38], &PEER);
        assert_eq!(&f[38..42], &[10, 0, 0, 5]);
        assert_eq!(parse_request(&f), None, "a reply is not a request");
    }

    #[test]
    fn parse_rejects_short_and_foreign_frames() {
        let f = gratuitous(MAC, Ipv4Addr::new(1, 2, 3, 4));
        assert_eq!(parse_request(&f[..41]), None);
        let mut ip = f;
        ip[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(parse_request(&ip), None);
        // Ethernet padding after the ARP payload is fine.
        let mut padded = f.to_vec();
        padded.resize(60, 0);
        assert!(parse_request(&padded).is_some());
    }
}
