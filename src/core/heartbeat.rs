//! The heartbeat datagram: a fixed 96-byte, versioned, authenticated message.
//!
//! ```text
//!  0      4    5    6       8          12     14     16            24     32      40
//!  | "CSHB" | ver| kind| flags | cluster id | sender | interval | incarnation | seq | epoch |
//!  40   41        42           43        44          46     48           64        96
//!  | role | reach ok | reach total | peers up | handover to | holding | digest[16] | HMAC[32] |
//! ```
//!
//! `interval` (bytes 12..14 after `sender`, i.e. 14..16; reserved and zero before live
//! reconfiguration) is the sender's heartbeat interval in milliseconds: a receiver judges the
//! sender dead only after the longer of its own and the sender's interval times the dead
//! count, so a rolling reload that changes `timers.heartbeat_ms` cannot make either side
//! look dead to the other (0: not sent; the receiver uses its own).
//!
//! `holding` (bytes 46..48, reserved and zero before service failover) is the map of home
//! ATMs (bit = index in `atms`) whose service groups the sender runs as their backup
//! (`crate::failover`); a recovered home waits until its bit is clear.
//!
//! All integers are big-endian. The HMAC-SHA256 covers bytes 0..64 with the cluster secret.
//! Receivers check, in this order and each failure counted under its own reason: length,
//! magic, version, cluster id (a datagram of another cluster is not even authenticated: it
//! may use another secret), the MAC (constant-time), then the replay window of the sender
//! ([`ReplayWindow`]).
//!
//! The decoder is total: any byte string gives a [`Heartbeat`] or a [`DecodeError`].
//!
//! `incarnation` identifies one run of the sender (the daemon derives it from the wall clock
//! at start, the simulator from its virtual clock): it only grows across restarts, so the
//! sequence number can restart at 1 without letting an old datagram be replayed.

pub use crate::auth::ReplayWindow;
use crate::auth::{self, Refused};

/// Length of every heartbeat datagram.
pub const HEARTBEAT_LEN: usize = 96;
const BODY_LEN: usize = 64;
const MAGIC: [u8; 4] = *b"CSHB";
/// Wire version written and accepted.
pub const VERSION: u8 = 1;
const KIND_HEARTBEAT: u8 = 1;
/// `handover_to` value meaning "nobody".
pub const NO_HANDOVER: u16 = u16::MAX;

/// Flag: the sender passes its arbitration rules (reachlist, majority) and may be primary.
pub const FLAG_ELIGIBLE: u16 = 1 << 0;
/// Flag: the sender is shutting down and hands over to `handover_to`.
pub const FLAG_HANDOVER: u16 = 1 << 1;
/// Flag: a backup whose operator asked it to become primary while another ATM is: the
/// primary hands over to it (as to a graceful stop's successor) instead of the two fighting
/// over epochs. Old primaries ignore it, and the request is then refused, never forced.
pub const FLAG_WANTS_PRIMARY: u16 = 1 << 2;

/// The role a sender claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WireRole {
    Backup = 0,
    Primary = 1,
}

/// A decoded (or to-be-encoded) heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub cluster_id: u32,
    /// The sender's position in the config's `atms` list.
    pub sender: u16,
    /// The sender's heartbeat interval in ms (0: not sent, an older sender).
    pub interval_ms: u16,
    pub incarnation: u64,
    pub seq: u64,
    pub epoch: u64,
    pub role: WireRole,
    pub flags: u16,
    pub reach_ok: u8,
    pub reach_total: u8,
    /// ATMs (the sender included) the sender currently hears.
    pub peers_up: u8,
    pub handover_to: u16,
    /// Home ATMs whose service groups the sender holds (see the module docs).
    pub holding: u16,
    /// First 16 bytes of the SHA-256 of the sender's running config.
    pub digest: [u8; 16],
}

/// Why a datagram was not accepted. Each variant is a counter in the node's statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, thiserror::Error)]
pub enum DecodeError {
    /// wrong length: heartbeats are exactly 96 bytes
    #[error("wrong length: heartbeats are exactly 96 bytes")]
    Length,
    /// not a clusterserver heartbeat (bad magic)
    #[error("not a clusterserver heartbeat (bad magic)")]
    Magic,
    /// unsupported heartbeat version
    #[error("unsupported heartbeat version")]
    Version,
    /// unknown message kind
    #[error("unknown message kind")]
    Kind,
    /// heartbeat of another cluster id
    #[error("heartbeat of another cluster id")]
    OtherCluster,
    /// authentication failed (HMAC mismatch)
    #[error("authentication failed (HMAC mismatch)")]
    BadMac,
    /// invalid role byte
    #[error("invalid role byte")]
    Role,
    /// sender is not an ATM of this cluster's config
    #[error("sender is not an ATM of this cluster's config")]
    UnknownSender,
    /// replayed or too old (sequence outside the replay window)
    #[error("replayed or too old (sequence outside the replay window)")]
    Replay,
    /// from an earlier run of the sender (stale incarnation)
    #[error("from an earlier run of the sender (stale incarnation)")]
    StaleIncarnation,
    /// claims to come from this ATM itself (its own broadcast looped back, or a replay of it)
    #[error("claims to come from this ATM itself")]
    FromSelf,
    /// a second copy of the newest heartbeat (sent both by broadcast and by unicast)
    #[error("a second copy of the newest heartbeat")]
    Duplicate,
}

