//! The TUN shell proper: device, queues, worker threads, steering set-up and teardown.
//!
//! ## Contract
//!
//! * [`Shell::start`] runs on a thread that is already in the right network namespace (it
//!   creates the TUN, a netlink socket and the workers there; TECH-NOTES: never on a tokio
//!   worker that was moved with `setns`). It first removes leftovers of a crashed run with the
//!   same TUN name, table id and rule priority. It owns a small current-thread runtime for
//!   its netlink calls, so `start`, `stop` and drop must happen on a plain thread, never inside
//!   an async task (tokio panics on a nested `block_on` or a runtime dropped in async context).
//! * Each queue gets one worker thread with its own current-thread runtime and its own
//!   processor from the factory (`factory(queue_index)`). A worker reads one raw packet
//!   (virtio-net header + IP packet, possibly a 64 KB super-packet). If the processor takes
//!   it whole ([`PacketProcessor::process_whole`], NAT and direct routing, in place in the
//!   read buffer so a super-packet is never copied in user space), the output goes back in
//!   one write with the same header; otherwise it is split (up to [`IDEAL_BATCH_SIZE`] packets),
//!   every packet processed, and the `Tun` outputs written back in one `send_multiple`
//!   (GRO-coalesced). See [`super::vnet`].
//! * Besides packets, a worker wakes for its processor's housekeeping: every [`TICK`], at the
//!   time [`PacketProcessor::wake_at`] names (a batch of connection sync due), and when the
//!   socket named by [`PacketProcessor::wake_socket`] has something to read (sync from a
//!   peer, applied as it arrives).
//! * [`Shell::apply`] runs a closure on every worker's processor between two batches (server
//!   state, weights, active/backup: the control plane's changes reach the engines without a
//!   lock on the packet path). Bounded: a worker holds at most [`CONTROL_QUEUE`] pending.
//! * [`Shell::stop`] (or drop) signals the workers, joins them (their TUN queues close, so the
//!   non-persistent device disappears), removes the routes and rules and hands the processors
//!   back. Errors are returned, never panics; per-packet trouble is counted in [`ShellStats`].

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, watch};
use tun_rs::{
    AsyncDevice, DeviceBuilder, GROTable, IDEAL_BATCH_SIZE, SyncDevice, VIRTIO_NET_HDR_LEN, VirtioNetHdr,
};

use super::dr::DrSender;
use super::netlink::{self, SteerRule};
use super::{
    Disposition, MAX_PACKET, MAX_WHOLE, Output, PacketProcessor, ShellConfig, ShellError, ShellStats,
    StatsSnapshot, TICK, vnet,
};
use crate::time::Instant;

/// Room in front of every output packet for the virtio-net header `send_multiple` writes.
const TX_OFFSET: usize = VIRTIO_NET_HDR_LEN;
/// Capacity of every output buffer: room for a whole coalesced super-packet. tun-rs's GRO
/// appends the following segments of a flow into the first one's buffer and refuses
/// (silently: each segment is then written with its own syscall) when the buffer's capacity
/// is below `2 * offset + coalesced length`.
const TX_CAPACITY: usize = 2 * TX_OFFSET + MAX_READ;
/// Largest IP packet a TUN read can return (one non-GSO packet, or a whole super-packet).
const MAX_READ: usize = 65535;
/// How long [`Shell::start`] waits for each worker to be reading.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Most reads handled per wake-up of a worker's select.
const BURST: usize = 32;

/// Pending control closures per worker.
pub const CONTROL_QUEUE: usize = 64;

/// A change applied to each worker's processor by [`Shell::apply`].
pub type Control<P> = Arc<dyn Fn(&mut P) + Send + Sync>;

/// Queues changes on a shell's workers from any thread (see [`Shell::controller`]).
pub struct ShellControl<P: PacketProcessor + 'static> {
    controls: Vec<mpsc::Sender<Control<P>>>,
}

