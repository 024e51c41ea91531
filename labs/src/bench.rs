//! `clusterlab bench`: the data-plane benchmark (issue 5, item 5). A benchmark, not a test:
//! it prints figures and ratios, it asserts no timing.
//!
//! One lab topology (the lab's NAT plan: `client1` on the front bridge, `atm1` the balancer
//! with `eth0` in front and `eth1` on the server bridge, `node1` the real server running nginx
//! and `iperf3 -s`). In the same run and in turn, every repetition measures:
//!
//! * **NAT**: the real `clusterserverd` (generated config, one ATM, connection sync on as
//!   shipped), NAT forwarding;
//! * **DR**: the same daemon with direct routing; the lab configures the node (VIP on `lo`,
//!   ARP hiding) since the daemon's node set-up lands separately; the server's replies go
//!   back through the balancer namespace's kernel routing (not through the data plane);
//! * **nftables**: DNAT with conntrack in the balancer namespace;
//! * **HAProxy** in TCP mode (Debian `haproxy`, started by PID, config generated).
//!
//! Loads (each bounded by `--seconds`): iperf3 TCP with 1 and 4 streams, wrk requests/s with
//! keep-alive and with `Connection: close` (50 connections), small UDP datagrams (iperf3
//! `-u -l 64` at a bounded offered rate; received packets/s; HAProxy has no UDP); and each of
//! them again over IPv6 (`-v6`): the lab is dual-stack (every address has its IPv6 twin,
//! [`crate::family`]), every peer has an IPv6 VIP beside its IPv4 one (our NAT66 and IPv6
//! direct routing, nftables `ip6` DNAT, HAProxy bound on both), the server the same.
//!
//! **The mixed load** (`mixed`): a saturating 4-stream iperf3 and, beside it for the whole
//! period, wrk with `Connection: close` to the same VIP; the figure is wrk's requests/s (what
//! new connections get while a bulk stream fills the data plane), the stream's Gbit/s is
//! printed beside it, and the ratio to nftables comes from the same run.
//!
//! **Backends**: `nat-xdp` and `dr-xdp` run the same daemon with
//! `dataplane: { backend: "af_xdp" }`. A daemon that cannot run that backend falls back to TUN
//! and logs [`runner::TUN_FALLBACK`]; the bench then stops measuring that peer and says so,
//! rather than report TUN figures under an AF_XDP name. `--queues N` sets `dataplane.queues`
//! (0, the default: one per core).
//!
//! Routing that is the same for every peer: the client reaches the VIP through a `/32` route
//! via the balancer's front address (no ARP for the VIP involved), the server's default route
//! is the balancer's back address. The daemon is started afresh for every load so that its
//! own counters (logged at a graceful stop) give the packets of exactly that load; its CPU is
//! `utime + stime` from `/proc/PID/stat` between the load's start and end.
//!
//! Everything runs in `csl-lab*` namespaces owned by a [`Lab`] guard (processes killed by
//! PID, namespaces deleted on exit, error and Ctrl-C).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clusterserver::config::{Backend, Config, Dataplane, Forwarding, Protocol, Server, Service};
use clustersim::scenario::Scenario;
use clustersim::topology::{CLUSTER_ID, cluster_config};
use nix::sys::signal::Signal;

use crate::bench_report::{self, Figure, Load, Peer};
use crate::family::v6_of;
use crate::lab::{Lab, check_interrupted};
use crate::ns;
use crate::runner;
use crate::topology::{Plan, Role, VIP};

const TOPOLOGY: &str = r#"{ name: "bench", topology: { atms: 1, nodes: 1, clients: 1, routers: 0, forwarding: "nat", ip: "dual" } }"#;
const IPERF_PORT: u16 = 5201;
/// Each peer has its own VIP: sockets a peer leaves behind (HAProxy's TIME_WAIT sockets on
/// its VIP, conntrack entries) must not meet the next peer's packets (measured: our NAT run
/// right after HAProxy stalled at 10 requests/s, the balancer's kernel answering the
/// clients' SYNs from HAProxy's TIME_WAIT sockets).
const NFT_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 97);
const HAPROXY_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 98);
/// DR's UDP load: an iperf3 server bound to the VIP (an unbound UDP server would answer
/// from the server's own address, which the client does not accept).
const IPERF_VIP_PORT: u16 = 5202;
/// The same for IPv6 (an iperf3 server binds one address).
const IPERF_VIP6_PORT: u16 = 5203;
const HTTP_PORT: u16 = 80;
/// wrk connections (TECH-NOTES' baselines use 50).
const WRK_CONNECTIONS: u32 = 50;
/// UDP payload bytes of the small-packet load.
const UDP_PAYLOAD: u32 = 64;
/// How long a daemon may take to become primary.
const PRIMARY_TIMEOUT: Duration = Duration::from_secs(15);

