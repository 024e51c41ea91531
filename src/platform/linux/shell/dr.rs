//! Direct-routing output: the packet leaves in an Ethernet frame addressed to the real
//! server's MAC, its IP header untouched (destination still the VIP, which the server holds on
//! its loopback with ARP hidden).
//!
//! The frame goes out through an `AF_PACKET` socket bound to the DR interface, preceded by a
//! virtio-net header (`PACKET_VNET_HDR`): an ordinary packet gets an empty one, a GSO
//! super-packet taken whole from the TUN (see [`super::vnet`]) keeps its own, so one send
//! carries up to 64 KB and the kernel segments it (or the veth takes it whole). The server's
//! MAC comes from the kernel's neighbour table (rtnetlink), cached per worker for
//! [`NEIGHBOUR_TTL`]. IPv6 packets go the same way (ethertype `0x86DD`, the server's entry
//! in the kernel's IPv6 neighbour table, resolved by NDP). On a miss the sender pokes the
//! kernel into resolving the address (a one-byte UDP datagram to the discard port, which
//! makes the kernel ARP or send a Neighbor Solicitation for it), drops the
//! packet and counts `l2_no_neighbour`; the miss is remembered for [`MISS_TTL`], after which
//! the client's retransmission finds the entry. So that a miss is rare, the shell keeps the
//! entries of every direct-routing server resolved ([`DrSender::warm`], every
//! [`WARM_EVERY`], on backups too): a new primary must not find them empty. Nothing else
//! guarantees that on IPv6 (a backup may never have spoken to an IPv6 server: measured in
//! the lab, 1.3 s outages after a failover, one dropped SYN per server); health checks help
//! but are optional.

use std::collections::BTreeMap;
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use super::{ShellError, ShellStats, netlink, vnet};
use crate::platform::linux::netsys::{ETH_P_IP, bind_packet_socket, set_packet_vnet_hdr};
use crate::time::Instant;
use tun_rs::{VIRTIO_NET_HDR_LEN, VirtioNetHdr};

/// How long a neighbour MAC is trusted before it is read again.
pub const NEIGHBOUR_TTL: Duration = Duration::from_secs(30);
/// How long a miss is remembered (packets to that next hop drop without a netlink dump, so
/// an unreachable server cannot turn every packet into a neighbour-table read).
pub const MISS_TTL: Duration = Duration::from_millis(250);
/// How often the direct-routing servers' neighbour entries are checked and, where missing,
/// resolved ([`DrSender::warm`]).
pub const WARM_EVERY: Duration = Duration::from_secs(2);
/// Bound on the per-worker neighbour cache (it is cleared when full).
const MAX_NEIGHBOURS: usize = 4096;

/// Sends packets to next hops' MACs on one interface.
#[derive(Debug)]
pub struct DrSender {
    socket: Socket,
    src_mac: [u8; 6],
    neighbours: Neighbours,
}

/// The kernel's neighbour table of one interface as a packet path needs it: MACs cached for
/// [`NEIGHBOUR_TTL`], misses remembered for [`MISS_TTL`], a missing entry poked so the kernel
/// resolves it, and [`Neighbours::warm`] to keep a list of next hops resolved. Shared by the
/// TUN backend's [`DrSender`] and the AF_XDP backend (which frames every output itself).
#[derive(Debug)]
pub struct Neighbours {
    ifindex: u32,
    handle: rtnetlink::Handle,
    /// Next hop -> (MAC, or `None` for a remembered miss; when it was read).
    cache: BTreeMap<IpAddr, (Option<[u8; 6]>, Instant)>,
    poke: Option<UdpSocket>,
    poke6: Option<UdpSocket>,
    /// How long a miss is remembered ([`MISS_TTL`] unless set otherwise).
    miss_ttl: Duration,
}

/// IPv6's ethertype.
const ETH_P_IPV6: u16 = 0x86DD;

/// The ethertype of an IP packet, from its version nibble.
fn ethertype(packet: &[u8]) -> u16 {
    if packet.first().is_some_and(|b| b >> 4 == 6) { ETH_P_IPV6 } else { ETH_P_IP }
}

