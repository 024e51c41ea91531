//! Measurements: pollers of kernel state inside namespaces (each client's neighbour entry for
//! the VIP, which ATM holds the VIP address), the client's per-request CSV, and the ARP
//! packets (IPv4) and Neighbor Advertisements (IPv6) for the VIP in a tcpdump capture.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};

use crate::ns;
use crate::traffic::unix_ms;

const POLL_MS: u64 = 50;
const MAX_SAMPLES: usize = 100_000;

/// Changes of a polled value: (unix ms, value).
pub type Changes = Vec<(u64, String)>;

/// What a poller reads.
#[derive(Clone, Copy, Debug)]
pub enum Probe {
    /// The MAC of the VIP in the namespace's neighbour table (ARP or NDP).
    NeighbourMac(IpAddr),
    /// Whether the namespace has the address.
    HasAddress(Ipv4Addr),
}

/// A thread polling one namespace; its changes are `(unix ms, value)`.
#[derive(Debug)]
pub struct Poller {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<Changes>>>,
}

impl Poller {
    pub fn start(nsname: &str, probe: Probe) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, n) = (stop.clone(), nsname.to_string());
        let thread = std::thread::spawn(move || {
            ns::netlink_in(&n, move |handle| async move {
                let mut changes: Vec<(u64, String)> = Vec::new();
                while !s.load(Ordering::Relaxed) && changes.len() < MAX_SAMPLES {
                    let v = match probe {
                        Probe::NeighbourMac(ip) => neighbour(&handle, ip).await?,
                        Probe::HasAddress(ip) => has_address(&handle, ip).await?.to_string(),
                    };
                    if changes.last().is_none_or(|(_, last)| *last != v) {
                        changes.push((unix_ms(), v));
                    }
                    tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
                }
                Ok(changes)
            })
        });
        Poller { stop, thread: Some(thread) }
    }

    pub fn finish(mut self) -> anyhow::Result<Vec<(u64, String)>> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => anyhow::bail!("poller thread panicked"),
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub fn mac_text(m: &[u8]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

async fn neighbour(handle: &rtnetlink::Handle, ip: IpAddr) -> anyhow::Result<String> {
    let mut list = handle.neighbours().get().execute();
    while let Some(n) = list.try_next().await? {
        if matches!(
            n.header.state,
            NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
        ) {
            continue;
        }
        let (mut dst, mut mac) = (None, None);
        for a in &n.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => dst = Some(IpAddr::V4(*d)),
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(d)) => dst = Some(IpAddr::V6(*d)),
                NeighbourAttribute::LinkLayerAddress(m) => mac = Some(mac_text(m)),
                _ => {}
            }
        }
        if dst == Some(ip)
            && let Some(m) = mac
        {
            return Ok(m);
        }
    }
    Ok("none".into())
}

