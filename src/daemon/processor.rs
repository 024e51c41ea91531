//! The daemon's packet processor: the real [`Engine`] plus its connection sync, shared by
//! every TUN queue's worker ([`crate::platform::linux::shell::tun::Shell::start_shared`]).
//!
//! **One engine for every queue, one sync stream.** The workers take the processor's lock
//! once per burst of reads (never across a syscall), so the kernel work of the queues runs in
//! parallel while connection state has one home: a NAT reply finds its connection whichever
//! queue it arrives on, each connection is synced exactly once (by the one sender), and a
//! backup applies every record to the engine that will see the connection's packets after a
//! failover (there is only one), whatever either ATM's queue count. The first queue's worker
//! owns the processor's housekeeping (ticks, wake-ups, the sync socket's readiness, control
//! closures), so each runs once.
//!
//! The sync sender needs `&mut Engine`, so the sync socket lives with the engine: a
//! non-blocking UDP socket on the sync port. The primary (engine active) pulls its queued changes into the sender every
//! [`FLUSH_EVERY`] packets, when the worker wakes for them ([`PacketProcessor::wake_at`]:
//! changes queued, a batch due) and on every tick; during a planned handover it sends each
//! change with the packet that made it. Every ATM applies what it receives as it arrives:
//! the shell wakes the worker when the sync socket is readable
//! ([`PacketProcessor::wake_socket`]), and every tick ([`crate::platform::linux::shell::TICK`],
//! 100 ms) catches anything left. Datagrams are authenticated with
//! the cluster secret by the codec; a backup ignores nothing but what fails authentication
//! or replays. An active engine applies incoming sync only for connections it does not know
//! (made by a draining predecessor or a briefly co-active peer): two primaries for a moment
//! never overwrite each other's entries ([`Engine::apply_sync`]).
//!
//! Each peer ATM has its own receiver (replay window): every sender numbers its own
//! datagrams in its own session, and in active-active mode every ATM receives from every
//! other at once. A datagram from an address that is no listed ATM is refused and counted.
//!
//! Full sync on join (active-active, [`crate::dataplane::fullsync`]): the processor answers
//! every peer's full-sync request (its table, then an end marker to that peer) and, once the
//! control loop starts a join ([`DaemonProcessor::start_join`]), asks every peer for theirs
//! and publishes which peers have not answered yet, until none is left.
//!
//! **The simulator drives this processor too.** The sync socket is behind [`SyncSocket`]
//! (send, non-blocking receive, ICMP errors): the daemon's is a `std` [`UdpSocket`], the
//! simulator's a turmoil one. The shell's entry points ([`DaemonProcessor::process`],
//! [`DaemonProcessor::on_tick`], [`DaemonProcessor::on_readable`],
//! [`DaemonProcessor::wake_at`], [`DaemonProcessor::on_wake`]) are inherent methods the
//! [`PacketProcessor`] impl forwards to, so a simulated ATM (single-threaded, not `Send`)
//! calls exactly the code the TUN worker calls.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::dataplane::engine::{Engine, Reload, ReloadStats, Verdict};
use crate::dataplane::fullsync::{FullSync, FullSyncStats};
use crate::dataplane::sync::{
    MAX_DATAGRAM, PeerReceivers, PeerSyncError, Received, SyncReceiver, SyncSender,
};
use crate::platform::linux::shell::{Disposition, Output, PacketProcessor};
use crate::time::Instant;

use crate::overrides::ServerControl;

/// Packets between two sync flushes on the packet path.
pub const FLUSH_EVERY: u32 = 32;
/// Bound on sync datagrams received per tick.
const RECV_PER_TICK: usize = 512;
/// Bound on sync datagrams sent per flush.
const SEND_PER_FLUSH: usize = 64;
/// Pause between two steps of a table walk (each step is bounded: see
/// [`Engine::poll_sync`]), so packets are forwarded between them.
const WALK_STEP: Duration = Duration::from_millis(1);

/// The sync socket as the processor uses it: non-blocking on both ends.
pub trait SyncSocket {
    fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize>;

    /// One waiting datagram; [`io::ErrorKind::WouldBlock`] when none is.
    fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;

    /// Appends the destinations reported unreachable (ICMP port unreachable) since the last
    /// call, after `recv_from` failed otherwise than `WouldBlock` (default: none known).
    fn unreachable(&self, _out: &mut Vec<SocketAddr>) {}
}