/// Options of `clusterlab bench`.
#[derive(Clone, Debug)]
pub struct Opts {
    pub reps: usize,
    pub seconds: u64,
    /// Offered rate ceiling of the UDP load, iperf3 `-b` syntax.
    pub udp_rate: String,
    pub out: PathBuf,
    pub peers: Vec<Peer>,
    pub loads: Vec<Load>,
    /// `dataplane.queues` of our daemon (0: one per core, the shipped default).
    pub queues: u32,
}

pub const USAGE: &str = "clusterlab bench [--reps N] [--seconds S] [--udp-rate R] [--out DIR] [--queues N] [--peers nat,dr,nat-xdp,dr-xdp,nft,haproxy] [--loads tcp1,tcp4,http,http-close,udp,tcp1-v6,tcp4-v6,http-v6,http-close-v6,udp-v6,mixed]";

impl Opts {
    pub fn parse(args: &[String]) -> anyhow::Result<Opts> {
        let mut o = Opts {
            reps: 1,
            seconds: 5,
            udp_rate: "200M".into(),
            // Absolute: the generated config names its secret file by this path.
            out: std::path::absolute("target/bench")?,
            peers: Peer::ALL.to_vec(),
            loads: Load::ALL.to_vec(),
            queues: 0,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().with_context(|| format!("{a} needs a value\nusage: {USAGE}"));
            match a.as_str() {
                "--reps" => o.reps = val()?.parse::<usize>()?.clamp(1, 20),
                "--seconds" => o.seconds = val()?.parse::<u64>()?.clamp(1, 60),
                "--udp-rate" => o.udp_rate = val()?.clone(),
                "--out" => o.out = std::path::absolute(val()?)?,
                "--peers" => o.peers = val()?.split(',').map(Peer::parse).collect::<Result<_, _>>()?,
                "--loads" => o.loads = val()?.split(',').map(Load::parse).collect::<Result<_, _>>()?,
                "--queues" => o.queues = val()?.parse::<u32>()?.min(64),
                other => bail!("unknown argument {other:?}\nusage: {USAGE}"),
            }
        }
        Ok(o)
    }
}

/// Runs the benchmark; prints the table and writes `bench.json` and `bench.svg` into `--out`.
pub fn run(opts: &Opts) -> anyhow::Result<()> {
    runner::preflight()?;
    let tools = Tools::find()?;
    let daemon = runner::daemon_path()?;
    let s = Scenario::parse(TOPOLOGY)?;
    let plan = Plan::new(&s, &ns::new_run_id())?;
    let dir = opts.out.join("lab");
    std::fs::create_dir_all(&dir)?;
    let cfg_of = |peer: Peer| -> anyhow::Result<PathBuf> {
        let path = dir.join(format!("{}.json5", peer.name()));
        let forwarding = if peer.direct() { Forwarding::Dr } else { Forwarding::Nat };
        let mut cfg = bench_config(&s, &plan, &dir, forwarding)?;
        cfg.dataplane = Dataplane {
            backend: if peer.xdp() { Backend::AfXdp } else { Backend::Tun },
            queues: opts.queues,
        };
        runner::write_config(&cfg, &path)?;
        Ok(path)
    };
    let configs: Vec<(Peer, PathBuf)> = opts
        .peers
        .iter()
        .filter(|p| p.ours())
        .map(|&p| Ok((p, cfg_of(p)?)))
        .collect::<anyhow::Result<_>>()?;
    let mut lab = Lab::up(plan, &dir)?;
    let hosts = Hosts::of(&lab)?;
    prepare(&lab, &hosts)?;
    start_servers(&mut lab, &hosts, &tools)?;
    let mut figures: Vec<Figure> = Vec::new();
    let mut fallbacks: Vec<Peer> = Vec::new();
    for rep in 0..opts.reps {
        for &peer in &opts.peers {
            if fallbacks.contains(&peer) {
                continue;
            }
            eprintln!("bench: rep {}/{} {}", rep + 1, opts.reps, peer.name());
            let mut b = Bench { lab: &mut lab, hosts: &hosts, tools: &tools, opts, rep };
            let got = match peer {
                Peer::Nft => b.nftables()?,
                Peer::Haproxy => b.haproxy()?,
                ours => {
                    let cfg = configs.iter().find(|(p, _)| *p == ours).map(|(_, c)| c.clone());
                    match b.ours(ours, &daemon, &cfg.context("config of our peer")?)? {
                        Some(f) => f,
                        None => {
                            eprintln!(
                                "bench: {}: the daemon fell back to the TUN backend (AF_XDP not available): not measured",
                                peer.name()
                            );
                            fallbacks.push(peer);
                            Vec::new()
                        }
                    }
                }
            };
            figures.extend(got);
        }
    }
    lab.teardown();
    let report = bench_report::Report::new(opts, figures).with_fallbacks(fallbacks);
    println!("{}", report.table());
    std::fs::create_dir_all(&opts.out)?;
    let json = opts.out.join("bench.json");
    let svg = opts.out.join("bench.svg");
    std::fs::write(&json, serde_json::to_string_pretty(&report.json())?)?;
    std::fs::write(&svg, report.svg())?;
    println!("report: {}  chart: {}", json.display(), svg.display());
    Ok(())
}

