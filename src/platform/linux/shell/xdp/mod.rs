//! The AF_XDP backend of the data-plane shell: the same [`PacketProcessor`] as the TUN
//! backend, fed from AF_XDP sockets on the wire interfaces instead of a TUN device.
//!
//! ## Shape
//!
//! * [`attach`]: one hash map of what to redirect ([`program::MatchSet`]: VIPs, NAT
//!   servers' replies, this host's own addresses), and per interface an XSK map and the
//!   classifier ([`program`], generated in Rust, see [`crate::platform::linux::bpf`]),
//!   attached with a BPF link (nothing outlives the process, even a SIGKILL).
//! * [`socket`] / [`ring`]: UMEM and AF_XDP sockets, one per (interface, RX queue); the
//!   sockets of one worker share its UMEM, so a frame goes out of another interface than it
//!   came in on without a copy.
//! * [`worker`]: one thread per worker (queues are dealt out `queue % workers`), each with
//!   a current-thread runtime and its processor from the factory, as in [`super::tun`].
//! * [`route`]: next hops (kernel route lookup, cached, and the neighbour table shared with
//!   [`super::dr`]); [`frame`]: L2 strip and build.
//!
//! [`XdpShell`] mirrors [`super::tun::Shell`] (`start`, `apply`, `controller`, `stats`,
//! `stop` returning the processors) plus [`XdpShell::set_matches`] for a reload; the daemon
//! holds either through [`super::plane::DataPlane`]. No policy routing is installed: the
//! classifier takes the engine's traffic before the kernel routes it, NAT replies included.
//!
//! ## What the packet path does that TUN's kernel did
//!
//! * **Checksums**: frames from a sender that offloads checksums (every veth, virtio-net)
//!   carry only the pseudo-header sum; TUN gets the kernel's metadata for that, AF_XDP gets
//!   bare bytes. The worker completes such checksums before the engine's incremental patch
//!   ([`frame::complete_partial_checksum`], counted in `csum_completed`).
//! * **Routing and ARP**: `Disposition::Tun` outputs are framed with the next hop's MAC
//!   from a kernel route lookup and the neighbour table ([`route`]); a miss (a neighbour
//!   the kernel is still resolving, or a route out of an interface without sockets) goes
//!   out through a raw `IP_HDRINCL` socket, so the kernel routes it (`tx_fallback`, with the
//!   reason in `miss_*`). Direct-routing outputs without a neighbour drop, as with TUN.
//! * **Not done**: ICMP errors about VIP traffic from elsewhere (a router's "fragmentation
//!   needed" towards a VIP is redirected like any packet to a VIP and the engine handles
//!   it as TUN's did; one about a NAT server's reply is the kernel's); IPv6 extension
//!   headers and IPv4 fragments pass to the kernel (the TUN backend's engine drops them
//!   too). The set of interfaces is fixed at start (a reload that needs a new one is a
//!   planned handover, like a VIP on an interface without an ARP socket).
//!
//! ## Queues and workers
//!
//! Sockets are bound on every RX queue the kernel accepts (a veth reports `nproc` queues
//! and uses one: the first refused queue ends the count). The daemon runs **one worker**
//! (one engine, one connection-sync stream, as its TUN shell runs one queue): it owns the
//! sockets of every queue of every interface. More workers split the queues
//! (`queue % workers`); each then needs an engine that sees both directions of its
//! connections, which RSS does not promise for NAT (see the TUN shell's "Multi-queue and
//! NAT").
//!
//! ## Bulk TCP: why no multi-buffer, and what it costs
//!
//! An XDP program without `BPF_F_XDP_HAS_FRAGS` on a veth makes the kernel turn GRO/GSO
//! aggregation off on that path: bulk TCP arrives as MTU-sized frames (one descriptor, one
//! engine call and one TX descriptor each), where the TUN backend moves 64 KB super-packets
//! through its virtio-net header. Multi-buffer (`XDP_USE_SG`) would hand us the same frames
//! chained, not fewer: it saves nothing per segment. So the backend is MTU-frame based; its
//! strength is small packets (no syscall per packet: one `sendto` kick per batch in copy
//! mode, none in zero-copy), the TUN backend's is bulk streams.
//!
//! **The bulk-TCP stall (fixed).** A bulk stream through AF_XDP NAT used to stop after
//! about 2048 segments (~3 MB; iperf3 showed ~5 MB in its first second, then the sender's
//! retransmissions of one segment went unanswered, and from then on every flow, new SYNs
//! included). Two causes, both in the TX path of copy mode: `sendto` sends at most 32
//! descriptors (fixed earlier: [`worker`]'s `kick`), and the one that stalled: the
//! completion rings were drained only when fewer than a batch of TX frames was free, while
//! the free list (4096 frames, the UMEM being sized for both RX queues a veth reports) was
//! larger than a completion ring (2048). The socket towards the server filled its
//! completion ring (ring indices read in the lab: producer 2048, consumer 0), the kernel,
//! which reserves a completion slot per TX descriptor, refused everything after (`sendto`
//! `EAGAIN`, 533 descriptors left in the TX ring; the server's capture: exactly 2048
//! segments), and the worker, with 1014 frames still free, never looked again. Every reclaim
//! now empties every completion ring and the TX pool is at most one completion ring
//! ([`pool`]); `tests/xdp_ns.rs` pushes 16 MiB each way through every VIP.
//!
//! **Measured** (`scripts/bench --reps 1 --seconds 5 --peers nat,nat-xdp,nft --loads
//! tcp1,http-close,udp,mixed`, one run, this 2-vCPU machine shared with other work: noisy,
//! compare columns): one TCP stream 1.34 Gbit/s through AF_XDP NAT against 7.68 through the
//! TUN backend and 11.27 through nftables (6.6 us of daemon CPU per segment: every segment a
//! frame copied in and out by the kernel); `Connection: close` requests 10.6 k/s (TUN 7.0 k,
//! nftables 9.3 k: 1.15x); 64-byte UDP 80.6 k pkt/s (TUN 61.2 k, nftables 79.7 k; 6.2 us
//! daemon CPU per datagram against TUN's 9.8); the mixed load 1.43 k req/s beside 0.87 Gbit/s
//! of iperf3 (TUN 3.04 k beside 4.90). So: AF_XDP for small packets and many short
//! connections, TUN for bulk streams. Under a saturating stream the fill ring runs dry at
//! times (`kernel_fill_empty`: the worker, sharing 2 vCPUs with the load, falls behind) and
//! the kernel drops those frames; TCP recovers them by retransmission.

