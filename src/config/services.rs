//! The walk of `services`: each service, its real servers and its health checks.
//!
//! Defaults an operator would expect: `protocol` tcp, `scheduler` wlc, `persistence_s` 0,
//! `on_down` keep, no checks; a server's `port` is the service's and its `weight` 1; a
//! check runs every 2000 ms with a 1000 ms timeout, rise 2, fall 3, and an http(s) check
//! asks for `/` and expects 200.

use super::decode::{Cx, Fields, host_ip, int, items, list, name, object, one_of, port, string, unique};
use super::json5::{Node, Value};
use super::sections::{
    DEFAULT_CHECK_FALL, DEFAULT_CHECK_INTERVAL_MS, DEFAULT_CHECK_RISE, DEFAULT_CHECK_TIMEOUT_MS,
    DEFAULT_HTTP_PATH, DEFAULT_HTTP_STATUS, MAX_CHECKS, MAX_SERVERS, MAX_SERVICES,
};
use super::types::*;
use super::validate;

const PROTOCOLS: &[(&str, Protocol)] = &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)];

const FORWARDINGS: &[(&str, Forwarding)] =
    &[("nat", Forwarding::Nat), ("dr", Forwarding::Dr), ("tunnel", Forwarding::Tunnel)];

const SCHEDULERS: &[(&str, SchedulerKind)] = &[
    ("rr", SchedulerKind::Rr),
    ("wrr", SchedulerKind::Wrr),
    ("lc", SchedulerKind::Lc),
    ("wlc", SchedulerKind::Wlc),
    ("sh", SchedulerKind::Sh),
    ("mh", SchedulerKind::Mh),
];

const ON_DOWN: &[(&str, OnDown)] = &[("keep", OnDown::Keep), ("reset", OnDown::Reset)];

const CHECK_KINDS: &[(&str, CheckKind)] = &[
    ("ping", CheckKind::Ping),
    ("tcp", CheckKind::Tcp),
    ("http", CheckKind::Http),
    ("https", CheckKind::Https),
    ("exec", CheckKind::Exec),
    ("agent", CheckKind::Agent),
];

/// The placeholders an exec command may use.
pub const PLACEHOLDERS: &[&str] = &["{address}", "{port}", "{proto}"];

const SERVICE_KEYS: &[&str] = &[
    "name",
    "vip",
    "port",
    "protocol",
    "forwarding",
    "scheduler",
    "persistence_s",
    "gateway_vip",
    "on_down",
    "servers",
    "checks",
];

const CHECK_KEYS: &[&str] =
    &["kind", "path", "expect_status", "command", "port", "interval_ms", "timeout_ms", "rise", "fall"];

pub(crate) fn services(cx: &mut Cx, node: &Node, path: &str) -> Option<Vec<Option<Service>>> {
    let items = items(cx, node, path, (1, MAX_SERVICES), "services")?;
    let out: Vec<Option<Service>> = items.iter().map(|(p, n)| service(cx, n, p)).collect();
    let ok: Vec<(&String, &Service)> =
        items.iter().zip(&out).filter_map(|((p, _), s)| s.as_ref().map(|s| (p, s))).collect();
    let names = ok.iter().map(|(p, s)| (format!("{p}.name"), format!("{:?}", s.name)));
    unique(cx, names, "service name");
    let endpoints = ok.iter().map(|(p, s)| {
        let proto = if s.protocol == Protocol::Tcp { "tcp" } else { "udp" };
        let ep = std::net::SocketAddr::new(s.vip, s.port);
        (format!("{p}.vip"), format!("{proto} {ep}"))
    });
    unique(cx, endpoints, "virtual service");
    Some(out)
}

fn service(cx: &mut Cx, node: &Node, path: &str) -> Option<Service> {
    let f = object(cx, node, path, SERVICE_KEYS)?;
    let name = f.req(cx, "name", name);
    let vip = f.req(cx, "vip", host_ip);
    let port = f.req(cx, "port", port);
    let protocol = f.or(cx, "protocol", Protocol::Tcp, one_of(PROTOCOLS));
    let forwarding = f.req(cx, "forwarding", one_of(FORWARDINGS));
    let scheduler = f.or(cx, "scheduler", SchedulerKind::Wlc, one_of(SCHEDULERS));
    let persistence_s = f.or(cx, "persistence_s", 0, int(0, 86_400));
    let gateway_vip = f.maybe(cx, "gateway_vip", host_ip);
    let on_down = f.or(cx, "on_down", OnDown::Keep, one_of(ON_DOWN));
    let servers = f.req(cx, "servers", |cx, n, p| servers(cx, n, p, port));
    let checks = f.or(cx, "checks", Vec::new(), list((0, MAX_CHECKS), "checks", check));
    let service = Service {
        name: name?,
        vip: vip?,
        port: port?,
        protocol,
        forwarding: forwarding?,
        scheduler,
        persistence_s,
        gateway_vip: gateway_vip?,
        on_down,
        servers: servers?,
        checks,
    };
    validate::service(cx, &f.path, &service);
    Some(service)
}

