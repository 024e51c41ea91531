//! The simulated ATM's data plane: the real [`Engine`] forwards the clients' flows to the real
//! servers, and the real connection-sync codec streams the primary's table to the backups.
//!
//! Frames of the simulated LAN are turmoil datagrams: a client sends its IPv4 packet to the
//! address its ARP cache gives for the VIP, on [`SERVICE_PORT`]; the engine's output goes to
//! the server on [`NODE_PORT`] (the next hop for direct routing, the packet's destination for
//! NAT and tunnels). The engine is active exactly while this host's kernel holds the VIPs,
//! as the daemon wires it; a backup's engine applies sync records to its shadow table.
//!
//! The engine and its sync run inside the daemon's own packet processor
//! ([`DaemonProcessor`]), over a turmoil sync socket ([`SimSyncSocket`]), driven as the
//! TUN worker drives it: packets through `process`, a [`TICK`], the wake-ups it asks for
//! (`wake_at`), and the sync socket's readiness (`on_readable`).
//!
//! Health: every ATM (primary or backup) runs the daemon's health loop
//! ([`clusterserver::health::driver::run`]) over the scenario's checks, polled inside this
//! task; a check's outcome is scripted by the world ([`crate::checks`]), and each verdict
//! change goes to the trace and, through a queue this loop drains, to the engine (through
//! the operators' overrides, as in the daemon).
//!
//! Operators' overrides (drain, disable, weight) sit beside the engine in the daemon's own
//! [`ServerControl`], saved after each change and reload in the daemon's state-file format
//! on the host's simulated `/run` and restored when the daemon starts again, so a drain
//! outlives a reload and a killed daemon (not a lost machine: `/run` is tmpfs).
//!
//! IPv6 rides the same LAN: an IPv6 packet goes to the LAN address (turmoil's) of the host
//! that has its destination, or next hop, as its own IPv6 address ([`crate::world::World::link_of`]); the
//! ATM's IPv6 source for IPv6-in-IPv6 is picked by the daemon's own rule from its
//! interface's addresses ([`clusterserver::daemon::setup::local_addr6`]).
//!
//! Servers answer as they would for real: with direct routing and tunnels straight to the
//! client from the VIP; with NAT from their own address to their default gateway, the
//! `gateway_vip` that moves with the primary (resolved through the server's own ARP cache),
//! whose engine rewrites the reply back to the VIP.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;

use tokio::sync::mpsc;

use clusterserver::config::{Config, Service, Table, diff::Remap};
use clusterserver::daemon::processor::DaemonProcessor;
use clusterserver::daemon::setup;
use clusterserver::dataplane::engine::{Engine, EngineConfig, Reload};
use clusterserver::dataplane::sync::{SyncReceiver, SyncSender};
use clusterserver::dataplane::wire::build;
use clusterserver::health::driver::{self, Clock, Update};
use clusterserver::overrides::{ServerControl, ServerOp, file};
use clusterserver::platform::linux::shell::{Disposition, TICK};

use crate::checks::{HealthVerdict, ScriptedChecker, Verdicts};
use crate::net::{SERVICE_PORT, SimClock, SimSocket, SimSyncSocket};
use crate::world::{DataplaneCommand, Shared};

/// Port on which simulated real servers receive forwarded packets.
pub const NODE_PORT: u16 = 9000;
/// Connection-table capacity of a simulated engine (the production default would allocate
/// tens of MB per engine per seed).
const SIM_TABLE: u32 = 4096;

/// The daemon's packet processor over the simulated sync socket.
type Processor = DaemonProcessor<SimSyncSocket>;

/// Everything the data plane needs to know about its ATM.
#[derive(Debug, Clone)]
pub struct DataplaneSpec {
    pub cfg: Rc<Config>,
    pub me: usize,
    pub secret: Vec<u8>,
    pub session: u64,
}

