//! An open-addressing hash index from a 32-bit hash to an entry slot.
//!
//! Linear probing over a power-of-two array of `(hash, slot)` buckets, kept at most half
//! full, with backward-shift deletion (no tombstones, so probe lengths never degrade with
//! churn). Each bucket keeps the 32-bit hash, which both filters key comparisons and gives
//! the bucket's home position during a shift without touching the entry. Comparing keys is
//! the caller's job: `find` yields candidate slots whose hash matches.

const EMPTY: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    hash: u32,
    slot: u32,
}

/// The index. Capacity is fixed at construction: nothing here allocates afterwards.
#[derive(Debug)]
pub struct Index {
    buckets: Vec<Bucket>,
    mask: u32,
}

impl Index {
    /// An index for up to `max_entries` entries (at most half the buckets used).
    pub fn with_capacity(max_entries: u32) -> Index {
        let n = (u64::from(max_entries.max(1)) * 2).next_power_of_two();
        let n = usize::try_from(n).expect("index size fits in usize");
        Index {
            buckets: vec![Bucket { hash: 0, slot: EMPTY }; n],
            mask: u32::try_from(n - 1).expect("index size fits in u32"),
        }
    }

    /// Heap bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.buckets.capacity() * core::mem::size_of::<Bucket>()
    }

    #[inline]
    fn home(&self, hash: u32) -> u32 {
        hash & self.mask
    }

    /// The first slot with this hash for which `matches(slot)` holds.
    #[inline]
    pub fn find(&self, hash: u32, mut matches: impl FnMut(u32) -> bool) -> Option<u32> {
        let mut i = self.home(hash);
        loop {
            let b = self.buckets[i as usize];
            if b.slot == EMPTY {
                return None;
            }
            if b.hash == hash && matches(b.slot) {
                return Some(b.slot);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Adds `slot` under `hash` (duplicates are the caller's concern).
    pub fn insert(&mut self, hash: u32, slot: u32) {
        let mut i = self.home(hash);
        while self.buckets[i as usize].slot != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.buckets[i as usize] = Bucket { hash, slot };
    }

    /// Removes the bucket holding `slot` under `hash`; returns whether it was there.
    pub fn remove(&mut self, hash: u32, slot: u32) -> bool {
        let mut i = self.home(hash);
        loop {
            let b = self.buckets[i as usize];
            if b.slot == EMPTY {
                return false;
            }
            if b.slot == slot {
                break;
            }
            i = (i + 1) & self.mask;
        }
        // Backward-shift: pull later buckets of the cluster into the hole when their home
        // position does not lie cyclically in (hole, j].
        let mut hole = i;
        let mut j = (i + 1) & self.mask;
        loop {
            let b = self.buckets[j as usize];
            if b.slot == EMPTY {
                break;
            }
            let home = self.home(b.hash);
            let dist_home = j.wrapping_sub(home) & self.mask;
            let dist_hole = j.wrapping_sub(hole) & self.mask;
            if dist_home >= dist_hole {
                self.buckets[hole as usize] = b;
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        self.buckets[hole as usize] = Bucket { hash: 0, slot: EMPTY };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against a model: every present slot is found, every removed one is not, with
        /// hashes drawn from a tiny range so clusters and wrap-around are exercised.
        #[test]
        fn matches_model(ops in proptest::collection::vec((any::<bool>(), 0u32..16, 0u32..12), 1..200)) {
            let mut ix = Index::with_capacity(16);
            let mut model: Vec<(u32, u32)> = Vec::new();
            for (add, slot, hash) in ops {
                let present = model.iter().any(|&(s, _)| s == slot);
                if add && !present {
                    ix.insert(hash, slot);
                    model.push((slot, hash));
                } else if !add && present {
                    let h = model.iter().find(|&&(s, _)| s == slot).unwrap().1;
                    prop_assert!(ix.remove(h, slot));
                    model.retain(|&(s, _)| s != slot);
                }
                for s in 0..16 {
                    let want = model.iter().find(|&&(m, _)| m == s).map(|&(_, h)| h);
                    if let Some(h) = want {
                        prop_assert_eq!(ix.find(h, |c| c == s), Some(s));
                    }
                }
            }
        }
    }
}
