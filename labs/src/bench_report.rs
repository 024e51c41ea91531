//! The bench's figures: peers, loads, parsing the load generators' output, medians, ratios,
//! the printed table, the JSON report and the SVG chart.

use std::collections::BTreeMap;

use anyhow::bail;
use serde_json::{Value, json};

use crate::bench::Opts;

/// What balances the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    Nat,
    Dr,
    /// NAT and DR on the AF_XDP backend (`dataplane.backend: af_xdp`); opt-in peers.
    NatXdp,
    DrXdp,
    Nft,
    Haproxy,
}

impl Peer {
    pub const ALL: [Peer; 4] = [Peer::Nat, Peer::Dr, Peer::Nft, Peer::Haproxy];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Nat => "nat",
            Peer::Dr => "dr",
            Peer::NatXdp => "nat-xdp",
            Peer::DrXdp => "dr-xdp",
            Peer::Nft => "nftables",
            Peer::Haproxy => "haproxy",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Peer::Nat => "ours NAT",
            Peer::Dr => "ours DR",
            Peer::NatXdp => "ours NAT AF_XDP",
            Peer::DrXdp => "ours DR AF_XDP",
            Peer::Nft => "nftables",
            Peer::Haproxy => "HAProxy",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Peer> {
        Ok(match s {
            "nat" => Peer::Nat,
            "dr" => Peer::Dr,
            "nat-xdp" => Peer::NatXdp,
            "dr-xdp" => Peer::DrXdp,
            "nft" | "nftables" => Peer::Nft,
            "haproxy" => Peer::Haproxy,
            other => bail!("unknown peer {other:?} (nat, dr, nat-xdp, dr-xdp, nft, haproxy)"),
        })
    }

    fn ours(self) -> bool {
        matches!(self, Peer::Nat | Peer::Dr | Peer::NatXdp | Peer::DrXdp)
    }

    /// Direct routing (either backend).
    pub fn is_dr(self) -> bool {
        matches!(self, Peer::Dr | Peer::DrXdp)
    }
}

/// What traffic is offered. Each load has an IPv6 twin (`-v6`): the same generator to the
/// peer's IPv6 VIP, through the same balancer and server (NAT66, IPv6 direct routing,
/// nftables `ip6` DNAT, HAProxy bound on IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Load {
    Tcp1,
    Tcp4,
    Http,
    HttpClose,
    Udp,
    Tcp1V6,
    Tcp4V6,
    HttpV6,
    HttpCloseV6,
    UdpV6,
}

impl Load {
    pub const ALL: [Load; 10] = [
        Load::Tcp1,
        Load::Tcp4,
        Load::Http,
        Load::HttpClose,
        Load::Udp,
        Load::Tcp1V6,
        Load::Tcp4V6,
        Load::HttpV6,
        Load::HttpCloseV6,
        Load::UdpV6,
    ];

    /// The IPv4 load this one is the twin of (itself for IPv4).
    pub fn base(self) -> Load {
        match self {
            Load::Tcp1V6 => Load::Tcp1,
            Load::Tcp4V6 => Load::Tcp4,
            Load::HttpV6 => Load::Http,
            Load::HttpCloseV6 => Load::HttpClose,
            Load::UdpV6 => Load::Udp,
            v4 => v4,
        }
    }

    /// Whether the load goes to the IPv6 VIP.
    pub fn v6(self) -> bool {
        self.base() != self
    }

