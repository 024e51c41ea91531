//! Connection sync: the primary streams table changes to the backups.
//!
//! # Datagram (version 1)
//!
//! ```text
//! offset  size  field
//!      0     4  magic "CSYN"
//!      4     1  version (1)
//!      5     1  kind: 0 records, 1 full-sync request, 2 end of full sync
//!      6     2  record count N (0 for kinds 1 and 2)
//!      8     4  cluster id
//!     12     8  session: grows across sender restarts (e.g. wall-clock ms at start)
//!     20     8  sequence number within the session, from 1
//!     28  26·N  records (kind 0); nothing (kind 1); 16 bytes (kind 2, see below)
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
//! joiner never takes the end of a walk that began before it asked for one. Both are numbered
//! in the sender's own session like its records and pass the same MAC and replay checks.
//! Byte 5 was a reserved zero before these kinds existed, so earlier version-1 receivers take
//! a request as an empty batch and refuse an end marker (length): mixing versions is safe.
//!
//! A record: address family (4), protocol, state ([`State::to_u8`]), reserved, client,
//! VIP and server addresses (4 bytes each), their ports, and the remaining idle time in
//! milliseconds (u32), all big-endian. An IPv6 family (16-byte addresses) fits the same
//! layout later; this version refuses family values other than 4.
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

use core::net::{IpAddr, Ipv4Addr, SocketAddr};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::dataplane::conntrack::State;
use crate::dataplane::engine::Engine;
use crate::time::Instant;

type HmacSha256 = Hmac<Sha256>;

/// Datagram magic.
pub const MAGIC: [u8; 4] = *b"CSYN";
/// Format version.
pub const VERSION: u8 = 1;
const HEADER: usize = 28;
const RECORD_V4: usize = 26;
const MAC_LEN: usize = 32;
/// Records per datagram (fits a 1400-byte datagram).
pub const MAX_RECORDS: usize = 48;
/// Largest datagram the sender writes.
pub const MAX_DATAGRAM: usize = HEADER + MAX_RECORDS * RECORD_V4 + MAC_LEN;
/// How long a partial batch may wait before it is sent.
pub const FLUSH_AFTER_MS: u64 = 50;

/// One connection as the sync stream carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncRecord {
    pub proto: u8,
    pub state: State,
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub server: SocketAddr,
    /// Idle time left before the entry expires.
    pub remaining_ms: u32,
}

/// Why a datagram was refused. Each is counted by the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("sync datagram shorter than header and MAC")]
    TooShort,
    #[error("not a sync datagram (bad magic)")]
    BadMagic,
    #[error("unsupported sync version {0}")]
    UnsupportedVersion(u8),
    #[error("sync datagram authentication failed")]
    BadMac,
    #[error("sync datagram from cluster {0}")]
    WrongCluster(u32),
    #[error("record count does not match the datagram length")]
    BadLength,
    #[error("malformed record {0}")]
    BadRecord(usize),
    #[error("unknown sync datagram kind {0}")]
    UnknownKind(u8),
    #[error("replayed or too old sync datagram")]
    Replay,
    #[error("output buffer too small")]
    BufferTooSmall,
}

/// The header fields of a decoded datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub cluster_id: u32,
    pub session: u64,
    pub seq: u64,
}

/// What a datagram carries (header byte 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Connection records (kind 0).
    Records,
    /// A joining ATM asks for the receiver's whole table (kind 1).
    FullSyncRequest,
    /// The sender's full sync answering the request `(session, seq)` is complete (kind 2).
    FullSyncEnd { session: u64, seq: u64 },
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Records => 0,
            Kind::FullSyncRequest => 1,
            Kind::FullSyncEnd { .. } => 2,
        }
    }
}

/// Body of an end marker: the request's session and sequence number.
const END_BODY: usize = 16;

/// A decoded, authenticated datagram; its records were all validated.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    pub header: BatchHeader,
    pub kind: Kind,
    records: &'a [u8],
}