async fn has_address(handle: &rtnetlink::Handle, ip: Ipv4Addr) -> anyhow::Result<bool> {
    let mut list = handle.address().get().execute();
    while let Some(a) = list.try_next().await? {
        for attr in &a.attributes {
            if let AddressAttribute::Address(IpAddr::V4(x)) | AddressAttribute::Local(IpAddr::V4(x)) = attr
                && *x == ip
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// One client's results.
#[derive(Debug, Default, Clone)]
pub struct ClientResult {
    pub start_ms: u64,
    pub end_ms: u64,
    /// (start, end, ok, server or error) in unix ms.
    pub requests: Vec<(u64, u64, bool, String)>,
    pub flows: u64,
    pub flows_lost: u64,
    /// Per lost flow, the servers that answered it (`+`-joined, as the client wrote them).
    pub lost_flow_servers: Vec<String>,
    pub flow_notes: Vec<String>,
}

impl ClientResult {
    pub fn parse(text: &str) -> ClientResult {
        let mut r = ClientResult::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split(',').collect();
            let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            match f.first() {
                Some(&"start") => (r.start_ms, r.end_ms) = (num(1), num(2)),
                Some(&"req") => {
                    r.requests.push((num(1), num(2), num(3) == 1, f.get(4).unwrap_or(&"").to_string()))
                }
                Some(&"flow") => {
                    r.flows += 1;
                    if num(5) == 1 {
                        r.flows_lost += 1;
                        r.lost_flow_servers.push(f.get(6).unwrap_or(&"").to_string());
                        r.flow_notes.push(format!(
                            "flow {}: servers {:?}, {} replies, {}",
                            f.get(1).unwrap_or(&"?"),
                            f.get(6).unwrap_or(&""),
                            num(4),
                            f.get(7).unwrap_or(&"")
                        ));
                    }
                }
                _ => {}
            }
        }
        r
    }

    /// Longest client-observed outage, like the simulator: the longest gap between answered
    /// requests (by completion time), the end of the run included, less one probe interval
    /// (the start-up before the first answer is not an outage, as in the simulator).
    pub fn outage_ms(&self, rate: u32) -> u64 {
        let probe = 1000 / u64::from(rate.max(1));
        let mut ok: Vec<u64> = self.requests.iter().filter(|r| r.2).map(|r| r.1).collect();
        ok.sort_unstable();
        let Some(&last) = ok.last() else { return self.end_ms.saturating_sub(self.start_ms) };
        let gap = ok.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        gap.max(self.end_ms.saturating_sub(last)).saturating_sub(probe)
    }

    /// Requests that failed (timed out, refused, reset, bad answer) after the first answered
    /// one: the start-up before the cluster answers is not a loss, as in the simulator.
    pub fn lost(&self) -> u64 {
        let Some(first) = self.requests.iter().filter(|r| r.2).map(|r| r.1).min() else { return 0 };
        self.requests.iter().filter(|r| !r.2 && r.0 >= first).count() as u64
    }

    /// Answered requests per 100 ms from `t0` for `buckets` buckets.
    pub fn series(&self, t0: u64, buckets: usize) -> Vec<u32> {
        let mut v = vec![0u32; buckets];
        for r in self.requests.iter().filter(|r| r.2) {
            let b = (r.1.saturating_sub(t0) / 100) as usize;
            if let Some(x) = v.get_mut(b) {
                *x += 1;
            }
        }
        v
    }

    /// Requests answered by each server.
    pub fn by_server(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for r in self.requests.iter().filter(|r| r.2) {
            *m.entry(r.3.clone()).or_insert(0) += 1;
        }
        m
    }
}

/// Announcements of `ip` in a pcap file: (unix ms, sender MAC, gratuitous). For IPv4 the
/// ARP packets whose sender is `ip` (gratuitous: target `ip` too); for IPv6 the Neighbor
/// Advertisements whose target is `ip` (gratuitous: unsolicited, the Solicited flag clear),
/// the sender being the Ethernet source.
pub fn pcap_neighbour(bytes: &[u8], ip: IpAddr) -> anyhow::Result<Vec<(u64, String, bool)>> {
    let mut out = Vec::new();
    for (ms, data) in pcap_frames(bytes)? {
        let found = match ip {
            IpAddr::V4(v4) => arp_of(data, v4),
            IpAddr::V6(v6) => na_of(data, v6),
        };
        out.extend(found.map(|(mac, g)| (ms, mac, g)));
    }
    Ok(out)
}

/// An ARP packet from `ip`: (sender MAC, gratuitous).
fn arp_of(data: &[u8], ip: Ipv4Addr) -> Option<(String, bool)> {
    // Ethernet (14) + ARP (28): ethertype 0x0806, IPv4 over Ethernet.
    if data.len() < 42 || data[12..14] != [0x08, 0x06] {
        return None;
    }
    let arp = &data[14..];
    let sender_ip = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
    let target_ip = Ipv4Addr::new(arp[24], arp[25], arp[26], arp[27]);
    (sender_ip == ip).then(|| (mac_text(&arp[8..14]), target_ip == ip))
}

/// A Neighbor Advertisement for `ip` (no extension headers, as NDP sends them): (Ethernet
/// source MAC, unsolicited).
fn na_of(data: &[u8], ip: std::net::Ipv6Addr) -> Option<(String, bool)> {
    // Ethernet (14) + IPv6 (40) + NA (24): ethertype 0x86dd, next header 58, type 136.
    if data.len() < 78 || data[12..14] != [0x86, 0xdd] || data[20] != 58 || data[54] != 136 {
        return None;
    }
    let target: [u8; 16] = data[62..78].try_into().ok()?;
    let solicited = data[58] & 0x40 != 0;
    (std::net::Ipv6Addr::from(target) == ip).then(|| (mac_text(&data[6..12]), !solicited))
}

/// The frames of a pcap file (Ethernet link type): (unix ms, bytes).
fn pcap_frames(bytes: &[u8]) -> anyhow::Result<Vec<(u64, &[u8])>> {
    anyhow::ensure!(bytes.len() >= 24, "pcap: short file");
    let magic = u32::from_le_bytes(bytes[0..4].try_into()?);
    let (le, nanos) = match magic {
        0xa1b2c3d4 => (true, false),
        0xa1b23c4d => (true, true),
        0xd4c3b2a1 => (false, false),
        0x4d3cb2a1 => (false, true),
        m => anyhow::bail!("pcap: bad magic {m:#x}"),
    };
    let u32at = |b: &[u8], o: usize| {
        let a: [u8; 4] = b[o..o + 4].try_into().unwrap_or([0; 4]);
        if le { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) }
    };
    let linktype = u32at(bytes, 20);
    anyhow::ensure!(linktype == 1, "pcap: link type {linktype}, expected Ethernet");
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= bytes.len() {
        let (sec, frac, caplen) = (u32at(bytes, off), u32at(bytes, off + 4), u32at(bytes, off + 8) as usize);
        let data = &bytes[off + 16..(off + 16 + caplen).min(bytes.len())];
        off += 16 + caplen;
        let ms = u64::from(sec) * 1000 + u64::from(frac) / if nanos { 1_000_000 } else { 1000 };
        out.push((ms, data));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_is_the_longest_gap_less_one_probe() {
        let text = "start,1000,3000\nreq,1000,1010,1,node1\nreq,1005,1015,1,node1\nreq,1100,1500,0,timed out\nreq,1600,1610,1,node2\nreq,2990,2995,1,node2\nflow,0,1000,2990,10,0,node1,\nflow,1,1000,1500,5,1,node1,closed\n";
        let r = ClientResult::parse(text);
        assert_eq!(r.requests.len(), 5);
        assert_eq!((r.flows, r.flows_lost), (2, 1));
        // gaps: 5, 595, 1385 -> 1385 - 5 (200/s)
        assert_eq!(r.outage_ms(200), 1380);
        assert_eq!(r.series(1000, 20)[0], 2);
    }

    #[test]
    fn pcap_arp_finds_gratuitous_announcements() {
        let mut f = Vec::new();
        f.extend(0xa1b2c3d4u32.to_le_bytes());
        f.extend([2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0]);
        let mut frame = vec![0xff; 6];
        frame.extend([2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
        frame.extend([2, 0, 0, 0, 0, 1, 10, 0, 0, 99, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 10, 0, 0, 99]);
        f.extend(5u32.to_le_bytes());
        f.extend(250_000u32.to_le_bytes());
        f.extend((frame.len() as u32).to_le_bytes());
        f.extend((frame.len() as u32).to_le_bytes());
        f.extend(&frame);
        let v = pcap_neighbour(&f, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99))).expect("parses");
        assert_eq!(v, vec![(5250, "02:00:00:00:00:01".to_string(), true)]);
    }

    #[test]
    fn pcap_neighbour_finds_unsolicited_advertisements() {
        let vip: std::net::Ipv6Addr = "fd00:c5::99".parse().expect("v6");
        let na = |flags: u8| {
            let mut fr = vec![0x33, 0x33, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x86, 0xdd];
            fr.extend([0x60, 0, 0, 0, 0, 32, 58, 255]);
            fr.extend(vip.octets()); // source
            fr.extend("ff02::1".parse::<std::net::Ipv6Addr>().expect("v6").octets());
            fr.extend([136, 0, 0, 0, flags, 0, 0, 0]);
            fr.extend(vip.octets());
            fr.extend([2, 1, 2, 0, 0, 0, 0, 2]);
            fr
        };
        let mut f = Vec::new();
        f.extend(0xa1b2c3d4u32.to_le_bytes());
        f.extend([2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0]);
        for (sec, flags) in [(7u32, 0x20u8), (8, 0x60)] {
            let frame = na(flags);
            f.extend(sec.to_le_bytes());
            f.extend(0u32.to_le_bytes());
            f.extend((frame.len() as u32).to_le_bytes());
            f.extend((frame.len() as u32).to_le_bytes());
            f.extend(&frame);
        }
        let v = pcap_neighbour(&f, IpAddr::V6(vip)).expect("parses");
        let mac = "02:00:00:00:00:02".to_string();
        assert_eq!(v, vec![(7000, mac.clone(), true), (8000, mac, false)], "override only, then solicited");
        assert!(pcap_neighbour(&f, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99))).expect("parses").is_empty());
    }
}

