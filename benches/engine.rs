//! Packet-engine benchmarks (divan): the per-packet cost of `Engine::process` on a
//! connection hit for each forwarding method, and on a miss that schedules a new flow.
//!
//! Run: `cargo bench --bench engine`. The table is sized like production (1,000,000
//! connections) and holds 100,000 established flows before measuring. The `*6` benches are
//! the same loads over IPv6 (issue 14 asks an IPv6 NAT hit to cost at most 1.25x the
//! IPv4 one: compare `nat_hit6` with `nat_hit` of the same run).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use clusterserver::config::{self, Forwarding, SchedulerKind, Service};
use clusterserver::dataplane::engine::{Engine, EngineConfig, Verdict};
use clusterserver::dataplane::wire::tcp::flags::{ACK, SYN};
use clusterserver::dataplane::wire::{Ipv4Packet, TcpPacket, build};
use clusterserver::testkit;
use clusterserver::time::Instant;
use divan::{Bencher, black_box};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const FLOWS: u32 = 100_000;

fn main() {
    divan::main();
}

const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 0x80);

fn engine(forwarding: Forwarding) -> Engine {
    engine_of(forwarding, false)
}

fn engine_of(forwarding: Forwarding, v6: bool) -> Engine {
    let port = if forwarding == Forwarding::Nat { 8080 } else { 80 };
    let servers = (0..8).map(|i| {
        let address = if v6 {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 10 + u16::from(i)))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 0, 1, 10 + i))
        };
        testkit::server(&format!("s{i}"), address, port, 1)
    });
    let vip = if v6 { IpAddr::V6(VIP6) } else { IpAddr::V4(VIP) };
    let svc = Service::builder("web", vip, 80)
        .forwarding(forwarding)
        .scheduler(SchedulerKind::Rr)
        .servers(servers)
        .build();
    Engine::new(&EngineConfig {
        services: vec![svc.settings()],
        table: config::Table::default(),
        local_addr: Ipv4Addr::new(10, 0, 0, 1),
        local_addr6: Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 1),
        path_mtu: 1500,
        seed: 1,
    })
}

fn client(n: u32) -> (Ipv4Addr, u16) {
    (Ipv4Addr::from_bits(0x0A00_0000u32.wrapping_add(n >> 4)), 10_000 + (n & 15) as u16)
}

/// An engine of the given method holding `FLOWS` connections, and an ACK of one of them
/// carrying 100 bytes.
fn warmed(forwarding: Forwarding) -> (Engine, Vec<u8>) {
    let mut e = engine(forwarding);
    let mut tx = vec![0u8; 2048];
    for n in 0..FLOWS {
        let syn = build::tcp(client(n), (VIP, 80), SYN, b"");
        let v = e.process(Instant::ZERO, &syn, &mut tx);
        assert!(!matches!(v, Verdict::Drop(_)), "{v:?}");
    }
    let ack = build::tcp(client(FLOWS / 2), (VIP, 80), ACK, &[0x55; 100]);
    (e, ack)
}

fn hit(bencher: Bencher, forwarding: Forwarding) {
    let (mut e, pkt) = warmed(forwarding);
    let mut tx = vec![0u8; 2048];
    let now = Instant::from_millis(1);
    bencher.bench_local(|| black_box(e.process(now, black_box(&pkt), &mut tx)));
}

/// NAT, client → server, connection hit.
#[divan::bench(sample_count = 100, sample_size = 2000)]
fn nat_hit(bencher: Bencher) {
    hit(bencher, Forwarding::Nat);
}

/// Direct routing, connection hit.
#[divan::bench(sample_count = 100, sample_size = 2000)]
fn dr_hit(bencher: Bencher) {
    hit(bencher, Forwarding::Dr);
}

/// IP-in-IP encapsulation, connection hit.
#[divan::bench(sample_count = 100, sample_size = 2000)]
fn tunnel_hit(bencher: Bencher) {
    hit(bencher, Forwarding::Tunnel);
}

