//! The service-failover checker: reads a run's trace and proves that no service ran on two
//! ATMs at once (seed 004's promise), and reports the takeover figures.
//!
//! A service counts as running on an ATM from its `service NAME start` line (the S script
//! began) to its `service NAME stopped` line (the K script finished), or to the crash of the
//! ATM's machine (`fault: crash ATM`). A killed daemon leaves its services running, as a real
//! SIGKILL would.

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
    let mut crash_at: Option<u64> = None;
    let mut takeover_ms: Vec<u64> = Vec::new();
    let all = s.failover.as_ref().map_or(0, |f| f.services.len());
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
                crash_at = Some(ms);
            }
            ["service", name, "start"] => {
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
            ["failover:", event, ..] if event.starts_with("Takeover") => takeovers += 1,
            ["failover:", event, ..] if event.starts_with("GroupUp") && host != "atm1" => {
                if let Some(c) = crash_at.take() {
                    takeover_ms.push(ms - c);
                }
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
        report.lines.push(format!("takeover: all services up on the backup {t} ms after the crash"));
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
