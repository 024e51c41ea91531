//! The sending side of connection sync: batches a [`SyncSource`]'s changes into
//! rate-limited authenticated datagrams (the contract is in [`super`]).

use super::SyncSource;
use super::wire::{
    BatchHeader, FLUSH_AFTER_MS, Kind, MAX_RECORDS, MAX_RECORDS_V6, SyncRecord, encode_control_with,
    encode_with,
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
#[derive(Debug)]
pub struct SyncSender {
    mac: Mac,
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
            mac: Mac::new(secret),
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
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        engine: &mut impl SyncSource,
        out: &mut [u8],
    ) -> Option<usize> {
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