impl<'a> Batch<'a> {
    /// The records, in order.
    pub fn records(&self) -> impl Iterator<Item = SyncRecord> + 'a {
        self.records.chunks_exact(RECORD_V4).filter_map(|r| read_record(r).ok())
    }

    pub fn len(&self) -> usize {
        self.records.len() / RECORD_V4
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

fn mac_for(secret: &[u8]) -> HmacSha256 {
    <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length")
}

fn v4(a: SocketAddr) -> Option<(Ipv4Addr, u16)> {
    match a {
        SocketAddr::V4(a) => Some((*a.ip(), a.port())),
        SocketAddr::V6(_) => None,
    }
}

fn write_record(b: &mut [u8], r: &SyncRecord) -> bool {
    let (Some(c), Some(v), Some(s)) = (v4(r.client), v4(r.vip), v4(r.server)) else {
        return false;
    };
    b[0] = 4;
    b[1] = r.proto;
    b[2] = r.state.to_u8();
    b[3] = 0;
    b[4..8].copy_from_slice(&c.0.octets());
    b[8..12].copy_from_slice(&v.0.octets());
    b[12..16].copy_from_slice(&s.0.octets());
    b[16..18].copy_from_slice(&c.1.to_be_bytes());
    b[18..20].copy_from_slice(&v.1.to_be_bytes());
    b[20..22].copy_from_slice(&s.1.to_be_bytes());
    b[22..26].copy_from_slice(&r.remaining_ms.to_be_bytes());
    true
}

fn read_record(b: &[u8]) -> Result<SyncRecord, ()> {
    if b.len() != RECORD_V4 || b[0] != 4 || b[3] != 0 {
        return Err(());
    }
    let state = State::from_u8(b[2]).ok_or(())?;
    let addr = |at: usize, port_at: usize| {
        let ip = Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
        SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([b[port_at], b[port_at + 1]]))
    };
    Ok(SyncRecord {
        proto: b[1],
        state,
        client: addr(4, 16),
        vip: addr(8, 18),
        server: addr(12, 20),
        remaining_ms: u32::from_be_bytes([b[22], b[23], b[24], b[25]]),
    })
}

/// Writes a datagram; records that are not IPv4 are skipped. Returns the length.
pub fn encode(
    secret: &[u8],
    header: &BatchHeader,
    records: &[SyncRecord],
    out: &mut [u8],
) -> Result<usize, SyncError> {
    encode_with(&mac_for(secret), header, records, out)
}

fn encode_with(
    mac: &HmacSha256,
    h: &BatchHeader,
    records: &[SyncRecord],
    out: &mut [u8],
) -> Result<usize, SyncError> {
    let n = records.len().min(usize::from(u16::MAX));
    if out.len() < HEADER + n * RECORD_V4 + MAC_LEN {
        return Err(SyncError::BufferTooSmall);
    }
    let mut at = HEADER;
    let mut count: u16 = 0;
    for r in &records[..n] {
        if write_record(&mut out[at..at + RECORD_V4], r) {
            at += RECORD_V4;
            count += 1;
        }
    }
    out[0..4].copy_from_slice(&MAGIC);
    out[4] = VERSION;
    out[5] = Kind::Records.byte();
    out[6..8].copy_from_slice(&count.to_be_bytes());
    out[8..12].copy_from_slice(&h.cluster_id.to_be_bytes());
    out[12..20].copy_from_slice(&h.session.to_be_bytes());
    out[20..28].copy_from_slice(&h.seq.to_be_bytes());
    let mut m = mac.clone();
    m.update(&out[..at]);
    out[at..at + MAC_LEN].copy_from_slice(&m.finalize().into_bytes());
    Ok(at + MAC_LEN)
}

/// Writes a full-sync request or end marker (no records). Returns the length.
pub fn encode_control(
    secret: &[u8],
    header: &BatchHeader,
    kind: Kind,
    out: &mut [u8],
) -> Result<usize, SyncError> {
    encode_control_with(&mac_for(secret), header, kind, out)
}

