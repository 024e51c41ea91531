//! The `bpf(2)` commands we use, over `libc::syscall`: maps (create, update, delete),
//! program load (with the verifier's log in the error) and BPF links (create, update).
//!
//! Every object comes back as an [`OwnedFd`]: closing it releases the object unless
//! something else holds it (a map held by a loaded program, a program held by a link). A
//! link is held only by its descriptor, so a process that dies, even by SIGKILL, leaves
//! nothing attached: the reason XDP is attached with `BPF_LINK_CREATE` and not the older
//! netlink `IFLA_XDP`, which stays attached until someone removes it.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::insn::{Insn, to_bytes};

/// `enum bpf_cmd`.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `enum bpf_map_type` values we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapType {
    Hash = 1,
    Array = 2,
    XskMap = 17,
}

/// `enum bpf_prog_type` values we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgType {
    SocketFilter = 1,
    Xdp = 6,
}

/// `enum bpf_attach_type`: `BPF_XDP`.
pub const ATTACH_XDP: u32 = 37;
/// `BPF_F_XDP_HAS_FRAGS` (program flag: the program handles multi-buffer frames).
pub const F_XDP_HAS_FRAGS: u32 = 1 << 5;
/// XDP attach modes (`XDP_FLAGS_*`, linux/if_link.h).
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// Map update flags.
pub const BPF_ANY: u64 = 0;

/// Size of the attribute union we pass: larger than every command's part we fill; the
/// kernel accepts a larger `union bpf_attr` as long as the unknown tail is zero.
const ATTR_LEN: usize = 128;

/// A zeroed `union bpf_attr`, filled field by field at the offsets of linux/bpf.h.
#[repr(C, align(8))]
struct Attr([u8; ATTR_LEN]);

impl Attr {
    fn new() -> Attr {
        Attr([0; ATTR_LEN])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Attr {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Attr {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn name(&mut self, off: usize, name: &str) -> &mut Attr {
        // BPF_OBJ_NAME_LEN = 16, NUL-terminated; only [A-Za-z0-9_.] is accepted.
        let n = name.len().min(15);
        self.0[off..off + n].copy_from_slice(&name.as_bytes()[..n]);
        self
    }
}

fn ptr<T>(p: *const T) -> u64 {
    p as usize as u64
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    // Descriptors are non-negative.
    fd.as_raw_fd() as u32
}

/// Calls `bpf(cmd, attr)`; returns its non-negative result.
fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, 8-byte aligned buffer of ATTR_LEN bytes for the whole call;
    // every pointer stored in it (keys, values, instructions, license, log) was taken from a
    // borrow the caller keeps alive across this call, with the length the kernel is told.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), ATTR_LEN as libc::c_uint) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// Calls a `bpf` command that returns a new descriptor.
fn bpf_fd(cmd: libc::c_long, attr: &mut Attr) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf returned no descriptor"))?;
    // SAFETY: the kernel just returned `fd` as a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_MAP_CREATE`.
pub fn map_create(
    kind: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, kind as u32).u32(4, key_size).u32(8, value_size).u32(12, max_entries).name(28, name);
    bpf_fd(BPF_MAP_CREATE, &mut a)
}

/// `BPF_MAP_UPDATE_ELEM`: `key` and `value` must have the map's sizes (the kernel reads that
/// many bytes; shorter slices are refused here).
pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8], sizes: (usize, usize)) -> io::Result<()> {
    if key.len() != sizes.0 || value.len() != sizes.1 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "key or value size"));
    }
    let mut a = Attr::new();
    a.u32(0, fd_u32(map)).u64(8, ptr(key.as_ptr())).u64(16, ptr(value.as_ptr())).u64(24, BPF_ANY);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
}

/// `BPF_MAP_DELETE_ELEM`; a missing key is `ENOENT` (`ErrorKind::NotFound`).
pub fn map_delete(map: BorrowedFd<'_>, key: &[u8], key_size: usize) -> io::Result<()> {
    if key.len() != key_size {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "key size"));
    }
    let mut a = Attr::new();
    a.u32(0, fd_u32(map)).u64(8, ptr(key.as_ptr()));
    bpf(BPF_MAP_DELETE_ELEM, &mut a).map(drop)
}

/// A program the verifier refused, with its log.
#[derive(Debug, thiserror::Error)]
#[error("BPF_PROG_LOAD: {source}; verifier log:\n{log}")]
pub struct LoadError {
    pub source: io::Error,
    pub log: String,
}

/// What to load.
#[derive(Clone, Copy, Debug)]
pub struct ProgSpec<'a> {
    pub kind: ProgType,
    pub insns: &'a [Insn],
    /// A GPL-compatible licence unlocks GPL-only helpers (we use none, but say so).
    pub license: &'a str,
    pub name: &'a str,
    /// `expected_attach_type` (`ATTACH_XDP` for XDP, 0 otherwise).
    pub attach_type: u32,
    /// `prog_flags` (e.g. [`F_XDP_HAS_FRAGS`]).
    pub flags: u32,
}

/// Largest verifier log kept (our programs' logs are a few kilobytes).
const LOG_LEN: usize = 1 << 20;

