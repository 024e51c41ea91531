//! The four AF_XDP rings (fill, completion, RX, TX): single-producer, single-consumer
//! queues in memory shared with the kernel.
//!
//! Each ring is `size` (a power of two) descriptors plus a `producer` and a `consumer`
//! index: free-running `u32`s that wrap, so `producer - consumer` (wrapping) is the number
//! of entries whatever their values, and entry `i` lives at `i & (size - 1)`. The side that
//! writes entries publishes them with a release store of its index after writing them; the
//! other side reads that index with an acquire load before reading entries. Each side keeps
//! a cached copy of the other's index and reads the shared one only when the cache says the
//! ring is full (producer) or empty (consumer): one shared-memory read per batch, not per
//! entry. The kernel's `flags` word carries `XDP_RING_NEED_WAKEUP`.
//!
//! User space produces into the fill and TX rings and consumes from the RX and completion
//! rings ([`Producer`], [`Consumer`]).
#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};

/// `XDP_RING_NEED_WAKEUP`.
pub const NEED_WAKEUP: u32 = 1;

/// Entries in a ring whose producer index is `prod` and consumer index `cons`.
pub fn entries(prod: u32, cons: u32) -> u32 {
    prod.wrapping_sub(cons)
}

/// Free slots in a ring of `size`.
pub fn free(size: u32, prod: u32, cons: u32) -> u32 {
    size - entries(prod, cons).min(size)
}

/// The shared parts of one ring (pointers into an mmap'd area that outlives the ring).
#[derive(Debug)]
struct Raw<T> {
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    desc: *mut T,
    mask: u32,
}

// SAFETY: the pointers target memory mapped for the ring's owner (one worker thread); the
// ring is moved to that thread once and used only there. The kernel is the other party and
// synchronises through the atomics.
unsafe impl<T: Send> Send for Raw<T> {}

impl<T: Copy> Raw<T> {
    fn size(&self) -> u32 {
        self.mask + 1
    }
    fn load(&self, p: *const AtomicU32, o: Ordering) -> u32 {
        // SAFETY: `p` points to an aligned u32 of the live ring mapping (see `Ring::new`).
        unsafe { (*p).load(o) }
    }
    fn store(&self, p: *const AtomicU32, v: u32) {
        // SAFETY: as in `load`; only this side writes its own index.
        unsafe { (*p).store(v, Ordering::Release) }
    }
    fn read(&self, i: u32) -> T {
        // SAFETY: `i & mask` < size, inside the descriptor array of the live mapping; the
        // entry was published by the producer's release store, acquired before this read.
        unsafe { self.desc.add((i & self.mask) as usize).read_volatile() }
    }
    fn write(&self, i: u32, v: T) {
        // SAFETY: `i & mask` < size; the slot is free (between cached producer and consumer
        // + size), so the kernel does not read it until the producer index is published.
        unsafe { self.desc.add((i & self.mask) as usize).write_volatile(v) }
    }
}

/// Where one ring lives: its index words and descriptor array.
#[derive(Clone, Copy, Debug)]
pub struct RingPtrs<T> {
    pub producer: *mut u32,
    pub consumer: *mut u32,
    pub flags: *mut u32,
    pub desc: *mut T,
    pub size: u32,
}

impl<T: Copy> RingPtrs<T> {
    fn raw(self) -> Raw<T> {
        assert!(self.size.is_power_of_two(), "ring size must be a power of two");
        Raw {
            producer: self.producer.cast(),
            consumer: self.consumer.cast(),
            flags: self.flags.cast(),
            desc: self.desc,
            mask: self.size - 1,
        }
    }
}

/// The side of a ring that user space fills (fill and TX rings).
#[derive(Debug)]
pub struct Producer<T> {
    raw: Raw<T>,
    cached_prod: u32,
    cached_cons: u32,
    _t: PhantomData<T>,
}

impl<T: Copy> Producer<T> {
    /// # Safety
    /// `p` must describe a ring mapping that stays mapped and aligned for the producer's
    /// life, of which this is the only user-space producer.
    pub unsafe fn new(p: RingPtrs<T>) -> Producer<T> {
        let raw = p.raw();
        let cached_prod = raw.load(raw.producer, Ordering::Relaxed);
        let cached_cons = raw.load(raw.consumer, Ordering::Acquire);
        Producer { raw, cached_prod, cached_cons, _t: PhantomData }
    }

    /// Slots free for writing, refreshing the consumer index only if fewer than `want`.
    pub fn free(&mut self, want: u32) -> u32 {
        let f = free(self.raw.size(), self.cached_prod, self.cached_cons);
        if f >= want {
            return f;
        }
        self.cached_cons = self.raw.load(self.raw.consumer, Ordering::Acquire);
        free(self.raw.size(), self.cached_prod, self.cached_cons)
    }