pub mod attach;
pub mod frame;
pub mod pool;
pub mod program;
pub mod ring;
pub mod route;
pub mod socket;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, watch};

use self::attach::{AttachMode, Attachment, LinkInfo};
use self::pool::TxFrames;
use self::program::MatchSet;
use self::socket::{BindMode, RingSizes, Umem, Xsk};
use self::worker::{Bound, Worker};
use super::tun::{CONTROL_QUEUE, Control, ShellControl};
use super::{PacketProcessor, ShellError, ShellStats, StatsSnapshot};

/// RX frames given to each socket's fill ring.
const RX_FRAMES: u32 = 1024;
/// TX frames of each worker: at most one completion ring's worth (see [`pool`]), and no
/// more than a TX ring holds.
const TX_FRAMES: u32 = 2048;
const SIZES: RingSizes = RingSizes { rx: 2048, tx: 2048, fill: 2048, comp: 2048 };
const _: () = assert!(TX_FRAMES <= SIZES.comp && TX_FRAMES <= SIZES.tx && RX_FRAMES <= SIZES.fill);
/// How long [`XdpShell::start`] waits for each worker.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Settings of the AF_XDP backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpConfig {
    /// Interfaces the classifier is attached to and sockets are bound on (the wire
    /// interfaces that carry VIP traffic and NAT replies). Output to another interface goes
    /// through the kernel (raw socket fallback).
    pub interfaces: Vec<String>,
    /// Worker threads (>= 1), at most one per RX queue.
    pub workers: usize,
    /// What the classifier redirects.
    pub matches: MatchSet,
}

