//! The XDP classifier: which frames go to the AF_XDP sockets (the engine) and which stay
//! with the kernel.
//!
//! ## What is redirected
//!
//! The program parses Ethernet (plus one 802.1Q or 802.1ad tag), then IPv4 (unfragmented)
//! or IPv6 (TCP/UDP directly after the fixed header), and looks the packet up in one hash
//! map, the [`MatchSet`], in this order:
//!
//! 1. **destination is a local address** of this host (`LOCAL` key): `XDP_PASS`. The ATM's
//!    own traffic (heartbeats on 17100, sync, admin on 17101, SSH, health-check replies
//!    from servers, which would otherwise match step 3) goes to the kernel, as the kernel's
//!    `local` table comes before the TUN backend's steering rules;
//! 2. **destination is a VIP** (`VIP` key, address only): redirect, except ICMPv6 Neighbor
//!    Discovery (types 133-137) for the VIP (answered by the daemon's own responder on an
//!    `AF_PACKET` socket, which never sees a redirected frame). All other traffic to a VIP
//!    goes to the engine, which drops and counts what no service takes, exactly as the TUN
//!    backend's `to VIP` rule does; passing it instead would let the kernel forward a packet
//!    for a non-local VIP back out towards whoever owns it (ourselves: a loop until TTL);
//! 3. **TCP/UDP source is a NAT real server's address and port** (`REPLY` key): redirect
//!    (the replies the engine translates back; the TUN backend's `from SERVER` rules);
//! 4. everything else (ARP, NDP, other hosts' traffic): `XDP_PASS`.
//!
//! A redirect is `bpf_redirect_map(xsks, rx_queue_index, XDP_PASS)`: a queue without a
//! socket passes the frame to the kernel instead of dropping it.
//!
//! ## Why a hash map and not constants baked into the program
//!
//! A reload that adds a VIP or a server changes a few map entries ([`MatchSet::keys`]
//! diffed and applied by the shell) while the program, the link and the sockets stay as
//! they are: no verifier run, no link update, no window in which two programs disagree.
//! Baked constants would make the program grow with the config (a compare per entry, so
//! hundreds of services would mean thousands of instructions) and every reload a
//! program swap. One lookup in a small hash map costs tens of nanoseconds; three at most
//! per frame.
//!
//! ## Key layout (20 bytes, the map's key)
//!
//! `addr[16]` (an IPv4 address in the first 4 bytes, the rest zero), `port` (network
//! order; 0 for `VIP`/`LOCAL`), `proto` (0 for `VIP`/`LOCAL`), `flags` (`SRC` | `V6` |
//! `LOCAL` bits). The program writes addresses and ports with the same byte order it loads
//! them, so the bytes in the map are the bytes on the wire.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::platform::linux::bpf::insn::{
    Alu, Asm, AsmError, Cond, Insn, Label, PSEUDO_MAP_FD, R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10, Size,
    helper,
};

/// Size of a match key.
pub const KEY_LEN: usize = 20;
/// Size of a match value (unused, one `u32`).
pub const VALUE_LEN: usize = 4;
/// Capacity of the match map.
pub const MAX_MATCH: u32 = 16384;

/// Key flags.
pub const FLAG_SRC: u8 = 1;
pub const FLAG_V6: u8 = 2;
pub const FLAG_LOCAL: u8 = 4;

/// `XDP_PASS`.
pub const XDP_PASS: i32 = 2;

/// IP protocol numbers.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: i32 = 58;
/// ICMPv6 Neighbor Discovery types (router solicitation .. redirect).
const NDP_FIRST: u8 = 133;
const NDP_LAST: u8 = 137;

/// What the classifier redirects (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MatchSet {
    /// VIP addresses: every packet to them goes to the engine (but ICMPv6).
    pub vips: BTreeSet<IpAddr>,
    /// NAT real servers (address, port, IP protocol): their TCP/UDP replies.
    pub replies: BTreeSet<(IpAddr, u16, u8)>,
    /// This host's own addresses: always the kernel's.
    pub local: BTreeSet<IpAddr>,
}

/// One map key.
pub fn key(addr: IpAddr, port: u16, proto: u8, flags: u8) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    let v6 = match addr {
        IpAddr::V4(a) => {
            k[..4].copy_from_slice(&a.octets());
            0
        }
        IpAddr::V6(a) => {
            k[..16].copy_from_slice(&a.octets());
            FLAG_V6
        }
    };
    k[16..18].copy_from_slice(&port.to_be_bytes());
    k[18] = proto;
    k[19] = flags | v6;
    k
}

