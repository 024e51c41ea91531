//! Who answers Neighbor Solicitations for the IPv6 VIP (issue 14: direct-routing and tunnel
//! nodes hold the VIP on `lo` and must never answer NDP for it).
//!
//! The helper `clusterlab ndp-probe IFACE TARGET [MAC...]` runs on a client: it sends a
//! Neighbor Solicitation for `TARGET` to its solicited-node group (what a client with no
//! entry sends), then one to each `MAC` with the VIP as IPv6 destination (what a client
//! whose entry points at that host sends: Linux's unicast NUD probe), and prints, per probe,
//! the MACs whose Neighbor Advertisements for `TARGET` came back within [`WAIT_MS`]:
//! `probe multicast answers 02:..` or `probe 02:.. answers none`. The unicast probes are the
//! demanding ones: a node reached that way would answer if it held the VIP on its LAN
//! interface or proxied NDP; the multicast one is dropped by a node's kernel before NDP
//! unless it joined the VIP's group.
//!
//! The runner ([`check`]) probes from the first client at the end of an IPv6 DR or tunnel
//! run, the nodes still set up: the multicast probe must be answered by the primary alone,
//! the unicast ones to the nodes by nobody, the one to the primary by the primary.

use std::io::Read;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clusterserver::dataplane::wire::{checksum, ndp};
use socket2::{Domain, Protocol, Socket, Type};

use crate::measure::mac_text;

/// How long each probe waits for advertisements.
pub const WAIT_MS: u64 = 300;
const ETH_P_IPV6: u16 = 0x86dd;

fn read_sys(iface: &str, what: &str) -> anyhow::Result<String> {
    let p = format!("/sys/class/net/{iface}/{what}");
    Ok(std::fs::read_to_string(&p).with_context(|| format!("reading {p}"))?.trim().to_string())
}

fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let v: Vec<u8> = s.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>()?;
    <[u8; 6]>::try_from(v).map_err(|_| anyhow::anyhow!("bad MAC {s:?}"))
}

/// A solicitation for `target` to `dst_mac` with IPv6 destination `target` (a unicast probe).
fn unicast_solicitation(src_mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr, dst_mac: [u8; 6]) -> Vec<u8> {
    let mut f = ndp::solicitation(src_mac, src, target);
    f[0..6].copy_from_slice(&dst_mac);
    f[38..54].copy_from_slice(&target.octets());
    f[56..58].copy_from_slice(&[0, 0]);
    let len = (f.len() - 54) as u32;
    let acc = checksum::pseudo_header_v6(src.octets(), target.octets(), 58, len);
    let c = !checksum::fold(checksum::sum(acc, &f[54..]));
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f
}

/// The sender MAC of a Neighbor Advertisement for `target` not sent by `me`.
fn advertiser(frame: &[u8], target: Ipv6Addr, me: [u8; 6]) -> Option<String> {
    let ok = frame.len() >= 78
        && frame[12..14] == [0x86, 0xdd]
        && frame[20] == 58
        && frame[54] == ndp::NEIGHBOR_ADVERTISEMENT
        && frame[62..78] == target.octets()
        && frame[6..12] != me;
    ok.then(|| mac_text(&frame[6..12]))
}

/// The helper: sends the probes on `iface` from its first global IPv6 address and prints
/// who answered each.
pub fn probe(iface: &str, src: Ipv6Addr, target: Ipv6Addr, unicast: &[String]) -> anyhow::Result<()> {
    let me = parse_mac(&read_sys(iface, "address")?)?;
    let ifindex: u32 = read_sys(iface, "ifindex")?.parse()?;
    let socket = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(i32::from(ETH_P_IPV6.to_be()))))?;
    clusterserver::platform::linux::netsys::bind_packet_socket(&socket, ifindex, ETH_P_IPV6)?;
    let mut probes = vec![("multicast".to_string(), ndp::solicitation(me, src, target))];
    for m in unicast {
        probes.push((m.clone(), unicast_solicitation(me, src, target, parse_mac(m)?)));
    }
    for (name, frame) in probes {
        socket.send(&frame)?;
        let mut seen: Vec<String> = Vec::new();
        let end = Instant::now() + Duration::from_millis(WAIT_MS);
        let mut buf = [0u8; 2048];
        while let Some(left) = end.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            socket.set_read_timeout(Some(left))?;
            let n = match (&socket).read(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(mac) = advertiser(&buf[..n], target, me).filter(|m| !seen.contains(m)) {
                seen.push(mac);
            }
        }
        let answers = if seen.is_empty() { "none".to_string() } else { seen.join(",") };
        println!("probe {name} answers {answers}");
    }
    Ok(())
}

