//! AF_XDP sockets and their UMEM: the system calls (`socket`, `setsockopt(SOL_XDP, ...)`,
//! `getsockopt(XDP_MMAP_OFFSETS)`, `mmap`, `bind`, `sendto`), wrapped so the worker sees
//! typed rings ([`super::ring`]) and frames.
//!
//! One [`Umem`] per worker holds every frame that worker uses; its first socket registers
//! it (`XDP_UMEM_REG`) and every further socket of the worker (another queue or another
//! interface) binds with `XDP_SHARED_UMEM`, with its own fill and completion rings (the
//! kernel requires that for another device or queue). A frame received on one interface
//! can therefore be sent, rewritten in place, out of another, with no copy.
//!
//! Bind mode: zero-copy is tried first, then copy mode; both with `XDP_USE_NEED_WAKEUP`, so
//! the worker makes a `sendto` (TX) only when the kernel's ring flag asks for it. veth (the
//! labs) has no zero-copy support: copy mode, with the program attached in native
//! (driver) mode where possible.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use super::ring::{Consumer, Producer, RingPtrs};

const AF_XDP: libc::c_int = 44;
const SOL_XDP: libc::c_int = 283;
const XDP_MMAP_OFFSETS: libc::c_int = 1;
const XDP_RX_RING: libc::c_int = 2;
const XDP_TX_RING: libc::c_int = 3;
const XDP_UMEM_REG: libc::c_int = 4;
const XDP_UMEM_FILL_RING: libc::c_int = 5;
const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
const XDP_STATISTICS: libc::c_int = 7;
const XDP_PGOFF_RX_RING: libc::off_t = 0;
const XDP_PGOFF_TX_RING: libc::off_t = 0x8000_0000;
const XDP_UMEM_PGOFF_FILL_RING: libc::off_t = 0x1_0000_0000;
const XDP_UMEM_PGOFF_COMPLETION_RING: libc::off_t = 0x1_8000_0000;
/// `sxdp_flags`.
const XDP_SHARED_UMEM: u16 = 1;
const XDP_COPY: u16 = 1 << 1;
const XDP_ZEROCOPY: u16 = 1 << 2;
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;

/// Bytes per UMEM frame: an MTU-sized frame (1518 with a VLAN tag) plus the kernel's
/// headroom fits; a power of two, as aligned-chunk mode requires.
pub const FRAME_SIZE: usize = 2048;

/// `struct xdp_desc`: an RX or TX descriptor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpDesc {
    pub addr: u64,
    pub len: u32,
    pub options: u32,
}

/// `struct xdp_ring_offset`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RingOffset {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

/// `struct xdp_mmap_offsets`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct MmapOffsets {
    rx: RingOffset,
    tx: RingOffset,
    fr: RingOffset,
    cr: RingOffset,
}

/// `struct xdp_umem_reg` (with `flags` and `tx_metadata_len`, both 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    tx_metadata_len: u32,
}

/// `struct sockaddr_xdp`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct SockaddrXdp {
    family: u16,
    flags: u16,
    ifindex: u32,
    queue_id: u32,
    shared_umem_fd: u32,
}

/// `struct xdp_statistics` (the fields of kernel 5.9+).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpStatistics {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

/// An anonymous or ring mapping, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a mapping is plain memory owned by one worker; it moves to that thread once.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(len: usize, fd: Option<RawFd>, offset: libc::off_t) -> io::Result<Mapping> {
        let (flags, fd) = match fd {
            Some(fd) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE, -1),
        };
        // SAFETY: a fresh mapping at an address the kernel picks; no existing memory is
        // touched. The result is checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, fd, offset)
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: p.cast(), len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing uses the mapping after
        // its owner is dropped (rings and slices borrow from their owner).
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// The frames of one worker.
#[derive(Debug)]
pub struct Umem {
    area: Mapping,
    frames: u32,
}

impl Umem {
    /// `frames` frames of [`FRAME_SIZE`] bytes.
    pub fn new(frames: u32) -> io::Result<Umem> {
        let area = Mapping::new(frames as usize * FRAME_SIZE, None, 0)?;
        Ok(Umem { area, frames })
    }

    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// The address (offset) of frame `i`.
    pub fn frame_addr(i: u32) -> u64 {
        u64::from(i) * FRAME_SIZE as u64
    }

    fn check(&self, addr: u64, len: usize) -> Option<usize> {
        let a = usize::try_from(addr).ok()?;
        let frame_start = a - a % FRAME_SIZE;
        (a.checked_add(len)? <= frame_start + FRAME_SIZE && frame_start < self.area.len).then_some(a)
    }

    /// `len` bytes at `addr`, within one frame; `None` if out of bounds (a bad descriptor).
    pub fn frame(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let a = self.check(addr, len)?;
        // SAFETY: in bounds of the live area (checked); the frame is owned by user space
        // (taken from the RX ring, not yet given back), so the kernel does not write it.
        Some(unsafe { std::slice::from_raw_parts(self.area.ptr.add(a), len) })
    }