/// Counters of the AF_XDP path (beside the shared [`ShellStats`]).
#[derive(Debug, Default)]
pub struct XdpStats {
    /// Frames taken from RX rings.
    pub rx_frames: AtomicU64,
    /// Frames put on TX rings.
    pub tx_frames: AtomicU64,
    /// `sendto` kicks (need_wakeup set).
    pub tx_kicks: AtomicU64,
    /// Outputs handed to the kernel through a raw socket (no route out of our interfaces,
    /// or no neighbour yet).
    pub tx_fallback: AtomicU64,
    pub tx_fallback_errors: AtomicU64,
    /// Why outputs took the fallback: no route, routed elsewhere, neighbour unknown.
    pub miss_no_route: AtomicU64,
    pub miss_other_interface: AtomicU64,
    pub miss_no_neighbour: AtomicU64,
    /// Frames dropped because no TX frame was free.
    pub no_tx_frame: AtomicU64,
    /// Received packets whose partial transport checksum was completed (offloading senders:
    /// see [`frame::complete_partial_checksum`]).
    pub csum_completed: AtomicU64,
    pub fill_overflow: AtomicU64,
    /// The kernel's socket counters (`XDP_STATISTICS`), summed when the workers stop.
    pub kernel_rx_dropped: AtomicU64,
    pub kernel_rx_ring_full: AtomicU64,
    pub kernel_fill_empty: AtomicU64,
}

/// A copy of [`XdpStats`] plus the shell's counters and how each interface is attached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XdpStatsSnapshot {
    pub shell: StatsSnapshot,
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub tx_kicks: u64,
    pub tx_fallback: u64,
    pub tx_fallback_errors: u64,
    pub miss_no_route: u64,
    pub miss_other_interface: u64,
    pub miss_no_neighbour: u64,
    pub no_tx_frame: u64,
    pub csum_completed: u64,
    pub kernel_rx_dropped: u64,
    pub kernel_rx_ring_full: u64,
    pub kernel_fill_empty: u64,
    /// Per interface: (name, native or generic XDP, zero-copy or copy sockets).
    pub modes: Vec<(String, &'static str, &'static str)>,
}

/// A running AF_XDP backend. Stop it with [`XdpShell::stop`]; dropping it stops it too.
pub struct XdpShell<P: PacketProcessor + 'static> {
    /// Locked only by reloads and the stop (never on the packet path).
    attachment: std::sync::Mutex<Attachment>,
    stop_tx: watch::Sender<bool>,
    controls: Vec<mpsc::Sender<Control<P>>>,
    workers: Vec<JoinHandle<Result<P, ShellError>>>,
    stats: Arc<ShellStats>,
    xstats: Arc<XdpStats>,
    modes: Vec<(String, &'static str, &'static str)>,
    stopped: bool,
}

impl<P: PacketProcessor + 'static> core::fmt::Debug for XdpShell<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XdpShell")
            .field("modes", &self.modes)
            .field("workers", &self.workers.len())
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

/// Reads the interfaces and detaches legacy programs found on them.
fn read_links(names: &[String]) -> Result<Vec<(String, LinkInfo)>, ShellError> {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ShellError::Runtime)?;
    rt.block_on(async {
        let h = super::netlink::connect()?;
        let mut out = Vec::new();
        for n in names {
            let info = attach::link_info(&h, n).await?;
            if info.xdp_attached {
                tracing::warn!(target: "clusterserverd", iface = %n, "an XDP program is attached to the wire interface: detaching it (netlink) before attaching ours");
                attach::detach_legacy(&h, info.ifindex).await?;
            }
            out.push((n.clone(), info));
        }
        Ok(out)
    })
}