impl DrSender {
    /// Opens the packet socket on `iface` (needs `CAP_NET_RAW`) and a netlink handle on the
    /// current runtime, in the calling thread's namespace.
    pub async fn open(iface: &str) -> Result<Self, ShellError> {
        let handle = netlink::connect()?;
        let ifindex = netlink::link_index(&handle, iface)
            .await?
            .ok_or_else(|| ShellError::NoInterface(iface.to_string()))?;
        let src_mac = netlink::link_mac(&handle, ifindex)
            .await?
            .ok_or_else(|| ShellError::NoInterface(format!("{iface} (no MAC)")))?;
        let perr = |source| ShellError::PacketSocket { iface: iface.to_string(), source };
        // Protocol 0: this socket only sends; it receives nothing.
        let socket = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0))).map_err(perr)?;
        bind_packet_socket(&socket, ifindex, ETH_P_IP).map_err(perr)?;
        set_packet_vnet_hdr(&socket).map_err(perr)?;
        socket.set_nonblocking(true).map_err(perr)?;
        Ok(DrSender { socket, src_mac, neighbours: Neighbours::new(handle, ifindex) })
    }

    /// Sends `packet` (complete checksums) to `next_hop`'s MAC; failures are counted in
    /// `stats`.
    pub async fn send(&mut self, now: Instant, packet: &[u8], next_hop: IpAddr, stats: &ShellStats) {
        self.send_whole(now, VirtioNetHdr::default(), packet, next_hop, stats, 1).await;
    }

    /// Sends a whole packet read from an offloading TUN (a GSO super-packet and/or a partial
    /// checksum) with its virtio-net header `hdr` (offsets from the IP header, as read): the
    /// kernel segments it or a GSO-capable device takes it whole. It stands for `segments`
    /// packets in the counters.
    pub async fn send_whole(
        &mut self,
        now: Instant,
        hdr: VirtioNetHdr,
        packet: &[u8],
        next_hop: IpAddr,
        stats: &ShellStats,
        segments: u64,
    ) {
        let Some(mac) = self.neighbours.resolve(now, next_hop).await else {
            ShellStats::add(&stats.l2_no_neighbour, segments);
            return;
        };
        let Ok(head) = vnet_frame_header(hdr, mac, self.src_mac, ethertype(packet)) else {
            ShellStats::add(&stats.tx_l2_errors, 1);
            return;
        };
        // Gathered by the kernel: the packet (up to 64 KB) is not copied in user space.
        match self.socket.send_vectored(&[IoSlice::new(&head), IoSlice::new(packet)]) {
            Ok(_) => ShellStats::add(&stats.tx_l2_packets, segments),
            Err(_) => ShellStats::add(&stats.tx_l2_errors, 1),
        }
    }

    /// Keeps `hops` (the direct-routing servers) resolved (see [`Neighbours::warm`]).
    pub async fn warm(&mut self, now: Instant, hops: &[IpAddr]) -> usize {
        self.neighbours.warm(now, hops).await
    }
}

impl Neighbours {
    /// A cache over the neighbour table of interface `ifindex`, read through `handle`.
    pub fn new(handle: rtnetlink::Handle, ifindex: u32) -> Neighbours {
        Neighbours {
            ifindex,
            handle,
            cache: BTreeMap::new(),
            poke: UdpSocket::bind("0.0.0.0:0").ok(),
            poke6: UdpSocket::bind("[::]:0").ok(),
            miss_ttl: MISS_TTL,
        }
    }

    /// Remembers misses for `ttl` instead of [`MISS_TTL`] (the AF_XDP backend, whose misses
    /// are not dropped but sent through the kernel, looks again sooner).
    pub fn with_miss_ttl(mut self, ttl: Duration) -> Neighbours {
        self.miss_ttl = ttl;
        self
    }

    /// The interface this cache is for.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Keeps `hops` (the direct-routing servers) resolved: one neighbour-table dump; each
    /// hop found is cached, each missing one is poked (the kernel resolves it) and its cached
    /// miss forgotten, so the next packet reads the table again. Returns how many were poked.
    pub async fn warm(&mut self, now: Instant, hops: &[IpAddr]) -> usize {
        let Ok(table) = netlink::neighbour_macs(&self.handle, self.ifindex).await else { return 0 };
        let mut poked = 0;
        for ip in hops {
            match table.get(ip) {
                Some(mac) => {
                    self.cache.insert(*ip, (Some(*mac), now));
                }
                None => {
                    self.cache.remove(ip);
                    self.poke(*ip);
                    poked += 1;
                }
            }
        }
        poked
    }

    /// Makes the kernel resolve `ip` (an ARP request or a Neighbor Solicitation).
    fn poke(&self, ip: IpAddr) {
        let poke = if ip.is_ipv4() { &self.poke } else { &self.poke6 };
        if let Some(p) = poke {
            // Errors don't matter: the point is the kernel's ARP request (or NS).
            let _ = p.send_to(&[0], SocketAddr::new(ip, 9));
        }
    }