impl DecodeError {
    /// Short stable name for counters and traces.
    pub fn name(self) -> &'static str {
        match self {
            DecodeError::Length => "length",
            DecodeError::Magic => "magic",
            DecodeError::Version => "version",
            DecodeError::Kind => "kind",
            DecodeError::OtherCluster => "other_cluster",
            DecodeError::BadMac => "bad_mac",
            DecodeError::Role => "role",
            DecodeError::UnknownSender => "unknown_sender",
            DecodeError::Replay => "replay",
            DecodeError::StaleIncarnation => "stale_incarnation",
            DecodeError::FromSelf => "from_self",
            DecodeError::Duplicate => "duplicate",
        }
    }

    /// Every reason, for exporting counters.
    pub const ALL: [DecodeError; 12] = [
        DecodeError::Length,
        DecodeError::Magic,
        DecodeError::Version,
        DecodeError::Kind,
        DecodeError::OtherCluster,
        DecodeError::BadMac,
        DecodeError::Role,
        DecodeError::UnknownSender,
        DecodeError::Replay,
        DecodeError::StaleIncarnation,
        DecodeError::FromSelf,
        DecodeError::Duplicate,
    ];

    /// Whether the datagram is a normal by-product of the protocol (own broadcast looped
    /// back, the second copy of a heartbeat sent two ways) rather than a sign of trouble:
    /// counted, never logged.
    pub fn is_benign(self) -> bool {
        matches!(self, DecodeError::FromSelf | DecodeError::Duplicate)
    }
}

impl From<Refused> for DecodeError {
    fn from(r: Refused) -> DecodeError {
        match r {
            Refused::Stale => DecodeError::StaleIncarnation,
            Refused::Duplicate => DecodeError::Duplicate,
            Refused::Replay => DecodeError::Replay,
        }
    }
}

impl Heartbeat {
    /// Encodes and signs with `secret`.
    pub fn encode(&self, secret: &[u8]) -> [u8; HEARTBEAT_LEN] {
        let mut out = [0u8; HEARTBEAT_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5] = KIND_HEARTBEAT;
        out[6..8].copy_from_slice(&self.flags.to_be_bytes());
        out[8..12].copy_from_slice(&self.cluster_id.to_be_bytes());
        out[12..14].copy_from_slice(&self.sender.to_be_bytes());
        out[14..16].copy_from_slice(&self.interval_ms.to_be_bytes());
        out[16..24].copy_from_slice(&self.incarnation.to_be_bytes());
        out[24..32].copy_from_slice(&self.seq.to_be_bytes());
        out[32..40].copy_from_slice(&self.epoch.to_be_bytes());
        out[40] = self.role as u8;
        out[41] = self.reach_ok;
        out[42] = self.reach_total;
        out[43] = self.peers_up;
        out[44..46].copy_from_slice(&self.handover_to.to_be_bytes());
        out[46..48].copy_from_slice(&self.holding.to_be_bytes());
        out[48..64].copy_from_slice(&self.digest);
        let tag = auth::Mac::new(secret).tag(&out[..BODY_LEN]);
        out[BODY_LEN..].copy_from_slice(&tag);
        out
    }