impl<P: PacketProcessor + 'static> Clone for ShellControl<P> {
    fn clone(&self) -> Self {
        ShellControl { controls: self.controls.clone() }
    }
}

impl<P: PacketProcessor + 'static> core::fmt::Debug for ShellControl<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ShellControl").field("workers", &self.controls.len()).finish()
    }
}

impl<P: PacketProcessor + 'static> ShellControl<P> {
    /// A controller over these workers' control queues (for other backends of the shell).
    pub(super) fn from_senders(controls: Vec<mpsc::Sender<Control<P>>>) -> Self {
        ShellControl { controls }
    }

    /// As [`Shell::apply`].
    pub fn apply(&self, f: Control<P>) -> Result<(), ShellError> {
        for c in &self.controls {
            c.try_send(Arc::clone(&f)).map_err(|e| ShellError::Config(format!("control queue: {e}")))?;
        }
        Ok(())
    }
}

/// A running shell. Stop it with [`Shell::stop`]; dropping it stops it too (errors ignored).
pub struct Shell<P: PacketProcessor + 'static> {
    cfg: ShellConfig,
    steer: Vec<SteerRule>,
    stop_tx: watch::Sender<bool>,
    controls: Vec<mpsc::Sender<Control<P>>>,
    workers: Vec<JoinHandle<Result<P, ShellError>>>,
    stats: Arc<ShellStats>,
    rt: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
    stopped: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime, ShellError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ShellError::Runtime)
}