fn encode_control_with(
    mac: &HmacSha256,
    h: &BatchHeader,
    kind: Kind,
    out: &mut [u8],
) -> Result<usize, SyncError> {
    let body = match kind {
        Kind::Records => return encode_with(mac, h, &[], out),
        Kind::FullSyncRequest => 0,
        Kind::FullSyncEnd { .. } => END_BODY,
    };
    let at = HEADER + body;
    if out.len() < at + MAC_LEN {
        return Err(SyncError::BufferTooSmall);
    }
    out[0..4].copy_from_slice(&MAGIC);
    out[4] = VERSION;
    out[5] = kind.byte();
    out[6..8].copy_from_slice(&0u16.to_be_bytes());
    out[8..12].copy_from_slice(&h.cluster_id.to_be_bytes());
    out[12..20].copy_from_slice(&h.session.to_be_bytes());
    out[20..28].copy_from_slice(&h.seq.to_be_bytes());
    if let Kind::FullSyncEnd { session, seq } = kind {
        out[HEADER..HEADER + 8].copy_from_slice(&session.to_be_bytes());
        out[HEADER + 8..HEADER + 16].copy_from_slice(&seq.to_be_bytes());
    }
    let mut m = mac.clone();
    m.update(&out[..at]);
    out[at..at + MAC_LEN].copy_from_slice(&m.finalize().into_bytes());
    Ok(at + MAC_LEN)
}

/// Decodes and authenticates a datagram. Total: any bytes give `Ok` or an error.
pub fn decode<'a>(secret: &[u8], cluster_id: u32, d: &'a [u8]) -> Result<Batch<'a>, SyncError> {
    decode_with(&mac_for(secret), cluster_id, d)
}

fn decode_with<'a>(mac: &HmacSha256, cluster_id: u32, d: &'a [u8]) -> Result<Batch<'a>, SyncError> {
    if d.len() < HEADER + MAC_LEN {
        return Err(SyncError::TooShort);
    }
    if d[0..4] != MAGIC {
        return Err(SyncError::BadMagic);
    }
    if d[4] != VERSION {
        return Err(SyncError::UnsupportedVersion(d[4]));
    }
    let (body, tag) = d.split_at(d.len() - MAC_LEN);
    let mut m = mac.clone();
    m.update(body);
    m.verify_slice(tag).map_err(|_| SyncError::BadMac)?;
    let be64 = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&body[at..at + 8]);
        u64::from_be_bytes(w)
    };
    let header = BatchHeader {
        cluster_id: u32::from_be_bytes([body[8], body[9], body[10], body[11]]),
        session: be64(12),
        seq: be64(20),
    };
    if header.cluster_id != cluster_id {
        return Err(SyncError::WrongCluster(header.cluster_id));
    }
    let count = usize::from(u16::from_be_bytes([body[6], body[7]]));
    let records = &body[HEADER..];
    let kind = match body[5] {
        0 => Kind::Records,
        1 => Kind::FullSyncRequest,
        2 if records.len() == END_BODY => Kind::FullSyncEnd { session: be64(HEADER), seq: be64(HEADER + 8) },
        2 => return Err(SyncError::BadLength),
        k => return Err(SyncError::UnknownKind(k)),
    };
    if kind != Kind::Records {
        if count != 0 || (kind == Kind::FullSyncRequest && !records.is_empty()) {
            return Err(SyncError::BadLength);
        }
        return Ok(Batch { header, kind, records: &[] });
    }
    if records.len() != count * RECORD_V4 {
        return Err(SyncError::BadLength);
    }
    for (i, r) in records.chunks_exact(RECORD_V4).enumerate() {
        read_record(r).map_err(|()| SyncError::BadRecord(i))?;
    }
    Ok(Batch { header, kind, records })
}

/// Sender counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderStats {
    pub datagrams: u64,
    pub records: u64,
    /// Full-sync requests and end markers ([`SyncSender::control`]).
    pub control: u64,
}

/// Batches the engine's changes into rate-limited authenticated datagrams (module docs).
#[derive(Debug)]
pub struct SyncSender {
    mac: HmacSha256,
    cluster_id: u32,
    session: u64,
    seq: u64,
    pending: Vec<SyncRecord>,
    first_pending_at: Instant,
    min_interval_ns: u64,
    next_send_at: Instant,
    /// No batching delay (a planned handover: [`SyncSender::set_prompt`]).
    prompt: bool,
    stats: SenderStats,
}

