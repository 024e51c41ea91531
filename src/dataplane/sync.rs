//! Connection sync: the primary streams table changes to the backups.
//!
//! # Datagram (version 1)
//!
//! ```text
//! offset  size  field
//!      0     4  magic "CSYN"
//!      4     1  version (1)
//!      5     1  kind: 0 records, 1 full-sync request, 2 end of full sync, 3 affinity
//!                 records
//!      6     2  record count N (0 for kinds 1 and 2)
//!      8     4  cluster id
//!     12     8  session: grows across sender restarts (e.g. wall-clock ms at start)
//!     20     8  sequence number within the session, from 1
//!     28   ...  N records (kind 0: 26 bytes each for IPv4, 62 for IPv6); nothing (kind
//!                 1); 16 bytes (kind 2, see below)
//!    end    32  HMAC-SHA256 (cluster secret) over every byte before it
//! ```
//!
//! # Full sync on join (kinds 1 and 2)
//!
//! An active-active ATM that (re)joins asks each peer for its whole table with a **request**
//! (kind 1, no body) and announces its VIPs once every peer has answered
//! ([`crate::dataplane::fullsync`]). The peer walks its table ([`Engine::start_full_sync`]),
//! sends the records as ordinary kind-0 datagrams, then an **end** marker (kind 2) whose
//! body echoes the session and sequence number of the request it answers (8 + 8 bytes), so a
//! joiner never takes the end of a walk that began before it asked for one. Then 8 + 8
//! bytes of [`EndCount`]: the sender's sequence number when it took the request and how many
//! record datagrams it sent from then on; a joiner that received fewer of those lost one
//! (sync is UDP) and asks again rather than announce with a hole in its table. (An end
//! marker of 16 bytes, from a sender before the count, is still taken, on trust.) Both are numbered
//! in the sender's own session like its records and pass the same MAC and replay checks.
//! Byte 5 was a reserved zero before these kinds existed, so earlier version-1 receivers take
//! a request as an empty batch and refuse an end marker (length): mixing versions is safe.
//!
//! A record: address family (4 or 6), protocol, state ([`State::to_u8`]), reserved,
//! client, VIP and server addresses (4 bytes each for family 4, 16 for family 6), their
//! ports, and the remaining idle time in milliseconds (u32), all big-endian. A datagram
//! carries records of **one family** (the sender starts a new datagram when the family
//! changes): a receiver from before IPv6, which takes only 26-byte records, refuses a
//! datagram of IPv6 records as a whole (`BadLength`) and still applies every IPv4 one.
//! An IPv4 datagram holds up to [`MAX_RECORDS`] records, an IPv6 one [`MAX_RECORDS_V6`].
//!
//! # Persistence across a failover (kind 3)
//!
//! A service with `persistence_s` sends clients back to the server they last used. That
//! memory is synced too, so a persistent client keeps its server after a failover: when the
//! primary makes or renews an affinity entry for a new connection it queues an **affinity
//! record** (the record layout above: the client with port 0, the service's VIP and port,
//! the server, the time left in milliseconds; state `Established` for TCP, `Udp` for UDP),
//! at most once per quarter of `persistence_s` per client and service unless the server
//! changed, and a full sync walks the affinity tables after the connection tables. They
//! travel in kind-3 datagrams of their own: a receiver from before them refuses such a
//! datagram as a whole (unknown kind, counted) and still applies every connection record.
//!
//! # Authentication and replay
//!
//! The MAC is checked (constant time) before anything else of the datagram is trusted.
//! The receiver then accepts a `(session, sequence)` that is newer than what it has seen:
//! a higher session resets the window; within a session a 64-entry sliding window (as in
//! IPsec) admits reordered datagrams once and refuses duplicates and old ones.
//!
//! # Sender contract (sans-IO)
//!
//! [`SyncSender::poll_transmit`] pulls queued changes from the engine, batches up to
//! [`MAX_RECORDS`] per datagram, and returns a datagram when a batch is full or its oldest
//! change has waited [`FLUSH_AFTER_MS`], and never more often than `max_datagrams_per_s`
//! allows. Call it until it returns `None` after processing packets, and again at
//! [`SyncSender::poll_timeout`]. Changes beyond what the rate allows wait in the engine's
//! bounded queue (overflow is counted there); periodic refreshes resend live entries.

use crate::time::Instant;

mod receiver;
mod sender;
mod wire;

pub use receiver::{Received, ReceiverStats, SyncReceiver};
pub use sender::{SenderStats, SyncSender};
pub use wire::{
    Batch, BatchHeader, EndCount, FLUSH_AFTER_MS, Kind, MAGIC, MAX_DATAGRAM, MAX_RECORDS, MAX_RECORDS_V6,
    RecordKind, SyncError, SyncRecord, VERSION, decode, encode, encode_control,
};

/// Where a [`SyncSender`] pulls changes from (the engine: [`crate::dataplane::engine::Engine`]
/// implements it over its bounded change queue). A trait, so that sync does not import the
/// engine: the engine imports sync's record type, and nothing goes the other way.
pub trait SyncSource {
    /// The next change to send, if any.
    fn poll_sync(&mut self, now: Instant) -> Option<SyncRecord>;
}

/// Where a [`SyncReceiver`] applies records (an inactive engine).
pub trait SyncSink {
    /// Applies one record; `false` if it was refused (counted by the receiver).
    fn apply_sync(&mut self, now: Instant, rec: &SyncRecord) -> bool;
}

mod peers;
pub use peers::{PeerReceivers, PeerSyncError};

#[cfg(test)]
pub(crate) mod tests;
