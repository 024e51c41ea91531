//! The admin channel's HTTP/1.1 server: the door (ACL, connection limit, header timeout)
//! in the accept loop, then the token and request timeout in front of every route.
//!
//! In order, for every connection:
//!
//! 1. the peer address is checked against the ACL ([`super::acl`]) before a byte is read; a
//!    refused peer is closed at once and counted (`clusterserver_admin_refused_total{reason="acl"}`)
//!    and logged at the first refusal and every power of two after (no log flood);
//! 2. at most [`Limits::max_connections`] connections are served at once; one more is
//!    closed and counted (`busy`);
//! 3. the request head must arrive within [`Limits::header_timeout`] (a slow-loris peer is
//!    dropped), and a whole request, body included, within [`Limits::request_timeout`];
//!    bodies are capped at [`Limits::max_body`] bytes (413);
//! 4. the bearer token is checked in constant time on every request, `/metrics` included;
//!    a missing or wrong token gets 401 and changes nothing.
//!
//! Every action is validated (names exist, weight in range, body well formed) before
//! anything changes, logged with the source address (target `clusterserverd::admin`), and
//! either applied whole or refused with a JSON `{"error": "..."}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, broadcast, watch};

use super::acl::Acl;
use super::model::{
    ActionDone, ApiError, Connection, ConnectionPage, EventRecord, MAX_WEIGHT, PeerStatus, ServerStatus,
    ServiceStatus, Stats, Status, TimingSummary, WeightBody,
};
use super::state::{AdminCounters, Backend, ConnectionQuery, ControlOp, Observed, ServerOp};
use super::token::Token;
use crate::config::Config;
use crate::core::election::Role;
use crate::core::heartbeat::DecodeError;
use crate::dataplane::engine::DropReason;

/// How long a stopping server waits for the requests in flight.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Bounds of the admin channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_body: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    /// How long an action waits for the core's verdict (promote, demote, stop, start).
    pub action_timeout: Duration,
    /// Largest page of `GET /v1/connections`.
    pub max_page: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 16 * 1024,
            header_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_connections: 64,
            action_timeout: Duration::from_secs(5),
            max_page: 1000,
        }
    }
}

/// Everything a request can reach.
pub struct AdminContext {
    /// The config, ACL and token: swapped whole by a live reload ([`Live::set`]).
    pub live: Arc<Live>,
    /// This ATM's index in `cfg.atms`.
    pub me: usize,
    pub observed: Arc<Observed>,
    pub backend: Arc<dyn Backend>,
    pub counters: AdminCounters,
    pub limits: Limits,
    pub started: tokio::time::Instant,
}

impl std::fmt::Debug for AdminContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminContext").field("me", &self.me).finish_non_exhaustive()
    }
}

/// What a reload may change under the admin channel.
#[derive(Debug)]
pub struct LiveAdmin {
    pub cfg: Arc<Config>,
    pub acl: Acl,
    /// `None`: no `security.token_file`; every request is refused with a reason.
    pub token: Option<Token>,
}

/// The current [`LiveAdmin`], read by every request, replaced whole by a reload (a request
/// sees the old or the new one, never a mix).
#[derive(Debug)]
pub struct Live(std::sync::RwLock<Arc<LiveAdmin>>);

impl Live {
    pub fn new(cfg: Arc<Config>, acl: Acl, token: Option<Token>) -> Arc<Live> {
        Arc::new(Live(std::sync::RwLock::new(Arc::new(LiveAdmin { cfg, acl, token }))))
    }