/// The daemon's: a non-blocking UDP socket with `IP_RECVERR`.
impl SyncSocket for UdpSocket {
    fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        UdpSocket::send_to(self, buf, to)
    }

    fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        UdpSocket::recv_from(self, buf)
    }

    fn unreachable(&self, out: &mut Vec<SocketAddr>) {
        crate::platform::linux::netsys::unreachable_destinations(self, out);
    }
}

/// Counters of the sync path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncCounters {
    pub sent: u64,
    pub send_errors: u64,
    pub received: u64,
    pub applied_records: u64,
    pub rejected: u64,
    /// Of those, datagrams from an address that is no listed ATM.
    pub unknown_sender: u64,
    /// ICMP "port unreachable" for a datagram to a peer (its host is up, its daemon not).
    pub peer_unreachable: u64,
}

/// Engine + sync, shared by the queues (module docs).
#[derive(Debug)]
pub struct DaemonProcessor<S = UdpSocket> {
    pub engine: Engine,
    /// Health verdicts and operator changes per server (see [`super::servers`]).
    pub servers: ServerControl,
    sender: SyncSender,
    /// One per entry of `peers`.
    receivers: PeerReceivers,
    socket: Option<S>,
    peers: Vec<SocketAddr>,
    out: Vec<u8>,
    rbuf: Vec<u8>,
    since_flush: u32,
    pub counters: SyncCounters,
    /// Fired once nothing is left to send (see [`DaemonProcessor::notify_when_drained`]).
    drained: Option<tokio::sync::oneshot::Sender<()>>,
    /// The latest `now` seen (a tick or a packet), for work done between them.
    last_now: Instant,
    /// Full sync on join, both roles.
    full: FullSync,
    /// A join under way: the peers whose tables are still missing are published here.
    join: Option<(Arc<JoinWatch>, usize)>,
}

/// The peers (sync addresses) whose full sync has not arrived yet; `None` until the worker
/// took the join up. Empty: every peer's table is here.
pub type JoinWatch = watch::Sender<Option<Vec<SocketAddr>>>;

impl<S: SyncSocket> DaemonProcessor<S> {
    /// A live reload on the worker: the engine in place ([`Engine::reconfigure`]), the
    /// operators' overrides carried ([`ServerControl::reconfigure`]), and the sync peers
    /// (a peer that stays keeps its replay window; an appended ATM gets a fresh one).
    pub fn reconfigure(&mut self, r: &Reload<'_>, peers: Vec<SocketAddr>) -> ReloadStats {
        let st = self.engine.reconfigure(self.last_now, r);
        self.servers.reconfigure(&mut self.engine, r.remap, r.new);
        self.receivers.set_peers(peers.iter().map(SocketAddr::ip).collect());
        self.peers = peers;
        st
    }

    /// `socket`: the non-blocking sync socket (`None`: sync off).
    pub fn new(
        engine: Engine,
        sender: SyncSender,
        receiver: SyncReceiver,
        socket: Option<S>,
        peers: Vec<SocketAddr>,
    ) -> Self {
        let services = (0..).take_while(|&i| !engine.servers(i).is_empty()).count();
        let receivers = PeerReceivers::new(receiver, peers.iter().map(|p| p.ip()).collect());
        DaemonProcessor {
            servers: ServerControl::new(&engine, services),
            engine,
            sender,
            receivers,
            socket,
            peers,
            out: vec![0; MAX_DATAGRAM],
            rbuf: vec![0; MAX_DATAGRAM],
            since_flush: 0,
            counters: SyncCounters::default(),
            drained: None,
            last_now: Instant::ZERO,
            full: FullSync::new(),
            join: None,
        }
    }

    /// Joining (active-active): ask every peer for its whole table and publish on `progress`
    /// which peers have not sent theirs yet (a processor without a sync socket does nothing).
    pub fn start_join(&mut self, progress: Arc<JoinWatch>) {
        if self.socket.is_none() {
            return;
        }
        self.full.join(self.last_now, 0..self.peers.len());
        self.join = Some((progress, usize::MAX));
    }

    /// Counters of the full sync on join.
    pub fn full_sync_stats(&self) -> FullSyncStats {
        self.full.stats()
    }

    /// Publishes the peers still missing when their number changed; stops once none is.
    fn publish_join(&mut self) {
        let Some((progress, shown)) = self.join.as_mut() else { return };
        let missing = self.full.missing();
        if missing.len() != *shown {
            *shown = missing.len();
            let _ = progress.send(Some(missing.iter().map(|&i| self.peers[i]).collect()));
        }
        if missing.is_empty() {
            self.join = None;
        }
    }

