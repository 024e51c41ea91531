//! One scenario on real namespaces: topology, config files, backends, the real daemons,
//! load, faults on time, measurements, expectations.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clusterserver::config::{Backend, Config, Protocol, Security, Service};
use clustersim::runner::Outcome;
use clustersim::scenario::{Scenario, Step};
use clustersim::topology::{CLUSTER_ID, OTHER_CLUSTER_ID, cluster_config};
use nix::sys::signal::Signal;

use crate::family::Family;
use crate::faults;
use crate::lab::{Lab, check_interrupted};
use crate::measure::{ClientResult, Poller, Probe, parse_daemon_log, pcap_neighbour};
use crate::ns;
use crate::topology::{self, OTHER_VIP, Plan, Role, STREAM_PORT};
use crate::traffic::unix_ms;

/// Default load when the scenario sets none: requests per second per client.
const DEFAULT_RATE: u32 = 100;
/// Rate cap on this 2-core machine (the load shares it with the daemons).
const RATE_CAP: u32 = 200;

/// Steps the lab performs; anything else fails the scenario before it starts.
/// Part of the line the daemon logs when `dataplane.backend: "af_xdp"` is configured but it
/// runs the TUN backend instead ("... cannot run here; using the TUN backend", or "...
/// falling back to the TUN backend"): labs and the bench look for it so that TUN figures are
/// never reported as AF_XDP ones. No other daemon log line says it.
pub const TUN_FALLBACK: &str = "the TUN backend";

pub const SUPPORTED: &[&str] = &[
    "crash",
    "kill",
    "restart",
    "freeze",
    "thaw",
    "stop",
    "partition",
    "partition_oneway",
    "heal",
    "loss",
    "link_down",
    "link_up",
    "forge",
    "server_down",
    "server_up",
    "promote",
    "demote",
    "miss_garp",
    "latency",
    "reload",
    "drain",
    "enable",
];

/// The lab's figures: the simulator's [`Outcome`] plus what only a real run shows.
#[derive(Debug)]
pub struct LabOutcome {
    pub outcome: Outcome,
    /// ARP owner changes per client: (ms, owner) from the neighbour table.
    pub arp_changes: BTreeMap<String, Vec<(u64, String)>>,
    /// ARP packets sent for the VIP, per client capture: (ms, owner, gratuitous).
    pub arp_packets: BTreeMap<String, Vec<(u64, String, bool)>>,
    /// Each client's family (`ipv4`, `ipv6`).
    pub client_family: BTreeMap<String, String>,
    pub by_server: BTreeMap<String, BTreeMap<String, u64>>,
    pub flow_notes: Vec<String>,
    /// Who answered the end-of-run Neighbor Solicitations for the IPv6 VIP (DR and tunnel).
    pub ndp: Vec<String>,
    pub requests: u64,
    pub dir: PathBuf,
}

/// Steps of `s` the lab cannot perform, described.
pub fn unsupported(s: &Scenario) -> Vec<String> {
    let mut v = Vec::new();
    if s.topology.mode != clustersim::scenario::Mode::PrimaryBackup {
        v.push(format!(
            "topology.mode {:?}: the scenario runner runs primary/backup clusters only (active-active is `clusterlab active-active`)",
            s.topology.mode
        ));
    }
    if crate::family::has_v6(s.topology.ip) && s.topology.second_cluster {
        v.push("the lab's second cluster is IPv4 only".into());
    }
    for st in &s.steps {
        let k = st.kind().unwrap_or("?");
        if !SUPPORTED.contains(&k) && !crate::health::KINDS.contains(&k) {
            let why = "unknown step";
            v.push(format!("the lab cannot perform `{k}` at {} ms: {why}", st.at_ms));
        }
    }
    v
}

static BACKEND: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();

/// The data-plane backend every lab ATM is configured with (`dataplane.backend`); default
/// TUN. Set once, before the first run (`clusterlab compare --all --backend af_xdp`).
pub fn set_backend(b: Backend) {
    let _ = BACKEND.set(b);
}

/// The backend labs configure (see [`set_backend`]).
pub fn backend() -> Backend {
    BACKEND.get().copied().unwrap_or(Backend::Tun)
}

/// Whether a daemon of the run in `dir` said it fell back to TUN ([`TUN_FALLBACK`]).
pub fn fell_back(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .any(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains(TUN_FALLBACK)))
}

static HELPER: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Sets the `clusterlab` executable that runs the helpers (`load`, `stream-server`, `forge`)
/// inside namespaces; default: this executable. Tests point it at the built binary.
pub fn set_helper_exe(p: PathBuf) {
    let _ = HELPER.set(p);
}

/// The `clusterlab` executable for helpers.
pub fn helper_exe() -> anyhow::Result<PathBuf> {
    match HELPER.get() {
        Some(p) => Ok(p.clone()),
        None => Ok(std::env::current_exe()?),
    }
}

