//! The service-failover checker: reads a run's trace and proves that no service ran on two
//! ATMs at once (seed 004's promise), and reports the takeover figures.
//!
//! A service counts as running on an ATM from its `service NAME start` line (the S script
//! began) to its `service NAME stopped` line (the K script finished), or to the crash of the
//! ATM's machine (`fault: crash ATM`). A killed daemon leaves its services running, as a real
//! SIGKILL would. A takeover is the backup starting the first service of atm1's group. The
//! labs write the same lines (their S/K scripts and the runner's crash faults) to a log that
//! this checker reads too.

use std::collections::{BTreeMap, BTreeSet};

use crate::scenario::Scenario;

/// What the checker found.
#[derive(Debug, Default)]
pub struct ServiceReport {
    /// Summary lines.
    pub lines: Vec<String>,
    pub violations: Vec<String>,
}

/// Checks `trace` against the scenario's failover expectations.
pub fn check(s: &Scenario, trace: &[String]) -> ServiceReport {
    let mut running: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut report = ServiceReport::default();
    let mut takeovers = 0usize;
    // After a crash: when it happened, and the services since started elsewhere.
    let mut crash: Option<(u64, String, BTreeSet<String>)> = None;
    let mut takeover_ms: Vec<u64> = Vec::new();
    let all = s.failover.as_ref().map_or(0, |f| f.services.len());
    let first = s.failover.as_ref().and_then(|f| f.services.first()).map(String::as_str);
    for line in trace {
        let mut words = line.split_whitespace();
        let (Some(ms), Some(host)) = (words.next(), words.next()) else { continue };
        let ms: u64 = ms.parse().unwrap_or(0);
        let rest: Vec<&str> = words.collect();
        match rest.as_slice() {
            ["fault:", "crash", atm] => {
                for hosts in running.values_mut() {
                    hosts.remove(*atm);
                }
                crash = Some((ms, (*atm).to_string(), BTreeSet::new()));
            }
            ["service", name, "started"] => {
                if let Some((at, crashed, up)) = &mut crash
                    && host != crashed.as_str()
                {
                    up.insert((*name).to_string());
                    if up.len() == all {
                        takeover_ms.push(ms - *at);
                        crash = None;
                    }
                }
            }
            ["service", name, "start"] => {
                // A takeover: the backup starts the first service of atm1's group.
                if Some(*name) == first && host != "atm1" {
                    takeovers += 1;
                }
                let hosts = running.entry((*name).to_string()).or_default();
                if let Some(other) = hosts.iter().find(|h| *h != host) {
                    report
                        .violations
                        .push(format!("{ms} ms: {name} starts on {host} while running on {other}"));
                }
                hosts.insert(host.to_string());
            }
            ["service", name, "stopped"] => {
                running.entry((*name).to_string()).or_default().remove(host);
            }
            _ => {}
        }
    }
    let at_end: Vec<String> = running
        .iter()
        .map(|(name, hosts)| {
            let on: Vec<&str> = hosts.iter().map(String::as_str).collect();
            format!("{name}@{}", if on.is_empty() { "none".to_string() } else { on.join("+") })
        })
        .collect();
    report.lines.push(format!("services at end: {}", at_end.join(" ")));
    report.lines.push(format!("takeovers: {takeovers}"));
    for t in &takeover_ms {
        report.lines.push(format!("takeover: every service started elsewhere {t} ms after the crash"));
    }
    let e = &s.expect;
    if let Some(atm) = &e.services_final_on {
        let wrong: Vec<&String> = at_end.iter().filter(|l| !l.ends_with(&format!("@{atm}"))).collect();
        if !wrong.is_empty() || at_end.len() != all {
            report.violations.push(format!("services at end: {}, expected all on {atm}", at_end.join(" ")));
        }
    }
    if let Some(m) = e.min_takeovers.filter(|m| takeovers < *m) {
        report.violations.push(format!("{takeovers} takeovers, at least {m} expected"));
    }
    if let Some(m) = e.max_takeovers.filter(|m| takeovers > *m) {
        report.violations.push(format!("{takeovers} takeovers, at most {m} expected"));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario() -> Scenario {
        Scenario::parse(
            "{ name: 'x', topology: { atms: 2 }, failover: { services: ['a', 'b'] },
               expect: { services_final_on: 'atm1' } }",
        )
        .expect("scenario")
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
    }

    #[test]
    fn overlap_is_a_violation_and_a_crash_ends_what_ran() {
        let trace = lines(
            "100 atm1 service a start
             150 atm1 service a started
             160 atm1 service b start
             210 atm1 service b started
             300 sim fault: crash atm1
             400 atm2 service a start
             450 atm2 service a started
             460 atm2 service b start
             470 atm1 service b start
             510 atm2 service b started",
        );
        let r = check(&scenario(), &trace);
        assert_eq!(r.violations.len(), 2, "{:?}", r.violations);
        assert!(
            r.violations[0].contains("470 ms: b starts on atm1 while running on atm2"),
            "{:?}",
            r.violations
        );
        assert!(r.violations[1].contains("expected all on atm1"), "{:?}", r.violations);
        assert!(
            r.lines.contains(&"takeover: every service started elsewhere 210 ms after the crash".to_string())
        );
        assert!(r.lines.contains(&"takeovers: 1".to_string()), "{:?}", r.lines);
    }

    #[test]
    fn a_clean_hand_back_passes() {
        let trace = lines(
            "100 atm2 service a start
             150 atm2 service a started
             200 atm2 service a stop
             250 atm2 service a stopped
             250 atm1 service a start
             300 atm1 service a started
             310 atm1 service b start
             360 atm1 service b started",
        );
        let r = check(&scenario(), &trace);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert!(r.lines[0] == "services at end: a@atm1 b@atm1", "{:?}", r.lines);
    }
}