/// Runs the ATM's data plane until the host crashes or the daemon exits.
pub async fn run(
    world: Shared,
    name: String,
    spec: DataplaneSpec,
    clock: SimClock,
    mut commands: mpsc::UnboundedReceiver<DataplaneCommand>,
) -> io::Result<()> {
    let mut cfg = spec.cfg.clone();
    let svc = SimSocket::bind(&world, &name, SERVICE_PORT).await?;
    let fwd = SimSocket::bind(&world, &name, 0).await?;
    let local = match cfg.atms[spec.me].address {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    };
    let table = Table { max_connections: SIM_TABLE, ..cfg.table.clone() };
    let seed = world.borrow().seed;
    let addr6 = world.borrow().hosts.get(&name).and_then(|h| h.addr6);
    let ecfg = EngineConfig {
        services: Service::all_settings(&cfg.services),
        table,
        local_addr: local,
        local_addr6: setup::local_addr6(&cfg, spec.me, &if_inet6(addr6, &cfg.atms[spec.me].interface)),
        path_mtu: 1500,
        seed,
    };
    let mut engine = Engine::new(&ecfg);
    engine.set_active(false);
    engine.set_sync(cfg.sync.connections);
    let sender = SyncSender::new(&spec.secret, cfg.cluster.id, spec.session, cfg.sync.max_datagrams_per_s);
    let receiver = SyncReceiver::new(&spec.secret, cfg.cluster.id);
    // As the daemon: a sync socket only with `sync.connections`.
    let sync = match cfg.sync.connections {
        true => Some(SimSyncSocket::bind(&world, &name, cfg.sync_port()).await?),
        false => None,
    };
    // The daemon's processor: the engine, the operators' overrides beside it, the sync
    // sender, one receiver (replay window) per peer, the full sync; driven below as the TUN
    // worker drives it.
    let mut p = DaemonProcessor::new(engine, sender, receiver, sync.clone(), cfg.sync_peers(spec.me));
    let mut servers = server_addresses(&cfg);
    let (mut buf, mut tx) = ([0u8; 2048], [0u8; 2048]);
    restore(&world, &name, &cfg, spec.me, &mut p.servers, &mut p.engine, clock);
    // The daemon's health loop, polled first on every turn of this one (as the daemon joins
    // it with its control loop); its verdicts come back on `verdicts`.
    let (queue, mut verdicts) = mpsc::unbounded_channel();
    let (reload_checks, updates) = mpsc::unbounded_channel();
    let checker = ScriptedChecker { world: world.clone() };
    let sink = Verdicts { world: world.clone(), name: name.clone(), clock, queue };
    let services = cfg.services.clone();
    let checks = driver::run(&checker, &clock, &services, &sink, Some(updates));
    tokio::pin!(checks);
    let mut tick = tokio::time::interval(TICK);
    loop {
        follow_role(&world, &name, &mut p);
        apply_verdicts(&mut verdicts, &mut p);
        let wake = due_wake(&mut p, clock);
        tokio::select! {
            biased;
            () = &mut checks => {}
            Some(v) = verdicts.recv() => apply(v, &mut p),
            // The worker's order: control, tick, wake-up, sync socket, packets.
            Some(cmd) = commands.recv() => match cmd {
            DataplaneCommand::Server { service, server, op } => {
                // The admin channel's server request, by the daemon's code.
                let who = cfg.services.get(service).and_then(|s| Some((&s.name, &s.servers.get(server)?.name)));
                let what = match op {
                    ServerOp::Weight(w) => format!("weight {w}"),
                    ServerOp::Drain => "drain".into(),
                    ServerOp::Enable => "enable".into(),
                    ServerOp::Disable => "disable".into(),
                };
                let text = match (p.servers.apply(&mut p.engine, service, server, op), who) {
                    (Ok(()), Some((svc, srv))) => format!("operator: {what} {srv} (service {svc})"),
                    (Err(e), _) => format!("operator: {what} refused: {e}"),
                    (Ok(()), None) => format!("operator: {what} #{service}/{server}"),
                };
                world.borrow_mut().log(clock.now().as_millis(), &name, text);
                save(&world, &name, &cfg, spec.me, &p.servers);
            }
            DataplaneCommand::Reload(new) => {
                // The daemon's live reload, by the same code: the processor in place
                // (`DaemonProcessor::reconfigure`: the engine, the operators' overrides, the
                // sync peers) and the checks (the health loop's `Update`, as the daemon's
                // reloader sends it).
                let remap = Remap::between(&cfg, &new);
                let table = Table { max_connections: SIM_TABLE, ..new.table.clone() };
                let (old_s, new_s) = (Service::all_settings(&cfg.services), Service::all_settings(&new.services));
                let r = Reload { old: &old_s, new: &new_s, remap: &remap, table: &table };
                // Verdicts queued before the reload carry the old indices.
                apply_verdicts(&mut verdicts, &mut p);
                let st = p.reconfigure(&r, new.sync_peers(spec.me));
                let update = Update { old: cfg.services.clone(), new: new.services.clone(), remap: remap.clone() };
                let _ = reload_checks.send(update);
                servers = server_addresses(&new);
                let text = format!(
                    "data plane reloaded: flows kept={} dropped={} reset={} orphaned={}",
                    st.entries_kept, st.entries_dropped, st.entries_reset, st.entries_orphaned
                );
                world.borrow_mut().log(clock.now().as_millis(), &name, text);
                cfg = new;
                save(&world, &name, &cfg, spec.me, &p.servers);
            }
            },
            _ = tick.tick() => p.on_tick(clock.now()),
            _ = sleep_until(wake) => p.on_wake(clock.now()),
            r = async { sync.as_ref()?.readable().await.ok() }, if sync.is_some() => {
                // Bounded rounds until read empty, as the worker's readiness loop.
                if r.is_some() {
                    while !p.on_readable(clock.now()) {}
                }
            }
            r = svc.recv(&mut buf) => {
                let (n, from) = r?;
                let pkt = &buf[..n];
                if pkt.first().is_some_and(|b| b >> 4 == 4 || b >> 4 == 6) {
                    if let Some((len, to)) = forward(&world, &mut p, clock, &servers, pkt, &mut tx) {
                        let _ = fwd.send(&tx[..len], to).await;
                    }
                } else if let Some(answer) = probe_answer(&world, &name, pkt) {
                    let _ = svc.send(answer.as_bytes(), from).await;
                }
            }
        }
    }
}

