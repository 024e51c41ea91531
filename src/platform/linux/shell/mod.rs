//! The data plane's I/O shell (moved here from `src/dataplane/io/`, so the engine folder holds
//! no I/O): TUN devices, batching, offloads, direct-routing output and the
//! kernel steering (routes and rules) that brings VIP traffic to it.
//!
//! The packet engine is sans-IO (`process(now, rx, tx) -> verdict`); this shell is everything
//! around it. It is generic over [`PacketProcessor`], so it is built and tested with trivial
//! processors and runs the real engine unchanged.
//!
//! ## Shape
//!
//! * [`tun`]: one TUN device (tun-rs), `queues` queues (`IFF_MULTI_QUEUE`), **one worker thread
//!   per queue**, each with its own current-thread tokio runtime and its own processor (from a
//!   factory). Workers never share state on the packet path except relaxed atomic counters.
//! * [`netlink`]: rtnetlink set-up of policy routing: a private table (`table_id`) with routes
//!   into the TUN, rules `to VIP lookup table` (requests) and, for NAT, `from SERVER lookup
//!   table` (replies); torn down on stop, and [`netlink::cleanup`] removes what a crashed run
//!   left (by table id and rule priority, and the TUN by name).
//! * [`dr`]: direct-routing output: an `AF_PACKET` socket and the neighbour (ARP) table read
//!   through rtnetlink, to send a packet to a real server's MAC with the VIP untouched.
//! * [`decap_loop`]: the node-side IP-in-IP loop (raw socket in, TUN out).
//!
//! ## Offloads: whole super-packets for NAT, split and re-coalesce otherwise
//!
//! With `offload = true` the device is opened with a virtio-net header (`IFF_VNET_HDR`) and
//! TSO/checksum offloads, as in wireguard-go and Tailscale. The kernel then hands the shell TCP
//! *super-packets* (up to 64 KB with a `gso_size`) and packets whose checksum is only partial
//! (`NEEDS_CSUM`). The shell reads one raw packet at a time and ([`vnet`]):
//!
//! * **whole**: if the processor takes it ([`PacketProcessor::process_whole`]: the engine does
//!   for NAT and for replies), the IPv4 packet goes to the engine as it is, super-packet or
//!   not; NAT rewrites addresses and ports and patches the *partial* checksum for the
//!   addresses (`Engine::process_offloaded`), and the output is written back with the read's
//!   virtio-net header in one write: the kernel segments it (or passes it whole to a
//!   GSO-capable device such as veth) and finishes every checksum. One read, one rewrite, one
//!   write per 64 KB; the correctness argument is in [`vnet`] and tested in the engine;
//! * **split** otherwise (direct routing and tunnel client packets, packets without partial
//!   checksums): the super-packet is split into MTU-sized packets with complete checksums
//!   (tun-rs's `gso_split`), the engine patches each incrementally, and `send_multiple`
//!   coalesces consecutive TUN outputs of one TCP flow back into a super-packet (GRO). Its
//!   output buffers have room for a whole super-packet: tun-rs refuses to coalesce into a
//!   smaller buffer and writes each segment with its own syscall instead (which it silently
//!   did here before, with MTU-sized buffers).
//!
//! ## Multi-queue and NAT: one engine shared by the queues
//!
//! The kernel picks a TUN queue per packet from the flow hash of *that packet*. A NAT reply's
//! 5-tuple (server -> client) differs from its request's (client -> VIP), so the reply can land
//! on another queue than its request. Options were a single queue (what ran until issue 15),
//! steering both directions to one queue with an eBPF program (`TUNSETSTEERINGEBPF`, hashing
//! the client endpoint), or one engine shared behind a lock. **Decision: one processor (the
//! engine and its connection sync) shared by every queue** ([`tun::Shell::start_shared`]), locked once per
//! burst of reads and never across a syscall ([`worker`]): the queues' reads and writes, most
//! of a packet's cost, run in parallel; only the engine's own work (a few hundred ns a packet)
//! is serialised. Why not eBPF steering: it needs an engine per queue, hence a sync stream
//! (or a record router) per engine, a backup whose queue count and hash match the primary's to
//! apply each record where the connection's packets will arrive, and a program regenerated on
//! every VIP reload; with one shared engine every connection is synced exactly once and a
//! backup applies it to the engine that will see it, whatever either ATM's queue count. The
//! daemon runs `dataplane.queues` queues (0: one per core, [`ShellConfig::queues`]) for every
//! forwarding method.
//!
//! Measured on the 2-vCPU machine, quiet, `clusterlab bench --peers nat,nft --loads
//! tcp1,http-close,udp,mixed --reps 3` with `--queues 1` then `--queues 2` (medians; ratios to
//! nftables of the same run; 2026-12-07):
//!
//! | load | 1 queue | 2 queues |
//! | --- | --- | --- |
//! | HTTP `Connection: close` | 7.72 k/s, 0.69x | 7.40 k/s, 0.64x |
//! | UDP 64 B | 67.4 k/s, 0.73x | 66.3 k/s, 0.74x |
//! | mixed (close beside 4 iperf3 streams) | 5.46 k/s, 0.65x (iperf3 4.7 Gbit/s) | 3.77 k/s, 0.47x (iperf3 7.4 Gbit/s) |
//! | TCP, 1 stream | 10.8 Gbit/s, 0.83x | 9.9 Gbit/s, 0.68x |
//!
//! On this machine a second queue does not help: the load generators, nginx, iperf3 and the
//! kernel's forwarding already fill both cores, so a second worker thread only competes for
//! them, and under the mixed load the bulk stream takes what the second queue frees (its
//! throughput rises, the new connections' rate falls). Multi-queue is for ATMs with cores to
//! spare; where the balancer shares a small machine with other work, `dataplane.queues: 1` is
//! the better setting. (The kernel's own TUN flow table, which learns a flow's queue from the
//! packets user space writes, is no correctness guarantee: its entries expire after a few idle
//! seconds.)
//!
//! ## Measured
//!
//! `scripts/bench` (labs/src/bench.rs) runs the real daemon against nftables and HAProxy in
//! one namespace lab and prints the figures, ratios and our CPU per packet; labs/README.md
//! has a full table. On the shared 2-vCPU machine (medians of 3), one iperf3 TCP stream runs
//! at 7.1 Gbit/s through NAT and 8.0 through DR (0.63x / 0.71x nftables, 1.16x / 1.30x
//! HAProxy) at 0.9 / 0.7 us of daemon CPU per MTU-sized packet; before whole super-packets
//! it was 1.8 / 1.6 Gbit/s at 3.4 / 2.7 us (every segment its own write or send). What is
//! left is mostly the kernel's: copying each super-packet out of and back into the TUN and
//! the forwarding done in the write's context (perf: ~85 % of the daemon's CPU), the floor
//! of a TUN data plane (TECH-NOTES' minimal TUN loop: ~0.66x nftables). Small packets cost
//! one read and one write each (3-7 us of daemon CPU, mostly that kernel work): new
//! connections/s are ~0.5x nftables for NAT (two TUN crossings per exchange) and ~0.8x for DR.
//!
//! Where a small packet's daemon CPU goes (perf, NAT, 64-byte UDP, one queue, issue 15): about
//! 90 % in the kernel inside our two syscalls: the write (`tun_get_user`: the kernel routes the
//! packet on, through the lab's bridge and veth, into the server's UDP socket, all in our
//! context) and the read (`tun_do_read`, the copy out, freeing the skb); `epoll_wait` ~2 %,
//! tokio ~3 %, the engine and the shell ~2 %. Reading every ready packet before writing (one
//! select pass and one lock per burst) removes per-wake-up work only when packets queue up;
//! at these rates they arrive one per wake-up (1.0 packets per read), so daemon CPU per small
//! packet stayed the same: 7.4 us before (commit 1848c2d) and 7.7 us after, UDP, same quiet
//! machine, runs minutes apart. Batching the syscalls themselves (io_uring) could save their
//! entries, a few percent; the rest is forwarding work the kernel does for nftables too.