impl<P: PacketProcessor + 'static> core::fmt::Debug for Shell<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Shell")
            .field("cfg", &self.cfg)
            .field("steer", &self.steer)
            .field("workers", &self.workers.len())
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl<P: PacketProcessor + 'static> Shell<P> {
    /// Creates the TUN with `cfg.queues` queues, installs `steer`, and starts one worker per
    /// queue with the processor `factory(queue)`.
    pub fn start<F>(cfg: ShellConfig, steer: Vec<SteerRule>, mut factory: F) -> Result<Self, ShellError>
    where
        F: FnMut(usize) -> P,
    {
        if cfg.queues == 0 || cfg.queues > 64 || cfg.mtu < 576 || cfg.mtu > 1500 {
            return Err(ShellError::Config(format!(
                "queues {} (1..=64), mtu {} (576..=1500)",
                cfg.queues, cfg.mtu
            )));
        }
        let rt = runtime()?;
        let handle = rt.block_on(async {
            let h = netlink::connect()?;
            netlink::cleanup(&h, &cfg.tun_name, cfg.table_id, cfg.rule_priority).await?;
            Ok::<_, ShellError>(h)
        })?;
        let tun_err = |source| ShellError::Tun { name: cfg.tun_name.clone(), source };
        let first = DeviceBuilder::new()
            .name(cfg.tun_name.clone())
            .mtu(cfg.mtu)
            .offload(cfg.offload)
            .multi_queue(cfg.queues > 1)
            .enable(true)
            .build_sync()
            .map_err(tun_err)?;
        let index = first.if_index().map_err(tun_err)?;
        let mut devices = Vec::with_capacity(cfg.queues);
        for _ in 1..cfg.queues {
            devices.push(first.try_clone().map_err(tun_err)?);
        }
        devices.insert(0, first);
        let (stop_tx, _) = watch::channel(false);
        let mut shell = Shell {
            cfg,
            steer,
            stop_tx,
            controls: Vec::new(),
            workers: Vec::new(),
            stats: Arc::new(ShellStats::default()),
            rt,
            handle,
            stopped: false,
        };
        // From here on, dropping `shell` on an error tears down whatever was set up.
        netlink::tune_tun_sysctls(&shell.cfg.tun_name)?;
        shell.rt.block_on(netlink::install(
            &shell.handle,
            index,
            shell.cfg.table_id,
            shell.cfg.rule_priority,
            &shell.steer,
        ))?;
        let origin = tokio::time::Instant::now();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for (q, dev) in devices.into_iter().enumerate() {
            let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
            shell.controls.push(control_tx);
            let worker = Worker {
                queue: q,
                processor: factory(q),
                stop: shell.stop_tx.subscribe(),
                control: control_rx,
                stats: Arc::clone(&shell.stats),
                dr_interface: shell.cfg.dr_interface.clone(),
                offload: shell.cfg.offload,
                origin,
                ready: ready_tx.clone(),
            };
            let h = std::thread::Builder::new()
                .name(format!("cs-tun-q{q}"))
                .spawn(move || worker.run(dev))
                .map_err(ShellError::Runtime)?;
            shell.workers.push(h);
        }
        drop(ready_tx);
        // Return only once every queue reads (or report the first worker's set-up error).
        for _ in 0..shell.workers.len() {
            if ready_rx.recv_timeout(START_TIMEOUT) != Ok(true) {
                shell.shutdown()?;
                return Err(ShellError::Config("a worker did not start".into()));
            }
        }
        Ok(shell)
    }

    /// Counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Runs `f` on every worker's processor, between two batches. Fails if a worker has
    /// stopped or already holds [`CONTROL_QUEUE`] pending changes (the caller retries).
    pub fn apply(&self, f: Control<P>) -> Result<(), ShellError> {
        for c in &self.controls {
            c.try_send(Arc::clone(&f)).map_err(|e| ShellError::Config(format!("control queue: {e}")))?;
        }
        Ok(())
    }

    /// A `Send` handle that queues changes like [`Shell::apply`], for threads other than the
    /// shell's owner (the admin channel).
    pub fn controller(&self) -> ShellControl<P> {
        ShellControl { controls: self.controls.clone() }
    }

    /// Stops the workers, removes the steering and returns the final counters and the
    /// processors (one per queue). The first worker error, if any, is returned after the
    /// teardown has been done.
    pub fn stop(mut self) -> Result<(StatsSnapshot, Vec<P>), ShellError> {
        let processors = self.shutdown()?;
        Ok((self.stats.snapshot(), processors))
    }

    fn shutdown(&mut self) -> Result<Vec<P>, ShellError> {
        if self.stopped {
            return Ok(Vec::new());
        }
        self.stopped = true;
        // Receivers may all be gone already (workers that failed): nothing to tell then.
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
        let removed = self.rt.block_on(netlink::remove(
            &self.handle,
            &self.cfg.tun_name,
            self.cfg.table_id,
            self.cfg.rule_priority,
        ));
        match (first_err, removed) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(_)) => Ok(processors),
        }
    }
}

impl<P: PacketProcessor + 'static> Drop for Shell<P> {
    fn drop(&mut self) {
        // Best effort: an explicit `stop` reports errors; a drop cannot.
        let _ = self.shutdown();
    }
}

/// A whole packet's processing result, to be sent.
struct Whole {
    d: Disposition,
    /// Length of the packet read (an output of the same length kept its layout).
    in_len: usize,
    /// The virtio-net header to send with an output of the same layout.
    hdr: VirtioNetHdr,
    /// MTU-sized packets it stands for.
    segments: u64,
}

/// One queue's loop.
struct Worker<P> {
    queue: usize,
    processor: P,
    stop: watch::Receiver<bool>,
    control: mpsc::Receiver<Control<P>>,
    stats: Arc<ShellStats>,
    dr_interface: Option<String>,
    /// Reads carry a virtio-net header.
    offload: bool,
    origin: tokio::time::Instant,
    /// `true` once reading, `false` if set-up failed.
    ready: std::sync::mpsc::Sender<bool>,
}

/// The buffers of one worker, allocated once.
struct Buffers {
    /// virtio-net header + one raw read (a whole packet forwarded in place is sent from
    /// here, its header rewritten).
    original: Vec<u8>,
    /// virtio-net header + the output of a whole packet the processor wrote elsewhere.
    whole: Vec<u8>,
    /// Split packets.
    rx: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    /// Outputs for the TUN, each `TX_OFFSET` + packet (lengths change per batch), each with
    /// [`TX_CAPACITY`] so that GRO can coalesce into it.
    tx: Vec<Vec<u8>>,
    gro: GROTable,
}