/// The system tools the bench drives.
#[derive(Debug)]
struct Tools {
    iperf3: PathBuf,
    wrk: PathBuf,
    haproxy: PathBuf,
    nginx: PathBuf,
    clk_tck: f64,
}

impl Tools {
    fn find() -> anyhow::Result<Tools> {
        let find = |t: &str| -> anyhow::Result<PathBuf> {
            ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"]
                .iter()
                .map(|d| Path::new(d).join(t))
                .find(|p| p.exists())
                .with_context(|| format!("{t} is missing: run scripts/install-deps as root"))
        };
        let tck = std::process::Command::new("getconf").arg("CLK_TCK").output()?;
        let clk_tck = String::from_utf8_lossy(&tck.stdout).trim().parse().unwrap_or(100.0);
        Ok(Tools {
            iperf3: find("iperf3")?,
            wrk: find("wrk")?,
            haproxy: find("haproxy")?,
            nginx: find("nginx")?,
            clk_tck,
        })
    }
}

/// Names, namespaces and addresses of the three hosts.
#[derive(Debug)]
struct Hosts {
    client: (String, String),
    atm: (String, String),
    node: (String, String),
    atm_front: Ipv4Addr,
    atm_back: Ipv4Addr,
    server: Ipv4Addr,
}

impl Hosts {
    fn server6(&self) -> Ipv6Addr {
        v6_of(self.server)
    }
}

impl Hosts {
    fn of(lab: &Lab) -> anyhow::Result<Hosts> {
        let one = |r: Role| lab.plan.of_role(r).first().map(|h| (*h).clone()).context("bench host");
        let (c, a, n) = (one(Role::Client)?, one(Role::Atm)?, one(Role::Node)?);
        Ok(Hosts {
            client: (c.name.clone(), c.ns.clone()),
            atm: (a.name.clone(), a.ns.clone()),
            node: (n.name.clone(), n.ns.clone()),
            atm_front: a.ifaces[0].addr,
            atm_back: a.ifaces.get(1).context("atm eth1")?.addr,
            server: n.addr(),
        })
    }
}

/// The daemon's config: one ATM, services for HTTP, iperf3 TCP (control and data) and
/// iperf3 UDP, all to the one server, with `forwarding`.
fn bench_config(s: &Scenario, plan: &Plan, dir: &Path, forwarding: Forwarding) -> anyhow::Result<Config> {
    let pick = |r: Role| -> Vec<(String, IpAddr)> {
        plan.of_role(r).iter().map(|h| (h.name.clone(), IpAddr::V4(h.addr()))).collect()
    };
    let mut cfg =
        cluster_config(s, CLUSTER_ID, &pick(Role::Atm), Vec::new(), IpAddr::V4(VIP), &pick(Role::Node));
    let twin = |a: IpAddr| match a {
        IpAddr::V4(a) => IpAddr::V6(v6_of(a)),
        v6 => v6,
    };
    cfg.cluster.name = "bench".into();
    let secret = dir.join("secret");
    std::fs::write(&secret, format!("bench secret {}", plan.run_id))?;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    cfg.cluster.secret_file = secret;
    let base = cfg.services[0].clone();
    let svc = |name: &str, port: u16, protocol: Protocol| Service {
        name: name.into(),
        port,
        protocol,
        forwarding,
        gateway_vip: if forwarding == Forwarding::Nat { base.gateway_vip } else { None },
        servers: base.servers.iter().map(|x| Server { port, ..x.clone() }).collect(),
        ..base.clone()
    };
    let mut v4 = vec![
        svc("http", HTTP_PORT, Protocol::Tcp),
        svc("iperf", IPERF_PORT, Protocol::Tcp),
        svc("iperf-udp", IPERF_PORT, Protocol::Udp),
    ];
    if forwarding == Forwarding::Dr {
        v4.push(svc("iperf-vip", IPERF_VIP_PORT, Protocol::Tcp));
        v4.push(svc("iperf-vip-udp", IPERF_VIP_PORT, Protocol::Udp));
    }
    // The IPv6 twins: VIP, gateway VIP and server on IPv6 (DR's VIP-bound UDP server has
    // its own port).
    let v6: Vec<Service> = v4
        .iter()
        .map(|x| Service {
            name: format!("{}6", x.name),
            vip: twin(x.vip),
            port: if x.port == IPERF_VIP_PORT { IPERF_VIP6_PORT } else { x.port },
            gateway_vip: x.gateway_vip.map(twin),
            servers: x
                .servers
                .iter()
                .map(|y| Server {
                    address: twin(y.address),
                    port: if y.port == IPERF_VIP_PORT { IPERF_VIP6_PORT } else { y.port },
                    ..y.clone()
                })
                .collect(),
            ..x.clone()
        })
        .collect();
    cfg.services = v4.into_iter().chain(v6).collect();
    Ok(cfg)
}

