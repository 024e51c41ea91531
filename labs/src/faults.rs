//! Network faults with nftables, inside the lab's host namespaces only.
//!
//! Each host gets `table inet csl` with empty regular chains that the hook chains jump to:
//! `part_in`/`part_out` (partitions), `loss_in` (random loss with `numgen`), `srv_in` (a
//! real server that stops answering), and, in an xtables `mangle` table, the `latency`
//! step's NFQUEUE rule (outgoing IPv4 held by `clusterlab delay`, see [`crate::delay`]). `heal` flushes the
//! partition chains. The tables go with their namespaces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, bail};
use clustersim::scenario::{LinkSetting, OneWay};

use crate::ns;
use crate::topology::{Plan, STREAM_PORT};

const BASE: &str = "table inet csl {
  chain part_in {}
  chain part_out {}
  chain loss_in {}
  chain srv_in {}
  chain input { type filter hook input priority 0; policy accept; jump part_in; jump loss_in; jump srv_in; }
  chain forward { type filter hook forward priority 0; policy accept; jump part_in; jump part_out; jump loss_in; }
  chain output { type filter hook output priority 0; policy accept; jump part_out; }
}
";

/// Installs the base table in every host namespace.
pub fn install(plan: &Plan) -> anyhow::Result<()> {
    for h in plan.hosts.values() {
        nft(&h.ns, BASE).with_context(|| format!("nftables base table on {}", h.name))?;
    }
    Ok(())
}

fn nft(nsname: &str, script: &str) -> anyhow::Result<()> {
    ns::exec_input(nsname, &["nft", "-f", "-"], Some(script)).map(|_| ())
}

fn addrs(plan: &Plan, hosts: &[String]) -> anyhow::Result<Vec<Ipv4Addr>> {
    let mut v = Vec::new();
    for h in hosts {
        v.extend(plan.host(h)?.ifaces.iter().map(|i| i.addr));
    }
    Ok(v)
}

fn addrs6(plan: &Plan, hosts: &[String]) -> anyhow::Result<Vec<Ipv6Addr>> {
    let mut v = Vec::new();
    for h in hosts {
        v.extend(plan.host(h)?.ifaces.iter().filter_map(|i| i.addr6));
    }
    Ok(v)
}

fn set<A: ToString>(a: &[A]) -> String {
    let v: Vec<String> = a.iter().map(ToString::to_string).collect();
    format!("{{ {} }}", v.join(", "))
}

/// Blocks `from` → `to` (packets from `from`'s hosts to `to`'s hosts are dropped, both at the
/// sender's output and the receiver's input).
fn block(plan: &Plan, from: &[String], to: &[String]) -> anyhow::Result<()> {
    let (fa, ta) = (addrs(plan, from)?, addrs(plan, to)?);
    // The IPv6 twins too, in the `ipv6` and `dual` topologies.
    let (fa6, ta6) = (addrs6(plan, from)?, addrs6(plan, to)?);
    for h in from {
        let mut rules = format!("add rule inet csl part_out ip daddr {} drop\n", set(&ta));
        if !ta6.is_empty() {
            rules += &format!("add rule inet csl part_out ip6 daddr {} drop\n", set(&ta6));
        }
        nft(&plan.host(h)?.ns, &rules)?;
    }
    for h in to {
        let mut rules = format!("add rule inet csl part_in ip saddr {} drop\n", set(&fa));
        if !fa6.is_empty() {
            rules += &format!("add rule inet csl part_in ip6 saddr {} drop\n", set(&fa6));
        }
        nft(&plan.host(h)?.ns, &rules)?;
    }
    Ok(())
}

/// Groups that cannot reach each other (both ways).
pub fn partition(plan: &Plan, groups: &[Vec<String>]) -> anyhow::Result<()> {
    for (i, a) in groups.iter().enumerate() {
        for b in &groups[i + 1..] {
            block(plan, a, b)?;
            block(plan, b, a)?;
        }
    }
    Ok(())
}

pub fn partition_oneway(plan: &Plan, o: &OneWay) -> anyhow::Result<()> {
    block(plan, &o.from, &o.to)
}

/// Removes every partition rule.
pub fn heal(plan: &Plan) -> anyhow::Result<()> {
    for h in plan.hosts.values() {
        nft(&h.ns, "flush chain inet csl part_in\nflush chain inet csl part_out\n")?;
    }
    Ok(())
}

