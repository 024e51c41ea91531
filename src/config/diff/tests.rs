//! The plan printer over a corpus of config pairs: each case edits the NAT example and the
//! snapshot shows the plan an operator would read (`snapshots/config_plan__*.snap`).

use std::path::PathBuf;

use super::*;
use crate::config::{LoadOptions, parse_str};

const BASE: &str = include_str!("../../../config/nat-2atm.json5");

fn load(text: &str, dir: &str) -> Config {
    let opts = LoadOptions { check_files: false, base_dir: PathBuf::from(dir) };
    parse_str("test.json5", text, &opts).unwrap_or_else(|e| panic!("config: {e}"))
}

fn edited(edits: &[(&str, &str)]) -> Config {
    let mut text = BASE.to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "edit target {from:?} not in the example");
        text = text.replacen(from, to, 1);
    }
    load(&text, "/etc/clusterserver")
}

fn base() -> Config {
    load(BASE, "/etc/clusterserver")
}

/// The corpus: (name, edits of the example).
const CASES: &[(&str, &[(&str, &str)])] = &[
    ("unchanged", &[]),
    (
        "weight_change",
        &[(
            "port: 8080, weight: 100 },\n        { name: \"web2\"",
            "port: 8080, weight: 50 },\n        { name: \"web2\"",
        )],
    ),
    (
        "server_added",
        &[(
            "weight: 50 },  // older box",
            "weight: 50 },\n        { name: \"web4\", address: \"192.168.10.14\", port: 8080, weight: 100 },",
        )],
    ),
    (
        "server_removed",
        &[(
            "        { name: \"web3\", address: \"192.168.10.13\", port: 8443, weight: 0 },  // draining\n",
            "",
        )],
    ),
    ("server_moved", &[("\"192.168.10.13\", port: 8080", "\"192.168.10.23\", port: 8080")]),
    (
        "service_added",
        &[(
            "  services: [\n",
            "  services: [\n    { name: \"dns\", vip: \"203.0.113.11\", port: 53, protocol: \"udp\", forwarding: \"nat\", gateway_vip: \"192.168.10.1\",\n      servers: [ { name: \"ns1\", address: \"192.168.10.31\", port: 53 } ] },\n",
        )],
    ),
    (
        "service_vip_moved",
        &[("vip: \"203.0.113.10\",\n      port: 443", "vip: \"203.0.113.12\",\n      port: 443")],
    ),
    (
        "scheduler_and_persistence",
        &[("scheduler: \"wlc\",\n      persistence_s: 0", "scheduler: \"mh\",\n      persistence_s: 300")],
    ),
    (
        "check_tuned",
        &[(
            "interval_ms: 1000, timeout_ms: 500, rise: 2, fall: 3",
            "interval_ms: 500, timeout_ms: 250, rise: 2, fall: 3",
        )],
    ),
    (
        "timers_and_arp",
        &[
            ("heartbeat_ms: 100, dead_after: 3", "heartbeat_ms: 50, dead_after: 4"),
            ("refresh_s: 30", "refresh_s: 10"),
        ],
    ),
    (
        "atm_added",
        &[(
            "interface: \"eth0\" },\n  ],",
            "interface: \"eth0\" },\n    { name: \"atm3\", address: \"203.0.113.4\", interface: \"eth0\" },\n  ],",
        )],
    ),
    (
        "table_timeouts_and_acl",
        &[("tcp_timeout_s: 900", "tcp_timeout_s: 1800"), ("\"203.0.113.0/24\"]", "\"203.0.113.0/25\"]")],
    ),
    ("cluster_id", &[("id: 7,", "id: 8,")]),
    ("own_address", &[("address: \"203.0.113.2\"", "address: \"203.0.113.5\"")]),
    ("atm_removed", &[("    { name: \"atm2\", address: \"203.0.113.3\", interface: \"eth0\" },\n", "")]),
    (
        "table_size_and_ports",
        &[
            ("max_connections: 1000000", "max_connections: 2000000"),
            ("admin_port: 17101", "admin_port: 17105"),
        ],
    ),
    (
        "reachlist_grown",
        &[("reachlist: [\"203.0.113.254\"]", "reachlist: [\"203.0.113.254\", \"203.0.113.253\"]")],
    ),
];

