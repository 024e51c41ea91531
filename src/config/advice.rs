//! Advice on a valid config: settings the daemon runs as written but that an operator
//! should know the measured cost of. Printed by `clusterserverd --check` as `warning:`
//! lines and logged at `warn` when the daemon starts or reloads; never an error (the
//! config is served as it is).

use super::Config;

/// Below this heartbeat interval a normally scheduled heartbeat thread is not enough.
///
/// Measured with `clusterlab soak --heartbeat-ms 5 --seconds 60` on a 2-core VM saturated
/// by iperf3, wrk and the data plane: without `timers.realtime_priority` the heartbeat
/// thread's sends were up to 46 ms late (receive lateness up to 47 ms), three times the
/// 15 ms dead interval, and the roles changed 72 times in a minute; with priority 10 the
/// worst was 5.4 ms and no role changed. Real-time priority is necessary, not sufficient:
/// a 600 s soak with priority 10 on the same (shared, also compiling) VM still saw stalls
/// of up to 35 ms on both ATMs at once and 6 role changes (labs/README.md, "Fast heartbeats").
pub const REALTIME_ADVISED_BELOW_MS: u64 = 20;

/// The advice for `cfg`, one line per finding, each naming the keys it is about.
pub fn advice(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let t = &cfg.timers;
    if t.heartbeat_ms < REALTIME_ADVISED_BELOW_MS && t.realtime_priority == 0 {
        out.push(format!(
            "timers.heartbeat_ms is {} ms (dead interval {} ms) with timers.realtime_priority 0: \
             on a CPU-saturated host a normally scheduled heartbeat thread was measured up to 46 ms \
             late, a false failover; set timers.realtime_priority (e.g. 10; needs CAP_SYS_NICE or \
             RLIMIT_RTPRIO) or a heartbeat of at least {REALTIME_ADVISED_BELOW_MS} ms",
            t.heartbeat_ms,
            t.heartbeat_ms * u64::from(t.dead_after)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(heartbeat_ms: u64, realtime_priority: u8) -> Config {
        let text = format!(
            r#"{{ cluster: {{ name: "web", id: 7, secret_file: "secret" }},
                 timers: {{ heartbeat_ms: {heartbeat_ms}, realtime_priority: {realtime_priority} }},
                 atms: [ {{ name: "atm1", address: "10.0.0.1", interface: "eth0" }} ],
                 services: [{{ name: "http", vip: "10.0.0.99", port: 80, forwarding: "dr",
                               servers: [ {{ name: "web1", address: "10.0.0.3" }} ] }}] }}"#
        );
        let opts = crate::config::LoadOptions::default();
        crate::config::parse_str("t.json5", &text, &opts).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn fast_heartbeats_without_realtime_priority_are_advised_against() {
        let a = advice(&with(5, 0));
        assert_eq!(a.len(), 1);
        assert!(a[0].contains("timers.heartbeat_ms is 5 ms (dead interval 15 ms)"), "{}", a[0]);
        assert!(a[0].contains("timers.realtime_priority"), "{}", a[0]);
        assert!(advice(&with(5, 10)).is_empty(), "granted: no advice");
        assert!(advice(&with(20, 0)).is_empty(), "20 ms and slower need no real-time priority");
        assert!(advice(&with(100, 0)).is_empty());
    }
}
