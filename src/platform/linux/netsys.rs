//! Thin, audited wrappers over the few system calls the data-plane shell and the namespace
//! tests need that have no safe binding: `setns(2)`, binding an `AF_PACKET` socket to an
//! interface (`sockaddr_ll`) and its `PACKET_VNET_HDR` option, and a UDP socket's ICMP error
//! queue (`IP_RECVERR`). Everything else uses safe crates (socket2, tun-rs, rtnetlink).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::mem;
use std::os::fd::AsRawFd;
use std::path::Path;

use socket2::{SockAddr, SockAddrStorage, Socket};

/// `ETH_P_IP` in host order.
pub const ETH_P_IP: u16 = 0x0800;

/// Moves the **calling thread** into the network namespace at `path` (e.g.
/// `/var/run/netns/NAME`). Only call this on a thread you own and that runs no async tasks
/// (TECH-NOTES: setns on a tokio worker leaks the namespace into unrelated tasks); sockets and
/// TUN devices created afterwards on this thread, and threads it spawns, belong to it.
pub fn enter_netns(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: `file` is an open descriptor for the whole call; setns only reads it and changes
    // the calling thread's namespace; no Rust invariant depends on the namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Binds a packet socket to interface `ifindex` for protocol `ethertype` (host order), so
/// frames written with `send` leave through that interface.
pub fn bind_packet_socket(socket: &Socket, ifindex: u32, ethertype: u16) -> io::Result<()> {
    let ifindex = i32::try_from(ifindex).map_err(|_| io::Error::other("ifindex out of range"))?;
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: `sockaddr_ll` is smaller than `sockaddr_storage` and has no alignment stricter
    // than it (checked by socket2's `view_as` contract); the storage is zeroed, a valid value
    // for every field of this plain C struct.
    let ll: &mut libc::sockaddr_ll = unsafe { storage.view_as() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = ethertype.to_be();
    ll.sll_ifindex = ifindex;
    let len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the storage holds an initialised `sockaddr_ll` of exactly `len` bytes.
    let addr = unsafe { SockAddr::new(storage, len) };
    socket.bind(&addr)
}

/// `PACKET_VNET_HDR` (linux/if_packet.h).
const PACKET_VNET_HDR: libc::c_int = 15;

/// Makes every frame sent on packet socket `socket` start with a virtio-net header
/// (`PACKET_VNET_HDR`): one send can then carry a GSO super-packet with a partial checksum,
/// which the kernel segments (or hands whole to a GSO-capable device such as veth).
pub fn set_packet_vnet_hdr(socket: &Socket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the descriptor is open for the call (borrowed from `socket`); the option value
    // points to a live `c_int` of exactly the length passed, which the kernel only reads.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_VNET_HDR,
            (&raw const one).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Registers an owned socket with the current tokio reactor (needs a runtime context).
pub fn async_socket(socket: Socket) -> io::Result<tokio::io::unix::AsyncFd<Socket>> {
    // SAFETY: `socket` is owned by the returned `AsyncFd` for its whole life: its descriptor
    // is open (a `Socket` always holds one), is closed only when the `AsyncFd` drops it, and
    // `Socket::as_raw_fd` always returns that same descriptor.
    unsafe { tokio::io::unix::AsyncFd::register(socket) }.map_err(|e| e.into_parts().1)
}

/// Sends SIGKILL to every process of the process group `pgid` (`killpg(2)`): a health-check
/// program started with `process_group(0)` leads a group whose id is its pid, so its
/// children die with it. Call it only while the leader is not yet reaped, so the id cannot
/// have been reused.
pub fn kill_process_group(pgid: u32) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid).map_err(|_| io::Error::other("pid out of range"))?;
    if pgid <= 1 {
        return Err(io::Error::other("refusing to signal process group 0 or 1"));
    }
    // SAFETY: killpg takes plain integers and touches no memory of ours; the guard above
    // keeps it away from our own group (0) and init's (1).
    let rc = unsafe { libc::killpg(pgid, libc::SIGKILL) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Lowers the calling thread's scheduling priority to `nice` (Linux nice values are per
/// thread): the admin channel's thread yields the CPU to the control loop's heartbeats and
/// the data plane under a burst of requests.
pub fn nice_this_thread(nice: i32) -> io::Result<()> {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    let tid = libc::id_t::try_from(tid).map_err(|_| io::Error::other("thread id out of range"))?;
    // SAFETY: setpriority only reads its integer arguments; PRIO_PROCESS with a thread id
    // changes that thread alone.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `cmd`'s child receive SIGKILL when the thread that spawned it exits (Linux
/// `PR_SET_PDEATHSIG`): a BIRD left running by a killed daemon would keep announcing VIPs
/// that nothing forwards. Spawn from a thread that lives as long as the child should.
pub fn kill_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
    // which is async-signal-safe, allocates nothing and touches no Rust state.
    unsafe {
        cmd.pre_exec(|| {
            let rc = libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
            if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
        });
    }
}

/// Asks the kernel to queue the ICMP errors a UDP socket's datagrams cause (`IP_RECVERR`,
/// `IPV6_RECVERR` for an IPv6 socket), so [`unreachable_destinations`] can say which
/// destination had no one listening: an unconnected socket learns nothing of them otherwise.
pub fn set_recverr(sock: &impl AsRawFd, ipv6: bool) -> io::Result<()> {
    let on: libc::c_int = 1;
    let (level, opt) =
        if ipv6 { (libc::IPPROTO_IPV6, libc::IPV6_RECVERR) } else { (libc::IPPROTO_IP, libc::IP_RECVERR) };
    // SAFETY: `on` outlives the call and its size is passed; setsockopt only reads it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&on as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Drains the error queue of a socket set up with [`set_recverr`] (bounded: 64 entries a
/// call) and appends to `out` each destination an ICMP "port unreachable" came back for
/// (the host is up, nothing listens on the port: e.g. a peer whose daemon is gone). Other
/// errors are dropped from the queue. Returns how many entries were read.
pub fn unreachable_destinations(sock: &impl AsRawFd, out: &mut Vec<std::net::SocketAddr>) -> usize {
    let mut read = 0;
    for _ in 0..64 {
        // SAFETY: all-zero bytes are a valid sockaddr_storage.
        let mut name: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let mut data = [0u8; 64];
        let mut control = [0u64; 32];
        let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
        // SAFETY: all-zero bytes are a valid msghdr; its pointers are set below.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(&control);
        // SAFETY: every buffer `msg` points to lives until the call returns, with its size.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if n < 0 {
            break;
        }
        read += 1;
        let mut refused = false;
        // SAFETY: the control buffer was filled by the kernel up to `msg_controllen`; the
        // CMSG macros stay within it, and a sock_extended_err is read unaligned.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
                let ours = (level == libc::IPPROTO_IP && kind == libc::IP_RECVERR)
                    || (level == libc::IPPROTO_IPV6 && kind == libc::IPV6_RECVERR);
                if ours {
                    let e: libc::sock_extended_err = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    refused |= e.ee_errno == libc::ECONNREFUSED as u32;
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if refused && let Some(a) = sockaddr_of(&name) {
            out.push(a);
        }
    }
    read
}

/// The IPv4 or IPv6 address in `s`, if it holds one.
fn sockaddr_of(s: &libc::sockaddr_storage) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    match libc::c_int::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which is smaller.
            let a: libc::sockaddr_in =
                unsafe { std::ptr::read_unaligned((s as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::from((
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6, which is smaller.
            let a: libc::sockaddr_in6 =
                unsafe { std::ptr::read_unaligned((s as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::from((Ipv6Addr::from(a.sin6_addr.s6_addr), u16::from_be(a.sin6_port))))
        }
        _ => None,
    }
}

#[cfg(test)]
mod recverr_tests {
    use super::*;
    use std::net::UdpSocket;

    /// A datagram to a loopback port nobody listens on comes back as "port unreachable",
    /// and the error queue names its destination (a real socket, the kernel's ICMP).
    #[test]
    fn a_closed_port_is_reported_with_its_address() {
        let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_nonblocking(true).unwrap();
        set_recverr(&s, false).unwrap();
        s.send_to(b"x", gone).unwrap();
        // The ICMP error is queued synchronously on loopback, but poll for it rather than
        // assume: readable (POLLERR) within a generous bound.
        let mut pfd = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, 5000) };
        assert_eq!(ready, 1, "no error reported within 5 s");
        let mut out = Vec::new();
        assert_eq!(unreachable_destinations(&s, &mut out), 1);
        assert_eq!(out, [gone]);
        assert_eq!(unreachable_destinations(&s, &mut out), 0, "the queue was drained");
    }
}
