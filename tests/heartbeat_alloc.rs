//! The heartbeat path of the control core allocates nothing in steady state: sealing,
//! authenticating and accepting a heartbeat, the timers and the action queue reuse what
//! they allocated at start-up. (The daemon's heartbeat thread adds a UDP `send_to` /
//! `recv_from` and the atomic timing histograms, which allocate nothing either.)
//!
//! A counting global allocator, per thread: this test binary holds only this test, and the
//! count is of this thread's allocations alone.

#![allow(unsafe_code)] // reason: a counting global allocator needs `unsafe impl GlobalAlloc`

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use clusterserver::core::atm::AtmCore;
use clusterserver::core::election::{Action, ElectionConfig};
use clusterserver::time::Instant;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a thread-local `Cell` (no
// allocation of its own: a `const` initialiser).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCS.with(Cell::get)
}

fn cfg(me: usize) -> ElectionConfig {
    ElectionConfig {
        heartbeat: Duration::from_millis(5),
        garp_count: 3,
        garp_interval: Duration::from_millis(5),
        ..clusterserver::testkit::election(me, 2)
    }
}

/// One step of both nodes at `now`: timers, then each one's heartbeats to the other.
fn step(nodes: &mut [AtmCore; 2], now: Instant) -> usize {
    let mut delivered = 0;
    for from in 0..2 {
        nodes[from].handle_timeout(now);
        while let Some(a) = nodes[from].poll_action() {
            if let Action::SendHeartbeat(hb) = a {
                let bytes = nodes[from].seal(&hb);
                let to = &mut nodes[1 - from];
                to.handle_datagram(now, &bytes);
                delivered += usize::from(to.take_accepted().is_some());
            }
        }
        let _ = nodes[from].poll_timeout();
    }
    delivered
}

#[test]
fn steady_state_heartbeats_allocate_nothing() {
    let start = Instant::from_nanos(0);
    let mut nodes = [
        AtmCore::new(cfg(0), b"secret".to_vec(), 1, start),
        AtmCore::new(cfg(1), b"secret".to_vec(), 2, start),
    ];
    let tick = Duration::from_millis(5);
    let mut now = start;
    // Warm-up: election, promotion and its gratuitous ARPs (which clone the VIP list),
    // queues grown to their working size.
    for _ in 0..100 {
        now += tick;
        step(&mut nodes, now);
    }
    let before = allocations();
    let mut delivered = 0;
    for _ in 0..2000 {
        now += tick;
        delivered += step(&mut nodes, now);
    }
    let allocated = allocations() - before;
    assert!(delivered >= 3990, "both nodes heard each other: {delivered}");
    assert_eq!(allocated, 0, "allocations on the steady-state heartbeat path");
}