impl<P: PacketProcessor + 'static> XdpShell<P> {
    /// Attaches the classifier to `cfg.interfaces`, opens the sockets and starts the
    /// workers with processors `factory(worker)`. Runs on a plain thread already in the
    /// right namespace (as [`super::tun::Shell::start`]).
    pub fn start<F>(cfg: XdpConfig, mut factory: F) -> Result<Self, ShellError>
    where
        F: FnMut(usize) -> P,
    {
        if cfg.interfaces.is_empty() || cfg.workers == 0 || cfg.workers > 64 {
            return Err(ShellError::Config(format!(
                "{} interfaces (>= 1), {} workers (1..=64)",
                cfg.interfaces.len(),
                cfg.workers
            )));
        }
        let links = read_links(&cfg.interfaces)?;
        let mut attachment = Attachment::new(&cfg.matches, &links)?;
        let max_q = attachment.ports.iter().map(|p| p.rx_queues).max().unwrap_or(1);
        let workers = cfg.workers.min(max_q as usize).max(1);
        let ports: Vec<(u32, [u8; 6])> = attachment.ports.iter().map(|p| (p.ifindex, p.mac)).collect();
        let mut parts = Vec::new();
        for w in 0..workers {
            parts.push(open_worker_sockets(&attachment, w, workers)?);
        }
        attachment.attach()?;
        let modes = attachment
            .ports
            .iter()
            .enumerate()
            .map(|(pi, p)| {
                let xdp = if p.mode == AttachMode::Driver { "native" } else { "generic" };
                let zc =
                    parts.iter().flat_map(|(_, s, _)| s).find(|b| b.port == pi).map_or("copy", |b| {
                        if b.xsk.mode == BindMode::ZeroCopy { "zero-copy" } else { "copy" }
                    });
                (p.name.clone(), xdp, zc)
            })
            .collect();
        let (stop_tx, _) = watch::channel(false);
        let mut shell = XdpShell {
            attachment: std::sync::Mutex::new(attachment),
            stop_tx,
            controls: Vec::new(),
            workers: Vec::new(),
            stats: Arc::new(ShellStats::default()),
            xstats: Arc::new(XdpStats::default()),
            modes,
            stopped: false,
        };
        let mut warm: Vec<std::net::IpAddr> = cfg.matches.replies.iter().map(|r| r.0).collect();
        warm.dedup();
        let origin = tokio::time::Instant::now();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for (w, (umem, socks, free)) in parts.into_iter().enumerate() {
            let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
            shell.controls.push(control_tx);
            let worker = Worker {
                id: w,
                processor: factory(w),
                stop: shell.stop_tx.subscribe(),
                control: control_rx,
                stats: Arc::clone(&shell.stats),
                xstats: Arc::clone(&shell.xstats),
                origin,
                ready: ready_tx.clone(),
                socks,
                umem,
                free,
                ports: ports.clone(),
                warm: warm.clone(),
            };
            let h = std::thread::Builder::new()
                .name(format!("cs-xdp-w{w}"))
                .spawn(move || worker.run())
                .map_err(ShellError::Runtime)?;
            shell.workers.push(h);
        }
        drop(ready_tx);
        if !crate::platform::linux::shell::all_ready(&ready_rx, shell.workers.len(), START_TIMEOUT) {
            shell.shutdown()?;
            return Err(ShellError::Config("an AF_XDP worker did not start".into()));
        }
        Ok(shell)
    }

    /// Counters so far (the kernel's socket counters are added when the workers stop).
    pub fn stats(&self) -> XdpStatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let x = &self.xstats;
        XdpStatsSnapshot {
            shell: self.stats.snapshot(),
            rx_frames: g(&x.rx_frames),
            tx_frames: g(&x.tx_frames),
            tx_kicks: g(&x.tx_kicks),
            tx_fallback: g(&x.tx_fallback),
            tx_fallback_errors: g(&x.tx_fallback_errors),
            miss_no_route: g(&x.miss_no_route),
            miss_other_interface: g(&x.miss_other_interface),
            miss_no_neighbour: g(&x.miss_no_neighbour),
            no_tx_frame: g(&x.no_tx_frame),
            csum_completed: g(&x.csum_completed),
            kernel_rx_dropped: g(&x.kernel_rx_dropped),
            kernel_rx_ring_full: g(&x.kernel_rx_ring_full),
            kernel_fill_empty: g(&x.kernel_fill_empty),
            modes: self.modes.clone(),
        }
    }

    /// How each interface is attached: (name, `native`|`generic`, `zero-copy`|`copy`).
    pub fn modes(&self) -> &[(String, &'static str, &'static str)] {
        &self.modes
    }

    /// As [`super::tun::Shell::apply`].
    pub fn apply(&self, f: Control<P>) -> Result<(), ShellError> {
        self.controller().apply(f)
    }

    /// As [`super::tun::Shell::controller`].
    pub fn controller(&self) -> ShellControl<P> {
        ShellControl::from_senders(self.controls.clone())
    }

    /// Replaces what the classifier redirects (a reload): map entries change in place.
    pub fn set_matches(&self, set: &MatchSet) -> Result<(), ShellError> {
        self.attachment.lock().unwrap_or_else(std::sync::PoisonError::into_inner).set_matches(set)
    }

    /// Stops the workers, detaches the programs and returns the counters and processors.
    pub fn stop(mut self) -> Result<(XdpStatsSnapshot, Vec<P>), ShellError> {
        let processors = self.shutdown()?;
        Ok((self.stats(), processors))
    }

    fn shutdown(&mut self) -> Result<Vec<P>, ShellError> {
        if self.stopped {
            return Ok(Vec::new());
        }
        self.stopped = true;
        // Detach first: frames go to the kernel again while the workers finish.
        self.attachment.lock().unwrap_or_else(std::sync::PoisonError::into_inner).detach();
        let _ = self.stop_tx.send(true);
        let mut first_err = None;
        let mut processors = Vec::new();
        for w in self.workers.drain(..) {
            match w.join().unwrap_or(Err(ShellError::WorkerPanicked)) {
                Ok(p) => processors.push(p),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(processors),
        }
    }
}

