//! Test defaults for the control core (doc-hidden; see [`crate::testkit`]).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::election::ElectionConfig;

/// The election settings of ATM `me` of `atm_count` in tests: cluster id 7, heartbeats every
/// 100 ms, dead after 3, no preemption, no reachlist, 2 gratuitous ARPs 100 ms apart and no
/// refresh, VIP 10.0.0.99, digest `[1; 16]`, one copy per heartbeat. Change fields with
/// struct update: `ElectionConfig { preempt: true, ..election(0, 2) }`.
pub fn election(me: usize, atm_count: usize) -> ElectionConfig {
    ElectionConfig {
        cluster_id: 7,
        me,
        atm_count,
        heartbeat: Duration::from_millis(100),
        dead_after: 3,
        preempt: false,
        reach_total: 0,
        min_reachable: 0,
        probe_interval: Duration::from_millis(500),
        garp_count: 2,
        garp_interval: Duration::from_millis(100),
        garp_refresh: None,
        vips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99))],
        digest: [1; 16],
        heartbeat_copies: 1,
    }
}
