//! Node-side decapsulation loop: raw sockets in (one per [`TunnelKind`] the node receives),
//! a TUN device out.
//!
//! Used on a real server in tunnel mode when the kernel cannot decapsulate what it needs
//! (it has no `ipip` module, [`super::netlink::kernel_has_ipip`], or the node receives IPv6
//! or cross-family tunnels, which would need `ip6_tunnel` or `sit`). A raw IPv4 socket of
//! protocol 4 or 41 receives every such IPv4 packet addressed to this host, outer header
//! included; a raw IPv6 socket of next header 4 or 41 receives the payload after the IPv6
//! header and its extension headers, and the source beside it. [`Decapsulator`] validates
//! and strips; the inner packet (IPv4 or IPv6: a TUN without packet information tells them
//! apart by the version nibble) is written to the TUN, so the node's stack receives it as
//! if it had arrived on that interface and delivers it to the VIP on the loopback. The TUN
//! gets IPv4 reverse-path filtering off (the client's address routes elsewhere; see
//! [`super::netlink::tune_tun_sysctls`]). One thread, one packet per syscall: tunnel traffic
//! is the request direction only, the heavy replies leave the node directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;
use tun_rs::{AsyncDevice, DeviceBuilder};

use super::ShellError;
use super::netlink;
use crate::dataplane::decap::{DecapPolicy, DecapStats, Decapsulator, TunnelKind};

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

/// Whether the kernel's decapsulation serves `policy`: `ipip` is present and only IPv4 in
/// IPv4 is received (an empty kind list means that, for policies built by hand).
pub fn kernel_serves(policy: &DecapPolicy) -> bool {
    let only_4in4 = policy.kinds.iter().all(|k| !k.outer_v6 && !k.inner_v6);
    only_4in4 && netlink::kernel_has_ipip()
}

impl NodeDecap {
    /// Chooses and starts the decapsulation for this node, in the calling thread's namespace.
    pub fn start(tun_name: &str, policy: DecapPolicy) -> Result<NodeDecap, ShellError> {
        if !kernel_serves(&policy) {
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
        // A policy built by hand without kinds means IP-in-IP, as before kinds existed.
        let kinds = if policy.kinds.is_empty() {
            vec![TunnelKind { outer_v6: false, inner_v6: false }]
        } else {
            policy.kinds.clone()
        };
        let mut raws = Vec::new();
        for kind in kinds {
            let domain = if kind.outer_v6 { Domain::IPV6 } else { Domain::IPV4 };
            let raw = Socket::new(domain, Type::RAW, Some(Protocol::from(i32::from(kind.protocol()))))
                .map_err(ShellError::RawSocket)?;
            raw.set_nonblocking(true).map_err(ShellError::RawSocket)?;
            raws.push((raw, kind));
        }
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
                rt.block_on(run(dev, raws, policy, stop_rx, ready2))
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
    raws: Vec<(Socket, TunnelKind)>,
    policy: DecapPolicy,
    stop: watch::Receiver<bool>,
    ready: Arc<AtomicBool>,
) -> Result<DecapStats, ShellError> {
    let dev = AsyncDevice::new(dev).map_err(|source| ShellError::Tun { name: "decap".into(), source })?;
    // A raw IP socket read with recv(2) is what a datagram socket does: tokio's UdpSocket
    // wrapper gives readiness without an unsafe registration (`recv_from` returns one packet
    // and, for IPv6, its source).
    let mut socks = Vec::new();
    for (raw, kind) in raws {
        let s =
            tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(raw)).map_err(ShellError::RawSocket)?;
        socks.push((s, kind));
    }
    ready.store(true, Ordering::Release);
    let loops = socks.iter().map(|(s, kind)| receive(&dev, s, *kind, policy.clone(), stop.clone()));
    let per_socket = futures::future::try_join_all(loops).await?;
    let mut total = DecapStats::default();
    for s in &per_socket {
        total.add(s);
    }
    Ok(total)
}

/// Decapsulates what `raw` (of `kind`) receives until `stop` changes; its counters.
async fn receive(
    dev: &AsyncDevice,
    raw: &tokio::net::UdpSocket,
    kind: TunnelKind,
    policy: DecapPolicy,
    mut stop: watch::Receiver<bool>,
) -> Result<DecapStats, ShellError> {
    let mut decap = Decapsulator::new(policy);
    let mut buf = vec![0u8; 65535];
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.changed() => return Ok(*decap.stats()),
            r = raw.recv_from(&mut buf) => r.map_err(ShellError::RawSocket)?,
        };
        let (mut n, mut from) = first;
        // Bounded: at most BURST packets per wake-up.
        for left in (0..BURST).rev() {
            let inner = match from {
                std::net::SocketAddr::V6(a) => decap.decapsulate6(*a.ip(), kind.protocol(), &buf[..n]),
                std::net::SocketAddr::V4(_) => decap.decapsulate(&buf[..n]),
            };
            if let Ok(inner) = inner {
                // A failed write loses one packet, like a full queue would; TCP recovers.
                let _ = dev.send(inner).await;
            }
            if left == 0 {
                break;
            }
            (n, from) = match raw.try_recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(ShellError::RawSocket(e)),
            };
        }
    }
}
