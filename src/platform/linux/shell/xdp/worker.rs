//! One AF_XDP worker: its sockets (one per interface for each of its queues, sharing one
//! UMEM), its processor, and the loop around them.
//!
//! Per wake-up: every socket's RX ring is drained in batches of [`BATCH`]; each frame's
//! L2 header is stripped ([`frame::l3`]) and the IP packet handed to the processor, whose
//! output is written straight into a free UMEM frame behind room for the Ethernet header;
//! the frame is then addressed ([`Router`]) and queued on the TX ring of the output
//! interface's socket, and the RX frame goes back to its fill ring. After the batch each
//! TX ring is published and kicked with `sendto` only if the kernel's `need_wakeup` flag
//! asks; finished TX frames come back through the completion rings, which are emptied
//! before every kick and whenever the free list runs low ([`TxFrames`]: a full completion
//! ring is a TX ring the kernel stops reading). Sleeping is epoll
//! readiness on the sockets (tokio's `AsyncFd`), beside the same timers and control channel
//! as the TUN worker: [`TICK`], [`PacketProcessor::wake_at`], the processor's wake socket.
#![allow(unsafe_code)]

use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::task::Poll;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

use super::XdpStats;
use super::frame::{self, ETH_HLEN};
use super::pool::TxFrames;
use super::route::{Miss, Router};
use super::socket::{FRAME_SIZE, Umem, XdpDesc, Xsk};
use crate::platform::linux::shell::tun::Control;
use crate::platform::linux::shell::{Disposition, MAX_PACKET, PacketProcessor, ShellError, ShellStats, TICK};
use crate::time::Instant;

/// Frames taken from one RX ring at a time.
pub const BATCH: usize = 64;
/// Most batches per socket per wake-up (then timers and control get their turn).
const BURST: usize = 8;

/// A socket and the port (interface) it is on.
#[derive(Debug)]
pub struct Bound {
    pub xsk: Xsk,
    pub port: usize,
}

/// A raw descriptor for `AsyncFd` (the socket itself is owned by its [`Xsk`]).
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Everything a worker thread owns.
#[allow(missing_debug_implementations)] // reason: rings, the UMEM and a processor; nothing to print
pub struct Worker<P> {
    pub id: usize,
    pub processor: P,
    pub stop: watch::Receiver<bool>,
    pub control: mpsc::Receiver<Control<P>>,
    pub stats: Arc<ShellStats>,
    pub xstats: Arc<XdpStats>,
    pub origin: tokio::time::Instant,
    pub ready: std::sync::mpsc::Sender<bool>,
    /// Dropped after `socks` (field order).
    pub socks: Vec<Bound>,
    pub umem: Umem,
    /// Free TX frames.
    pub free: TxFrames,
    /// Per port: interface index and MAC.
    pub ports: Vec<(u32, [u8; 6])>,
    /// Next hops kept resolved beside the processor's (the NAT servers).
    pub warm: Vec<IpAddr>,
}

/// Per-batch scratch.
struct Scratch {
    rx: [XdpDesc; BATCH],
    fill: Vec<u64>,
    comp: [u64; BATCH],
    /// Per socket: descriptors to publish on its TX ring.
    tx: Vec<Vec<XdpDesc>>,
}

/// Raw sockets for packets the backend cannot frame (the kernel routes them).
struct Fallback {
    v4: Option<Socket>,
    v6: Option<Socket>,
}

impl Fallback {
    fn open() -> Fallback {
        let raw = |d| {
            let s = Socket::new(d, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW))).ok()?;
            s.set_nonblocking(true).ok()?;
            Some(s)
        };
        Fallback { v4: raw(Domain::IPV4), v6: raw(Domain::IPV6) }
    }

    fn send(&self, packet: &[u8], dst: IpAddr) -> bool {
        let s = if dst.is_ipv4() { &self.v4 } else { &self.v6 };
        let Some(s) = s else { return false };
        s.send_to(packet, &SockAddr::from(SocketAddr::new(dst, 0))).is_ok()
    }
}

/// The destination address of an IP packet.
fn ip_dst(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 => {
            let a: [u8; 4] = p.get(16..20)?.try_into().ok()?;
            Some(IpAddr::from(a))
        }
        6 => {
            let a: [u8; 16] = p.get(24..40)?.try_into().ok()?;
            Some(IpAddr::from(a))
        }
        _ => None,
    }
}

