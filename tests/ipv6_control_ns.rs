//! The control plane over IPv6, in namespaces: two ATMs whose only addresses are IPv6 elect
//! over heartbeats sent both to the link-local group `ff02::17:100` and by unicast, sync a
//! NAT66 connection to the backup over IPv6, answer `cmc` on the admin port over IPv6 (ACL
//! by IPv6 prefix), and when the primary's daemon is SIGKILLed the backup takes over and the
//! long-lived connection carries on through it.
//!
//! Topology (namespaces `csl-c6<pid>-*`, veth pairs created inside them, addresses without
//! duplicate-address detection, no IPv4 anywhere): client and ATMs' eth0 on `fd00:65::/64`,
//! ATMs' eth1 and the server on `fd00:66::/64`.
#![allow(clippy::disallowed_methods)] // reason: a real-network test waits on the wall clock

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::daemon::{DaemonLab, cmc};
use support::traffic::{echo_once, in_netns};
use support::wait::wait_until;
use support::{in_ns, ipv6, ns_output};

const HELPER_ENV: &str = "CSL_C6_HELPER";
const VIP: &str = "[fd00:65::99]:8080";
const TOKEN: &str = "lab-admin-token-0123456789";

#[test]
fn helper_echo_server() {
    support::echo_server_helper(HELPER_ENV, Duration::from_secs(120));
}

const CONFIG: &str = r#"{
  cluster: { name: "c6lab", id: 65, heartbeat_mode: "both", secret_file: "secret" },
  atms: [ { name: "atm1", address: "fd00:65::1", interface: "eth0" },
          { name: "atm2", address: "fd00:65::2", interface: "eth0" } ],
  timers: { heartbeat_ms: 100, dead_after: 3 },
  arp: { gratuitous_count: 3, gratuitous_interval_ms: 100, refresh_s: 5 },
  security: { admin_allow: ["::1/128", "fd00:65::/64"], admin_deny: ["::/0", "0.0.0.0/0"],
              token_file: "admin.token" },
  services: [ { name: "echo6", vip: "fd00:65::99", port: 8080, forwarding: "nat", scheduler: "rr",
                gateway_vip: "fd00:66::1",
                servers: [ { name: "s1", address: "fd00:66::20", port: 8080 } ] } ],
}
"#;

/// One line through an open connection: sent, and the same line read back.
fn echo_line(s: &mut TcpStream, line: &str) -> bool {
    if s.write_all(format!("{line}\n").as_bytes()).is_err() {
        return false;
    }
    let mut back = String::new();
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    r.read_line(&mut back).is_ok() && back == format!("{line}\n")
}

#[test]
fn ipv6_only_atms_elect_sync_answer_cmc_and_fail_over_keeping_a_connection() {
    if !ipv6::can_run(HELPER_ENV) {
        return;
    }
    let mut lab = DaemonLab::new("csl-c6", "");
    let (sw, client, server) = (lab.ns("sw"), lab.ns("client"), lab.ns("server"));
    let (a1, a2) = (lab.ns("atm1"), lab.ns("atm2"));
    lab.net.bridge(&sw, "brf");
    lab.net.bridge(&sw, "brb");
    lab.net.attach6(&client, "eth0", "fd00:65::10/64", &sw, "c0", "brf");
    for (ns, n) in [(&a1, 1), (&a2, 2)] {
        lab.net.attach6(ns, "eth0", &format!("fd00:65::{n}/64"), &sw, &format!("a{n}f"), "brf");
        lab.net.attach6(ns, "eth1", &format!("fd00:66::1{n}/64"), &sw, &format!("a{n}b"), "brb");
        in_ns(ns, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    }
    lab.net.attach6(&server, "eth0", "fd00:66::20/64", &sw, "s0", "brb");
    in_ns(&server, &["ip", "-6", "route", "add", "default", "via", "fd00:66::1"]);
    for ns in [&client, &a1, &a2, &server] {
        let v4 = ns_output(ns, &["ip", "-4", "-o", "addr", "show", "scope", "global"]);
        assert!(v4.trim().is_empty(), "{ns} has no IPv4 address: {v4}");
    }
    let files = [("secret", "lab-secret-0123456789\n"), ("admin.token", TOKEN), ("c6.json5", CONFIG)];
    ipv6::write_private(&lab.net.dir, &files);
    let srv = support::spawn_echo_helper(&server, HELPER_ENV, "[fd00:66::20]:8080");
    lab.net.others.push(srv);
    let config = lab.net.dir.join("c6.json5");
    lab.start_daemon("atm1", &config);
    lab.start_daemon("atm2", &config);

    let addr: SocketAddr = VIP.parse().expect("addr");
    wait_until("one primary", Duration::from_secs(10), || lab.primaries().len() == 1);
    let first = lab.primaries()[0].clone();
    let other = if first == "atm1" { "atm2" } else { "atm1" };
    // Each hears the other over IPv6 (the status lists the peer up).
    wait_until("the backup sees the primary", Duration::from_secs(10), || {
        let (ok, out, _) = cmc(&client, &config, other, &["status"]);
        ok && out.contains(&first) && out.contains("primary")
    });
    wait_until("the IPv6 service answers through the VIP", Duration::from_secs(10), || {
        echo_once(&client, addr, Duration::from_millis(500))
    });

    // A long-lived connection, synced to the backup over IPv6.
    let mut conn = in_netns(&client, move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .join()
        .expect("client thread")
        .expect("connect through the VIP");
    conn.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    assert!(echo_line(&mut conn, "before"), "the connection works");
    let port = conn.local_addr().expect("local").port().to_string();
    wait_until("the backup holds the connection (sync over IPv6)", Duration::from_secs(10), || {
        let (ok, out, _) = cmc(&client, &config, other, &["connections"]);
        ok && out.contains("fd00:65::10") && out.contains(&port)
    });

    // The primary's daemon dies: the backup takes over, the connection carries on.
    lab.daemon_mut(&first).child.kill().expect("kill");
    let took = wait_until("the backup becomes primary", Duration::from_secs(10), || {
        lab.primaries() == vec![other.to_string()]
    });
    println!("{other} primary {took:?} after SIGKILL of {first}");
    let took = wait_until("the long-lived connection answers again", Duration::from_secs(10), || {
        echo_line(&mut conn, "after")
    });
    println!("long-lived IPv6 connection answered {took:?} after the takeover");
    assert!(echo_once(&client, addr, Duration::from_secs(2)), "new connections through the new primary");
}
