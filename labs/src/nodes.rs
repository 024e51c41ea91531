//! The real servers' own `clusterserverd` (issue 5): the lab does no node configuration; it
//! starts the daemon on every node, checks that the daemon set the node up for the
//! scenario's forwarding method, and after SIGTERM that the node is exactly as before.
//!
//! "As before" is a snapshot ([`NodeLook`]) taken before the daemon starts: the addresses
//! (with labels) of both families, the links, the policy rules and the routes of every
//! table of both families, and the IPv4 `conf` sysctls the node set-up may touch (ARP
//! hiding, reverse-path filtering, `accept_local`), on `all`, `default` and `eth0`.
//!
//! An IPv6 VIP has no label (Linux keeps labels for IPv4 only): the set-up check looks for
//! the VIP as a /128 on `lo`. Linux answers a Neighbor Solicitation only for addresses on the
//! interface it arrived on, so IPv6 needs no hiding sysctl; that the nodes never answer one
//! is measured, not assumed ([`crate::ndp`]).

use std::path::Path;

use anyhow::{Context, bail};

use crate::family::{self, Family};
use crate::lab::{Lab, check_interrupted};
use crate::ns;
use crate::topology::{Role, VIP};

/// How the labels the daemon puts on the VIPs it adds to `lo` start (the cluster id follows).
pub const VIP_LABEL: &str = clusterserver::node::VIP_LABEL_PREFIX;

const SYSCTLS: [&str; 4] = ["arp_ignore", "arp_announce", "rp_filter", "accept_local"];

/// What a node looks like to `ip` and `/proc/sys`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLook {
    pub addrs: Vec<String>,
    pub links: Vec<String>,
    pub rules: Vec<String>,
    pub routes: Vec<String>,
    pub sysctls: Vec<(String, String)>,
}

/// Reads `nsname`'s look.
pub fn look(nsname: &str) -> anyhow::Result<NodeLook> {
    let lines = |args: &[&str]| -> anyhow::Result<Vec<String>> {
        let mut v: Vec<String> = ns::exec(nsname, args)?
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        v.sort();
        Ok(v)
    };
    // Link lines without counters or state flags that change on their own: name only.
    let links = lines(&["ip", "-o", "link", "show"])?
        .into_iter()
        .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_string()))
        .collect();
    let mut sysctls = Vec::new();
    for iface in ["all", "default", "eth0", "lo"] {
        for k in SYSCTLS {
            let key = format!("{iface}/{k}");
            let v = ns::exec(nsname, &["cat", &format!("/proc/sys/net/ipv4/conf/{key}")])?;
            sysctls.push((key, v.trim().to_string()));
        }
    }
    let both = |args: &[&str]| -> anyhow::Result<Vec<String>> {
        let mut v = Vec::new();
        for f in ["-4", "-6"] {
            let mut a = vec![args[0], f];
            a.extend(&args[1..]);
            v.extend(lines(&a)?);
        }
        Ok(v)
    };
    // The kernel's own IPv6 link-local addresses and their routes are left out: every
    // interface gets them, their duplicate-address detection ends on its own (`tentative`
    // goes, a `local fe80::…` route comes), and no daemon of ours adds or removes one.
    let kernel_link_local = |l: &String| l.contains(" fe80::");
    Ok(NodeLook {
        addrs: both(&["ip", "-o", "addr", "show"])?
            .into_iter()
            .filter(|l| !kernel_link_local(l))
            .map(|l| l.split(" valid_lft").next().unwrap_or(&l).to_string())
            .collect(),
        links,
        rules: both(&["ip", "rule", "show"])?,
        routes: both(&["ip", "route", "show", "table", "all"])?
            .into_iter()
            .filter(|l| !kernel_link_local(l))
            .collect(),
        sysctls,
    })
}

