//! The BPF side of the backend: the match map, one XSK map and one classifier per
//! interface, attached through BPF links.
//!
//! A link lives as long as its descriptor: when the daemon exits or is killed, the kernel
//! detaches the program and frees the maps, and the interface is as before. A program left
//! by something else through the legacy netlink attach (`ip link set dev X xdp obj ...`)
//! would make `BPF_LINK_CREATE` fail with `EBUSY`, so one found at start is detached first
//! (an operator's program on our wire interface cannot coexist with ours anyway, and it is
//! logged). A link held by another live process is left alone: the start fails and the
//! daemon falls back to TUN, naming the reason.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkXdp, XdpAttached};

use super::program::{self, KEY_LEN, MAX_MATCH, MatchSet, VALUE_LEN};
use crate::platform::linux::bpf::sys::{self, MapType, ProgSpec, ProgType};
use crate::platform::linux::shell::ShellError;

/// Largest queue index an XSK map holds.
pub const MAX_QUEUES: u32 = 64;

/// How the program is attached to one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) XDP.
    Driver,
    /// Generic XDP (skb mode), where the driver has none.
    Generic,
}

/// One interface's program, XSK map and link.
#[derive(Debug)]
pub struct Port {
    pub ifindex: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub rx_queues: u32,
    pub mode: AttachMode,
    xsks: OwnedFd,
    _prog: OwnedFd,
    link: Option<OwnedFd>,
}

/// The maps and programs of one backend.
#[derive(Debug)]
pub struct Attachment {
    matches: OwnedFd,
    keys: BTreeSet<[u8; KEY_LEN]>,
    pub ports: Vec<Port>,
}

fn bpf_err(what: &str) -> impl FnOnce(io::Error) -> ShellError + '_ {
    move |e| ShellError::Config(format!("{what}: {e}"))
}

/// What the backend needs to know of an interface.
#[derive(Clone, Debug)]
pub struct LinkInfo {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub rx_queues: u32,
    /// A program attached (by anyone) right now.
    pub xdp_attached: bool,
}

/// Reads `name`'s index, MAC, RX queue count and XDP state.
pub async fn link_info(handle: &rtnetlink::Handle, name: &str) -> Result<LinkInfo, ShellError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    let link = match links.try_next().await {
        Ok(Some(l)) => l,
        _ => return Err(ShellError::NoInterface(name.to_string())),
    };
    let mut info = LinkInfo { ifindex: link.header.index, mac: [0; 6], rx_queues: 1, xdp_attached: false };
    for a in &link.attributes {
        match a {
            LinkAttribute::Address(m) if m.len() == 6 => info.mac.copy_from_slice(m),
            LinkAttribute::NumRxQueues(n) => info.rx_queues = (*n).max(1),
            LinkAttribute::Xdp(x) => {
                info.xdp_attached =
                    x.iter().any(|n| matches!(n, LinkXdp::Attached(a) if *a != XdpAttached::None));
            }
            _ => {}
        }
    }
    Ok(info)
}

/// Detaches a program attached through netlink (`IFLA_XDP_FD = -1`, each mode).
pub async fn detach_legacy(handle: &rtnetlink::Handle, ifindex: u32) -> Result<(), ShellError> {
    let mut last = Ok(());
    for flags in [0, sys::XDP_FLAGS_SKB_MODE, sys::XDP_FLAGS_DRV_MODE] {
        let msg = rtnetlink::LinkUnspec::new_with_index(ifindex)
            .append_extra_attribute(LinkAttribute::Xdp(vec![LinkXdp::Fd(-1), LinkXdp::Flags(flags)]))
            .build();
        last = handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|source| ShellError::Netlink { what: format!("detach XDP from {ifindex}"), source });
    }
    last
}

impl Attachment {
    /// Creates the match map (filled with `set`) and, per interface, an XSK map and the
    /// classifier; nothing is attached yet ([`Attachment::attach`]).
    pub fn new(set: &MatchSet, links: &[(String, LinkInfo)]) -> Result<Attachment, ShellError> {
        let matches = sys::map_create(MapType::Hash, KEY_LEN as u32, VALUE_LEN as u32, MAX_MATCH, "cs_match")
            .map_err(bpf_err("match map"))?;
        let mut a = Attachment { matches, keys: BTreeSet::new(), ports: Vec::new() };
        a.set_matches(set)?;
        for (name, info) in links {
            let xsks =
                sys::map_create(MapType::XskMap, 4, 4, MAX_QUEUES, "cs_xsks").map_err(bpf_err("xsk map"))?;
            let insns = program::classifier(a.matches.as_raw_fd(), xsks.as_raw_fd())
                .map_err(|e| ShellError::Config(format!("classifier: {e}")))?;
            let spec = ProgSpec {
                kind: ProgType::Xdp,
                insns: &insns,
                license: "Dual MIT/GPL",
                name: "cs_xdp",
                attach_type: sys::ATTACH_XDP,
                flags: 0,
            };
            let prog = sys::prog_load(&spec).map_err(|e| ShellError::Config(e.to_string()))?;
            a.ports.push(Port {
                ifindex: info.ifindex,
                name: name.clone(),
                mac: info.mac,
                rx_queues: info.rx_queues.min(MAX_QUEUES),
                mode: AttachMode::Driver,
                xsks,
                _prog: prog,
                link: None,
            });
        }
        Ok(a)
    }

    /// Puts socket `fd` in port `port`'s XSK map at `queue`.
    pub fn add_socket(
        &self,
        port: usize,
        queue: u32,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), ShellError> {
        let p = &self.ports[port];
        let v = (fd.as_raw_fd() as u32).to_ne_bytes();
        sys::map_update(p.xsks.as_fd(), &queue.to_ne_bytes(), &v, (4, 4)).map_err(bpf_err("xsk map update"))
    }

    /// Attaches every port's program: native mode, else generic.
    pub fn attach(&mut self) -> Result<(), ShellError> {
        for p in &mut self.ports {
            let prog = p._prog.as_fd();
            let (link, mode) = match sys::link_create_xdp(prog, p.ifindex, sys::XDP_FLAGS_DRV_MODE) {
                Ok(l) => (l, AttachMode::Driver),
                Err(_) => (
                    sys::link_create_xdp(prog, p.ifindex, sys::XDP_FLAGS_SKB_MODE)
                        .map_err(|e| ShellError::Config(format!("attach XDP to {}: {e}", p.name)))?,
                    AttachMode::Generic,
                ),
            };
            p.link = Some(link);
            p.mode = mode;
        }
        Ok(())
    }

    /// Makes the match map hold exactly `set` (new keys first, then stale ones removed).
    pub fn set_matches(&mut self, set: &MatchSet) -> Result<(), ShellError> {
        let keys = set.keys();
        if keys.len() > MAX_MATCH as usize {
            return Err(ShellError::Config(format!("{} match entries (at most {MAX_MATCH})", keys.len())));
        }
        let one = 1u32.to_ne_bytes();
        for k in keys.difference(&self.keys) {
            sys::map_update(self.matches.as_fd(), k, &one, (KEY_LEN, VALUE_LEN))
                .map_err(bpf_err("match map"))?;
        }
        for k in self.keys.difference(&keys) {
            match sys::map_delete(self.matches.as_fd(), k, KEY_LEN) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(bpf_err("match map")(e)),
            }
        }
        self.keys = keys;
        Ok(())
    }

    /// Detaches every program now (closing the links); dropping does the same.
    pub fn detach(&mut self) {
        for p in &mut self.ports {
            p.link = None;
        }
    }
}