impl<P: PacketProcessor> Worker<P> {
    pub fn run(self) -> Result<P, ShellError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ShellError::Runtime)?;
        rt.block_on(self.run_async())
    }

    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn wake_socket(&self) -> Result<Option<tokio::net::UdpSocket>, ShellError> {
        let Some(fd) = self.processor.wake_socket() else { return Ok(None) };
        let io = ShellError::Runtime;
        let dup = std::net::UdpSocket::from(fd.try_clone_to_owned().map_err(io)?);
        dup.set_nonblocking(true).map_err(ShellError::Runtime)?;
        tokio::net::UdpSocket::from_std(dup).map(Some).map_err(ShellError::Runtime)
    }

    async fn run_async(mut self) -> Result<P, ShellError> {
        let setup = (|| {
            let fds = self
                .socks
                .iter()
                .map(|b| {
                    let fd = Fd(b.xsk.fd().as_raw_fd());
                    // SAFETY: the descriptor belongs to an `Xsk` in `self.socks`, which is
                    // neither closed nor replaced while `fds` (a local of this function,
                    // dropped before `self`) is registered.
                    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ShellError::Runtime(e.into()))?;
            let handle = super::super::netlink::connect()?;
            Ok::<_, ShellError>((fds, handle, self.wake_socket()?))
        })();
        let (fds, handle, wake_socket) = match setup {
            Ok(x) => {
                let _ = self.ready.send(true);
                x
            }
            Err(e) => {
                let _ = self.ready.send(false);
                return Err(e);
            }
        };
        let port_index: Vec<u32> = self.ports.iter().map(|p| p.0).collect();
        let mut router = Router::new(handle, &port_index);
        let fallback = Fallback::open();
        let mut s = Scratch {
            rx: [XdpDesc::default(); BATCH],
            fill: Vec::with_capacity(BATCH),
            comp: [0; BATCH],
            tx: self.socks.iter().map(|_| Vec::with_capacity(BATCH)).collect(),
        };
        let mut hops = Vec::new();
        let mut warmed_at: Option<Instant> = None;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut wake_at: Option<Instant> = None;
        let wake = tokio::time::sleep_until(self.origin);
        tokio::pin!(wake);
        loop {
            let mut want = self.processor.wake_at();
            if want.is_some_and(|t| t <= self.now()) {
                self.processor.on_wake(self.now());
                want = self.processor.wake_at();
            }
            if want != wake_at {
                wake_at = want;
                if let Some(t) = want {
                    wake.as_mut().reset(self.origin + std::time::Duration::from_nanos(t.as_nanos()));
                }
            }
            tokio::select! {
                biased;
                Some(f) = self.control.recv() => { f(&mut self.processor); continue; }
                _ = self.stop.changed() => {
                    self.record_kernel_stats();
                    return Ok(self.processor);
                }
                _ = tick.tick() => {
                    let now = self.now();
                    self.processor.on_tick(now);
                    if warmed_at.is_none_or(|t| now.saturating_since(t) >= super::super::dr::WARM_EVERY) {
                        warmed_at = Some(now);
                        hops.clear();
                        self.processor.l2_next_hops(&mut hops);
                        hops.extend_from_slice(&self.warm);
                        router.warm(now, &hops).await;
                    }
                    // Frames may sit in the rings when a readiness edge was missed.
                    self.drain(&mut s, &mut router, &fallback).await;
                    continue;
                }
                _ = &mut wake, if wake_at.is_some() => {
                    wake_at = None;
                    let now = self.now();
                    self.processor.on_wake(now);
                    continue;
                }
                r = async { wake_socket.as_ref()?.readable().await.ok() }, if wake_socket.is_some() => {
                    if let (Some(()), Some(sock)) = (r, wake_socket.as_ref())
                        && self.processor.on_readable(self.now())
                    {
                        let _ = sock.try_io(tokio::io::Interest::READABLE, || {
                            Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                        });
                    }
                    continue;
                }
                _ = readable_any(&fds) => {}
            }
            self.drain(&mut s, &mut router, &fallback).await;
            // Clear readiness only where the RX ring is empty, with the guard taken before
            // the check, so an arrival after the check keeps its own readiness.
            for (i, fd) in fds.iter().enumerate() {
                let waker = std::task::Waker::noop();
                let mut cx = std::task::Context::from_waker(waker);
                if let Poll::Ready(Ok(mut g)) = fd.poll_read_ready(&mut cx)
                    && self.socks[i].xsk.rx.available(1) == 0
                {
                    g.clear_ready();
                }
            }
        }
    }

    /// Every socket's RX ring, bounded; then the TX rings and completions.
    async fn drain(&mut self, s: &mut Scratch, router: &mut Router, fallback: &Fallback) {
        for i in 0..self.socks.len() {
            for _ in 0..BURST {
                let n = self.socks[i].xsk.rx.pop(&mut s.rx);
                if n == 0 {
                    break;
                }
                ShellStats::add(&self.stats.rx_batches, 1);
                ShellStats::add(&self.stats.rx_packets, n as u64);
                ShellStats::add(&self.xstats.rx_frames, n as u64);
                s.fill.clear();
                for k in 0..n {
                    let d = s.rx[k];
                    if self.free.len() < BATCH {
                        self.reclaim(s);
                    }
                    self.frame(d, s, router, fallback).await;
                    s.fill.push(d.addr - d.addr % FRAME_SIZE as u64);
                }
                let back = self.socks[i].xsk.fill.push(&s.fill);
                if back < s.fill.len() {
                    // Cannot happen (the fill ring has room for every RX frame): counted.
                    ShellStats::add(&self.xstats.fill_overflow, (s.fill.len() - back) as u64);
                }
                if self.socks[i].xsk.fill.needs_wakeup() {
                    self.socks[i].xsk.kick_rx();
                }
                self.flush(s);
            }
        }
        self.flush(s);
        self.reclaim(s);
    }

    /// Finished TX frames back to the free list: every completion ring emptied, however
    /// many frames are free (a full completion ring stops the kernel's TX: see [`TxFrames`]).
    fn reclaim(&mut self, s: &mut Scratch) {
        for b in &mut self.socks {
            self.free.reclaim(&mut b.xsk.comp, &mut s.comp);
        }
    }

    /// Publishes the queued TX descriptors and kicks where the kernel asks (completions
    /// taken first, so the kernel has room to complete what it sends).
    fn flush(&mut self, s: &mut Scratch) {
        self.reclaim(s);
        for (i, q) in s.tx.iter_mut().enumerate() {
            if q.is_empty() {
                continue;
            }
            let xsk = &mut self.socks[i].xsk;
            let n = xsk.tx.push(q);
            for d in &q[n..] {
                // TX ring full: the frame is dropped and returned.
                self.free.put(d.addr);
                ShellStats::add(&self.stats.dropped, 1);
            }
            ShellStats::add(&self.xstats.tx_frames, n as u64);
            q.clear();
        }
        for b in &mut self.socks {
            kick(&mut b.xsk, &self.stats, &self.xstats);
        }
    }

    /// One received frame: strip L2, process, frame the output into a TX frame, queue it.
    async fn frame(&mut self, d: XdpDesc, s: &mut Scratch, router: &mut Router, fallback: &Fallback) {
        let now = self.now();
        let Some(raw) = self.umem.frame(d.addr, d.len as usize) else {
            ShellStats::add(&self.stats.rx_errors, 1);
            return;
        };
        let l3 = match frame::l3(raw) {
            Ok(l) => l,
            Err(_) => {
                ShellStats::add(&self.stats.rx_errors, 1);
                return;
            }
        };
        let Some(tx_addr) = self.free.take() else {
            ShellStats::add(&self.xstats.no_tx_frame, 1);
            return;
        };
        let Some((rx, tx)) = self.umem.rx_tx(d.addr + l3.offset as u64, l3.len, tx_addr) else {
            ShellStats::add(&self.stats.rx_errors, 1);
            self.free.put(tx_addr);
            return;
        };
        match frame::complete_partial_checksum(rx) {
            Ok(true) => ShellStats::add(&self.xstats.csum_completed, 1),
            Ok(false) => {}
            Err(_) => {
                ShellStats::add(&self.stats.rx_errors, 1);
                self.free.put(tx_addr);
                return;
            }
        }
        let out = &mut tx[ETH_HLEN..ETH_HLEN + MAX_PACKET];
        let (len, target, l2) = match self.processor.process(now, rx, out) {
            Disposition::Tun { len } if len > 0 && len <= MAX_PACKET => match ip_dst(&out[..len]) {
                Some(dst) => (len, dst, false),
                None => (0, IpAddr::from([0, 0, 0, 0]), false),
            },
            Disposition::L2 { len, next_hop } if len > 0 && len <= MAX_PACKET => (len, next_hop, true),
            _ => (0, IpAddr::from([0, 0, 0, 0]), false),
        };
        if len == 0 {
            ShellStats::add(&self.stats.dropped, 1);
            self.free.put(tx_addr);
            return;
        }
        match router.hop(now, target, l2).await {
            Ok(hop) => {
                let Some(f) = self.umem.frame_mut(tx_addr) else {
                    self.free.put(tx_addr);
                    return;
                };
                let et = frame::ethertype_of(&f[ETH_HLEN..]).unwrap_or(frame::ETH_P_IP);
                if frame::write_eth(f, hop.mac, self.ports[hop.port].1, et).is_err() {
                    self.free.put(tx_addr);
                    return;
                }
                let Some(sock) = self.socks.iter().position(|b| b.port == hop.port) else {
                    self.free.put(tx_addr);
                    return;
                };
                s.tx[sock].push(XdpDesc { addr: tx_addr, len: (ETH_HLEN + len) as u32, options: 0 });
                let c = if l2 { &self.stats.tx_l2_packets } else { &self.stats.tx_tun_packets };
                ShellStats::add(c, 1);
            }
            Err(Miss::NoNeighbour) if l2 => {
                // As the TUN backend's direct-routing output: dropped, counted, poked.
                ShellStats::add(&self.stats.l2_no_neighbour, 1);
                self.free.put(tx_addr);
            }
            Err(_) if l2 => {
                ShellStats::add(&self.stats.dropped, 1);
                self.free.put(tx_addr);
            }
            Err(miss) => {
                let why = match miss {
                    Miss::NoRoute => &self.xstats.miss_no_route,
                    Miss::OtherInterface => &self.xstats.miss_other_interface,
                    Miss::NoNeighbour => &self.xstats.miss_no_neighbour,
                };
                ShellStats::add(why, 1);
                let sent = self
                    .umem
                    .frame(tx_addr, ETH_HLEN + len)
                    .is_some_and(|f| fallback.send(&f[ETH_HLEN..], target));
                let c = if sent { &self.xstats.tx_fallback } else { &self.xstats.tx_fallback_errors };
                ShellStats::add(c, 1);
                self.free.put(tx_addr);
            }
        }
    }

    /// Adds the kernel's per-socket counters to the shell's (at stop).
    fn record_kernel_stats(&self) {
        for b in &self.socks {
            if let Ok(k) = b.xsk.statistics() {
                ShellStats::add(&self.xstats.kernel_rx_dropped, k.rx_dropped);
                ShellStats::add(&self.xstats.kernel_rx_ring_full, k.rx_ring_full);
                ShellStats::add(&self.xstats.kernel_fill_empty, k.rx_fill_ring_empty_descs);
            }
        }
    }
}

