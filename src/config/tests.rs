use std::net::IpAddr;
use std::path::PathBuf;

use super::*;

const MINIMAL: &str = r#"{
  cluster: { name: "web", id: 7, secret_file: "secret" },
  atms: [ { name: "atm1", address: "10.0.0.1", interface: "eth0" } ],
  services: [{
    name: "http", vip: "10.0.0.99", port: 80, forwarding: "dr",
    servers: [ { name: "web1", address: "10.0.0.3" } ],
  }],
}"#;

fn ok(text: &str) -> Config {
    parse_str("t.json5", text, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(text: &str) -> Vec<String> {
    let e = parse_str("t.json5", text, &LoadOptions::default()).expect_err("should fail");
    e.iter().map(ToString::to_string).collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal address")
}

#[test]
fn minimal_config_takes_every_default() {
    let c = ok(MINIMAL);
    assert_eq!(c.cluster.heartbeat_mode, HeartbeatMode::Both);
    assert_eq!(c.cluster.heartbeat_port, None);
    assert_eq!(c.cluster.secret_file, PathBuf::from("secret"));
    assert_eq!(c.timers, Timers::default());
    assert_eq!(c.arp, Arp::default());
    assert_eq!(c.arbitration, Arbitration::default());
    assert_eq!(c.table, Table::default());
    assert_eq!(c.sync, SyncSettings::default());
    assert_eq!(c.security, Security::default());
    let s = &c.services[0];
    assert_eq!((s.protocol, s.scheduler, s.on_down), (Protocol::Tcp, SchedulerKind::Wlc, OnDown::Keep));
    assert_eq!((s.persistence_s, s.gateway_vip), (0, None));
    assert_eq!((s.servers[0].port, s.servers[0].weight), (80, 1));
    assert!(s.checks.is_empty());
    assert_eq!(c.vips(), vec![ip("10.0.0.99")]);
}

#[test]
fn heartbeat_modes_are_all_accepted() {
    for (text, mode) in [
        ("both", HeartbeatMode::Both),
        ("broadcast", HeartbeatMode::Broadcast),
        ("unicast", HeartbeatMode::Unicast),
    ] {
        let t = MINIMAL.replace("secret_file:", &format!("heartbeat_mode: '{text}', secret_file:"));
        assert_eq!(ok(&t).cluster.heartbeat_mode, mode);
    }
}

#[test]
fn check_defaults_depend_on_kind() {
    let t = MINIMAL.replace(
        "servers:",
        r#"checks: [ { kind: "http" }, { kind: "exec", command: ["/bin/true"] } ], servers:"#,
    );
    let c = ok(&t);
    let [http, exec] = &c.services[0].checks[..] else { panic!("two checks") };
    assert_eq!((http.path.as_deref(), http.expect_status), (Some("/"), Some(200)));
    assert_eq!((http.interval_ms, http.timeout_ms, http.rise, http.fall), (2000, 1000, 2, 3));
    assert_eq!((exec.path.as_deref(), exec.expect_status), (None, None));
    assert_eq!(exec.command, vec!["/bin/true".to_string()]);
}

#[test]
fn null_unsets_an_optional_key() {
    let t = MINIMAL.replace("id: 7,", "id: 7, heartbeat_port: null,");
    assert_eq!(ok(&t).cluster.heartbeat_port, None);
}

#[test]
fn json5_syntax_is_accepted() {
    let t = "// comment\n{ 'cluster': { name: 'web', id: 0x10, secret_file: 's', },\n\
             atms: [{name: 'a', address: '::1', interface: 'lo',},],\n\
             services: [{name: 's', vip: '::2', port: +80, forwarding: 'tunnel',\n\
             servers: [{name: 'x', address: '::3', weight: 0}]}] /* end */ }";
    let c = ok(t);
    assert_eq!(c.cluster.id, 16);
    assert_eq!(c.services[0].servers[0].weight, 0);
}

#[test]
fn errors_print_file_line_column_path_message_in_order() {
    let t = MINIMAL.replace("port: 80", "port: 0").replace("id: 7", "id: 7, colour: 'blue'");
    let e = errors(&t);
    assert_eq!(
        e,
        vec![
            "t.json5:2:34: cluster.colour: unknown key; expected one of: name, id, \
             heartbeat_port, admin_port, secret_file, heartbeat_mode, mode",
            "t.json5:5:43: services[0].port: expected an integer in 1..=65535, found number 0",
        ]
    );
}

#[test]
fn syntax_error_is_one_positioned_error() {
    let e = errors("{\n  cluster: { name: 'web' id: 1 },\n}");
    assert_eq!(e, vec!["t.json5:2:26: cluster: syntax error: expected ',' or '}', found 'i'"]);
}

#[test]
fn relative_files_resolve_against_base_dir_and_absolute_stay() {
    let opts = LoadOptions { check_files: false, base_dir: PathBuf::from("/etc/clusterserver") };
    let t = MINIMAL
        .replace("secret_file: \"secret\"", "secret_file: \"secret\" },\nsecurity: { token_file: \"/run/t\"");
    let c = parse_str("t.json5", &t, &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.cluster.secret_file, PathBuf::from("/etc/clusterserver/secret"));
    assert_eq!(c.security.token_file, Some(PathBuf::from("/run/t")));
}

#[test]
fn file_checks_only_when_asked() {
    let opts = LoadOptions { check_files: true, base_dir: PathBuf::from("/nonexistent-clusterserver-dir") };
    let e = parse_str("t.json5", MINIMAL, &opts).expect_err("secret missing");
    assert_eq!(e.len(), 1);
    assert_eq!(e.errors[0].path, "cluster.secret_file");
    assert!(e.errors[0].message.contains("does not exist"));
}

#[test]
fn formatting_does_not_change_the_digest() {
    let a = ok(MINIMAL);
    let b = ok(&MINIMAL.replace("  ", "\t").replace("{ name", "{ /* x */ name"));
    assert_eq!(a.digest(), b.digest());
    let c = ok(&MINIMAL.replace("id: 7", "id: 8"));
    assert_ne!(a.digest(), c.digest());
}

#[test]
fn zero_weight_drains_and_is_valid() {
    let t = MINIMAL.replace("address: \"10.0.0.3\"", "address: \"10.0.0.3\", weight: 0");
    assert_eq!(ok(&t).services[0].servers[0].weight, 0);
}

#[test]
fn unknown_key_suggests_a_close_one() {
    let e = errors(&MINIMAL.replace("forwarding:", "fowarding: 'dr', forwarding:"));
    assert!(e[0].contains("services[0].fowarding: unknown key; did you mean `forwarding`?"), "{e:?}");
}

const FAILOVER: &str = r#"{
  cluster: { name: "serv", id: 4, secret_file: "secret" },
  atms: [ { name: "atm1", address: "10.0.0.1", interface: "eth0" },
          { name: "atm2", address: "10.0.0.2", interface: "eth0" } ],
  services: [{
    name: "http", vip: "10.0.0.99", port: 80, forwarding: "dr",
    servers: [ { name: "web1", address: "10.0.0.3" } ],
  }],
  failover: {
    ssh: { identity_file: "keys/id", known_hosts: "keys/known_hosts" },
    groups: [{
      atm: "atm2", backup: "atm1",
      services: [
        { name: "lpd", start_order: 40, start: ["lpd", "start"], stop: ["lpd", "stop"] },
        { name: "named", start_order: 20, stop_order: 80, start: ["n"], stop: ["n"] },
        { name: "dhcpd", start_order: 30, stop_order: 70, start: ["d"], stop: ["d"] },
        { name: "smb", start_order: 40, start: ["s"], stop: ["s"], timeout_ms: 500 },
      ],
      mirrors: [ { name: "lpd", paths: ["/etc/printcap", "/var/spool/lpd/"] } ],
    }],
  },
}"#;

#[test]
fn failover_groups_resolve_atms_orders_and_defaults() {
    let opts = LoadOptions { check_files: false, base_dir: PathBuf::from("/etc/cs") };
    let c = parse_str("t.json5", FAILOVER, &opts).unwrap_or_else(|e| panic!("{e}"));
    let f = &c.failover;
    assert_eq!((f.takeover_delay_ms, f.retry_ms, f.start_attempts), (2000, 5000, 3));
    let ssh = f.ssh.as_ref().expect("ssh");
    assert_eq!((ssh.user.as_str(), ssh.port), ("root", 22));
    assert_eq!(ssh.known_hosts, PathBuf::from("/etc/cs/keys/known_hosts"));
    let g = f.group_of(1).expect("atm2's group");
    assert_eq!((g.atm, g.backup), (1, 0));
    assert!(f.group_of(0).is_none());
    let names = |seq: Vec<usize>| seq.into_iter().map(|i| g.services[i].name.clone()).collect::<Vec<_>>();
    // S20 named, S30 dhcpd, S40 lpd, S40 smb (ties in the order written).
    assert_eq!(names(g.start_sequence()), ["named", "dhcpd", "lpd", "smb"]);
    // K59 lpd and K59 smb (defaults 99 - 40; ties in reverse start order), K70, K80.
    assert_eq!(names(g.stop_sequence()), ["smb", "lpd", "dhcpd", "named"]);
    assert_eq!(g.services[0].timeout_ms, 30_000);
    assert_eq!(g.services[3].timeout_ms, 500);
    assert_eq!(g.mirrors[0].interval_s, 3600);
    assert!(MirrorSet::is_dir(&g.mirrors[0].paths[1]) && !MirrorSet::is_dir(&g.mirrors[0].paths[0]));
    assert_eq!(f.mirror("lpd").map(|(i, m)| (i, m.paths.len())), Some((0, 2)));
}

/// `failover.ssh.node_reload`: optional (no effect on the digest when absent), a non-empty
/// string when given.
#[test]
fn node_reload_is_an_optional_non_empty_command() {
    let opts = LoadOptions { check_files: false, base_dir: PathBuf::from("/etc/cs") };
    let without = parse_str("t.json5", FAILOVER, &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(without.failover.ssh.as_ref().and_then(|s| s.node_reload.clone()), None);
    let with = FAILOVER.replace(
        r#"known_hosts: "keys/known_hosts" },"#,
        r#"known_hosts: "keys/known_hosts", node_reload: "systemctl reload clusterserverd" },"#,
    );
    let c = parse_str("t.json5", &with, &opts).unwrap_or_else(|e| panic!("{e}"));
    let ssh = c.failover.ssh.as_ref().expect("ssh");
    assert_eq!(ssh.node_reload.as_deref(), Some("systemctl reload clusterserverd"));
    assert_ne!(c.digest(), without.digest(), "the command is part of the config");
    let empty = FAILOVER.replace(
        r#"known_hosts: "keys/known_hosts" },"#,
        r#"known_hosts: "keys/known_hosts", node_reload: "" },"#,
    );
    let e = parse_str("t.json5", &empty, &opts).expect_err("empty command").to_string();
    assert!(e.contains("failover.ssh.node_reload") && e.contains("non-empty string"), "{e}");
}

#[test]
fn a_config_without_failover_keeps_its_digest() {
    // The canonical form leaves an empty failover section out, so adding the section to the
    // program did not change the digest of existing configs (mixed versions agree).
    let c = ok(MINIMAL);
    let canonical = serde_json::to_string(&c).expect("serialises");
    assert!(!canonical.contains("failover"), "{canonical}");
    let with = ok(FAILOVER);
    assert!(serde_json::to_string(&with).expect("serialises").contains("failover"));
}

#[test]
fn failover_config_reads_back_from_its_canonical_form() {
    // The labs write configs from the typed form: failover must survive the round trip.
    let opts = LoadOptions { check_files: false, base_dir: PathBuf::from("/etc/cs") };
    let c = parse_str("t.json5", FAILOVER, &opts).unwrap_or_else(|e| panic!("{e}"));
    let text = serde_json::to_string(&c).expect("serialises");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    strip_nulls(&mut v);
    let back = parse_str("back.json", &v.to_string(), &opts).unwrap_or_else(|e| panic!("{e}\n{v}"));
    assert_eq!(back.failover, c.failover);
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

#[test]
fn failover_backup_must_be_another_atm() {
    let text = FAILOVER.replace(r#"backup: "atm1""#, r#"backup: "atm2""#);
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("failover.groups[0].backup: expected another ATM"), "{e:?}");
}

#[test]
fn dataplane_defaults_to_tun_and_an_atm_may_choose_its_own() {
    let c = ok(MINIMAL);
    assert_eq!(c.dataplane_of(0), Dataplane { backend: Backend::Tun, queues: 0 });
    let t = MINIMAL
        .replace("atms: [", "dataplane: { backend: 'af_xdp', queues: 2 },\n  atms: [")
        .replace(
            r#"interface: "eth0" }"#,
            r#"interface: "eth0" }, { name: "atm2", address: "10.0.0.2", interface: "eth0", dataplane: { backend: "tun" } }"#,
        );
    let c = ok(&t);
    assert_eq!(c.dataplane_of(0), Dataplane { backend: Backend::AfXdp, queues: 2 });
    assert_eq!(c.dataplane_of(1), Dataplane { backend: Backend::Tun, queues: 0 });
    // The default is left out of the canonical form: older configs keep their digest.
    assert_eq!(ok(MINIMAL).digest(), ok(&MINIMAL.replace("atms: [", "dataplane: {},\n  atms: [")).digest());
}

#[test]
fn a_bad_dataplane_is_named() {
    let t = MINIMAL.replace("atms: [", "dataplane: { backend: 'dpdk', queues: 65, rings: 1 },\n  atms: [");
    let e = errors(&t).join("\n");
    assert!(e.contains("dataplane.backend"), "{e}");
    assert!(e.contains("dataplane.queues"), "{e}");
    assert!(e.contains("dataplane.rings") || e.contains("rings"), "{e}");
}
