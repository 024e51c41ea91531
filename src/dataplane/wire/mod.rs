//! Zero-copy packet views (smoltcp style) over untrusted bytes.
//!
//! Each view wraps a `T: AsRef<[u8]>` and is built with `new_checked`, which validates every
//! length the accessors later rely on: once a view exists, its accessors cannot panic. Views
//! over `AsMut<[u8]>` also offer setters that patch checksums incrementally (RFC 1624) so a
//! rewrite touches only the bytes it changes.
//!
//! IPv4 ([`Ipv4Packet`]) and IPv6 ([`Ipv6Packet`], with a bounded extension-header walk)
//! have the same shape; the transport views are address-family neutral (their
//! pseudo-header updates take byte slices of either address length).

pub mod build;
pub mod checksum;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod ndp;
pub mod tcp;
pub mod udp;

pub use icmp::IcmpPacket;
pub use ipv4::Ipv4Packet;
pub use ipv6::Ipv6Packet;
pub use tcp::TcpPacket;
pub use udp::UdpPacket;

/// Why a view refused its bytes. Small and `Copy`: the engine counts it and drops the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Fewer bytes than the header (or a length field) says.
    #[error("packet truncated")]
    Truncated,
    /// A field holds an impossible value (version, header length, total length).
    #[error("malformed header")]
    Malformed,
}

/// Result of the view constructors.
pub type Result<T> = core::result::Result<T, Error>;

/// IP protocol numbers the engine knows.
pub mod proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// IPv4 encapsulated in IPv4 (RFC 2003).
    pub const IPIP: u8 = 4;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 encapsulated (RFC 2473; in IPv4: RFC 4213).
    pub const IPV6: u8 = 41;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
}

/// Reads a big-endian u16 at `at`; callers have checked the length.
#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Writes a big-endian u16 at `at`; callers have checked the length.
#[inline]
pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