    pub fn get(&self) -> Arc<LiveAdmin> {
        Arc::clone(&self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub fn set(&self, live: LiveAdmin) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(live);
    }
}

impl AdminContext {
    /// The running config.
    pub fn cfg(&self) -> Arc<Config> {
        Arc::clone(&self.live.get().cfg)
    }
}

/// The peer of the connection a request came on.
#[derive(Clone, Copy, Debug)]
struct Peer(SocketAddr);

type Ctx = State<Arc<AdminContext>>;

/// Serves `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, ctx: Arc<AdminContext>, mut stop: watch::Receiver<bool>) {
    let app = router(Arc::clone(&ctx));
    let slots = Arc::new(Semaphore::new(ctx.limits.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = stop.changed() => {
                // Let requests in flight finish (a `restart` answers before the daemon goes
                // down), bounded: an event stream never finishes on its own.
                let all = u32::try_from(ctx.limits.max_connections).unwrap_or(u32::MAX);
                let _ = tokio::time::timeout(STOP_GRACE, slots.acquire_many(all)).await;
                return;
            }
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(target: "clusterserverd::admin", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acl = ctx.live.get();
        if !acl.acl.allows(peer.ip()) {
            let n = AdminCounters::bump(&ctx.counters.refused_acl);
            if n.is_power_of_two() {
                tracing::warn!(target: "clusterserverd::admin", peer = %peer, count = n, denied = acl.acl.explicitly_denied(peer.ip()), "connection refused by the admin ACL (security.admin_allow / admin_deny)");
            }
            drop(stream);
            continue;
        }
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            let n = AdminCounters::bump(&ctx.counters.refused_busy);
            if n.is_power_of_two() {
                tracing::warn!(target: "clusterserverd::admin", peer = %peer, count = n, limit = ctx.limits.max_connections, "admin connection refused: too many open");
            }
            drop(stream);
            continue;
        };
        let svc = TowerToHyperService::new(app.clone().layer(Extension(Peer(peer))));
        let header_timeout = ctx.limits.header_timeout;
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    // The request in flight is answered first (it may be the `reload` or
                    // `restart` that stops us); the connection must be polled to the end
                    // for that. Dropping it here lost such answers. Bounded: `serve` waits
                    // at most STOP_GRACE for this, then the admin runtime ends every task.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
            }
            drop(permit);
        });
    }
}

/// The routes, behind the token guard and the body cap.
pub fn router(ctx: Arc<AdminContext>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/services", get(services))
        .route("/v1/stats", get(stats))
        .route("/v1/connections", get(connections))
        .route("/v1/events", get(events))
        .route("/metrics", get(metrics))
        .route("/v1/services/{service}/servers/{server}/{action}", post(server_action))
        .route("/v1/promote", post(|s: Ctx, p: Extension<Peer>| control(s, p, ControlOp::Promote)))
        .route("/v1/demote", post(|s: Ctx, p: Extension<Peer>| control(s, p, ControlOp::Demote)))
        .route("/v1/reload", post(|s: Ctx, p: Extension<Peer>| control(s, p, ControlOp::Reload)))
        .route("/v1/reload/plan", get(reload_plan))
        .route("/v1/forwarding/start", post(|s: Ctx, p: Extension<Peer>| control(s, p, ControlOp::Start)))
        .route("/v1/forwarding/stop", post(|s: Ctx, p: Extension<Peer>| control(s, p, ControlOp::Stop)))
        .route("/v1/forwarding/restart", post(|s: Ctx, p: Extension<Peer>| control(s, p, ControlOp::Restart)))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such path (see `cmc --help` or /v1/status)") })
        .layer(from_fn_with_state(Arc::clone(&ctx), guard))
        .layer(DefaultBodyLimit::max(ctx.limits.max_body))
        .with_state(ctx)
}

/// A JSON error response.
pub fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, axum::Json(ApiError { error: msg.into() })).into_response()
}

fn done(msg: impl Into<String>) -> Response {
    axum::Json(ActionDone { done: msg.into() }).into_response()
}