/// Random loss on input: on every host, or between two hosts (each drops that share of what
/// it receives from the other). 0 % clears.
pub fn loss(plan: &Plan, l: &LinkSetting) -> anyhow::Result<()> {
    let pct = l.percent.round().clamp(0.0, 100.0) as u32;
    let rule = |src: Option<&[Ipv4Addr]>| {
        let m = src.map(|a| format!("ip saddr {} ", set(a))).unwrap_or_default();
        if pct == 0 {
            String::new()
        } else {
            format!("add rule inet csl loss_in {m}numgen random mod 100 < {pct} drop\n")
        }
    };
    match l.between.as_slice() {
        [] => {
            for h in plan.hosts.values() {
                nft(&h.ns, &format!("flush chain inet csl loss_in\n{}", rule(None)))?;
            }
        }
        [a, b] => {
            for (x, y) in [(a, b), (b, a)] {
                let src = addrs(plan, std::slice::from_ref(y))?;
                nft(&plan.host(x)?.ns, &rule(Some(&src)))?;
            }
        }
        _ => bail!("loss.between: expected two hosts or none"),
    }
    Ok(())
}

/// The hosts a `latency` step delays (each delays what it sends): every host, or the two
/// hosts of `between` (each only towards the other). Installs the queue rules and returns
/// the hosts, whose delay helpers the runner starts; 0 ms and 0 jitter clears. The rule is
/// an xtables `NFQUEUE` target through `iptables-nft` (this kernel has no nft `queue`
/// expression, but has the xtables target), with `--queue-bypass`: no helper, no delay.
pub fn latency(plan: &Plan, l: &LinkSetting) -> anyhow::Result<Vec<String>> {
    let clear = l.ms == 0 && l.jitter_ms == 0;
    let apply = |nsname: &str, dst: Option<&[Ipv4Addr]>| -> anyhow::Result<()> {
        ns::exec_input(nsname, &["iptables-nft", "-t", "mangle", "-F", "POSTROUTING"], None)?;
        if clear {
            return Ok(());
        }
        let queue = crate::delay::QUEUE.to_string();
        let mut args = vec!["iptables-nft", "-t", "mangle", "-A", "POSTROUTING", "!", "-o", "lo"];
        let dsts = dst.map(|a| a.iter().map(ToString::to_string).collect::<Vec<_>>().join(","));
        if let Some(d) = &dsts {
            args.extend(["-d", d.as_str()]);
        }
        args.extend(["-j", "NFQUEUE", "--queue-num", &queue, "--queue-bypass"]);
        ns::exec_input(nsname, &args, None).map(|_| ())
    };
    let mut hosts = Vec::new();
    match l.between.as_slice() {
        [] => {
            for h in plan.hosts.values() {
                apply(&h.ns, None)?;
                hosts.push(h.name.clone());
            }
        }
        [a, b] => {
            for (x, y) in [(a, b), (b, a)] {
                let dst = addrs(plan, std::slice::from_ref(y))?;
                apply(&plan.host(x)?.ns, Some(&dst))?;
                hosts.push(x.clone());
            }
        }
        _ => bail!("latency.between: expected two hosts or none"),
    }
    Ok(hosts)
}

/// A real server stops (`down`) or resumes answering: its service ports drop input.
pub fn server(plan: &Plan, host: &str, down: bool) -> anyhow::Result<()> {
    let h = plan.host(host)?;
    let script = if down {
        format!("add rule inet csl srv_in tcp dport {{ 80, {STREAM_PORT} }} drop\n")
    } else {
        "flush chain inet csl srv_in\n".to_string()
    };
    nft(&h.ns, &script)
}

/// `client` ignores the next `count` gratuitous announcements of `vip`. IPv4: ARP packets
/// whose sender and target are the VIP, dropped by an ARP-family rule. IPv6: unsolicited
/// Neighbor Advertisements (Solicited flag clear) whose target is the VIP, dropped by an
/// `ip6` rule on input (raw payload: the target at bits 64..192 of the ICMPv6 header, the
/// flag at bit 33). Either way a `numgen inc` counter only advances on matching packets.
pub fn miss_garp(plan: &Plan, client: &str, vip: IpAddr, count: u32) -> anyhow::Result<()> {
    let h = plan.host(client)?;
    let script = match vip {
        IpAddr::V4(vip) => format!(
            "table arp csl {{\n chain input {{ type filter hook input priority 0; policy accept; }}\n}}\n\
             add rule arp csl input arp saddr ip {vip} arp daddr ip {vip} numgen inc mod 1000000000 < {count} counter drop\n"
        ),
        IpAddr::V6(vip) => format!(
            "table ip6 cslnd {{\n chain input {{ type filter hook input priority -10; policy accept; }}\n}}\n\
             add rule ip6 cslnd input icmpv6 type nd-neighbor-advert @th,33,1 0 @th,64,128 {:#034x} \
             numgen inc mod 1000000000 < {count} counter drop\n",
            u128::from(vip)
        ),
    };
    nft(&h.ns, &script)
}
