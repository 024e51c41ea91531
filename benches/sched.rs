//! Scheduler benchmarks: the cost of one pick (paid once per new connection) for every kind,
//! and of building a Maglev table (paid on every weight or health change).
//!
//! `cargo bench --bench sched`
//!
//! Medians measured on the shared 2-vCPU VM (servers of weights 1, 51, 101, 151 in turn):
//!
//! | pick | 10 servers | 100 servers |
//! | --- | --- | --- |
//! | rr | 3.4 ns | 5.4 ns |
//! | wrr | 20.6 ns | 185 ns |
//! | lc | 14.7 ns | 117 ns |
//! | wlc | 15.9 ns | 136 ns |
//! | sh | 10.7 ns | 10.7 ns |
//! | mh | 5.4 ns | 5.4 ns |
//!
//! Maglev build, M = 65537: 10 servers ~1.9 ms, 100 ~3.3 ms, 1000 ~3.8 ms (fastest of 10;
//! medians up to 2x on the busy machine).

use std::net::{IpAddr, Ipv4Addr};

use clusterserver::dataplane::sched::{SchedulerKind, ServerSlot, build, maglev::MaglevTable, server_key};

fn main() {
    divan::main();
}

fn servers(n: usize) -> Vec<ServerSlot> {
    (0..n)
        .map(|i| ServerSlot {
            weight: 1 + (i as u32 % 4) * 50,
            up: true,
            active_conns: (i as u32 * 7919) % 1000,
            key: server_key(&format!("s{i}"), IpAddr::V4(Ipv4Addr::new(10, 1, (i >> 8) as u8, i as u8)), 80),
        })
        .collect()
}

const KINDS: [SchedulerKind; 6] = SchedulerKind::ALL;

/// One pick among 10 and 100 servers.
#[divan::bench(args = KINDS, consts = [10, 100])]
fn pick<const N: usize>(bencher: divan::Bencher, kind: SchedulerKind) {
    let servers = servers(N);
    let mut s = build(kind, &servers);
    let mut n: u64 = 0;
    bencher.bench_local(|| {
        n = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let client = IpAddr::V4(Ipv4Addr::from((n >> 32) as u32));
        s.pick(divan::black_box(n), client, &servers)
    });
}

/// Building the default-size (65537) Maglev table.
#[divan::bench(args = [10, 100, 1000], sample_count = 10)]
fn maglev_build(bencher: divan::Bencher, n: usize) {
    let servers = servers(n);
    bencher.bench(|| MaglevTable::build(divan::black_box(&servers), 65537));
}