#[test]
fn plan_printer_corpus() {
    let old = base();
    let mut out = String::new();
    for (name, edits) in CASES {
        let new = edited(edits);
        let plan = plan(&old, &new, Some(0));
        out.push_str(&format!("## {name}\n{plan}\n"));
    }
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!("config_plan_corpus", out));
}

#[test]
fn classification() {
    let old = base();
    let live = [
        "weight_change",
        "server_added",
        "server_removed",
        "service_added",
        "check_tuned",
        "timers_and_arp",
        "atm_added",
        "table_timeouts_and_acl",
        "server_moved",
        "service_vip_moved",
        "scheduler_and_persistence",
    ];
    let handover = ["cluster_id", "own_address", "atm_removed", "table_size_and_ports", "reachlist_grown"];
    for (name, edits) in CASES {
        let p = plan(&old, &edited(edits), Some(0));
        if live.contains(name) {
            assert!(!p.is_empty() && !p.needs_handover(), "{name}: {p}");
        } else if handover.contains(name) {
            assert!(p.needs_handover(), "{name}: {p}");
        } else {
            assert!(p.is_empty(), "{name}: {p}");
        }
    }
}

#[test]
fn a_peer_address_is_live_for_this_atm_and_handover_for_that_one() {
    let new = edited(&[("address: \"203.0.113.3\"", "address: \"203.0.113.6\"")]);
    assert!(!plan(&base(), &new, Some(0)).needs_handover());
    assert!(plan(&base(), &new, Some(1)).needs_handover());
    assert!(plan(&base(), &new, None).needs_handover());
}

#[test]
fn digest_ignores_the_config_directory() {
    let a = load(BASE, "/etc/clusterserver");
    let b = load(BASE, "/srv/other/place");
    assert_ne!(a.cluster.secret_file, b.cluster.secret_file);
    assert_eq!(a.digest(), b.digest());
    assert!(plan(&a, &b, Some(0)).is_empty(), "{}", plan(&a, &b, Some(0)));
    // A secret file outside the directory still counts.
    let c = load(
        &BASE.replace("secret_file: \"secret\"", "secret_file: \"/run/keys/secret\""),
        "/etc/clusterserver",
    );
    assert_ne!(a.digest(), c.digest());
}

#[test]
fn remap_follows_names_and_drops_moved_endpoints() {
    let old = base();
    let new = edited(&[
        ("        { name: \"web1\", address: \"192.168.10.11\", port: 8080, weight: 100 },\n", ""),
        ("vip: \"203.0.113.10\",\n      port: 443", "vip: \"203.0.113.12\",\n      port: 443"),
    ]);
    let r = Remap::between(&old, &new);
    assert_eq!(r.services, vec![Some(0), None]);
    assert_eq!(r.servers[0], vec![None, Some(0), Some(1)]);
    assert_eq!(r.server(0, 2), Some((0, 1)));
    assert!(!r.is_identity(&new));
    assert!(Remap::between(&old, &old).is_identity(&old));
}

#[test]
fn bgp_is_live_but_for_birds_program_and_files() {
    let text = include_str!("../../../config/dr-3atm-active-active.json5");
    let old = load(text, "/etc/clusterserver");
    let mut new = old.clone();
    let b = new.bgp.as_mut().expect("the example has a bgp section");
    b.hold_s += 1;
    b.drain_ms += 500;
    let mut extra = b.neighbors[0].clone();
    extra.address = "192.0.2.77".parse().unwrap();
    b.neighbors.push(extra);
    let p = plan(&old, &new, Some(0));
    assert!(!p.needs_handover(), "{p}");
    let keys: Vec<&str> = p.items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["bgp.neighbors.192.0.2.77", "bgp.hold_s", "bgp.drain_ms"], "{p}");
    new.bgp.as_mut().unwrap().control_socket = "/run/other.ctl".into();
    let p = plan(&old, &new, Some(0));
    let forced: Vec<&str> = p.handover_items().map(|i| i.key.as_str()).collect();
    assert_eq!(forced, ["bgp.control_socket"], "{p}");
    new.bgp = None;
    assert!(plan(&old, &new, Some(0)).handover_items().any(|i| i.key == "bgp"));
}