impl MatchSet {
    /// Every map key of this set.
    pub fn keys(&self) -> BTreeSet<[u8; KEY_LEN]> {
        let mut out = BTreeSet::new();
        for v in &self.vips {
            out.insert(key(*v, 0, 0, 0));
        }
        for (a, port, proto) in &self.replies {
            out.insert(key(*a, *port, *proto, FLAG_SRC));
        }
        for a in &self.local {
            out.insert(key(*a, 0, 0, FLAG_LOCAL));
        }
        out
    }

    /// What the program decides for a parsed packet (the same rules in Rust: the fuzz target
    /// and the unit tests check the frame parser against it, the lab test the real program).
    pub fn redirects(&self, p: &super::frame::Classified) -> bool {
        if self.local.contains(&p.dst) {
            return false;
        }
        if self.vips.contains(&p.dst) {
            let ndp = p.proto == PROTO_ICMPV6 as u8
                && p.icmp6_type.is_none_or(|t| (NDP_FIRST..=NDP_LAST).contains(&t));
            return !ndp;
        }
        match p.ports {
            Some((sport, _)) => self.replies.contains(&(p.src, sport, p.proto)),
            None => false,
        }
    }
}

/// Stack slots: the destination key at fp-24, the source key at fp-48.
const KD: i16 = -24;
const KS: i16 = -48;
/// Offsets inside a key.
const K_PORT: i16 = 16;
const K_PROTO: i16 = 18;
const K_FLAGS: i16 = 19;

/// Ethertypes as a little-endian `u16` load of the wire bytes sees them.
const LE_IPV4: i32 = 0x0008;
const LE_IPV6: i32 = 0xdd86;
const LE_VLAN: i32 = 0x0081;
const LE_QINQ: i32 = 0xa888;
/// IPv4 MF flag and fragment offset, as a little-endian load of bytes 6-7 sees them.
const LE_FRAG_MASK: i32 = 0xff3f;

/// `struct xdp_md` offsets.
const MD_DATA: i16 = 0;
const MD_DATA_END: i16 = 4;
const MD_RX_QUEUE: i16 = 16;

/// The classifier, with the descriptors of the match map and the XSK map in its `ld_imm64`
/// instructions. Registers: r6 ctx, r7 data, r8 data_end, r9 the current header.
pub fn classifier(match_map: i32, xsk_map: i32) -> Result<Vec<Insn>, AsmError> {
    classifier_with(match_map, xsk_map, XDP_PASS)
}

