//! Thin, audited wrappers over the few system calls the data-plane shell and the namespace
//! tests need that have no safe binding: `setns(2)`, binding an `AF_PACKET` socket to an
//! interface (`sockaddr_ll`) and its `PACKET_VNET_HDR` option. Everything else uses safe crates (socket2, tun-rs, rtnetlink).
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
