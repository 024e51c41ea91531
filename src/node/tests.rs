use super::*;
use crate::config::{LoadOptions, parse_str};

fn cfg() -> Config {
    let text = r#"{
      cluster: { name: "t", id: 7, secret_file: "/dev/null" },
      atms: [ { name: "atm1", address: "10.0.0.1", interface: "eth0" },
              { name: "atm2", address: "10.0.0.2", interface: "eth0" } ],
      services: [
        { name: "web", vip: "10.0.0.99", port: 80, forwarding: "dr",
          servers: [ { name: "s1", address: "10.0.0.51" }, { name: "s2", address: "10.0.0.52" } ] },
        { name: "web8080", vip: "10.0.0.99", port: 8080, forwarding: "dr",
          servers: [ { name: "s1", address: "10.0.0.51" } ] },
        { name: "tun", vip: "10.0.0.98", port: 80, forwarding: "tunnel",
          servers: [ { name: "s2", address: "10.0.0.52" }, { name: "a2", address: "10.0.0.2" } ] },
        { name: "nat", vip: "10.0.0.97", port: 80, forwarding: "nat", gateway_vip: "10.0.1.254",
          servers: [ { name: "n1", address: "10.0.1.20" } ] },
      ],
    }"#;
    parse_str("t.json5", text, &LoadOptions::default()).expect("valid")
}

fn a(iface: &str, s: &str) -> (String, IpAddr) {
    (iface.to_string(), ip(s))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn dr_node_gets_vip_once_and_arp_hiding_on_its_interface() {
    let p = plan(&cfg(), &[a("lo", "127.0.0.1"), a("eth0", "10.0.0.51")]);
    assert_eq!(p.vips, vec![ip("10.0.0.99")]);
    assert_eq!(p.arp_ifaces, vec!["eth0".to_string()]);
    assert_eq!(p.decap, None);
    assert!(p.nat.is_empty());
    assert_eq!(p.services, vec!["web".to_string(), "web8080".to_string()]);
    let keys: Vec<String> = p.sysctls().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(keys, ["all/arp_ignore=1", "all/arp_announce=2", "eth0/arp_ignore=1", "eth0/arp_announce=2"]);
}

#[test]
fn tunnel_node_decapsulates_only_from_atms_to_tunnel_vips() {
    let p = plan(&cfg(), &[a("eth1", "10.0.0.52")]);
    assert_eq!(p.vips, vec![ip("10.0.0.99"), ip("10.0.0.98")]);
    let d = p.decap.expect("tunnel");
    assert_eq!(d.allowed_sources, vec![ip("10.0.0.1"), ip("10.0.0.2")]);
    assert_eq!(d.allowed_destinations, vec![ip("10.0.0.98")]);
    assert_eq!(d.kinds, vec![TunnelKind { outer_v6: false, inner_v6: false }]);
    assert_eq!(p.arp_ifaces, vec!["eth1".to_string()]);
}

#[test]
fn nat_node_only_checks_its_route_and_other_hosts_get_nothing() {
    let p = plan(&cfg(), &[a("eth0", "10.0.1.20")]);
    assert!(p.vips.is_empty() && p.sysctls().is_empty() && p.decap.is_none());
    assert_eq!(p.nat, vec![NatCheck { service: "nat".into(), gateway: Some(ip("10.0.1.254")) }]);
    assert!(routes_via(&[ip("10.0.1.254")], ip("10.0.1.254")));
    assert!(!routes_via(&[ip("10.0.1.1")], ip("10.0.1.254")));
    assert_eq!(plan(&cfg(), &[a("eth0", "10.9.9.9")]), NodePlan::default());
}

#[test]
fn an_atm_never_schedules_to_itself() {
    let c = cfg();
    let local = [ip("10.0.0.2")];
    let s = without_self(&c.services, &local);
    assert_eq!(s[2].servers[1].weight, 0);
    assert_eq!(s[2].servers[0].weight, c.services[2].servers[0].weight);
    assert_ne!(c.services[2].servers[1].weight, 0);
}

#[test]
fn state_round_trips_and_refuses_escapes() {
    let mut st = NodeState::default();
    st.remember_sysctl("all/arp_ignore", "0");
    st.remember_sysctl("all/arp_ignore", "1");
    st.remember_sysctl("eth0/arp_announce", "0");
    st.vips.push(ip("10.0.0.99"));
    st.vips.push(ip("fd00::99"));
    st.kernel_decap = Some("tunl0".into());
    assert_eq!(st.sysctls.len(), 2, "the first previous value is kept");
    assert_eq!(NodeState::decode(&st.encode()), Ok(st));
    assert!(NodeState::decode("sysctl ../../kernel/x 1").is_err());
    assert!(NodeState::decode("sysctl /etc/passwd 1").is_err());
    assert!(NodeState::decode("sysctl all/arp_ignore 1; rm").is_err());
    assert_eq!(NodeState::decode("vip nope").map_err(|e| e.line), Err(1));
}

#[test]
fn tunnel_nodes_turn_off_the_all_rp_filter() {
    assert_eq!(tunnel_rp_filter("1\n"), Some("0"));
    assert_eq!(tunnel_rp_filter("2"), Some("0"));
    assert_eq!(tunnel_rp_filter("0"), None);
}

#[test]
fn sysctls_are_only_raised() {
    assert!(needs_raise("0", 1));
    assert!(!needs_raise("1\n", 1));
    assert!(!needs_raise("2", 1));
    assert!(needs_raise("garbage", 2));
}

#[test]
fn names_differ_per_node_and_fit_a_link_name() {
    let c = cfg();
    let dir = std::path::Path::new("/run/x");
    let n1 = names(&c, dir, ip("10.0.0.51"));
    let n2 = names(&c, dir, ip("10.0.0.52"));
    assert_ne!(n1.state_file, n2.state_file);
    assert_eq!(n1.decap_tun, "csn7");
    assert_eq!(n1.vip_label, "lo:csd7");
    assert_eq!(n1.vip_metric, VIP_METRIC_BASE + 7);
    let mut big = c.clone();
    big.cluster.id = u32::MAX;
    let nb = names(&big, dir, ip("10.0.0.51"));
    assert!(nb.decap_tun.len() <= 15 && nb.vip_label.len() <= 15, "{nb:?}");
}

/// A dual-stack node of IPv6 DR and tunnel services (one 4in6, one 6in4).
fn cfg6() -> Config {
    let text = r#"{
      cluster: { name: "t", id: 7, secret_file: "/dev/null" },
      atms: [ { name: "atm1", address: "10.0.0.1", interface: "eth0" },
              { name: "atm2", address: "10.0.0.2", interface: "eth0" } ],
      services: [
        { name: "dr6", vip: "fd00::99", port: 80, forwarding: "dr",
          servers: [ { name: "s1", address: "fd00::51" } ] },
        { name: "tun6", vip: "fd00::98", port: 80, forwarding: "tunnel",
          servers: [ { name: "s1", address: "fd00::51" } ] },
        { name: "tun4in6", vip: "10.0.0.97", port: 80, forwarding: "tunnel",
          servers: [ { name: "s1", address: "fd00::51" } ] },
        { name: "tun6in4", vip: "fd00::97", port: 80, forwarding: "tunnel",
          servers: [ { name: "s1", address: "10.0.0.51" } ] },
      ],
    }"#;
    parse_str("t.json5", text, &LoadOptions::default()).expect("valid")
}