    /// A received frame and another, free frame (written), at once. `None` if either
    /// is out of bounds or they are the same frame.
    pub fn rx_tx(&mut self, rx: u64, rx_len: usize, tx: u64) -> Option<(&mut [u8], &mut [u8])> {
        let r = self.check(rx, rx_len)?;
        let t = self.check(tx, FRAME_SIZE - (tx as usize % FRAME_SIZE))?;
        if r / FRAME_SIZE == t / FRAME_SIZE {
            return None;
        }
        let t_len = FRAME_SIZE - t % FRAME_SIZE;
        // SAFETY: both ranges are inside the live area and inside different frames, so they
        // do not overlap; both frames belong to user space (an RX frame not yet recycled and
        // a free TX frame), and `&mut self` keeps any other slice of the area from existing.
        unsafe {
            Some((
                std::slice::from_raw_parts_mut(self.area.ptr.add(r), rx_len),
                std::slice::from_raw_parts_mut(self.area.ptr.add(t), t_len),
            ))
        }
    }

    /// A whole free frame, for writing.
    pub fn frame_mut(&mut self, addr: u64) -> Option<&mut [u8]> {
        let a = self.check(addr, FRAME_SIZE - (addr as usize % FRAME_SIZE))?;
        // SAFETY: in bounds (checked), owned by user space, unique through `&mut self`.
        Some(unsafe { std::slice::from_raw_parts_mut(self.area.ptr.add(a), FRAME_SIZE - a % FRAME_SIZE) })
    }
}

/// Ring sizes of one socket.
#[derive(Clone, Copy, Debug)]
pub struct RingSizes {
    pub rx: u32,
    pub tx: u32,
    pub fill: u32,
    pub comp: u32,
}

/// How a socket was bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindMode {
    ZeroCopy,
    Copy,
}

/// One AF_XDP socket (an interface queue) and its four rings.
#[derive(Debug)]
pub struct Xsk {
    pub rx: Consumer<XdpDesc>,
    pub tx: Producer<XdpDesc>,
    pub fill: Producer<u64>,
    pub comp: Consumer<u64>,
    pub mode: BindMode,
    pub ifindex: u32,
    pub queue: u32,
    // The rings point into these: dropped after them (field order), before the socket.
    _maps: Vec<Mapping>,
    fd: OwnedFd,
}

