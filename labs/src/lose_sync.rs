//! `clusterlab lose-sync ME SYNC_PORT MAX_S` (run by the active-active lab inside a joining
//! ATM's namespace): loses one record datagram of each peer's full sync on join, the real
//! way, on the wire, so the lab can check that the daemon notices and asks again.
//!
//! The lab points the namespace's sync traffic (both directions, `iptables-nft` mangle
//! `NFQUEUE --queue-bypass`: without this helper nothing is held or lost) at queue
//! [`QUEUE`]. Once this ATM (`ME`) has sent a full-sync request, each peer's incoming record
//! datagrams are held one at a time (a newer one releases the older one; none is held longer
//! than [`HOLD`]); when the peer's end marker arrives, the record datagram held just before
//! it, the last one of the peer's answer, is dropped and the end marker let through. The
//! end marker counts that datagram, so the joiner must see the hole. Dropping the *last*
//! record rather than the first one after the request is deliberate: a record already in
//! flight when the peer got the request is not part of its answer, and losing it would test
//! nothing. After one loss per peer everything passes untouched.
//!
//! The sync header (`src/dataplane/sync/wire.rs`): magic `CSYN`, version, kind at byte 5
//! (0 records, 1 full-sync request, 2 end marker), sequence number at bytes 20..28. Every
//! decision is printed, one line each, for the lab's report. Bounded by `MAX_S` seconds and
//! by one held datagram per peer.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::Context;

/// The NFQUEUE number of this helper (the delay helper uses [`crate::delay::QUEUE`]).
pub const QUEUE: u16 = 8;
/// Longest a record datagram is held while waiting to see whether the end marker follows.
const HOLD: Duration = Duration::from_millis(50);

const MAGIC: &[u8; 4] = b"CSYN";
const RECORDS: u8 = 0;
const REQUEST: u8 = 1;
const END: u8 = 2;

/// What one queued packet is, as far as this helper cares.
#[derive(Debug, PartialEq, Eq)]
struct Sync {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    kind: u8,
    seq: u64,
}

/// Parses an IPv4/UDP packet carrying a sync datagram; `None` for anything else.
fn parse(pkt: &[u8]) -> Option<Sync> {
    let ihl = usize::from(*pkt.first()? & 0x0f) * 4;
    if pkt[0] >> 4 != 4 || *pkt.get(9)? != 17 || ihl < 20 {
        return None;
    }
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let dst = Ipv4Addr::new(*pkt.get(16)?, pkt[17], pkt[18], pkt[19]);
    let d = pkt.get(ihl + 8..)?;
    if d.len() < 28 || &d[0..4] != MAGIC {
        return None;
    }
    let seq = u64::from_be_bytes(d[20..28].try_into().ok()?);
    Some(Sync { src, dst, kind: d[5], seq })
}

/// Runs until `max_s` seconds have passed (or the lab ends the process).
pub fn run(me: Ipv4Addr, max_s: u64) -> anyhow::Result<()> {
    let mut q = nfq::Queue::open().context("opening an NFQUEUE socket")?;
    q.bind(QUEUE).with_context(|| format!("binding NFQUEUE {QUEUE}"))?;
    q.set_fail_open(QUEUE, true)?;
    q.set_nonblocking(true);
    println!("lose-sync: bound to NFQUEUE {QUEUE}, losing one record datagram per peer for {me}");
    let deadline = Instant::now() + Duration::from_secs(max_s.min(3600));
    let mut requested = false;
    // Per peer: the record datagram held (since when), and whether its loss is done.
    let mut held: BTreeMap<Ipv4Addr, (Instant, u64, nfq::Message)> = BTreeMap::new();
    let mut done: BTreeMap<Ipv4Addr, bool> = BTreeMap::new();
    let accept = |q: &mut nfq::Queue, mut m: nfq::Message| {
        m.set_verdict(nfq::Verdict::Accept);
        q.verdict(m)
    };
    while Instant::now() < deadline {
        loop {
            let mut msg = match q.recv() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("receiving from the NFQUEUE"),
            };
            let Some(s) = parse(msg.get_payload()) else {
                accept(&mut q, msg)?;
                continue;
            };
            if s.src == me {
                if s.kind == REQUEST && !requested {
                    requested = true;
                    println!("lose-sync: full-sync request sent to {}", s.dst);
                }
                accept(&mut q, msg)?;
                continue;
            }
            if s.dst != me || !requested || done.get(&s.src).copied().unwrap_or(false) {
                accept(&mut q, msg)?;
                continue;
            }
            match s.kind {
                RECORDS => {
                    if let Some((_, _, old)) = held.insert(s.src, (Instant::now(), s.seq, msg)) {
                        accept(&mut q, old)?;
                    }
                }
                END => {
                    if let Some((_, seq, mut last)) = held.remove(&s.src) {
                        last.set_verdict(nfq::Verdict::Drop);
                        q.verdict(last)?;
                        done.insert(s.src, true);
                        println!(
                            "lose-sync: dropped record datagram seq {seq} from {}, the last before its end marker",
                            s.src
                        );
                    } else {
                        println!("lose-sync: end marker from {} with no record datagram before it", s.src);
                    }
                    msg.set_verdict(nfq::Verdict::Accept);
                    q.verdict(msg)?;
                }
                _ => accept(&mut q, msg)?,
            }
        }
        let now = Instant::now();
        let stale: Vec<Ipv4Addr> =
            held.iter().filter(|(_, (t, _, _))| now.duration_since(*t) >= HOLD).map(|(p, _)| *p).collect();
        for p in stale {
            if let Some((_, _, m)) = held.remove(&p) {
                accept(&mut q, m)?;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    for (_, (_, _, m)) in std::mem::take(&mut held) {
        accept(&mut q, m)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(src: [u8; 4], dst: [u8; 4], kind: u8, seq: u64) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend(src);
        p.extend(dst);
        p.extend([0u8; 8]);
        p.extend(MAGIC);
        p.extend([1, kind, 0, 0, 0, 0, 0, 91]);
        p.extend([0u8; 8]);
        p.extend(seq.to_be_bytes());
        p
    }

    #[test]
    fn sync_datagrams_are_recognised_and_everything_else_is_not() {
        let p = packet([10, 91, 0, 1], [10, 91, 0, 2], END, 7);
        let want =
            Sync { src: Ipv4Addr::new(10, 91, 0, 1), dst: Ipv4Addr::new(10, 91, 0, 2), kind: END, seq: 7 };
        assert_eq!(parse(&p), Some(want));
        let mut tcp = p.clone();
        tcp[9] = 6;
        assert_eq!(parse(&tcp), None);
        let mut other = p.clone();
        other[28] = b'X';
        assert_eq!(parse(&other), None);
        assert_eq!(parse(&p[..40]), None);
    }
}