/// NAT hits spread over all 100,000 flows in stride (table entries and index buckets
/// cache-cold, as with many concurrent connections). The packet buffer stays hot, as a
/// just-received packet is: each iteration rewrites its source to the next flow (a few ns
/// of the figure).
#[divan::bench(sample_count = 100, sample_size = 2000)]
fn nat_hit_spread(bencher: Bencher) {
    let (mut e, mut pkt) = warmed(Forwarding::Nat);
    let mut tx = vec![0u8; 2048];
    let now = Instant::from_millis(1);
    let mut n = 0u32;
    bencher.bench_local(|| {
        n = (n + 7919) % FLOWS;
        let (addr, port) = client(n);
        Ipv4Packet::new_unchecked(&mut pkt[..]).set_src_addr(addr);
        TcpPacket::new_unchecked(&mut pkt[20..]).set_src_port(port);
        black_box(e.process(now, black_box(&pkt), &mut tx))
    });
}

/// NAT, a SYN of a new flow: miss, round-robin pick, insert (evicting the oldest
/// half-open entry once the table is full), rewrite.
#[divan::bench(sample_count = 100, sample_size = 2000)]
fn nat_miss_schedule(bencher: Bencher) {
    let (mut e, _) = warmed(Forwarding::Nat);
    let mut tx = vec![0u8; 2048];
    let mut n = FLOWS;
    bencher
        .with_inputs(|| {
            n = n.wrapping_add(1);
            build::tcp(client(n), (VIP, 80), SYN, b"")
        })
        .bench_local_refs(|syn| black_box(e.process(Instant::from_millis(1), syn, &mut tx)));
}

fn client6(n: u32) -> (Ipv6Addr, u16) {
    let (a, p) = client(n);
    (Ipv6Addr::from_bits(0x2001_0db8_0099_0000_0000_0000_0000_0000 | u128::from(a.to_bits())), p)
}

/// As [`warmed`], over IPv6.
fn warmed6(forwarding: Forwarding) -> (Engine, Vec<u8>) {
    let mut e = engine_of(forwarding, true);
    let mut tx = vec![0u8; 2048];
    for n in 0..FLOWS {
        let syn = build::tcp6(client6(n), (VIP6, 80), SYN, b"");
        let v = e.process(Instant::ZERO, &syn, &mut tx);
        assert!(!matches!(v, Verdict::Drop(_)), "{v:?}");
    }
    let ack = build::tcp6(client6(FLOWS / 2), (VIP6, 80), ACK, &[0x55; 100]);
    (e, ack)
}

fn hit6(bencher: Bencher, forwarding: Forwarding) {
    let (mut e, pkt) = warmed6(forwarding);
    let mut tx = vec![0u8; 2048];
    let now = Instant::from_millis(1);
    bencher.bench_local(|| black_box(e.process(now, black_box(&pkt), &mut tx)));
}

/// NAT66, client → server, connection hit.
#[divan::bench(sample_count = 100, sample_size = 2000)]
fn nat_hit6(bencher: Bencher) {
    hit6(bencher, Forwarding::Nat);
}

/// Direct routing over IPv6, connection hit.
#[divan::bench(sample_count = 100, sample_size = 2000)]
fn dr_hit6(bencher: Bencher) {
    hit6(bencher, Forwarding::Dr);
}

/// IPv6-in-IPv6, connection hit.
#[divan::bench(sample_count = 100, sample_size = 2000)]
fn tunnel_hit6(bencher: Bencher) {
    hit6(bencher, Forwarding::Tunnel);
}

/// NAT66, a SYN of a new flow.
#[divan::bench(sample_count = 100, sample_size = 2000)]
fn nat_miss_schedule6(bencher: Bencher) {
    let (mut e, _) = warmed6(Forwarding::Nat);
    let mut tx = vec![0u8; 2048];
    let mut n = FLOWS;
    bencher
        .with_inputs(|| {
            n = n.wrapping_add(1);
            build::tcp6(client6(n), (VIP6, 80), SYN, b"")
        })
        .bench_local_refs(|syn| black_box(e.process(Instant::from_millis(1), syn, &mut tx)));
}

/// Reference point, not the engine: one dependent random read in a 64 MB array (a pointer
/// chase), i.e. the cost of a single cache and TLB miss on this machine. A cold table hit
/// needs two such reads (index bucket, then entry).
#[divan::bench(sample_count = 100, sample_size = 2000)]
fn reference_dram_miss(bencher: Bencher) {
    const N: usize = 16 << 20;
    let mut next: Vec<u32> = (0..N as u32).collect();
    // Sattolo's algorithm with a fixed LCG: one cycle through every element.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..N).rev() {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let j = (x >> 33) as usize % i;
        next.swap(i, j);
    }
    let mut at = 0u32;
    bencher.bench_local(|| {
        at = next[at as usize];
        black_box(at)
    });
}
