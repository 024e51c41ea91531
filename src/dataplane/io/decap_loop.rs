//! Node-side IP-in-IP loop: a raw `IPPROTO_IPIP` socket in, a TUN device out.
//!
//! Used on a real server in tunnel mode when the kernel has no `ipip` module
//! ([`super::netlink::kernel_has_ipip`] says whether it has; prefer the kernel's then). The
//! raw socket receives every IPv4 packet of protocol 4 addressed to this host, outer header
//! included; [`Decapsulator`] validates and strips it; the inner packet is written to the TUN,
//! so the node's stack receives it as if it had arrived on that interface and delivers it to
//! the VIP on the loopback. The TUN gets reverse-path filtering off (the client's address
//! routes elsewhere; see [`super::netlink::tune_tun_sysctls`]). One thread, one packet per syscall: tunnel traffic is the request
//! direction only, the heavy replies leave the node directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;
use tun_rs::{AsyncDevice, DeviceBuilder};

use super::ShellError;
use super::netlink;
use crate::dataplane::decap::{DecapPolicy, DecapStats, Decapsulator, IPPROTO_IPIP};

/// Reads per wake-up before yielding (bounds one iteration of the loop).
const BURST: usize = 64;

/// How this node decapsulates: the kernel's `ipip` where present, else user space.
#[derive(Debug)]
pub enum NodeDecap {
    /// The kernel decapsulates on this device (see [`netlink::enable_kernel_ipip`]).
    Kernel { device: String },
    /// The user-space loop runs.
    User(DecapShell),
}

impl NodeDecap {
    /// Chooses and starts the decapsulation for this node, in the calling thread's namespace.
    pub fn start(tun_name: &str, policy: DecapPolicy) -> Result<NodeDecap, ShellError> {
        if !netlink::kernel_has_ipip() {
            return DecapShell::start(tun_name, policy).map(NodeDecap::User);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ShellError::Runtime)?;
        let device = rt.block_on(async {
            let handle = netlink::connect()?;
            netlink::enable_kernel_ipip(&handle).await
        })?;
        Ok(NodeDecap::Kernel { device })
    }
}

/// A running decapsulator. Stop it with [`DecapShell::stop`].
#[derive(Debug)]
pub struct DecapShell {
    stop_tx: watch::Sender<bool>,
    thread: Option<JoinHandle<Result<DecapStats, ShellError>>>,
    ready: Arc<AtomicBool>,
}

impl DecapShell {
    /// Creates the TUN `tun_name` and the raw socket in the calling thread's namespace and
    /// starts the loop on its own thread.
    pub fn start(tun_name: &str, policy: DecapPolicy) -> Result<DecapShell, ShellError> {
        let tun_err = |source| ShellError::Tun { name: tun_name.to_string(), source };
        let dev = DeviceBuilder::new()
            .name(tun_name.to_string())
            .mtu(1500)
            .enable(true)
            .build_sync()
            .map_err(tun_err)?;
        netlink::tune_tun_sysctls(tun_name)?;
        let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(i32::from(IPPROTO_IPIP))))
            .map_err(ShellError::RawSocket)?;
        raw.set_nonblocking(true).map_err(ShellError::RawSocket)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let ready = Arc::new(AtomicBool::new(false));
        let ready2 = Arc::clone(&ready);
        let thread = std::thread::Builder::new()
            .name("cs-decap".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(ShellError::Runtime)?;
                rt.block_on(run(dev, raw, policy, stop_rx, ready2))
            })
            .map_err(ShellError::Runtime)?;
        Ok(DecapShell { stop_tx, thread: Some(thread), ready })
    }

    /// Whether the loop has registered its descriptors and is reading.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Stops the loop and returns its counters.
    pub fn stop(mut self) -> Result<DecapStats, ShellError> {
        let _ = self.stop_tx.send(true);
        match self.thread.take() {
            Some(t) => t.join().unwrap_or(Err(ShellError::WorkerPanicked)),
            None => Ok(DecapStats::default()),
        }
    }
}

impl Drop for DecapShell {
    fn drop(&mut self) {
        let _ = self.stop_tx.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run(
    dev: tun_rs::SyncDevice,
    raw: Socket,
    policy: DecapPolicy,
    mut stop: watch::Receiver<bool>,
    ready: Arc<AtomicBool>,
) -> Result<DecapStats, ShellError> {
    let dev = AsyncDevice::new(dev).map_err(|source| ShellError::Tun { name: "decap".into(), source })?;
    // A raw IP socket read with recv(2) is what a datagram socket does: tokio's UdpSocket
    // wrapper gives readiness without an unsafe registration (`recv` returns one packet).
    let raw =
        tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(raw)).map_err(ShellError::RawSocket)?;
    let mut decap = Decapsulator::new(policy);
    let mut buf = vec![0u8; 65535];
    ready.store(true, Ordering::Release);
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.changed() => return Ok(*decap.stats()),
            r = raw.recv(&mut buf) => r.map_err(ShellError::RawSocket)?,
        };
        let mut n = first;
        // Bounded: at most BURST packets per wake-up.
        for left in (0..BURST).rev() {
            if let Ok(inner) = decap.decapsulate(&buf[..n]) {
                // A failed write loses one packet, like a full queue would; TCP recovers.
                let _ = dev.send(inner).await;
            }
            if left == 0 {
                break;
            }
            n = match raw.try_recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(ShellError::RawSocket(e)),
            };
        }
    }
}
