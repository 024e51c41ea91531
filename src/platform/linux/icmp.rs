//! Reachlist probes and ping checks: one ICMP (or ICMPv6) echo on a raw socket (the daemon
//! runs as root), answered or not within a timeout.

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

static SEQ: AtomicU16 = AtomicU16::new(1);

/// An ICMP echo request with `id` and `seq`, its checksum filled in.
pub fn echo_request(id: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = 8;
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(b"clustsrv");
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether `packet` (IPv4 header + ICMP, as a raw socket reads it) is the echo reply from
/// `from` to our request `(id, seq)`.
pub fn is_reply(packet: &[u8], from: Ipv4Addr, id: u16, seq: u16) -> bool {
    let Some(ihl) = packet.first().map(|b| usize::from(b & 0x0f) * 4) else { return false };
    let Some(icmp) = packet.get(ihl..ihl + 8) else { return false };
    packet.len() >= 20
        && packet[12..16] == from.octets()
        && icmp[0] == 0
        && icmp[4..6] == id.to_be_bytes()
        && icmp[6..8] == seq.to_be_bytes()
}

/// Sends one echo to `target` (either family) and waits up to `timeout` for its reply.
pub async fn ping_ip(target: IpAddr, timeout: Duration) -> io::Result<bool> {
    match target {
        IpAddr::V4(a) => ping(a, timeout).await,
        IpAddr::V6(a) => ping6(a, timeout).await,
    }
}

/// An ICMPv6 echo request (type 128) with `id` and `seq`; the kernel fills the checksum of
/// what a raw ICMPv6 socket sends (RFC 3542: it always computes it, pseudo-header and all).
pub fn echo_request6(id: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = 128;
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(b"clustsrv");
    p
}

/// Whether `msg` (an ICMPv6 message, as a raw ICMPv6 socket reads it, without the IPv6
/// header) is the echo reply (type 129) to our request `(id, seq)`.
pub fn is_reply6(msg: &[u8], id: u16, seq: u16) -> bool {
    msg.len() >= 8 && msg[0] == 129 && msg[4..6] == id.to_be_bytes() && msg[6..8] == seq.to_be_bytes()
}

/// A raw echo socket of `domain`/`protocol`, registered with the reactor, and the
/// `(id, seq)` of the next request.
fn echo_socket(domain: Domain, protocol: Protocol) -> io::Result<(AsyncFd<Socket>, u16, u16)> {
    let socket = Socket::new(domain, Type::RAW, Some(protocol))?;
    socket.set_nonblocking(true)?;
    let fd = super::netsys::async_socket(socket)?;
    let id = (std::process::id() & 0xffff) as u16;
    Ok((fd, id, SEQ.fetch_add(1, Ordering::Relaxed)))
}

/// Reads `fd` until a datagram `is_reply` accepts (`true`), or `timeout` passes (`false`).
async fn wait_reply(
    fd: &AsyncFd<Socket>,
    timeout: Duration,
    is_reply: impl Fn(&[u8]) -> bool,
) -> io::Result<bool> {
    let wait = async {
        let mut buf = [0u8; 1500];
        loop {
            let mut guard = fd.readable().await?;
            match guard.try_io(|s| {
                let mut s: &Socket = s.get_ref();
                s.read(&mut buf)
            }) {
                Ok(Ok(n)) if is_reply(&buf[..n]) => return Ok::<_, io::Error>(true),
                Ok(Ok(_)) | Err(_) => continue,
                Ok(Err(e)) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(r) => r,
        Err(_) => Ok(false),
    }
}

/// Sends one ICMPv6 echo to `target` and waits up to `timeout` for its reply from it.
pub async fn ping6(target: Ipv6Addr, timeout: Duration) -> io::Result<bool> {
    let (fd, id, seq) = echo_socket(Domain::IPV6, Protocol::ICMPV6)?;
    // Connected: the kernel delivers to this socket only what comes from `target`.
    fd.get_ref().connect(&SockAddr::from(SocketAddrV6::new(target, 0, 0, 0)))?;
    fd.get_ref().send(&echo_request6(id, seq))?;
    wait_reply(&fd, timeout, |m| is_reply6(m, id, seq)).await
}

/// Sends one echo to `target` and waits up to `timeout` for its reply.
pub async fn ping(target: Ipv4Addr, timeout: Duration) -> io::Result<bool> {
    let (fd, id, seq) = echo_socket(Domain::IPV4, Protocol::ICMPV4)?;
    fd.get_ref().send_to(&echo_request(id, seq), &SockAddr::from(SocketAddrV4::new(target, 0)))?;
    wait_reply(&fd, timeout, |p| is_reply(p, target, id, seq)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmpv6_echo_request_and_reply_matching() {
        let req = echo_request6(5, 6);
        assert_eq!((req[0], &req[4..8]), (128, &[0, 5, 0, 6][..]));
        let mut reply = req;
        reply[0] = 129;
        assert!(is_reply6(&reply, 5, 6));
        assert!(!is_reply6(&req, 5, 6), "a request is no reply");
        assert!(!is_reply6(&reply, 5, 7));
        assert!(!is_reply6(&reply[..7], 5, 6));
    }

    #[tokio::test]
    async fn ping6_of_the_loopback_is_answered() {
        // Loopback only (lab safety); needs root for the raw socket and IPv6 on lo.
        match ping6(Ipv6Addr::LOCALHOST, Duration::from_secs(1)).await {
            Ok(answered) => assert!(answered, "::1 did not answer"),
            Err(e) => {
                println!("SKIPPED: no raw ICMPv6 socket or IPv6 on lo: {e}");
                eprintln!("SKIPPED: no raw ICMPv6 socket or IPv6 on lo: {e}");
            }
        }
    }

    #[test]
    fn request_checksums_to_zero() {
        let p = echo_request(0x1234, 7);
        assert_eq!(checksum(&p), 0);
    }

    #[test]
    fn reply_matching() {
        let from = Ipv4Addr::new(10, 0, 0, 254);
        let mut pkt = vec![0x45u8; 20];
        pkt[12..16].copy_from_slice(&from.octets());
        let mut icmp = echo_request(5, 6);
        icmp[0] = 0;
        pkt.extend_from_slice(&icmp);
        assert!(is_reply(&pkt, from, 5, 6));
        assert!(!is_reply(&pkt, from, 5, 7));
        assert!(!is_reply(&pkt, Ipv4Addr::new(10, 0, 0, 1), 5, 6));
        assert!(!is_reply(&pkt[..25], from, 5, 6));
    }
}