/// Differences between `before` and `after`, described (empty: clean).
pub fn differences(node: &str, before: &NodeLook, after: &NodeLook) -> Vec<String> {
    let mut out = Vec::new();
    let mut diff = |what: &str, a: &[String], b: &[String]| {
        let gone: Vec<&String> = a.iter().filter(|x| !b.contains(x)).collect();
        let added: Vec<&String> = b.iter().filter(|x| !a.contains(x)).collect();
        if !gone.is_empty() || !added.is_empty() {
            out.push(format!(
                "{node} is not clean after its daemon stopped: {what} added {added:?}, gone {gone:?}"
            ));
        }
    };
    diff("addresses", &before.addrs, &after.addrs);
    diff("links", &before.links, &after.links);
    diff("rules", &before.rules, &after.rules);
    diff("routes", &before.routes, &after.routes);
    for ((k, a), (_, b)) in before.sysctls.iter().zip(&after.sysctls) {
        if a != b {
            out.push(format!(
                "{node} is not clean after its daemon stopped: net.ipv4.conf.{k} was {a}, is {b}"
            ));
        }
    }
    out
}

/// What the daemon must have set up on a node for `forwarding`, described when missing.
pub fn set_up_problems(node: &str, forwarding: &str, fams: &[Family], l: &NodeLook) -> Vec<String> {
    let mut out = Vec::new();
    if forwarding == "nat" {
        return out;
    }
    if fams.contains(&Family::V6) {
        let vip = format!(" {}/128 ", family::vip6());
        if !l.addrs.iter().any(|a| a.contains(" lo ") && a.contains(&vip)) {
            out.push(format!("{node}: no IPv6 VIP {}/128 on lo", family::vip6()));
        }
    }
    if forwarding == "tunnel" && !l.links.iter().any(|n| n.starts_with("csn")) {
        out.push(format!("{node}: no decapsulator TUN (csn*) in tunnel mode"));
    }
    if !fams.contains(&Family::V4) {
        return out;
    }
    let vip = format!(" {VIP}/32 ");
    if !l.addrs.iter().any(|a| a.contains(" lo ") && a.contains(&vip) && a.contains(VIP_LABEL)) {
        out.push(format!("{node}: no VIP {VIP}/32 labelled {VIP_LABEL} on lo"));
    }
    let get = |k: &str| l.sysctls.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str()).unwrap_or("");
    if get("all/arp_ignore") != "1" || get("all/arp_announce") != "2" {
        out.push(format!(
            "{node}: ARP hiding not set (all/arp_ignore={}, all/arp_announce={})",
            get("all/arp_ignore"),
            get("all/arp_announce")
        ));
    }
    out
}

/// The node names of the lab.
pub fn names(lab: &Lab) -> Vec<String> {
    lab.plan.of_role(Role::Node).iter().map(|h| h.name.clone()).collect()
}

/// Snapshots every node before its daemon starts.
pub fn snapshot(lab: &Lab) -> anyhow::Result<Vec<(String, NodeLook)>> {
    names(lab).into_iter().map(|n| Ok((n.clone(), look(&lab.plan.host(&n)?.ns)?))).collect()
}

