//! What `process` returns, why packets drop, and the engine's counters.

use core::net::IpAddr;

use crate::dataplane::wire;

/// What to do with a processed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `tx[..len]` is an IP packet to hand back to the kernel through the TUN device (NAT
    /// toward the server, NAT reply toward the client, IP-in-IP outer packet, ICMP error to
    /// the client).
    Tun { len: usize },
    /// `tx[..len]` is the client's IP packet, VIP untouched, to be sent in an Ethernet frame
    /// to `next_hop`'s MAC (direct routing; an IPv6 server for an IPv6 packet).
    L2 { len: usize, next_hop: IpAddr },
    /// Dropped; counted under this reason.
    Drop(DropReason),
}

/// Why a packet was dropped. Each has a counter in [`EngineStats::drops`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than a header or a length field says.
    Truncated,
    /// Impossible header field (version, lengths).
    BadHeader,
    /// IPv4 header checksum wrong.
    BadChecksum,
    /// Not TCP, UDP or ICMP (ICMPv6), or an IPv6 extension header the engine does not walk
    /// (ESP, AH, mobility, more than eight).
    UnsupportedProtocol,
    /// A fragment with offset > 0 (see the module docs).
    LaterFragment,
    /// TTL already 0.
    TtlExceeded,
    /// Neither to a VIP service nor a reply of a tracked NAT flow.
    NoService,
    /// TCP segment other than a SYN with no connection entry.
    NoConnection,
    /// No server is up with a weight above 0.
    NoServer,
    /// A NAT flow whose reply tuple is already used by another flow.
    NatConflict,
    /// The flow's server is down and the service resets connections (`on_down: reset`).
    ServerDown,
    /// An ICMP error quoting no tracked flow.
    IcmpNoFlow,
    /// ICMP that is not an error (echo...).
    IcmpNotError,
    /// The packet cannot grow by an outer header (over 65535 bytes).
    TooBig,
    /// The caller's `tx` buffer cannot hold the result.
    BufferTooSmall,
    /// The engine is a backup (inactive).
    Inactive,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 16] = [
        DropReason::Truncated,
        DropReason::BadHeader,
        DropReason::BadChecksum,
        DropReason::UnsupportedProtocol,
        DropReason::LaterFragment,
        DropReason::TtlExceeded,
        DropReason::NoService,
        DropReason::NoConnection,
        DropReason::NoServer,
        DropReason::NatConflict,
        DropReason::ServerDown,
        DropReason::IcmpNoFlow,
        DropReason::IcmpNotError,
        DropReason::TooBig,
        DropReason::BufferTooSmall,
        DropReason::Inactive,
    ];

    /// A snake_case name for metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadHeader => "bad_header",
            DropReason::BadChecksum => "bad_checksum",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::LaterFragment => "later_fragment",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::NoService => "no_service",
            DropReason::NoConnection => "no_connection",
            DropReason::NoServer => "no_server",
            DropReason::NatConflict => "nat_conflict",
            DropReason::ServerDown => "server_down",
            DropReason::IcmpNoFlow => "icmp_no_flow",
            DropReason::IcmpNotError => "icmp_not_error",
            DropReason::TooBig => "too_big",
            DropReason::BufferTooSmall => "buffer_too_small",
            DropReason::Inactive => "inactive",
        }
    }
}

impl From<wire::Error> for DropReason {
    fn from(e: wire::Error) -> Self {
        match e {
            wire::Error::Truncated => DropReason::Truncated,
            wire::Error::Malformed => DropReason::BadHeader,
        }
    }
}

/// Counters, all monotonic except `table_len`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub packets: u64,
    pub nat_to_server: u64,
    pub nat_to_client: u64,
    pub direct_routed: u64,
    pub tunnelled: u64,
    pub icmp_translated: u64,
    pub frag_needed_sent: u64,
    /// RSTs sent to clients of a failed server (`on_down: reset`).
    pub resets_sent: u64,
    pub new_connections: u64,
    /// Of those, entries made from a mid-flow TCP segment (active-active pickup).
    pub picked_up: u64,
    pub table_len: u64,
    pub table_expired: u64,
    pub evicted_embryonic: u64,
    pub evicted_other: u64,
    pub sync_queued: u64,
    pub sync_overflow: u64,
    pub sync_applied: u64,
    /// Resets and ICMP errors not sent because of their rate limit
    /// ([`super::ratelimit`]); those packets also count under their drop reason.
    pub limited: super::ratelimit::Limited,
    /// Indexed by `DropReason as usize` (see [`DropReason::ALL`]).
    pub drops: [u64; 16],
}

impl EngineStats {
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }
}

/// Control-plane errors of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("no server {server} in service {service}")]
    NoSuchServer { service: usize, server: usize },
    #[error("sync record: {0}")]
    Sync(&'static str),
}
