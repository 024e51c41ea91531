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
//! joiner never takes the end of a walk that began before it asked for one. Both are numbered
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

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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
const RECORD_V6: usize = 62;
const MAC_LEN: usize = 32;
/// IPv4 records per datagram (fits a 1400-byte datagram).
pub const MAX_RECORDS: usize = 48;
/// IPv6 records per datagram (no larger than a full IPv4 one).
pub const MAX_RECORDS_V6: usize = 20;
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
    count: usize,
}

impl<'a> Batch<'a> {
    /// The records, in order.
    pub fn records(&self) -> impl Iterator<Item = SyncRecord> + 'a {
        let mut rest = self.records;
        std::iter::from_fn(move || {
            let (r, n) = read_record(rest).ok()?;
            rest = &rest[n..];
            Some(r)
        })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

fn mac_for(secret: &[u8]) -> HmacSha256 {
    <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length")
}

/// Bytes of a record of `r`'s family, or `None` when its addresses are of mixed families.
fn record_len(r: &SyncRecord) -> Option<usize> {
    match (r.client.ip(), r.vip.ip(), r.server.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_), IpAddr::V4(_)) => Some(RECORD_V4),
        (IpAddr::V6(_), IpAddr::V6(_), IpAddr::V6(_)) => Some(RECORD_V6),
        _ => None,
    }
}

/// Writes `r` at the start of `b` (which has room for it); returns its length.
fn write_record(b: &mut [u8], r: &SyncRecord) -> Option<usize> {
    let len = record_len(r)?;
    let a = if len == RECORD_V4 { 4 } else { 16 };
    b[0] = if a == 4 { 4 } else { 6 };
    b[1] = r.proto;
    b[2] = r.state.to_u8();
    b[3] = 0;
    for (i, sa) in [r.client, r.vip, r.server].iter().enumerate() {
        let at = 4 + i * a;
        match sa.ip() {
            IpAddr::V4(ip) => b[at..at + 4].copy_from_slice(&ip.octets()),
            IpAddr::V6(ip) => b[at..at + 16].copy_from_slice(&ip.octets()),
        }
        let pat = 4 + 3 * a + 2 * i;
        b[pat..pat + 2].copy_from_slice(&sa.port().to_be_bytes());
    }
    let rat = 4 + 3 * a + 6;
    b[rat..rat + 4].copy_from_slice(&r.remaining_ms.to_be_bytes());
    Some(len)
}

/// The record at the start of `b` and its length.
fn read_record(b: &[u8]) -> Result<(SyncRecord, usize), ()> {
    let (a, len) = match b.first() {
        Some(4) => (4, RECORD_V4),
        Some(6) => (16, RECORD_V6),
        _ => return Err(()),
    };
    if b.len() < len || b[3] != 0 {
        return Err(());
    }
    let state = State::from_u8(b[2]).ok_or(())?;
    let addr = |i: usize| {
        let at = 4 + i * a;
        let ip = if a == 4 {
            IpAddr::V4(Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]))
        } else {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[at..at + 16]);
            IpAddr::V6(Ipv6Addr::from(o))
        };
        let pat = 4 + 3 * a + 2 * i;
        SocketAddr::new(ip, u16::from_be_bytes([b[pat], b[pat + 1]]))
    };
    let rat = 4 + 3 * a + 6;
    let rec = SyncRecord {
        proto: b[1],
        state,
        client: addr(0),
        vip: addr(1),
        server: addr(2),
        remaining_ms: u32::from_be_bytes([b[rat], b[rat + 1], b[rat + 2], b[rat + 3]]),
    };
    Ok((rec, len))
}

/// Writes a datagram; records whose addresses mix families are skipped. The caller keeps
/// to one family per datagram (module docs). Returns the length.
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
    let body: usize = records[..n].iter().filter_map(record_len).sum();
    if out.len() < HEADER + body + MAC_LEN {
        return Err(SyncError::BufferTooSmall);
    }
    let mut at = HEADER;
    let mut count: u16 = 0;
    for r in &records[..n] {
        if let Some(len) = write_record(&mut out[at..], r) {
            at += len;
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
        return Ok(Batch { header, kind, records: &[], count: 0 });
    }
    let mut at = 0;
    let mut family = None;
    for i in 0..count {
        if at >= records.len() {
            return Err(SyncError::BadLength);
        }
        let (r, n) = read_record(&records[at..]).map_err(|()| SyncError::BadRecord(i))?;
        // One family per datagram (module docs).
        if *family.get_or_insert(r.vip.is_ipv4()) != r.vip.is_ipv4() {
            return Err(SyncError::BadRecord(i));
        }
        at += n;
    }
    if at != records.len() {
        return Err(SyncError::BadLength);
    }
    Ok(Batch { header, kind, records, count })
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
    /// A record of the other family than `pending`'s, pulled from the engine: it starts
    /// the next datagram (one family per datagram).
    held: Option<SyncRecord>,
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
            held: None,
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
        if self.pending.is_empty()
            && let Some(r) = self.held.take()
        {
            self.first_pending_at = now;
            self.pending.push(r);
        }
        while !self.batch_full() && self.held.is_none() {
            let Some(r) = engine.poll_sync(now) else {
                break;
            };
            if self.pending.first().is_some_and(|p| p.vip.is_ipv4() != r.vip.is_ipv4()) {
                self.held = Some(r);
                break;
            }
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
        self.pending.len() >= self.capacity() || self.held.is_some()
    }

    /// Records the batch being filled can take (by its family).
    fn capacity(&self) -> usize {
        match self.pending.first() {
            Some(r) if r.vip.is_ipv6() => MAX_RECORDS_V6,
            _ => MAX_RECORDS,
        }
    }

    /// Records taken from the engine so far (sent, or waiting in the current batch): once
    /// [`SenderStats::records`] reaches this value, every one of them has been sent.
    pub fn pulled(&self) -> u64 {
        self.stats.records + self.pending.len() as u64 + u64::from(self.held.is_some())
    }

    fn due_at(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        let flush = if self.prompt || self.batch_full() {
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