/// The body cap, the token check and the request timeout, in front of every route.
async fn guard(
    State(ctx): Ctx,
    Extension(Peer(peer)): Extension<Peer>,
    req: Request,
    next: Next,
) -> Response {
    // Every route, whether it reads its body or not: a declared length over the cap is
    // refused before anything else (a body that is read is capped again as it streams).
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()));
    match declared {
        Some(None) => return error(StatusCode::BAD_REQUEST, "Content-Length is not a number"),
        Some(Some(n)) if n > ctx.limits.max_body as u64 => {
            AdminCounters::bump(&ctx.counters.bad_requests);
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body of {n} bytes is over the limit of {} bytes", ctx.limits.max_body),
            );
        }
        _ => {}
    }
    let live = ctx.live.get();
    let Some(token) = &live.token else {
        AdminCounters::bump(&ctx.counters.unauthorized);
        return error(
            StatusCode::UNAUTHORIZED,
            "the daemon has no security.token_file: the admin API is closed until one is configured",
        );
    };
    let given = req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    if !token.matches_header(given) {
        let n = AdminCounters::bump(&ctx.counters.unauthorized);
        if n.is_power_of_two() {
            tracing::warn!(target: "clusterserverd::admin", peer = %peer, path = %req.uri().path(), count = n, "admin request with a missing or wrong bearer token");
        }
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    AdminCounters::bump(&ctx.counters.requests);
    let r = match tokio::time::timeout(ctx.limits.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(StatusCode::REQUEST_TIMEOUT, "request not completed in time"),
    };
    if r.status().is_client_error() {
        AdminCounters::bump(&ctx.counters.bad_requests);
    }
    r
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn role_name(core: &super::state::CoreView) -> &'static str {
    match core.role {
        Some(Role::Primary) => "primary",
        Some(Role::Backup) => "backup",
        None if core.announce.is_some() => "active",
        None => "starting",
    }
}

/// `GET /v1/status` as a value (also used by the tests).
pub fn status_of(ctx: &AdminContext) -> Status {
    let core = ctx.observed.core();
    let since = core.observed_at.map_or(0, |t| t.elapsed().as_millis() as u64);
    let now_ms = core.observed_ms + since;
    let cfg = ctx.cfg();
    let peers = cfg
        .atms
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != ctx.me)
        .map(|(i, a)| {
            let v = core.peers.get(i);
            let heard = v.and_then(|p| p.last_heard);
            PeerStatus {
                name: a.name.clone(),
                address: a.address.to_string(),
                up: v.is_some_and(|p| p.up),
                role: match v {
                    Some(p) if heard.is_some() && p.primary => "primary".into(),
                    Some(_) if heard.is_some() => "backup".into(),
                    _ => "unknown".into(),
                },
                epoch: v.map_or(0, |p| p.epoch),
                eligible: v.is_some_and(|p| p.eligible),
                last_heard_ms: heard.map(|h| now_ms.saturating_sub(h.as_millis())),
                config_digest: if heard.is_some() {
                    v.map_or(String::new(), |p| hex(&p.digest))
                } else {
                    String::new()
                },
                config_differs: v.is_some_and(|p| p.digest_differs),
            }
        })
        .collect();
    Status {
        cluster: ctx.cfg().cluster.name.clone(),
        node: ctx.cfg().atms[ctx.me].name.clone(),
        role: role_name(&core).into(),
        epoch: core.epoch,
        stopped: core.held,
        config_digest: hex(&ctx.cfg().digest()[..16]),
        vips: ctx.cfg().vips().iter().map(ToString::to_string).collect(),
        // Active-active ATMs hear no heartbeats: listing the others as "down" would mislead.
        peers: if core.announce.is_some() { Vec::new() } else { peers },
        uptime_ms: ctx.started.elapsed().as_millis() as u64,
        announcements: core.announce.clone().unwrap_or_default(),
    }
}

async fn status(State(ctx): Ctx) -> Response {
    axum::Json(status_of(&ctx)).into_response()
}

