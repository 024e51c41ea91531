//! Simulated sockets and processes: a UDP socket with the world's loss applied on receive,
//! a clock on the simulation's time line, and a wrapper that freezes a process (SIGSTOP).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use clusterserver::daemon::processor::SyncSocket;
use clusterserver::health::driver::Clock;
use clusterserver::platform::DatagramSocket;
use clusterserver::time::Instant;

use crate::world::Shared;

/// Port of the simulated ARP exchange (WHO / ISAT / GARP datagrams).
pub const ARP_PORT: u16 = 2;
/// Port of the simulated ICMP echo (reachlist probes).
pub const ECHO_PORT: u16 = 7;
/// Port of the service behind the VIP.
pub const SERVICE_PORT: u16 = 80;
/// Limited broadcast (turmoil broadcasts to 255.255.255.255 only).
pub const BROADCAST: IpAddr = IpAddr::V4(Ipv4Addr::BROADCAST);

/// A turmoil UDP socket whose received datagrams pass the world's loss rates.
#[derive(Debug)]
pub struct SimSocket {
    inner: turmoil::net::UdpSocket,
    world: Shared,
    me: String,
}

impl SimSocket {
    /// Binds `0.0.0.0:port` (0: ephemeral) with broadcast enabled.
    pub async fn bind(world: &Shared, me: &str, port: u16) -> io::Result<SimSocket> {
        let inner = turmoil::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).await?;
        inner.set_broadcast(true)?;
        Ok(SimSocket { inner, world: world.clone(), me: me.to_string() })
    }

    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.inner.recv_from(buf).await?;
            if !self.world.borrow_mut().lose(from.ip(), &self.me) {
                return Ok((n, from));
            }
        }
    }

    pub async fn send(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.inner.send_to(buf, to).await
    }
}

/// A data plane's sync socket, as the daemon's processor uses its own ([`SyncSocket`]):
/// turmoil UDP without waiting, the world's loss applied on receive. Shared: the data plane
/// waits on [`SimSyncSocket::readable`] while the processor holds its clone.
#[derive(Clone, Debug)]
pub struct SimSyncSocket(Rc<SimSocket>);

impl SimSyncSocket {
    pub async fn bind(world: &Shared, me: &str, port: u16) -> io::Result<SimSyncSocket> {
        Ok(SimSyncSocket(Rc::new(SimSocket::bind(world, me, port).await?)))
    }

    /// Returns once a datagram waits (it may still be lost on receive).
    pub async fn readable(&self) -> io::Result<()> {
        self.0.inner.readable().await
    }
}

impl SyncSocket for SimSyncSocket {
    fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.0.inner.try_send_to(buf, to)
    }

    fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.0.inner.try_recv_from(buf)?;
            if !self.0.world.borrow_mut().lose(from.ip(), &self.0.me) {
                return Ok((n, from));
            }
        }
    }
}

impl DatagramSocket for SimSocket {
    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>> {
        self.recv(buf)
    }

    fn send_to(&self, buf: &[u8], to: SocketAddr) -> impl Future<Output = io::Result<usize>> {
        self.send(buf, to)
    }
}

/// Simulation time, read from the host runtime's (virtual) tokio clock.
#[derive(Clone, Copy, Debug)]
pub struct SimClock {
    origin: tokio::time::Instant,
    origin_sim: Duration,
}

impl SimClock {
    /// Must be created inside a host, at the start of its software.
    pub fn start() -> SimClock {
        SimClock {
            origin: tokio::time::Instant::now(),
            origin_sim: turmoil::sim_elapsed().unwrap_or_default(),
        }
    }

    pub fn now(&self) -> Instant {
        let d = self.origin_sim + (tokio::time::Instant::now() - self.origin);
        Instant::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    pub fn ms(&self) -> u64 {
        self.now().as_millis()
    }
}

/// The health driver's clock in a simulated ATM: virtual instants, turmoil's timers.
impl Clock for SimClock {
    fn now(&self) -> Instant {
        SimClock::now(self)
    }

    fn at(&self, t: Instant) -> tokio::time::Instant {
        self.origin + Duration::from_nanos(t.as_nanos()).saturating_sub(self.origin_sim)
    }
}

/// Runs `inner` except while the world marks host `name` frozen: a stopped process whose
/// kernel (ARP, echo) keeps running and whose sockets keep queueing datagrams.
#[allow(missing_debug_implementations)] // holds an arbitrary future
pub struct Freezable<F> {
    world: Shared,
    name: String,
    inner: Pin<Box<F>>,
}

impl<F: Future> Freezable<F> {
    pub fn new(world: &Shared, name: &str, inner: F) -> Self {
        Freezable { world: world.clone(), name: name.to_string(), inner: Box::pin(inner) }
    }
}

/// A daemon that can be killed (`kill` step): resolves to `None` once the world marks the
/// host's daemon killed, dropping the daemon (its sockets close); the caller keeps the host
/// (and its kernel task) alive.
#[allow(missing_debug_implementations)]
pub struct Killable<F> {
    world: Shared,
    name: String,
    inner: Pin<Box<F>>,
}

impl<F: Future> Killable<F> {
    pub fn new(world: &Shared, name: &str, inner: F) -> Self {
        Killable { world: world.clone(), name: name.to_string(), inner: Box::pin(inner) }
    }
}

impl<F: Future> Future for Killable<F> {
    type Output = Option<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        {
            let mut w = self.world.borrow_mut();
            let h = w.host(&self.name);
            if h.killed {
                return Poll::Ready(None);
            }
            h.kill_waker = Some(cx.waker().clone());
        }
        self.inner.as_mut().poll(cx).map(Some)
    }
}

impl<F: Future> Future for Freezable<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        {
            let mut w = self.world.borrow_mut();
            let h = w.host(&self.name);
            if h.killed {
                return Poll::Pending;
            }
            if h.frozen {
                h.thaw = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        self.inner.as_mut().poll(cx)
    }
}
