//! The connection-sync decoder on arbitrary bytes, raw and with a valid MAC appended (so
//! the record parser behind the authentication check is reached), then applied to a shadow
//! engine through the receiver.
#![no_main]

use std::net::Ipv4Addr;

use clusterserver::config::{self, Forwarding, SchedulerKind, Service};
use clusterserver::dataplane::engine::{Engine, EngineConfig};
use clusterserver::dataplane::sync::{SyncReceiver, decode};
use clusterserver::time::Instant;
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const SECRET: &[u8] = b"fuzz";

fuzz_target!(|data: &[u8]| {
    let _ = decode(SECRET, 7, data);
    let mut signed = data.to_vec();
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET).unwrap();
    m.update(data);
    signed.extend_from_slice(&m.finalize().into_bytes());
    if let Ok(b) = decode(SECRET, 7, &signed) {
        assert_eq!(b.records().count(), b.len());
    }
    let svc = Service::builder("s", Ipv4Addr::new(192, 0, 2, 10), 80)
        .forwarding(Forwarding::Nat)
        .scheduler(SchedulerKind::Rr)
        .server("a", Ipv4Addr::new(10, 0, 1, 3), 8080, 1)
        .build();
    let mut e = Engine::new(&EngineConfig {
        services: vec![svc.settings()],
        table: config::Table { max_connections: 8, ..config::Table::default() },
        local_addr: Ipv4Addr::new(10, 0, 0, 1),
        local_addr6: core::net::Ipv6Addr::UNSPECIFIED,
        path_mtu: 1500,
        seed: 1,
    });
    e.set_active(false);
    let mut r = SyncReceiver::new(SECRET, 7);
    let _ = r.handle(Instant::from_millis(5), &signed, &mut e);
});
