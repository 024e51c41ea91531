//! Every example in `config/` loads, with its secret and token files checked: each example
//! is copied into a temporary directory beside 0600 `secret` and `admin.token` files (git
//! does not keep file modes) and loaded with `load_file`, exactly as the daemon would.

mod support;

use std::path::Path;

use clusterserver::config::{Config, Forwarding, load_file};
use support::{TempDir, json5_files, secrets_dir, stem};

fn load_example(path: &Path, dir: &TempDir) -> Config {
    let copy = dir.path().join(path.file_name().expect("file name"));
    std::fs::copy(path, &copy).expect("copy example");
    load_file(&copy).unwrap_or_else(|e| panic!("{} does not load:\n{e}", path.display()))
}

#[test]
fn every_example_loads_with_files_checked() {
    let examples = json5_files("config");
    let names: Vec<String> = examples.iter().map(|p| stem(p)).collect();
    for wanted in
        ["nat-2atm", "dr-2atm", "tunnel-2atm", "nat-3atm", "dr-3atm", "nat66-2atm", "dual-stack-2atm"]
    {
        assert!(names.iter().any(|n| n == wanted), "config/{wanted}.json5 is missing");
    }
    let dir = secrets_dir("examples");
    for path in &examples {
        let config = load_example(path, &dir);
        assert!(!config.atms.is_empty() && !config.services.is_empty());
        assert_eq!(config.cluster.secret_file, dir.path().join("secret"));
    }
}

#[test]
fn examples_cover_each_forwarding_and_atm_count() {
    let dir = secrets_dir("coverage");
    let mut seen: Vec<(Forwarding, usize)> = Vec::new();
    for path in json5_files("config") {
        let config = load_example(&path, &dir);
        for s in &config.services {
            seen.push((s.forwarding, config.atms.len()));
        }
    }
    for f in [Forwarding::Nat, Forwarding::Dr, Forwarding::Tunnel] {
        assert!(seen.contains(&(f, 2)), "no 2-ATM {f:?} example");
    }
    assert!(seen.contains(&(Forwarding::Nat, 3)) && seen.contains(&(Forwarding::Dr, 3)));
}

#[test]
fn the_ipv6_and_dual_stack_examples_are_what_they_say() {
    let dir = secrets_dir("families");
    let v6 = load_example(Path::new(support::MANIFEST_DIR).join("config/nat66-2atm.json5").as_path(), &dir);
    assert!(v6.services.iter().all(|s| s.vip.is_ipv6() && s.servers.iter().all(|x| x.address.is_ipv6())));
    assert!(v6.atms.iter().all(|a| a.address.is_ipv6()), "IPv6 only: heartbeats and sync over IPv6 too");
    assert!(v6.arbitration.reachlist.iter().all(std::net::IpAddr::is_ipv6));
    let dual =
        load_example(Path::new(support::MANIFEST_DIR).join("config/dual-stack-2atm.json5").as_path(), &dir);
    assert!(dual.services.iter().any(|s| s.vip.is_ipv4()) && dual.services.iter().any(|s| s.vip.is_ipv6()));
    assert!(dual.atms.iter().all(|a| a.address.is_ipv4()), "the dual-stack example's ATMs speak IPv4");
}

#[test]
fn example_without_its_secret_file_is_refused() {
    let dir = TempDir::new("no-secret");
    let path = Path::new(support::MANIFEST_DIR).join("config/dr-2atm.json5");
    let copy = dir.path().join("dr-2atm.json5");
    std::fs::copy(&path, &copy).expect("copy example");
    let errors = load_file(&copy).expect_err("secret files are missing");
    let text = errors.to_string();
    assert!(text.contains("cluster.secret_file: file \"secret\" does not exist"), "{text}");
    assert!(text.contains("security.token_file: file \"admin.token\" does not exist"), "{text}");
}

#[test]
fn defaults_fill_what_the_example_leaves_out() {
    let dir = secrets_dir("defaults");
    let path = Path::new(support::MANIFEST_DIR).join("config/dr-2atm.json5");
    let config = load_example(&path, &dir);
    assert_eq!(config.table, Default::default());
    assert_eq!(config.arp, Default::default());
    assert_eq!(config.security.admin_allow, clusterserver::config::Security::default().admin_allow);
    let http = &config.services[0];
    assert!(http.servers.iter().all(|s| s.port == 80));
    assert_eq!(http.checks[1].timeout_ms, 2000);
    assert_eq!(config.heartbeat_port(), 17100);
}

#[test]
fn the_active_active_example_has_mode_and_bgp() {
    use clusterserver::config::ClusterMode;
    let dir = secrets_dir("active-active");
    let path = Path::new(support::MANIFEST_DIR).join("config/dr-3atm-active-active.json5");
    let config = load_example(&path, &dir);
    assert_eq!(config.cluster.mode, ClusterMode::ActiveActive);
    let bgp = config.bgp.expect("bgp section");
    assert_eq!((bgp.local_as, bgp.neighbors.len(), bgp.hold_s, bgp.bfd), (65001, 1, 3, true));
    // Defaults of the keys the example leaves out.
    assert_eq!(bgp.control_socket, Path::new("/run/clusterserver/bird.ctl"));
    assert_eq!((bgp.bfd_interval_ms, bgp.bfd_multiplier), (100, 3));
}

#[test]
fn primary_backup_configs_keep_their_digest_form() {
    // `mode` at its default and an absent `bgp` are left out of the canonical form, so the
    // heartbeat digest of a config written before active-active existed is unchanged.
    let dir = secrets_dir("digest-form");
    let path = Path::new(support::MANIFEST_DIR).join("config/dr-2atm.json5");
    let json = serde_json::to_string(&load_example(&path, &dir)).expect("serialise");
    assert!(!json.contains("\"mode\"") && !json.contains("\"bgp\""), "{json}");
}