/// `BPF_PROG_LOAD`. Loads without a log first (cheaper, and a too-small log buffer is itself
/// an error); on failure loads again with `log_level = 1` and returns the verifier's log.
pub fn prog_load(spec: &ProgSpec<'_>) -> Result<OwnedFd, LoadError> {
    match load(spec, None) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            let mut log = vec![0u8; LOG_LEN];
            match load(spec, Some(&mut log)) {
                Ok(fd) => Ok(fd),
                Err(source) => {
                    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                    let text = String::from_utf8_lossy(&log[..end]).into_owned();
                    let source = if source.raw_os_error().is_some() { source } else { first };
                    Err(LoadError { source, log: text })
                }
            }
        }
    }
}

fn load(spec: &ProgSpec<'_>, log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
    let code = to_bytes(spec.insns);
    let mut license = spec.license.as_bytes().to_vec();
    license.push(0);
    let insn_cnt = u32::try_from(spec.insns.len()).map_err(|_| io::Error::other("program too long"))?;
    let mut a = Attr::new();
    a.u32(0, spec.kind as u32)
        .u32(4, insn_cnt)
        .u64(8, ptr(code.as_ptr()))
        .u64(16, ptr(license.as_ptr()))
        .u32(44, spec.flags)
        .name(48, spec.name)
        .u32(68, spec.attach_type);
    if let Some(buf) = log {
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        a.u32(24, 1).u32(28, len).u64(32, ptr(buf.as_mut_ptr()));
    }
    bpf_fd(BPF_PROG_LOAD, &mut a)
}

/// `BPF_PROG_TEST_RUN`: runs `prog` once on `data` in the kernel (no device involved) and
/// returns its return value. Lets tests check a generated program's decisions.
pub fn prog_test_run(prog: BorrowedFd<'_>, data: &[u8]) -> io::Result<u32> {
    let len = u32::try_from(data.len()).map_err(|_| io::Error::other("data too long"))?;
    let mut a = Attr::new();
    a.u32(0, fd_u32(prog)).u32(8, len).u64(16, ptr(data.as_ptr())).u32(32, 1);
    bpf(BPF_PROG_TEST_RUN, &mut a)?;
    let mut r = [0u8; 4];
    r.copy_from_slice(&a.0[4..8]);
    Ok(u32::from_ne_bytes(r))
}

/// `BPF_LINK_CREATE` of an XDP program on interface `ifindex` with `XDP_FLAGS_*` `flags`.
pub fn link_create_xdp(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, fd_u32(prog)).u32(4, ifindex).u32(8, ATTACH_XDP).u32(12, flags);
    bpf_fd(BPF_LINK_CREATE, &mut a)
}

/// `BPF_LINK_UPDATE`: replaces the link's program atomically.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32(0, fd_u32(link)).u32(4, fd_u32(prog));
    bpf(BPF_LINK_UPDATE, &mut a).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::linux::bpf::insn::{Insn, R0};
    use std::os::fd::AsFd;

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn attr_fields_land_at_their_offsets() {
        let mut a = Attr::new();
        a.u32(4, 0x0102_0304).u64(8, 0x1122_3344_5566_7788).name(48, "a_very_long_program_name");
        assert_eq!(&a.0[4..8], &0x0102_0304u32.to_ne_bytes());
        assert_eq!(&a.0[8..16], &0x1122_3344_5566_7788u64.to_ne_bytes());
        assert_eq!(&a.0[48..63], b"a_very_long_pro");
        assert_eq!(a.0[63], 0, "names stay NUL-terminated");
    }

    /// Real kernel: a trivial socket filter loads, a broken one returns the verifier's log,
    /// and a hash map takes, replaces and deletes an entry. Skips without root.
    #[test]
    fn load_and_maps_on_this_kernel() {
        if !root() {
            eprintln!("SKIP: bpf syscall tests need root");
            return;
        }
        let ok = [Insn::mov_imm(R0, 0), Insn::exit()];
        let spec = ProgSpec {
            kind: ProgType::SocketFilter,
            insns: &ok,
            license: "Dual MIT/GPL",
            name: "cs_test",
            attach_type: 0,
            flags: 0,
        };
        prog_load(&spec).expect("a two-instruction filter loads");
        // r0 is never set: the verifier refuses and says why.
        let bad = [Insn::exit()];
        let err = prog_load(&ProgSpec { insns: &bad, ..spec }).expect_err("refused");
        assert!(err.log.contains("R0 !read_ok"), "log: {}", err.log);
        let m = map_create(MapType::Hash, 4, 4, 8, "cs_test").expect("map");
        map_update(m.as_fd(), &1u32.to_ne_bytes(), &2u32.to_ne_bytes(), (4, 4)).expect("insert");
        map_update(m.as_fd(), &1u32.to_ne_bytes(), &3u32.to_ne_bytes(), (4, 4)).expect("replace");
        map_delete(m.as_fd(), &1u32.to_ne_bytes(), 4).expect("delete");
        let gone = map_delete(m.as_fd(), &1u32.to_ne_bytes(), 4).expect_err("already gone");
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        assert!(map_update(m.as_fd(), &[0; 3], &[0; 4], (4, 4)).is_err(), "short key refused");
    }
}
