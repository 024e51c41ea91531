//! One TUN queue's loop: wake up, read every packet that is ready (up to [`BURST`]), process
//! the whole burst under one lock of the processor, then write the outputs.
//!
//! ## Why read first, then process, then write
//!
//! A worker may share its processor with the other queues' workers (one engine for every
//! queue, [`super::tun::Shell::start_shared`]): the processor sits behind a mutex, taken once
//! per burst, never across a syscall, so the queues' reads and writes (most of a packet's
//! cost: the kernel's copy and forwarding work) run in parallel and only the engine's own
//! work (well under a microsecond a packet) is serialised. A worker that owns its processor
//! takes the same uncontended lock (some tens of nanoseconds per burst).
//!
//! Reading the burst before writing also means one pass through the runtime's select (its
//! polls, the timer) for every packet that was queued when the worker woke, instead of one per
//! packet, and the processor's per-call bookkeeping (time, sync flush checks) once per
//! burst.
//!
//! ## Owner and helpers
//!
//! Of the workers sharing a processor, queue 0 is its **owner**: it alone runs the control
//! closures ([`super::tun::Shell::apply`]), the tick's housekeeping, the processor's wake-ups
//! and its wake socket, so each happens once per processor. Every worker keeps its own
//! direct-routing sender and warms its neighbour entries.
//!
//! Order: the outputs of one queue leave in the order their packets were read (a split read in
//! the middle of a burst ends the locked run there, its outputs follow the ones before it).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{mpsc, watch};
use tun_rs::{AsyncDevice, GROTable, IDEAL_BATCH_SIZE, SyncDevice, VIRTIO_NET_HDR_LEN, VirtioNetHdr};