impl<P: PacketProcessor + 'static> Drop for XdpShell<P> {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Worker `w`'s UMEM and sockets (queues `q % workers == w` of every port), registered in
/// the XSK maps, fill rings stocked; plus its free TX frames ([`TX_FRAMES`] of them, behind
/// the RX frames of the sockets that bound; the UMEM is sized before binding, for every
/// queue the link reports, so frames of queues that refused stay unused).
fn open_worker_sockets(
    a: &Attachment,
    w: usize,
    workers: usize,
) -> Result<(Umem, Vec<Bound>, TxFrames), ShellError> {
    let mut wanted = Vec::new();
    for (pi, p) in a.ports.iter().enumerate() {
        for q in (0..p.rx_queues).filter(|q| *q as usize % workers == w) {
            wanted.push((pi, q));
        }
    }
    let n = u32::try_from(wanted.len()).unwrap_or(u32::MAX);
    let frames = RX_FRAMES.saturating_mul(n).saturating_add(TX_FRAMES);
    let umem = Umem::new(frames).map_err(|e| ShellError::Config(format!("UMEM of {frames} frames: {e}")))?;
    let mut socks: Vec<Bound> = Vec::new();
    // Ports whose queue count turned out lower than the link reported.
    let mut short: Vec<usize> = Vec::new();
    for &(pi, q) in &wanted {
        if short.contains(&pi) {
            continue;
        }
        let p = &a.ports[pi];
        let shared = socks.first().map(|b| b.xsk.fd());
        let mut xsk = match Xsk::open(&umem, p.ifindex, q, SIZES, shared) {
            Ok(x) => x,
            // IFLA_NUM_RX_QUEUES is what the device allocated; the kernel refuses a queue
            // at or past the number in use (veth: 1 of `nproc`) with EINVAL.
            Err(e) if q > 0 && e.raw_os_error() == Some(libc::EINVAL) => {
                short.push(pi);
                continue;
            }
            Err(e) => return Err(ShellError::Config(format!("AF_XDP socket on {} queue {q}: {e}", p.name))),
        };
        let base = socks.len() as u32 * RX_FRAMES;
        let fill: Vec<u64> = (base..base + RX_FRAMES).map(Umem::frame_addr).collect();
        xsk.fill.push(&fill);
        a.add_socket(pi, q, xsk.fd())?;
        socks.push(Bound { xsk, port: pi });
    }
    let used = socks.len() as u32 * RX_FRAMES;
    let free = (used..used + TX_FRAMES).map(Umem::frame_addr).collect();
    Ok((umem, socks, TxFrames::new(free, SIZES.comp)))
}
