//! `GET /metrics`: the Prometheus / OpenMetrics text exposition, names `clusterserver_*`.
//!
//! A fresh [`Registry`] is filled from one snapshot per scrape (the core view, the data
//! plane's counters, the admin channel's own): every value is read at the same moment and no
//! metric state lives beside the real counters, which stay where they are kept (core, engine,
//! worker). `prometheus-client` rather than the `metrics` crate: the latter has one
//! process-global recorder, and the simulator runs several nodes in one process.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::state::{AdminCounters, CoreView, DataplaneView};
use super::timing::Snapshot;
use crate::config::Config;
use crate::core::election::Role;
use crate::core::heartbeat::DecodeError;
use crate::dataplane::engine::DropReason;

type Labels = Vec<(String, String)>;

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    reg.register(name, help, g);
}

fn counters_by(reg: &mut Registry, name: &str, help: &str, rows: impl Iterator<Item = (Labels, u64)>) {
    let f = Family::<Labels, Counter>::default();
    for (l, v) in rows {
        f.get_or_create(&l).inc_by(v);
    }
    reg.register(name, help, f);
}

fn gauges_by(reg: &mut Registry, name: &str, help: &str, rows: impl Iterator<Item = (Labels, i64)>) {
    let f = Family::<Labels, Gauge>::default();
    for (l, v) in rows {
        f.get_or_create(&l).set(v);
    }
    reg.register(name, help, f);
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The heartbeat timing histograms as read for one scrape.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timing {
    pub send_jitter: Snapshot,
    pub receive_lateness: Snapshot,
}

/// The exposition text for one scrape.
pub fn render(
    cfg: &Config,
    me: usize,
    core: &CoreView,
    dp: Option<&DataplaneView>,
    admin: &AdminCounters,
    timing: &Timing,
) -> String {
    let mut reg = Registry::with_prefix("clusterserver");
    let primary = core.role == Some(Role::Primary);
    gauge(&mut reg, "role_primary", "1 while this ATM is the primary", i64::from(primary));
    gauge(&mut reg, "epoch", "Election epoch (term) of this ATM", core.epoch as i64);
    gauge(
        &mut reg,
        "forwarding_stopped",
        "1 while an operator has stopped forwarding here",
        i64::from(core.held),
    );
    counter(&mut reg, "failovers", "Promotions of this ATM to primary", core.failovers);
    counter(&mut reg, "heartbeats_sent", "Heartbeats sent", core.stats.heartbeats_sent);
    counter(&mut reg, "heartbeats_received", "Heartbeats accepted", core.stats.heartbeats_accepted);
    let rejected = DecodeError::ALL.iter().map(|r| (l(&[("reason", r.name())]), core.stats.rejected_for(*r)));
    counters_by(&mut reg, "heartbeats_rejected", "Heartbeat datagrams dropped, by reason", rejected);
    match &core.announce {
        // Active-active: no heartbeats between ATMs (peer gauges would all read 0), but a
        // per-VIP announcement.
        Some(vips) => gauges_by(
            &mut reg,
            "vip_announced",
            "Active-active: 1 while this ATM announces the VIP over BGP",
            vips.iter().map(|v| (l(&[("vip", &v.vip)]), i64::from(v.announced))),
        ),
        None => {
            render_peers(&mut reg, cfg, me, core);
            reg.register(
                "heartbeat_send_jitter_seconds",
                "Scheduled heartbeats: the moment sent minus the deadline",
                timing.send_jitter,
            );
            reg.register(
                "heartbeat_receive_lateness_seconds",
                "Accepted heartbeats: arrival minus the arrival expected from the peer's previous heartbeat (sequence gap times its interval), 0 when early",
                timing.receive_lateness,
            );
        }
    }
    if let Some(dp) = dp {
        render_dataplane(&mut reg, cfg, dp);
    }
    render_checks(&mut reg, cfg, core);
    counter(
        &mut reg,
        "admin_requests",
        "Admin requests from allowed peers",
        AdminCounters::get(&admin.requests),
    );
    let refused = [
        ("acl", &admin.refused_acl),
        ("busy", &admin.refused_busy),
        ("token", &admin.unauthorized),
        ("bad_request", &admin.bad_requests),
    ];
    counters_by(
        &mut reg,
        "admin_refused",
        "Admin connections or requests refused, by reason",
        refused.iter().map(|(r, c)| (l(&[("reason", r)]), AdminCounters::get(c))),
    );
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// The peers' gauges (primary/backup mode).
fn render_peers(reg: &mut Registry, cfg: &Config, me: usize, core: &CoreView) {
    let peers = || cfg.atms.iter().enumerate().filter(|(i, _)| *i != me);
    let peer_row =
        |i: usize, f: &dyn Fn(&crate::core::election::PeerView) -> i64| core.peers.get(i).map_or(0, f);
    gauges_by(
        reg,
        "peer_up",
        "1 while the peer ATM is heard within its dead interval",
        peers().map(|(i, a)| (l(&[("peer", &a.name)]), peer_row(i, &|p| i64::from(p.up)))),
    );
    gauges_by(
        reg,
        "peer_config_mismatch",
        "1 while the peer's heartbeats carry another config digest",
        peers().map(|(i, a)| (l(&[("peer", &a.name)]), peer_row(i, &|p| i64::from(p.digest_differs)))),
    );
}

fn render_dataplane(reg: &mut Registry, cfg: &Config, dp: &DataplaneView) {
    let s = &dp.stats;
    gauge(reg, "engine_active", "1 while the engine forwards (VIPs held)", i64::from(dp.active));
    counter(reg, "engine_packets", "Packets the engine processed", s.packets);
    counter(reg, "engine_new_connections", "Connections scheduled to a server", s.new_connections);
    let drops = DropReason::ALL.iter().map(|r| (l(&[("reason", r.name())]), s.dropped(*r)));
    counters_by(reg, "engine_drops", "Packets the engine dropped, by reason", drops);
    let made = [("reset", s.resets_sent), ("icmp_error", s.frag_needed_sent)];
    counters_by(
        reg,
        "engine_made_packets",
        "Packets the engine made itself (TCP resets, ICMP/ICMPv6 errors), by kind",
        made.iter().map(|(k, v)| (l(&[("kind", k)]), *v)),
    );
    let limited = [("reset", s.limited.resets), ("icmp_error", s.limited.icmp_errors)];
    counters_by(
        reg,
        "engine_rate_limited",
        "Resets and ICMP errors not sent because of their rate limit, by kind",
        limited.iter().map(|(k, v)| (l(&[("kind", k)]), *v)),
    );
    gauge(reg, "conntrack_entries", "Entries in the connection table", s.table_len as i64);
    gauge(reg, "conntrack_capacity", "Size limit of the connection table", dp.table_capacity as i64);
    counter(reg, "conntrack_expired", "Connection-table entries expired", s.table_expired);
    let ev = [("embryonic", s.evicted_embryonic), ("established", s.evicted_other)];
    counters_by(
        reg,
        "conntrack_evictions",
        "Entries evicted from a full connection table, by kind",
        ev.iter().map(|(k, v)| (l(&[("kind", k)]), *v)),
    );
    counter(reg, "sync_datagrams_sent", "Connection-sync datagrams sent", dp.sync_sent);
    counter(reg, "sync_datagrams_received", "Connection-sync datagrams received", dp.sync_received);
    counter(
        reg,
        "sync_datagrams_rejected",
        "Connection-sync datagrams refused (unauthenticated, replayed, malformed, from no listed ATM)",
        dp.sync_rejected,
    );
    counter(
        reg,
        "sync_records_applied",
        "Connection records applied from peers' sync",
        dp.sync_records_applied,
    );
    let f = &dp.full_sync;
    let full = [
        ("request_sent", f.requests_sent),
        ("request_received", f.requests_received),
        ("end_sent", f.ends_sent),
        ("end_received", f.ends_received),
        ("end_ignored", f.ends_ignored),
        ("end_incomplete", f.ends_incomplete),
        ("peer_gone", f.peers_gone),
    ];
    counters_by(
        reg,
        "full_sync_messages",
        "Full sync on join (active-active): requests and end markers, by kind (end_incomplete: an answer with lost record datagrams, asked again; peer_gone: a peer whose daemon is gone, not waited for)",
        full.iter().map(|(k, v)| (l(&[("kind", k)]), *v)),
    );
    let rows = |f: &dyn Fn(&super::state::ServerView) -> i64| -> Vec<(Labels, i64)> {
        cfg.services
            .iter()
            .zip(&dp.servers)
            .flat_map(|(svc, servers)| {
                svc.servers.iter().zip(servers).map(|(srv, v)| {
                    (
                        l(&[
                            ("service", &svc.name),
                            ("server", &srv.name),
                            ("address", &srv.address.to_string()),
                        ]),
                        f(v),
                    )
                })
            })
            .collect()
    };
    let traffic = |f: &dyn Fn(&crate::dataplane::engine::ServerCounters) -> u64| {
        rows(&|v| f(&v.traffic) as i64).into_iter().map(|(l, v)| (l, v as u64))
    };
    counters_by(
        reg,
        "server_connections_scheduled",
        "Connections scheduled to the server",
        traffic(&|c| c.connections),
    );
    let dir = |d: &str, l: &Labels| -> Labels {
        let mut l = l.clone();
        l.push(("direction".into(), d.into()));
        l
    };
    let packets = traffic(&|c| c.packets_in)
        .map(|(l, v)| (dir("to_server", &l), v))
        .chain(traffic(&|c| c.packets_out).map(|(l, v)| (dir("to_client", &l), v)));
    counters_by(
        reg,
        "server_packets",
        "Packets forwarded for the server (NAT replies as to_client)",
        packets,
    );
    let bytes = traffic(&|c| c.bytes_in)
        .map(|(l, v)| (dir("to_server", &l), v))
        .chain(traffic(&|c| c.bytes_out).map(|(l, v)| (dir("to_client", &l), v)));
    counters_by(reg, "server_bytes", "IP bytes forwarded for the server (NAT replies as to_client)", bytes);
    gauges_by(
        reg,
        "server_health",
        "1 while the health checks pass",
        rows(&|v| i64::from(v.healthy)).into_iter(),
    );
    gauges_by(
        reg,
        "server_weight",
        "Weight the scheduler uses (0: drained)",
        rows(&|v| i64::from(v.weight)).into_iter(),
    );
    gauges_by(
        reg,
        "server_connections",
        "Connection-table entries pointing at the server",
        rows(&|v| v.connections as i64).into_iter(),
    );
}

fn render_checks(reg: &mut Registry, cfg: &Config, core: &CoreView) {
    let label = |(svc, srv, chk): &(usize, usize, usize), kind: &str| -> Option<Labels> {
        let s = cfg.services.get(*svc)?;
        let r = s.servers.get(*srv)?;
        Some(l(&[("service", &s.name), ("server", &r.name), ("check", &chk.to_string()), ("kind", kind)]))
    };
    let runs = core.checks.iter().flat_map(|(k, v)| {
        [("pass", v.passes), ("fail", v.failures), ("timeout", v.timeouts)].into_iter().filter_map(
            move |(res, n)| {
                let mut lb = label(k, v.kind)?;
                lb.push(("result".into(), res.into()));
                Some((lb, n))
            },
        )
    });
    counters_by(reg, "check_runs", "Health-check runs by result", runs);
    let f = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for (k, v) in &core.checks {
        if let Some(lb) = label(k, v.kind) {
            f.get_or_create(&lb).set(v.last_latency.as_secs_f64());
        }
    }
    reg.register("check_latency_seconds", "Latency of the last answered run of the check", f);
    let sum =
        core.checks.iter().filter_map(|(k, v)| Some((label(k, v.kind)?, v.latency_sum.as_micros() as u64)));
    counters_by(
        reg,
        "check_latency_microseconds",
        "Sum of the latencies of the answered runs (with check_runs: the mean)",
        sum,
    );
}