/// Most `sendto` kicks per flush of one socket.
const MAX_KICKS: usize = 16;

/// Has the kernel transmit what `xsk`'s TX ring holds. In copy mode one `sendto` sends at
/// most a small batch (32 descriptors in Linux 6.x) and leaves the rest in the ring, which
/// nothing would kick again if no further packet came (a TCP sender waiting for exactly
/// those segments: a stall, seen in the bench). So it kicks until the ring is empty, the
/// kernel makes no progress, or [`MAX_KICKS`]; what is left goes with the next flush or
/// tick.
fn kick(xsk: &mut Xsk, stats: &ShellStats, xstats: &XdpStats) {
    let mut pending = xsk.tx.pending();
    for _ in 0..MAX_KICKS {
        if pending == 0 || !xsk.tx.needs_wakeup() {
            return;
        }
        ShellStats::add(&xstats.tx_kicks, 1);
        if xsk.kick_tx().is_err() {
            ShellStats::add(&stats.tx_tun_errors, 1);
            return;
        }
        let left = xsk.tx.pending();
        if left >= pending {
            return;
        }
        pending = left;
    }
}

/// Resolves when any of `fds` is readable (no allocation per wait).
async fn readable_any(fds: &[AsyncFd<Fd>]) {
    if fds.is_empty() {
        return std::future::pending().await;
    }
    poll_fn(|cx| {
        for fd in fds {
            if let Poll::Ready(r) = fd.poll_read_ready(cx) {
                // Errors: let the loop drain and retry (bounded by its timers).
                drop(r);
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
    .await
}
