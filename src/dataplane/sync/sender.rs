//! The sending side of connection sync: batches a [`SyncSource`]'s changes into
//! rate-limited authenticated datagrams (the contract is in [`super`]).

use super::SyncSource;
use super::wire::{
    BatchHeader, FLUSH_AFTER_MS, Kind, MAX_RECORDS, MAX_RECORDS_V6, RecordKind, SyncRecord,
    encode_control_with, encode_with,
};
use crate::auth::Mac;
use crate::time::Instant;

/// Sender counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderStats {
    pub datagrams: u64,
    pub records: u64,
    /// Full-sync requests and end markers ([`SyncSender::control`]).
    pub control: u64,
}

/// Batches the engine's changes into rate-limited authenticated datagrams (module docs).
///
/// A datagram holds records of one family and one kind, so the sender fills one batch per
/// (family, kind) at once: connections and affinity entries (or IPv4 and IPv6 flows) that
/// come interleaved still travel in full datagrams.
#[derive(Debug)]
pub struct SyncSender {
    mac: Mac,
    cluster_id: u32,
    session: u64,
    seq: u64,
    /// One batch per [`class`], and when its oldest record was taken.
    pending: [Vec<SyncRecord>; CLASSES],
    first_pending_at: [Instant; CLASSES],
    min_interval_ns: u64,
    next_send_at: Instant,
    /// No batching delay (a planned handover: [`SyncSender::set_prompt`]).
    prompt: bool,
    stats: SenderStats,
}

const CLASSES: usize = 4;

/// The batch a record goes into: bit 0 IPv6, bit 1 affinity.
fn class(r: &SyncRecord) -> usize {
    usize::from(r.vip.is_ipv6()) | (usize::from(r.kind == RecordKind::Affinity) << 1)
}

/// Records a datagram of class `c` can take.
fn capacity(c: usize) -> usize {
    if c & 1 == 1 { MAX_RECORDS_V6 } else { MAX_RECORDS }
}

impl SyncSender {
    /// `session` must grow across restarts of the sender (see module docs).
    pub fn new(secret: &[u8], cluster_id: u32, session: u64, max_datagrams_per_s: u32) -> Self {
        SyncSender {
            mac: Mac::new(secret),
            cluster_id,
            session,
            seq: 0,
            pending: std::array::from_fn(|c| Vec::with_capacity(capacity(c))),
            first_pending_at: [Instant::ZERO; CLASSES],
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
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        engine: &mut impl SyncSource,
        out: &mut [u8],
    ) -> Option<usize> {
        while !self.batch_full() {
            let Some(r) = engine.poll_sync(now) else {
                break;
            };
            let c = class(&r);
            if self.pending[c].is_empty() {
                self.first_pending_at[c] = now;
            }
            self.pending[c].push(r);
        }
        let (due, c) = self.next_due()?;
        if now < due {
            return None;
        }
        let h = BatchHeader { cluster_id: self.cluster_id, session: self.session, seq: self.seq + 1 };
        let len = encode_with(&self.mac, &h, &self.pending[c], out).ok()?;
        self.seq += 1;
        self.stats.datagrams += 1;
        self.stats.records += self.pending[c].len() as u64;
        self.pending[c].clear();
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

    /// A batch being filled is full: [`SyncSender::poll_transmit`] pulls no more records
    /// from the engine until it went out.
    pub fn batch_full(&self) -> bool {
        (0..CLASSES).any(|c| self.pending[c].len() >= capacity(c))
    }

    /// Records taken from the engine so far (sent, or waiting in a batch): once
    /// [`SenderStats::records`] reaches this value, every one of them has been sent.
    pub fn pulled(&self) -> u64 {
        self.stats.records + self.pending.iter().map(|p| p.len() as u64).sum::<u64>()
    }

    /// The batch to send next and when: a full one at once, else the one whose oldest
    /// record has waited longest, [`FLUSH_AFTER_MS`] after it came (at once when prompt);
    /// never before the rate allows.
    fn next_due(&self) -> Option<(Instant, usize)> {
        (0..CLASSES)
            .filter(|&c| !self.pending[c].is_empty())
            .map(|c| {
                let first = self.first_pending_at[c];
                let flush = if self.prompt || self.pending[c].len() >= capacity(c) {
                    first
                } else {
                    Instant::from_nanos(first.as_nanos().saturating_add(FLUSH_AFTER_MS * 1_000_000))
                };
                (flush.max(self.next_send_at), c)
            })
            .min()
    }

    /// When to call [`SyncSender::poll_transmit`] next if nothing else happens.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_due().map(|(t, _)| t)
    }
}