/// Routes and sysctls shared by every peer.
fn prepare(lab: &Lab, h: &Hosts) -> anyhow::Result<()> {
    let (cns, ans, nns) = (&h.client.1, &h.atm.1, &h.node.1);
    for vip in [VIP, NFT_VIP, HAPROXY_VIP] {
        let vip32 = format!("{vip}/32");
        ns::exec(cns, &["ip", "route", "replace", &vip32, "via", &h.atm_front.to_string()])?;
        let vip128 = format!("{}/128", v6_of(vip));
        ns::exec(cns, &["ip", "-6", "route", "replace", &vip128, "via", &v6_of(h.atm_front).to_string()])?;
    }
    ns::exec(nns, &["ip", "route", "replace", "default", "via", &h.atm_back.to_string()])?;
    ns::exec(nns, &["ip", "-6", "route", "replace", "default", "via", &v6_of(h.atm_back).to_string()])?;
    for sc in
        ["net.ipv4.ip_local_port_range=1024 65000", "net.ipv4.tcp_tw_reuse=1", "net.core.somaxconn=4096"]
    {
        ns::exec(cns, &["sysctl", "-qw", sc])?;
        ns::exec(nns, &["sysctl", "-qw", sc])?;
    }
    // DR replies (source VIP) come back through the balancer's eth1: no reverse-path filter.
    for sc in ["net.ipv4.conf.eth0.rp_filter=0", "net.ipv4.conf.eth1.rp_filter=0"] {
        ns::exec(ans, &["sysctl", "-qw", sc])?;
    }
    ns::exec(ans, &["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"])?;
    // The balancer's neighbour entries for the server, as health checks keep them in
    // production: direct routing reads the server's MAC there, and a miss drops packets
    // for a second (`platform::linux::shell::dr::MISS_TTL`) that would count against a short load.
    ns::exec(ans, &["ping", "-c1", "-W1", &h.server.to_string()])?;
    ns::exec(ans, &["ping", "-6", "-c1", "-W1", &h.server6().to_string()])?;
    let _ = lab;
    Ok(())
}

/// nginx as one process (killed by PID), keep-alive without a request limit.
fn nginx_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/bench-nginx.pid;\nerror_log {d}/bench-nginx-error.log;\n\
         events {{ worker_connections 8192; }}\nhttp {{\n  access_log off;\n  keepalive_requests 100000000;\n\
           client_body_temp_path {d}/bench-tmp;\n  proxy_temp_path {d}/bench-tmp;\n  fastcgi_temp_path {d}/bench-tmp;\n\
           uwsgi_temp_path {d}/bench-tmp;\n  scgi_temp_path {d}/bench-tmp;\n  server {{\n    listen {HTTP_PORT} backlog=4096;\n    listen [::]:{HTTP_PORT} backlog=4096;\n\
             location / {{ default_type text/plain; return 200 \"bench\\n\"; }}\n  }}\n}}\n"
    )
}

fn start_servers(lab: &mut Lab, h: &Hosts, t: &Tools) -> anyhow::Result<()> {
    let conf = lab.dir.join("bench-nginx.conf");
    std::fs::write(&conf, nginx_conf(&lab.dir))?;
    let node = h.node.0.clone();
    lab.spawn(&format!("{node}/nginx"), &node, &t.nginx, &["-c".into(), conf.display().to_string()])?;
    // Not bound to the server's address: direct-routed packets arrive for the VIP.
    let args = ["-s", "-p", &IPERF_PORT.to_string()].map(String::from);
    lab.spawn(&format!("{node}/iperf3"), &node, &t.iperf3, &args)?;
    std::thread::sleep(Duration::from_millis(300));
    for p in ["nginx", "iperf3"] {
        if let Some(st) = lab.exited(&format!("{node}/{p}")) {
            bail!("{p} on {node} exited at start ({st}); see {}", lab.dir.display());
        }
    }
    Ok(())
}

/// CPU seconds (user + system, all threads, also exited ones) of process `pid`.
fn cpu_seconds(pid: u32, clk_tck: f64) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clk_tck)
}

/// Busy CPU seconds of the whole machine so far (all CPUs; user, nice, system, irq, softirq
/// and steal from `/proc/stat`).
fn machine_busy_seconds(clk_tck: f64) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7)?;
    Some(busy as f64 / clk_tck)
}

