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
//! * Each queue gets one worker thread with its own current-thread runtime ([`super::worker`]).
//!   The processors: one per queue from a factory ([`Shell::start`], `factory(queue_index)`),
//!   or one shared by every queue ([`Shell::start_shared`]: what the daemon runs, so a NAT
//!   reply meets its connection whichever queue the kernel hands it to). A worker wakes,
//!   reads every packet that is ready (up to [`BURST`] reads: virtio-net header + IP packet,
//!   possibly a 64 KB super-packet), processes them under one lock of its processor (whole
//!   where the processor takes them, [`PacketProcessor::process_whole`], in place in the read
//!   buffer; otherwise split, up to `IDEAL_BATCH_SIZE` packets, see [`super::vnet`]), then
//!   writes the outputs with the lock released.
//! * Besides packets, the worker that owns a processor wakes for its housekeeping: every
//!   [`super::TICK`], at the time [`PacketProcessor::wake_at`] names (a batch of connection
//!   sync due), and when the socket named by [`PacketProcessor::wake_socket`] has something
//!   to read (sync from a peer, applied as it arrives).
//! * [`Shell::apply`] runs a closure on every processor (once on a shared one) between two
//!   bursts, on the worker that owns it (server state, weights, active/backup: the control
//!   plane's changes reach the engines in order, without another lock). Bounded: a worker
//!   holds at most [`CONTROL_QUEUE`] pending.
//! * [`Shell::stop`] (or drop) signals the workers, joins them (their TUN queues close, so the
//!   non-persistent device disappears), removes the routes and rules and hands the processors
//!   back. Errors are returned, never panics; per-packet trouble is counted in [`ShellStats`].

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, watch};
use tun_rs::{DeviceBuilder, SyncDevice};

use super::netlink::{self, SteerRule};
use super::worker::{Shared, Worker};
use super::{PacketProcessor, ShellConfig, ShellError, ShellStats, StatsSnapshot};

/// How long [`Shell::start`] waits for each worker to be reading.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub use super::worker::BURST;

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
    /// One per processor (to its owner worker).
    controls: Vec<mpsc::Sender<Control<P>>>,
    workers: Vec<JoinHandle<Result<(), ShellError>>>,
    /// Each distinct processor once (one per queue, or one for all).
    processors: Vec<Shared<P>>,
    stats: Arc<ShellStats>,
    rt: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
    stopped: bool,
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime, ShellError> {
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
    /// queue with its own processor `factory(queue)`.
    pub fn start<F>(cfg: ShellConfig, steer: Vec<SteerRule>, mut factory: F) -> Result<Self, ShellError>
    where
        F: FnMut(usize) -> P,
    {
        let n = cfg.queues;
        Self::start_with(cfg, steer, (0..n).map(|q| Arc::new(Mutex::new(factory(q)))).collect())
    }

    /// Like [`Shell::start`] with one processor for every queue (see [`super::worker`]: it
    /// is locked once per burst of reads, never across a syscall; queue 0 runs its control
    /// closures, housekeeping and wake-ups). This is how NAT runs on several queues: a
    /// reply may land on another queue than its request and still meets its connection.
    pub fn start_shared(cfg: ShellConfig, steer: Vec<SteerRule>, processor: P) -> Result<Self, ShellError> {
        Self::start_with(cfg, steer, vec![Arc::new(Mutex::new(processor))])
    }

    /// `processors`: one per queue, or one shared by all.
    fn start_with(
        cfg: ShellConfig,
        steer: Vec<SteerRule>,
        processors: Vec<Shared<P>>,
    ) -> Result<Self, ShellError> {
        if cfg.queues == 0 || cfg.queues > 64 || cfg.mtu < 576 || cfg.mtu > 1500 {
            return Err(ShellError::Config(format!(
                "queues {} (1..=64), mtu {} (576..=1500)",
                cfg.queues, cfg.mtu
            )));
        }
        let shared = processors.len() == 1 && cfg.queues > 1;
        if !shared && processors.len() != cfg.queues {
            return Err(ShellError::Config(format!(
                "{} processors for {} queues",
                processors.len(),
                cfg.queues
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
        let mut devices: Vec<SyncDevice> = Vec::with_capacity(cfg.queues);
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
            processors,
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
        let origin = crate::platform::linux::clock::origin();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for (q, dev) in devices.into_iter().enumerate() {
            let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
            let owner = !shared || q == 0;
            if owner {
                shell.controls.push(control_tx);
            }
            let worker = Worker {
                queue: q,
                processor: Arc::clone(&shell.processors[if shared { 0 } else { q }]),
                owner,
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
        if !super::all_ready(&ready_rx, shell.workers.len(), START_TIMEOUT) {
            shell.shutdown()?;
            return Err(ShellError::Config("a worker did not start".into()));
        }
        Ok(shell)
    }

    /// Counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Runs `f` on every processor (once on a shared one), between two bursts. Fails if a worker has
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
    /// processors (one per queue, or the shared one). The first worker error, if any, is returned after the
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
        for w in self.workers.drain(..) {
            if let Err(e) = w.join().unwrap_or(Err(ShellError::WorkerPanicked)) {
                first_err.get_or_insert(e);
            }
        }
        // Every worker has ended, so each processor has one owner left: this shell.
        let processors = self
            .processors
            .drain(..)
            .filter_map(|p| Arc::try_unwrap(p).ok())
            .map(|m| m.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner))
            .collect();
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
