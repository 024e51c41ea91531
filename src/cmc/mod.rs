//! `cmc`, the Cluster Management Console: the CLI over the daemon's admin channel
//! ([`crate::admin`]).
//!
//! It finds the daemon and its token from the same config file the daemon reads
//! (`--config`, default `/etc/clusterserver/clusterserver.json5`): the port is
//! `cluster.admin_port` (else `/etc/services`' `clusterserveradm`, else 17101), the token is
//! `security.token_file` (relative to the config's directory), the host is loopback unless
//! `--host` names another ATM. Reads print tables, or the daemon's JSON with `--json`.
//! Failures say which of the usual three it is: the daemon is down, this address is refused
//! by the ACL, or the token is wrong.
//!
//! Subcommands are a clap enum ([`Cmd`]); a new one is a variant and an arm in [`run`].

pub mod serve;
mod table;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::admin::client::Client;
use crate::admin::model::{ConnectionPage, ServiceStatus, Stats, Status};
use crate::config::DEFAULT_CONFIG_PATH;
use table::Table;

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "cmc", version, about = "Cluster Management Console for clusterserverd")]
pub struct Cli {
    /// The cluster's config file (port and token are read from it).
    #[arg(short, long, global = true, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// The daemon: an address (IPv4 or IPv6) or the name of an ATM of the config (default:
    /// loopback).
    #[arg(long, global = true)]
    pub host: Option<String>,
    /// The admin port (default: from the config).
    #[arg(long, global = true)]
    pub port: Option<u16>,
    /// The token file (default: security.token_file of the config).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Print the daemon's JSON instead of a table (reads only).
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up on a request after this many milliseconds.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub timeout_ms: u64,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Role, epoch, VIPs and the peers (last heard, config digest mismatch).
    Status,
    /// Services and their real servers: health, weight, admin state, connections.
    Servers,
    /// Heartbeat, engine, connection-table and admin counters.
    Stats,
    /// A page of the connection table.
    Connections {
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        client: Option<IpAddr>,
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Sets a server's weight (0..=65535; 0 takes no new connections).
    Weight { service: String, server: String, weight: u32 },
    /// No new connections to a server; its existing ones carry on.
    Drain { service: String, server: String },
    /// Back to the config: undoes drain, disable and `weight` (the overrides an operator set).
    Enable { service: String, server: String },
    /// Out of service as if failed (the service's on_down applies).
    Disable { service: String, server: String },
    /// Makes this ATM the primary (through the election; refused if not eligible).
    Promote,
    /// Hands the VIPs to an eligible backup.
    Demote,
    /// Re-reads the daemon's config file and applies it: live when the change plan allows
    /// (no role move, connections kept), else by the planned handover and a restart; refused,
    /// and the running one kept, if invalid.
    Reload {
        /// Print the change plan (what changes live, what needs the handover and which key
        /// forces it) without applying anything.
        #[arg(long)]
        plan: bool,
    },
    /// Makes this ATM a candidate again after `stop`.
    Start,
    /// Stops forwarding here: hands over if primary and stays backup until `start`.
    Stop,
    /// Hands over, tears the data plane down and starts again with the running config.
    Restart,
    /// Follows the event stream (role, peer, health, actions).
    Events {
        /// Stop after this many events (default: follow until interrupted).
        #[arg(long)]
        count: Option<usize>,
    },
    /// The Prometheus metrics text.
    Metrics,
    /// Pushes the config directory (`sync config`) or a mirror set (`sync content SET`) to
    /// every listed ATM and node with rsync over SSH (see `clusterserver::synctool`): a dry
    /// run showing what would change unless `--apply`. Needs no running daemon.
    Sync {
        /// `config`, or `content SET`.
        #[arg(required = true, num_args = 1..=2)]
        what: Vec<String>,
        /// Commit the changes (default: dry run).
        #[arg(long)]
        apply: bool,
        /// After `sync config --apply`, leave the daemons on their old config (by default
        /// every real server runs `failover.ssh.node_reload` over SSH and then every ATM is
        /// asked to reload over its admin channel, so they run what was pushed).
        #[arg(long)]
        no_reload: bool,
    },
    /// The web console: one page with live charts and the actions (loopback by default;
    /// beyond loopback only over HTTPS with --tls-cert and --tls-key).
    Serve {
        #[arg(long, default_value = "127.0.0.1:9101")]
        listen: SocketAddr,
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        #[arg(long)]
        tls_key: Option<PathBuf>,
    },
}

/// `cmc sync`: [`crate::synctool::push::cli`] with this command line's config file; after
/// a committed config push, every real server runs `failover.ssh.node_reload` and every ATM
/// reloads (seed 003 pushed files and left the restart to the operator; an ATM still on its
/// old config shows as a digest mismatch in `cmc status` until it reloads).
async fn sync(cli: &Cli, what: &[String], apply: bool, no_reload: bool) -> anyhow::Result<()> {
    let mut args = what.to_vec();
    if apply {
        args.push("--apply".into());
    }
    args.extend(["--config".to_string(), cli.config.display().to_string()]);
    match crate::synctool::push::cli(&args) {
        0 => {}
        code => bail!("sync did not complete (status {code}; see above)"),
    }
    if !(apply && !no_reload && what == ["config"]) {
        return Ok(());
    }
    // Real servers first: a node set up for a new VIP before the ATMs forward it is
    // harmless; the other way round its packets would reach a node that drops them.
    let nodes = crate::synctool::push::reload_nodes(&cli.config);
    let atms = rolling_reload(cli).await;
    match nodes {
        0 => atms,
        code => {
            atms.and_then(|()| bail!("pushed, but a real server did not reload (status {code}; see above)"))
        }
    }
}

/// How long one ATM may take to come back with the pushed config, and to be heard so by
/// the others, before the rolling reload gives up on it.
const RELOAD_WAIT: Duration = Duration::from_secs(30);

/// Reloads every ATM, one at a time: the backups first, the primary last, each only once the
/// previous one runs the new config and the ATMs still to go hear it. Most changes apply
/// live (SIGHUP's rule: the change plan of `cmc reload --plan`), so no role moves; when the
/// plan needs the handover, an ATM hands over and restarts, and this order moves the
/// primary role once, to an ATM already on the new config (reloading the primary first
/// would hand the VIPs to an ATM still on the old config, and reloading two at once could
/// leave the primary without a successor to hand over to).
async fn rolling_reload(cli: &Cli) -> anyhow::Result<()> {
    let mut atms = Vec::new();
    for (name, address) in atms_of(cli)? {
        let mut c = client_for(cli)?;
        c.addr = SocketAddr::new(address, c.addr.port());
        let status: Result<Status, _> = c.get("/v1/status").await;
        atms.push((name, address, c, status));
    }
    // Backups (and ATMs that did not answer, to report them) first, the primary last.
    atms.sort_by_key(|(_, _, _, s)| s.as_ref().is_ok_and(|s| s.role == "primary"));
    let mut failed = Vec::new();
    for i in 0..atms.len() {
        let (name, address, c, before) = &atms[i];
        let before = match before {
            Ok(s) => s.config_digest.clone(),
            Err(e) => {
                println!("{name:<16} {address:<39} reload FAILED: {e}");
                failed.push(name.clone());
                continue;
            }
        };
        match c.post("/v1/reload", None).await {
            Err(e) => {
                println!("{name:<16} {address:<39} reload FAILED: {e}");
                failed.push(name.clone());
                continue;
            }
            // The daemon's answer when the file it reads is what it runs already.
            Ok(m) if m.contains("unchanged") => {
                println!("{name:<16} {address:<39} already runs it");
                continue;
            }
            Ok(_) => {}
        }
        let started = tokio::time::Instant::now();
        let now_runs = wait_for(c, |s| (s.config_digest != before).then(|| s.config_digest.clone())).await;
        let Some(digest) = now_runs else {
            println!("{name:<16} {address:<39} reloaded, but still on its old config after {RELOAD_WAIT:?}");
            failed.push(name.clone());
            continue;
        };
        // The ATMs still to reload must hear it (up, with its new digest) before one of
        // them hands over to it.
        for (other, _, oc, _) in &atms[i + 1..] {
            let heard = |s: &Status| {
                s.peers.iter().any(|p| &p.name == name && p.up && p.config_digest == digest).then_some(())
            };
            if wait_for(oc, heard).await.is_none() {
                println!(
                    "{name:<16} {address:<39} reloaded, but {other} does not hear it with the new config"
                );
            }
        }
        println!("{name:<16} {address:<39} reloaded ({} ms)", started.elapsed().as_millis());
    }
    if !failed.is_empty() {
        bail!(
            "pushed, but {} did not reload: run `cmc reload` there (or allow this host in their security.admin_allow)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Polls `c`'s status until `ok` gives a value (daemon restarting: errors are retried), for
/// at most [`RELOAD_WAIT`].
async fn wait_for<T>(c: &Client, ok: impl Fn(&Status) -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + RELOAD_WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Ok(s) = c.get::<Status>("/v1/status").await
            && let Some(v) = ok(&s)
        {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The ATMs of the config, by name and address.
fn atms_of(cli: &Cli) -> anyhow::Result<Vec<(String, IpAddr)>> {
    let text = std::fs::read_to_string(&cli.config)
        .with_context(|| format!("cannot read the config {}", cli.config.display()))?;
    let opts = crate::config::LoadOptions { check_files: false, base_dir: base_dir(&cli.config) };
    let cfg = crate::config::parse_str(&cli.config.display().to_string(), &text, &opts)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(cfg.atms.iter().map(|a| (a.name.clone(), a.address)).collect())
}

/// Where the daemon is and how to authenticate, from the config and the flags.
pub fn client_for(cli: &Cli) -> anyhow::Result<Client> {
    let text = std::fs::read_to_string(&cli.config)
        .with_context(|| format!("cannot read the config {} (use --config)", cli.config.display()))?;
    // The secret file need not be readable by the operator: only the token is used here.
    let opts = crate::config::LoadOptions { check_files: false, base_dir: base_dir(&cli.config) };
    let mut cfg = crate::config::parse_str(&cli.config.display().to_string(), &text, &opts)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("the config {} is invalid", cli.config.display()))?;
    let services = std::fs::read_to_string("/etc/services").unwrap_or_default();
    crate::daemon::setup::resolve_ports(&mut cfg, &services);
    let port = cli.port.unwrap_or_else(|| cfg.admin_port());
    let host = match &cli.host {
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(h) => match h.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => cfg.atms.iter().find(|a| a.name == *h).map(|a| a.address).with_context(|| {
                let names: Vec<&str> = cfg.atms.iter().map(|a| a.name.as_str()).collect();
                format!("--host {h}: neither an address nor an ATM of the config ({})", names.join(", "))
            })?,
        },
    };
    let token_file = match (&cli.token_file, &cfg.security.token_file) {
        (Some(f), _) => f.clone(),
        (None, Some(f)) => f.clone(),
        (None, None) => bail!(
            "{} has no security.token_file: the daemon's admin channel refuses every request without one",
            cli.config.display()
        ),
    };
    let token = std::fs::read_to_string(&token_file).with_context(|| {
        format!("cannot read the admin token {} (run cmc as a user who may)", token_file.display())
    })?;
    let mut c = Client::new(SocketAddr::new(host, port), Some(token.trim().to_string()));
    c.timeout = Duration::from_millis(cli.timeout_ms);
    Ok(c)
}

fn base_dir(config: &Path) -> PathBuf {
    config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn path_seg(s: &str) -> String {
    // Names are config names ([A-Za-z0-9_-] in practice); escape anything else.
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Runs one command against the daemon.
pub async fn run(cli: &Cli) -> anyhow::Result<()> {
    // The sync tools talk to hosts over SSH, not to the daemon.
    if let Cmd::Sync { what, apply, no_reload } = &cli.cmd {
        return sync(cli, what, *apply, *no_reload).await;
    }
    let c = client_for(cli)?;
    let server_path = |svc: &str, srv: &str, action: &str| {
        format!("/v1/services/{}/servers/{}/{action}", path_seg(svc), path_seg(srv))
    };
    let action = |msg: String| println!("{msg}");
    match &cli.cmd {
        Cmd::Status => {
            let s: Status = c.get("/v1/status").await?;
            if cli.json { print_json(&s)? } else { print!("{}", render_status(&s)) }
        }
        Cmd::Servers => {
            let s: Vec<ServiceStatus> = c.get("/v1/services").await?;
            if cli.json { print_json(&s)? } else { print!("{}", render_servers(&s)) }
        }
        Cmd::Stats => {
            let s: Stats = c.get("/v1/stats").await?;
            if cli.json { print_json(&s)? } else { print!("{}", render_stats(&s)) }
        }
        Cmd::Connections { service, server, client, offset, limit } => {
            let mut q = format!("/v1/connections?offset={offset}&limit={limit}");
            if let Some(s) = service {
                q.push_str(&format!("&service={}", path_seg(s)));
            }
            if let Some(s) = server {
                q.push_str(&format!("&server={}", path_seg(s)));
            }
            if let Some(a) = client {
                q.push_str(&format!("&client={a}"));
            }
            let p: ConnectionPage = c.get(&q).await?;
            if cli.json { print_json(&p)? } else { print!("{}", render_connections(&p)) }
        }
        Cmd::Weight { service, server, weight } => {
            let body = serde_json::json!({ "weight": weight }).to_string();
            action(c.post(&server_path(service, server, "weight"), Some(&body)).await?)
        }
        Cmd::Drain { service, server } => action(c.post(&server_path(service, server, "drain"), None).await?),
        Cmd::Enable { service, server } => {
            action(c.post(&server_path(service, server, "enable"), None).await?)
        }
        Cmd::Disable { service, server } => {
            action(c.post(&server_path(service, server, "disable"), None).await?)
        }
        Cmd::Promote => action(c.post("/v1/promote", None).await?),
        Cmd::Demote => action(c.post("/v1/demote", None).await?),
        Cmd::Reload { plan: false } => action(c.post("/v1/reload", None).await?),
        Cmd::Reload { plan: true } => {
            let d: crate::admin::model::ActionDone = c.get("/v1/reload/plan").await?;
            println!("{}", d.done);
        }
        Cmd::Start => action(c.post("/v1/forwarding/start", None).await?),
        Cmd::Stop => action(c.post("/v1/forwarding/stop", None).await?),
        Cmd::Restart => action(c.post("/v1/forwarding/restart", None).await?),
        Cmd::Events { count } => {
            let mut left = *count;
            let json = cli.json;
            c.events(|ev| {
                if json {
                    println!("{}", serde_json::to_string(&ev).unwrap_or_default());
                } else {
                    println!("{:>10.3}s  {:<9} {}", ev.at_ms as f64 / 1000.0, ev.kind, ev.message);
                }
                left = left.map(|n| n.saturating_sub(1));
                left != Some(0)
            })
            .await?
        }
        Cmd::Metrics => print!("{}", c.get_text("/metrics").await?),
        Cmd::Sync { what, apply, no_reload } => sync(cli, what, *apply, *no_reload).await?,
        Cmd::Serve { listen, tls_cert, tls_key } => {
            let opts =
                serve::ServeOptions { listen: *listen, tls_cert: tls_cert.clone(), tls_key: tls_key.clone() };
            serve::serve(c, opts).await?
        }
    }
    Ok(())
}

/// `cmc status` as text.
pub fn render_status(s: &Status) -> String {
    let mut out = format!(
        "cluster {}  node {}  role {}{}  epoch {}  config {}\nVIPs: {}\n",
        s.cluster,
        s.node,
        s.role,
        if s.stopped { " (forwarding stopped)" } else { "" },
        s.epoch,
        s.config_digest,
        s.vips.join(", ")
    );
    // Active-active: whether each VIP is announced over BGP, and why not.
    if !s.announcements.is_empty() {
        let mut t = Table::new(&["VIP", "ANNOUNCED", "WHY NOT"]);
        for a in &s.announcements {
            t.row(vec![
                a.vip.clone(),
                if a.announced { "yes" } else { "no" }.into(),
                a.reason.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        out.push_str(&t.render());
        if s.peers.is_empty() {
            return out;
        }
    }
    let mut t = Table::new(&["PEER", "ADDRESS", "UP", "ROLE", "EPOCH", "LAST HEARD", "CONFIG"]);
    for p in &s.peers {
        t.row(vec![
            p.name.clone(),
            p.address.clone(),
            if p.up { "yes" } else { "no" }.into(),
            p.role.clone(),
            p.epoch.to_string(),
            p.last_heard_ms.map_or_else(|| "never".into(), |ms| format!("{ms} ms ago")),
            match (p.config_digest.is_empty(), p.config_differs) {
                (true, _) => "-".into(),
                (false, true) => format!("DIFFERS ({})", p.config_digest),
                (false, false) => "same".into(),
            },
        ]);
    }
    out.push_str(&t.render());
    out
}

/// `cmc servers` as text.
pub fn render_servers(services: &[ServiceStatus]) -> String {
    let mut t = Table::new(&[
        "SERVICE",
        "SERVER",
        "ADDRESS",
        "HEALTH",
        "ADMIN",
        "CONFIG",
        "RUNTIME",
        "CONNS",
        "TOTAL",
        "BYTES IN/OUT",
    ]);
    for s in services {
        for r in &s.servers {
            t.row(vec![
                s.name.clone(),
                r.name.clone(),
                format!("{}:{}", r.address, r.port),
                if r.healthy { "up" } else { "DOWN" }.into(),
                r.admin.clone(),
                r.config_weight.to_string(),
                // The runtime weight (an operator's override is marked), then what the
                // scheduler uses when that differs (0 while drained).
                match (r.weight_overridden, r.weight == r.runtime_weight) {
                    (true, true) => format!("{} (set)", r.runtime_weight),
                    (true, false) => format!("{} (set; in use {})", r.runtime_weight, r.weight),
                    (false, true) => r.runtime_weight.to_string(),
                    (false, false) => format!("{} (in use {})", r.runtime_weight, r.weight),
                },
                r.connections.to_string(),
                r.connections_total.to_string(),
                format!("{}/{}", r.bytes_in, r.bytes_out),
            ]);
        }
    }
    t.render()
}

/// `cmc stats` as text.
pub fn render_stats(s: &Stats) -> String {
    let pairs = |v: &[(String, u64)]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(" ")
        }
    };
    let mut t = Table::new(&["COUNTER", "VALUE"]);
    let rows: Vec<(&str, String)> = vec![
        ("heartbeats sent", s.heartbeats_sent.to_string()),
        ("heartbeats accepted", s.heartbeats_accepted.to_string()),
        ("heartbeats rejected", pairs(&s.heartbeats_rejected)),
        ("heartbeat send jitter", s.heartbeat_send_jitter.to_string()),
        ("heartbeat receive lateness", s.heartbeat_receive_lateness.to_string()),
        ("failovers (promotions here)", s.failovers.to_string()),
        ("engine active", s.engine_active.to_string()),
        ("packets", s.packets.to_string()),
        ("new connections", s.new_connections.to_string()),
        ("table entries", format!("{} of {}", s.table_len, s.table_capacity)),
        ("table expired / evicted", format!("{} / {}", s.table_expired, s.table_evicted)),
        ("drops", pairs(&s.drops)),
        ("sync sent / received", format!("{} / {}", s.sync_sent, s.sync_received)),
        ("sync rejected / records applied", format!("{} / {}", s.sync_rejected, s.sync_records_applied)),
        (
            "full sync requests sent / received, ends sent / received",
            format!("{} / {}, {} / {}", s.full_sync[0], s.full_sync[1], s.full_sync[2], s.full_sync[3]),
        ),
        (
            "resets / ICMP errors sent, rate-limited",
            format!(
                "{} / {}, {} / {}",
                s.made_packets[0], s.made_packets[1], s.made_packets[2], s.made_packets[3]
            ),
        ),
        ("admin requests", s.admin_requests.to_string()),
        (
            "admin refused (acl / token / bad)",
            format!("{} / {} / {}", s.admin_refused_acl, s.admin_unauthorized, s.admin_bad_requests),
        ),
    ];
    for (k, v) in rows {
        t.row(vec![k.to_string(), v]);
    }
    t.render()
}

/// `cmc connections` as text.
pub fn render_connections(p: &ConnectionPage) -> String {
    let mut t = Table::new(&["SERVICE", "SERVER", "PROTO", "CLIENT", "VIP"]);
    for c in &p.connections {
        t.row(vec![c.service.clone(), c.server.clone(), c.protocol.clone(), c.client.clone(), c.vip.clone()]);
    }
    let end = p.offset + p.connections.len() as u64;
    format!("{}{} of {} connections shown (from {})\n", t.render(), p.connections.len(), p.total, p.offset)
        .replace(&format!("(from {})", p.offset), &format!("({}..{end})", p.offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::model::{PeerStatus, VipAnnouncement};

    fn status() -> Status {
        Status {
            cluster: "c".into(),
            node: "atm1".into(),
            role: "active".into(),
            config_digest: "ab".into(),
            vips: vec!["10.0.0.99".into(), "10.0.0.98".into()],
            ..Status::default()
        }
    }

    #[test]
    fn active_active_status_shows_each_vip_announced_or_why_not_and_no_empty_peer_table() {
        let mut s = status();
        s.announcements = vec![
            VipAnnouncement { vip: "10.0.0.99".into(), announced: true, reason: None },
            VipAnnouncement {
                vip: "10.0.0.98".into(),
                announced: false,
                reason: Some("no_healthy_server".into()),
            },
        ];
        let text = render_status(&s);
        let row = |vip: &str| text.lines().find(|l| l.starts_with(vip)).unwrap_or_default().to_string();
        assert!(row("10.0.0.99").contains("yes"), "{text}");
        assert!(row("10.0.0.98").contains("no_healthy_server"), "{text}");
        assert!(!text.contains("PEER"), "{text}");
    }

    #[test]
    fn primary_backup_status_marks_a_peer_whose_config_differs() {
        let mut s = status();
        s.role = "primary".into();
        s.peers = vec![PeerStatus {
            name: "atm2".into(),
            config_digest: "cd".into(),
            config_differs: true,
            up: true,
            ..PeerStatus::default()
        }];
        let text = render_status(&s);
        assert!(text.contains("DIFFERS (cd)") && !text.contains("ANNOUNCED"), "{text}");
    }
}
