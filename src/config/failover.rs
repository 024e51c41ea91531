//! The walk of `failover`: service groups per home ATM, their services (S and K scripts),
//! mirror sets (F files) and the SSH settings of mirroring and `cmc sync`.
//!
//! Defaults: `takeover_delay_ms` 2000, `retry_ms` 5000, `start_attempts` 3; a service's
//! `stop_order` is `99 - start_order` and its `timeout_ms` 30000; a mirror set's
//! `interval_s` 3600 (the seed's hourly crontab entry); SSH `user` root, `port` 22.

use super::decode::{Cx, file_path, int, items, list, name, object, port, string, unique};
use super::json5::Node;
use super::types::*;

/// Most groups (one per home ATM; the heartbeat's 16-bit holding map bounds the home ATMs).
pub const MAX_GROUPS: usize = 16;
/// Most services in one group, and mirror sets in one group.
pub const MAX_GROUP_SERVICES: usize = 64;
pub const MAX_MIRRORS: usize = 64;
/// Most paths in one mirror set.
pub const MAX_MIRROR_PATHS: usize = 256;

const KEYS: &[&str] = &["takeover_delay_ms", "retry_ms", "start_attempts", "ssh", "groups"];
const GROUP_KEYS: &[&str] = &["atm", "backup", "services", "mirrors"];
const SERVICE_KEYS: &[&str] = &["name", "start_order", "stop_order", "start", "stop", "timeout_ms"];
const MIRROR_KEYS: &[&str] = &["name", "paths", "interval_s"];

/// Decodes the section; `atms` are the ATM names by index (`None` where an ATM had errors).
pub(crate) fn failover(cx: &mut Cx, node: &Node, path: &str, atms: &[Option<String>]) -> Option<Failover> {
    let f = object(cx, node, path, KEYS)?;
    let delay = f.or(cx, "takeover_delay_ms", DEFAULT_TAKEOVER_DELAY_MS, int(0, 600_000));
    let retry_ms = f.or(cx, "retry_ms", DEFAULT_RETRY_MS, int(100, 3_600_000));
    let attempts = f.or(cx, "start_attempts", DEFAULT_START_ATTEMPTS, int(1, 100));
    let ssh = f.maybe(cx, "ssh", ssh)?;
    let groups = f.or(cx, "groups", Vec::new(), |cx, n, p| groups(cx, n, p, atms));
    let out = Failover { takeover_delay_ms: delay, retry_ms, start_attempts: attempts, ssh, groups };
    if out.ssh.is_none() && out.groups.iter().any(|g| !g.mirrors.is_empty()) {
        cx.error_at(&f.child("ssh"), "missing required key (mirror sets are copied over SSH)");
    }
    Some(out)
}

fn ssh(cx: &mut Cx, node: &Node, path: &str) -> Option<Ssh> {
    let f = object(cx, node, path, &["user", "port", "identity_file", "known_hosts", "node_reload"])?;
    let user = f.or(cx, "user", Some(DEFAULT_SSH_USER.to_string()), |cx, n, p| name(cx, n, p).map(Some));
    let port = f.or(cx, "port", DEFAULT_SSH_PORT, port);
    let identity_file = f.req(cx, "identity_file", file_path);
    let known_hosts = f.req(cx, "known_hosts", file_path);
    let node_reload = f.maybe(cx, "node_reload", string)?;
    Some(Ssh { user: user?, port, identity_file: identity_file?, known_hosts: known_hosts?, node_reload })
}

fn groups(cx: &mut Cx, node: &Node, path: &str, atms: &[Option<String>]) -> Option<Vec<ServiceGroup>> {
    let items = items(cx, node, path, (0, MAX_GROUPS), "service groups")?;
    let out: Vec<Option<ServiceGroup>> = items.iter().map(|(p, n)| group(cx, n, p, atms)).collect();
    let ok: Vec<(&String, &ServiceGroup)> =
        items.iter().zip(&out).filter_map(|((p, _), g)| g.as_ref().map(|g| (p, g))).collect();
    let homes =
        ok.iter().map(|(p, g)| (format!("{p}.atm"), format!("{:?}", atms[g.atm].as_deref().unwrap_or(""))));
    unique(cx, homes, "home ATM (one group per ATM)");
    let mirrors = ok.iter().flat_map(|(p, g)| {
        g.mirrors
            .iter()
            .enumerate()
            .map(move |(i, m)| (format!("{p}.mirrors[{i}].name"), format!("{:?}", m.name)))
    });
    unique(cx, mirrors, "mirror set name");
    out.into_iter().collect()
}