async fn services(State(ctx): Ctx) -> Response {
    let dp = match ctx.backend.dataplane().await {
        Ok(d) => d,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("data plane: {e}")),
    };
    let out: Vec<ServiceStatus> = ctx
        .cfg()
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| ServiceStatus {
            name: s.name.clone(),
            vip: s.vip.to_string(),
            port: s.port,
            protocol: format!("{:?}", s.protocol).to_lowercase(),
            forwarding: format!("{:?}", s.forwarding).to_lowercase(),
            scheduler: format!("{:?}", s.scheduler).to_lowercase(),
            servers: s
                .servers
                .iter()
                .enumerate()
                .map(|(j, srv)| {
                    let v = dp.servers.get(i).and_then(|x| x.get(j)).cloned().unwrap_or_default();
                    ServerStatus {
                        name: srv.name.clone(),
                        address: srv.address.to_string(),
                        port: srv.port,
                        config_weight: srv.weight,
                        weight: v.weight,
                        runtime_weight: v.operator_weight,
                        weight_overridden: v.weight_overridden,
                        healthy: v.healthy,
                        admin: v.admin.to_string(),
                        connections: v.connections,
                        connections_total: v.traffic.connections,
                        packets_in: v.traffic.packets_in,
                        bytes_in: v.traffic.bytes_in,
                        packets_out: v.traffic.packets_out,
                        bytes_out: v.traffic.bytes_out,
                    }
                })
                .collect(),
        })
        .collect();
    axum::Json(out).into_response()
}

async fn stats(State(ctx): Ctx) -> Response {
    let core = ctx.observed.core();
    let dp = ctx.backend.dataplane().await.ok().unwrap_or_default();
    let c = &ctx.counters;
    let s = &dp.stats;
    let out = Stats {
        heartbeats_sent: core.stats.heartbeats_sent,
        heartbeats_accepted: core.stats.heartbeats_accepted,
        heartbeats_rejected: DecodeError::ALL
            .iter()
            .map(|r| (r.name().to_string(), core.stats.rejected_for(*r)))
            .filter(|(_, n)| *n > 0)
            .collect(),
        failovers: core.failovers,
        engine_active: dp.active,
        packets: s.packets,
        new_connections: s.new_connections,
        table_len: s.table_len,
        table_capacity: dp.table_capacity,
        table_expired: s.table_expired,
        table_evicted: s.evicted_embryonic + s.evicted_other,
        drops: DropReason::ALL
            .iter()
            .map(|r| (r.name().to_string(), s.dropped(*r)))
            .filter(|(_, n)| *n > 0)
            .collect(),
        sync_sent: dp.sync_sent,
        sync_received: dp.sync_received,
        sync_rejected: dp.sync_rejected,
        sync_records_applied: dp.sync_records_applied,
        full_sync: {
            let f = &dp.full_sync;
            [f.requests_sent, f.requests_received, f.ends_sent, f.ends_received]
        },
        made_packets: [s.resets_sent, s.frag_needed_sent, s.limited.resets, s.limited.icmp_errors],
        admin_refused_acl: AdminCounters::get(&c.refused_acl),
        admin_unauthorized: AdminCounters::get(&c.unauthorized),
        admin_bad_requests: AdminCounters::get(&c.bad_requests),
        admin_requests: AdminCounters::get(&c.requests),
        heartbeat_send_jitter: TimingSummary::of(&ctx.observed.timing.send_jitter.snapshot()),
        heartbeat_receive_lateness: TimingSummary::of(&ctx.observed.timing.receive_lateness.snapshot()),
    };
    axum::Json(out).into_response()
}

/// Query of `GET /v1/connections`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnParams {
    service: Option<String>,
    server: Option<String>,
    client: Option<std::net::IpAddr>,
    offset: Option<usize>,
    limit: Option<usize>,
}

