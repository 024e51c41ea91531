//! The daemon's side of the admin channel ([`crate::admin`]): the [`Backend`] that reads and
//! changes the data plane through the TUN worker's control queue, and hands promote, demote,
//! stop, start, reload and restart to the control loop (the primary/backup loop in
//! `daemon`, or the active-active one in `daemon::active`, which also hears of every server
//! change for its announcer).
//!
//! Reads are closures run on the worker between two batches (like every other change to
//! the engine): the packet path takes no lock, and an answer is a consistent snapshot.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::processor::DaemonProcessor;
use super::reload::Saver;
use crate::admin::model::ConnectionPage;
use crate::admin::server::Live;
use crate::admin::server::connection_row;
use crate::admin::state::{
    Backend, ConnectionQuery, ControlOp, DataplaneView, Outcome, ServerOp, ServerView,
};
use crate::platform::linux::shell::tun::ShellControl;

/// Longest wait for the worker to answer a read or apply a change.
const WORKER_TIMEOUT: Duration = Duration::from_secs(2);

/// Requests for the control loop, each with where to send its outcome.
pub type ControlRequest = (ControlOp, oneshot::Sender<Outcome>);

/// The real backend.
#[derive(Debug)]
pub struct DaemonBackend {
    pub shell: ShellControl<DaemonProcessor>,
    /// The running config (shared with the admin context; a live reload swaps it).
    pub live: Arc<Live>,
    pub control: mpsc::UnboundedSender<ControlRequest>,
    /// Active-active only: every applied server change as (service, server, operator
    /// weight) for the control loop's announcer, which withdraws a VIP whose servers are
    /// all drained or disabled. `None` in primary/backup mode.
    pub server_changes: Option<mpsc::UnboundedSender<ServerChange>>,
    /// Saves the operators' overrides after every change (see [`super::server_state`]).
    pub saver: Arc<Saver>,
}

/// (service, server, operator weight: 0 while drained or disabled).
pub type ServerChange = (usize, usize, u32);

/// One connection of either table.
enum Row<'a> {
    V4(&'a crate::dataplane::conntrack::Entry<std::net::Ipv4Addr>),
    V6(&'a crate::dataplane::conntrack::Entry<std::net::Ipv6Addr>),
}

/// Runs `f` on the worker and returns its result.
fn ask<T: Send + 'static>(
    shell: &ShellControl<DaemonProcessor>,
    f: impl Fn(&mut DaemonProcessor) -> T + Send + Sync + 'static,
) -> BoxFuture<'static, Result<T, String>> {
    let (tx, rx) = oneshot::channel();
    let tx = Mutex::new(Some(tx));
    let queued = shell.apply(Arc::new(move |p: &mut DaemonProcessor| {
        if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
            let _ = tx.send(f(p));
        }
    }));
    async move {
        queued.map_err(|e| format!("data plane busy or stopped: {e}"))?;
        match tokio::time::timeout(WORKER_TIMEOUT, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err("data plane stopped".into()),
            Err(_) => Err(format!("data plane did not answer within {WORKER_TIMEOUT:?}")),
        }
    }
    .boxed()
}

fn view(p: &DaemonProcessor) -> DataplaneView {
    let servers = (0..)
        .map(|svc| (svc, p.engine.servers(svc)))
        .take_while(|(_, s)| !s.is_empty())
        .map(|(svc, slots)| {
            slots
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let inputs = p.servers.inputs(svc, i);
                    ServerView {
                        weight: s.weight,
                        operator_weight: inputs.map_or(s.weight, |x| x.weight()),
                        config_weight: inputs.map_or(s.weight, |x| x.config_weight),
                        weight_overridden: inputs.is_some_and(|x| x.weight_override.is_some()),
                        healthy: inputs.map_or(s.up, |x| x.healthy),
                        admin: inputs.map_or("enabled", |x| x.state.name()),
                        connections: u64::from(s.active),
                        traffic: p.engine.server_counters(svc).get(i).copied().unwrap_or_default(),
                    }
                })
                .collect()
        })
        .collect();
    DataplaneView {
        active: p.engine.is_active(),
        stats: p.engine.stats(),
        table_capacity: (p.engine.table().capacity() + p.engine.table6().capacity()) as u64,
        servers,
        sync_sent: p.counters.sent,
        sync_received: p.counters.received,
        sync_rejected: p.counters.rejected,
        sync_records_applied: p.counters.applied_records,
        full_sync: p.full_sync_stats(),
    }
}

impl Backend for DaemonBackend {
    fn dataplane(&self) -> BoxFuture<'static, Result<DataplaneView, String>> {
        ask(&self.shell, |p| view(p))
    }

    fn connections(&self, q: ConnectionQuery) -> BoxFuture<'static, Result<ConnectionPage, String>> {
        let cfg = self.live.get().cfg.clone();
        ask(&self.shell, move |p| {
            let mut page = ConnectionPage { total: 0, offset: q.offset as u64, connections: Vec::new() };
            let wanted = |service: u16, server: u16, client: std::net::IpAddr| {
                q.service.is_none_or(|s| usize::from(service) == s)
                    && q.server.is_none_or(|s| usize::from(server) == s)
                    && q.client.is_none_or(|c| client == c)
            };
            // IPv4 connections first, then IPv6: one page over both tables.
            let v4 = p
                .engine
                .table()
                .iter()
                .map(|(_, e)| e)
                .filter(|e| wanted(e.service, e.server_idx, e.client.into()));
            let v6 = p
                .engine
                .table6()
                .iter()
                .map(|(_, e)| e)
                .filter(|e| wanted(e.service, e.server_idx, e.client.into()));
            let rows = v4.map(Row::V4).chain(v6.map(Row::V6));
            for (i, r) in rows.enumerate() {
                page.total += 1;
                if i >= q.offset && page.connections.len() < q.limit {
                    page.connections.push(match r {
                        Row::V4(e) => connection_row(&cfg, e),
                        Row::V6(e) => connection_row(&cfg, e),
                    });
                }
            }
            page
        })
    }

    fn server(&self, service: usize, server: usize, op: ServerOp) -> BoxFuture<'static, Outcome> {
        let r = ask(&self.shell, move |p| {
            p.servers.apply(&mut p.engine, service, server, op).map_err(|e| e.to_string())?;
            let s = &p.engine.servers(service)[server];
            let weight = p.servers.inputs(service, server).map_or(s.weight, |i| i.operator_weight());
            Ok::<_, String>((
                format!("now weight {} and {}", s.weight, if s.up { "up" } else { "down" }),
                weight,
            ))
        });
        let tell = self.server_changes.clone();
        let (saver, shell) = (Arc::clone(&self.saver), self.shell.clone());
        async move {
            let (msg, weight) = r.await??;
            if let Some(t) = tell {
                let _ = t.send((service, server, weight));
            }
            saver.save(|f| shell.apply(f).map_err(|e| e.to_string())).await;
            Ok(msg)
        }
        .boxed()
    }

    fn control(&self, op: ControlOp) -> BoxFuture<'static, Outcome> {
        let (tx, rx) = oneshot::channel();
        let sent = self.control.send((op, tx));
        async move {
            sent.map_err(|_| "the control loop is not running".to_string())?;
            rx.await.map_err(|_| "the control loop stopped".to_string())?
        }
        .boxed()
    }
}