/// Where `clusterserverd` is: `$CLUSTERSERVERD`, or next to this executable (cargo's target
/// directory; `cargo build --bin clusterserverd` puts it there).
pub fn daemon_path() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("CLUSTERSERVERD") {
        return Ok(PathBuf::from(p));
    }
    let exe = helper_exe()?;
    let mut dir = exe.parent().context("exe dir")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join("clusterserverd");
    if !p.exists() {
        bail!(
            "clusterserverd not found at {} (build it: cargo build --bin clusterserverd, or set CLUSTERSERVERD)",
            p.display()
        );
    }
    Ok(p)
}

/// Checks root and the system tools.
pub fn preflight() -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "the labs need root (network namespaces); run the simulator instead: cargo run -p clustersim -- run SCENARIO"
        );
    }
    for tool in ["ip", "nft", "nginx", "tcpdump", "ping"] {
        let found =
            ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().any(|d| Path::new(d).join(tool).exists());
        if !found {
            bail!("{tool} is missing: run scripts/install-deps as root");
        }
    }
    Ok(())
}

/// The cluster config of the lab, generated like the simulator's, plus the stream service.
/// The ATMs are on IPv4 whatever the service family (heartbeats, sync, admin); an `ipv6`
/// service has IPv6 VIP, gateway VIP and servers; `dual` adds an IPv6 twin of the IPv4
/// service (`svc6`, same servers, their IPv6 addresses) and of the stream service.
pub fn lab_config(s: &Scenario, plan: &Plan, dir: &Path, other: bool) -> anyhow::Result<Config> {
    let fams = crate::family::families(plan.ip);
    let first = fams[0];
    let pick = |r: Role, f: Family| -> Vec<(String, IpAddr)> {
        plan.of_role(r).iter().map(|h| (h.name.clone(), h.addr_in(f))).collect()
    };
    let reach: Vec<IpAddr> = pick(Role::Router, Family::V4).into_iter().map(|(_, a)| a).collect();
    let (id, atms, vip, nodes) = if other {
        let vip = match first {
            Family::V4 => IpAddr::V4(OTHER_VIP),
            Family::V6 => IpAddr::V6(crate::family::other_vip6()),
        };
        (OTHER_CLUSTER_ID, pick(Role::Other, Family::V4), vip, Vec::new())
    } else {
        (CLUSTER_ID, pick(Role::Atm, Family::V4), first.vip(), pick(Role::Node, first))
    };
    let mut cfg = cluster_config(s, id, &atms, reach, vip, &nodes);
    if other {
        cfg.services[0].servers = pick(Role::Node, first)
            .into_iter()
            .map(|(n, a)| clusterserver::config::Server { name: n, address: a, port: 80, weight: 100 })
            .collect();
    }
    if first == Family::V6 {
        cfg.services[0].gateway_vip = cfg.services[0].gateway_vip.map(|gw| match gw {
            IpAddr::V4(a) => IpAddr::V6(crate::family::v6_of(a)),
            v6 => v6,
        });
    }
    if fams.len() == 2 {
        let v6 = twin6(&cfg.services[0], "svc6", vip6_of(vip));
        cfg.services.push(v6);
    }
    cfg.cluster.name = format!("lab{id}");
    let secret = dir.join(format!("secret{id}"));
    let token = dir.join(format!("admin{id}.token"));
    for (f, text) in [
        (&secret, format!("lab cluster {id} secret {}", plan.run_id)),
        (&token, format!("token-{}", plan.run_id)),
    ] {
        std::fs::write(f, text)?;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600))?;
    }
    cfg.cluster.secret_file = secret;
    cfg.security = Security { token_file: Some(token), ..Security::default() };
    let streams: Vec<Service> = cfg
        .services
        .iter()
        .map(|svc| Service {
            name: svc.name.replace("svc", "stream"),
            port: STREAM_PORT,
            protocol: Protocol::Tcp,
            servers: svc
                .servers
                .iter()
                .map(|x| clusterserver::config::Server { port: STREAM_PORT, ..x.clone() })
                .collect(),
            ..svc.clone()
        })
        .collect();
    cfg.services.extend(streams);
    Ok(cfg)
}

/// The IPv6 twin of an IPv4 lab address (unchanged if IPv6 already).
fn vip6_of(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(a) => IpAddr::V6(crate::family::v6_of(a)),
        v6 => v6,
    }
}

/// `svc` on IPv6: VIP `vip`, every server's and the gateway VIP's IPv6 twin.
fn twin6(svc: &Service, name: &str, vip: IpAddr) -> Service {
    Service {
        name: name.into(),
        vip,
        gateway_vip: svc.gateway_vip.map(vip6_of),
        servers: svc
            .servers
            .iter()
            .map(|x| clusterserver::config::Server { address: vip6_of(x.address), ..x.clone() })
            .collect(),
        ..svc.clone()
    }
}

/// Writes `cfg` as JSON (valid JSON5) and validates it with the daemon's own loader.
pub fn write_config(cfg: &Config, path: &Path) -> anyhow::Result<()> {
    let mut v = serde_json::to_value(cfg)?;
    strip_nulls(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v)?)?;
    clusterserver::config::load_file(path)
        .map_err(|e| anyhow::anyhow!("generated config is invalid:\n{e}"))?;
    Ok(())
}

fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// nginx as one process (`master_process off`): the lab ends it by PID with SIGKILL, and a
/// master's workers would outlive it.
fn nginx_conf(dir: &Path, name: &str, v6: bool) -> String {
    let d = dir.display();
    let listen6 = if v6 { "listen [::]:80;\n    " } else { "" };
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/{name}-nginx.pid;\nerror_log {d}/{name}-nginx-error.log;\n\
         events {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/{name}-tmp;\n\
           proxy_temp_path {d}/{name}-tmp;\n  fastcgi_temp_path {d}/{name}-tmp;\n  uwsgi_temp_path {d}/{name}-tmp;\n\
           scgi_temp_path {d}/{name}-tmp;\n  server {{\n    listen 80;\n    {listen6}location / {{ default_type text/plain; return 200 \"{name}\\n\"; }}\n  }}\n}}\n"
    )
}

/// Starts nginx and the stream server on every real server.
pub fn start_backends(lab: &mut Lab, duration_ms: u64) -> anyhow::Result<()> {
    let exe = helper_exe()?;
    let nodes: Vec<String> = lab.plan.of_role(Role::Node).iter().map(|h| h.name.clone()).collect();
    for n in &nodes {
        let conf = lab.dir.join(format!("{n}-nginx.conf"));
        std::fs::write(&conf, nginx_conf(&lab.dir, n, crate::family::has_v6(lab.plan.ip)))?;
        lab.spawn(
            &format!("{n}/nginx"),
            n,
            Path::new("/usr/sbin/nginx"),
            &["-c".into(), conf.display().to_string()],
        )?;
        let max_s = (duration_ms / 1000 + 60).to_string();
        lab.spawn(
            &format!("{n}/stream"),
            n,
            &exe,
            &["stream-server".into(), STREAM_PORT.to_string(), n.clone(), max_s],
        )?;
    }
    std::thread::sleep(Duration::from_millis(300));
    for n in &nodes {
        for p in ["nginx", "stream"] {
            if let Some(st) = lab.exited(&format!("{n}/{p}")) {
                bail!("{p} on {n} exited at start ({st}); see {}", lab.dir.display());
            }
        }
    }
    Ok(())
}

/// One client's load: the client, its family, its output file.
pub type LoadOut = (String, Family, PathBuf);

/// Starts the load on every client, each on its family's VIP (a dual-stack scenario's
/// clients alternate families, as in the simulator): returns their output files.
pub fn start_load(lab: &mut Lab, s: &Scenario, duration_ms: u64) -> anyhow::Result<Vec<LoadOut>> {
    let exe = helper_exe()?;
    let rate = rate_of(s);
    let clients: Vec<(String, Family)> = lab
        .plan
        .of_role(Role::Client)
        .iter()
        .map(|h| (h.name.clone(), h.client_family(lab.plan.ip)))
        .collect();
    let total = s.load.long_lived as usize;
    let mut outs = Vec::new();
    for (i, (c, f)) in clients.iter().enumerate() {
        let flows = total / clients.len() + usize::from(i < total % clients.len());
        let out = lab.dir.join(format!("{c}-load{}.csv", f.suffix()));
        let args = vec![
            "load".into(),
            SocketAddr::new(f.vip(), 80).to_string(),
            SocketAddr::new(f.vip(), STREAM_PORT).to_string(),
            rate.to_string(),
            duration_ms.to_string(),
            flows.to_string(),
            out.display().to_string(),
        ];
        lab.spawn(&format!("{c}/load"), c, &exe, &args)?;
        outs.push((c.clone(), *f, out));
    }
    Ok(outs)
}

pub fn rate_of(s: &Scenario) -> u32 {
    match s.load.connections_per_s {
        0 => DEFAULT_RATE,
        r => r.min(RATE_CAP),
    }
}

/// Runs `s` in a lab writing into `dir`.
pub fn run(s: &Scenario, dir: &Path) -> anyhow::Result<LabOutcome> {
    preflight()?;
    let cannot = unsupported(s);
    if !cannot.is_empty() {
        bail!("scenario {} FAILS in the lab:\n  {}", s.name, cannot.join("\n  "));
    }
    let daemon = daemon_path()?;
    let run_id = ns::new_run_id();
    let plan = Plan::new(s, &run_id)?;
    std::fs::create_dir_all(dir)?;
    let cfg_path = dir.join("clusterserver.json5");
    let mut cfg = lab_config(s, &plan, dir, false)?;
    cfg.dataplane.backend = backend();
    crate::health::configure_checks(&mut cfg, dir, &daemon)?;
    crate::failover::configure(&mut cfg, dir, &plan)?;
    write_config(&cfg, &cfg_path)?;
    let other_cfg = dir.join("other.json5");
    if s.topology.second_cluster {
        write_config(&lab_config(s, &plan, dir, true)?, &other_cfg)?;
    }
    let mut lab = Lab::up(plan, dir)?;
    faults::install(&lab.plan)?;
    crate::failover::start_sshd(&mut lab, &cfg)?;
    let duration_ms = s.duration_ms();
    start_backends(&mut lab, duration_ms)?;
    let clients: Vec<(String, String)> =
        lab.plan.of_role(Role::Client).iter().map(|h| (h.name.clone(), h.ns.clone())).collect();
    let fams = crate::family::families(s.topology.ip);
    let family_of = |c: &str| lab.plan.host(c).map_or(Family::V4, |h| h.client_family(s.topology.ip));
    let client_family: BTreeMap<String, Family> =
        clients.iter().map(|(c, _)| (c.clone(), family_of(c))).collect();
    for (c, _) in &clients {
        let pcap = dir.join(format!("{c}.pcap"));
        // ARP, and for IPv6 the Neighbor Advertisements (ICMPv6 type 136).
        let filter = if fams.contains(&Family::V6) { "arp or (icmp6 and ip6[40] == 136)" } else { "arp" };
        let args = ["-i", "eth0", "-U", "-n", "-w", &pcap.display().to_string(), filter].map(String::from);
        lab.spawn(&format!("{c}/tcpdump"), c, Path::new("/usr/bin/tcpdump"), &args)?;
    }
    let mut arp_pollers: Vec<(String, Poller)> = clients
        .iter()
        .map(|(c, n)| (c.clone(), Poller::start(n, Probe::NeighbourMac(client_family[c].vip()))))
        .collect();
    let atms: Vec<(String, String)> = lab
        .plan
        .of_role(Role::Atm)
        .iter()
        .chain(lab.plan.of_role(Role::Other).iter())
        .map(|h| (h.name.clone(), h.ns.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // In config order, each ready before the next starts: the simulator starts them in the
    // same instant; here start-up takes a few hundred ms of a shared CPU, and without the
    // wait a later ATM can be up a dead interval before the first one is.
    for (a, _) in &atms {
        let cfg = if a.starts_with("other") { &other_cfg } else { &cfg_path };
        start_daemon(&mut lab, &daemon, a, cfg)?;
        crate::nodes::wait_ready(&mut lab, &format!("{a}/daemon"), 0, 5_000)?;
    }
    // Real servers run the daemon too and it alone sets them up (VIP on lo, ARP hiding,
    // decapsulation); the lab only checks, and after the run that they are clean again.
    let node_before = crate::nodes::prepare(&lab, &s.topology.forwarding)?;
    crate::nodes::start(&mut lab, &daemon, &cfg_path, &s.topology.forwarding, &s.cluster.spare_servers)?;
    // The config file as the `reload` steps edit it.
    let mut file = cfg.clone();
    // Time 0 of the scenario: every ATM daemon is past its start-up quiet period and running,
    // as every simulated daemon is at the simulator's time 0 (an election may already have
    // happened, its time is then shown as 0).
    let t0 = unix_ms();
    let loads = start_load(&mut lab, s, duration_ms)?;
    let mut faults_log = Vec::new();
    let mut pending: Vec<&Step> = s.steps.iter().collect();
    pending.reverse();
    let mut stopped: Vec<String> = Vec::new();
    let mut crashed: Vec<String> = Vec::new();
    let mut downs: Vec<(String, u64)> = Vec::new();
    while unix_ms() < t0 + duration_ms {
        check_interrupted()?;
        let now = unix_ms() - t0;
        while pending.last().is_some_and(|st| st.at_ms <= now) {
            let st = pending.pop().context("step")?;
            if let Some(h) = st.crash.as_ref().or(st.kill.as_ref()).or(st.stop.as_ref()) {
                downs.push((h.clone(), unix_ms()));
            }
            if let Some(h) = st.crash.as_ref().filter(|_| s.failover.is_some()) {
                crate::failover::log_crash(dir, h, unix_ms())?;
            }
            let text = apply(&mut lab, st, &daemon, (&cfg_path, &mut file), &mut stopped, &mut crashed)
                .with_context(|| format!("step at {} ms", st.at_ms))?;
            eprintln!("[{:>6} ms] {text}", unix_ms() - t0);
            faults_log.push((unix_ms() - t0, text));
        }
        for (a, _) in &atms {
            let label = format!("{a}/daemon");
            if !stopped.contains(a)
                && let Some(st) = lab.exited(&label)
            {
                let log = lab.log_text(&label);
                let tail: Vec<&str> =
                    log.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
                bail!("clusterserverd on {a} exited by itself ({st}) at {now} ms:\n  {}", tail.join("\n  "));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for (c, _, _) in &loads {
        lab.wait_or_kill(&format!("{c}/load"), 5_000)?;
    }
    // With the nodes still set up: nobody but the primary answers NDP for the IPv6 VIP.
    let (ndp_lines, ndp_problems) = if crate::family::has_v6(s.topology.ip) && s.topology.forwarding != "nat"
    {
        ndp_check(&lab, &atms, &stopped)?
    } else {
        (Vec::new(), Vec::new())
    };
    let node_problems = crate::nodes::stop_and_check(&mut lab, &node_before)?;
    for (c, _) in &clients {
        let _ = lab.signal(&format!("{c}/tcpdump"), Signal::SIGINT);
        lab.wait_or_kill(&format!("{c}/tcpdump"), 2_000)?;
    }
    let arp: BTreeMap<String, Vec<(u64, String)>> =
        arp_pollers.drain(..).map(|(c, p)| (c, p.finish().unwrap_or_default())).collect();
    let (vips, rejected) = roles_from_logs(&lab, &atms, &downs);
    let macs = atm_macs(&lab)?;
    let results: Vec<(String, ClientResult)> = loads
        .iter()
        .map(|(c, _, out)| {
            (c.clone(), ClientResult::parse(&std::fs::read_to_string(out).unwrap_or_default()))
        })
        .collect();
    let pcaps = clients
        .iter()
        .map(|(c, _)| {
            let b = std::fs::read(dir.join(format!("{c}.pcap"))).unwrap_or_default();
            let pk = pcap_neighbour(&b, client_family[c].vip()).unwrap_or_default();
            let pk = pk.into_iter().map(|(t, m, g)| (t.saturating_sub(t0), owner(&macs, &m), g)).collect();
            (c.clone(), pk)
        })
        .collect();
    lab.teardown();
    let mut lo =
        crate::report::outcome(s, t0, duration_ms, &results, &arp, &vips, &macs, pcaps, faults_log, dir);
    lo.outcome.rejected = rejected;
    lo.outcome.violations.extend(node_problems);
    lo.outcome.violations.extend(ndp_problems);
    lo.ndp = ndp_lines;
    lo.client_family = client_family.into_iter().map(|(c, f)| (c, f.name().to_string())).collect();
    crate::health::check(s, &mut lo.outcome, &results, t0);
    if s.expect.persistent_clients == Some(true) {
        // Each client's answered requests (each a new connection) by the server that answered.
        let served: Vec<(String, std::collections::BTreeSet<String>)> = results
            .iter()
            .map(|(c, r)| (c.clone(), r.requests.iter().filter(|q| q.2).map(|q| q.3.clone()).collect()))
            .collect();
        let v = clustersim::runner::persistence_violations(served.iter().map(|(c, s)| (c.clone(), s)));
        lo.outcome.violations.extend(v);
    }
    if s.failover.is_some() {
        let r = clustersim::failover_check::check(s, &crate::failover::read_log(dir));
        lo.outcome.failover = r.lines;
        lo.outcome.violations.extend(r.violations);
        // A takeover that ends back home went through a hand-back, with its mirror-back.
        let handed_back = s.expect.min_takeovers.unwrap_or(0) >= 1;
        if let Some(g) = cfg.failover.groups.first().filter(|g| handed_back && !g.mirrors.is_empty())
            && s.expect.services_final_on.as_deref() == Some(g.atm_name.as_str())
        {
            match crate::failover::check_resync(dir, &g.atm_name, &g.backup_name) {
                Ok(line) => lo.outcome.failover.push(line),
                Err(v) => lo.outcome.violations.push(v),
            }
        }
    }
    if s.topology.second_cluster {
        lo.outcome.violations.extend(check_other_cluster(&lab_logs(&dir_logs(dir, &atms))));
    }
    if let Some(m) = s.expect.min_rejected {
        lo.outcome.violations.retain(|v| !v.starts_with("min_rejected"));
        if rejected < m {
            lo.outcome
                .violations
                .push(format!("at least {rejected} heartbeats rejected (daemon logs), {m} expected"));
        }
    }
    Ok(lo)
}

/// Probes who answers Neighbor Solicitations for the IPv6 VIP from the first client
/// ([`crate::ndp`]): the report lines and the violations.
fn ndp_check(
    lab: &Lab,
    atms: &[(String, String)],
    stopped: &[String],
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let primaries: Vec<&String> = atms
        .iter()
        .map(|(a, _)| a)
        .filter(|a| a.starts_with("atm") && !stopped.contains(a))
        .filter(|a| {
            // The log of the daemon running now: a restarted one appends to its
            // predecessor's, and starts as backup without a role-change line.
            let text = lab.log_text(&format!("{a}/daemon"));
            let current = text.rfind(" ready ").map_or(text.as_str(), |i| &text[i..]);
            parse_daemon_log(current).roles.last().is_some_and(|r| r.1 == "primary")
        })
        .collect();
    let [primary] = primaries.as_slice() else {
        return Ok((Vec::new(), vec![format!("NDP: no single primary to probe at the end ({primaries:?})")]));
    };
    let primary_mac = crate::measure::mac_text(&topology::mac_of(&lab.plan.host(primary)?.ns, "eth0")?);
    let mut nodes = Vec::new();
    for h in lab.plan.of_role(Role::Node) {
        nodes.push((h.name.clone(), crate::measure::mac_text(&topology::mac_of(&h.ns, "eth0")?)));
    }
    let ip = lab.plan.ip;
    let client = lab.plan.of_role(Role::Client).into_iter().find(|h| h.client_family(ip) == Family::V6);
    let client = client.cloned().context("no IPv6 client")?;
    let mut args = vec![
        "ndp-probe".to_string(),
        "eth0".into(),
        client.addr_in(Family::V6).to_string(),
        crate::family::vip6().to_string(),
    ];
    args.extend(nodes.iter().map(|(_, m)| m.clone()));
    args.push(primary_mac.clone());
    let cmd = lab.command(&client.name, &helper_exe()?, &args)?;
    let (mut lines, v) = crate::ndp::check(cmd, &primary_mac, &nodes)?;
    lines.iter_mut().for_each(|l| *l = format!("{l} (primary {primary})"));
    Ok((lines, v))
}

/// The daemon logs of the second cluster's ATMs (`other*`), by name.
fn dir_logs(dir: &Path, atms: &[(String, String)]) -> Vec<(String, PathBuf)> {
    atms.iter()
        .filter(|(a, _)| a.starts_with("other"))
        .map(|(a, _)| (a.clone(), dir.join(format!("{a}-daemon.log"))))
        .collect()
}

fn lab_logs(logs: &[(String, PathBuf)]) -> Vec<(String, crate::measure::DaemonLog)> {
    logs.iter()
        .map(|(a, p)| (a.clone(), parse_daemon_log(&std::fs::read_to_string(p).unwrap_or_default())))
        .collect()
}

/// The second cluster must not be disturbed: one promotion in all, one primary at the end.
fn check_other_cluster(logs: &[(String, crate::measure::DaemonLog)]) -> Vec<String> {
    let promotions: usize =
        logs.iter().map(|(_, d)| d.roles.iter().filter(|r| r.1 == "primary").count()).sum();
    let primaries: Vec<&str> = logs
        .iter()
        .filter(|(_, d)| d.roles.last().is_some_and(|r| r.1 == "primary"))
        .map(|(a, _)| a.as_str())
        .collect();
    if promotions == 1 && primaries.len() == 1 {
        Vec::new()
    } else {
        vec![format!("the second cluster was disturbed: primaries {primaries:?}, {promotions} promotions")]
    }
}

/// Each ATM's primary periods from its daemon's role-change log lines ("true" while primary),
/// with the lab's own crashes and stops as ends of a period; and the rejected heartbeats.
fn roles_from_logs(
    lab: &Lab,
    atms: &[(String, String)],
    downs: &[(String, u64)],
) -> (BTreeMap<String, Vec<(u64, String)>>, u64) {
    let mut out = BTreeMap::new();
    let mut rejected = 0;
    for (a, _) in atms.iter().filter(|(a, _)| a.starts_with("atm")) {
        let text = lab.log_text(&format!("{a}/daemon"));
        let d = parse_daemon_log(&text);
        rejected += d.rejected_at_least;
        let mut ev: Vec<(u64, String)> =
            d.roles.into_iter().map(|(t, r)| (t, (r == "primary").to_string())).collect();
        ev.extend(downs.iter().filter(|(h, _)| h == a).map(|(_, t)| (*t, "false".to_string())));
        ev.sort();
        out.insert(a.clone(), ev);
    }
    (out, rejected)
}

fn owner(macs: &BTreeMap<String, String>, mac: &str) -> String {
    macs.get(mac).cloned().unwrap_or_else(|| if mac == "none" { "none".into() } else { mac.to_string() })
}

/// MAC of each ATM's front interface → ATM name.
fn atm_macs(lab: &Lab) -> anyhow::Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for h in lab.plan.of_role(Role::Atm).into_iter().chain(lab.plan.of_role(Role::Other)) {
        m.insert(crate::measure::mac_text(&topology::mac_of(&h.ns, "eth0")?), h.name.clone());
    }
    Ok(m)
}

/// A `reload` step as an operator does it: the config file edited (the simulator's edit,
/// [`clustersim::topology::edited`]), a real server added gets its node daemon, then SIGHUP
/// to each listed ATM in order, each waited for until it logs the outcome (applied live, or
/// restarting for a handover: the role changes then show in the figures).
fn reload(lab: &mut Lab, st: &Step, daemon: &Path, cfg: &Path, file: &mut Config) -> anyhow::Result<String> {
    let r = st.reload.as_ref().context("reload")?;
    let nodes: Vec<(String, IpAddr)> =
        lab.plan.of_role(Role::Node).iter().map(|h| (h.name.clone(), IpAddr::V4(h.addr()))).collect();
    let new = clustersim::topology::edited(file, r, &nodes)?;
    write_config(&new, cfg)?;
    *file = new;
    if let Some(n) = &r.add_server
        && lab.pid(&format!("{n}/daemon")).is_err()
    {
        crate::nodes::start_one(lab, daemon, n, cfg)?;
        crate::nodes::wait_ready(lab, &format!("{n}/daemon"), 0, 5_000)?;
    }
    let mut done = Vec::new();
    for atm in &r.atms {
        let label = format!("{atm}/daemon");
        let outcomes = |lab: &Lab| {
            let t = lab.log_text(&label);
            t.matches("reload applied live").count()
                + t.matches("restarting with the reloaded config").count()
        };
        let before = outcomes(lab);
        let live_before = lab.log_text(&label).matches("reload applied live").count();
        lab.signal(&label, Signal::SIGHUP)?;
        let mut how = "no answer within 5 s";
        for _ in 0..500 {
            check_interrupted()?;
            if outcomes(lab) > before {
                let live = lab.log_text(&label).matches("reload applied live").count() > live_before;
                how = if live { "live" } else { "by restart" };
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        done.push(format!("{atm} {how}"));
    }
    // Named as the health faults are, so the lab measures when the server stopped or started
    // taking requests (`health::check`) from here.
    let what = match (&r.add_server, &r.remove_server) {
        (Some(n), _) => format!("fault: server_added {n} "),
        (None, Some(n)) => format!("fault: server_removed {n} "),
        (None, None) => String::new(),
    };
    Ok(format!("{what}reload: {}", done.join(", ")))
}

/// A `drain` or `enable` step as an operator does it: `cmc drain|enable SERVICE SERVER` in
/// each listed ATM's namespace (against its loopback admin port, the lab config's token),
/// for every service that has the server, each waited for and required to succeed.
fn server_op(lab: &Lab, st: &Step, daemon: &Path, cfg: &Path, file: &Config) -> anyhow::Result<String> {
    let kind = st.kind()?;
    let op = st.drain.as_ref().or(st.enable.as_ref()).context("drain/enable")?;
    let cmc = daemon.with_file_name("cmc");
    if !cmc.exists() {
        bail!("cmc not found at {} (cargo build --bin cmc)", cmc.display());
    }
    let services: Vec<&str> = file
        .services
        .iter()
        .filter(|s| s.servers.iter().any(|x| x.name == op.server))
        .map(|s| s.name.as_str())
        .collect();
    if services.is_empty() {
        bail!("{kind} {}: no service has this server", op.server);
    }
    for atm in &op.atms {
        for svc in &services {
            check_interrupted()?;
            let args: Vec<String> =
                [kind, svc, &op.server, "--config", &cfg.display().to_string(), "--timeout-ms", "5000"]
                    .iter()
                    .map(|a| a.to_string())
                    .collect();
            let out =
                lab.command(atm, &cmc, &args)?.output().with_context(|| format!("cmc {kind} on {atm}"))?;
            if !out.status.success() {
                bail!(
                    "cmc {kind} {svc} {} on {atm}: {}{}",
                    op.server,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
    // Named as the health faults are (`health::check` measures from here).
    Ok(format!("fault: {kind} {} on {}", op.server, op.atms.join(", ")))
}

/// A crashed machine comes back with an empty `/run` (a tmpfs), as in the simulator: the
/// daemon's saved server overrides are gone.
fn forget_run_files(lab: &Lab, host: &str) -> anyhow::Result<()> {
    let dir = lab.dir.join("run");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
    for e in entries {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.starts_with("servers-") && name.ends_with(&format!("-{host}.json")) {
            std::fs::remove_file(dir.join(&name))?;
        }
    }
    Ok(())
}

fn start_daemon(lab: &mut Lab, daemon: &Path, atm: &str, cfg: &Path) -> anyhow::Result<()> {
    crate::nodes::start_one(lab, daemon, atm, cfg)
}

fn apply(
    lab: &mut Lab,
    st: &Step,
    daemon: &Path,
    (cfg, file): (&Path, &mut Config),
    stopped: &mut Vec<String>,
    crashed: &mut Vec<String>,
) -> anyhow::Result<String> {
    let plan = lab.plan.clone();
    if let Some(text) = crate::health::apply(lab, &plan, st)? {
        return Ok(text);
    }
    let kind = st.kind()?;
    let host = [
        &st.crash,
        &st.kill,
        &st.restart,
        &st.freeze,
        &st.thaw,
        &st.stop,
        &st.link_down,
        &st.link_up,
        &st.server_down,
        &st.server_up,
        &st.promote,
        &st.demote,
    ]
    .into_iter()
    .flatten()
    .next()
    .cloned()
    .unwrap_or_default();
    let label = format!("{host}/daemon");
    match kind {
        // The host is lost: its daemon dies and its links go down at once (the switch ends
        // of its veths, so it sees no carrier), as a machine that loses power.
        "crash" => {
            lab.signal(&label, Signal::SIGKILL)?;
            topology::set_link(&plan, &host, false)?;
            stopped.push(host.clone());
            crashed.push(host.clone());
        }
        // Only the daemon dies; the host and its kernel stay up.
        "kill" => {
            lab.signal(&label, Signal::SIGKILL)?;
            stopped.push(host.clone());
        }
        "restart" => {
            lab.wait_or_kill(&label, 0)?;
            if crashed.contains(&host) {
                topology::set_link(&plan, &host, true)?;
                forget_run_files(lab, &host)?;
                crashed.retain(|h| *h != host);
            }
            start_daemon(lab, daemon, &host, cfg)?;
            stopped.retain(|h| *h != host);
        }
        "freeze" => lab.signal(&label, Signal::SIGSTOP)?,
        "thaw" => lab.signal(&label, Signal::SIGCONT)?,
        "stop" => {
            stopped.push(host.clone());
            lab.signal(&label, Signal::SIGTERM)?;
        }
        "partition" => faults::partition(&plan, st.partition.as_deref().unwrap_or_default())?,
        "partition_oneway" => {
            faults::partition_oneway(&plan, st.partition_oneway.as_ref().context("oneway")?)?
        }
        "heal" => faults::heal(&plan)?,
        "loss" => faults::loss(&plan, st.loss.as_ref().context("loss")?)?,
        "link_down" | "link_up" => topology::set_link(&plan, &host, kind == "link_up")?,
        "latency" => {
            let l = st.latency.as_ref().context("latency")?;
            let exe = helper_exe()?;
            for (i, h) in faults::latency(&plan, l)?.iter().enumerate() {
                let label = format!("{h}/delay");
                let args = [
                    "delay".to_string(),
                    l.ms.to_string(),
                    l.jitter_ms.to_string(),
                    (i + 1).to_string(),
                    "600".into(),
                ];
                // A later latency step replaces the host's helper (its settings change).
                if lab.log_of(&label).is_some() {
                    lab.wait_or_kill(&label, 0)?;
                }
                lab.spawn(&label, h, &exe, &args)?;
            }
        }
        "server_down" | "server_up" => faults::server(&plan, &host, kind == "server_down")?,
        // Through the daemon's admin channel, as an operator would: `cmc promote|demote` run
        // in the ATM's namespace against its loopback (the default allow list), with the
        // token from the lab's config. It runs beside the scenario; its output is kept in the
        // lab's logs and the outcome shows in the daemons' role changes.
        "promote" | "demote" => {
            let cmc = daemon.with_file_name("cmc");
            if !cmc.exists() {
                bail!("cmc not found at {} (cargo build --bin cmc)", cmc.display());
            }
            let args = vec!["--config".to_string(), cfg.display().to_string(), kind.to_string()];
            lab.spawn(&format!("{host}/cmc-{kind}-{}", st.at_ms), &host, &cmc, &args)?;
        }
        "miss_garp" => {
            let m = st.miss_garp.as_ref().context("miss_garp")?;
            let f = plan.host(&m.client)?.client_family(plan.ip);
            faults::miss_garp(&plan, &m.client, f.vip(), m.count)?;
        }
        "forge" => {
            let f = st.forge.as_ref().context("forge")?;
            let exe = helper_exe()?;
            let port = clusterserver::config::DEFAULT_HEARTBEAT_PORT;
            let mut args = vec![
                "forge".to_string(),
                f.kind.clone(),
                f.count.to_string(),
                f.interval_ms.to_string(),
                CLUSTER_ID.to_string(),
                port.to_string(),
                format!("10.0.0.255:{port}"),
            ];
            args.extend(plan.of_role(Role::Atm).iter().map(|h| format!("{}:{port}", h.addr())));
            lab.spawn(&format!("rogue/forge-{}", st.at_ms), "rogue", &exe, &args)?;
        }
        "reload" => return reload(lab, st, daemon, cfg, file),
        "drain" | "enable" => return server_op(lab, st, daemon, cfg, file),
        other => bail!("the lab cannot perform `{other}`"),
    }
    let what = match kind {
        "partition" => format!("partition {:?}", st.partition.as_deref().unwrap_or_default()),
        "forge" => format!("forge {}", st.forge.as_ref().map_or("", |f| f.kind.as_str())),
        "loss" => format!("loss {}%", st.loss.as_ref().map_or(0.0, |l| l.percent)),
        "latency" => {
            st.latency.as_ref().map_or(String::new(), |l| format!("latency {} ms +{} ms", l.ms, l.jitter_ms))
        }
        "heal" => "heal".into(),
        "miss_garp" => st
            .miss_garp
            .as_ref()
            .map_or(String::new(), |m| format!("{} misses {} gratuitous ARP(s)", m.client, m.count)),
        _ => format!("{kind} {host}"),
    };
    Ok(format!("fault: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_active_scenarios_are_refused_by_name() {
        let aa = Scenario::parse("{ name: 'x', topology: { atms: 3, nodes: 3, forwarding: 'dr', ip: 'ipv6', mode: 'active-active' } }")
            .expect("scenario");
        let v = unsupported(&aa);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("active-active"), "{v:?}");
        let pb =
            Scenario::parse("{ name: 'y', topology: { atms: 2, nodes: 2, ip: 'dual' } }").expect("scenario");
        assert!(unsupported(&pb).is_empty());
    }
}
