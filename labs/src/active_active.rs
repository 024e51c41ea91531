//! `clusterlab active-active [--out DIR] [--flows N] [--bfd] [--no-join-sync]` and `clusterlab active-active --bench
//! [--seconds S]`: active-active mode on real namespaces, measured.
//!
//! ```text
//!   client 10.91.2.100 --[br2]-- 10.91.2.1 router 10.91.0.254 --[br0]--+-- atm1..3 10.91.0.1..3
//!                                                                      +-- srv1..3 10.91.0.51..53
//! ```
//!
//! The router runs BIRD 2 with `merge paths` (one kernel route, a next hop per ATM that
//! announces the VIP) and hashes on the 5-tuple (`fib_multipath_hash_policy=3`, fields
//! `0x0037`: policy 1 across veth follows the socket's random hash, which TCP re-rolls on a
//! retransmission timeout). Each ATM runs the real `clusterserverd` in active-active mode
//! with its own BIRD; the real servers run `clusterserverd` in node role (VIP on `lo`, ARP
//! hidden), the lab's stream server (port 7000) and, for the benchmark, `iperf3 -s`. The
//! VIP 10.91.9.99 is on no subnet: only the router reaches it.
//!
//! **Scenarios** (one run, in order): atm3 drained (SIGTERM: withdraw, drain, stop); atm2
//! crashes (SIGKILL; its BIRD dies with it); atm2 joins again, losing on the wire the last
//! record datagram of each peer's full-sync answer ([`crate::lose_sync`]: the join must see
//! the hole in the end marker's count, ask again and announce with the whole table); srv3 (drained, weight 0, until
//! then) is added by a rolling reload of the config on atm1, then atm2 (applied live: no
//! withdrawal, the route and the table unchanged; the lab fails if a next hop goes);
//! `--no-join-sync` sets `bgp.join_sync_ms` to 0 for the join step; atm2 freezes (SIGSTOP of the
//! daemon and its BIRD: a silent failure only the BGP hold time, or BFD with `--bfd`, detects).
//! Each ATM's wait for its peers' tables before announcing (its log) is reported per start.
//! Long-lived flows (one echo
//! every [`ECHO_MS`]) run throughout; before each step every flow is mapped to the ATM that
//! carries it (`ip route get` on the router with the flow's ports). Per step: the longest
//! pause of the flows on the affected ATM (their outage), flows on the other ATMs disturbed
//! (a pause over [`DISTURBED_MS`] or lost), long-lived flows lost (an error or a changed
//! server), and new connections that failed during the step.
//!
//! **Benchmark** (`--bench`, not a test): each ATM's uplink to the servers limited to
//! 1 Gbit/s by `tc ... tbf` (the machine's 2 cores would otherwise be the limit); `iperf3 -P
//! 16` from the client through the VIP to srv1, with 1, 2 and 3 ATMs announcing.
//!
//! Lab safety: namespaces `csl-lab<pid>x<n>-*` ([`ns`]); every process is started inside them
//! and killed by PID on drop, with the namespaces deleted (error, panic, Ctrl-C included).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clusterserver::platform::linux::netsys::enter_netns;

use crate::{lab, lose_sync, ns, runner};

pub const USAGE: &str = "clusterlab active-active [--out DIR] [--flows N] [--bfd] [--no-join-sync] | clusterlab active-active --bench [--seconds S] [--out DIR]";

const VIP: Ipv4Addr = Ipv4Addr::new(10, 91, 9, 99);
const STREAM_PORT: u16 = 7000;
/// The ATMs' sync port (the default: the heartbeat port + 2).
const SYNC_PORT: u16 = 17102;
const IPERF_PORT: u16 = 5201;
const ATMS: [(&str, Ipv4Addr); 3] = [
    ("atm1", Ipv4Addr::new(10, 91, 0, 1)),
    ("atm2", Ipv4Addr::new(10, 91, 0, 2)),
    ("atm3", Ipv4Addr::new(10, 91, 0, 3)),
];
/// srv3 starts drained (weight 0) and is added during the run.
const SERVERS: [(&str, Ipv4Addr); 3] = [
    ("srv1", Ipv4Addr::new(10, 91, 0, 51)),
    ("srv2", Ipv4Addr::new(10, 91, 0, 52)),
    ("srv3", Ipv4Addr::new(10, 91, 0, 53)),
];
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 91, 2, 100);
const BIRD: &str = "/usr/sbin/bird";
/// Interval of a long-lived flow's echoes.
pub const ECHO_MS: u64 = 50;
/// A pause longer than this disturbs a flow.
pub const DISTURBED_MS: u64 = 300;
/// Measured window after each step.
const STEP_WINDOW: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct Opts {
    pub out: PathBuf,
    pub flows: usize,
    pub bench: bool,
    pub seconds: u64,
    /// BFD (100 ms x 3) on every session, router and ATMs.
    pub bfd: bool,
    /// `bgp.join_sync_ms: 0`: announce at once after a (re)start, without the peers' tables.
    pub no_join_sync: bool,
}

