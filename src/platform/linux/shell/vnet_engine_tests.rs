//! The engine's whole-packet path against this shell's virtio-net helpers: what the engine
//! writes back is what the kernel (here, tun-rs's `gso_split`) can segment.

use crate::config::Forwarding;
use crate::dataplane::engine::Verdict;
use crate::dataplane::engine::tests::{CLIENT, S1, VIP, addrs, engine, run, t};
use crate::dataplane::wire::tcp::flags::{ACK, SYN};
use crate::dataplane::wire::{self, Ipv4Packet, build};

use super::vnet;

/// A TCP super-packet (GSO, partial checksum) of an established NAT flow, rewritten whole:
/// its partial sum is the pseudo-header sum of the new addresses (what the kernel's
/// segmentation starts from), and segmented (tun-rs's `gso_split`) it gives the original
/// payload in segments whose headers and checksums verify, in both directions; tunnel
/// packets are not taken whole.
#[test]
fn super_packets_rewritten_whole_segment_into_valid_packets() {
    use tun_rs::{VIRTIO_NET_HDR_GSO_TCPV4, VirtioNetHdr};
    let mut e = engine(Forwarding::Nat);
    run(&mut e, t(0), &build::tcp((CLIENT, 7), (VIP, 80), SYN, b""));
    run(&mut e, t(1), &build::tcp((S1, 8080), (CLIENT, 7), SYN | ACK, b""));
    run(&mut e, t(2), &build::tcp((CLIENT, 7), (VIP, 80), ACK, b""));
    let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    let partial = |mut p: Vec<u8>| {
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        let ps = wire::checksum::pseudo_header_v4(
            ip.src_bytes(),
            ip.dst_bytes(),
            ip.protocol(),
            ip.payload().len() as u16,
        );
        wire::put16(&mut p, 36, wire::checksum::fold(ps));
        p
    };
    let hdr = VirtioNetHdr {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 40,
        gso_size: 1448,
        csum_start: 20,
        csum_offset: 16,
    };
    for (pkt, want) in [
        (build::tcp((CLIENT, 7), (VIP, 80), ACK, &payload), (CLIENT, 7, S1, 8080)),
        (build::tcp((S1, 8080), (CLIENT, 7), ACK, &payload), (VIP, 80, CLIENT, 7)),
    ] {
        let pkt = partial(pkt);
        assert!(e.takes_whole(&pkt));
        let mut tx = vec![0u8; 65535];
        let Verdict::Tun { len } = e.process_offloaded(t(3), &pkt, &mut tx) else { panic!("not forwarded") };
        assert_eq!(len, pkt.len(), "layout kept");
        // What the kernel segments from: the pseudo-header sum of the rewritten packet
        // (tun-rs's split below recomputes it, so this is the check of the partial sum).
        assert_eq!(&partial(tx[..len].to_vec())[..], &tx[..len], "partial sum patched for the new addresses");
        let mut bufs = vec![vec![0u8; 1500]; 8];
        let mut sizes = vec![0; 8];
        let n = vnet::split(hdr, &mut tx[..len], &mut bufs, &mut sizes).unwrap();
        assert_eq!(n, 4);
        let mut data = Vec::new();
        for i in 0..n {
            let seg = &bufs[i][..sizes[i]];
            assert!(build::checksums_valid(seg), "segment {i}");
            assert_eq!(addrs(seg), want);
            data.extend_from_slice(&seg[40..]);
        }
        assert_eq!(data, payload);
    }
    let dr = engine(Forwarding::Dr);
    assert!(dr.takes_whole(&build::tcp((CLIENT, 7), (VIP, 80), ACK, b"x")));
    let tunnel = engine(Forwarding::Tunnel);
    assert!(!tunnel.takes_whole(&build::tcp((CLIENT, 7), (VIP, 80), ACK, b"x")));
}
