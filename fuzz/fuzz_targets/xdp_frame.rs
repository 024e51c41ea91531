//! The AF_XDP backend's frame handling on arbitrary bytes: L2 strip (Ethernet, one VLAN
//! tag), the classifier's view (addresses, protocol, ports) and the match decision, then an
//! Ethernet header rebuilt in front of the stripped packet. Nothing may panic; what is
//! classified must lie inside the frame and round-trip through the rebuilt header.
#![no_main]

use clusterserver::platform::linux::shell::xdp::frame::{self, ETH_HLEN};
use clusterserver::platform::linux::shell::xdp::program::MatchSet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(l3) = frame::l3(data) else { return };
    assert!(l3.offset + l3.len <= data.len());
    let ip = &data[l3.offset..l3.offset + l3.len];
    if let Ok(c) = frame::classify(data) {
        let mut m = MatchSet::default();
        m.vips.insert(c.dst);
        let ndp = c.proto == 58 && c.icmp6_type.is_none_or(|t| (133..=137).contains(&t));
        assert_eq!(m.redirects(&c), !ndp, "a VIP destination is redirected but NDP");
        m.local.insert(c.dst);
        assert!(!m.redirects(&c), "a local destination always stays with the kernel");
    }
    // Rebuild untagged: the same packet behind a fresh header strips back to itself.
    let mut out = vec![0u8; ETH_HLEN + ip.len()];
    let et = frame::ethertype_of(ip).unwrap_or(0x0800);
    frame::write_eth(&mut out, [2; 6], [4; 6], et).expect("room");
    out[ETH_HLEN..].copy_from_slice(ip);
    let again = frame::l3(&out).expect("a rebuilt frame parses");
    assert_eq!((again.offset, again.len), (ETH_HLEN, ip.len()));
});