/// Gives the direct-routing and tunnel nodes strict reverse-path filtering (the default of
/// many distributions; the lab's hosts otherwise have 0), which a tunnel node's daemon must
/// relax and restore, then snapshots every node.
pub fn prepare(lab: &Lab, forwarding: &str) -> anyhow::Result<Vec<(String, NodeLook)>> {
    if forwarding != "nat" {
        for n in names(lab) {
            ns::exec(&lab.plan.host(&n)?.ns, &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1"])?;
        }
    }
    snapshot(lab)
}

/// Waits (at most `ms`) until the daemon `label` has logged `ready` more than `before` times.
pub fn wait_ready(lab: &mut Lab, label: &str, before: usize, ms: u64) -> anyhow::Result<()> {
    for _ in 0..ms / 10 {
        check_interrupted()?;
        let text = lab.log_text(label);
        if text.lines().filter(|l| l.contains(" ready ")).count() > before {
            return Ok(());
        }
        if let Some(st) = lab.exited(label) {
            bail!(
                "{label} exited during start-up ({st}):\n{}",
                text.lines().rev().take(8).collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    bail!("{label} did not log `ready` within {ms} ms")
}

/// Starts `clusterserverd` on every node (its node state files go to the lab's directory)
/// and waits until each is ready and has set its node up for `forwarding`.
pub fn start(
    lab: &mut Lab,
    daemon: &Path,
    cfg: &Path,
    forwarding: &str,
    spare: &[String],
) -> anyhow::Result<()> {
    // A spare node is in no service until a `reload` adds it: its daemon starts then.
    for n in names(lab).into_iter().filter(|n| !spare.contains(n)) {
        start_one(lab, daemon, &n, cfg)?;
        wait_ready(lab, &format!("{n}/daemon"), 0, 5_000)?;
        let l = look(&lab.plan.host(&n)?.ns)?;
        let problems = set_up_problems(&n, forwarding, &family::families(lab.plan.ip), &l);
        if !problems.is_empty() {
            bail!("the node daemon did not set its node up:\n  {}", problems.join("\n  "));
        }
    }
    Ok(())
}

/// Starts the daemon `host/daemon` with the state directory in the lab's directory.
pub fn start_one(lab: &mut Lab, daemon: &Path, host: &str, cfg: &Path) -> anyhow::Result<()> {
    let run_dir = lab.dir.join("run");
    std::fs::create_dir_all(&run_dir)?;
    let args = vec![
        format!("{}={}", clusterserver::platform::linux::node::STATE_DIR_ENV, run_dir.display()),
        daemon.display().to_string(),
        "--config".to_string(),
        cfg.display().to_string(),
    ];
    lab.spawn(&format!("{host}/daemon"), host, Path::new("/usr/bin/env"), &args)?;
    Ok(())
}

/// Stops every node daemon with SIGTERM and compares each node with its snapshot: the
/// problems found (a daemon that died early, did not exit 0, or left something behind).
pub fn stop_and_check(lab: &mut Lab, before: &[(String, NodeLook)]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for (n, b) in before {
        let label = format!("{n}/daemon");
        if lab.pid(&label).is_err() {
            // A spare node no reload added: its daemon never ran.
            continue;
        }
        if let Some(st) = lab.exited(&label) {
            out.push(format!("clusterserverd on {n} exited by itself ({st})"));
        } else {
            lab.signal(&label, nix::sys::signal::Signal::SIGTERM)?;
            match lab.wait_or_kill(&label, 5_000)? {
                Some(st) if st.success() => {}
                Some(st) => out.push(format!("clusterserverd on {n} exited with {st} after SIGTERM")),
                None => {
                    out.push(format!("clusterserverd on {n} did not exit within 5 s of SIGTERM (killed)"))
                }
            }
        }
        let after = look(&lab.plan.host(n)?.ns).with_context(|| format!("looking at {n}"))?;
        out.extend(differences(n, b, &after));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(addrs: &[&str], sysctls: &[(&str, &str)]) -> NodeLook {
        NodeLook {
            addrs: addrs.iter().map(|s| s.to_string()).collect(),
            links: vec!["lo".into(), "eth0".into()],
            rules: Vec::new(),
            routes: Vec::new(),
            sysctls: sysctls.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn a_left_vip_and_a_changed_sysctl_are_reported() {
        let before = l(&["1: lo inet 127.0.0.1/8 scope host lo"], &[("all/arp_ignore", "0")]);
        let after = l(
            &["1: lo inet 127.0.0.1/8 scope host lo", "1: lo inet 10.0.0.99/32 scope global lo:csd"],
            &[("all/arp_ignore", "1")],
        );
        let d = differences("node1", &before, &after);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("10.0.0.99/32") && d[1].contains("all/arp_ignore was 0, is 1"));
        assert!(differences("node1", &before, &before).is_empty());
        let p = set_up_problems("node1", "tunnel", &[Family::V4], &after);
        assert_eq!(p.len(), 2, "ARP hiding and the TUN are missing: {p:?}");
        assert!(set_up_problems("node1", "nat", &[Family::V4], &before).is_empty());
        let p = set_up_problems("node1", "dr", &[Family::V4, Family::V6], &after);
        assert_eq!(p.len(), 2, "the IPv6 VIP and ARP hiding are missing: {p:?}");
        let with6 = l(&["1: lo inet6 fd00:c5::99/128 scope global"], &[]);
        assert!(set_up_problems("node1", "dr", &[Family::V6], &with6).is_empty());
    }
}