fn setsockopt<T>(fd: RawFd, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a live value of exactly the size passed, which the kernel only reads.
    let rc = unsafe {
        libc::setsockopt(fd, SOL_XDP, opt, (v as *const T).cast(), size_of::<T>() as libc::socklen_t)
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn getsockopt<T: Default>(fd: RawFd, opt: libc::c_int) -> io::Result<T> {
    let mut v = T::default();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `v` is a live, writable value of `len` bytes; the kernel writes at most `len`
    // and reports how much in `len`.
    let rc = unsafe { libc::getsockopt(fd, SOL_XDP, opt, (&mut v as *mut T).cast(), &mut len) };
    if rc == 0 { Ok(v) } else { Err(io::Error::last_os_error()) }
}

impl Xsk {
    /// A socket on `ifindex` queue `queue`. With `shared` (the worker's first socket), the
    /// UMEM is shared with it; else `umem` is registered here and zero-copy tried first.
    pub fn open(
        umem: &Umem,
        ifindex: u32,
        queue: u32,
        sizes: RingSizes,
        shared: Option<BorrowedFd<'_>>,
    ) -> io::Result<Xsk> {
        match shared {
            Some(first) => Xsk::open_mode(umem, ifindex, queue, sizes, XDP_SHARED_UMEM, Some(first)),
            None => Xsk::open_mode(umem, ifindex, queue, sizes, XDP_USE_NEED_WAKEUP | XDP_ZEROCOPY, None)
                .or_else(|_| {
                    Xsk::open_mode(umem, ifindex, queue, sizes, XDP_USE_NEED_WAKEUP | XDP_COPY, None)
                }),
        }
    }

    fn open_mode(
        umem: &Umem,
        ifindex: u32,
        queue: u32,
        sizes: RingSizes,
        flags: u16,
        shared: Option<BorrowedFd<'_>>,
    ) -> io::Result<Xsk> {
        // SAFETY: plain socket creation; the result is checked and owned at once.
        let raw = unsafe { libc::socket(AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if shared.is_none() {
            let reg = UmemReg {
                addr: umem.area.ptr as usize as u64,
                len: umem.area.len as u64,
                chunk_size: FRAME_SIZE as u32,
                ..UmemReg::default()
            };
            setsockopt(raw, XDP_UMEM_REG, &reg)?;
        }
        setsockopt(raw, XDP_UMEM_FILL_RING, &(sizes.fill as libc::c_int))?;
        setsockopt(raw, XDP_UMEM_COMPLETION_RING, &(sizes.comp as libc::c_int))?;
        setsockopt(raw, XDP_RX_RING, &(sizes.rx as libc::c_int))?;
        setsockopt(raw, XDP_TX_RING, &(sizes.tx as libc::c_int))?;
        let off: MmapOffsets = getsockopt(raw, XDP_MMAP_OFFSETS)?;
        let map = |o: &RingOffset, n: u32, entry: usize, pgoff| {
            Mapping::new(o.desc as usize + n as usize * entry, Some(raw), pgoff)
        };
        let rx_m = map(&off.rx, sizes.rx, size_of::<XdpDesc>(), XDP_PGOFF_RX_RING)?;
        let tx_m = map(&off.tx, sizes.tx, size_of::<XdpDesc>(), XDP_PGOFF_TX_RING)?;
        let fr_m = map(&off.fr, sizes.fill, size_of::<u64>(), XDP_UMEM_PGOFF_FILL_RING)?;
        let cr_m = map(&off.cr, sizes.comp, size_of::<u64>(), XDP_UMEM_PGOFF_COMPLETION_RING)?;
        fn ptrs<T>(m: &Mapping, o: &RingOffset, size: u32) -> RingPtrs<T> {
            // SAFETY: the kernel's offsets lie inside the mapping it sized for them.
            unsafe {
                RingPtrs {
                    producer: m.ptr.add(o.producer as usize).cast(),
                    consumer: m.ptr.add(o.consumer as usize).cast(),
                    flags: m.ptr.add(o.flags as usize).cast(),
                    desc: m.ptr.add(o.desc as usize).cast(),
                    size,
                }
            }
        }
        // SAFETY: each mapping lives in `_maps` as long as the rings (field order drops the
        // rings first); this socket is their only user-space producer/consumer.
        let (rx, tx, fill, comp) = unsafe {
            (
                Consumer::new(ptrs(&rx_m, &off.rx, sizes.rx)),
                Producer::new(ptrs(&tx_m, &off.tx, sizes.tx)),
                Producer::new(ptrs(&fr_m, &off.fr, sizes.fill)),
                Consumer::new(ptrs(&cr_m, &off.cr, sizes.comp)),
            )
        };
        let sa = SockaddrXdp {
            family: AF_XDP as u16,
            flags,
            ifindex,
            queue_id: queue,
            shared_umem_fd: shared.map_or(0, |f| f.as_raw_fd() as u32),
        };
        // SAFETY: `sa` is a live sockaddr_xdp of the length passed; the kernel only reads it.
        let rc = unsafe {
            libc::bind(raw, (&sa as *const SockaddrXdp).cast(), size_of::<SockaddrXdp>() as libc::socklen_t)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let mode = if flags & XDP_ZEROCOPY != 0 { BindMode::ZeroCopy } else { BindMode::Copy };
        Ok(Xsk { rx, tx, fill, comp, mode, ifindex, queue, _maps: vec![rx_m, tx_m, fr_m, cr_m], fd })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Tells the kernel to transmit what the TX ring holds (copy mode needs this call for
    /// every batch; with `need_wakeup` only when the ring's flag says so). `EAGAIN`/`EBUSY`/
    /// `ENOBUFS` mean "try again later" and are not errors here.
    pub fn kick_tx(&self) -> io::Result<()> {
        // SAFETY: a zero-length send on our own open socket; no buffer is passed.
        let rc =
            unsafe { libc::sendto(self.fd.as_raw_fd(), ptr::null(), 0, libc::MSG_DONTWAIT, ptr::null(), 0) };
        if rc >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS) | Some(libc::ENETDOWN) => Ok(()),
            _ => Err(e),
        }
    }

    /// Wakes the kernel to refill from the fill ring (zero-copy drivers that set the flag).
    pub fn kick_rx(&self) {
        // SAFETY: a zero-length, non-blocking receive on our socket, no buffer.
        unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
                ptr::null_mut(),
            );
        }
    }

    /// The kernel's counters for this socket.
    pub fn statistics(&self) -> io::Result<XdpStatistics> {
        getsockopt(self.fd.as_raw_fd(), XDP_STATISTICS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel() {
        assert_eq!(size_of::<XdpDesc>(), 16);
        assert_eq!(size_of::<MmapOffsets>(), 128);
        assert_eq!(size_of::<UmemReg>(), 32);
        assert_eq!(size_of::<SockaddrXdp>(), 16);
        assert_eq!(size_of::<XdpStatistics>(), 48);
    }

    #[test]
    fn frames_are_bounded_and_distinct() {
        let mut u = Umem::new(4).expect("mmap");
        assert!(u.frame(Umem::frame_addr(3), FRAME_SIZE).is_some());
        assert!(u.frame(Umem::frame_addr(3) + 1, FRAME_SIZE).is_none(), "crosses the frame end");
        assert!(u.frame(Umem::frame_addr(4), 1).is_none(), "past the area");
        assert!(u.rx_tx(0, 100, 0).is_none(), "same frame");
        let (r, t) = u.rx_tx(256, 100, Umem::frame_addr(1)).expect("two frames");
        assert_eq!((r.len(), t.len()), (100, FRAME_SIZE));
        assert_eq!(u.frame_mut(Umem::frame_addr(2) + 100).map(|f| f.len()), Some(FRAME_SIZE - 100));
    }
}
