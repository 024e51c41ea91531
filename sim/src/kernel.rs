//! What every simulated host's kernel does on its own, process or not: answer ARP requests
//! for the VIPs it holds, keep the ARP cache of a client (see [`crate::client`]), and answer
//! echo requests (the reachlist probes); on a host with an IPv6 address, the same over
//! Neighbor Discovery ([`crate::ndp`]). It keeps running while the daemon is frozen.

use std::net::{IpAddr, SocketAddr};

use crate::ndp::NDP_PORT;
use crate::net::{ARP_PORT, ECHO_PORT, SimClock, SimSocket};
use crate::world::{Neigh, Shared};

/// A host's software: a fresh kernel, then `main`. turmoil calls the result again on every
/// restart of the host.
pub fn with_kernel<M, Fut>(
    world: Shared,
    name: String,
    main: M,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = turmoil::Result>>>
where
    M: Fn(Shared, String) -> Fut + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + 'static,
{
    let main = std::rc::Rc::new(main);
    move || {
        let (world, name, main) = (world.clone(), name.clone(), main.clone());
        Box::pin(async move {
            world.borrow_mut().host_started(&name);
            tokio::task::spawn_local(kernel(world.clone(), name.clone()));
            main(world, name).await?;
            Ok(())
        })
    }
}

/// Runs the host's kernel until the host crashes.
pub async fn kernel(world: Shared, name: String) {
    let (Ok(arp), Ok(echo)) =
        (SimSocket::bind(&world, &name, ARP_PORT).await, SimSocket::bind(&world, &name, ECHO_PORT).await)
    else {
        world.borrow_mut().log(0, &name, "kernel: cannot bind ARP/echo ports");
        return;
    };
    // Only a host with an IPv6 address binds NDP (IPv4 runs stay as they were).
    let ndp = if world.borrow().hosts.get(&name).is_some_and(|h| h.addr6.is_some()) {
        SimSocket::bind(&world, &name, NDP_PORT).await.ok()
    } else {
        None
    };
    let clock = SimClock::start();
    let mut buf = [0u8; 256];
    let mut ebuf = [0u8; 256];
    let mut nbuf = [0u8; 256];
    loop {
        tokio::select! {
            biased;
            r = async { match &ndp { Some(s) => s.recv(&mut nbuf).await, None => std::future::pending().await } } => {
                if let (Ok((n, _)), Some(sock)) = (r, &ndp)
                    && let Some(answer) = crate::ndp::on_frame(&world, &name, clock.ms(), &nbuf[..n])
                {
                    crate::ndp::send(sock, &answer).await;
                }
            }
            r = arp.recv(&mut buf) => {
                if let Ok((n, from)) = r {
                    let reply = on_arp(&world, &name, clock.ms(), &buf[..n], from);
                    if let Some((msg, to)) = reply {
                        let _ = arp.send(msg.as_bytes(), to).await;
                    }
                }
            }
            r = echo.recv(&mut ebuf) => {
                if let Ok((n, from)) = r {
                    let _ = echo.send(&ebuf[..n], from).await;
                }
            }
        }
    }
}

/// Handles one ARP datagram: `WHO <vip>`, `ISAT <vip>`, `GARP <vip>`; the owner is the sender.
fn on_arp(world: &Shared, name: &str, ms: u64, msg: &[u8], from: SocketAddr) -> Option<(String, SocketAddr)> {
    let text = std::str::from_utf8(msg).ok()?;
    let (verb, vip) = text.split_once(' ')?;
    let vip: IpAddr = vip.parse().ok()?;
    let mut w = world.borrow_mut();
    let owner_name = w.name_of(from.ip());
    let reach_ms = 15_000 + w.rng.next_u64() % 30_000;
    let h = w.host(name);
    match verb {
        "WHO" if h.vips.contains(&vip) => Some((format!("ISAT {vip}"), SocketAddr::new(from.ip(), ARP_PORT))),
        "ISAT" => {
            let fresh = Neigh {
                owner: from.ip(),
                confirmed_ms: ms,
                reachable_ms: reach_ms,
                probes: 0,
                next_probe_ms: 0,
            };
            let changed = h.neigh.get(&vip).is_none_or(|n| n.owner != from.ip());
            h.neigh.insert(vip, fresh);
            if changed {
                w.log(ms, name, format!("arp {vip} -> {owner_name} (reply)"));
            }
            None
        }
        "GARP" => {
            // arp_accept=0: a gratuitous ARP updates an existing entry, never creates one.
            h.neigh.get(&vip)?;
            if h.miss_garp > 0 {
                h.miss_garp -= 1;
                w.log(ms, name, format!("arp {vip}: missed a gratuitous ARP from {owner_name}"));
                return None;
            }
            let n = h.neigh.get_mut(&vip)?;
            if n.owner != from.ip() {
                n.owner = from.ip();
                n.probes = 0;
                w.log(ms, name, format!("arp {vip} -> {owner_name} (gratuitous)"));
            }
            None
        }
        _ => None,
    }
}
