//! The admin channel's HTTP server in-process, on loopback, with a recording backend in
//! place of the data plane and control loop: the door (ACL, token, body cap, timeouts,
//! connection limit), every route's JSON, validation that changes nothing on bad input, and
//! `cmc` (the real binary) against it. No root needed. The same server against a real
//! daemon in namespaces is `tests/admin_ns.rs`.
#![allow(clippy::disallowed_methods)] // reason: timeouts of a real socket test are measured on the wall clock

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clusterserver::admin::acl::Acl;
use clusterserver::admin::client::{Client, ClientError};
use clusterserver::admin::model::{ConnectionPage, ServiceStatus, Stats, Status, VipAnnouncement};
use clusterserver::admin::server::{AdminContext, Limits, Live, empty_page};
use clusterserver::admin::state::{
    AdminCounters, Backend, ConnectionQuery, ControlOp, DataplaneView, Observed, Outcome, ServerOp,
    ServerView,
};
use clusterserver::admin::token::Token;
use clusterserver::admin::{AdminHandle, CoreBridge};
use clusterserver::config::{Config, LoadOptions, parse_str};
use futures::FutureExt;
use futures::future::BoxFuture;

const TOKEN: &str = "test-token-0123456789";

/// Records every change; answers reads from its table.
#[derive(Default)]
struct Recording {
    servers: Mutex<Vec<Vec<ServerView>>>,
    changes: Mutex<Vec<String>>,
    observed: Arc<Observed>,
    /// Control ops seen.
    ops: AtomicU32,
    /// `restart`: told when the op arrived; answers this long after.
    restart_seen: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    restart_answer_after: Mutex<Duration>,
}

impl Backend for Recording {
    fn dataplane(&self) -> BoxFuture<'static, Result<DataplaneView, String>> {
        let v = DataplaneView {
            active: true,
            servers: self.servers.lock().unwrap().clone(),
            table_capacity: 1000,
            sync_rejected: 2,
            sync_records_applied: 7,
            full_sync: clusterserver::dataplane::fullsync::FullSyncStats {
                requests_sent: 2,
                ends_received: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        async move { Ok(v) }.boxed()
    }
    fn connections(&self, q: ConnectionQuery) -> BoxFuture<'static, Result<ConnectionPage, String>> {
        async move { Ok(empty_page(q.offset)) }.boxed()
    }
    fn server(&self, service: usize, server: usize, op: ServerOp) -> BoxFuture<'static, Outcome> {
        self.changes.lock().unwrap().push(format!("{service}/{server} {op:?}"));
        if let ServerOp::Weight(w) = op {
            self.servers.lock().unwrap()[service][server].weight = w;
        }
        async move { Ok("applied".to_string()) }.boxed()
    }
    fn control(&self, op: ControlOp) -> BoxFuture<'static, Outcome> {
        self.ops.fetch_add(1, Ordering::Relaxed);
        // The core's verdicts, as the bridge publishes them.
        let obs = Arc::clone(&self.observed);
        let restart_after = *self.restart_answer_after.lock().unwrap();
        if op == ControlOp::Restart
            && let Some(seen) = self.restart_seen.lock().unwrap().take()
        {
            let _ = seen.send(());
        }
        async move {
            match op {
                ControlOp::Promote => obs.publish(1, "role", "atm1 became primary (epoch 1, Admin)".into()),
                ControlOp::Demote => obs.publish(1, "refused", "demote: not primary".into()),
                ControlOp::Stop | ControlOp::Start => {
                    obs.publish(1, "held", "forwarding stopped on atm1".into())
                }
                ControlOp::Reload => return Err("invalid config, the running one is kept: x".into()),
                ControlOp::Restart => tokio::time::sleep(restart_after).await,
                ControlOp::ReloadPlan => return Ok("1 change(s), 1 live, 0 by handover".into()),
            }
            Ok("requested".to_string())
        }
        .boxed()
    }
}