    /// `ip`'s MAC: cached, else read from the kernel (a miss pokes the kernel and is
    /// remembered for [`MISS_TTL`] or the TTL set with [`Neighbours::with_miss_ttl`]).
    pub async fn resolve(&mut self, now: Instant, ip: IpAddr) -> Option<[u8; 6]> {
        if let Some((mac, at)) = self.cache.get(&ip) {
            let ttl = if mac.is_some() { NEIGHBOUR_TTL } else { self.miss_ttl };
            if now.saturating_since(*at) < ttl {
                return *mac;
            }
        }
        let mac = netlink::neighbour_mac(&self.handle, self.ifindex, ip).await.ok().flatten();
        if mac.is_none() {
            self.poke(ip);
        }
        if self.cache.len() >= MAX_NEIGHBOURS {
            self.cache.clear();
        }
        self.cache.insert(ip, (mac, now));
        mac
    }
}

/// Writes an Ethernet II frame (`dst`, `src`, the packet's ethertype, `packet`) into `out`.
pub fn build_frame(dst: [u8; 6], src: [u8; 6], packet: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    out.extend_from_slice(&ethertype(packet).to_be_bytes());
    out.extend_from_slice(packet);
}

/// The virtio-net header `hdr` (its offsets moved past the Ethernet header when the
/// checksum is partial) followed by the Ethernet header (`dst`, `src`, `ethertype`): what a
/// `PACKET_VNET_HDR` socket sends in front of the packet.
pub fn vnet_frame_header(
    mut hdr: VirtioNetHdr,
    dst: [u8; 6],
    src: [u8; 6],
    ethertype: u16,
) -> std::io::Result<[u8; VIRTIO_NET_HDR_LEN + ETH_HLEN as usize]> {
    if hdr.flags & vnet::F_NEEDS_CSUM != 0 {
        hdr.csum_start += ETH_HLEN;
    }
    if hdr.gso_type != vnet::GSO_NONE {
        hdr.hdr_len += ETH_HLEN;
    }
    let mut h = [0u8; VIRTIO_NET_HDR_LEN + ETH_HLEN as usize];
    hdr.encode(&mut h[..VIRTIO_NET_HDR_LEN])?;
    h[VIRTIO_NET_HDR_LEN..VIRTIO_NET_HDR_LEN + 6].copy_from_slice(&dst);
    h[VIRTIO_NET_HDR_LEN + 6..VIRTIO_NET_HDR_LEN + 12].copy_from_slice(&src);
    h[VIRTIO_NET_HDR_LEN + 12..].copy_from_slice(&ethertype.to_be_bytes());
    Ok(h)
}

/// [`vnet_frame_header`] and `packet` in one buffer (what the kernel gathers).
#[cfg(test)]
fn vnet_frame(
    hdr: VirtioNetHdr,
    dst: [u8; 6],
    src: [u8; 6],
    packet: &[u8],
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    out.clear();
    out.extend_from_slice(&vnet_frame_header(hdr, dst, src, ethertype(packet))?);
    out.extend_from_slice(packet);
    Ok(())
}

/// Ethernet II header length.
const ETH_HLEN: u16 = 14;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout() {
        let mut out = Vec::new();
        build_frame([1; 6], [2; 6], &[0x45, 0, 0, 20], &mut out);
        assert_eq!(&out[..6], &[1; 6]);
        assert_eq!(&out[6..12], &[2; 6]);
        assert_eq!(&out[12..14], &[0x08, 0x00]);
        assert_eq!(&out[14..], &[0x45, 0, 0, 20]);
        build_frame([1; 6], [2; 6], &[0x60, 0, 0, 0], &mut out);
        assert_eq!(&out[12..14], &[0x86, 0xDD], "IPv6 ethertype");
    }

    #[test]
    fn vnet_frame_moves_offsets_past_the_ethernet_header() {
        let mut out = Vec::new();
        vnet_frame(VirtioNetHdr::default(), [1; 6], [2; 6], &[0x45], &mut out).unwrap();
        assert_eq!(&out[..VIRTIO_NET_HDR_LEN], &[0; VIRTIO_NET_HDR_LEN]);
        assert_eq!(out.len(), VIRTIO_NET_HDR_LEN + 15);
        let gso = VirtioNetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: tun_rs::VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: 40,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        };
        vnet_frame(gso, [1; 6], [2; 6], &[0x45], &mut out).unwrap();
        let h = VirtioNetHdr::decode(&out).unwrap();
        assert_eq!((h.csum_start, h.hdr_len, h.csum_offset, h.gso_size), (34, 54, 16, 1448));
        assert_eq!(&out[VIRTIO_NET_HDR_LEN + 12..VIRTIO_NET_HDR_LEN + 14], &[0x08, 0x00]);
    }
}