impl Buffers {
    fn new() -> Self {
        Buffers {
            original: vec![0; VIRTIO_NET_HDR_LEN + MAX_READ],
            whole: vec![0; VIRTIO_NET_HDR_LEN + MAX_WHOLE],
            rx: vec![vec![0; MAX_READ]; IDEAL_BATCH_SIZE],
            sizes: vec![0; IDEAL_BATCH_SIZE],
            tx: (0..IDEAL_BATCH_SIZE).map(|_| Vec::with_capacity(TX_CAPACITY)).collect(),
            gro: GROTable::new(),
        }
    }
}

impl<P: PacketProcessor> Worker<P> {
    fn run(self, dev: SyncDevice) -> Result<P, ShellError> {
        let rt = runtime()?;
        rt.block_on(self.run_async(dev))
    }

    /// A duplicate of the processor's [`PacketProcessor::wake_socket`], registered with this
    /// worker's reactor for its readiness only (the processor reads its own descriptor).
    fn watch_wake_socket(&self) -> Result<Option<tokio::net::UdpSocket>, ShellError> {
        let Some(fd) = self.processor.wake_socket() else { return Ok(None) };
        let io = |e| ShellError::Tun { name: format!("queue {} wake socket", self.queue), source: e };
        let dup = std::net::UdpSocket::from(fd.try_clone_to_owned().map_err(io)?);
        dup.set_nonblocking(true).map_err(io)?;
        tokio::net::UdpSocket::from_std(dup).map(Some).map_err(io)
    }

    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    async fn run_async(mut self, dev: SyncDevice) -> Result<P, ShellError> {
        let wake_socket = match self.watch_wake_socket() {
            Ok(w) => w,
            Err(e) => {
                let _ = self.ready.send(false);
                return Err(e);
            }
        };
        let (dev, mut dr) = match self.setup(dev).await {
            Ok(x) => {
                let _ = self.ready.send(true);
                x
            }
            Err(e) => {
                let _ = self.ready.send(false);
                return Err(e);
            }
        };
        let mut b = Buffers::new();
        let mut hops = Vec::new();
        let mut warmed_at: Option<Instant> = None;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One timer, moved when the processor's wake-up time changes (a new timer per read
        // would cost more than a small packet's processing).
        let mut wake_at: Option<Instant> = None;
        let wake = tokio::time::sleep_until(self.origin);
        tokio::pin!(wake);
        loop {
            let mut want = self.processor.wake_at();
            // Due already (changes queued by the packets just handled): no timer for that.
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
            let read = tokio::select! {
                biased;
                // Changes queued before a stop are applied before it.
                Some(f) = self.control.recv() => {
                    f(&mut self.processor);
                    continue;
                }
                _ = self.stop.changed() => return Ok(self.processor),
                _ = tick.tick() => {
                    let now = self.now();
                    self.processor.on_tick(now);
                    if let Some(d) = dr.as_mut()
                        && warmed_at.is_none_or(|t| now.saturating_since(t) >= super::dr::WARM_EVERY)
                    {
                        warmed_at = Some(now);
                        hops.clear();
                        self.processor.l2_next_hops(&mut hops);
                        d.warm(now, &hops).await;
                    }
                    continue;
                }
                _ = &mut wake, if wake_at.is_some() => {
                    wake_at = None;
                    let now = self.now();
                    self.processor.on_wake(now);
                    continue;
                }
                // Before the device: what arrives there is rate-limited by its sender and
                // read in bounded steps, so it cannot starve the packets.
                r = async { wake_socket.as_ref()?.readable().await.ok() }, if wake_socket.is_some() => {
                    if let (Some(()), Some(sock)) = (r, wake_socket.as_ref()) {
                        let now = self.now();
                        if self.processor.on_readable(now) {
                            // Read empty: clear the readiness (a `WouldBlock` from `try_io`
                            // does). A datagram landing in between waits for the next tick
                            // at worst.
                            let _ = sock.try_io(tokio::io::Interest::READABLE, || {
                                Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                            });
                        }
                    }
                    continue;
                }
                r = dev.recv(&mut b.original) => r,
            };
            let len = match read {
                Ok(len) => len,
                // A device error (it went away, or is broken): stop this worker.
                Err(e) => {
                    return Err(ShellError::Tun { name: format!("queue {} read", self.queue), source: e });
                }
            };
            ShellStats::add(&self.stats.rx_batches, 1);
            self.handle_read(&dev, &mut b, len, dr.as_mut()).await;
            // Whatever else is queued already is read without going back through the select
            // (its polls cost as much as a small packet's processing); bounded, so control
            // changes, ticks and the stop are never held off for long.
            for _ in 1..BURST {
                let len = match dev.try_recv(&mut b.original) {
                    Ok(len) => len,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        return Err(ShellError::Tun {
                            name: format!("queue {} read", self.queue),
                            source: e,
                        });
                    }
                };
                ShellStats::add(&self.stats.rx_batches, 1);
                self.handle_read(&dev, &mut b, len, dr.as_mut()).await;
            }
        }
    }

    /// One read: given whole to the processor when it takes it (one write back), else split
    /// into packets, processed one by one and written back GRO-coalesced. Malformed reads
    /// are counted in `rx_errors`.
    async fn handle_read(
        &mut self,
        dev: &AsyncDevice,
        b: &mut Buffers,
        len: usize,
        dr: Option<&mut DrSender>,
    ) {
        let now = self.now();
        if !self.offload {
            // A plain packet, no header.
            match (b.original.get(..len), b.rx.first_mut().and_then(|r| r.get_mut(..len))) {
                (Some(pkt), Some(out)) => out.copy_from_slice(pkt),
                _ => {
                    ShellStats::add(&self.stats.rx_errors, 1);
                    return;
                }
            }
            b.sizes[0] = len;
            ShellStats::add(&self.stats.rx_packets, 1);
            self.process_and_send(dev, b, 1, dr).await;
            return;
        }
        let Some((head, pkt)) =
            b.original.get_mut(..len).and_then(|r| r.split_at_mut_checked(VIRTIO_NET_HDR_LEN))
        else {
            ShellStats::add(&self.stats.rx_errors, 1);
            return;
        };
        let Ok(hdr) = VirtioNetHdr::decode(head) else {
            ShellStats::add(&self.stats.rx_errors, 1);
            return;
        };
        if let Some((out_hdr, segments)) = vnet::whole(&hdr, pkt)
            && let Some((d, output)) = self.processor.process_whole(
                now,
                pkt,
                &mut b.whole[VIRTIO_NET_HDR_LEN..],
                u32::try_from(segments).unwrap_or(u32::MAX),
            )
        {
            ShellStats::add(&self.stats.rx_packets, segments);
            let whole = Whole { d, in_len: pkt.len(), hdr: out_hdr, segments };
            // Either buffer has room for the virtio-net header in front of the packet.
            let out = match output {
                Output::InPlace => &mut b.original,
                Output::Tx => &mut b.whole,
            };
            self.write_whole(now, dev, out, whole, dr).await;
            return;
        }
        let n = match vnet::split(hdr, pkt, &mut b.rx, &mut b.sizes) {
            Ok(n) => n,
            Err(_) => {
                ShellStats::add(&self.stats.rx_errors, 1);
                return;
            }
        };
        ShellStats::add(&self.stats.rx_packets, n as u64);
        self.process_and_send(dev, b, n, dr).await;
    }

    /// Processes `b.rx[..n]` and writes the TUN outputs in one GRO-coalescing batch.
    async fn process_and_send(
        &mut self,
        dev: &AsyncDevice,
        b: &mut Buffers,
        n: usize,
        dr: Option<&mut DrSender>,
    ) {
        let n_out = self.process_batch(b, n, dr).await;
        if n_out > 0 {
            match dev.send_multiple(&mut b.gro, &mut b.tx[..n_out], TX_OFFSET).await {
                Ok(_) => ShellStats::add(&self.stats.tx_tun_packets, n_out as u64),
                Err(_) => ShellStats::add(&self.stats.tx_tun_errors, 1),
            }
        }
    }

    /// Sends a whole packet's output (to the TUN or framed to a next hop): with the read's
    /// header when it kept its length (the rewritten or copied packet), without offload
    /// otherwise (a packet the processor made).
    async fn write_whole(
        &self,
        now: Instant,
        dev: &AsyncDevice,
        out: &mut [u8],
        w: Whole,
        dr: Option<&mut DrSender>,
    ) {
        let (len, next_hop) = match w.d {
            Disposition::Tun { len } => (len, None),
            Disposition::L2 { len, next_hop } => (len, Some(next_hop)),
            Disposition::Drop => (0, None),
        };
        if len == 0 || len > MAX_WHOLE {
            ShellStats::add(&self.stats.dropped, w.segments);
            return;
        }
        let (h, n) = if len == w.in_len { (w.hdr, w.segments) } else { (VirtioNetHdr::default(), 1) };
        if let Some(next_hop) = next_hop {
            let packet = &out[VIRTIO_NET_HDR_LEN..VIRTIO_NET_HDR_LEN + len];
            match dr {
                Some(d) => d.send_whole(now, h, packet, next_hop, &self.stats, n).await,
                None => ShellStats::add(&self.stats.dropped, n),
            }
            return;
        }
        if h.encode(&mut out[..VIRTIO_NET_HDR_LEN]).is_err() {
            ShellStats::add(&self.stats.tx_tun_errors, 1);
            return;
        }
        match dev.send(&out[..VIRTIO_NET_HDR_LEN + len]).await {
            Ok(_) => ShellStats::add(&self.stats.tx_tun_packets, n),
            Err(_) => ShellStats::add(&self.stats.tx_tun_errors, 1),
        }
    }

    async fn setup(&self, dev: SyncDevice) -> Result<(AsyncDevice, Option<DrSender>), ShellError> {
        let name = format!("queue {}", self.queue);
        let dev = AsyncDevice::new(dev).map_err(|source| ShellError::Tun { name, source })?;
        let dr = match &self.dr_interface {
            Some(iface) => Some(DrSender::open(iface).await?),
            None => None,
        };
        Ok((dev, dr))
    }

    /// Runs the processor over `n` received packets; returns how many TUN outputs are queued
    /// in `b.tx[..]` (L2 outputs are sent at once).
    async fn process_batch(&mut self, b: &mut Buffers, n: usize, mut dr: Option<&mut DrSender>) -> usize {
        let now = self.now();
        let mut n_out = 0;
        for i in 0..n {
            let rx = &b.rx[i][..b.sizes[i]];
            let tx = &mut b.tx[n_out];
            tx.clear();
            tx.resize(TX_OFFSET + MAX_PACKET, 0);
            match self.processor.process(now, rx, &mut tx[TX_OFFSET..]) {
                Disposition::Tun { len } if len > 0 && len <= MAX_PACKET => {
                    tx.truncate(TX_OFFSET + len);
                    n_out += 1;
                }
                Disposition::L2 { len, next_hop } if len > 0 && len <= MAX_PACKET => {
                    let packet = &tx[TX_OFFSET..TX_OFFSET + len];
                    match dr.as_deref_mut() {
                        Some(d) => d.send(now, packet, next_hop, &self.stats).await,
                        None => ShellStats::add(&self.stats.dropped, 1),
                    }
                }
                _ => ShellStats::add(&self.stats.dropped, 1),
            }
        }
        n_out
    }
}