/// An ATM named in `atms`, as its index.
fn atm_ref<'a>(atms: &'a [Option<String>]) -> impl Fn(&mut Cx, &Node, &str) -> Option<usize> + 'a {
    move |cx, node, path| {
        let n = name(cx, node, path)?;
        match atms.iter().position(|a| a.as_deref() == Some(n.as_str())) {
            Some(i) if i < MAX_GROUPS => Some(i),
            Some(i) => {
                let msg = format!(
                    "ATM {n:?} is atms[{i}]; failover groups need one of the first {MAX_GROUPS} ATMs"
                );
                cx.error(node.pos, path, msg);
                None
            }
            // An ATM with errors of its own is already reported.
            None if atms.iter().any(Option::is_none) => None,
            None => {
                let known: Vec<String> = atms.iter().flatten().map(|a| format!("{a:?}")).collect();
                cx.error(node.pos, path, format!("no ATM named {n:?}; ATMs: {}", known.join(", ")));
                None
            }
        }
    }
}

fn group(cx: &mut Cx, node: &Node, path: &str, atms: &[Option<String>]) -> Option<ServiceGroup> {
    let f = object(cx, node, path, GROUP_KEYS)?;
    let atm = f.req(cx, "atm", atm_ref(atms));
    let backup = f.req(cx, "backup", atm_ref(atms));
    let services = f.req(cx, "services", |cx, n, p| {
        let items = items(cx, n, p, (1, MAX_GROUP_SERVICES), "services")?;
        let out: Vec<Option<GroupService>> = items.iter().map(|(p, n)| service(cx, n, p)).collect();
        let names = items
            .iter()
            .zip(&out)
            .filter_map(|((p, _), s)| s.as_ref().map(|s| (format!("{p}.name"), format!("{:?}", s.name))));
        unique(cx, names, "service name");
        out.into_iter().collect::<Option<Vec<_>>>()
    });
    let mirrors = f.or(cx, "mirrors", Some(Vec::new()), |cx, n, p| {
        let items = items(cx, n, p, (0, MAX_MIRRORS), "mirror sets")?;
        let out: Vec<Option<MirrorSet>> = items.iter().map(|(p, n)| mirror(cx, n, p)).collect();
        Some(out.into_iter().collect::<Option<Vec<_>>>())
    });
    let (atm, backup) = (atm?, backup?);
    if atm == backup {
        cx.error_at(&f.child("backup"), "expected another ATM than the group's home `atm`");
        return None;
    }
    let name = |i: usize| atms[i].clone().unwrap_or_default();
    Some(ServiceGroup {
        atm,
        backup,
        atm_name: name(atm),
        backup_name: name(backup),
        services: services?,
        mirrors: mirrors?,
    })
}

fn service(cx: &mut Cx, node: &Node, path: &str) -> Option<GroupService> {
    let f = object(cx, node, path, SERVICE_KEYS)?;
    let name = f.req(cx, "name", name);
    let start_order: Option<u32> = f.req(cx, "start_order", int(0, 99));
    let stop_order: Option<Option<u32>> = f.maybe(cx, "stop_order", int(0, 99));
    let start = f.req(cx, "start", list((1, 64), "strings", string));
    let stop = f.req(cx, "stop", list((1, 64), "strings", string));
    let timeout_ms = f.or(cx, "timeout_ms", DEFAULT_COMMAND_TIMEOUT_MS, int(10, 3_600_000));
    let start_order = start_order?;
    Some(GroupService {
        name: name?,
        start_order,
        stop_order: stop_order?.unwrap_or(99 - start_order),
        start: start?,
        stop: stop?,
        timeout_ms,
    })
}

fn mirror(cx: &mut Cx, node: &Node, path: &str) -> Option<MirrorSet> {
    let f = object(cx, node, path, MIRROR_KEYS)?;
    let name = f.req(cx, "name", name);
    let paths = f.req(cx, "paths", list((1, MAX_MIRROR_PATHS), "absolute paths", mirror_path));
    let interval_s = f.or(cx, "interval_s", 3600, int(0, 604_800));
    if let Some(p) = &paths {
        let dups =
            p.iter().enumerate().map(|(i, s)| (format!("{}[{i}]", f.child("paths")), format!("{s:?}")));
        unique(cx, dups, "path");
    }
    Some(MirrorSet { name: name?, paths: paths?, interval_s })
}

/// An absolute path without `.`/`..` components or doubled slashes; a trailing `/` marks a
/// directory.
fn mirror_path(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    let s = string(cx, node, path)?;
    let inner = s.trim_end_matches('/');
    let bad_part = inner.split('/').skip(1).any(|c| c.is_empty() || c == "." || c == "..");
    if !s.starts_with('/') || inner.is_empty() || bad_part || s.ends_with("//") || s.contains('\0') {
        let msg = format!(
            "expected an absolute path such as \"/etc/printcap\" or \"/var/spool/lpd/\", found {s:?}"
        );
        cx.error(node.pos, path, msg);
        return None;
    }
    Some(s)
}