pub mod decap_loop;
pub mod dr;
pub mod netlink;
pub mod plane;
pub mod tun;
pub mod vnet;
#[cfg(test)]
mod vnet_engine_tests;
mod worker;
pub mod xdp;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::time::Instant;

/// What the shell does with one processed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Write `tx[..len]` back to the TUN (the kernel routes it on).
    Tun { len: usize },
    /// Direct routing: send `tx[..len]` in an Ethernet frame to `next_hop`'s MAC.
    L2 { len: usize, next_hop: std::net::IpAddr },
    /// Drop (the processor counts why).
    Drop,
}

/// The packet engine as the shell sees it.
///
/// Contract: `rx` is one IPv4 or IPv6 packet with valid checksums; `tx` has room for
/// [`MAX_PACKET`] bytes; the processor writes its output into `tx` and never blocks.
pub trait PacketProcessor: Send {
    fn process(&mut self, now: Instant, rx: &[u8], tx: &mut [u8]) -> Disposition;

    /// Whole-packet offload (see [`vnet`]): `pkt` is one IPv4 TCP or UDP packet whose
    /// transport checksum field holds only the pseudo-header sum, possibly a TCP super-packet
    /// of up to [`MAX_WHOLE`] bytes that the kernel segments after the shell writes it back
    /// with its virtio-net header. The processor forwards it in place where it can
    /// ([`Output::InPlace`]: NAT rewrites `pkt` itself, direct routing leaves it as it is),
    /// or writes its output into `tx` ([`Output::Tx`], room for [`MAX_WHOLE`] bytes). A `Tun`
    /// output of the same length as `pkt` must keep its layout (header lengths; NAT does)
    /// and its partial checksum; an output of another length must be a complete packet the
    /// processor made (a reset), written without offload. Return `None`, **before any side
    /// effect or change to `pkt`**, to have the shell finish the checksum or split the
    /// super-packet and call [`PacketProcessor::process`] per packet instead (the default).
    /// `segments`: how many packets `pkt` becomes on the wire (its GSO segments, else 1).
    fn process_whole(
        &mut self,
        _now: Instant,
        _pkt: &mut [u8],
        _tx: &mut [u8],
        _segments: u32,
    ) -> Option<(Disposition, Output)> {
        None
    }

