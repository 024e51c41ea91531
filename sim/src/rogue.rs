//! A rogue host on the LAN: it captures the heartbeats it can hear and, on a `forge` step,
//! sends heartbeats signed with a guessed secret (`bad_mac`) or replays captured ones
//! (`replay`), claiming to be a primary of a very high epoch. The ATMs must drop and count
//! every one of them and keep their roles.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use clusterserver::core::heartbeat::{FLAG_ELIGIBLE, HEARTBEAT_LEN, Heartbeat, NO_HANDOVER, WireRole};

use crate::net::{BROADCAST, SimClock, SimSocket};
use crate::world::Shared;

const CAPTURE_MAX: usize = 64;

/// The software of the rogue host.
pub fn software(
    world: Shared,
    cluster_id: u32,
    port: u16,
    atms: Vec<SocketAddr>,
) -> impl Fn() -> Pin<Box<dyn Future<Output = turmoil::Result>>> {
    move || {
        let (world, atms) = (world.clone(), atms.clone());
        Box::pin(async move {
            world.borrow_mut().host_started("rogue");
            let sock = SimSocket::bind(&world, "rogue", port).await?;
            let clock = SimClock::start();
            let mut buf = [0u8; 256];
            loop {
                tokio::select! {
                    biased;
                    r = sock.recv(&mut buf) => {
                        let (n, _) = r?;
                        let mut w = world.borrow_mut();
                        if n == HEARTBEAT_LEN && w.captured.len() < CAPTURE_MAX {
                            w.captured.push(buf[..n].to_vec());
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {
                        let job = world.borrow_mut().forge_queue.pop_front();
                        if let Some(f) = job {
                            let targets: Vec<SocketAddr> =
                                std::iter::once(SocketAddr::new(BROADCAST, port)).chain(atms.iter().copied()).collect();
                            world.borrow_mut().log(clock.ms(), "rogue", format!("forging {} x{} ({})", f.count, f.kind, targets.len()));
                            for i in 0..f.count {
                                let datagrams = forge(&world, &f.kind, cluster_id, u64::from(i));
                                for d in &datagrams {
                                    for t in &targets {
                                        let _ = sock.send(d, *t).await;
                                    }
                                }
                                tokio::time::sleep(Duration::from_millis(f.interval_ms)).await;
                            }
                        }
                    }
                }
            }
        })
    }
}

fn forge(world: &Shared, kind: &str, cluster_id: u32, i: u64) -> Vec<Vec<u8>> {
    match kind {
        "replay" => {
            let w = world.borrow();
            let n = w.captured.len();
            if n == 0 {
                return Vec::new();
            }
            vec![w.captured[(i as usize) % n].clone()]
        }
        _ => vec![bad_mac(cluster_id, 1, i)],
    }
}

/// A heartbeat claiming to be ATM `sender`, primary of a huge epoch, signed with a guessed
/// secret: every ATM must drop it as `bad_mac`. Shared with the labs' rogue host.
pub fn bad_mac(cluster_id: u32, sender: u16, i: u64) -> Vec<u8> {
    Heartbeat {
        cluster_id,
        sender,
        interval_ms: 100,
        incarnation: u64::MAX / 2,
        seq: i + 1,
        epoch: 1_000_000,
        role: WireRole::Primary,
        flags: FLAG_ELIGIBLE,
        reach_ok: 9,
        reach_total: 9,
        peers_up: 9,
        handover_to: NO_HANDOVER,
        holding: 0,
        digest: [0; 16],
    }
    .encode(b"a guessed secret")
    .to_vec()
}