impl Opts {
    pub fn parse(args: &[String]) -> anyhow::Result<Opts> {
        let mut o = Opts {
            out: std::path::absolute("target/active-active")?,
            flows: 30,
            bench: false,
            seconds: 5,
            bfd: false,
            no_join_sync: false,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().with_context(|| format!("{a} needs a value\nusage: {USAGE}"));
            match a.as_str() {
                "--out" => o.out = std::path::absolute(val()?)?,
                "--flows" => o.flows = val()?.parse::<usize>()?.clamp(1, 100),
                "--seconds" => o.seconds = val()?.parse::<u64>()?.clamp(1, 60),
                "--bench" => o.bench = true,
                "--bfd" => o.bfd = true,
                "--no-join-sync" => o.no_join_sync = true,
                other => bail!("unknown argument {other:?}\nusage: {USAGE}"),
            }
        }
        Ok(o)
    }
}

/// The namespaces and processes of one run; all removed on drop.
struct AaLab {
    run_id: String,
    dir: PathBuf,
    namespaces: Vec<String>,
    procs: BTreeMap<String, Child>,
    dead: Vec<Child>,
    daemon: PathBuf,
}

impl Drop for AaLab {
    fn drop(&mut self) {
        for c in self.procs.values_mut().chain(self.dead.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in self.namespaces.iter().rev() {
            if let Err(e) = ns::delete(n) {
                eprintln!("clusterlab: {e:#}");
            }
        }
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl AaLab {
    fn new(dir: &Path) -> anyhow::Result<AaLab> {
        let stale = ns::remove_stale();
        if !stale.is_empty() {
            eprintln!("clusterlab: removed stale namespaces of finished runs: {}", stale.join(" "));
        }
        std::fs::create_dir_all(dir.join("run"))?;
        Ok(AaLab {
            run_id: ns::new_run_id(),
            dir: dir.to_path_buf(),
            namespaces: Vec::new(),
            procs: BTreeMap::new(),
            dead: Vec::new(),
            daemon: runner::daemon_path()?,
        })
    }

    fn ns(&self, host: &str) -> String {
        ns::ns_name(&self.run_id, host)
    }

    fn add_host(&mut self, host: &str) -> anyhow::Result<()> {
        let n = self.ns(host);
        ns::create(&n)?;
        self.namespaces.push(n.clone());
        ip(&["-n", &n, "link", "set", "lo", "up"])?;
        for s in
            ["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0", "net.ipv4.ip_forward=1"]
        {
            ns::exec(&n, &["sysctl", "-qw", s])?;
        }
        Ok(())
    }

    /// `ifname` of `host` on bridge `br` (veth created straight inside both namespaces).
    fn wire(&self, host: &str, ifname: &str, br: &str, addr: Ipv4Addr) -> anyhow::Result<()> {
        let (n, sw) = (self.ns(host), self.ns("sw"));
        let port = format!("p-{host}-{ifname}");
        ip(&["link", "add", ifname, "netns", &n, "type", "veth", "peer", "name", &port, "netns", &sw])?;
        ip(&["-n", &sw, "link", "set", &port, "master", br, "up"])?;
        ip(&["-n", &n, "addr", "add", &format!("{addr}/24"), "dev", ifname])?;
        ip(&["-n", &n, "link", "set", ifname, "up"])
    }

    fn build(&mut self) -> anyhow::Result<()> {
        self.add_host("sw")?;
        let sw = self.ns("sw");
        for br in ["br0", "br2"] {
            ip(&["-n", &sw, "link", "add", br, "type", "bridge"])?;
            ip(&["-n", &sw, "link", "set", br, "up"])?;
        }
        self.add_host("router")?;
        self.wire("router", "eth0", "br0", Ipv4Addr::new(10, 91, 0, 254))?;
        self.wire("router", "eth1", "br2", Ipv4Addr::new(10, 91, 2, 1))?;
        let r = self.ns("router");
        ns::exec(&r, &["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=3"])?;
        ns::exec(&r, &["sysctl", "-qw", "net.ipv4.fib_multipath_hash_fields=0x0037"])?;
        self.add_host("client")?;
        self.wire("client", "eth0", "br2", CLIENT)?;
        ip(&["-n", &self.ns("client"), "route", "add", "default", "via", "10.91.2.1"])?;
        for (h, a) in ATMS.iter().chain(SERVERS.iter()) {
            self.add_host(h)?;
            self.wire(h, "eth0", "br0", *a)?;
            ip(&["-n", &self.ns(h), "route", "add", "default", "via", "10.91.0.254"])?;
        }
        Ok(())
    }

    fn spawn(&mut self, label: &str, host: &str, program: &Path, args: &[&str]) -> anyhow::Result<()> {
        lab::check_interrupted()?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log(label))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .arg(program)
            .args(args)
            .env("RUST_LOG", "info")
            .env("CLUSTERSERVERD_RUN_DIR", self.dir.join("run").join(host))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} in {host}", program.display()))?;
        if let Some(old) = self.procs.insert(label.into(), child) {
            self.dead.push(old);
        }
        Ok(())
    }

    fn log(&self, label: &str) -> PathBuf {
        self.dir.join(format!("{label}.log"))
    }

    fn text(&self, label: &str) -> String {
        std::fs::read_to_string(self.log(label)).unwrap_or_default()
    }

    fn start_daemon(&mut self, host: &str) -> anyhow::Result<()> {
        let (daemon, cfg) = (self.daemon.clone(), self.dir.join("cfg.json5"));
        self.spawn(host, host, &daemon, &["--config", cfg.to_str().context("path")?])
    }

    /// Sends `host`'s sync traffic (both ways) through the [`lose_sync`] helper, started and
    /// bound to its queue before this returns.
    fn lose_sync(&mut self, host: &str, addr: Ipv4Addr) -> anyhow::Result<()> {
        let exe = runner::helper_exe()?;
        self.spawn(LOSE_SYNC, host, &exe, &["lose-sync", &addr.to_string(), "300"])?;
        wait_text(self, LOSE_SYNC, "lose-sync: bound", Duration::from_secs(10))?;
        let (n, port, queue) = (self.ns(host), SYNC_PORT.to_string(), lose_sync::QUEUE.to_string());
        for chain in ["PREROUTING", "OUTPUT"] {
            ns::exec(
                &n,
                &[
                    "iptables-nft",
                    "-t",
                    "mangle",
                    "-A",
                    chain,
                    "-p",
                    "udp",
                    "--dport",
                    &port,
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    &queue,
                    "--queue-bypass",
                ],
            )?;
        }
        Ok(())
    }

    /// Takes the rules out, then ends the helper (by its PID).
    fn stop_lose_sync(&mut self, host: &str) -> anyhow::Result<()> {
        let n = self.ns(host);
        for chain in ["PREROUTING", "OUTPUT"] {
            ns::exec(&n, &["iptables-nft", "-t", "mangle", "-F", chain])?;
        }
        self.signal(LOSE_SYNC, nix::sys::signal::Signal::SIGKILL)?;
        self.wait_exit(LOSE_SYNC, Duration::from_secs(5)).map(|_| ())
    }

    fn signal(&mut self, label: &str, sig: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = self.procs.get(label).with_context(|| format!("no process {label}"))?.id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)?;
        Ok(())
    }