    /// Housekeeping, called every [`TICK`] whether or not packets flow (the engine expires
    /// idle connections here, so a quiet ATM's table still empties). Bounded work.
    fn on_tick(&mut self, _now: Instant) {}

    /// The next hops direct-routed packets may go to (the direct-routing servers), into
    /// `out`: the shell keeps their neighbour entries resolved (see [`dr::DrSender::warm`]).
    fn l2_next_hops(&self, _out: &mut Vec<std::net::IpAddr>) {}

    /// A socket whose arrivals the processor wants to handle as they come rather than on
    /// the next tick (the daemon's connection-sync socket: a successor must apply what its
    /// predecessor sends before the clients' next packets). The shell watches a duplicate
    /// of it and calls [`PacketProcessor::on_readable`] when it has something to read.
    /// Asked once, when the worker starts.
    fn wake_socket(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }

    /// [`PacketProcessor::wake_socket`] is readable. Returns whether the processor read it
    /// empty (up to `WouldBlock`); `false` (it stopped at a bound) has the shell call again
    /// soon. Bounded work.
    fn on_readable(&mut self, _now: Instant) -> bool {
        true
    }

    /// When [`PacketProcessor::on_wake`] is next due, if before the next tick (a batch of
    /// connection sync waiting for its time). Asked after every read and wake-up: keep it
    /// cheap.
    fn wake_at(&self) -> Option<Instant> {
        None
    }

    /// The time [`PacketProcessor::wake_at`] asked for has come. Bounded work.
    fn on_wake(&mut self, _now: Instant) {}
}