/// The processor's next wake-up as the worker computes it: one already due runs now.
fn due_wake(p: &mut Processor, clock: SimClock) -> Option<tokio::time::Instant> {
    let mut want = p.wake_at();
    if want.is_some_and(|t| t <= clock.now()) {
        p.on_wake(clock.now());
        want = p.wake_at();
    }
    want.map(|t| clock.at(t))
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Puts back the overrides a previous run of this daemon saved in the host's `/run`, as
/// the daemon does before `ready`; a file it cannot use is reported and ignored.
fn restore(
    world: &Shared,
    name: &str,
    cfg: &Config,
    me: usize,
    control: &mut ServerControl,
    engine: &mut Engine,
    clock: SimClock,
) {
    let bytes = world.borrow_mut().host(name).run_dir.get(&file::name(cfg, me)).cloned();
    let Some(bytes) = bytes else { return };
    let text = match file::decode(&bytes, cfg, me) {
        Ok(saved) => {
            let (overrides, dropped) = file::by_index(cfg, &saved);
            control.restore(engine, &overrides);
            format!("server overrides restored: {} (dropped {dropped})", overrides.len())
        }
        Err(why) => format!("ignoring the saved server overrides: {why}"),
    };
    world.borrow_mut().log(clock.now().as_millis(), name, text);
}

/// Writes the overrides to the host's `/run` (the daemon's file; none when none is left).
fn save(world: &Shared, name: &str, cfg: &Config, me: usize, control: &ServerControl) {
    let (_, overrides) = control.overrides();
    let saved = file::by_name(cfg, &overrides);
    let mut w = world.borrow_mut();
    let dir = &mut w.host(name).run_dir;
    if saved.is_empty() {
        dir.remove(&file::name(cfg, me));
    } else {
        dir.insert(file::name(cfg, me), file::encode(cfg, me, saved));
    }
}

fn server_addresses(cfg: &Config) -> Vec<IpAddr> {
    cfg.services.iter().flat_map(|s| s.servers.iter().map(|x| x.address)).collect()
}

/// Applies the health loop's queued verdicts to the engine, through the operators'
/// overrides: a health pass never undoes an operator's drain.
fn apply_verdicts(verdicts: &mut mpsc::UnboundedReceiver<HealthVerdict>, p: &mut Processor) {
    while let Ok(v) = verdicts.try_recv() {
        apply(v, p);
    }
}

fn apply((service, server, up): HealthVerdict, p: &mut Processor) {
    p.servers.set_health(&mut p.engine, service, server, up);
}

/// The engine forwards while this host holds the VIPs; a primary whose peer came back
/// streams its whole table to it; a draining one (handed over) drains its sync as the
/// daemon's graceful stop does ([`DaemonProcessor::notify_when_drained`]: a full sync, then
/// every change at once, half-open flows included).
fn follow_role(world: &Shared, name: &str, p: &mut Processor) {
    let mut w = world.borrow_mut();
    let h = w.host(name);
    let active = !h.vips.is_empty() || h.draining;
    if active != p.engine.is_active() {
        p.set_active(active);
    }
    if h.draining && !p.engine.handing_over() {
        // The daemon waits for the notice (bounded); here the handover goes on regardless.
        let (done, _) = tokio::sync::oneshot::channel();
        p.notify_when_drained(done);
    }
    if std::mem::take(&mut h.resync) && p.engine.is_active() {
        p.engine.start_full_sync();
    }
}
/// Runs the engine on one packet; returns the bytes' length and where they go: a server's
/// [`NODE_PORT`], or (a NAT reply) the client's [`crate::flows::FLOW_PORT`].
fn forward(
    world: &Shared,
    p: &mut Processor,
    clock: SimClock,
    servers: &[IpAddr],
    pkt: &[u8],
    tx: &mut [u8],
) -> Option<(usize, SocketAddr)> {
    let (len, dst, port) = match p.process(clock.now(), pkt, tx) {
        Disposition::L2 { len, next_hop } => (len, next_hop, NODE_PORT),
        Disposition::Tun { len } => {
            let dst = destination(tx.get(..len)?)?;
            (len, dst, if servers.contains(&dst) { NODE_PORT } else { crate::flows::FLOW_PORT })
        }
        Disposition::Drop => return None,
    };
    Some((len, SocketAddr::new(world.borrow().link_of(dst)?, port)))
}

/// The destination address of an IPv4 or IPv6 packet.
fn destination(pkt: &[u8]) -> Option<IpAddr> {
    match pkt.first()? >> 4 {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(pkt.get(16..20)?).ok()?)),
        6 => Some(IpAddr::from(<[u8; 16]>::try_from(pkt.get(24..40)?).ok()?)),
        _ => None,
    }
}