/// [`classifier`] with `miss` as the action of a redirect to a queue without a socket
/// (tests use another value than `XDP_PASS` to tell "redirected" from "passed").
pub fn classifier_with(match_map: i32, xsk_map: i32, miss: i32) -> Result<Vec<Insn>, AsmError> {
    let mut a = Asm::new();
    let pass = a.new_label();
    let redirect = a.new_label();
    let [vlan, l3, v4, v6, l4, ports, lookups] = [(); 7].map(|()| a.new_label());
    a.push(Insn::mov_reg(R6, R1));
    a.push(Insn::ldx(Size::W, R7, R6, MD_DATA));
    a.push(Insn::ldx(Size::W, R8, R6, MD_DATA_END));
    for off in [KD, KD + 8, KD + 16, KS, KS + 8, KS + 16] {
        a.push(Insn::st(Size::DW, R10, off, 0));
    }
    // Ethernet.
    a.push(Insn::mov_reg(R9, R7)).push(Insn::alu_imm(Alu::Add, R9, 14));
    a.jmp_reg(Cond::Gt, R9, R8, pass);
    a.push(Insn::ldx(Size::H, R2, R7, 12));
    a.jmp_imm(Cond::Eq, R2, LE_VLAN, vlan);
    a.jmp_imm(Cond::Eq, R2, LE_QINQ, vlan);
    a.ja(l3);
    a.label(vlan);
    a.push(Insn::mov_reg(R3, R7)).push(Insn::alu_imm(Alu::Add, R3, 18));
    a.jmp_reg(Cond::Gt, R3, R8, pass);
    a.push(Insn::ldx(Size::H, R2, R7, 16));
    a.push(Insn::mov_reg(R9, R3));
    a.label(l3);
    a.jmp_imm(Cond::Eq, R2, LE_IPV4, v4);
    a.jmp_imm(Cond::Eq, R2, LE_IPV6, v6);
    a.ja(pass);
    // IPv4: 20 bytes at least, no fragment, addresses into both keys.
    a.label(v4);
    a.push(Insn::mov_reg(R3, R9)).push(Insn::alu_imm(Alu::Add, R3, 20));
    a.jmp_reg(Cond::Gt, R3, R8, pass);
    a.push(Insn::ldx(Size::H, R4, R9, 6));
    a.jmp_imm(Cond::Set, R4, LE_FRAG_MASK, pass);
    a.push(Insn::ldx(Size::B, R5, R9, 9));
    a.push(Insn::ldx(Size::W, R3, R9, 16)).push(Insn::stx(Size::W, R10, KD, R3));
    a.push(Insn::ldx(Size::W, R3, R9, 12)).push(Insn::stx(Size::W, R10, KS, R3));
    a.push(Insn::st(Size::B, R10, KS + K_FLAGS, i32::from(FLAG_SRC)));
    a.push(Insn::ldx(Size::B, R4, R9, 0));
    a.push(Insn::alu_imm(Alu::And, R4, 0x0f)).push(Insn::alu_imm(Alu::Lsh, R4, 2));
    a.jmp_imm(Cond::Lt, R4, 20, pass);
    a.push(Insn::alu_reg(Alu::Add, R9, R4));
    a.ja(l4);
    // IPv6: the fixed header; the next header must be the transport.
    a.label(v6);
    a.push(Insn::mov_reg(R3, R9)).push(Insn::alu_imm(Alu::Add, R3, 40));
    a.jmp_reg(Cond::Gt, R3, R8, pass);
    a.push(Insn::ldx(Size::B, R5, R9, 6));
    for i in 0..4i16 {
        a.push(Insn::ldx(Size::W, R3, R9, 24 + 4 * i)).push(Insn::stx(Size::W, R10, KD + 4 * i, R3));
        a.push(Insn::ldx(Size::W, R3, R9, 8 + 4 * i)).push(Insn::stx(Size::W, R10, KS + 4 * i, R3));
    }
    a.push(Insn::st(Size::B, R10, KS + K_FLAGS, i32::from(FLAG_SRC | FLAG_V6)));
    a.push(Insn::alu_imm(Alu::Add, R9, 40));
    // Transport: the source port into the source key (the destination key stays address
    // only); r5 holds the protocol.
    a.label(l4);
    a.push(Insn::stx(Size::B, R10, KS + K_PROTO, R5));
    a.jmp_imm(Cond::Eq, R5, i32::from(PROTO_TCP), ports);
    a.jmp_imm(Cond::Eq, R5, i32::from(PROTO_UDP), ports);
    // No ports: the source key cannot match (its port stays 0 and no server has port 0).
    a.ja(lookups);
    a.label(ports);
    a.push(Insn::mov_reg(R3, R9)).push(Insn::alu_imm(Alu::Add, R3, 4));
    a.jmp_reg(Cond::Gt, R3, R8, pass);
    a.push(Insn::ldx(Size::H, R3, R9, 0)).push(Insn::stx(Size::H, R10, KS + K_PORT, R3));
    a.label(lookups);
    emit_lookups(&mut a, match_map, pass, redirect);
    a.label(redirect);
    a.push_all(&Insn::ld_imm64(R1, PSEUDO_MAP_FD, xsk_map as u32 as u64));
    a.push(Insn::ldx(Size::W, R2, R6, MD_RX_QUEUE));
    a.push(Insn::mov_imm(R3, miss));
    a.push(Insn::call(helper::REDIRECT_MAP));
    a.push(Insn::exit());
    a.label(pass);
    a.push(Insn::mov_imm(R0, XDP_PASS));
    a.push(Insn::exit());
    a.finish()
}

