//! A worker's free TX frames and the completion rings that return them.
//!
//! ## Why the pool is bounded by the completion ring, and drained whatever it holds
//!
//! In copy mode (every veth) the kernel reserves a completion-ring slot for each TX
//! descriptor before it builds the skb, and refuses to send (`sendto` returns `EAGAIN`,
//! the descriptor stays in the TX ring) while the completion ring is full: the ring is the
//! TX path's backpressure. Completions are only ever freed by user space consuming them.
//! So two rules, both checked here:
//!
//! * **Drain every completion ring on every reclaim**, not only when the free list runs
//!   low. The backend used to skip the completion rings while at least a batch of frames
//!   was free; with a free list larger than one completion ring (4096 frames: the UMEM was
//!   sized for every RX queue a veth reports, only one of which binds), the socket towards
//!   the server completed 2048 frames, its completion ring was full, and the kernel refused
//!   every later descriptor while the worker, with 1014 frames still free, never looked:
//!   the bulk-TCP stall (after 2048 segments, ~3 MB; a dead data plane from then on).
//! * **At most as many TX frames as a completion ring has slots** ([`TxFrames::new`]
//!   asserts it): frames in a socket's TX ring, in flight and completed-not-reclaimed are
//!   all out of the pool, so the kernel can never find a completion ring full while that
//!   socket's TX ring holds a descriptor, even between reclaims.

use super::ring::Consumer;

/// Free TX frames (UMEM addresses) of one worker.
#[derive(Debug)]
pub struct TxFrames {
    free: Vec<u64>,
    total: usize,
}

impl TxFrames {
    /// A pool of `frames`, for sockets whose completion rings have `comp_ring` slots each.
    ///
    /// # Panics
    /// If `frames` outnumber `comp_ring` (a completion ring could fill and stop TX; see the
    /// module docs): a configuration bug, not an operating error.
    pub fn new(frames: Vec<u64>, comp_ring: u32) -> TxFrames {
        assert!(
            frames.len() <= comp_ring as usize,
            "{} TX frames for completion rings of {comp_ring}: a ring could fill and stop TX",
            frames.len()
        );
        TxFrames { total: frames.len(), free: frames }
    }

    /// A free frame, if any.
    pub fn take(&mut self) -> Option<u64> {
        self.free.pop()
    }

    /// Gives back a frame taken and not put on a TX ring.
    pub fn put(&mut self, addr: u64) {
        debug_assert!(self.free.len() < self.total, "more frames returned than taken");
        self.free.push(addr);
    }

    /// Frames free now.
    pub fn len(&self) -> usize {
        self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// Frames the pool was made with.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Takes every completed frame off `comp` (all of them, however many are free already:
    /// a full completion ring stops the kernel's TX). `scratch` bounds one read. Returns how
    /// many came back.
    pub fn reclaim(&mut self, comp: &mut Consumer<u64>, scratch: &mut [u64]) -> usize {
        let mut back = 0;
        // Bounded: the ring never holds more than `total` entries (see `new`).
        for _ in 0..=self.total / scratch.len().max(1) + 1 {
            let n = comp.pop(scratch);
            if n == 0 {
                break;
            }
            self.free.extend_from_slice(&scratch[..n]);
            back += n;
        }
        back
    }
}

#[cfg(test)]
#[allow(unsafe_code)] // reason: rings over test memory (`ring::tests::Mem`), as in `ring`'s tests
mod tests {
    use super::super::ring::tests::Mem;
    use super::super::ring::{Consumer, Producer};
    use super::*;

    /// The regression: the kernel side completes a ring's worth of frames while most of the
    /// pool is still free; one reclaim must empty the ring (the old policy left it full, and
    /// a full completion ring is a TX ring the kernel no longer reads).
    #[test]
    fn reclaim_empties_a_full_completion_ring_even_with_frames_free() {
        let mut m = Mem::new(8, 5);
        // SAFETY (test): `m` outlives both ends; the test's producer plays the kernel.
        let (mut kernel, mut comp) = unsafe { (Producer::new(m.ptrs()), Consumer::<u64>::new(m.ptrs())) };
        let mut pool = TxFrames::new((0..8).map(|i| i * 2048).collect(), 8);
        let mut sent = Vec::new();
        for _ in 0..8 {
            sent.push(pool.take().expect("a free frame"));
        }
        assert!(pool.take().is_none(), "the pool is exhausted");
        // Half complete, are reclaimed, and are taken again: the pool holds free frames
        // while the ring fills up.
        assert_eq!(kernel.push(&sent[..4]), 4);
        let mut scratch = [0u64; 3];
        assert_eq!(pool.reclaim(&mut comp, &mut scratch), 4, "more entries than one scratch read");
        assert_eq!(pool.len(), 4);
        assert_eq!(kernel.push(&sent[4..]), 4);
        assert_eq!(kernel.free(1), 4);
        assert_eq!(pool.reclaim(&mut comp, &mut scratch), 4, "reclaimed with 4 frames free");
        assert_eq!(kernel.free(8), 8, "the kernel sees the whole ring free again");
        assert_eq!(pool.len(), pool.total());
        let mut back: Vec<u64> = std::iter::from_fn(|| pool.take()).collect();
        back.sort_unstable();
        sent.sort_unstable();
        assert_eq!(back, sent, "every frame came back once");
        assert_eq!(pool.reclaim(&mut comp, &mut scratch), 0, "an empty ring gives nothing");
        assert_eq!(m.idx[1], 5u32.wrapping_add(8), "the consumer index was published");
    }

    #[test]
    fn a_pool_as_large_as_a_completion_ring_is_accepted() {
        assert_eq!(TxFrames::new(vec![0; 2048], 2048).total(), 2048);
    }

    /// The UMEM of the stall: 4096 free TX frames against completion rings of 2048.
    #[test]
    #[should_panic(expected = "a ring could fill and stop TX")]
    fn a_pool_larger_than_a_completion_ring_is_refused() {
        let _ = TxFrames::new(vec![0; 4096], 2048);
    }
}
