//! The receiving side of connection sync: authenticates datagrams (MAC, then the shared
//! replay window of [`crate::auth`]) and applies their records to a [`SyncSink`].

use super::SyncSink;
use super::wire::{EndCount, Kind, SyncError, decode_with};
use crate::auth::{Mac, ReplayWindow};
use crate::time::Instant;

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
    /// Records, of which `applied` were applied; the datagram's session and sequence number.
    Records { applied: usize, session: u64, seq: u64 },
    /// The sender asks for a full sync; `session`/`seq` are what the end marker must echo.
    FullSyncRequest { session: u64, seq: u64 },
    /// The sender's full sync answering our request `(session, seq)` is complete; `count`
    /// says what it sent (see [`EndCount`]), in the sender's session `from_session`, the
    /// end marker being its datagram `end_seq`.
    FullSyncEnd { session: u64, seq: u64, count: Option<EndCount>, from_session: u64, end_seq: u64 },
}

/// Authenticates datagrams and applies their records to an (inactive) engine. One replay
/// window: use one receiver per sender (clone a fresh one), since each sender has its own
/// session and sequence numbers (active-active: every ATM receives from every other).
#[derive(Clone, Debug)]
pub struct SyncReceiver {
    mac: Mac,
    cluster_id: u32,
    window: ReplayWindow,
    stats: ReceiverStats,
}

impl SyncReceiver {
    pub fn new(secret: &[u8], cluster_id: u32) -> Self {
        SyncReceiver {
            mac: Mac::new(secret),
            cluster_id,
            window: ReplayWindow::default(),
            stats: ReceiverStats::default(),
        }
    }

    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    /// Checks and applies one datagram; returns how many records were applied (0 for a
    /// full-sync request or end marker: use [`SyncReceiver::handle_message`] to see those).
    pub fn handle(&mut self, now: Instant, d: &[u8], engine: &mut impl SyncSink) -> Result<usize, SyncError> {
        match self.handle_message(now, d, engine)? {
            Received::Records { applied, .. } => Ok(applied),
            Received::FullSyncRequest { .. } | Received::FullSyncEnd { .. } => Ok(0),
        }
    }

    /// Checks one datagram (MAC, cluster, kind, length, replay window, in that order: nothing
    /// of a refused datagram is acted on) and applies its records, if any.
    pub fn handle_message(
        &mut self,
        now: Instant,
        d: &[u8],
        engine: &mut impl SyncSink,
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
        if self.window.admit(batch.header.session, batch.header.seq).is_err() {
            self.stats.rejected += 1;
            self.stats.replayed += 1;
            return Err(SyncError::Replay);
        }
        self.stats.accepted += 1;
        let h = batch.header;
        match batch.kind {
            Kind::Records | Kind::Affinity => {}
            Kind::FullSyncRequest => {
                self.stats.control += 1;
                return Ok(Received::FullSyncRequest { session: h.session, seq: h.seq });
            }
            Kind::FullSyncEnd { session, seq, count } => {
                self.stats.control += 1;
                return Ok(Received::FullSyncEnd {
                    session,
                    seq,
                    count,
                    from_session: h.session,
                    end_seq: h.seq,
                });
            }
        }
        let mut applied = 0;
        for r in batch.records() {
            if engine.apply_sync(now, &r) {
                applied += 1;
            } else {
                self.stats.records_refused += 1;
            }
        }
        self.stats.records_applied += applied as u64;
        Ok(Received::Records { applied, session: h.session, seq: h.seq })
    }
}