impl SyncSender {
    /// `session` must grow across restarts of the sender (see module docs).
    pub fn new(secret: &[u8], cluster_id: u32, session: u64, max_datagrams_per_s: u32) -> Self {
        SyncSender {
            mac: mac_for(secret),
            cluster_id,
            session,
            seq: 0,
            pending: Vec::with_capacity(MAX_RECORDS),
            first_pending_at: Instant::ZERO,
            min_interval_ns: 1_000_000_000 / u64::from(max_datagrams_per_s.max(1)),
            next_send_at: Instant::ZERO,
            prompt: false,
            stats: SenderStats::default(),
        }
    }

    /// Sends each change as soon as the rate limit allows instead of batching it for up to
    /// [`FLUSH_AFTER_MS`]: during a planned handover the successor must learn a connection
    /// before the client's next packet reaches it (a client's round trip, not 50 ms).
    pub fn set_prompt(&mut self, on: bool) {
        self.prompt = on;
    }

    pub fn stats(&self) -> SenderStats {
        self.stats
    }

    /// The next datagram into `out` (at least [`MAX_DATAGRAM`] bytes), if one is due.
    pub fn poll_transmit(&mut self, now: Instant, engine: &mut Engine, out: &mut [u8]) -> Option<usize> {
        while self.pending.len() < MAX_RECORDS {
            let Some(r) = engine.poll_sync(now) else {
                break;
            };
            if self.pending.is_empty() {
                self.first_pending_at = now;
            }
            self.pending.push(r);
        }
        if self.pending.is_empty() || now < self.due_at()? {
            return None;
        }
        let h = BatchHeader { cluster_id: self.cluster_id, session: self.session, seq: self.seq + 1 };
        let len = encode_with(&self.mac, &h, &self.pending, out).ok()?;
        self.seq += 1;
        self.stats.datagrams += 1;
        self.stats.records += self.pending.len() as u64;
        self.pending.clear();
        self.next_send_at = Instant::from_nanos(now.as_nanos().saturating_add(self.min_interval_ns));
        Some(len)
    }

    /// A full-sync request or end marker into `out`, numbered in this sender's session like
    /// its records (so it passes the receiver's replay window); not rate-limited (a joiner
    /// asks each peer at most every [`crate::dataplane::fullsync::REQUEST_EVERY_MS`]).
    pub fn control(&mut self, kind: Kind, out: &mut [u8]) -> Option<usize> {
        let h = BatchHeader { cluster_id: self.cluster_id, session: self.session, seq: self.seq + 1 };
        let len = encode_control_with(&self.mac, &h, kind, out).ok()?;
        self.seq += 1;
        self.stats.control += 1;
        Some(len)
    }

    /// This sender's session (what a peer's end marker echoes).
    pub fn session(&self) -> u64 {
        self.session
    }

    /// The sequence number of the last datagram written.
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// The batch being filled is full: [`SyncSender::poll_transmit`] pulls no more records
    /// from the engine until it went out.
    pub fn batch_full(&self) -> bool {
        self.pending.len() >= MAX_RECORDS
    }

    /// Records taken from the engine so far (sent, or waiting in the current batch): once
    /// [`SenderStats::records`] reaches this value, every one of them has been sent.
    pub fn pulled(&self) -> u64 {
        self.stats.records + self.pending.len() as u64
    }

    fn due_at(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        let flush = if self.prompt || self.pending.len() >= MAX_RECORDS {
            self.first_pending_at
        } else {
            Instant::from_nanos(self.first_pending_at.as_nanos().saturating_add(FLUSH_AFTER_MS * 1_000_000))
        };
        Some(flush.max(self.next_send_at))
    }

    /// When to call [`SyncSender::poll_transmit`] next if nothing else happens.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due_at()
    }
}

/// Receiver counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    pub accepted: u64,
    pub rejected: u64,
    pub replayed: u64,
    pub bad_mac: u64,
    pub records_applied: u64,
    pub records_refused: u64,
    /// Authenticated full-sync requests and end markers.
    pub control: u64,
}