/// `/proc/net/if_inet6` as the ATM's kernel would show it: its global IPv6 address on
/// `iface`, if it has one.
fn if_inet6(addr6: Option<Ipv6Addr>, iface: &str) -> String {
    addr6.map_or_else(String::new, |a| format!("{:032x} 02 40 00 80 {iface}\n", a.to_bits()))
}

/// The service probe (`REQ <seq> <vip>`): answered while this host holds the VIP, or drains
/// it (a gracefully leaving primary still forwards what reaches it).
fn probe_answer(world: &Shared, name: &str, pkt: &[u8]) -> Option<String> {
    let (seq, vip) = std::str::from_utf8(pkt).ok()?.strip_prefix("REQ ")?.split_once(' ')?;
    let vip: IpAddr = vip.parse().ok()?;
    let mut w = world.borrow_mut();
    let h = w.host(name);
    (h.vips.contains(&vip) || h.draining).then(|| format!("RSP {seq}"))
}

/// What a simulated real server knows of the service(s): one VIP per family it serves.
#[derive(Clone, Copy, Debug)]
pub struct NodeSpec {
    pub vip: Option<Ipv4Addr>,
    pub vip6: Option<Ipv6Addr>,
    pub port: u16,
    /// NAT: replies go to whoever holds this address (the servers' default gateway).
    pub gateway: Option<IpAddr>,
    /// NAT66: the IPv6 default gateway.
    pub gateway6: Option<IpAddr>,
}

/// The software of a real server: its kernel and the TCP responder.
pub fn node_software(
    world: Shared,
    name: String,
    spec: NodeSpec,
) -> impl Fn() -> Pin<Box<dyn Future<Output = turmoil::Result>>> {
    crate::kernel::with_kernel(world, name, move |world, name| server(world, name, spec))
}