/// The probe's lines: (probe, answering MACs).
pub fn parse(out: &str) -> Vec<(String, Vec<String>)> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("probe ")?;
            let (name, answers) = rest.split_once(" answers ")?;
            let macs =
                if answers == "none" { Vec::new() } else { answers.split(',').map(String::from).collect() };
            Some((name.to_string(), macs))
        })
        .collect()
}

/// What the probe's answers break, given the primary's MAC and the nodes' MACs (by name).
pub fn violations(
    answers: &[(String, Vec<String>)],
    primary: &str,
    nodes: &[(String, String)],
) -> Vec<String> {
    let mut v = Vec::new();
    let name = |m: &str| nodes.iter().find(|(_, x)| x == m).map_or(m.to_string(), |(n, _)| n.clone());
    for (probe, macs) in answers {
        let expected: Vec<String> =
            if probe == "multicast" || probe == primary { vec![primary.to_string()] } else { Vec::new() };
        if *macs != expected {
            let who: Vec<String> = macs.iter().map(|m| name(m)).collect();
            let to = if probe == "multicast" {
                "to the solicited-node group".to_string()
            } else {
                format!("to {}", name(probe))
            };
            v.push(format!(
                "NDP: a Neighbor Solicitation for the IPv6 VIP {to} was answered by {who:?}, expected only the primary ({})",
                if expected.is_empty() { "none: it was not sent to the primary".to_string() } else { primary.to_string() }
            ));
        }
    }
    v
}

/// Runs the probe helper (`cmd`, already set up to run on a client) and returns the report
/// lines and the violations.
pub fn check(
    cmd: std::process::Command,
    primary_mac: &str,
    nodes: &[(String, String)],
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let mut cmd = cmd;
    let out = cmd.output().context("ndp-probe")?;
    if !out.status.success() {
        bail!("ndp-probe failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let answers = parse(&text);
    if answers.len() != nodes.len() + 2 {
        bail!("ndp-probe printed {} probes, {} expected:\n{text}", answers.len(), nodes.len() + 2);
    }
    let lines = answers
        .iter()
        .map(|(p, m)| {
            let who = |x: &str| {
                if x == primary_mac {
                    "primary".to_string()
                } else {
                    nodes.iter().find(|(_, n)| n == x).map_or(x.to_string(), |(n, _)| n.clone())
                }
            };
            let answered: Vec<String> = m.iter().map(|x| who(x)).collect();
            format!(
                "NDP probe to {}: answered by {answered:?}",
                if p == "multicast" { p.clone() } else { who(p) }
            )
        })
        .collect();
    Ok((lines, violations(&answers, primary_mac, nodes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_primary_may_answer() {
        let nodes = vec![("node1".to_string(), "02:00:00:00:00:51".to_string())];
        let ok = parse(
            "probe multicast answers 02:00:00:00:00:01\nprobe 02:00:00:00:00:51 answers none\nprobe 02:00:00:00:00:01 answers 02:00:00:00:00:01\n",
        );
        assert!(violations(&ok, "02:00:00:00:00:01", &nodes).is_empty());
        let bad = parse(
            "probe multicast answers 02:00:00:00:00:01,02:00:00:00:00:51\nprobe 02:00:00:00:00:51 answers 02:00:00:00:00:51\n",
        );
        let v = violations(&bad, "02:00:00:00:00:01", &nodes);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[1].contains("node1"), "{v:?}");
    }

    #[test]
    fn a_unicast_probe_is_a_valid_solicitation_to_the_target() {
        let vip: Ipv6Addr = "fd00:c5::99".parse().expect("v6");
        let src: Ipv6Addr = "fd00:c5::101".parse().expect("v6");
        let f = unicast_solicitation([2, 0, 0, 0, 1, 1], src, vip, [2, 0, 0, 0, 0, 0x51]);
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 0x51]);
        assert_eq!(&f[38..54], &vip.octets());
        // The checksum over the pseudo-header and message folds to zero.
        let acc = checksum::pseudo_header_v6(src.octets(), vip.octets(), 58, (f.len() - 54) as u32);
        assert_eq!(checksum::fold(checksum::sum(acc, &f[54..])), 0xffff);
    }
}