use super::dr::DrSender;
use super::tun::Control;
use super::{
    Disposition, MAX_PACKET, MAX_WHOLE, Output, PacketProcessor, ShellError, ShellStats, TICK, vnet,
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

/// Most reads handled per wake-up (one locked run of the processor). Bounded, so control
/// changes, ticks and the stop are never held off for long.
pub const BURST: usize = 32;

/// A processor as the workers hold it (shared by several queues, or a queue's own).
pub type Shared<P> = Arc<Mutex<P>>;

fn lock<P>(p: &Shared<P>) -> MutexGuard<'_, P> {
    // A panicking worker aborts the process (release profile); in tests the processor's
    // state is still the best there is.
    p.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A whole packet's processing result, to be sent.
#[derive(Clone, Copy, Debug)]
struct Whole {
    d: Disposition,
    /// Length of the packet read (an output of the same length kept its layout).
    in_len: usize,
    /// The virtio-net header to send with an output of the same layout.
    hdr: VirtioNetHdr,
    /// MTU-sized packets it stands for.
    segments: u64,
    output: Output,
}

/// One read of a burst.
struct Slot {
    /// virtio-net header + the read (a whole packet forwarded in place is sent from here,
    /// its header rewritten).
    original: Vec<u8>,
    /// virtio-net header + the output of a whole packet the processor wrote elsewhere.
    whole: Vec<u8>,
    len: usize,
    done: Option<Whole>,
}

/// The buffers of one worker, allocated once (pages are touched only as reads fill them).
struct Buffers {
    slots: Vec<Slot>,
    /// Split packets.
    rx: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    /// Outputs for the TUN, each `TX_OFFSET` + packet (lengths change per batch), each with
    /// [`TX_CAPACITY`] so that GRO can coalesce into it.
    tx: Vec<Vec<u8>>,
    /// Direct-routing outputs of split packets, their next hops and lengths, sent after
    /// the lock.
    l2: Vec<Vec<u8>>,
    hops: Vec<(std::net::IpAddr, usize)>,
    gro: GROTable,
}

impl Buffers {
    fn new() -> Self {
        let slot = || Slot {
            original: vec![0; VIRTIO_NET_HDR_LEN + MAX_READ],
            whole: vec![0; VIRTIO_NET_HDR_LEN + MAX_WHOLE],
            len: 0,
            done: None,
        };
        Buffers {
            slots: (0..BURST).map(|_| slot()).collect(),
            rx: vec![vec![0; MAX_READ]; IDEAL_BATCH_SIZE],
            sizes: vec![0; IDEAL_BATCH_SIZE],
            tx: (0..IDEAL_BATCH_SIZE).map(|_| Vec::with_capacity(TX_CAPACITY)).collect(),
            l2: vec![vec![0; MAX_PACKET]; IDEAL_BATCH_SIZE],
            hops: Vec::with_capacity(IDEAL_BATCH_SIZE),
            gro: GROTable::new(),
        }
    }
}

/// What a locked run left to send after a split read: `tx[..tun]` (and `l2` per `hops`).
#[derive(Clone, Copy, Debug)]
struct SplitOut {
    tun: usize,
}

/// One queue's loop.
pub(super) struct Worker<P> {
    pub queue: usize,
    pub processor: Shared<P>,
    /// Runs control closures, housekeeping and wake-ups (module docs).
    pub owner: bool,
    pub stop: watch::Receiver<bool>,
    pub control: mpsc::Receiver<Control<P>>,
    pub stats: Arc<ShellStats>,
    pub dr_interface: Option<String>,
    /// Reads carry a virtio-net header.
    pub offload: bool,
    pub origin: tokio::time::Instant,
    /// `true` once reading, `false` if set-up failed.
    pub ready: std::sync::mpsc::Sender<bool>,
}

impl<P: PacketProcessor> Worker<P> {
    pub fn run(self, dev: SyncDevice) -> Result<(), ShellError> {
        let rt = super::tun::runtime()?;
        rt.block_on(self.run_async(dev))
    }

    fn read_err(&self, e: std::io::Error) -> ShellError {
        ShellError::Tun { name: format!("queue {} read", self.queue), source: e }
    }

    /// A duplicate of the processor's [`PacketProcessor::wake_socket`] (owner only),
    /// registered with this worker's reactor for its readiness only (the processor reads its
    /// own descriptor).
    fn watch_wake_socket(&self) -> Result<Option<tokio::net::UdpSocket>, ShellError> {
        if !self.owner {
            return Ok(None);
        }
        let p = lock(&self.processor);
        let Some(fd) = p.wake_socket() else { return Ok(None) };
        let io = |e| ShellError::Tun { name: format!("queue {} wake socket", self.queue), source: e };
        let dup = std::net::UdpSocket::from(fd.try_clone_to_owned().map_err(io)?);
        dup.set_nonblocking(true).map_err(io)?;
        tokio::net::UdpSocket::from_std(dup).map(Some).map_err(io)
    }

    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    async fn run_async(mut self, dev: SyncDevice) -> Result<(), ShellError> {
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
        let owner = self.owner;
        loop {
            if owner {
                let want = self.due_wake();
                if want != wake_at {
                    wake_at = want;
                    if let Some(t) = want {
                        wake.as_mut().reset(self.origin + std::time::Duration::from_nanos(t.as_nanos()));
                    }
                }
            }
            let read = tokio::select! {
                biased;
                // Changes queued before a stop are applied before it.
                Some(f) = self.control.recv(), if owner => {
                    f(&mut lock(&self.processor));
                    continue;
                }
                _ = self.stop.changed() => return Ok(()),
                _ = tick.tick() => {
                    let now = self.now();
                    if owner {
                        lock(&self.processor).on_tick(now);
                    }
                    if let Some(d) = dr.as_mut()
                        && warmed_at.is_none_or(|t| now.saturating_since(t) >= super::dr::WARM_EVERY)
                    {
                        warmed_at = Some(now);
                        hops.clear();
                        lock(&self.processor).l2_next_hops(&mut hops);
                        d.warm(now, &hops).await;
                    }
                    continue;
                }
                _ = &mut wake, if owner && wake_at.is_some() => {
                    wake_at = None;
                    let now = self.now();
                    lock(&self.processor).on_wake(now);
                    continue;
                }
                // Before the device: what arrives there is rate-limited by its sender and
                // read in bounded steps, so it cannot starve the packets.
                r = async { wake_socket.as_ref()?.readable().await.ok() }, if wake_socket.is_some() => {
                    if let (Some(()), Some(sock)) = (r, wake_socket.as_ref()) {
                        let now = self.now();
                        if lock(&self.processor).on_readable(now) {
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
                r = dev.recv(&mut b.slots[0].original) => r,
            };
            b.slots[0].len = read.map_err(|e| self.read_err(e))?;
            // Whatever else is queued already is read without going back through the select.
            let mut n = 1;
            while n < BURST {
                match dev.try_recv(&mut b.slots[n].original) {
                    Ok(len) => {
                        b.slots[n].len = len;
                        n += 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(self.read_err(e)),
                }
            }
            ShellStats::add(&self.stats.rx_batches, n as u64);
            ShellStats::add(&self.stats.rx_bursts, 1);
            self.handle_burst(&dev, &mut b, n, dr.as_mut()).await;
        }
    }

    /// The processor's next wake-up, after running one that is due already (changes queued
    /// by the packets just handled: no timer for that).
    fn due_wake(&self) -> Option<Instant> {
        let mut p = lock(&self.processor);
        let mut want = p.wake_at();
        if want.is_some_and(|t| t <= self.now()) {
            p.on_wake(self.now());
            want = p.wake_at();
        }
        want
    }

    /// `b.slots[..n]`: runs of whole packets processed under one lock and then written; a read
    /// that must be split is processed at the end of its run and written after it.
    async fn handle_burst(
        &self,
        dev: &AsyncDevice,
        b: &mut Buffers,
        n: usize,
        mut dr: Option<&mut DrSender>,
    ) {
        let now = self.now();
        let mut from = 0;
        while from < n {
            let (end, split) = self.process_run(now, b, from, n);
            for k in from..end {
                if let Some(w) = b.slots[k].done.take() {
                    self.write_whole(now, dev, &mut b.slots[k], w, dr.as_deref_mut()).await;
                }
            }
            from = end;
            if let Some(s) = split {
                self.send_split(now, dev, b, s, dr.as_deref_mut()).await;
                from += 1;
            }
        }
    }

    /// Under one lock: processes `slots[from..n]` whole until one must be split (processed
    /// too, into `b.tx` / `b.l2`); returns where the whole run ends and the split output.
    fn process_run(&self, now: Instant, b: &mut Buffers, from: usize, n: usize) -> (usize, Option<SplitOut>) {
        let mut p = lock(&self.processor);
        for k in from..n {
            let slot = &mut b.slots[k];
            slot.done = None;
            let len = slot.len;
            if !self.offload {
                // A plain packet, no header.
                let (Some(pkt), Some(out)) =
                    (slot.original.get(..len), b.rx.first_mut().and_then(|r| r.get_mut(..len)))
                else {
                    ShellStats::add(&self.stats.rx_errors, 1);
                    continue;
                };
                out.copy_from_slice(pkt);
                b.sizes[0] = len;
                ShellStats::add(&self.stats.rx_packets, 1);
                return (k, Some(self.process_split(&mut *p, now, b, 1)));
            }
            let Some((head, pkt)) =
                slot.original.get_mut(..len).and_then(|r| r.split_at_mut_checked(VIRTIO_NET_HDR_LEN))
            else {
                ShellStats::add(&self.stats.rx_errors, 1);
                continue;
            };
            let Ok(hdr) = VirtioNetHdr::decode(head) else {
                ShellStats::add(&self.stats.rx_errors, 1);
                continue;
            };
            if let Some((out_hdr, segments)) = vnet::whole(&hdr, pkt)
                && let Some((d, output)) = p.process_whole(
                    now,
                    pkt,
                    &mut slot.whole[VIRTIO_NET_HDR_LEN..],
                    u32::try_from(segments).unwrap_or(u32::MAX),
                )
            {
                ShellStats::add(&self.stats.rx_packets, segments);
                slot.done = Some(Whole { d, in_len: pkt.len(), hdr: out_hdr, segments, output });
                continue;
            }
            let Ok(m) = vnet::split(hdr, pkt, &mut b.rx, &mut b.sizes) else {
                ShellStats::add(&self.stats.rx_errors, 1);
                continue;
            };
            ShellStats::add(&self.stats.rx_packets, m as u64);
            return (k, Some(self.process_split(&mut *p, now, b, m)));
        }
        (n, None)
    }

    /// Runs the processor over `b.rx[..n]`: TUN outputs into `b.tx`, direct-routing ones
    /// into `b.l2` with their next hops in `b.hops`.
    fn process_split(&self, p: &mut P, now: Instant, b: &mut Buffers, n: usize) -> SplitOut {
        let mut n_out = 0;
        b.hops.clear();
        for i in 0..n {
            let rx = &b.rx[i][..b.sizes[i]];
            let tx = &mut b.tx[n_out];
            tx.clear();
            tx.resize(TX_OFFSET + MAX_PACKET, 0);
            match p.process(now, rx, &mut tx[TX_OFFSET..]) {
                Disposition::Tun { len } if len > 0 && len <= MAX_PACKET => {
                    tx.truncate(TX_OFFSET + len);
                    n_out += 1;
                }
                Disposition::L2 { len, next_hop } if len > 0 && len <= MAX_PACKET => {
                    let k = b.hops.len();
                    b.l2[k][..len].copy_from_slice(&tx[TX_OFFSET..TX_OFFSET + len]);
                    b.hops.push((next_hop, len));
                }
                _ => ShellStats::add(&self.stats.dropped, 1),
            }
        }
        SplitOut { tun: n_out }
    }

    /// Sends what [`Worker::process_split`] left: TUN outputs in one GRO-coalescing batch,
    /// then the direct-routed ones.
    async fn send_split(
        &self,
        now: Instant,
        dev: &AsyncDevice,
        b: &mut Buffers,
        s: SplitOut,
        dr: Option<&mut DrSender>,
    ) {
        if s.tun > 0 {
            match dev.send_multiple(&mut b.gro, &mut b.tx[..s.tun], TX_OFFSET).await {
                Ok(_) => ShellStats::add(&self.stats.tx_tun_packets, s.tun as u64),
                Err(_) => ShellStats::add(&self.stats.tx_tun_errors, 1),
            }
        }
        if b.hops.is_empty() {
            return;
        }
        match dr {
            Some(d) => {
                for (k, &(hop, len)) in b.hops.iter().enumerate() {
                    d.send(now, &b.l2[k][..len], hop, &self.stats).await;
                }
            }
            None => ShellStats::add(&self.stats.dropped, b.hops.len() as u64),
        }
    }

    /// Sends a whole packet's output (to the TUN or framed to a next hop): with the read's
    /// header when it kept its length (the rewritten or copied packet), without offload
    /// otherwise (a packet the processor made).
    async fn write_whole(
        &self,
        now: Instant,
        dev: &AsyncDevice,
        slot: &mut Slot,
        w: Whole,
        dr: Option<&mut DrSender>,
    ) {
        let out = match w.output {
            Output::InPlace => &mut slot.original,
            Output::Tx => &mut slot.whole,
        };
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
}
