//! Full sync on join (active-active): a (re)joining ATM asks every peer for its whole
//! connection table and learns when each peer's answer is complete, before it announces.
//!
//! Why: the router moves flows to an ATM as soon as it announces. Without the other ATMs'
//! tables the joiner would schedule those flows afresh (mid-flow pickup), which keeps them on
//! their real server only while the server set is the one they began with; a flow that began
//! before a server was added or came back would be sent to another server and break.
//!
//! Both roles of one ATM, sans-IO (the daemon's processor and the simulator drive the same
//! code). Peers are named by the caller's index.
//!
//! * **Joiner** ([`FullSync::join`]): sends a request ([`Kind::FullSyncRequest`]) to every
//!   peer that has not answered yet, again every [`REQUEST_EVERY_MS`] (a request or an end
//!   marker may be lost: sync is UDP), until every peer's end marker has arrived
//!   ([`FullSync::synced`]). The end marker counts the record datagrams sent since the
//!   request ([`EndCount`]); the joiner notes the sequence numbers of the record datagrams
//!   it got from each peer it waits for, and a peer whose count it did not get in full
//!   (a datagram of the walk was lost) is asked again at once (`ends_incomplete`). A peer
//!   whose host answers our request with ICMP "port unreachable" (its daemon is gone) is
//!   not waited for ([`FullSync::peer_gone`], from the daemon's `IP_RECVERR`). A peer that never answers (down, or unreachable) is the
//!   announcer's business: it announces anyway after its bounded wait
//!   ([`crate::core::announce::Announcer::join_sync`]).
//! * **Peer** ([`FullSync::on_request`]): starts a full walk of its table
//!   ([`Engine::start_full_sync`]; its records go out as ordinary sync datagrams), and once
//!   the walk is over and the sender has sent every record it had taken from the engine by
//!   then, sends each waiting requester an end marker echoing its request. (Not "once the
//!   sender is idle": under a steady stream of new connections its batch is never empty.) A request from a requester already waiting does not restart
//!   the walk (its re-sends would otherwise starve it); one from a new requester does (the
//!   restarted walk covers everyone waiting).
//!
//! # Usage contract
//!
//! Hand every authenticated request and end marker in ([`FullSync::on_request`],
//! [`FullSync::on_end`]); after each flush of the records, call [`FullSync::poll_transmit`]
//! until `None` and send each datagram to the peer it names; call it again at
//! [`FullSync::poll_timeout`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::dataplane::engine::Engine;
use crate::dataplane::sync::{EndCount, Kind, Received, SyncSender};
use crate::time::Instant;

/// A joiner re-sends its request to the peers that have not answered this often.
pub const REQUEST_EVERY_MS: u64 = 500;

/// Counters (the daemon logs them when the join completes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FullSyncStats {
    pub requests_sent: u64,
    pub requests_received: u64,
    pub ends_sent: u64,
    pub ends_received: u64,
    /// End markers that answer no request of ours (an earlier run, a replayed session).
    pub ends_ignored: u64,
    /// End markers whose count says a record datagram of the answer was lost: asked again.
    pub ends_incomplete: u64,
    /// Peers no longer waited for: their daemon is gone ([`FullSync::peer_gone`]).
    pub peers_gone: u64,
}

/// Sequence numbers a joiner notes per peer at most (a table of 20 million entries): past
/// it, an end marker is taken on trust as before the count.
const MAX_NOTED: usize = 1 << 19;

#[derive(Debug)]
struct Join {
    /// Peers whose end marker has not arrived.
    missing: BTreeSet<usize>,
    /// Per peer waited for: its session and the record datagrams' sequence numbers got
    /// from it since the join began.
    noted: BTreeMap<usize, (u64, BTreeSet<u64>)>,
    next_request_at: Instant,
    outbox: VecDeque<usize>,
}

/// Both roles of the full sync on join of one ATM (module docs).
#[derive(Debug, Default)]
pub struct FullSync {
    join: Option<Join>,
    /// Requesters waiting for an end marker: peer -> (their session, their request's seq,
    /// our sender's last seq and record datagrams sent when the request came).
    waiting: BTreeMap<usize, (u64, u64, u64, u64)>,
    /// Once the walk is over: the sender's [`SyncSender::pulled`] then. The end markers go
    /// when its sent-records count reaches it.
    walked_at: Option<u64>,
    stats: FullSyncStats,
}

impl FullSync {
    pub fn new() -> Self {
        FullSync::default()
    }

    pub fn stats(&self) -> FullSyncStats {
        self.stats
    }

    /// Starts the joiner role: ask each of `peers`, now and every [`REQUEST_EVERY_MS`] until
    /// it answers. With no peers the join is complete at once.
    pub fn join(&mut self, now: Instant, peers: impl IntoIterator<Item = usize>) {
        let missing: BTreeSet<usize> = peers.into_iter().collect();
        self.join =
            Some(Join { missing, noted: BTreeMap::new(), next_request_at: now, outbox: VecDeque::new() });
    }

    /// Every peer asked has sent its whole table (or no join was started).
    pub fn synced(&self) -> bool {
        self.join.as_ref().is_none_or(|j| j.missing.is_empty())
    }

    /// Peers whose answer is still missing.
    pub fn missing(&self) -> Vec<usize> {
        self.join.as_ref().map(|j| j.missing.iter().copied().collect()).unwrap_or_default()
    }

