//! One [`SyncReceiver`] per peer ATM, chosen by the datagram's source address.
//!
//! Each ATM's sender has its own session (its incarnation) and sequence. One shared replay
//! window would take the newest session it saw as the floor for everyone and refuse a peer
//! whose session is older: a new primary that started before the previous one (it was never
//! restarted, the previous one was) would have every record refused, and its connections
//! would be missing on the next failover. The daemon and the simulator both use this, so the
//! simulator runs the daemon's rule rather than a copy of it.

use core::net::IpAddr;

use super::{Received, SyncError, SyncReceiver, SyncSink};
use crate::time::Instant;

/// Why a datagram was not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerSyncError {
    /// From an address that is no listed peer ATM (refused before any check).
    UnknownSender,
    /// The peer's receiver refused it (bad MAC, replay, malformed).
    Sync(SyncError),
}

/// The receivers of every peer ATM, in the order of `peers`.
#[derive(Clone, Debug)]
pub struct PeerReceivers {
    peers: Vec<IpAddr>,
    receivers: Vec<SyncReceiver>,
    /// A fresh receiver, copied for peers a reload adds.
    template: SyncReceiver,
}

impl PeerReceivers {
    /// One copy of `template` (fresh: no window yet) per peer address.
    pub fn new(template: SyncReceiver, peers: Vec<IpAddr>) -> Self {
        let receivers = vec![template.clone(); peers.len()];
        PeerReceivers { peers, receivers, template }
    }

    /// A live reload: the peers from now on. A peer that stays (same address) keeps its
    /// receiver and replay window; a new one gets a fresh receiver.
    pub fn set_peers(&mut self, peers: Vec<IpAddr>) {
        let receivers = peers
            .iter()
            .map(|p| match self.peers.iter().position(|q| q == p) {
                Some(i) => self.receivers[i].clone(),
                None => self.template.clone(),
            })
            .collect();
        self.peers = peers;
        self.receivers = receivers;
    }

    /// Applies datagram `d` from `from` with that peer's receiver: the records applied.
    pub fn handle(
        &mut self,
        now: Instant,
        from: IpAddr,
        d: &[u8],
        engine: &mut impl SyncSink,
    ) -> Result<usize, PeerSyncError> {
        match self.handle_message(now, from, d, engine)? {
            (_, Received::Records { applied, .. }) => Ok(applied),
            (_, Received::FullSyncRequest { .. } | Received::FullSyncEnd { .. }) => Ok(0),
        }
    }

    /// As [`PeerReceivers::handle`], with what the datagram was (records, or a full-sync
    /// request or end marker) and the index of the peer (in the order of `peers`) it came from.
    pub fn handle_message(
        &mut self,
        now: Instant,
        from: IpAddr,
        d: &[u8],
        engine: &mut impl SyncSink,
    ) -> Result<(usize, Received), PeerSyncError> {
        let i = self.peers.iter().position(|p| *p == from).ok_or(PeerSyncError::UnknownSender)?;
        self.receivers[i].handle_message(now, d, engine).map(|r| (i, r)).map_err(PeerSyncError::Sync)
    }
}