/// A load that failed is reported and left out of the figures (the run goes on); Ctrl-C
/// still ends the run.
fn skip_failed<T>(r: anyhow::Result<T>) -> anyhow::Result<Option<T>> {
    check_interrupted()?;
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            eprintln!("bench:   FAILED: {e:#}");
            Ok(None)
        }
    }
}

/// `name: N` from a `Debug`-printed struct in a log line.
pub fn debug_field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!("{name}: "))? + name.len() + 2;
    let digits: String = line[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// One peer's run in one repetition.
struct Bench<'a> {
    lab: &'a mut Lab,
    hosts: &'a Hosts,
    tools: &'a Tools,
    opts: &'a Opts,
    rep: usize,
}

impl Bench<'_> {
    /// Our daemon, started afresh for each load. `None`: an AF_XDP peer whose daemon said
    /// it fell back to TUN (its figures would be TUN's under another name).
    fn ours(&mut self, peer: Peer, daemon: &Path, cfg: &Path) -> anyhow::Result<Option<Vec<Figure>>> {
        let dr = peer.direct();
        let vip_iperf = format!("{}/iperf3-vip-r{}", self.hosts.node.0, self.rep);
        let vip_iperf6 = format!("{vip_iperf}-v6");
        if dr {
            configure_dr_nodes(self.lab, VIP)?;
            let node = self.hosts.node.0.clone();
            let args = ["-s", "-p", &IPERF_VIP_PORT.to_string(), "-B", &VIP.to_string()].map(String::from);
            self.lab.spawn(&vip_iperf, &node, &self.tools.iperf3.clone(), &args)?;
            let args =
                ["-s", "-p", &IPERF_VIP6_PORT.to_string(), "-B", &v6_of(VIP).to_string()].map(String::from);
            self.lab.spawn(&vip_iperf6, &node, &self.tools.iperf3.clone(), &args)?;
        }
        let mut out = Vec::new();
        for &load in &self.opts.loads {
            let label = format!("{}/daemon-{}-r{}-{}", self.hosts.atm.0, peer.name(), self.rep, load.name());
            let atm = self.hosts.atm.0.clone();
            let args = vec!["--config".to_string(), cfg.display().to_string()];
            let pid = self.lab.spawn(&label, &atm, daemon, &args)?;
            self.wait_primary(&label)?;
            if peer.xdp() && self.lab.log_text(&label).contains(runner::TUN_FALLBACK) {
                self.lab.signal(&label, Signal::SIGTERM)?;
                self.lab.wait_or_kill(&label, 5_000)?;
                self.undo_dr(dr, &vip_iperf, &vip_iperf6)?;
                return Ok(None);
            }
            let cpu0 = cpu_seconds(pid, self.tools.clk_tck);
            let m0 = machine_busy_seconds(self.tools.clk_tck);
            let value = self.load(peer, load);
            let m1 = machine_busy_seconds(self.tools.clk_tck);
            let cpu1 = cpu_seconds(pid, self.tools.clk_tck);
            self.lab.signal(&label, Signal::SIGTERM)?;
            self.lab.wait_or_kill(&label, 5_000)?;
            let log = self.lab.log_of(&label).map(std::fs::read_to_string).transpose()?.unwrap_or_default();
            let stopped = log.lines().find(|l| l.contains("data plane stopped")).unwrap_or("");
            let Some((value, side)) = skip_failed(value)? else { continue };
            let mut f = Figure::new(peer, load, self.rep, value);
            f.side = side;
            f.cpu_s = cpu0.zip(cpu1).map(|(a, b)| b - a);
            f.machine_cpu_s = m0.zip(m1).map(|(a, b)| b - a);
            f.seconds = self.opts.seconds as f64;
            f.packets = debug_field(stopped, "rx_packets");
            f.batches = debug_field(stopped, "rx_batches");
            eprintln!("bench:   {}", f.line());
            out.push(f);
        }
        self.undo_dr(dr, &vip_iperf, &vip_iperf6)?;
        Ok(Some(out))
    }

    /// Stops direct routing's VIP-bound servers and removes the node's VIP.
    fn undo_dr(&mut self, dr: bool, vip_iperf: &str, vip_iperf6: &str) -> anyhow::Result<()> {
        if dr {
            self.lab.wait_or_kill(vip_iperf, 0)?;
            self.lab.wait_or_kill(vip_iperf6, 0)?;
            let node = self.hosts.node.1.clone();
            ns::exec(&node, &["ip", "addr", "del", &format!("{VIP}/32"), "dev", "lo"])?;
            ns::exec(&node, &["ip", "addr", "del", &format!("{}/128", v6_of(VIP)), "dev", "lo"])?;
        }
        Ok(())
    }

    fn wait_primary(&mut self, label: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < PRIMARY_TIMEOUT {
            check_interrupted()?;
            let text = self.lab.log_text(label);
            if text.lines().any(|l| l.contains(" role change ") && l.contains("role=primary")) {
                // The engine is activated through the shell's control queue: give it a moment.
                std::thread::sleep(Duration::from_millis(200));
                return Ok(());
            }
            if let Some(st) = self.lab.exited(label) {
                bail!("{label} exited during start-up ({st}):\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{label} did not become primary within {PRIMARY_TIMEOUT:?}")
    }

    /// nftables DNAT (conntrack) in the balancer namespace.
    fn nftables(&mut self) -> anyhow::Result<Vec<Figure>> {
        let ans = self.hosts.atm.1.clone();
        let rules = format!(
            "table ip cslbench {{\n  chain pre {{ type nat hook prerouting priority dstnat; policy accept;\n    ip daddr {NFT_VIP} dnat to {}\n  }}\n}}\n\
             table ip6 cslbench {{\n  chain pre {{ type nat hook prerouting priority dstnat; policy accept;\n    ip6 daddr {} dnat to {}\n  }}\n}}\n",
            self.hosts.server,
            v6_of(NFT_VIP),
            self.hosts.server6()
        );
        ns::exec_input(&ans, &["nft", "-f", "-"], Some(&rules))?;
        let r = self.each_load(Peer::Nft, None);
        let del = ns::exec(&ans, &["nft", "delete", "table", "ip", "cslbench"]);
        let del6 = ns::exec(&ans, &["nft", "delete", "table", "ip6", "cslbench"]);
        let figures = r?;
        del?;
        del6?;
        Ok(figures)
    }

    /// HAProxy in TCP mode, bound to the VIP (a local address of the balancer for this run).
    fn haproxy(&mut self) -> anyhow::Result<Vec<Figure>> {
        let (atm, ans) = self.hosts.atm.clone();
        let conf = self.lab.dir.join("haproxy.cfg");
        std::fs::write(&conf, haproxy_conf(self.hosts.server))?;
        let vip32 = format!("{HAPROXY_VIP}/32");
        let vip128 = format!("{}/128", v6_of(HAPROXY_VIP));
        ns::exec(&ans, &["ip", "addr", "add", &vip32, "dev", "lo"])?;
        ns::exec(&ans, &["ip", "addr", "add", &vip128, "dev", "lo", "nodad"])?;
        let label = format!("{atm}/haproxy-r{}", self.rep);
        let args = ["-db", "-f", &conf.display().to_string()].map(String::from);
        let started = self.lab.spawn(&label, &atm, &self.tools.haproxy.clone(), &args);
        let r = started.and_then(|pid| {
            std::thread::sleep(Duration::from_millis(500));
            if let Some(st) = self.lab.exited(&label) {
                bail!("haproxy exited at start ({st}); see {}", self.lab.dir.display());
            }
            self.each_load(Peer::Haproxy, Some(pid))
        });
        let _ = self.lab.signal(&label, Signal::SIGTERM);
        self.lab.wait_or_kill(&label, 3_000)?;
        ns::exec(&ans, &["ip", "addr", "del", &vip32, "dev", "lo"])?;
        ns::exec(&ans, &["ip", "addr", "del", &vip128, "dev", "lo"])?;
        r
    }

    fn each_load(&mut self, peer: Peer, pid: Option<u32>) -> anyhow::Result<Vec<Figure>> {
        let mut out = Vec::new();
        for &load in &self.opts.loads {
            if peer == Peer::Haproxy && load.base() == Load::Udp {
                continue; // HAProxy does not balance UDP.
            }
            let cpu0 = pid.and_then(|p| cpu_seconds(p, self.tools.clk_tck));
            let m0 = machine_busy_seconds(self.tools.clk_tck);
            let value = self.load(peer, load);
            let m1 = machine_busy_seconds(self.tools.clk_tck);
            let Some((value, side)) = skip_failed(value)? else { continue };
            let cpu1 = pid.and_then(|p| cpu_seconds(p, self.tools.clk_tck));
            let mut f = Figure::new(peer, load, self.rep, value);
            f.side = side;
            f.cpu_s = cpu0.zip(cpu1).map(|(a, b)| b - a);
            f.machine_cpu_s = m0.zip(m1).map(|(a, b)| b - a);
            f.seconds = self.opts.seconds as f64;
            eprintln!("bench:   {}", f.line());
            out.push(f);
        }
        Ok(out)
    }

    /// Runs one load from the client; its figure in the load's unit (and the mixed load's
    /// stream throughput).
    fn load(&mut self, peer: Peer, load: Load) -> anyhow::Result<(f64, Option<f64>)> {
        if load == Load::Mixed {
            return self.mixed(peer);
        }
        self.single(peer, load).map(|v| (v, None))
    }

    /// The mixed load: a 4-stream iperf3 for the whole period and, beside it, wrk with
    /// `Connection: close` to the same VIP; wrk's requests/s and the stream's Gbit/s.
    fn mixed(&mut self, peer: Peer) -> anyhow::Result<(f64, Option<f64>)> {
        let vip = peer.vip(false).to_string();
        // The stream outlasts wrk by a second on each side, so wrk runs beside it throughout.
        let secs = (self.opts.seconds + 2).to_string();
        let a = iperf_stream_args(&vip, IPERF_PORT, &secs, 4);
        let label = format!("{}/iperf3-mixed-{}-r{}", self.hosts.client.0, peer.name(), self.rep);
        let client = self.hosts.client.0.clone();
        self.lab.spawn(&label, &client, &self.tools.iperf3.clone(), &a)?;
        let rps = self.single(peer, Load::Mixed);
        let limit = Duration::from_secs(self.opts.seconds + 20);
        let start = Instant::now();
        while self.lab.exited(&label).is_none() {
            if check_interrupted().is_err() || start.elapsed() > limit {
                self.lab.wait_or_kill(&label, 0)?;
                check_interrupted()?;
                bail!("{label} did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = self.lab.log_of(&label).context("iperf3 log")?;
        let gbps = bench_report::iperf_tcp_gbps(&std::fs::read_to_string(log)?);
        Ok((rps?, gbps))
    }

    /// One generator's figure (the mixed load's wrk part under [`Load::Mixed`]).
    fn single(&mut self, peer: Peer, load: Load) -> anyhow::Result<f64> {
        let secs = self.opts.seconds.to_string();
        let vip = peer.vip(load.v6()).to_string();
        let port = IPERF_PORT.to_string();
        let (prog, args): (PathBuf, Vec<String>) = match load.base() {
            Load::Tcp1 | Load::Tcp4 => {
                let p = if load.base() == Load::Tcp1 { "1" } else { "4" };
                let a = ["-c", &vip, "-p", &port, "-t", &secs, "-P", p, "-J", "--connect-timeout", "3000"];
                (self.tools.iperf3.clone(), a.map(String::from).to_vec())
            }
            Load::Udp => {
                let l = UDP_PAYLOAD.to_string();
                let port = match (peer.direct(), load.v6()) {
                    (true, false) => IPERF_VIP_PORT.to_string(),
                    (true, true) => IPERF_VIP6_PORT.to_string(),
                    _ => port.clone(),
                };
                let a =
                    ["-c", &vip, "-p", &port, "-t", &secs, "-u", "-l", &l, "-b", &self.opts.udp_rate, "-J"];
                (self.tools.iperf3.clone(), a.map(String::from).to_vec())
            }
            _ => {
                let url = match peer.vip(load.v6()) {
                    IpAddr::V4(a) => format!("http://{a}:{HTTP_PORT}/"),
                    IpAddr::V6(a) => format!("http://[{a}]:{HTTP_PORT}/"),
                };
                let c = WRK_CONNECTIONS.to_string();
                let d = format!("{secs}s");
                let mut a: Vec<String> =
                    ["-t", "2", "-c", &c, "-d", &d, "--timeout", "2s"].map(String::from).to_vec();
                if matches!(load.base(), Load::HttpClose | Load::Mixed) {
                    a.extend(["-H".to_string(), "Connection: close".to_string()]);
                }
                a.push(url);
                (self.tools.wrk.clone(), a)
            }
        };
        let label =
            format!("{}/{}-{}-r{}-{}", self.hosts.client.0, load.tool(), peer.name(), self.rep, load.name());
        let text = self.run_client(&label, &prog, &args)?;
        let v = match load.base() {
            Load::Tcp1 | Load::Tcp4 => bench_report::iperf_tcp_gbps(&text),
            Load::Udp => bench_report::iperf_udp_kpps(&text),
            _ => bench_report::wrk_rps(&text),
        };
        v.with_context(|| format!("{label}: no figure in its output ({})", self.lab.dir.display()))
    }

    /// Starts a load generator in the client namespace and waits for it (bounded; killed on
    /// timeout or Ctrl-C); returns its output.
    fn run_client(&mut self, label: &str, prog: &Path, args: &[String]) -> anyhow::Result<String> {
        let client = self.hosts.client.0.clone();
        self.lab.spawn(label, &client, prog, args)?;
        let limit = Duration::from_secs(self.opts.seconds + 20);
        let start = Instant::now();
        while self.lab.exited(label).is_none() {
            if check_interrupted().is_err() || start.elapsed() > limit {
                self.lab.wait_or_kill(label, 0)?;
                check_interrupted()?;
                bail!("{label} did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let TIME_WAIT and queues settle between loads.
        std::thread::sleep(Duration::from_millis(300));
        let log = self.lab.log_of(label).context("load log")?;
        Ok(std::fs::read_to_string(log)?)
    }
}

impl Peer {
    /// The peer's VIP, IPv4 or its IPv6 twin.
    fn vip(self, v6: bool) -> IpAddr {
        let v4 = match self {
            Peer::Nat | Peer::Dr | Peer::NatXdp | Peer::DrXdp => VIP,
            Peer::Nft => NFT_VIP,
            Peer::Haproxy => HAPROXY_VIP,
        };
        if v6 { IpAddr::V6(v6_of(v4)) } else { IpAddr::V4(v4) }
    }
}

/// The arguments of an iperf3 TCP client with `streams` streams to `vip:port` for `secs`
/// seconds, JSON output (the mixed load's stream and the soak's).
pub fn iperf_stream_args(vip: &str, port: u16, secs: &str, streams: u32) -> Vec<String> {
    let (port, streams) = (port.to_string(), streams.to_string());
    ["-c", vip, "-p", &port, "-t", secs, "-P", &streams, "-J", "--connect-timeout", "3000"]
        .map(String::from)
        .to_vec()
}

fn haproxy_conf(server: Ipv4Addr) -> String {
    let mut t = String::from(
        "global\n  maxconn 8000\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n",
    );
    let (vip6, server6) = (v6_of(HAPROXY_VIP), v6_of(server));
    for port in [HTTP_PORT, IPERF_PORT] {
        t += &format!(
            "\nfrontend f{port}\n  bind {HAPROXY_VIP}:{port}\n  default_backend b{port}\n\nbackend b{port}\n  server s1 {server}:{port}\n"
        );
        // IPv6 clients to the IPv6 server: HAProxy on IPv6 end to end.
        t += &format!(
            "\nfrontend f{port}v6\n  bind [{vip6}]:{port}\n  default_backend b{port}v6\n\nbackend b{port}v6\n  server s1 [{server6}]:{port}\n"
        );
    }
    t
}

/// The bench's DR real servers get the VIP on `lo` and ARP hiding from the bench itself
/// (idempotent): it measures the data plane, and runs no node daemon beside the one it
/// restarts per load. (The labs' scenarios leave node set-up to `clusterserverd`.)
fn configure_dr_nodes(lab: &Lab, vip: Ipv4Addr) -> anyhow::Result<()> {
    for h in lab.plan.of_role(Role::Node) {
        for sc in ["net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"] {
            ns::exec(&h.ns, &["sysctl", "-qw", sc])?;
        }
        ns::exec(&h.ns, &["ip", "addr", "replace", &format!("{vip}/32"), "dev", "lo"])?;
        let vip128 = format!("{}/128", v6_of(vip));
        ns::exec(&h.ns, &["ip", "addr", "replace", &vip128, "dev", "lo", "nodad"])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_fields_are_read_from_the_stop_line() {
        let l = "INFO clusterserverd: data plane stopped stats=StatsSnapshot { rx_packets: 1234, rx_batches: 56, rx_errors: 0 }";
        assert_eq!(debug_field(l, "rx_packets"), Some(1234));
        assert_eq!(debug_field(l, "rx_batches"), Some(56));
        assert_eq!(debug_field(l, "tx_l2_packets"), None);
    }

    #[test]
    fn options_parse() {
        let a: Vec<String> =
            ["--reps", "3", "--peers", "nat,dr-xdp,nft", "--loads", "tcp1,udp,mixed", "--queues", "2"]
                .map(String::from)
                .to_vec();
        let o = Opts::parse(&a).unwrap();
        assert_eq!(o.reps, 3);
        assert_eq!(o.queues, 2);
        assert_eq!(o.peers, vec![Peer::Nat, Peer::DrXdp, Peer::Nft]);
        assert_eq!(o.loads, vec![Load::Tcp1, Load::Udp, Load::Mixed]);
        assert!(Opts::parse(&["--bogus".to_string()]).is_err());
    }

    #[test]
    fn haproxy_config_has_both_ports() {
        let c = haproxy_conf(Ipv4Addr::new(10, 0, 1, 1));
        assert!(c.contains("bind 10.0.0.98:80") && c.contains("server s1 10.0.1.1:5201"));
        assert!(c.contains("bind [fd00:c5::98]:80") && c.contains("server s1 [fd00:c5:1::1]:5201"));
    }
}