/// The three lookups: local destination (pass), VIP destination (redirect unless ICMPv6),
/// server source (redirect); else pass.
fn emit_lookups(a: &mut Asm, map: i32, pass: Label, redirect: Label) {
    let ld_map = Insn::ld_imm64(R1, PSEUDO_MAP_FD, map as u32 as u64);
    // The destination key's flags: LOCAL (| V6, from the source key's flags).
    a.push(Insn::ldx(Size::B, R3, R10, KS + K_FLAGS));
    a.push(Insn::alu_imm(Alu::And, R3, i32::from(FLAG_V6)));
    a.push(Insn::mov_reg(R4, R3)).push(Insn::alu_imm(Alu::Or, R4, i32::from(FLAG_LOCAL)));
    a.push(Insn::stx(Size::B, R10, KD + K_FLAGS, R4));
    a.push_all(&ld_map);
    a.push(Insn::mov_reg(R2, R10)).push(Insn::alu_imm(Alu::Add, R2, i32::from(KD)));
    a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
    a.jmp_imm(Cond::Ne, R0, 0, pass);
    // VIP: the same key with flags V6 only.
    a.push(Insn::ldx(Size::B, R3, R10, KS + K_FLAGS));
    a.push(Insn::alu_imm(Alu::And, R3, i32::from(FLAG_V6)));
    a.push(Insn::stx(Size::B, R10, KD + K_FLAGS, R3));
    a.push_all(&ld_map);
    a.push(Insn::mov_reg(R2, R10)).push(Insn::alu_imm(Alu::Add, R2, i32::from(KD)));
    a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
    let not_vip = a.new_label();
    a.jmp_imm(Cond::Eq, R0, 0, not_vip);
    // ICMPv6 to a VIP: Neighbor Discovery (types 133-137) stays with the kernel and the
    // daemon's responder; errors and echo go to the engine. r9 (callee-saved) is still the
    // transport header.
    a.push(Insn::ldx(Size::B, R3, R10, KS + K_PROTO));
    a.jmp_imm(Cond::Ne, R3, PROTO_ICMPV6, redirect);
    a.push(Insn::mov_reg(R3, R9)).push(Insn::alu_imm(Alu::Add, R3, 1));
    a.jmp_reg(Cond::Gt, R3, R8, pass);
    a.push(Insn::ldx(Size::B, R3, R9, 0));
    a.jmp_imm(Cond::Lt, R3, i32::from(NDP_FIRST), redirect);
    a.jmp_imm(Cond::Gt, R3, i32::from(NDP_LAST), redirect);
    a.ja(pass);
    a.label(not_vip);
    a.push_all(&ld_map);
    a.push(Insn::mov_reg(R2, R10)).push(Insn::alu_imm(Alu::Add, R2, i32::from(KS)));
    a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
    a.jmp_imm(Cond::Ne, R0, 0, redirect);
    a.ja(pass);
}

#[cfg(test)]
mod tests {
    use super::super::frame::{
        classify,
        tests::{tcp6, udp4},
    };
    use super::*;
    use crate::platform::linux::bpf::sys::{self, MapType, ProgSpec, ProgType};
    use std::os::fd::{AsFd, AsRawFd};

    fn set() -> MatchSet {
        let mut m = MatchSet::default();
        m.vips.insert(IpAddr::from([10, 0, 1, 99]));
        m.vips.insert("fd00::99".parse().unwrap());
        m.replies.insert((IpAddr::from([10, 0, 2, 20]), 8080, PROTO_UDP));
        m.replies.insert(("fd00:2::20".parse().unwrap(), 8080, PROTO_TCP));
        m.local.insert(IpAddr::from([10, 0, 2, 1]));
        m
    }

