//! The heartbeat path on arbitrary bytes: the raw datagram, then the same bytes shaped into
//! a correctly signed heartbeat (so the election state machine behind the MAC check is
//! reached), fed to an ATM node at growing times. Nothing may panic.
#![no_main]

use std::time::Duration;

use clusterserver::core::election::{ElectionConfig, Action};
use clusterserver::core::heartbeat::{HEARTBEAT_LEN, Heartbeat};
use clusterserver::core::atm::AtmCore;
use clusterserver::time::Instant;
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const SECRET: &[u8] = b"fuzz";

fn atm() -> AtmCore {
    let cfg = ElectionConfig {
        preempt: true,
        reach_total: 1,
        min_reachable: 1,
        garp_count: 3,
        garp_refresh: Some(Duration::from_secs(30)),
        digest: [0; 16],
        heartbeat_copies: 2,
        ..clusterserver::testkit::election(0, 3)
    };
    AtmCore::new(cfg, SECRET.to_vec(), 1, Instant::ZERO)
}

fuzz_target!(|data: &[u8]| {
    let _ = Heartbeat::decode(data, 7, SECRET);
    let mut n = atm();
    let mut t = 0u64;
    for chunk in data.chunks(HEARTBEAT_LEN - 32) {
        t += u64::from(chunk.first().copied().unwrap_or(0)) * 3;
        let now = Instant::from_millis(t);
        n.handle_datagram(now, chunk);
        let mut body = [0u8; HEARTBEAT_LEN];
        body[..chunk.len()].copy_from_slice(chunk);
        body[0..4].copy_from_slice(b"CSHB");
        body[4] = 1;
        body[5] = 1;
        body[8..12].copy_from_slice(&7u32.to_be_bytes());
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET).unwrap();
        m.update(&body[..64]);
        body[64..].copy_from_slice(&m.finalize().into_bytes());
        n.handle_datagram(now, &body);
        n.handle_probe(now, usize::from(chunk.len() % 2), chunk.len() % 3 != 0);
        n.handle_timeout(now);
        while let Some(a) = n.poll_action() {
            if let Action::SendHeartbeat(hb) = a {
                let _ = n.seal(&hb);
            }
        }
    }
});
