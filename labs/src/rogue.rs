//! `clusterlab forge KIND COUNT INTERVAL_MS CLUSTER_ID PORT BROADCAST TARGET...`, run inside
//! the rogue namespace: sends `COUNT` forged heartbeats claiming a primary of a huge epoch,
//! signed with a guessed secret (`bad_mac`), or replays heartbeats it captured first
//! (`replay`, listening up to 2 s), to the subnet broadcast and to each ATM.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{Context, bail};
use clusterserver::core::heartbeat::HEARTBEAT_LEN;

use crate::traffic::unix_ms;

const CAPTURE_MAX: usize = 64;
const CAPTURE_MS: u64 = 2000;

#[derive(Debug)]
pub struct ForgeSpec {
    pub kind: String,
    pub count: u32,
    pub interval_ms: u64,
    pub cluster_id: u32,
    pub port: u16,
    pub targets: Vec<SocketAddr>,
}

pub fn forge(f: &ForgeSpec) -> anyhow::Result<()> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, f.port)).context("bind heartbeat port")?;
    sock.set_broadcast(true)?;
    let datagrams: Vec<Vec<u8>> = match f.kind.as_str() {
        "replay" => capture(&sock)?,
        "bad_mac" => (0..f.count).map(|i| bad_mac(f.cluster_id, u64::from(i))).collect(),
        other => bail!("forge kind {other:?}: expected bad_mac or replay"),
    };
    if datagrams.is_empty() {
        bail!("replay: captured no heartbeat in {CAPTURE_MS} ms");
    }
    let mut sent = 0u64;
    for i in 0..f.count as usize {
        let d = &datagrams[i % datagrams.len()];
        for t in &f.targets {
            if sock.send_to(d, t).is_ok() {
                sent += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(f.interval_ms));
    }
    println!("forge {}: {sent} datagrams sent ({} distinct)", f.kind, datagrams.len());
    Ok(())
}

fn capture(sock: &UdpSocket) -> anyhow::Result<Vec<Vec<u8>>> {
    let end = unix_ms() + CAPTURE_MS;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while unix_ms() < end && got.len() < CAPTURE_MAX {
        if let Ok((n, _)) = sock.recv_from(&mut buf)
            && n == HEARTBEAT_LEN
        {
            got.push(buf[..n].to_vec());
        }
    }
    Ok(got)
}

fn bad_mac(cluster_id: u32, i: u64) -> Vec<u8> {
    clustersim::rogue::bad_mac(cluster_id, 0, i)
}