async fn connections(State(ctx): Ctx, q: Result<Query<ConnParams>, QueryRejection>) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("query: {}", e.body_text())),
    };
    let service = match q.service.as_deref().map(|n| ctx.cfg().services.iter().position(|s| s.name == n)) {
        Some(None) => {
            return error(StatusCode::NOT_FOUND, format!("no service {:?}", q.service.unwrap_or_default()));
        }
        Some(Some(i)) => Some(i),
        None => None,
    };
    let server = match (&q.server, service) {
        (None, _) => None,
        (Some(_), None) => return error(StatusCode::BAD_REQUEST, "server= needs service="),
        (Some(n), Some(s)) => match ctx.cfg().services[s].servers.iter().position(|x| &x.name == n) {
            Some(i) => Some(i),
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no server {n:?} in service {:?}", ctx.cfg().services[s].name),
                );
            }
        },
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > ctx.limits.max_page {
        return error(StatusCode::BAD_REQUEST, format!("limit must be 1..={}", ctx.limits.max_page));
    }
    let query = ConnectionQuery { service, server, client: q.client, offset: q.offset.unwrap_or(0), limit };
    match ctx.backend.connections(query).await {
        Ok(page) => axum::Json(page).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("data plane: {e}")),
    }
}

/// Builds one row of a connection listing (the backend's helper).
pub fn connection_row<A: crate::dataplane::conntrack::FlowAddr>(
    cfg: &Config,
    e: &crate::dataplane::conntrack::Entry<A>,
) -> Connection {
    let svc = cfg.services.get(usize::from(e.service));
    let proto = match e.proto {
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        p => p.to_string(),
    };
    Connection {
        service: svc.map_or_else(|| "?".into(), |s| s.name.clone()),
        server: svc
            .and_then(|s| s.servers.get(usize::from(e.server_idx)))
            .map_or_else(|| "?".into(), |s| s.name.clone()),
        protocol: proto,
        client: SocketAddr::new(e.client.into(), e.client_port).to_string(),
        vip: SocketAddr::new(e.vip.into(), e.vip_port).to_string(),
    }
}

/// An empty page (a backend without a table).
pub fn empty_page(offset: usize) -> ConnectionPage {
    ConnectionPage { total: 0, offset: offset as u64, connections: Vec::new() }
}

async fn events(State(ctx): Ctx) -> Response {
    let rx = ctx.observed.subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let ev = match rx.recv().await {
            Ok(r) => r,
            Err(broadcast::error::RecvError::Lagged(n)) => EventRecord {
                at_ms: 0,
                kind: "lagged".into(),
                message: format!("{n} events lost (slow reader)"),
            },
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        let data = serde_json::to_string(&ev).unwrap_or_default();
        Some((Ok::<_, Infallible>(SseEvent::default().event(ev.kind.clone()).data(data)), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))).into_response()
}

async fn metrics(State(ctx): Ctx) -> Response {
    let core = ctx.observed.core();
    let dp = ctx.backend.dataplane().await.ok();
    let timing = super::metrics::Timing {
        send_jitter: ctx.observed.timing.send_jitter.snapshot(),
        receive_lateness: ctx.observed.timing.receive_lateness.snapshot(),
    };
    let text = super::metrics::render(&ctx.cfg(), ctx.me, &core, dp.as_ref(), &ctx.counters, &timing);
    let ct = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, ct)], text).into_response()
}