struct Fixture {
    handle: Option<AdminHandle>,
    addr: SocketAddr,
    backend: Arc<Recording>,
    ctx: Arc<AdminContext>,
    dir: std::path::PathBuf,
    _rt: tokio::runtime::Runtime,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(dir: &std::path::Path, port: u16) -> (Config, String) {
    let text = format!(
        r#"{{
  cluster: {{ name: "web", id: 7, secret_file: "secret", admin_port: {port} }},
  atms: [ {{ name: "atm1", address: "10.0.0.1", interface: "eth0" }},
          {{ name: "atm2", address: "10.0.0.2", interface: "eth0" }} ],
  security: {{ token_file: "admin.token" }},
  services: [{{
    name: "http", vip: "10.0.0.99", port: 80, forwarding: "dr",
    servers: [ {{ name: "web1", address: "10.0.0.3", weight: 5 }}, {{ name: "web2", address: "10.0.0.4" }} ],
  }}],
}}"#
    );
    for (f, t) in [("secret", "the cluster secret"), ("admin.token", TOKEN)] {
        let p = dir.join(f);
        std::fs::write(&p, t).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::write(dir.join("cs.json5"), &text).unwrap();
    let opts = LoadOptions { check_files: true, base_dir: dir.to_path_buf() };
    (parse_str("cs.json5", &text, &opts).unwrap_or_else(|e| panic!("{e}")), text)
}