    fn wait_exit(&mut self, label: &str, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            let c = self.procs.get_mut(label).with_context(|| format!("no process {label}"))?;
            if let Some(st) = c.try_wait()? {
                return Ok(st);
            }
            if start.elapsed() > limit {
                bail!("{label} did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops (SIGSTOP) the daemon `label` and its children (its BIRD); their PIDs.
    fn freeze(&mut self, label: &str) -> anyhow::Result<Vec<i32>> {
        let pid = self.procs.get(label).with_context(|| format!("no process {label}"))?.id();
        let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let mut pids: Vec<i32> = kids.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        // Threads other than the main one may have spawned BIRD.
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
            let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            pids.extend(c.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
        pids.push(pid as i32);
        pids.sort_unstable();
        pids.dedup();
        for p in &pids {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGSTOP)?;
        }
        Ok(pids)
    }

    fn thaw(&self, pids: &[i32]) {
        for p in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGCONT);
        }
    }

    /// The router's next hops for the VIP.
    fn next_hops(&self) -> Vec<Ipv4Addr> {
        let out = ns::exec(&self.ns("router"), &["ip", "-4", "route", "show", &format!("{VIP}/32")])
            .unwrap_or_default();
        let words: Vec<&str> = out.split_whitespace().collect();
        words.windows(2).filter(|w| w[0] == "via").filter_map(|w| w[1].parse().ok()).collect()
    }

    fn wait_hops(&self, want: usize, limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        while self.next_hops().len() != want {
            lab::check_interrupted()?;
            if start.elapsed() > limit {
                bail!("the router has next hops {:?}, not {want}, after {limit:?}", self.next_hops());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(start.elapsed())
    }

    /// The ATM the router sends a client flow with source port `sport` to.
    fn atm_of(&self, sport: u16, dport: u16) -> Option<Ipv4Addr> {
        let (s, d) = (sport.to_string(), dport.to_string());
        let args = [
            "ip",
            "-4",
            "route",
            "get",
            &VIP.to_string(),
            "from",
            &CLIENT.to_string(),
            "iif",
            "eth1",
            "ipproto",
            "tcp",
            "sport",
            &s,
            "dport",
            &d,
        ];
        let out = ns::exec(&self.ns("router"), &args).ok()?;
        let words: Vec<&str> = out.split_whitespace().collect();
        words.windows(2).find(|w| w[0] == "via").and_then(|w| w[1].parse().ok())
    }

    fn start_common(&mut self, bfd: bool, join_sync_ms: u64) -> anyhow::Result<()> {
        self.build()?;
        std::fs::write(self.dir.join("cfg.json5"), config(&self.dir, bfd, join_sync_ms, 0)?)?;
        let router = match bfd {
            true => ROUTER_BIRD.replace("ipv4 { import all;", "bfd on;\n  ipv4 { import all;") + ROUTER_BFD,
            false => ROUTER_BIRD.to_string(),
        };
        std::fs::write(self.dir.join("router.conf"), router)?;
        let (conf, sock) = (self.dir.join("router.conf"), self.dir.join("router.ctl"));
        let (conf, sock) =
            (conf.to_str().context("path")?.to_string(), sock.to_str().context("path")?.to_string());
        self.spawn("router-bird", "router", Path::new(BIRD), &["-f", "-c", &conf, "-s", &sock])?;
        let helper = runner::helper_exe()?;
        for (h, _) in SERVERS {
            self.spawn(
                &format!("{h}-stream"),
                h,
                &helper,
                &["stream-server", &STREAM_PORT.to_string(), h, "900"],
            )?;
            self.spawn(
                &format!("{h}-iperf"),
                h,
                Path::new("/usr/bin/iperf3"),
                &["-s", "-p", &IPERF_PORT.to_string()],
            )?;
            self.start_daemon(h)?;
        }
        for (h, _) in SERVERS {
            wait_text(self, h, &format!(" ready node={h}"), Duration::from_secs(15))?;
        }
        Ok(())
    }
}

/// The log label of the [`lose_sync`] helper.
const LOSE_SYNC: &str = "atm2-lose-sync";

/// In a daemon's log: answers with a hole asked again, and joins completed with every peer's
/// table.
fn join_lines(log: &str) -> (usize, usize) {
    (
        log.matches("join: the peer's table arrived with a hole").count(),
        log.matches("joined: the connection table").count(),
    )
}

fn wait_text(lab: &AaLab, label: &str, text: &str, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while !lab.text(label).contains(text) {
        lab::check_interrupted()?;
        if start.elapsed() > limit {
            bail!("{label} did not log {text:?} within {limit:?}:\n{}", lab.text(label));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

const ROUTER_BIRD: &str = "router id 10.91.0.254;
protocol device { scan time 10; }
protocol kernel { ipv4 { export all; }; merge paths on limit 16; }
template bgp atm { local as 65000; hold time 3; keepalive time 1;
  connect delay time 1; connect retry time 2; error wait time 1, 5;
  ipv4 { import all; export none; }; }
protocol bgp atm1 from atm { neighbor 10.91.0.1 as 65001; }
protocol bgp atm2 from atm { neighbor 10.91.0.2 as 65001; }
protocol bgp atm3 from atm { neighbor 10.91.0.3 as 65001; }
";

const ROUTER_BFD: &str =
    "protocol bfd { interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }\n";

/// The lab's config; srv3 has weight `srv3_weight` (0: drained).
fn config(dir: &Path, bfd: bool, join_sync_ms: u64, srv3_weight: u32) -> anyhow::Result<String> {
    let secret = dir.join("secret");
    std::fs::write(&secret, "aa-lab-secret")?;
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let atms: Vec<String> =
        ATMS.iter().map(|(n, a)| format!("{{ name: '{n}', address: '{a}', interface: 'eth0' }}")).collect();
    let servers: Vec<String> = SERVERS
        .iter()
        .map(|(n, a)| {
            let w = if *n == "srv3" { srv3_weight } else { 1 };
            format!("{{ name: '{n}', address: '{a}', port: {STREAM_PORT}, weight: {w} }}")
        })
        .collect();
    let (run, s) = (dir.join("run"), secret.display());
    let run = run.display();
    let (srv1_name, srv1) = SERVERS[0];
    Ok(format!(
        "{{ cluster: {{ name: 'aalab', id: 91, secret_file: '{s}', mode: 'active-active' }},
  atms: [ {} ],
  bgp: {{ local_as: 65001, neighbors: [ {{ address: '10.91.0.254', peer_as: 65000 }} ], drain_ms: 2000, bfd: {bfd},
          join_sync_ms: {join_sync_ms},
          control_socket: '{run}/bird-{{atm}}.ctl', config_file: '{run}/bird-{{atm}}.conf' }},
  services: [
    {{ name: 'stream', vip: '{VIP}', port: {STREAM_PORT}, forwarding: 'dr', scheduler: 'mh', servers: [ {} ],
       checks: [ {{ kind: 'tcp', interval_ms: 500, timeout_ms: 300 }} ] }},
    {{ name: 'iperf', vip: '{VIP}', port: {IPERF_PORT}, forwarding: 'dr', scheduler: 'mh',
       servers: [ {{ name: '{srv1_name}', address: '{srv1}', port: {IPERF_PORT} }} ] }} ] }}",
        atms.join(", "),
        servers.join(", "),
    ))
}

/// One long-lived flow's record: echo times (ms since the run's start), its server, its end.
#[derive(Debug, Default, Clone)]
struct FlowLog {
    sport: u16,
    server: String,
    echoes: Vec<u64>,
    /// When and why it broke (error, or another server answered).
    broken: Option<(u64, String)>,
}

type Shared<T> = Arc<std::sync::Mutex<T>>;

/// Long-lived echo flows and a stream of new connections, from threads inside the client
/// namespace; stopped by the flag.
struct Load {
    stop: Arc<AtomicBool>,
    flows: Vec<Shared<FlowLog>>,
    /// New connections: (time ms, ok).
    news: Shared<Vec<(u64, bool)>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn ms(t0: Instant) -> u64 {
    t0.elapsed().as_millis() as u64
}

impl Load {
    fn start(client_ns: &str, n: usize, t0: Instant) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let path = PathBuf::from(ns::path(client_ns));
        let mut load =
            Load { stop: stop.clone(), flows: Vec::new(), news: Arc::default(), threads: Vec::new() };
        for _ in 0..n {
            let log: Shared<FlowLog> = Arc::default();
            let (log2, stop2, path2) = (log.clone(), stop.clone(), path.clone());
            load.threads.push(std::thread::spawn(move || long_flow(&path2, &log2, &stop2, t0)));
            load.flows.push(log);
        }
        let (news, stop2) = (load.news.clone(), stop.clone());
        load.threads.push(std::thread::spawn(move || new_connections(&path, &news, &stop2, t0)));
        load
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn long_flow(ns_path: &Path, log: &Shared<FlowLog>, stop: &AtomicBool, t0: Instant) {
    let fail = |why: String| log.lock().expect("log").broken = Some((ms(t0), why));
    if let Err(e) = enter_netns(ns_path) {
        return fail(format!("setns: {e}"));
    }
    let addr = SocketAddr::from((VIP, STREAM_PORT));
    let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) else {
        return fail("connect".into());
    };
    let _ = s.set_nodelay(true);
    // Patient: a frozen ATM stalls its flows for the BGP hold time; TCP's retransmissions,
    // not this client, decide whether a flow survives.
    let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
    log.lock().expect("log").sport = s.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(e) => return fail(e.to_string()),
    };
    let mut r = BufReader::new(s);
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let mut line = String::new();
        if let Err(e) =
            w.write_all(format!("{i}\n").as_bytes()).and_then(|_| r.read_line(&mut line).map(|_| ()))
        {
            return fail(e.to_string());
        }
        let mut words = line.split_whitespace();
        let (server, n) = (words.next().unwrap_or("").to_string(), words.next().unwrap_or(""));
        if n != i.to_string() {
            return fail(format!("echo {line:?} for {i}"));
        }
        let changed = {
            let mut l = log.lock().expect("log");
            if l.server.is_empty() {
                l.server = server.clone();
            }
            let changed = l.server != server;
            if !changed {
                l.echoes.push(ms(t0));
            }
            changed
        };
        if changed {
            return fail(format!("server changed to {server}"));
        }
        std::thread::sleep(Duration::from_millis(ECHO_MS));
    }
}

/// New connections, one every 20 ms: connect, one echo, close.
fn new_connections(ns_path: &Path, news: &Shared<Vec<(u64, bool)>>, stop: &AtomicBool, t0: Instant) {
    if enter_netns(ns_path).is_err() {
        return;
    }
    let addr = SocketAddr::from((VIP, STREAM_PORT));
    while !stop.load(Ordering::SeqCst) {
        let t = ms(t0);
        let ok = TcpStream::connect_timeout(&addr, Duration::from_millis(1000)).is_ok_and(|s| {
            let _ = s.set_read_timeout(Some(Duration::from_millis(1000)));
            let mut w = s.try_clone().expect("clone");
            let mut line = String::new();
            w.write_all(b"x\n").is_ok() && BufReader::new(s).read_line(&mut line).is_ok_and(|n| n > 0)
        });
        news.lock().expect("news").push((t, ok));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The figures of one step.
#[derive(Debug)]
struct StepResult {
    name: &'static str,
    affected: Option<Ipv4Addr>,
    /// Next hops gone/added after the signal (router's view), ms.
    route_ms: u64,
    flows_on_affected: usize,
    /// Longest pause of a flow on the affected ATM, ms.
    outage_ms: u64,
    others: usize,
    others_disturbed: usize,
    moved_between_others: usize,
    long_lost: usize,
    new_failed: usize,
    new_total: usize,
}

fn longest_pause(echoes: &[u64], from: u64, to: u64) -> u64 {
    let mut last = from;
    let mut worst = 0;
    for &t in echoes.iter().filter(|&&t| t >= from && t <= to) {
        worst = worst.max(t - last);
        last = t;
    }
    worst.max(to.saturating_sub(last)).saturating_sub(ECHO_MS)
}

fn measure(
    lab: &AaLab,
    load: &Load,
    name: &'static str,
    affected: Option<Ipv4Addr>,
    before: &BTreeMap<u16, Option<Ipv4Addr>>,
    (from, to): (u64, u64),
    route_ms: u64,
) -> StepResult {
    let mut r = StepResult {
        name,
        affected,
        route_ms,
        flows_on_affected: 0,
        outage_ms: 0,
        others: 0,
        others_disturbed: 0,
        moved_between_others: 0,
        long_lost: 0,
        new_failed: 0,
        new_total: 0,
    };
    for f in &load.flows {
        let f = f.lock().expect("log").clone();
        let was = before.get(&f.sport).copied().flatten();
        let lost = f.broken.as_ref().is_some_and(|(t, _)| *t >= from && *t <= to);
        let pause = longest_pause(&f.echoes, from, to);
        if f.broken.as_ref().is_some_and(|(t, _)| *t < from) {
            continue;
        }
        r.long_lost += usize::from(lost);
        if was.is_some() && was == affected {
            r.flows_on_affected += 1;
            r.outage_ms = r.outage_ms.max(pause);
        } else {
            r.others += 1;
            r.others_disturbed += usize::from(lost || pause > DISTURBED_MS);
            let now = lab.atm_of(f.sport, STREAM_PORT);
            r.moved_between_others += usize::from(now != was);
        }
    }
    let news = load.news.lock().expect("news");
    for (_, ok) in news.iter().filter(|(t, _)| *t >= from && *t <= to) {
        r.new_total += 1;
        r.new_failed += usize::from(!ok);
    }
    r
}

fn flow_map(lab: &AaLab, load: &Load) -> BTreeMap<u16, Option<Ipv4Addr>> {
    load.flows.iter().map(|f| f.lock().expect("log").sport).map(|p| (p, lab.atm_of(p, STREAM_PORT))).collect()
}

/// Runs the three scenarios; prints and writes `report.txt`. `Ok(false)` if a goal failed
/// (graceful drain lost a flow, or a crash disturbed a flow on another ATM).
pub fn run(opts: &Opts) -> anyhow::Result<bool> {
    runner::preflight()?;
    if !Path::new(BIRD).exists() {
        bail!("{BIRD} is missing: run scripts/install-deps as root (bird2)");
    }
    if opts.bench {
        return bench(opts).map(|()| true);
    }
    let mut lab = AaLab::new(&opts.out)?;
    let join_sync_ms = if opts.no_join_sync { 0 } else { 3000 };
    lab.start_common(opts.bfd, join_sync_ms)?;
    for (h, _) in ATMS {
        lab.start_daemon(h)?;
    }
    let t = lab.wait_hops(3, Duration::from_secs(30))?;
    println!("active-active: 3 ATMs announced, router has 3 next hops ({} ms)", t.as_millis());
    let t0 = Instant::now();
    let load = Load::start(&lab.ns("client"), opts.flows, t0);
    std::thread::sleep(Duration::from_secs(2));
    let mut results = Vec::new();
    let mut join_loss = String::new();

    // 1. Graceful drain of atm3.
    let before = flow_map(&lab, &load);
    let from = ms(t0);
    lab.signal("atm3", nix::sys::signal::Signal::SIGTERM)?;
    let route = lab.wait_hops(2, Duration::from_secs(10))?;
    let st = lab.wait_exit("atm3", Duration::from_secs(15))?;
    if !st.success() {
        bail!("atm3 exited with {st} on SIGTERM:\n{}", lab.text("atm3"));
    }
    std::thread::sleep(STEP_WINDOW.saturating_sub(Duration::from_millis(ms(t0) - from)));
    results.push(measure(
        &lab,
        &load,
        "drain atm3 (SIGTERM)",
        Some(ATMS[2].1),
        &before,
        (from, ms(t0)),
        route.as_millis() as u64,
    ));

    // 2. Crash of atm2.
    let before = flow_map(&lab, &load);
    let from = ms(t0);
    lab.signal("atm2", nix::sys::signal::Signal::SIGKILL)?;
    let route = lab.wait_hops(1, Duration::from_secs(10))?;
    std::thread::sleep(STEP_WINDOW);
    results.push(measure(
        &lab,
        &load,
        "crash atm2 (SIGKILL)",
        Some(ATMS[1].1),
        &before,
        (from, ms(t0)),
        route.as_millis() as u64,
    ));

    // 3. atm2 joins again, and (with the join sync on) the last record datagram of each
    // peer's answer is lost on the wire ([`lose_sync`]): the join must notice the hole, ask
    // again and announce with the whole table, not after the bounded wait.
    let before = flow_map(&lab, &load);
    let from = ms(t0);
    let lossy = join_sync_ms > 0;
    let (asked_before, joined_before) = join_lines(&lab.text("atm2"));
    if lossy {
        lab.lose_sync("atm2", ATMS[1].1)?;
    }
    lab.start_daemon("atm2")?;
    let route = lab.wait_hops(2, Duration::from_secs(30))?;
    std::thread::sleep(STEP_WINDOW);
    let mut loss_ok = true;
    if lossy {
        lab.stop_lose_sync("atm2")?;
        let dropped = lab.text(LOSE_SYNC).matches("lose-sync: dropped").count();
        let (asked, joined) = join_lines(&lab.text("atm2"));
        let (asked, joined) = (asked - asked_before, joined - joined_before);
        loss_ok = dropped >= 1 && asked >= dropped && joined == 1;
        join_loss = format!(
            "join with a lost sync datagram: {dropped} record datagram(s) dropped, {asked} answer(s) seen with a hole and asked again, joined with every peer's table: {}\n",
            if joined == 1 { "yes" } else { "NO" }
        );
    }
    results.push(measure(
        &lab,
        &load,
        "join atm2 (start)",
        None,
        &before,
        (from, ms(t0)),
        route.as_millis() as u64,
    ));

    // 4, 5. srv3 added by a rolling reload: atm1, then atm2. Each applies it live: nothing
    // is withdrawn (the router keeps both next hops: checked every 10 ms of the step), the
    // table stays, the flows on the ATM are not disturbed; srv3 takes new connections once
    // its checks pass.
    std::fs::write(lab.dir.join("cfg.json5"), config(&lab.dir, opts.bfd, join_sync_ms, 1)?)?;
    for (i, name) in [(0, "srv3 added: reload atm1"), (1, "srv3 added: reload atm2")] {
        let (host, addr) = ATMS[i];
        let before = flow_map(&lab, &load);
        let from = ms(t0);
        let applied = lab.text(host).matches("reload applied live").count();
        lab.signal(host, nix::sys::signal::Signal::SIGHUP)?;
        let sent = Instant::now();
        let mut fewest = usize::MAX;
        while lab.text(host).matches("reload applied live").count() == applied || sent.elapsed() < STEP_WINDOW
        {
            lab::check_interrupted()?;
            fewest = fewest.min(lab.next_hops().len());
            if sent.elapsed() > Duration::from_secs(15) {
                bail!("{host} did not apply the reload live:\n{}", lab.text(host));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if fewest < 2 {
            bail!("{host}'s live reload changed the route: {fewest} next hop(s) seen");
        }
        results.push(measure(&lab, &load, name, Some(addr), &before, (from, ms(t0)), 0));
    }

    // 6. atm2 freezes (daemon and BIRD stopped, link up): only the hold time or BFD tells.
    let before = flow_map(&lab, &load);
    let from = ms(t0);
    let frozen = lab.freeze("atm2")?;
    let route = lab.wait_hops(1, Duration::from_secs(15))?;
    std::thread::sleep(STEP_WINDOW + Duration::from_secs(3));
    let name = if opts.bfd { "freeze atm2 (BFD)" } else { "freeze atm2 (hold 3 s)" };
    results.push(measure(
        &lab,
        &load,
        name,
        Some(ATMS[1].1),
        &before,
        (from, ms(t0)),
        route.as_millis() as u64,
    ));
    load.stop();
    lab.thaw(&frozen);

    let mut report = report(&results, opts.flows);
    report += &join_loss;
    report +=
        &format!("join sync (bgp.join_sync_ms {join_sync_ms}), each start of each ATM, from its log:\n");
    for (h, _) in ATMS {
        for l in lab
            .text(h)
            .lines()
            .filter(|l| l.contains("joined: the connection table") || l.contains("JOIN SYNC INCOMPLETE"))
        {
            let waited = l.split_whitespace().find(|w| w.starts_with("waited_ms=")).unwrap_or("waited_ms=?");
            let missing = l.split_whitespace().find(|w| w.starts_with("missing=")).unwrap_or("");
            let what = if missing.is_empty() { "every peer's table" } else { "timed out" };
            report += &format!("  {h}: {what} {waited} {missing}\n");
        }
    }
    print!("{report}");
    std::fs::write(opts.out.join("report.txt"), &report)?;
    // The goals: a graceful drain and the rolling live reload lose no flow and disturb none;
    // a crash or a freeze disturbs no flow on another ATM.
    let reload_ok = results[3..5].iter().all(|r| r.long_lost == 0 && r.others_disturbed == 0);
    let ok = results[0].long_lost == 0
        && loss_ok
        && results[1].others_disturbed == 0
        && results[5].others_disturbed == 0
        && reload_ok;
    Ok(ok)
}

fn report(results: &[StepResult], flows: usize) -> String {
    let mut s = format!(
        "active-active lab: 3 ATMs (BIRD 2, eBGP, ECMP 5-tuple), 2 DR servers (+ srv3 from the rolling reload on), {flows} long-lived flows (echo every {ECHO_MS} ms), new connections every 20 ms\n"
    );
    s += "step                    | route change | flows on ATM | their outage | other flows | disturbed | moved | long-lived lost | new conns failed\n";
    for r in results {
        s += &format!(
            "{:<23} | {:>9} ms | {:>12} | {:>9} ms | {:>11} | {:>9} | {:>5} | {:>15} | {:>6} of {}\n",
            r.name,
            r.route_ms,
            r.flows_on_affected,
            r.outage_ms,
            r.others,
            r.others_disturbed,
            r.moved_between_others,
            r.long_lost,
            r.new_failed,
            r.new_total
        );
        let _ = r.affected;
    }
    s += &format!(
        "disturbed = a pause over {DISTURBED_MS} ms or lost; moved = now routed to another ATM than before the step (plain multipath re-slices the hash space)\n"
    );
    s
}

/// Throughput with 1, 2, 3 ATMs, each limited to 1 Gbit/s towards the servers.
fn bench(opts: &Opts) -> anyhow::Result<()> {
    let mut lab = AaLab::new(&opts.out)?;
    lab.start_common(false, 3000)?;
    for (h, _) in ATMS {
        ns::exec(
            &lab.ns(h),
            &[
                "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "1gbit", "burst", "512kb",
                "latency", "20ms",
            ],
        )?;
    }
    let mut rows = Vec::new();
    for k in 1..=3 {
        let (h, _) = ATMS[k - 1];
        lab.start_daemon(h)?;
        lab.wait_hops(k, Duration::from_secs(30))?;
        std::thread::sleep(Duration::from_secs(1));
        let secs = opts.seconds.to_string();
        let args = ["iperf3", "-c", &VIP.to_string(), "-p", "5201", "-P", "16", "-t", &secs, "-J"];
        let out = ns::exec(&lab.ns("client"), &args)?;
        let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
        let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3 sum_received")?;
        println!("active-active bench: {k} ATM(s): {:.2} Gbit/s", bps / 1e9);
        rows.push((k, bps));
    }
    let one = rows[0].1;
    let mut s = String::from(
        "active-active throughput, each ATM's uplink tbf 1 Gbit/s, iperf3 -P 16 through the VIP to one DR server\n",
    );
    for (k, bps) in &rows {
        s += &format!("{k} ATM(s): {:.2} Gbit/s ({:.2}x one)\n", bps / 1e9, bps / one);
    }
    print!("{s}");
    std::fs::write(opts.out.join("bench.txt"), s)?;
    Ok(())
}