/// Where a whole packet's output is ([`PacketProcessor::process_whole`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// In the packet as read (rewritten in place, or unchanged).
    InPlace,
    /// In the `tx` buffer.
    Tx,
}

impl From<crate::dataplane::engine::Verdict> for Disposition {
    fn from(v: crate::dataplane::engine::Verdict) -> Disposition {
        use crate::dataplane::engine::Verdict;
        match v {
            Verdict::Tun { len } => Disposition::Tun { len },
            Verdict::L2 { len, next_hop } => Disposition::L2 { len, next_hop },
            Verdict::Drop(_) => Disposition::Drop,
        }
    }
}

impl Output {
    /// [`Output::InPlace`] when the engine forwarded in place
    /// ([`crate::dataplane::engine::Engine::process_in_place`]), else [`Output::Tx`].
    pub fn in_place(in_place: bool) -> Output {
        if in_place { Output::InPlace } else { Output::Tx }
    }
}

/// Whether each of `n` workers reported `true` (reading) on `ready` within `timeout` each:
/// how both backends' `start` waits for its workers.
pub(crate) fn all_ready(
    ready: &std::sync::mpsc::Receiver<bool>,
    n: usize,
    timeout: std::time::Duration,
) -> bool {
    (0..n).all(|_| ready.recv_timeout(timeout) == Ok(true))
}

/// Period of [`PacketProcessor::on_tick`].
pub const TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Largest packet a processor may emit (an MTU-sized packet plus an encapsulation header).
pub const MAX_PACKET: usize = 1500 + 128;

/// Largest whole packet ([`PacketProcessor::process_whole`]): an IPv4 super-packet.
pub const MAX_WHOLE: usize = 65535;

/// Shell settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShellConfig {
    /// TUN device name (also how [`netlink::cleanup`] finds a stale one).
    pub tun_name: String,
    /// Queues and worker threads (>= 1). See [`ShellConfig::queues`].
    pub queues: usize,
    /// virtio-net header offloads (TSO/GSO with batched reads and writes).
    pub offload: bool,
    /// TUN MTU, at most 1500 (the shell's buffers are sized for [`MAX_PACKET`]).
    pub mtu: u16,
    /// Private routing table for the steering routes.
    pub table_id: u32,
    /// Priority of the steering rules (all rules of this shell share it).
    pub rule_priority: u32,
    /// Interface for direct-routing output (`Disposition::L2`); `None`: L2 verdicts drop.
    pub dr_interface: Option<String>,
}

impl ShellConfig {
    /// The number of queues for `dataplane.queues` (0: one per core) on `cores` cores, at
    /// most 64 (the TUN driver's limit is higher; more than the cores only adds threads).
    pub fn queues(configured: u32, cores: usize) -> usize {
        let n = if configured == 0 { cores } else { usize::try_from(configured).unwrap_or(64) };
        n.clamp(1, 64)
    }
}

/// Shell errors (set-up and I/O; per-packet problems are counters).
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("tun device {name}: {source}")]
    Tun { name: String, source: std::io::Error },
    #[error("netlink: {what}: {source}")]
    Netlink { what: String, source: rtnetlink::Error },
    #[error("netlink: {0}")]
    NetlinkIo(std::io::Error),
    #[error("interface {0} not found")]
    NoInterface(String),
    #[error("packet socket on {iface}: {source}")]
    PacketSocket { iface: String, source: std::io::Error },
    #[error("raw socket: {0}")]
    RawSocket(std::io::Error),
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
    #[error("invalid shell config: {0}")]
    Config(String),
    #[error("worker thread panicked")]
    WorkerPanicked,
}