fn start(name: &str, acl: Acl, limits: Limits) -> Fixture {
    let dir = std::env::temp_dir().join(format!("cs-admin-api-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let listener = clusterserver::admin::bind(0).expect("bind");
    let port = listener.local_addr().unwrap().port();
    let (cfg, _) = config(&dir, port);
    let observed = Arc::new(Observed::default());
    let backend = Arc::new(Recording { observed: Arc::clone(&observed), ..Default::default() });
    *backend.servers.lock().unwrap() = vec![vec![
        ServerView {
            weight: 5,
            operator_weight: 5,
            config_weight: 5,
            weight_overridden: false,
            healthy: true,
            admin: "enabled",
            connections: 3,
            traffic: Default::default(),
        },
        ServerView {
            weight: 1,
            operator_weight: 1,
            config_weight: 1,
            weight_overridden: false,
            healthy: false,
            admin: "enabled",
            connections: 0,
            traffic: Default::default(),
        },
    ]];
    // The bridge publishes role state like the daemon's control loop does.
    let bridge = CoreBridge::new(Arc::clone(&observed), vec!["atm1".into(), "atm2".into()], "atm1".into());
    bridge.health(5, "http", "web2", false);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ctx = Arc::new(AdminContext {
        live: Live::new(Arc::new(cfg), acl, Some(Token::load(&dir.join("admin.token")).expect("token"))),
        me: 0,
        observed,
        backend: backend.clone() as Arc<dyn Backend>,
        counters: AdminCounters::default(),
        limits,
        started: rt.block_on(async { tokio::time::Instant::now() }),
    });
    let handle = clusterserver::admin::start(listener, Arc::clone(&ctx)).expect("start");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    Fixture { handle: Some(handle), addr, backend, ctx, dir, _rt: rt }
}

fn loopback_only() -> Acl {
    Acl::from_config(&clusterserver::config::Security::default())
}

fn client(f: &Fixture, token: Option<&str>) -> Client {
    Client::new(f.addr, token.map(str::to_string))
}

fn block<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(fut)
}

/// Raw bytes in, raw response out (for malformed requests).
fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn reads_answer_json_with_the_token() {
    let f = start("reads", loopback_only(), Limits::default());
    let c = client(&f, Some(TOKEN));
    let s: Status = block(c.get("/v1/status")).expect("status");
    assert_eq!((s.node.as_str(), s.cluster.as_str(), s.role.as_str()), ("atm1", "web", "starting"));
    assert_eq!(s.vips, ["10.0.0.99"]);
    assert_eq!(s.peers.len(), 1);
    assert_eq!(
        (s.peers[0].name.as_str(), s.peers[0].role.as_str(), s.peers[0].last_heard_ms),
        ("atm2", "unknown", None)
    );
    assert_eq!(s.config_digest.len(), 32);
    let svcs: Vec<ServiceStatus> = block(c.get("/v1/services")).expect("services");
    assert_eq!(svcs[0].servers[0].connections, 3);
    assert!(!svcs[0].servers[1].healthy);
    assert_eq!(svcs[0].servers[0].config_weight, 5);
    let st: Stats = block(c.get("/v1/stats")).expect("stats");
    assert_eq!(st.table_capacity, 1000);
    assert_eq!((st.sync_rejected, st.sync_records_applied, st.full_sync), (2, 7, [2, 0, 0, 2]));
    let page: ConnectionPage = block(c.get("/v1/connections?service=http&limit=10")).expect("conns");
    assert_eq!(page.total, 0);
    let e = block(c.get::<ConnectionPage>("/v1/connections?service=nope")).expect_err("unknown service");
    assert!(e.to_string().contains("no service \"nope\""), "{e}");
    let e = block(c.get::<ConnectionPage>("/v1/connections?limit=100000")).expect_err("page cap");
    assert!(e.to_string().contains("limit must be"), "{e}");
    let m = block(c.get_text("/metrics")).expect("metrics");
    for name in [
        "clusterserver_role_primary 0",
        "clusterserver_heartbeats_sent_total",
        "clusterserver_heartbeats_rejected_total{reason=",
        "clusterserver_server_health{service=\"http\",server=\"web2\",address=\"10.0.0.4\"} 0",
        "clusterserver_server_connections{service=\"http\",server=\"web1\",address=\"10.0.0.3\"} 3",
        "clusterserver_engine_drops_total{reason=\"no_server\"}",
        "clusterserver_engine_rate_limited_total{kind=\"reset\"} 0",
        "clusterserver_engine_made_packets_total{kind=\"icmp_error\"} 0",
        "clusterserver_conntrack_capacity 1000",
        "clusterserver_failovers_total 0",
        "clusterserver_peer_up{peer=\"atm2\"} 0",
        "clusterserver_sync_datagrams_rejected_total 2",
        "clusterserver_sync_records_applied_total 7",
        "clusterserver_full_sync_messages_total{kind=\"request_sent\"} 2",
        "clusterserver_full_sync_messages_total{kind=\"end_received\"} 2",
    ] {
        assert!(m.contains(name), "{name} missing in:\n{m}");
    }
}

#[test]
fn missing_or_wrong_token_gets_401_and_changes_nothing() {
    let f = start("token", loopback_only(), Limits::default());
    for token in [None, Some("wrong-token-0123456789"), Some("test-token-012345678")] {
        let c = client(&f, token);
        let e = block(c.get::<Status>("/v1/status")).expect_err("refused");
        assert!(matches!(e, ClientError::Unauthorized(_)), "{e}");
        let e = block(c.post("/v1/services/http/servers/web1/weight", Some(r#"{"weight": 9}"#)))
            .expect_err("refused");
        assert!(matches!(e, ClientError::Unauthorized(_)), "{e}");
        assert!(block(c.post("/v1/promote", None)).is_err());
        assert!(block(c.get_text("/metrics")).is_err(), "metrics need the token too");
    }
    assert!(f.backend.changes.lock().unwrap().is_empty());
    assert_eq!(f.backend.ops.load(Ordering::Relaxed), 0);
    let r = raw(
        f.addr,
        b"GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Basic abc\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 401") && r.contains("www-authenticate: Bearer"), "{r}");
    assert_eq!(AdminCounters::get(&f.ctx.counters.unauthorized), 13);
}

#[test]
fn a_peer_outside_the_allow_list_is_closed_before_any_answer() {
    let n = |s: &str| s.parse().unwrap();
    let f =
        start("acl", Acl::new(vec![n("10.9.9.9/32")], vec![n("0.0.0.0/0"), n("::/0")]), Limits::default());
    let e = block(client(&f, Some(TOKEN)).get::<Status>("/v1/status")).expect_err("refused");
    assert!(matches!(e, ClientError::RefusedByAcl { .. }), "{e}");
    assert!(e.to_string().contains("admin_allow"), "{e}");
    assert_eq!(AdminCounters::get(&f.ctx.counters.refused_acl), 1);
    assert_eq!(AdminCounters::get(&f.ctx.counters.requests), 0);
}

#[test]
fn actions_are_validated_applied_or_refused_with_json() {
    let f = start("actions", loopback_only(), Limits::default());
    let c = client(&f, Some(TOKEN));
    let ok =
        block(c.post("/v1/services/http/servers/web1/weight", Some(r#"{"weight": 9}"#))).expect("weight");
    assert!(ok.contains("weight http/web1 = 9"), "{ok}");
    for (path, body, want) in [
        ("/v1/services/http/servers/web1/weight", Some(r#"{"weight": 70000}"#), "out of range"),
        ("/v1/services/http/servers/web1/weight", Some(r#"{"weight": "9"}"#), "expected {\"weight\": N}"),
        ("/v1/services/http/servers/web1/weight", Some(r#"{"weight": 9, "x": 1}"#), "unknown field"),
        ("/v1/services/http/servers/web1/weight", Some("{"), "expected {\"weight\": N}"),
        ("/v1/services/http/servers/web9/drain", None, "no server \"web9\""),
        ("/v1/services/ftp/servers/web1/drain", None, "no service \"ftp\""),
        ("/v1/services/http/servers/web1/explode", None, "no server action"),
        ("/v1/services/http/servers/web1/drain", Some("{}"), "takes no body"),
        ("/v1/nothing", None, "no such path"),
    ] {
        let e = block(c.post(path, body)).expect_err(path);
        assert!(e.to_string().contains(want), "{path}: {e}");
    }
    assert_eq!(*f.backend.changes.lock().unwrap(), ["0/0 Weight(9)"], "refused requests changed nothing");
    for (p, want) in [("drain", "Drain"), ("disable", "Disable"), ("enable", "Enable")] {
        block(c.post(&format!("/v1/services/http/servers/web2/{p}"), None)).expect(p);
        assert_eq!(f.backend.changes.lock().unwrap().last().unwrap(), &format!("0/1 {want}"));
    }
    let ok = block(c.post("/v1/promote", None)).expect("promote");
    assert!(ok.contains("became primary"), "{ok}");
    let e = block(c.post("/v1/demote", None)).expect_err("demote refused by the core");
    assert!(e.to_string().contains("refused: not primary") && e.to_string().contains("409"), "{e}");
    let e = block(c.post("/v1/reload", None)).expect_err("bad reload");
    assert!(e.to_string().contains("running one is kept"), "{e}");
    assert!(block(c.post("/v1/forwarding/stop", None)).expect("stop").contains("forwarding stopped"));
    assert!(block(c.post("/v1/forwarding/restart", None)).is_ok());
    let e = block(c.get::<Status>("/v1/promote")).expect_err("GET on an action");
    assert!(e.to_string().contains("405"), "{e}");
}

#[test]
fn oversized_malformed_and_slow_requests_are_cut_off_and_the_server_carries_on() {
    let limits = Limits {
        header_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let f = start("abuse", loopback_only(), limits);
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let big = "x".repeat(64 * 1024);
    let r = raw(
        f.addr,
        format!("POST /v1/services/http/servers/web1/weight HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{big}", big.len()).as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    // Every endpoint, even one that reads no body: a declared 20 MB is refused unread.
    for path in ["/v1/reload", "/v1/promote", "/v1/status"] {
        let method = if path == "/v1/status" { "GET" } else { "POST" };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 20000000\r\nConnection: close\r\n\r\n"
        );
        let r = raw(f.addr, head.as_bytes());
        assert!(r.starts_with("HTTP/1.1 413"), "{path}: {r}");
        assert!(r.contains("over the limit"), "{r}");
    }
    assert_eq!(
        f.backend.ops.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the control loop"
    );
    let r = raw(f.addr, b"GARBAGE\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400") || r.is_empty(), "{r}");
    // Slow headers: a request head that never ends is dropped after the header timeout.
    let t0 = std::time::Instant::now();
    let r = {
        let mut s = TcpStream::connect(f.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n").unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(5), "slow head held the connection {took:?}: {r}");
    // Slow body: headers complete, the body never comes; the request timeout answers 408.
    let r = {
        let mut s = TcpStream::connect(f.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("POST /v1/services/http/servers/web1/weight HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 100\r\n\r\n{{").as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    assert!(f.backend.changes.lock().unwrap().is_empty(), "nothing changed");
    let s: Status = block(client(&f, Some(TOKEN)).get("/v1/status")).expect("still serving");
    assert_eq!(s.node, "atm1");
}

/// A `restart` stops the admin server right after it answers. The answer still reaches the
/// client when the stop comes while the request is in flight (the connection was dropped
/// on the stop, and `cmc restart` or `cmc reload` saw it closed without an answer).
#[test]
fn a_request_in_flight_is_answered_when_the_server_stops() {
    let mut f = start("stop-in-flight", loopback_only(), Limits::default());
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    *f.backend.restart_seen.lock().unwrap() = Some(seen_tx);
    // Well inside the server's grace for requests in flight (1 s) after the stop below.
    *f.backend.restart_answer_after.lock().unwrap() = Duration::from_millis(300);
    let c = client(&f, Some(TOKEN));
    let asking = std::thread::spawn(move || block(c.post("/v1/forwarding/restart", None)));
    seen_rx.recv_timeout(Duration::from_secs(10)).expect("the restart reached the backend");
    f.handle.take().expect("running").stop();
    let answer = asking.join().expect("client thread");
    assert_eq!(answer.expect("answered although the server stopped meanwhile"), "restart: requested");
}

#[test]
fn the_connection_limit_refuses_one_more_and_recovers() {
    let limits = Limits { max_connections: 2, header_timeout: Duration::from_secs(2), ..Limits::default() };
    let f = start("limit", loopback_only(), limits);
    let hold: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(f.addr).unwrap()).collect();
    // Wait until the server has taken both (accepts are asynchronous).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = raw(f.addr, b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        if r.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "a third connection was served: {r}");
    }
    assert!(AdminCounters::get(&f.ctx.counters.refused_busy) >= 1);
    drop(hold);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while block(client(&f, Some(TOKEN)).get::<Status>("/v1/status")).is_err() {
        assert!(std::time::Instant::now() < deadline, "slots never freed");
    }
}

/// Active-active mode publishes no election state but each VIP's announcement: the status
/// says `active`, lists no heartbeat peers, and gives the reason a VIP is withdrawn; the
/// metrics carry the announcement instead of peer gauges. (The daemon side, with BIRD and a
/// router, is `tests/active_active_ns.rs`.)
#[test]
fn an_active_active_atm_reports_role_active_and_each_vip_announcement() {
    let f = start("aa", loopback_only(), Limits::default());
    let bridge =
        CoreBridge::new(Arc::clone(&f.backend.observed), vec!["atm1".into(), "atm2".into()], "atm1".into());
    let held = VipAnnouncement {
        vip: "10.0.0.99".into(),
        announced: false,
        reason: Some("stopped_by_operator".into()),
    };
    bridge.observe_active(true, vec![held.clone()]);
    let c = client(&f, Some(TOKEN));
    let s: Status = block(c.get("/v1/status")).expect("status");
    assert_eq!((s.role.as_str(), s.stopped, s.peers.len()), ("active", true, 0), "{s:?}");
    assert_eq!(s.announcements, vec![held]);
    let m = block(c.get_text("/metrics")).expect("metrics");
    assert!(m.contains("clusterserver_vip_announced{vip=\"10.0.0.99\"} 0"), "{m}");
    assert!(!m.contains("clusterserver_peer_up"), "{m}");
    // Primary/backup JSON has no `announcements` key (older cmc builds read it unchanged).
    let f = start("pb", loopback_only(), Limits::default());
    let body = block(client(&f, Some(TOKEN)).get_text("/v1/status")).expect("status");
    assert!(!body.contains("announcements"), "{body}");
}

#[test]
fn events_stream_as_server_sent_events() {
    let f = start("events", loopback_only(), Limits::default());
    let c = client(&f, Some(TOKEN));
    let obs = Arc::clone(&f.backend.observed);
    let got = block(async move {
        let mut got = Vec::new();
        let publisher = async {
            // Publish until the reader has subscribed and seen two events.
            for i in 0..200 {
                obs.publish(i, "health", format!("http/web1 down #{i}"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            r = c.events(|ev| { got.push(ev); got.len() < 2 }) => r.expect("events"),
            _ = publisher => panic!("no events read"),
        }
        got
    });
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|e| e.kind == "health" && e.message.starts_with("http/web1 down")), "{got:?}");
}

fn cmc(f: &Fixture, args: &[&str]) -> (bool, String, String) {
    let cfg = f.dir.join("cs.json5");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cmc"))
        .arg("--config")
        .arg(&cfg)
        .args(args)
        .output()
        .expect("run cmc");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cmc_reads_and_acts_through_the_config_it_is_given() {
    let f = start("cmc", loopback_only(), Limits::default());
    let (ok, out, err) = cmc(&f, &["status"]);
    assert!(ok, "{err}");
    assert!(out.contains("node atm1") && out.contains("atm2") && out.contains("never"), "{out}");
    let (ok, out, err) = cmc(&f, &["status", "--json"]);
    assert!(ok, "{err}");
    let s: Status = serde_json::from_str(&out).expect("json");
    assert_eq!(s.node, "atm1");
    let (ok, out, _) = cmc(&f, &["servers"]);
    assert!(ok && out.contains("web2") && out.contains("DOWN"), "{out}");
    let (ok, out, _) = cmc(&f, &["stats"]);
    assert!(ok && out.contains("heartbeats sent"), "{out}");
    let (ok, out, _) = cmc(&f, &["connections", "--service", "http"]);
    assert!(ok && out.contains("0 of 0"), "{out}");
    let (ok, out, err) = cmc(&f, &["weight", "http", "web1", "7"]);
    assert!(ok && out.contains("weight http/web1 = 7"), "{out} {err}");
    for a in ["drain", "disable", "enable"] {
        let (ok, _, err) = cmc(&f, &[a, "http", "web2"]);
        assert!(ok, "{a}: {err}");
    }
    let (ok, out, _) = cmc(&f, &["promote"]);
    assert!(ok && out.contains("primary"), "{out}");
    let (ok, _, err) = cmc(&f, &["demote"]);
    assert!(!ok && err.contains("not primary"), "{err}");
    for a in ["stop", "start", "restart"] {
        let (ok, _, err) = cmc(&f, &[a]);
        assert!(ok, "{a}: {err}");
    }
    let (ok, _, err) = cmc(&f, &["reload"]);
    assert!(!ok && err.contains("running one is kept"), "{err}");
    let (ok, _, err) = cmc(&f, &["weight", "http", "nope", "1"]);
    assert!(!ok && err.contains("no server \"nope\""), "{err}");
    let (ok, out, _) = cmc(&f, &["metrics"]);
    assert!(ok && out.contains("clusterserver_epoch"), "{out}");
    let changes = f.backend.changes.lock().unwrap().clone();
    assert_eq!(changes, ["0/0 Weight(7)", "0/1 Drain", "0/1 Disable", "0/1 Enable"]);
    // A wrong token and a daemon that is down are told apart.
    let bad = f.dir.join("bad.token");
    std::fs::write(&bad, "not-the-token-at-all").unwrap();
    let (ok, _, err) = cmc(&f, &["status", "--token-file", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("refused the token"), "{err}");
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (ok, _, err) = cmc(&f, &["status", "--port", &free.to_string()]);
    assert!(!ok && err.contains("nothing listens there"), "{err}");
}

#[test]
fn cmc_says_the_acl_refused_it() {
    let n = |s: &str| s.parse().unwrap();
    let f = start("cmc-acl", Acl::new(vec![n("10.9.9.9/32")], vec![n("0.0.0.0/0")]), Limits::default());
    let (ok, _, err) = cmc(&f, &["status"]);
    assert!(!ok && err.contains("admin_allow"), "{err}");
}

#[test]
fn cmc_serve_refuses_plain_http_beyond_loopback() {
    let f = start("serve-tls", loopback_only(), Limits::default());
    let (ok, _, err) = cmc(&f, &["serve", "--listen", "0.0.0.0:0"]);
    assert!(!ok && err.contains("refusing to serve the console on 0.0.0.0:0 over plain HTTP"), "{err}");
    let (ok, _, err) = cmc(&f, &["serve", "--listen", "0.0.0.0:0", "--tls-cert", "/nonexistent.pem"]);
    assert!(!ok && err.contains("go together"), "{err}");
}

#[test]
fn cmc_serve_proxies_with_its_token_and_guards_changes() {
    let f = start("serve", loopback_only(), Limits::default());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cmc"))
        .arg("--config")
        .arg(f.dir.join("cs.json5"))
        .args(["serve", "--listen", &listen])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("cmc serve");
    let addr: SocketAddr = listen.parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "cmc serve never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let get = |path: &str, host: &str| {
        raw(addr, format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
    };
    let page = get("/", &listen);
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("<canvas id=\"chart-conns\""), "{page}");
    assert!(
        !page.contains("://") && !page.contains("<script src") && !page.contains("<link"),
        "assets are embedded, no CDN"
    );
    let st = get("/api/v1/status", &listen);
    assert!(st.starts_with("HTTP/1.1 200") && st.contains("\"node\":\"atm1\""), "{st}");
    let st = get("/api/v1/status", "evil.example:80");
    assert!(st.starts_with("HTTP/1.1 403"), "another Host: {st}");
    let post = |extra: &str| {
        raw(
            addr,
            format!("POST /api/v1/services/http/servers/web1/drain HTTP/1.1\r\nHost: {listen}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    };
    let r = post("");
    assert!(r.starts_with("HTTP/1.1 403") && r.contains("x-cmc-console"), "{r}");
    assert!(f.backend.changes.lock().unwrap().is_empty());
    let r = post("x-cmc-console: 1\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(*f.backend.changes.lock().unwrap(), ["0/0 Drain"]);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn cmc_serve_speaks_https_with_the_operators_certificate() {
    let f = start("serve-https", loopback_only(), Limits::default());
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let (cert, key) = (f.dir.join("console.crt"), f.dir.join("console.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cmc"))
        .arg("--config")
        .arg(f.dir.join("cs.json5"))
        .args(["serve", "--listen", &listen, "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("cmc serve");
    let addr: SocketAddr = listen.parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "cmc serve never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let plain =
        raw(addr, format!("GET / HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n").as_bytes());
    assert!(!plain.contains("<canvas"), "plain HTTP answered on the TLS port: {plain}");
    let page = block(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ck.cert.der().clone()).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut s = tls.connect(name, tcp).await.expect("TLS handshake");
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    });
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("<canvas id=\"chart-roles\""), "{page}");
    let _ = child.kill();
    let _ = child.wait();
}