    /// An authenticated datagram from `peer` ([`crate::dataplane::sync::SyncReceiver`]):
    /// a request starts the walk, an end marker may end the join with that peer, records
    /// are noted for the end marker's count. `sender` is ours (its session is what our
    /// requests' answers echo, its counters what our end markers count).
    pub fn on_message(&mut self, peer: usize, r: &Received, engine: &mut Engine, sender: &SyncSender) {
        match *r {
            Received::FullSyncRequest { session, seq } => self.on_request(peer, session, seq, engine, sender),
            Received::FullSyncEnd { session, count, from_session, end_seq, .. } => {
                self.on_end(peer, session, sender.session(), count.map(|c| (c, from_session, end_seq)))
            }
            Received::Records { session, seq, .. } => self.on_records(peer, session, seq),
        }
    }

    /// `peer` asks for a full sync with the request `(session, seq)` (authenticated).
    pub fn on_request(
        &mut self,
        peer: usize,
        session: u64,
        seq: u64,
        engine: &mut Engine,
        sender: &SyncSender,
    ) {
        self.stats.requests_received += 1;
        let base = (session, seq, sender.last_seq(), sender.stats().datagrams);
        if self.waiting.insert(peer, base).is_none() {
            engine.start_full_sync();
            self.walked_at = None;
        }
    }

    /// A datagram to `peer` came back "port unreachable" (its host is up, its daemon is
    /// not): a join waits for it no longer (`peers_gone`); it has no table to give.
    /// Whether a join was waiting for it.
    pub fn peer_gone(&mut self, peer: usize) -> bool {
        let Some(j) = self.join.as_mut().filter(|j| j.missing.contains(&peer)) else { return false };
        j.missing.remove(&peer);
        j.noted.remove(&peer);
        j.outbox.retain(|&p| p != peer);
        self.stats.peers_gone += 1;
        true
    }

    /// A record datagram `(session, seq)` from `peer`: noted while we wait for its answer.
    pub fn on_records(&mut self, peer: usize, session: u64, seq: u64) {
        let Some(j) = self.join.as_mut().filter(|j| j.missing.contains(&peer)) else { return };
        let (s, seqs) = j.noted.entry(peer).or_insert_with(|| (session, BTreeSet::new()));
        if *s != session {
            // The peer restarted: what came before is not part of its answer.
            (*s, *seqs) = (session, BTreeSet::new());
        }
        if seqs.len() < MAX_NOTED {
            seqs.insert(seq);
        }
    }

    /// `peer` says its full sync answering our request `(session, seq)` is complete.
    /// `my_session` is our sender's session: an end marker for another session answers a
    /// request of an earlier run of ours and proves nothing about this one. `count` (with
    /// the peer's session and the end marker's own sequence number) says what it sent: if
    /// we did not get it all, we ask again at once.
    pub fn on_end(
        &mut self,
        peer: usize,
        session: u64,
        my_session: u64,
        count: Option<(EndCount, u64, u64)>,
    ) {
        let Some(j) = self.join.as_mut().filter(|_| session == my_session) else {
            self.stats.ends_ignored += 1;
            return;
        };
        self.stats.ends_received += 1;
        if let Some((c, from_session, end_seq)) = count {
            let got = j.noted.get(&peer).filter(|(s, _)| *s == from_session).map_or(0, |(_, seqs)| {
                if seqs.len() >= MAX_NOTED {
                    return u64::MAX;
                }
                seqs.range(c.first.saturating_add(1)..end_seq).count() as u64
            });
            if got < c.datagrams {
                self.stats.ends_incomplete += 1;
                if j.missing.contains(&peer) && !j.outbox.contains(&peer) {
                    j.outbox.push_back(peer);
                }
                j.noted.remove(&peer);
                return;
            }
        }
        j.missing.remove(&peer);
        j.noted.remove(&peer);
    }

    /// The next request or end marker into `out`, with the peer to send it to. End markers
    /// go out only once `engine` has finished its walk and `sender` has sent every record of
    /// it.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        engine: &Engine,
        sender: &mut SyncSender,
        out: &mut [u8],
    ) -> Option<(usize, usize)> {
        if !self.waiting.is_empty() && self.walked_at.is_none() && !engine.full_sync_running() {
            self.walked_at = Some(sender.pulled());
        }
        if self.walked_at.is_some_and(|m| sender.stats().records >= m) {
            let (peer, (session, seq, first, datagrams)) = self.waiting.pop_first()?;
            if self.waiting.is_empty() {
                self.walked_at = None;
            }
            let count = Some(EndCount { first, datagrams: sender.stats().datagrams - datagrams });
            let len = sender.control(Kind::FullSyncEnd { session, seq, count }, out)?;
            self.stats.ends_sent += 1;
            return Some((peer, len));
        }
        let j = self.join.as_mut()?;
        if j.outbox.is_empty() && !j.missing.is_empty() && now >= j.next_request_at {
            j.outbox.extend(j.missing.iter().copied());
            j.next_request_at = now + std::time::Duration::from_millis(REQUEST_EVERY_MS);
        }
        let peer = j.outbox.pop_front()?;
        let len = sender.control(Kind::FullSyncRequest, out)?;
        self.stats.requests_sent += 1;
        Some((peer, len))
    }

    /// When to call [`FullSync::poll_transmit`] again for the next round of requests (end
    /// markers are due after a flush, not at a time).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.join.as_ref().filter(|j| !j.missing.is_empty()).map(|j| j.next_request_at)
    }
}

#[cfg(test)]
mod tests;