/// What an accepted datagram was ([`SyncReceiver::handle_message`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// Records, of which this many were applied.
    Records(usize),
    /// The sender asks for a full sync; `session`/`seq` are what the end marker must echo.
    FullSyncRequest { session: u64, seq: u64 },
    /// The sender's full sync answering our request `(session, seq)` is complete.
    FullSyncEnd { session: u64, seq: u64 },
}

/// Authenticates datagrams and applies their records to an (inactive) engine. One replay
/// window: use one receiver per sender (clone a fresh one), since each sender has its own
/// session and sequence numbers (active-active: every ATM receives from every other).
#[derive(Clone, Debug)]
pub struct SyncReceiver {
    mac: HmacSha256,
    cluster_id: u32,
    window: Option<(u64, u64, u64)>,
    stats: ReceiverStats,
}

impl SyncReceiver {
    pub fn new(secret: &[u8], cluster_id: u32) -> Self {
        SyncReceiver { mac: mac_for(secret), cluster_id, window: None, stats: ReceiverStats::default() }
    }

    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    /// Checks and applies one datagram; returns how many records were applied (0 for a
    /// full-sync request or end marker: use [`SyncReceiver::handle_message`] to see those).
    pub fn handle(&mut self, now: Instant, d: &[u8], engine: &mut Engine) -> Result<usize, SyncError> {
        match self.handle_message(now, d, engine)? {
            Received::Records(n) => Ok(n),
            Received::FullSyncRequest { .. } | Received::FullSyncEnd { .. } => Ok(0),
        }
    }

    /// Checks one datagram (MAC, cluster, kind, length, replay window, in that order: nothing
    /// of a refused datagram is acted on) and applies its records, if any.
    pub fn handle_message(
        &mut self,
        now: Instant,
        d: &[u8],
        engine: &mut Engine,
    ) -> Result<Received, SyncError> {
        let batch = match decode_with(&self.mac, self.cluster_id, d) {
            Ok(b) => b,
            Err(e) => {
                self.stats.rejected += 1;
                if e == SyncError::BadMac {
                    self.stats.bad_mac += 1;
                }
                return Err(e);
            }
        };
        if !self.admit(batch.header.session, batch.header.seq) {
            self.stats.rejected += 1;
            self.stats.replayed += 1;
            return Err(SyncError::Replay);
        }
        self.stats.accepted += 1;
        let h = batch.header;
        match batch.kind {
            Kind::Records => {}
            Kind::FullSyncRequest => {
                self.stats.control += 1;
                return Ok(Received::FullSyncRequest { session: h.session, seq: h.seq });
            }
            Kind::FullSyncEnd { session, seq } => {
                self.stats.control += 1;
                return Ok(Received::FullSyncEnd { session, seq });
            }
        }
        let mut applied = 0;
        for r in batch.records() {
            match engine.apply_sync(now, &r) {
                Ok(()) => applied += 1,
                Err(_) => self.stats.records_refused += 1,
            }
        }
        self.stats.records_applied += applied as u64;
        Ok(Received::Records(applied))
    }

    /// Replay check: (session, top sequence, bitmap of the 64 sequences up to top).
    fn admit(&mut self, session: u64, seq: u64) -> bool {
        let Some((cur, top, bits)) = self.window else {
            self.window = Some((session, seq, 1));
            return true;
        };
        if session < cur {
            return false;
        }
        if session > cur {
            self.window = Some((session, seq, 1));
            return true;
        }
        if seq > top {
            let shift = seq - top;
            let bits = if shift >= 64 { 1 } else { (bits << shift) | 1 };
            self.window = Some((cur, seq, bits));
            return true;
        }
        let off = top - seq;
        if off >= 64 || bits & (1 << off) != 0 {
            return false;
        }
        self.window = Some((cur, top, bits | (1 << off)));
        true
    }
}

mod peers;
pub use peers::{PeerReceivers, PeerSyncError};

#[cfg(test)]
pub(crate) mod tests;
