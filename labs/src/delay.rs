//! User-space link delay for the `latency` step: this kernel has no netem, so each affected
//! host's namespace sends its outgoing IPv4 packets to an NFQUEUE (nftables `queue`, with
//! `bypass`: no listener, no delay) and `clusterlab delay` holds each one for `ms` plus a
//! uniform `0..=jitter_ms`, then accepts it. Like netem, jitter may reorder packets.
//!
//! Bounded: at most [`MAX_HELD`] packets held (beyond that a packet is accepted at once) and
//! a run time cap. The random source is a seeded xorshift, not a thread RNG.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use anyhow::Context;

use crate::traffic::unix_ms;

/// The NFQUEUE number the lab uses for delays.
pub const QUEUE: u16 = 7;
/// Most packets held at once.
const MAX_HELD: usize = 4096;

/// Parameters of one host's delay helper.
#[derive(Clone, Copy, Debug)]
pub struct DelaySpec {
    pub ms: u64,
    pub jitter_ms: u64,
    pub seed: u64,
    pub max_s: u64,
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Runs until `max_s` seconds have passed (or the lab ends the process).
pub fn run(spec: DelaySpec) -> anyhow::Result<()> {
    let mut q = nfq::Queue::open().context("opening an NFQUEUE socket")?;
    q.bind(QUEUE).with_context(|| format!("binding NFQUEUE {QUEUE}"))?;
    q.set_fail_open(QUEUE, true)?;
    q.set_nonblocking(true);
    let mut rng = XorShift(spec.seed | 1);
    let deadline = unix_ms() + spec.max_s * 1000;
    let mut due: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut held: BTreeMap<u64, nfq::Message> = BTreeMap::new();
    let mut seq = 0u64;
    while unix_ms() < deadline {
        loop {
            match q.recv() {
                Ok(mut msg) => {
                    let delay = spec.ms + rng.next() % (spec.jitter_ms + 1);
                    if held.len() >= MAX_HELD || delay == 0 {
                        msg.set_verdict(nfq::Verdict::Accept);
                        q.verdict(msg)?;
                        continue;
                    }
                    seq += 1;
                    due.push(Reverse((unix_ms() + delay, seq)));
                    held.insert(seq, msg);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("receiving from the NFQUEUE"),
            }
        }
        let now = unix_ms();
        while let Some(&Reverse((t, s))) = due.peek() {
            if t > now {
                break;
            }
            due.pop();
            if let Some(mut msg) = held.remove(&s) {
                msg.set_verdict(nfq::Verdict::Accept);
                q.verdict(msg)?;
            }
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    for (_, mut msg) in std::mem::take(&mut held) {
        msg.set_verdict(nfq::Verdict::Accept);
        q.verdict(msg)?;
    }
    Ok(())
}