    /// Decodes and authenticates a datagram of cluster `cluster_id` signed with `secret`.
    /// Total: never panics, whatever `bytes` holds. Replay is checked separately.
    pub fn decode(bytes: &[u8], cluster_id: u32, secret: &[u8]) -> Result<Heartbeat, DecodeError> {
        let b: &[u8; HEARTBEAT_LEN] = bytes.try_into().map_err(|_| DecodeError::Length)?;
        if b[0..4] != MAGIC {
            return Err(DecodeError::Magic);
        }
        if b[4] != VERSION {
            return Err(DecodeError::Version);
        }
        if b[5] != KIND_HEARTBEAT {
            return Err(DecodeError::Kind);
        }
        let be16 = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let be64 = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(a)
        };
        if be32(8) != cluster_id {
            return Err(DecodeError::OtherCluster);
        }
        if !auth::Mac::new(secret).verify(&b[..BODY_LEN], &b[BODY_LEN..]) {
            return Err(DecodeError::BadMac);
        }
        let role = match b[40] {
            0 => WireRole::Backup,
            1 => WireRole::Primary,
            _ => return Err(DecodeError::Role),
        };
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&b[48..64]);
        Ok(Heartbeat {
            cluster_id,
            sender: be16(12),
            interval_ms: be16(14),
            incarnation: be64(16),
            seq: be64(24),
            epoch: be64(32),
            role,
            flags: be16(6),
            reach_ok: b[41],
            reach_total: b[42],
            peers_up: b[43],
            handover_to: be16(44),
            holding: be16(46),
            digest,
        })
    }

    /// Whether a flag bit is set.
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8] = b"cluster secret";

    fn sample() -> Heartbeat {
        Heartbeat {
            cluster_id: 7,
            sender: 1,
            interval_ms: 100,
            incarnation: 1_700_000_000_000,
            seq: 42,
            epoch: 3,
            role: WireRole::Primary,
            flags: FLAG_ELIGIBLE,
            reach_ok: 2,
            reach_total: 2,
            peers_up: 2,
            handover_to: NO_HANDOVER,
            holding: 0b101,
            digest: [9; 16],
        }
    }

    #[test]
    fn round_trip() {
        let hb = sample();
        let bytes = hb.encode(KEY);
        assert_eq!(Heartbeat::decode(&bytes, 7, KEY), Ok(hb));
    }

    #[test]
    fn rejections_in_order() {
        let bytes = sample().encode(KEY);
        assert_eq!(Heartbeat::decode(&bytes[..95], 7, KEY), Err(DecodeError::Length));
        let mut b = bytes;
        b[0] = b'X';
        assert_eq!(Heartbeat::decode(&b, 7, KEY), Err(DecodeError::Magic));
        let mut b = bytes;
        b[4] = 2;
        assert_eq!(Heartbeat::decode(&b, 7, KEY), Err(DecodeError::Version));
        assert_eq!(Heartbeat::decode(&bytes, 8, KEY), Err(DecodeError::OtherCluster));
        assert_eq!(Heartbeat::decode(&bytes, 7, b"other"), Err(DecodeError::BadMac));
        let mut b = bytes;
        b[33] ^= 1; // epoch tampered
        assert_eq!(Heartbeat::decode(&b, 7, KEY), Err(DecodeError::BadMac));
    }

    #[test]
    /// The shared window's refusals, as heartbeat decode errors (`crate::auth` tests the window).
    fn replay_window() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.admit(5, 1).map_err(DecodeError::from), Ok(()));
        assert_eq!(w.admit(5, 1).map_err(DecodeError::from), Err(DecodeError::Duplicate));
        assert_eq!(w.admit(5, 3).map_err(DecodeError::from), Ok(()));
        assert_eq!(w.admit(5, 2).map_err(DecodeError::from), Ok(()), "late but inside the window");
        assert_eq!(w.admit(5, 2).map_err(DecodeError::from), Err(DecodeError::Replay));
        assert_eq!(w.admit(5, 3).map_err(DecodeError::from), Err(DecodeError::Duplicate));
        assert_eq!(w.admit(5, 200).map_err(DecodeError::from), Ok(()));
        assert_eq!(
            w.admit(5, 136).map_err(DecodeError::from),
            Err(DecodeError::Replay),
            "older than the window"
        );
        assert_eq!(w.admit(5, 137).map_err(DecodeError::from), Ok(()));
        assert_eq!(w.admit(4, 1000).map_err(DecodeError::from), Err(DecodeError::StaleIncarnation));
        assert_eq!(w.admit(6, 1).map_err(DecodeError::from), Ok(()), "a restart starts a new window");
        assert_eq!(w.admit(6, 0).map_err(DecodeError::from), Err(DecodeError::Replay));
    }

    proptest! {
        #[test]
        fn decode_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Heartbeat::decode(&bytes, 7, KEY);
        }

        #[test]
        fn decode_is_total_on_valid_shapes(mut bytes in proptest::collection::vec(any::<u8>(), 96..=96)) {
            bytes[0..4].copy_from_slice(b"CSHB");
            bytes[4] = 1;
            bytes[5] = 1;
            bytes[8..12].copy_from_slice(&7u32.to_be_bytes());
            prop_assert_eq!(Heartbeat::decode(&bytes, 7, KEY), Err(DecodeError::BadMac));
        }

        #[test]
        fn any_bit_flip_is_rejected(byte in 0usize..96, bit in 0u8..8) {
            let mut bytes = sample().encode(KEY);
            bytes[byte] ^= 1 << bit;
            prop_assert!(Heartbeat::decode(&bytes, 7, KEY).is_err());
        }
    }
}