/// Counters shared by all workers of one shell (relaxed atomics: totals, not ordering).
#[derive(Debug, Default)]
pub struct ShellStats {
    pub rx_packets: AtomicU64,
    /// Reads from the TUN (a super-packet is one read of many packets).
    pub rx_batches: AtomicU64,
    /// Wake-ups with reads: bursts of reads processed under one lock of the processor.
    pub rx_bursts: AtomicU64,
    pub rx_errors: AtomicU64,
    pub tx_tun_packets: AtomicU64,
    pub tx_tun_errors: AtomicU64,
    pub tx_l2_packets: AtomicU64,
    pub tx_l2_errors: AtomicU64,
    /// L2 verdicts dropped because the next hop's MAC is not (yet) known.
    pub l2_no_neighbour: AtomicU64,
    pub dropped: AtomicU64,
}

/// A plain copy of [`ShellStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub rx_packets: u64,
    pub rx_batches: u64,
    pub rx_bursts: u64,
    pub rx_errors: u64,
    pub tx_tun_packets: u64,
    pub tx_tun_errors: u64,
    pub tx_l2_packets: u64,
    pub tx_l2_errors: u64,
    pub l2_no_neighbour: u64,
    pub dropped: u64,
}

impl ShellStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The current totals.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            rx_packets: g(&self.rx_packets),
            rx_batches: g(&self.rx_batches),
            rx_bursts: g(&self.rx_bursts),
            rx_errors: g(&self.rx_errors),
            tx_tun_packets: g(&self.tx_tun_packets),
            tx_tun_errors: g(&self.tx_tun_errors),
            tx_l2_packets: g(&self.tx_l2_packets),
            tx_l2_errors: g(&self.tx_l2_errors),
            l2_no_neighbour: g(&self.l2_no_neighbour),
            dropped: g(&self.dropped),
        }
    }
}

/// The real packet engine: its verdicts map one to one; drop reasons stay counted in the
/// engine's own statistics.
impl PacketProcessor for crate::dataplane::engine::Engine {
    fn process(&mut self, now: Instant, rx: &[u8], tx: &mut [u8]) -> Disposition {
        Disposition::from(crate::dataplane::engine::Engine::process(self, now, rx, tx))
    }

    fn on_tick(&mut self, now: Instant) {
        // Bounded: at most this many entries per tick (10k per second per queue).
        self.expire(now, 1024);
    }

    /// NAT and direct-routing packets (and anything that is no client packet of a service:
    /// NAT replies, drops) whole; tunnels need their segments.
    fn process_whole(
        &mut self,
        now: Instant,
        pkt: &mut [u8],
        tx: &mut [u8],
        segments: u32,
    ) -> Option<(Disposition, Output)> {
        if !self.takes_whole(pkt) {
            return None;
        }
        let (v, in_place) = self.process_in_place(now, pkt, tx, segments);
        Some((Disposition::from(v), Output::in_place(in_place)))
    }
}

/// A processor that returns every packet unchanged to the TUN (for tests of the shell).
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

impl PacketProcessor for Echo {
    fn process(&mut self, _now: Instant, rx: &[u8], tx: &mut [u8]) -> Disposition {
        match tx.get_mut(..rx.len()) {
            Some(out) => {
                out.copy_from_slice(rx);
                Disposition::Tun { len: rx.len() }
            }
            None => Disposition::Drop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_zero_means_one_per_core() {
        assert_eq!(ShellConfig::queues(0, 8), 8);
        assert_eq!(ShellConfig::queues(0, 0), 1);
        assert_eq!(ShellConfig::queues(3, 2), 3);
        assert_eq!(ShellConfig::queues(500, 2), 64);
    }

    #[test]
    fn echo_copies_or_drops() {
        let mut tx = [0u8; 4];
        assert_eq!(Echo.process(Instant::ZERO, &[1, 2, 3], &mut tx), Disposition::Tun { len: 3 });
        assert_eq!(&tx[..3], &[1, 2, 3]);
        assert_eq!(Echo.process(Instant::ZERO, &[0; 5], &mut tx), Disposition::Drop);
    }

    #[test]
    fn stats_snapshot_sums() {
        let s = ShellStats::default();
        ShellStats::add(&s.rx_packets, 3);
        ShellStats::add(&s.rx_packets, 2);
        assert_eq!(s.snapshot().rx_packets, 5);
    }
}