async fn server_action(
    State(ctx): Ctx,
    Extension(Peer(peer)): Extension<Peer>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Bytes,
) -> Response {
    let Ok(Path((svc_name, srv_name, action))) = path else {
        return error(StatusCode::BAD_REQUEST, "path: expected /v1/services/SERVICE/servers/SERVER/ACTION");
    };
    let Some(si) = ctx.cfg().services.iter().position(|s| s.name == svc_name) else {
        return error(StatusCode::NOT_FOUND, format!("no service {svc_name:?}"));
    };
    let Some(ri) = ctx.cfg().services[si].servers.iter().position(|s| s.name == srv_name) else {
        return error(StatusCode::NOT_FOUND, format!("no server {srv_name:?} in service {svc_name:?}"));
    };
    let op = match action.as_str() {
        "weight" => match serde_json::from_slice::<WeightBody>(&body) {
            Ok(w) if w.weight <= MAX_WEIGHT => ServerOp::Weight(w.weight),
            Ok(w) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("weight {} out of range 0..={MAX_WEIGHT}", w.weight),
                );
            }
            Err(e) => {
                return error(StatusCode::BAD_REQUEST, format!("body: expected {{\"weight\": N}}: {e}"));
            }
        },
        "drain" | "enable" | "disable" if !body.is_empty() => {
            return error(StatusCode::BAD_REQUEST, format!("{action} takes no body"));
        }
        "drain" => ServerOp::Drain,
        "enable" => ServerOp::Enable,
        "disable" => ServerOp::Disable,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no server action {action:?} (weight, drain, enable, disable)"),
            );
        }
    };
    let what = match op {
        ServerOp::Weight(w) => format!("weight {svc_name}/{srv_name} = {w}"),
        _ => format!("{action} {svc_name}/{srv_name}"),
    };
    let r = ctx.backend.server(si, ri, op).await;
    finish(&ctx, peer, &what, r)
}

/// Logs and publishes an action's outcome and answers it.
fn finish(ctx: &AdminContext, peer: SocketAddr, what: &str, r: super::state::Outcome) -> Response {
    let at_ms = ctx.started.elapsed().as_millis() as u64;
    match r {
        Ok(msg) => {
            tracing::info!(target: "clusterserverd::admin", peer = %peer, action = %what, result = %msg, "admin action applied");
            ctx.observed.publish(at_ms, "action", format!("{what} by {peer}: {msg}"));
            done(format!("{what}: {msg}"))
        }
        Err(why) => {
            tracing::warn!(target: "clusterserverd::admin", peer = %peer, action = %what, reason = %why, "admin action refused");
            error(StatusCode::CONFLICT, format!("{what}: refused: {why}"))
        }
    }
}

async fn control(State(ctx): Ctx, Extension(Peer(peer)): Extension<Peer>, op: ControlOp) -> Response {
    let what = op.name();
    // Subscribe before asking, so the core's verdict cannot be missed.
    let mut rx = ctx.observed.subscribe();
    let accepted = ctx.backend.control(op).await;
    let r = match (op, accepted) {
        (_, Err(e)) => Err(e),
        (ControlOp::Reload | ControlOp::ReloadPlan | ControlOp::Restart, Ok(m)) => Ok(m),
        (_, Ok(_)) => match tokio::time::timeout(ctx.limits.action_timeout, verdict(&mut rx, what)).await {
            Ok(v) => v,
            Err(_) => Err(format!(
                "no verdict from the core within {:?} (see `cmc status`)",
                ctx.limits.action_timeout
            )),
        },
    };
    finish(&ctx, peer, what, r)
}

/// `GET /v1/reload/plan`: what a reload of the config file would change here, key by key
/// (live, or by the planned handover and why), without applying it.
async fn reload_plan(State(ctx): Ctx) -> Response {
    match ctx.backend.control(ControlOp::ReloadPlan).await {
        Ok(plan) => done(plan),
        Err(why) => error(StatusCode::CONFLICT, format!("reload plan: {why}")),
    }
}

/// Waits for the core's answer to `what` on the event stream.
async fn verdict(rx: &mut broadcast::Receiver<EventRecord>, what: &str) -> super::state::Outcome {
    loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return Err("the control loop stopped".into()),
        };
        let prefix = format!("{what}: ");
        match (what, ev.kind.as_str()) {
            (_, "refused") if ev.message.starts_with(&prefix) => {
                return Err(ev.message[prefix.len()..].to_string());
            }
            ("promote", "role") if ev.message.contains("primary") => return Ok(ev.message),
            ("demote", "handover") => return Ok(ev.message),
            ("demote", "role") if ev.message.contains("backup") => return Ok(ev.message),
            ("stop" | "start", "held") => return Ok(ev.message),
            _ => {}
        }
    }
}