/// The servers of a service whose port is `default_port` (`None`: it had an error).
fn servers(cx: &mut Cx, node: &Node, path: &str, default_port: Option<u16>) -> Option<Vec<Server>> {
    let items = items(cx, node, path, (1, MAX_SERVERS), "servers")?;
    let out: Vec<Option<Server>> = items.iter().map(|(p, n)| server(cx, n, p, default_port)).collect();
    let ok: Vec<(&String, &Server)> =
        items.iter().zip(&out).filter_map(|((p, _), s)| s.as_ref().map(|s| (p, s))).collect();
    let names = ok.iter().map(|(p, s)| (format!("{p}.name"), format!("{:?}", s.name)));
    unique(cx, names, "server name");
    let endpoints = ok.iter().map(|(p, s)| {
        let ep = std::net::SocketAddr::new(s.address, s.port);
        (format!("{p}.address"), ep)
    });
    unique(cx, endpoints, "server address and port");
    out.into_iter().collect()
}

fn server(cx: &mut Cx, node: &Node, path: &str, default_port: Option<u16>) -> Option<Server> {
    let f = object(cx, node, path, &["name", "address", "port", "weight"])?;
    let name = f.req(cx, "name", name);
    let address = f.req(cx, "address", host_ip);
    let port = match f.has("port") {
        true => f.req(cx, "port", port),
        false => default_port,
    };
    let weight = f.or(cx, "weight", 1, int(0, 65_535));
    Some(Server { name: name?, address: address?, port: port?, weight })
}

fn check(cx: &mut Cx, node: &Node, path: &str) -> Option<Check> {
    let f = object(cx, node, path, CHECK_KEYS)?;
    let kind = f.req(cx, "kind", one_of(CHECK_KINDS));
    let port = f.maybe(cx, "port", port);
    let interval = int(100, 3_600_000);
    let interval_ms = f.or(cx, "interval_ms", DEFAULT_CHECK_INTERVAL_MS, interval);
    let timeout_ms = f.or(cx, "timeout_ms", DEFAULT_CHECK_TIMEOUT_MS, int(10, 3_600_000));
    let rise = f.or(cx, "rise", DEFAULT_CHECK_RISE, int(1, 100));
    let fall = f.or(cx, "fall", DEFAULT_CHECK_FALL, int(1, 100));
    let (check_path, expect_status, command) = kind_fields(cx, &f, kind?)?;
    let check = Check {
        kind: kind?,
        path: check_path,
        expect_status,
        command,
        port: port?,
        interval_ms,
        timeout_ms,
        rise,
        fall,
    };
    validate::check(cx, &f.path, &check);
    Some(check)
}

type KindFields = (Option<String>, Option<u16>, Vec<String>);

/// The keys that only some kinds of check take: http(s) `path` and `expect_status`, exec
/// `command`; `port` makes no sense for ping.
fn kind_fields(cx: &mut Cx, f: &Fields<'_>, kind: CheckKind) -> Option<KindFields> {
    let http = matches!(kind, CheckKind::Http | CheckKind::Https);
    let exec = matches!(kind, CheckKind::Exec | CheckKind::Agent);
    let misplaced = [
        ("path", !http, "only http and https checks take a path"),
        ("expect_status", !http, "only http and https checks take expect_status"),
        ("command", !exec, "only exec and agent checks take a command"),
        ("port", kind == CheckKind::Ping, "ping checks take no port"),
    ];
    let mut ok = true;
    for (key, bad, msg) in misplaced {
        if bad && f.has(key) {
            cx.error_at(&f.child(key), msg);
            ok = false;
        }
    }
    let mut out: KindFields = (None, None, Vec::new());
    if http {
        let check_path = f.or(cx, "path", DEFAULT_HTTP_PATH.to_string(), http_path);
        let status = f.or(cx, "expect_status", DEFAULT_HTTP_STATUS, int(100, 599));
        out.0 = Some(check_path);
        out.1 = Some(status);
    }
    if exec {
        let arg = move |cx: &mut Cx, n: &Node, p: &str| command_arg(cx, n, p, kind);
        out.2 = f.req(cx, "command", list((1, 64), "arguments", arg))?;
    }
    ok.then_some(out)
}

/// One argument of an exec or agent command: the program (first) is an absolute path;
/// exec arguments use only the known placeholders; agent commands use none (the agent
/// convention appends `IP PORT PROTO` itself).
fn command_arg(cx: &mut Cx, node: &Node, path: &str, kind: CheckKind) -> Option<String> {
    let s = string(cx, node, path)?;
    if path.ends_with("[0]") && !s.starts_with('/') {
        let msg = format!("expected an absolute path to the program, found {:?}", s);
        cx.error(node.pos, path, msg);
        return None;
    }
    let mut rest = s.as_str();
    while let Some(open) = rest.find('{') {
        let tail = &rest[open..];
        let word = tail.find('}').map_or(tail, |close| &tail[..=close]);
        if kind == CheckKind::Agent {
            let msg = format!(
                "agent checks take no placeholders (found {word}): IP PORT PROTO are appended; use kind \"exec\" to place them"
            );
            cx.error(node.pos, path, msg);
            return None;
        }
        if !PLACEHOLDERS.contains(&word) {
            let msg = format!("unknown placeholder {word}: expected {}", PLACEHOLDERS.join(", "));
            cx.error(node.pos, path, msg);
            return None;
        }
        rest = &tail[word.len()..];
    }
    Some(s)
}

/// An HTTP request path: starts with '/', no white space or control characters.
fn http_path(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    if let Value::String(s) = &node.value {
        let bad = |c: char| c.is_whitespace() || c.is_control();
        if s.starts_with('/') && !s.chars().any(bad) {
            return Some(s.clone());
        }
    }
    let found = node.value.describe();
    let msg = format!("expected an HTTP path starting with '/' without spaces, found {found}");
    cx.error(node.pos, path, msg);
    None
}