    pub fn name(self) -> &'static str {
        match self {
            Load::Tcp1 => "tcp1",
            Load::Tcp4 => "tcp4",
            Load::Http => "http",
            Load::HttpClose => "http-close",
            Load::Udp => "udp",
            Load::Tcp1V6 => "tcp1-v6",
            Load::Tcp4V6 => "tcp4-v6",
            Load::HttpV6 => "http-v6",
            Load::HttpCloseV6 => "http-close-v6",
            Load::UdpV6 => "udp-v6",
        }
    }

    pub fn tool(self) -> &'static str {
        match self.base() {
            Load::Http | Load::HttpClose => "wrk",
            _ => "iperf3",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Load::Tcp1 => "TCP, 1 stream",
            Load::Tcp4 => "TCP, 4 streams",
            Load::Http => "HTTP keep-alive",
            Load::HttpClose => "HTTP Connection: close",
            Load::Udp => "UDP 64-byte datagrams",
            Load::Tcp1V6 => "IPv6 TCP, 1 stream",
            Load::Tcp4V6 => "IPv6 TCP, 4 streams",
            Load::HttpV6 => "IPv6 HTTP keep-alive",
            Load::HttpCloseV6 => "IPv6 HTTP Conn.: close",
            Load::UdpV6 => "IPv6 UDP 64-byte dgrams",
        }
    }

    pub fn unit(self) -> &'static str {
        match self.base() {
            Load::Tcp1 | Load::Tcp4 => "Gbit/s",
            Load::Http | Load::HttpClose => "k req/s",
            _ => "k pkt/s",
        }
    }

    /// What [`Figure::machine_us_per_unit`] divides by.
    pub fn work_unit(self) -> &'static str {
        match self.base() {
            Load::Tcp1 | Load::Tcp4 => "MB",
            Load::Http | Load::HttpClose => "request",
            _ => "datagram",
        }
    }

    /// Work units in one unit of the figure per second (Gbit/s -> MB, k req/s -> requests).
    fn units_per_value(self) -> f64 {
        match self.base() {
            Load::Tcp1 | Load::Tcp4 => 1e9 / 8.0 / 1e6,
            _ => 1e3,
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Load> {
        match Load::ALL.iter().find(|l| l.name() == s) {
            Some(l) => Ok(*l),
            None => bail!("unknown load {s:?} (tcp1, tcp4, http, http-close, udp, each also with -v6)"),
        }
    }
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct Figure {
    pub peer: Peer,
    pub load: Load,
    pub rep: usize,
    /// In the load's unit.
    pub value: f64,
    /// CPU seconds of the balancing process over the load (ours, HAProxy).
    pub cpu_s: Option<f64>,
    /// Packets our data plane read (split segments) and batches (reads).
    pub packets: Option<u64>,
    pub batches: Option<u64>,
    /// Busy CPU seconds of the whole machine over the load (every process and the kernel:
    /// load generators, server, balancer, softirqs), from `/proc/stat`.
    pub machine_cpu_s: Option<f64>,
    /// The load's length in seconds.
    pub seconds: f64,
}

impl Figure {
    pub fn new(peer: Peer, load: Load, rep: usize, value: f64) -> Figure {
        Figure {
            peer,
            load,
            rep,
            value,
            cpu_s: None,
            packets: None,
            batches: None,
            machine_cpu_s: None,
            seconds: 0.0,
        }
    }

    /// Whole-machine CPU microseconds per unit of work ([`Load::work_unit`]): what a request,
    /// a megabyte or a datagram costs everything on the path together. On a quiet machine
    /// the difference between two peers is the cost of their balancing itself.
    pub fn machine_us_per_unit(&self) -> Option<f64> {
        let work = self.value * self.load.units_per_value() * self.seconds;
        let busy = self.machine_cpu_s?;
        (work > 0.0).then(|| busy * 1e6 / work)
    }

    /// CPU nanoseconds per packet read.
    pub fn ns_per_packet(&self) -> Option<f64> {
        let (c, p) = (self.cpu_s?, self.packets?);
        (p > 0).then(|| c * 1e9 / p as f64)
    }

    pub fn line(&self) -> String {
        let mut t = format!(
            "{:<9} {:<11} {:>9.2} {}",
            self.peer.name(),
            self.load.name(),
            self.value,
            self.load.unit()
        );
        if let Some(c) = self.cpu_s {
            t += &format!("  cpu {c:.2} s");
        }
        if let (Some(p), Some(b)) = (self.packets, self.batches) {
            t += &format!("  {p} packets in {b} reads");
        }
        if let Some(n) = self.ns_per_packet() {
            t += &format!("  {n:.0} ns/packet");
        }
        if let Some(u) = self.machine_us_per_unit() {
            t += &format!("  machine {u:.2} us/{}", self.load.work_unit());
        }
        t
    }
}

/// iperf3 `-J`, TCP: received Gbit/s.
pub fn iperf_tcp_gbps(text: &str) -> Option<f64> {
    let v: Value = serde_json::from_str(json_part(text)?).ok()?;
    Some(v["end"]["sum_received"]["bits_per_second"].as_f64()? / 1e9)
}

/// iperf3 `-J`, UDP: datagrams the server received per second, in thousands.
pub fn iperf_udp_kpps(text: &str) -> Option<f64> {
    let v: Value = serde_json::from_str(json_part(text)?).ok()?;
    let end = &v["end"];
    let (packets, lost, secs) = if end["sum_received"].is_object() {
        let s = &end["sum_received"];
        (s["packets"].as_f64()?, s["lost_packets"].as_f64().unwrap_or(0.0), s["seconds"].as_f64()?)
    } else {
        let s = &end["sum"];
        (s["packets"].as_f64()?, s["lost_packets"].as_f64()?, s["seconds"].as_f64()?)
    };
    (secs > 0.0).then(|| (packets - lost).max(0.0) / secs / 1e3)
}

fn json_part(text: &str) -> Option<&str> {
    Some(&text[text.find('{')?..=text.rfind('}')?])
}

/// wrk: `Requests/sec:` in thousands. A run with socket errors still counts its requests.
pub fn wrk_rps(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with("Requests/sec:"))?;
    Some(line.split(':').nth(1)?.trim().parse::<f64>().ok()? / 1e3)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// All figures of a run and their medians.
#[derive(Debug)]
pub struct Report {
    reps: usize,
    seconds: u64,
    udp_rate: String,
    peers: Vec<Peer>,
    loads: Vec<Load>,
    figures: Vec<Figure>,
    medians: BTreeMap<(Load, Peer), f64>,
    /// (max - min) / median over the repetitions: how noisy each figure was.
    spread: BTreeMap<(Load, Peer), f64>,
    ns_per_packet: BTreeMap<(Load, Peer), f64>,
    per_read: BTreeMap<(Load, Peer), f64>,
    machine: BTreeMap<(Load, Peer), f64>,
}

impl Report {
    pub fn new(opts: &Opts, figures: Vec<Figure>) -> Report {
        let mut by: BTreeMap<(Load, Peer), Vec<&Figure>> = BTreeMap::new();
        for f in &figures {
            by.entry((f.load, f.peer)).or_default().push(f);
        }
        let med = |g: &dyn Fn(&Figure) -> Option<f64>| -> BTreeMap<(Load, Peer), f64> {
            by.iter()
                .filter_map(|(k, fs)| median(fs.iter().filter_map(|f| g(f)).collect()).map(|m| (*k, m)))
                .collect()
        };
        let medians = med(&|f| Some(f.value));
        let spread = by
            .iter()
            .filter(|(_, fs)| fs.len() > 1)
            .filter_map(|(k, fs)| {
                let lo = fs.iter().map(|f| f.value).fold(f64::INFINITY, f64::min);
                let hi = fs.iter().map(|f| f.value).fold(0.0, f64::max);
                let m = *medians.get(k)?;
                (m > 0.0).then(|| (*k, (hi - lo) / m))
            })
            .collect();
        let ns_per_packet = med(&|f| f.ns_per_packet());
        let per_read = med(&|f| Some(f.packets? as f64 / f.batches.filter(|b| *b > 0)? as f64));
        let machine = med(&|f| f.machine_us_per_unit());
        Report {
            reps: opts.reps,
            seconds: opts.seconds,
            udp_rate: opts.udp_rate.clone(),
            peers: opts.peers.clone(),
            loads: opts.loads.clone(),
            figures,
            medians,
            spread,
            ns_per_packet,
            per_read,
            machine,
        }
    }

    fn ratio(&self, load: Load, ours: Peer, peer: Peer) -> Option<f64> {
        let (a, b) = (self.medians.get(&(load, ours))?, self.medians.get(&(load, peer))?);
        (*b > 0.0).then(|| a / b)
    }

    fn ratio_columns(&self) -> Vec<(Peer, Peer)> {
        let mut v = Vec::new();
        for ours in self.peers.iter().filter(|p| p.ours()) {
            for peer in self.peers.iter().filter(|p| !p.ours()) {
                v.push((*ours, *peer));
            }
        }
        v
    }

    /// The printed table: medians, ratios, then our CPU per packet.
    pub fn table(&self) -> String {
        let mut t = format!(
            "# clusterserver data-plane bench: medians of {} rep(s), {} s per load, UDP offered <= {} bit/s\n\
             # (load generators, balancer and server share 2 vCPUs with other work: compare columns, not runs)\n",
            self.reps, self.seconds, self.udp_rate
        );
        t += &format!("{:<24} {:<8}", "load", "unit");
        for p in &self.peers {
            t += &format!(" {:>9}", p.title());
        }
        let cols = self.ratio_columns();
        for (o, p) in &cols {
            t += &format!(" {:>12}", format!("{}/{}", short(*o), short(*p)));
        }
        t += "\n";
        for &l in &self.loads {
            t += &format!("{:<24} {:<8}", l.title(), l.unit());
            for &p in &self.peers {
                t += &format!(" {:>9}", self.medians.get(&(l, p)).map_or("-".into(), |v| format!("{v:.2}")));
            }
            for (o, p) in &cols {
                t += &format!(" {:>12}", self.ratio(l, *o, *p).map_or("-".into(), |r| format!("{r:.2}x")));
            }
            t += "\n";
        }
        if !self.spread.is_empty() {
            t += "\n# spread over the repetitions, (max - min) / median\n";
            t += &format!("{:<24} {:<8}", "load", "");
            for p in &self.peers {
                t += &format!(" {:>9}", p.title());
            }
            t += "\n";
            for &l in &self.loads {
                t += &format!("{:<24} {:<8}", l.title(), "");
                for &p in &self.peers {
                    let v = self.spread.get(&(l, p)).map_or("-".into(), |v| format!("{:.0}%", v * 100.0));
                    t += &format!(" {v:>9}");
                }
                t += "\n";
            }
        }
        t += "\n# our data plane: CPU per packet = daemon utime+stime over the load / packets it read (split segments)\n";
        t += &format!("{:<24}", "load");
        for p in self.peers.iter().filter(|p| p.ours()) {
            t += &format!(" {:>14} {:>12}", format!("{} ns/packet", short(*p)), "packets/read");
        }
        t += "\n";
        for &l in &self.loads {
            t += &format!("{:<24}", l.title());
            for &p in self.peers.iter().filter(|p| p.ours()) {
                let ns = self.ns_per_packet.get(&(l, p)).map_or("-".into(), |v| format!("{v:.0}"));
                let pr = self.per_read.get(&(l, p)).map_or("-".into(), |v| format!("{v:.1}"));
                t += &format!(" {ns:>14} {pr:>12}");
            }
            t += "\n";
        }
        if !self.machine.is_empty() {
            t += "\n# whole-machine CPU per unit of work (all processes and the kernel; meaningful on a quiet machine)\n";
            t += &format!("{:<24} {:<8}", "load", "us per");
            for p in &self.peers {
                t += &format!(" {:>9}", p.title());
            }
            for (o, p) in &cols {
                t += &format!(" {:>12}", format!("{}/{}", short(*o), short(*p)));
            }
            t += "\n";
            for &l in &self.loads {
                t += &format!("{:<24} {:<8}", l.title(), l.work_unit());
                for &p in &self.peers {
                    t += &format!(
                        " {:>9}",
                        self.machine.get(&(l, p)).map_or("-".into(), |v| format!("{v:.2}"))
                    );
                }
                for (o, p) in &cols {
                    let r = self.machine.get(&(l, *o)).zip(self.machine.get(&(l, *p)));
                    t += &format!(
                        " {:>12}",
                        r.filter(|(_, b)| **b > 0.0).map_or("-".into(), |(a, b)| format!("{:.2}x", a / b))
                    );
                }
                t += "\n";
            }
        }
        t
    }

    pub fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .loads
            .iter()
            .map(|&l| {
                let med: serde_json::Map<String, Value> = self
                    .peers
                    .iter()
                    .filter_map(|&p| self.medians.get(&(l, p)).map(|v| (p.name().to_string(), json!(v))))
                    .collect();
                let ratios: serde_json::Map<String, Value> = self
                    .ratio_columns()
                    .into_iter()
                    .filter_map(|(o, p)| {
                        self.ratio(l, o, p).map(|r| (format!("{}/{}", o.name(), p.name()), json!(r)))
                    })
                    .collect();
                let cpu: serde_json::Map<String, Value> = self
                    .peers
                    .iter()
                    .filter_map(|&p| {
                        self.ns_per_packet.get(&(l, p)).map(|v| (p.name().to_string(), json!(v)))
                    })
                    .collect();
                let spread: serde_json::Map<String, Value> = self
                    .peers
                    .iter()
                    .filter_map(|&p| self.spread.get(&(l, p)).map(|v| (p.name().to_string(), json!(v))))
                    .collect();
                let machine: serde_json::Map<String, Value> = self
                    .peers
                    .iter()
                    .filter_map(|&p| self.machine.get(&(l, p)).map(|v| (p.name().to_string(), json!(v))))
                    .collect();
                json!({ "load": l.name(), "unit": l.unit(), "median": med, "ratios": ratios,
                        "spread": spread, "cpu_ns_per_packet": cpu,
                        "machine_us_per": l.work_unit(), "machine_us": machine })
            })
            .collect();
        let samples: Vec<Value> = self
            .figures
            .iter()
            .map(|f| {
                json!({ "peer": f.peer.name(), "load": f.load.name(), "rep": f.rep, "value": f.value,
                        "cpu_s": f.cpu_s, "packets": f.packets, "reads": f.batches,
                        "ns_per_packet": f.ns_per_packet(), "machine_cpu_s": f.machine_cpu_s,
                        "machine_us_per_unit": f.machine_us_per_unit() })
            })
            .collect();
        json!({ "reps": self.reps, "seconds": self.seconds, "udp_rate": self.udp_rate,
                "results": rows, "samples": samples })
    }

    /// Grouped bars per load, each group scaled to its largest median, values printed.
    pub fn svg(&self) -> String {
        const COLOURS: [&str; 4] = ["#1f77b4", "#2ca02c", "#7f7f7f", "#ff7f0e"];
        let (bar, gap, h, top) = (34.0, 40.0, 220.0, 40.0);
        let group = bar * self.peers.len() as f64 + gap;
        let width = 60.0 + group * self.loads.len() as f64;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n\
             <text x=\"10\" y=\"18\" font-size=\"14\">clusterserver data-plane bench (medians of {} rep(s), {} s per load; bars scaled per load)</text>\n",
            top + h + 70.0,
            self.reps,
            self.seconds
        );
        for (i, &l) in self.loads.iter().enumerate() {
            let x0 = 40.0 + group * i as f64;
            let max =
                self.peers.iter().filter_map(|&p| self.medians.get(&(l, p))).fold(0.0f64, |a, b| a.max(*b));
            for (j, &p) in self.peers.iter().enumerate() {
                let Some(v) = self.medians.get(&(l, p)) else { continue };
                let bh = if max > 0.0 { v / max * h } else { 0.0 };
                let x = x0 + bar * j as f64;
                let y = top + h - bh;
                s += &format!(
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"/>\n\
                     <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{v:.2}</text>\n",
                    bar - 4.0,
                    COLOURS[j % COLOURS.len()],
                    x + bar / 2.0 - 2.0,
                    y - 3.0
                );
            }
            let xc = x0 + bar * self.peers.len() as f64 / 2.0;
            s += &format!(
                "<text x=\"{xc:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n\
                 <text x=\"{xc:.1}\" y=\"{:.1}\" text-anchor=\"middle\">({})</text>\n",
                top + h + 16.0,
                l.title(),
                top + h + 30.0,
                l.unit()
            );
        }
        for (j, p) in self.peers.iter().enumerate() {
            let x = 40.0 + 110.0 * j as f64;
            let y = top + h + 48.0;
            s += &format!(
                "<rect x=\"{x:.0}\" y=\"{y:.0}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{:.0}\" y=\"{:.0}\">{}</text>\n",
                COLOURS[j % COLOURS.len()],
                x + 16.0,
                y + 10.0,
                p.title()
            );
        }
        s + "</svg>\n"
    }
}