    /// Forward (primary) or shadow (backup). Becoming active first applies every sync
    /// datagram already waiting in the socket: a handover's last records (sent just before
    /// the old primary let go) arrive moments before this call and must not be skipped.
    pub fn set_active(&mut self, active: bool) {
        if active && !self.engine.is_active() {
            self.receive(self.last_now);
        }
        self.engine.set_active(active);
    }

    /// A planned handover begins: starts a full sync (if active) and fires `done` once the
    /// walk is over and every record has been sent, so the successor holds every connection
    /// even if it joined moments ago. From here until the process exits, each change goes
    /// out at once and half-open connections are synced too ([`Engine::set_handing_over`],
    /// [`SyncSender::set_prompt`]): clients keep reaching this ATM until their ARP caches
    /// follow the successor, and the successor must know every flow they start meanwhile.
    pub fn notify_when_drained(&mut self, done: tokio::sync::oneshot::Sender<()>) {
        if self.engine.is_active() && self.socket.is_some() {
            self.engine.set_handing_over(true);
            self.sender.set_prompt(true);
            self.engine.start_full_sync();
            self.drained = Some(done);
            self.flush(self.last_now);
        } else {
            let _ = done.send(());
        }
    }

    /// Fires the drain notice once the table walk is over and nothing is pending in the
    /// sender after a flush. (An empty sender alone is not enough: the walk hands records
    /// over a batch at a time, so the sender can be empty between two batches of it.)
    fn check_drained(&mut self) {
        if self.drained.is_some() && !self.engine.full_sync_running() && self.sender.poll_timeout().is_none()
        {
            let _ = self.drained.take().map(|d| d.send(()));
        }
    }

    fn flush(&mut self, now: Instant) {
        self.send_due(now);
        self.check_drained();
    }

    fn send_due(&mut self, now: Instant) {
        let Some(sock) = &self.socket else { return };
        for _ in 0..SEND_PER_FLUSH {
            let Some(len) = self.sender.poll_transmit(now, &mut self.engine, &mut self.out) else { break };
            for p in &self.peers {
                match sock.send_to(&self.out[..len], *p) {
                    Ok(_) => self.counters.sent += 1,
                    Err(_) => self.counters.send_errors += 1,
                }
            }
        }
        // Full-sync requests and end markers (after the records they follow), to one peer each.
        while let Some((peer, len)) =
            self.full.poll_transmit(now, &self.engine, &mut self.sender, &mut self.out)
        {
            match sock.send_to(&self.out[..len], self.peers[peer]) {
                Ok(_) => self.counters.sent += 1,
                Err(_) => self.counters.send_errors += 1,
            }
        }
    }

    /// Applies what waits in the sync socket (bounded); whether it was read empty.
    fn receive(&mut self, now: Instant) -> bool {
        let Some(sock) = &self.socket else { return true };
        let mut errors = 0;
        for _ in 0..RECV_PER_TICK {
            let (n, from) = match sock.recv_from(&mut self.rbuf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                // An ICMP error queued on the socket (a peer's port closed) is reported once:
                // skip it. Errors that keep coming end the round as if read empty, so the
                // shell does not call again at once (the next tick tries again).
                Err(_) => {
                    peers_gone(sock, &self.peers, &mut self.full, &mut self.counters);
                    errors += 1;
                    if errors > 8 {
                        return true;
                    }
                    continue;
                }
            };
            self.counters.received += 1;
            match self.receivers.handle_message(now, from.ip(), &self.rbuf[..n], &mut self.engine) {
                Ok((i, r)) => {
                    if let Received::Records { applied, .. } = r {
                        self.counters.applied_records += applied as u64;
                    }
                    let incomplete = self.full.stats().ends_incomplete;
                    self.full.on_message(i, &r, &mut self.engine, &self.sender);
                    if self.full.stats().ends_incomplete > incomplete {
                        tracing::info!(target: "clusterserverd::bgp", peer = %from.ip(), "join: the peer's table arrived with a hole (its end marker counts record datagrams that were lost): asking again");
                    }
                }
                Err(e) => {
                    self.counters.rejected += 1;
                    if e == PeerSyncError::UnknownSender {
                        self.counters.unknown_sender += 1;
                    }
                }
            }
        }
        false
    }
}

