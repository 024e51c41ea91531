//! The `bgp` section (active-active mode): decoding and the rules inside it. The rules
//! across sections (the section is there exactly when `cluster.mode` is `active-active`;
//! ATM addresses are IPv4, as they are the BIRD router ids) are in [`super::validate`].

use super::decode::{Cx, boolean, file_path, host_ip, int, items, object, unique};
use super::json5::Node;
use super::types::{Bgp, BgpNeighbor};

/// Most BGP neighbours of one ATM.
pub const MAX_NEIGHBORS: usize = 16;

const KEYS: &[&str] = &[
    "local_as",
    "neighbors",
    "hold_s",
    "keepalive_s",
    "bfd",
    "bfd_interval_ms",
    "bfd_multiplier",
    "bird",
    "birdc",
    "control_socket",
    "config_file",
    "drain_ms",
    "join_sync_ms",
];

/// An AS number: 1..=4294967295 (0 is reserved).
fn asn(cx: &mut Cx, node: &Node, path: &str) -> Option<u32> {
    int(1, i128::from(u32::MAX))(cx, node, path)
}

pub(crate) fn bgp(cx: &mut Cx, node: &Node, path: &str) -> Option<Bgp> {
    let f = object(cx, node, path, KEYS)?;
    let local_as = f.req(cx, "local_as", asn);
    let neighbors = f.req(cx, "neighbors", neighbors);
    let mut b = Bgp::with(local_as.unwrap_or(1), Vec::new());
    b.hold_s = f.or(cx, "hold_s", b.hold_s, hold);
    b.keepalive_s = f.or(cx, "keepalive_s", b.keepalive_s, int(1, 21_845));
    b.bfd = f.or(cx, "bfd", b.bfd, boolean);
    b.bfd_interval_ms = f.or(cx, "bfd_interval_ms", b.bfd_interval_ms, int(10, 10_000));
    b.bfd_multiplier = f.or(cx, "bfd_multiplier", b.bfd_multiplier, int(1, 255));
    b.bird = f.or(cx, "bird", b.bird, file_path);
    b.birdc = f.or(cx, "birdc", b.birdc, file_path);
    b.control_socket = f.or(cx, "control_socket", b.control_socket, file_path);
    b.config_file = f.or(cx, "config_file", b.config_file, file_path);
    b.drain_ms = f.or(cx, "drain_ms", b.drain_ms, int(0, 600_000));
    b.join_sync_ms = f.or(cx, "join_sync_ms", b.join_sync_ms, int(0, 600_000));
    let timers_ok = cx.clean(&f.child("hold_s")) && cx.clean(&f.child("keepalive_s"));
    if timers_ok && b.hold_s != 0 && b.keepalive_s >= b.hold_s {
        let msg = format!("expected less than hold_s ({}), found {}", b.hold_s, b.keepalive_s);
        cx.error_at(&f.child("keepalive_s"), msg);
    }
    b.local_as = local_as?;
    b.neighbors = neighbors?;
    Some(b)
}

/// BGP's hold time: 0 (no keepalives) or 3..=65535 seconds (RFC 4271).
fn hold(cx: &mut Cx, node: &Node, path: &str) -> Option<u32> {
    let v: u32 = int(0, 65_535)(cx, node, path)?;
    if v == 1 || v == 2 {
        cx.error(node.pos, path, format!("expected 0 or 3..=65535 (RFC 4271), found {v}"));
        return None;
    }
    Some(v)
}

fn neighbors(cx: &mut Cx, node: &Node, path: &str) -> Option<Vec<BgpNeighbor>> {
    let items = items(cx, node, path, (1, MAX_NEIGHBORS), "BGP neighbors")?;
    let decoded: Vec<Option<BgpNeighbor>> = items.iter().map(|(p, n)| neighbor(cx, n, p)).collect();
    let addrs = items
        .iter()
        .zip(&decoded)
        .filter_map(|((p, _), n)| Some((format!("{p}.address"), n.as_ref()?.address)));
    unique(cx, addrs.collect::<Vec<_>>(), "neighbor address");
    decoded.into_iter().collect()
}

fn neighbor(cx: &mut Cx, node: &Node, path: &str) -> Option<BgpNeighbor> {
    let f = object(cx, node, path, &["address", "peer_as"])?;
    let address = f.req(cx, "address", host_ip);
    let peer_as = f.req(cx, "peer_as", asn);
    Some(BgpNeighbor { address: address?, peer_as: peer_as? })
}
