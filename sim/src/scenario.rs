//! Scenario files (SPEC.md): one JSON5 format for the simulator and the labs.
//!
//! Parsing is strict: unknown keys are errors, and each step must name exactly one kind.
//! Host names are checked against the topology, so a typo fails before anything runs.

use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub topology: Topology,
    #[serde(default)]
    pub load: Load,
    /// Overrides of the generated cluster config.
    #[serde(default)]
    pub cluster: ClusterOverrides,
    /// Length of the run; default: last step + 6 s.
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub expect: Expect,
    /// Service failover (seed 004): atm1 is the home of these services, atm2 its backup.
    pub failover: Option<FailoverSettings>,
}

/// A failover group for the simulated cluster: atm1's services, taken over by atm2.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverSettings {
    /// Service names, started in this order.
    pub services: Vec<String>,
    /// How long each start, stop or mirror copy takes.
    #[serde(default = "fifty")]
    pub command_ms: u64,
    #[serde(default = "takeover_delay")]
    pub takeover_delay_ms: u64,
}

fn fifty() -> u64 {
    50
}
fn takeover_delay() -> u64 {
    1500
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub atms: usize,
    #[serde(default)]
    pub nodes: usize,
    #[serde(default = "one")]
    pub clients: usize,
    #[serde(default = "nat")]
    pub forwarding: String,
    /// Routers on the reachlist (default 1; they are also upstream clients of the VIP).
    #[serde(default = "one")]
    pub routers: usize,
    /// A rogue host on the LAN (for `forge` steps).
    #[serde(default)]
    pub rogue: bool,
    /// A second cluster (id + 1, same ports, own secret and VIP) on the same subnet.
    #[serde(default)]
    pub second_cluster: bool,
    /// The service's address family: `ipv4` (default), `ipv6` (VIP, gateway VIP, real
    /// servers and clients on IPv6; the ATMs' heartbeats stay on IPv4, as in a dual-stack
    /// LAN) or `dual` (one IPv4 and one IPv6 service on the same servers; the clients
    /// alternate families: client1 IPv4, client2 IPv6, client3 IPv4...).
    #[serde(default)]
    pub ip: IpFamily,
    /// `primary-backup` (default) or `active-active`: every ATM announces the VIPs over BGP
    /// to an ECMP router (the simulator runs its stepped model, [`crate::ecmp`]; `nodes`
    /// real servers, `load.long_lived` flows; steps `crash`, `restart`, `stop`, `freeze`).
    #[serde(default)]
    pub mode: Mode,
}

/// How the scenario's ATMs share the VIPs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    PrimaryBackup,
    ActiveActive,
}

/// The address family of a scenario's service(s).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    #[default]
    Ipv4,
    Ipv6,
    Dual,
}

fn one() -> usize {
    1
}
fn nat() -> String {
    "nat".into()
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub connections_per_s: u32,
    #[serde(default)]
    pub long_lived: u32,
    /// Simulator: clients open `connections_per_s` new TCP connections per second (shared
    /// between them) and real servers record each one (off by default: the older scenarios
    /// measure the service with probes only). The labs always open new connections.
    #[serde(default)]
    pub new_connections: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterOverrides {
    pub preempt: Option<bool>,
    pub heartbeat_ms: Option<u64>,
    pub dead_after: Option<u32>,
    pub heartbeat_mode: Option<String>,
    pub min_reachable: Option<u32>,
    pub gratuitous_count: Option<u32>,
    pub refresh_s: Option<u64>,
    /// `sync.connections` (default true).
    pub sync_connections: Option<bool>,
    /// One TCP health check on every server (none by default).
    pub check: Option<CheckSettings>,
    /// Nodes of the topology left out of the initial config (a `reload` adds them).
    #[serde(default)]
    pub spare_servers: Vec<String>,
    /// The service's `on_down` (`keep`, the default, or `reset`).
    pub on_down: Option<String>,
    /// The service's `persistence_s` (client affinity; 0, the default, is none).
    pub persistence_s: Option<u64>,
}

/// A `reload` step: the config file is edited, then the listed ATMs reload it in order
/// (SIGHUP in the labs, the daemon's own reload in the simulator). Edits accumulate over
/// the run; a step without edits reloads the file as it is. Each applies to every service
/// (the lab's long-lived `stream` service too).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadStep {
    pub atms: Vec<String>,
    /// A server's new weight.
    pub weight: Option<WeightEdit>,
    /// A node of the topology joins as a server.
    pub add_server: Option<String>,
    /// A server leaves (its connections follow `on_down`).
    pub remove_server: Option<String>,
    /// A service on a new VIP with the first service's servers.
    pub add_service: Option<ServiceEdit>,
    /// A new heartbeat interval (live too).
    pub heartbeat_ms: Option<u64>,
}