/// Answers every forwarded TCP segment: a SYN with a SYN-ACK, anything else with an ACK
/// carrying the server's name. With direct routing and tunnels the answer leaves from the
/// VIP straight to the client; with NAT it leaves from the server's own address towards its
/// gateway (the primary), whose engine rewrites it back to the VIP.
async fn server(world: Shared, name: String, spec: NodeSpec) -> io::Result<()> {
    let sock = SimSocket::bind(&world, &name, NODE_PORT).await?;
    let mut neigh = crate::client::Neighbours::bind(&world, &name).await?;
    let clock = SimClock::start();
    let (me, me6) = match world.borrow().hosts.get(&name).map(|h| (h.addr, h.addr6)) {
        Some((Some(IpAddr::V4(a)), a6)) => (a, a6),
        _ => return Ok(()),
    };
    let mut buf = [0u8; 2048];
    loop {
        let (n, _) = sock.recv(&mut buf).await?;
        let Some((client, port, syn)) = client_of(&buf[..n]) else { continue };
        {
            let mut w = world.borrow_mut();
            let h = w.host(&name);
            if syn {
                h.syns.push(clock.ms());
                h.syn_clients.push(client);
            }
            if h.server_down {
                continue;
            }
        }
        let flags = if syn { 0x12 } else { 0x10 };
        let answer = match client {
            IpAddr::V4(client) => {
                let Some(vip) = spec.vip else { continue };
                match spec.gateway {
                    Some(gw) => {
                        let Some(owner) = neigh.lookup(&world, &name, clock.ms(), gw).await else { continue };
                        Some((
                            build::tcp((me, spec.port), (client, port), flags, name.as_bytes()),
                            SocketAddr::new(owner, SERVICE_PORT),
                        ))
                    }
                    None => Some((
                        build::tcp((vip, spec.port), (client, port), flags, name.as_bytes()),
                        SocketAddr::new(IpAddr::V4(client), crate::flows::FLOW_PORT),
                    )),
                }
            }
            IpAddr::V6(client) => {
                answer6(&world, &name, &mut neigh, clock, spec, me6, (client, port, flags)).await
            }
        };
        if let Some((pkt, to)) = answer {
            let _ = sock.send(&pkt, to).await;
        }
    }
}

/// A server's IPv6 answer: NAT66 from its own address through its IPv6 gateway (resolved by
/// NDP), direct routing and tunnel from the VIP straight to the client.
async fn answer6(
    world: &Shared,
    name: &str,
    neigh: &mut crate::client::Neighbours,
    clock: SimClock,
    spec: NodeSpec,
    me6: Option<Ipv6Addr>,
    (client, port, flags): (Ipv6Addr, u16, u8),
) -> Option<(Vec<u8>, SocketAddr)> {
    let vip6 = spec.vip6?;
    match spec.gateway6 {
        Some(gw) => {
            let owner = neigh.lookup(world, name, clock.ms(), gw).await?;
            let pkt = build::tcp6((me6?, spec.port), (client, port), flags, name.as_bytes());
            Some((pkt, SocketAddr::new(owner, SERVICE_PORT)))
        }
        None => {
            let link = world.borrow().link_of(IpAddr::V6(client))?;
            let pkt = build::tcp6((vip6, spec.port), (client, port), flags, name.as_bytes());
            Some((pkt, SocketAddr::new(link, crate::flows::FLOW_PORT)))
        }
    }
}

/// Source address and port of a forwarded packet (unwrapping IP-in-IP and IPv6-in-IPv6),
/// and whether it is a SYN.
fn client_of(pkt: &[u8]) -> Option<(IpAddr, u16, bool)> {
    if pkt.first()? >> 4 == 6 {
        let inner = if *pkt.get(6)? == 41 { pkt.get(40..)? } else { pkt };
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(inner.get(8..24)?).ok()?);
        let tcp = inner.get(40..)?;
        let port = u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]);
        return Some((IpAddr::V6(src), port, tcp.get(13)? & 0x12 == 0x02));
    }
    let ihl = usize::from(pkt.first()? & 0x0f) * 4;
    let inner = if *pkt.get(9)? == 4 { pkt.get(ihl..)? } else { pkt };
    let ihl = usize::from(inner.first()? & 0x0f) * 4;
    let src = Ipv4Addr::new(*inner.get(12)?, inner[13], inner[14], inner[15]);
    let port = u16::from_be_bytes([*inner.get(ihl)?, *inner.get(ihl + 1)?]);
    let flags = *inner.get(ihl + 13)?;
    Some((IpAddr::V4(src), port, flags & 0x12 == 0x02))
}