    /// Writes `items` (at most [`Producer::free`] of them: the rest is not written) and
    /// publishes them. Returns how many were written.
    pub fn push(&mut self, items: &[T]) -> usize {
        let n = (self.free(items.len() as u32) as usize).min(items.len());
        for (k, it) in items[..n].iter().enumerate() {
            self.raw.write(self.cached_prod.wrapping_add(k as u32), *it);
        }
        if n > 0 {
            self.cached_prod = self.cached_prod.wrapping_add(n as u32);
            self.raw.store(self.raw.producer, self.cached_prod);
        }
        n
    }

    /// Whether the kernel asks to be woken (`sendto`/`poll`) to consume this ring.
    pub fn needs_wakeup(&self) -> bool {
        self.raw.load(self.raw.flags, Ordering::Relaxed) & NEED_WAKEUP != 0
    }

    /// Entries written and not yet consumed by the kernel (as last seen).
    pub fn pending(&mut self) -> u32 {
        self.cached_cons = self.raw.load(self.raw.consumer, Ordering::Acquire);
        entries(self.cached_prod, self.cached_cons)
    }
}

/// The side of a ring that user space drains (RX and completion rings).
#[derive(Debug)]
pub struct Consumer<T> {
    raw: Raw<T>,
    cached_prod: u32,
    cached_cons: u32,
}

impl<T: Copy> Consumer<T> {
    /// # Safety
    /// As [`Producer::new`], for the only user-space consumer.
    pub unsafe fn new(p: RingPtrs<T>) -> Consumer<T> {
        let raw = p.raw();
        let cached_cons = raw.load(raw.consumer, Ordering::Relaxed);
        let cached_prod = raw.load(raw.producer, Ordering::Acquire);
        Consumer { raw, cached_prod, cached_cons }
    }

    /// Entries ready, refreshing the producer index only if the cache shows fewer than `want`.
    pub fn available(&mut self, want: u32) -> u32 {
        let e = entries(self.cached_prod, self.cached_cons);
        if e >= want {
            return e;
        }
        self.cached_prod = self.raw.load(self.raw.producer, Ordering::Acquire);
        entries(self.cached_prod, self.cached_cons)
    }

    /// Reads up to `out.len()` entries into `out` and releases their slots to the producer.
    pub fn pop(&mut self, out: &mut [T]) -> usize {
        let n = (self.available(out.len() as u32) as usize).min(out.len());
        for (k, o) in out[..n].iter_mut().enumerate() {
            *o = self.raw.read(self.cached_cons.wrapping_add(k as u32));
        }
        if n > 0 {
            self.cached_cons = self.cached_cons.wrapping_add(n as u32);
            self.raw.store(self.raw.consumer, self.cached_cons);
        }
        n
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn arithmetic_wraps() {
        assert_eq!(entries(5, 3), 2);
        assert_eq!(entries(2, u32::MAX - 1), 4, "producer wrapped past zero");
        assert_eq!(free(8, 2, u32::MAX - 1), 4);
        assert_eq!(free(8, 10, 2), 0);
        assert_eq!(free(8, 3, 3), 8);
    }

    /// A ring in ordinary memory, the test playing the kernel's side (`idx`: producer,
    /// consumer, flags).
    pub(crate) struct Mem {
        pub(crate) idx: Box<[u32; 3]>,
        desc: Vec<u64>,
    }

    impl Mem {
        pub(crate) fn new(size: u32, start: u32) -> Mem {
            Mem { idx: Box::new([start, start, 0]), desc: vec![0; size as usize] }
        }
        pub(crate) fn ptrs(&mut self) -> RingPtrs<u64> {
            let base = self.idx.as_mut_ptr();
            // SAFETY (test): indices 0..3 are inside the boxed array.
            let (producer, consumer, flags) = unsafe { (base, base.add(1), base.add(2)) };
            RingPtrs { producer, consumer, flags, desc: self.desc.as_mut_ptr(), size: self.desc.len() as u32 }
        }
    }

    #[test]
    fn producer_and_consumer_across_the_wrap() {
        let start = u32::MAX - 2;
        let mut m = Mem::new(4, start);
        // SAFETY (test): `m` outlives both ends; one producer and one consumer.
        let (mut p, mut c) = unsafe { (Producer::new(m.ptrs()), Consumer::new(m.ptrs())) };
        assert_eq!(p.push(&[1, 2, 3, 4, 5]), 4, "only the ring's size fits");
        assert_eq!(p.free(1), 0);
        let mut out = [0u64; 3];
        assert_eq!(c.pop(&mut out), 3);
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(p.free(1), 3, "the consumer's release is seen");
        assert_eq!(p.push(&[6, 7]), 2);
        let mut out = [0u64; 8];
        assert_eq!(c.pop(&mut out), 3);
        assert_eq!(&out[..3], &[4, 6, 7]);
        assert_eq!(c.pop(&mut out), 0);
        assert_eq!(m.idx[0], start.wrapping_add(6), "producer index published, wrapped");
        assert_eq!(m.idx[1], start.wrapping_add(6));
        assert!(!p.needs_wakeup());
        m.idx[2] = NEED_WAKEUP;
        assert!(p.needs_wakeup());
    }
}