    /// (frame, redirected?) pairs every check below shares: the Rust model and the kernel.
    fn cases() -> Vec<(&'static str, Vec<u8>, bool)> {
        let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap();
        let mut frag = udp4(None, [10, 0, 0, 1], [10, 0, 1, 99], 1, 80);
        frag[14 + 6] = 0x20;
        let mut arp = udp4(None, [10, 0, 0, 1], [10, 0, 1, 99], 1, 80);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let mut wrong_proto = udp4(None, [10, 0, 2, 20], [10, 0, 0, 1], 8080, 5000);
        wrong_proto[14 + 9] = PROTO_TCP;
        let mut icmp6 = tcp6(v6("fd00::1"), v6("fd00::99"), 1, 2);
        icmp6[14 + 6] = 58;
        icmp6[14 + 40] = 135; // Neighbor Solicitation
        let mut too_big = icmp6.clone();
        too_big[14 + 40] = 2; // Packet Too Big
        vec![
            ("to a VIP", udp4(None, [10, 0, 0, 1], [10, 0, 1, 99], 5000, 80), true),
            ("to a VIP, any port", udp4(None, [10, 0, 0, 1], [10, 0, 1, 99], 5000, 22), true),
            ("to a VIP, VLAN-tagged", udp4(Some(7), [10, 0, 0, 1], [10, 0, 1, 99], 5000, 80), true),
            ("to a VIP over IPv6", tcp6(v6("fd00::1"), v6("fd00::99"), 40000, 80), true),
            ("ICMPv6 to a VIP (NDP)", icmp6, false),
            ("ICMPv6 error to a VIP", too_big, true),
            ("a NAT reply", udp4(None, [10, 0, 2, 20], [10, 0, 0, 1], 8080, 5000), true),
            ("a NAT reply over IPv6", tcp6(v6("fd00:2::20"), v6("fd00::1"), 8080, 40000), true),
            ("a reply from another port", udp4(None, [10, 0, 2, 20], [10, 0, 0, 1], 8081, 5000), false),
            ("a reply of the wrong protocol", wrong_proto, false),
            (
                "a server's answer to this host (health check)",
                udp4(None, [10, 0, 2, 20], [10, 0, 2, 1], 8080, 5000),
                false,
            ),
            ("heartbeat to this host", udp4(None, [10, 0, 2, 2], [10, 0, 2, 1], 17100, 17100), false),
            ("other traffic", udp4(None, [10, 0, 0, 1], [10, 0, 0, 2], 1, 2), false),
            ("a fragment", frag, false),
            ("ARP", arp, false),
            ("a runt", vec![0; 10], false),
        ]
    }

    #[test]
    fn the_model_decides_as_documented() {
        let m = set();
        for (what, f, want) in cases() {
            let got = classify(&f).map(|c| m.redirects(&c)).unwrap_or(false);
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn keys_are_distinct_per_kind_and_family() {
        let k = set().keys();
        assert_eq!(k.len(), 5);
        assert_eq!(
            key(IpAddr::from([1, 2, 3, 4]), 80, 6, FLAG_SRC)[..],
            [1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 80, 6, FLAG_SRC]
        );
        assert_eq!(key("::1".parse().unwrap(), 0, 0, FLAG_LOCAL)[19], FLAG_LOCAL | FLAG_V6);
    }

    #[test]
    fn classifier_is_about_a_hundred_instructions() {
        let p = classifier(3, 4).unwrap();
        assert!((60..=160).contains(&p.len()), "{} instructions", p.len());
    }

    /// The generated program in the kernel: the verifier accepts it, and `BPF_PROG_TEST_RUN`
    /// on every case gives the model's decision (a redirect to an empty XSK map returns the
    /// test's miss action, 3, instead of `XDP_PASS`). Skips without root.
    #[test]
    fn the_kernel_runs_the_classifier_as_modelled() {
        if !std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        }) {
            eprintln!("SKIP: loading XDP programs needs root");
            return;
        }
        let matches =
            sys::map_create(MapType::Hash, KEY_LEN as u32, VALUE_LEN as u32, 64, "cs_t_match").unwrap();
        for k in set().keys() {
            sys::map_update(matches.as_fd(), &k, &1u32.to_ne_bytes(), (KEY_LEN, VALUE_LEN)).unwrap();
        }
        let xsks = sys::map_create(MapType::XskMap, 4, 4, 4, "cs_t_xsks").unwrap();
        let insns = classifier_with(matches.as_raw_fd(), xsks.as_raw_fd(), 3).unwrap();
        let spec = ProgSpec {
            kind: ProgType::Xdp,
            insns: &insns,
            license: "Dual MIT/GPL",
            name: "cs_t_xdp",
            attach_type: sys::ATTACH_XDP,
            flags: 0,
        };
        let prog = sys::prog_load(&spec).unwrap_or_else(|e| panic!("{e}"));
        for (what, mut f, want) in cases() {
            // The kernel wants at least an Ethernet header's worth of data.
            if f.len() < 14 {
                f.resize(14, 0);
            }
            let r = sys::prog_test_run(prog.as_fd(), &f).unwrap();
            assert_eq!(r, if want { 3 } else { XDP_PASS as u32 }, "{what}");
        }
    }
}