/// What one daemon's log says: role changes `(unix ms, role)` and a lower bound of the
/// heartbeats it rejected (the daemon logs each reason's cumulative count at powers of two).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DaemonLog {
    pub roles: Vec<(u64, String)>,
    pub rejected_at_least: u64,
}

/// Parses the `tracing` fmt lines of `clusterserverd` (see `src/daemon/mod.rs`).
pub fn parse_daemon_log(text: &str) -> DaemonLog {
    let mut d = DaemonLog::default();
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for line in text.lines() {
        let Some(ms) = line.split_whitespace().next().and_then(rfc3339_ms) else { continue };
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .map(String::from)
        };
        if line.contains("clusterserverd::role") && line.contains("role change") {
            if let Some(role) = field("role") {
                d.roles.push((ms, role));
            }
        } else if line.contains("heartbeat rejected") {
            let n = field("count").and_then(|c| c.parse().ok()).unwrap_or(1);
            let e = by_reason.entry(field("reason").unwrap_or_default()).or_insert(0);
            *e = (*e).max(n);
        }
    }
    d.rejected_at_least = by_reason.values().sum();
    d
}

/// `2026-11-22T03:10:00.123456Z` → Unix milliseconds.
pub fn rfc3339_ms(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut dp = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (dp.next()??, dp.next()??, dp.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut tp = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, sec) = (tp.next()??, tp.next()??, tp.next()??);
    let ms_frac: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // Days from the civil date (H. Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + h) * 60 + mi) * 60 + sec).ok().map(|s| s * 1000 + ms_frac as u64)
}

#[cfg(test)]
mod log_tests {
    use super::*;

    #[test]
    fn daemon_log_lines_give_roles_and_rejections() {
        let text = "2026-11-22T03:10:00.123456Z  INFO clusterserverd::role: role change node=atm1 role=primary epoch=1 reason=NoPrimary\n\
                    2026-11-22T03:10:01.000000Z  WARN clusterserverd: heartbeat rejected node=atm1 reason=bad_mac count=1\n\
                    2026-11-22T03:10:01.500000Z  WARN clusterserverd: heartbeat rejected node=atm1 reason=bad_mac count=64\n\
                    2026-11-22T03:10:02.000000Z  WARN clusterserverd: heartbeat rejected node=atm1 reason=replay count=32\n\
                    2026-11-22T03:10:03.000000Z  INFO clusterserverd::role: role change node=atm1 role=backup epoch=2 reason=HigherEpoch\n";
        let d = parse_daemon_log(text);
        let t0 = rfc3339_ms("2026-11-22T03:10:00.123456Z").expect("time");
        assert_eq!(t0 % 1000, 123);
        assert_eq!(rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(d.roles, vec![(t0, "primary".into()), (t0 + 2877, "backup".into())]);
        assert_eq!(d.rejected_at_least, 96);
    }
}