#[test]
fn ipv6_vips_go_on_lo_without_arp_hiding_and_every_tunnel_kind_is_received() {
    let c = cfg6();
    let only6 = plan(&c, &[a("eth0", "fd00::51")]);
    assert_eq!(only6.vips, vec![ip("fd00::99"), ip("fd00::98"), ip("10.0.0.97")]);
    // The IPv4 VIP of the 4in6 service still needs `all` hidden; no IPv4 interface is known.
    assert_eq!(only6.arp_ifaces, Vec::<String>::new());
    assert!(only6.hides_arp());
    let d = only6.decap.expect("tunnel");
    let kinds: Vec<&str> = d.kinds.iter().map(|k| k.name()).collect();
    assert_eq!(kinds, ["4in6", "6in6"]);
    assert!(d.unchecked_v6_sources(), "IPv4-addressed ATMs tunnel over IPv6 from unnamed addresses");
    let both = plan(&c, &[a("eth0", "fd00::51"), a("eth0", "10.0.0.51")]);
    let kinds: Vec<&str> = both.decap.expect("tunnel").kinds.iter().map(|k| k.name()).collect();
    assert_eq!(kinds, ["6in4", "4in6", "6in6"]);
    let dr_only = plan(&c, &[a("eth0", "fd00::51")]);
    assert_eq!(dr_only.vips[0], ip("fd00::99"));
    let mut v6_dr = c.clone();
    v6_dr.services.truncate(1);
    let p = plan(&v6_dr, &[a("eth0", "fd00::51")]);
    assert!(!p.hides_arp() && p.sysctls().is_empty() && p.decap.is_none());
}