/// Reads the sync socket's ICMP errors: a peer whose port is closed (its daemon is gone,
/// its host answers) is no longer waited for by a join (`IP_RECVERR`, set at bind).
fn peers_gone(
    sock: &impl SyncSocket,
    peers: &[SocketAddr],
    full: &mut FullSync,
    counters: &mut SyncCounters,
) {
    let mut gone = Vec::new();
    sock.unreachable(&mut gone);
    for dest in gone {
        counters.peer_unreachable += 1;
        if let Some(i) = peers.iter().position(|p| *p == dest)
            && full.peer_gone(i)
        {
            tracing::info!(target: "clusterserverd::bgp", peer = %dest.ip(), "join: the peer's daemon is gone (its host answers port unreachable): not waiting for its connection table");
        }
    }
}

impl<S: SyncSocket> DaemonProcessor<S> {
    /// After one packet (or super-packet): the shell's disposition, and a sync flush every
    /// [`FLUSH_EVERY`] packets.
    fn after_packet(&mut self, now: Instant, v: Verdict) -> Disposition {
        self.last_now = now;
        self.since_flush += 1;
        // During a handover every change goes out with the packet that made it.
        if self.since_flush >= FLUSH_EVERY || (self.engine.handing_over() && self.engine.sync_pending()) {
            self.since_flush = 0;
            self.flush(now);
        }
        Disposition::from(v)
    }

    /// One packet ([`PacketProcessor::process`]).
    pub fn process(&mut self, now: Instant, rx: &[u8], tx: &mut [u8]) -> Disposition {
        let v = self.engine.process(now, rx, tx);
        self.after_packet(now, v)
    }

    /// The shell's tick ([`PacketProcessor::on_tick`]): expiry, sync in and out, the join.
    pub fn on_tick(&mut self, now: Instant) {
        self.last_now = now;
        self.engine.expire(now, 1024);
        self.receive(now);
        self.flush(now);
        self.publish_join();
    }

    /// Sync arrives: applied at once (a successor learns its predecessor's last connections
    /// before those clients' next packets), and answered (a full-sync request) at once.
    /// Whether the socket was read empty.
    pub fn on_readable(&mut self, now: Instant) -> bool {
        self.last_now = now;
        let empty = self.receive(now);
        self.flush(now);
        self.publish_join();
        empty
    }

    /// Changes waiting in the engine (and room for them in the batch): now; a batch waiting
    /// in the sender: when it is due; a table walk under way: its next step in a
    /// millisecond.
    pub fn wake_at(&self) -> Option<Instant> {
        self.socket.as_ref()?;
        if self.engine.sync_pending() && !self.sender.batch_full() {
            return Some(self.last_now);
        }
        let walk = self.engine.full_sync_running().then(|| self.last_now + WALK_STEP);
        [self.sender.poll_timeout(), walk].into_iter().flatten().min()
    }

    /// The time [`DaemonProcessor::wake_at`] named has come.
    pub fn on_wake(&mut self, now: Instant) {
        self.last_now = now;
        self.flush(now);
    }
}

impl PacketProcessor for DaemonProcessor {
    fn process(&mut self, now: Instant, rx: &[u8], tx: &mut [u8]) -> Disposition {
        DaemonProcessor::process(self, now, rx, tx)
    }

    /// NAT super-packets and partial checksums whole, in place where the engine can (see
    /// [`crate::platform::linux::shell::vnet`]).
    fn process_whole(
        &mut self,
        now: Instant,
        pkt: &mut [u8],
        tx: &mut [u8],
        segments: u32,
    ) -> Option<(Disposition, Output)> {
        if !self.engine.takes_whole(pkt) {
            return None;
        }
        let (v, in_place) = self.engine.process_in_place(now, pkt, tx, segments);
        Some((self.after_packet(now, v), Output::in_place(in_place)))
    }

    fn on_tick(&mut self, now: Instant) {
        DaemonProcessor::on_tick(self, now);
    }

    fn l2_next_hops(&self, out: &mut Vec<std::net::IpAddr>) {
        self.engine.dr_servers(out);
    }

    fn wake_socket(&self) -> Option<BorrowedFd<'_>> {
        self.socket.as_ref().map(AsFd::as_fd)
    }

    fn on_readable(&mut self, now: Instant) -> bool {
        DaemonProcessor::on_readable(self, now)
    }

    fn wake_at(&self) -> Option<Instant> {
        DaemonProcessor::wake_at(self)
    }

    fn on_wake(&mut self, now: Instant) {
        DaemonProcessor::on_wake(self, now);
    }
}