/// An operator's `drain` or `enable` of a real server on the listed ATMs (`cmc drain` /
/// `cmc enable` in each one's namespace in the labs), for every service that has it. The
/// override is each ATM's own and outlives its reloads and daemon restarts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerOpStep {
    pub atms: Vec<String>,
    pub server: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightEdit {
    pub server: String,
    pub weight: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEdit {
    pub name: String,
    pub vip: std::net::Ipv4Addr,
}

/// A scenario's health check: interval, rise and fall (timeout: half the interval).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSettings {
    pub interval_ms: u64,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneWay {
    pub from: Vec<String>,
    pub to: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSetting {
    /// Percentage for `loss`, milliseconds for `latency`.
    #[serde(default)]
    pub percent: f64,
    #[serde(default)]
    pub ms: u64,
    #[serde(default)]
    pub jitter_ms: u64,
    /// Two hosts (one link), or absent for every link.
    #[serde(default)]
    pub between: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forge {
    /// `bad_mac` (signed with a wrong secret) or `replay` (captured heartbeats sent again).
    pub kind: String,
    #[serde(default = "ten")]
    pub count: u32,
    #[serde(default = "hundred")]
    pub interval_ms: u64,
}
fn ten() -> u32 {
    10
}
fn hundred() -> u64 {
    100
}

/// A `lose_sync` step (active-active): the ATM `to` loses the next `count` connection-sync
/// record datagrams it gets while it waits for its full sync on join (the answer's end
/// marker then counts more records than arrived, and the joiner must ask again).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoseSync {
    pub to: String,
    #[serde(default = "one_datagram")]
    pub count: u32,
}
fn one_datagram() -> u32 {
    1
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MissGarp {
    pub client: String,
    pub count: u32,
}

/// One fault, at `at_ms`. Exactly one of the kinds is set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub at_ms: u64,
    /// The host goes down (machine lost: daemon, kernel and links).
    pub crash: Option<String>,
    /// Only the daemon dies (SIGKILL); the host, its kernel and links stay up.
    pub kill: Option<String>,
    pub restart: Option<String>,
    pub freeze: Option<String>,
    pub thaw: Option<String>,
    pub stop: Option<String>,
    pub partition: Option<Vec<Vec<String>>>,
    pub partition_oneway: Option<OneWay>,
    pub heal: Option<bool>,
    pub loss: Option<LinkSetting>,
    pub latency: Option<LinkSetting>,
    pub link_down: Option<String>,
    pub link_up: Option<String>,
    pub forge: Option<Forge>,
    pub server_down: Option<String>,
    pub server_up: Option<String>,
    /// The server's health checks start failing / pass again while it keeps serving (the
    /// labs: an ASA check reading a flag file).
    pub check_fail: Option<String>,
    pub check_pass: Option<String>,
    /// The server's service process stops (connections refused) / starts again (the
    /// labs: nginx killed by PID and restarted; the simulator: like `server_down`/`up`).
    pub backend_stop: Option<String>,
    pub backend_start: Option<String>,
    /// Simulator and lab: the client ignores its next `count` gratuitous ARPs.
    pub miss_garp: Option<MissGarp>,
    /// Active-active: sync record datagrams lost on their way to a joining ATM.
    pub lose_sync: Option<LoseSync>,
    /// Operator actions through the control core.
    pub promote: Option<String>,
    pub demote: Option<String>,
    /// The config is edited and reloaded by these ATMs, in order.
    pub reload: Option<ReloadStep>,
    /// An operator drains a server (no new connections; existing ones carry on) / enables
    /// it again (back to its config).
    pub drain: Option<ServerOpStep>,
    pub enable: Option<ServerOpStep>,
}

impl Step {
    /// The step's kind name; errors unless exactly one kind is set.
    pub fn kind(&self) -> anyhow::Result<&'static str> {
        let set = [
            ("crash", self.crash.is_some()),
            ("kill", self.kill.is_some()),
            ("restart", self.restart.is_some()),
            ("freeze", self.freeze.is_some()),
            ("thaw", self.thaw.is_some()),
            ("stop", self.stop.is_some()),
            ("partition", self.partition.is_some()),
            ("partition_oneway", self.partition_oneway.is_some()),
            ("heal", self.heal.is_some()),
            ("loss", self.loss.is_some()),
            ("latency", self.latency.is_some()),
            ("link_down", self.link_down.is_some()),
            ("link_up", self.link_up.is_some()),
            ("forge", self.forge.is_some()),
            ("server_down", self.server_down.is_some()),
            ("server_up", self.server_up.is_some()),
            ("check_fail", self.check_fail.is_some()),
            ("check_pass", self.check_pass.is_some()),
            ("backend_stop", self.backend_stop.is_some()),
            ("backend_start", self.backend_start.is_some()),
            ("miss_garp", self.miss_garp.is_some()),
            ("lose_sync", self.lose_sync.is_some()),
            ("promote", self.promote.is_some()),
            ("demote", self.demote.is_some()),
            ("reload", self.reload.is_some()),
            ("drain", self.drain.is_some()),
            ("enable", self.enable.is_some()),
        ];
        let kinds: Vec<&str> = set.iter().filter(|(_, s)| *s).map(|(k, _)| *k).collect();
        match kinds.as_slice() {
            [k] => Ok(k),
            [] => bail!("step at {} ms names no kind", self.at_ms),
            more => bail!("step at {} ms names several kinds: {}", self.at_ms, more.join(", ")),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Longest client-observed outage (gap between answered probes, less one probe interval).
    pub max_outage_ms: Option<u64>,
    /// Per-client bounds that override `max_outage_ms`.
    #[serde(default)]
    pub client_outage_ms: std::collections::BTreeMap<String, u64>,
    /// Primaries at the end of the run.
    pub primaries_after_heal: Option<usize>,
    /// Long-lived connections lost (needs the data plane in the run).
    pub long_lived_lost: Option<u64>,
    /// The ATM that must be primary at the end.
    pub final_primary: Option<String>,
    /// Most promotions allowed over the run (the first election included).
    pub max_promotions: Option<usize>,
    /// ATMs that must never become primary.
    #[serde(default)]
    pub never_primary: Vec<String>,
    /// At least this many heartbeats rejected (forged or foreign) across the ATMs.
    pub min_rejected: Option<u64>,
    /// Most requests (probes) a client may lose after its first answer: `0` for a planned
    /// handover, which must lose none.
    pub max_lost_requests: Option<u64>,
    /// After a `server_down` / `check_fail` / `drain` step, the server gets no new connection
    /// later than this (ms after the step) until it recovers (`server_up`, `check_pass`,
    /// `enable`; needs `load.new_connections`).
    pub removed_within_ms: Option<u64>,
    /// After a `server_up` / `check_pass` / `enable` step, the server gets a new connection within
    /// this (ms after the step).
    pub returned_within_ms: Option<u64>,
    /// Failover: the ATM running every service at the end.
    pub services_final_on: Option<String>,
    /// Failover: at least this many takeovers by the backup.
    pub min_takeovers: Option<usize>,
    /// Failover: most takeovers allowed (0: the backup must never take over).
    pub max_takeovers: Option<usize>,
    /// `true`: each client's new connections reach one real server over the whole run,
    /// failovers included (persistence; needs `cluster.persistence_s`).
    pub persistent_clients: Option<bool>,
}

impl Scenario {
    pub fn from_file(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Scenario::parse(&text).with_context(|| format!("scenario {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let s: Scenario = json5::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    /// Host names of the topology, in registration order.
    pub fn host_names(&self) -> Vec<String> {
        let t = &self.topology;
        let mut v = Vec::new();
        v.extend((1..=t.routers).map(|i| if i == 1 { "router".to_string() } else { format!("router{i}") }));
        v.extend((1..=t.atms).map(|i| format!("atm{i}")));
        v.extend((1..=t.nodes).map(|i| format!("node{i}")));
        v.extend((1..=t.clients).map(|i| format!("client{i}")));
        if t.rogue {
            v.push("rogue".into());
        }
        if t.second_cluster {
            v.extend(["other1".to_string(), "other2".to_string()]);
        }
        v
    }

    fn validate(&self) -> anyhow::Result<()> {
        let t = &self.topology;
        if !(1..=16).contains(&t.atms) {
            bail!("topology.atms: expected 1 to 16, got {}", t.atms);
        }
        if !["nat", "dr", "tunnel"].contains(&t.forwarding.as_str()) {
            bail!("topology.forwarding: expected nat, dr or tunnel, got {:?}", t.forwarding);
        }
        let names = self.host_names();
        let known = |h: &String, at: u64| -> anyhow::Result<()> {
            if names.contains(h) {
                Ok(())
            } else {
                bail!("step at {at} ms: unknown host {h:?} (hosts: {})", names.join(", "))
            }
        };
        let mut last = 0;
        for s in &self.steps {
            if s.kind()? == "lose_sync" && self.topology.mode != Mode::ActiveActive {
                bail!(
                    "step at {} ms: `lose_sync` is for active-active scenarios (the full sync on join)",
                    s.at_ms
                );
            }
            if s.at_ms < last {
                bail!("step at {} ms comes after a step at {last} ms: steps must be in time order", s.at_ms);
            }
            last = s.at_ms;
            for h in s.hosts() {
                known(h, s.at_ms)?;
            }
        }
        for h in &self.cluster.spare_servers {
            known(h, 0).context("cluster.spare_servers")?;
        }
        if let Some(d) = self.cluster.on_down.as_deref().filter(|d| !["keep", "reset"].contains(d)) {
            bail!("cluster.on_down: expected keep or reset, got {d:?}");
        }
        let e = &self.expect;
        if self.failover.is_some() && self.topology.atms < 2 {
            bail!("failover needs at least 2 ATMs (atm1 home, atm2 backup)");
        }
        let final_on = e.services_final_on.iter();
        for h in
            e.never_primary.iter().chain(&e.final_primary).chain(e.client_outage_ms.keys()).chain(final_on)
        {
            known(h, 0).context("expect")?;
        }
        Ok(())
    }

    /// Duration of the run.
    pub fn duration_ms(&self) -> u64 {
        self.duration_ms.unwrap_or_else(|| self.steps.last().map_or(0, |s| s.at_ms) + 6000)
    }
}

impl Step {
    /// Every host name the step mentions.
    pub fn hosts(&self) -> Vec<&String> {
        let mut v: Vec<&String> = Vec::new();
        for h in [
            &self.crash,
            &self.kill,
            &self.restart,
            &self.freeze,
            &self.thaw,
            &self.stop,
            &self.link_down,
            &self.link_up,
            &self.server_down,
            &self.server_up,
            &self.check_fail,
            &self.check_pass,
            &self.backend_stop,
            &self.backend_start,
            &self.promote,
            &self.demote,
        ]
        .into_iter()
        .flatten()
        {
            v.push(h);
        }
        if let Some(p) = &self.partition {
            v.extend(p.iter().flatten());
        }
        if let Some(o) = &self.partition_oneway {
            v.extend(o.from.iter().chain(&o.to));
        }
        for l in [&self.loss, &self.latency].into_iter().flatten() {
            v.extend(&l.between);
        }
        if let Some(m) = &self.miss_garp {
            v.push(&m.client);
        }
        if let Some(l) = &self.lose_sync {
            v.push(&l.to);
        }
        if let Some(r) = &self.reload {
            v.extend(&r.atms);
            v.extend(r.weight.as_ref().map(|w| &w.server));
            v.extend(r.add_server.iter().chain(&r.remove_server));
        }
        for o in [&self.drain, &self.enable].into_iter().flatten() {
            v.extend(o.atms.iter().chain([&o.server]));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_scenarios_clearly() {
        let base = |steps: &str| format!("{{ name: 'x', topology: {{ atms: 2 }}, steps: [{steps}] }}");
        assert!(Scenario::parse(&base("{ at_ms: 1, crash: 'atm1' }")).is_ok());
        let e = Scenario::parse(&base("{ at_ms: 1, crash: 'atm9' }")).unwrap_err();
        assert!(format!("{e:#}").contains("unknown host \"atm9\""), "{e:#}");
        let e = Scenario::parse(&base("{ at_ms: 1 }")).unwrap_err();
        assert!(format!("{e:#}").contains("names no kind"));
        let e = Scenario::parse(&base("{ at_ms: 1, crash: 'atm1', heal: true }")).unwrap_err();
        assert!(format!("{e:#}").contains("several kinds: crash, heal"));
        let e = Scenario::parse(&base("{ at_ms: 1, explode: 'atm1' }")).unwrap_err();
        assert!(format!("{e:#}").contains("explode"), "{e:#}");
        let e = Scenario::parse(&base("{ at_ms: 5, heal: true }, { at_ms: 1, heal: true }")).unwrap_err();
        assert!(format!("{e:#}").contains("time order"));
    }
}