fn short(p: Peer) -> &'static str {
    match p {
        Peer::Nat => "NAT",
        Peer::Dr => "DR",
        Peer::NatXdp => "NATx",
        Peer::DrXdp => "DRx",
        Peer::Nft => "nft",
        Peer::Haproxy => "HAP",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_and_iperf() {
        assert_eq!(wrk_rps("  Latency ...\nRequests/sec:   8912.50\nTransfer/sec: 1MB\n"), Some(8.9125));
        let tcp = r#"{"end":{"sum_received":{"bits_per_second":7.5e9}}}"#;
        assert_eq!(iperf_tcp_gbps(tcp), Some(7.5));
        let udp_old = r#"{"end":{"sum":{"packets":1000,"lost_packets":100,"seconds":2.0}}}"#;
        assert_eq!(iperf_udp_kpps(udp_old), Some(0.45));
        let udp_new = r#"{"end":{"sum_received":{"packets":900,"lost_packets":0,"seconds":3.0}}}"#;
        assert_eq!(iperf_udp_kpps(udp_new), Some(0.3));
        assert_eq!(iperf_tcp_gbps("iperf3: error - unable to connect"), None);
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        let opts = Opts::parse(&[]).unwrap();
        let mut a = Figure::new(Peer::Nat, Load::Tcp1, 0, 4.0);
        a.cpu_s = Some(1.0);
        a.packets = Some(1_000_000);
        a.batches = Some(10_000);
        let nft = |rep, v| Figure::new(Peer::Nft, Load::Tcp1, rep, v);
        let r = Report::new(&opts, vec![a, nft(0, 6.0), nft(1, 8.0), nft(2, 10.0)]);
        assert_eq!(r.ratio(Load::Tcp1, Peer::Nat, Peer::Nft), Some(0.5));
        assert_eq!(r.spread.get(&(Load::Tcp1, Peer::Nft)), Some(&0.5));
        assert!(r.table().contains("50%"));
        let t = r.table();
        assert!(t.contains("0.50x") && t.contains("1000"), "{t}");
        assert!(r.svg().starts_with("<svg"));
        assert_eq!(r.json()["results"][0]["ratios"]["nat/nftables"], json!(0.5));
    }

    #[test]
    fn machine_cpu_per_unit_of_work() {
        let opts =
            Opts::parse(&["--loads".into(), "http-close".into(), "--peers".into(), "dr,nft".into()]).unwrap();
        let fig = |peer, krps, busy| {
            let mut f = Figure::new(peer, Load::HttpClose, 0, krps);
            f.machine_cpu_s = Some(busy);
            f.seconds = 5.0;
            f
        };
        // 10 k req/s for 5 s on 7.5 busy CPU seconds: 150 us a request.
        let (dr, nft) = (fig(Peer::Dr, 10.0, 7.5), fig(Peer::Nft, 20.0, 10.0));
        assert_eq!(dr.machine_us_per_unit(), Some(150.0));
        assert_eq!(nft.machine_us_per_unit(), Some(100.0));
        let t = Report::new(&opts, vec![dr, nft]).table();
        assert!(t.contains("whole-machine") && t.contains("150.00") && t.contains("1.50x"), "{t}");
        // 8 Gbit/s = 1000 MB/s.
        let mut tcp = Figure::new(Peer::Dr, Load::Tcp1, 0, 8.0);
        (tcp.machine_cpu_s, tcp.seconds) = (Some(2.0), 2.0);
        assert_eq!(tcp.machine_us_per_unit(), Some(1000.0));
    }
}
