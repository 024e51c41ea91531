//! Authentication shared by every datagram the ATMs exchange: heartbeats
//! ([`crate::core::heartbeat`]) and connection sync ([`crate::dataplane::sync`]).
//!
//! Both protocols sign a datagram with HMAC-SHA256 under the cluster secret and number it
//! `(incarnation or session, sequence)`; a receiver checks the MAC first (constant time)
//! and then a per-sender [`ReplayWindow`]. One implementation, so that a fix to either
//! (a window edge, a timing leak) reaches both. Sans-IO and allocation-free.

use hmac::{Hmac, KeyInit, Mac as _};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Length of a [`Mac`] tag.
pub const TAG_LEN: usize = 32;

/// HMAC-SHA256 keyed once with the cluster secret (keying hashes the secret: done once per
/// sender or receiver, not per datagram).
#[derive(Clone)]
pub struct Mac(HmacSha256);

impl core::fmt::Debug for Mac {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never the key.
        f.write_str("Mac(HMAC-SHA256)")
    }
}

impl Mac {
    pub fn new(secret: &[u8]) -> Mac {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        Mac(HmacSha256::new_from_slice(secret).expect("HMAC takes any key length"))
    }

    /// The tag of `data`.
    pub fn tag(&self, data: &[u8]) -> [u8; TAG_LEN] {
        let mut m = self.0.clone();
        m.update(data);
        m.finalize().into_bytes().into()
    }

    /// Whether `tag` is `data`'s tag, compared in constant time.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut m = self.0.clone();
        m.update(data);
        m.verify_slice(tag).is_ok()
    }
}

/// Why [`ReplayWindow::admit`] refused a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// From an older incarnation (session) of the sender than one already seen.
    Stale,
    /// The same sequence as the newest one seen (a heartbeat sent two ways arrives twice).
    Duplicate,
    /// Seen before, older than the window, or sequence 0 (senders start at 1).
    Replay,
}

/// Per-sender anti-replay state: the newest incarnation seen, the highest sequence in it and
/// a 64-entry bitmap of the sequences just below (as in IPsec's window). A higher
/// incarnation (the sender restarted) starts a new window, so a sender's sequence can
/// restart at 1 without letting an old datagram be replayed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    incarnation: u64,
    top: u64,
    seen: u64,
}

impl ReplayWindow {
    /// Width of the window, in sequence numbers.
    pub const WIDTH: u64 = 64;

    /// Accepts `(incarnation, seq)` once (and remembers it); refuses a repeat, a sequence
    /// older than the window or an older incarnation, leaving the window as it was.
    pub fn admit(&mut self, incarnation: u64, seq: u64) -> Result<(), Refused> {
        if incarnation < self.incarnation {
            return Err(Refused::Stale);
        }
        if seq == 0 {
            return Err(Refused::Replay);
        }
        if incarnation > self.incarnation {
            *self = ReplayWindow { incarnation, top: 0, seen: 0 };
        }
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= Self::WIDTH { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.top = seq;
            return Ok(());
        }
        let back = self.top - seq;
        if back == 0 {
            return Err(Refused::Duplicate);
        }
        if back >= Self::WIDTH || self.seen & (1 << back) != 0 {
            return Err(Refused::Replay);
        }
        self.seen |= 1 << back;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tags_verify_and_differ_by_key_and_data() {
        let m = Mac::new(b"secret");
        let t = m.tag(b"data");
        assert!(m.verify(b"data", &t));
        assert!(!m.verify(b"date", &t));
        assert!(!Mac::new(b"other").verify(b"data", &t));
        assert!(!m.verify(b"data", &t[..31]), "a short tag never verifies");
        assert_eq!(format!("{m:?}"), "Mac(HMAC-SHA256)");
    }

    #[test]
    fn window_edges() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.admit(5, 0), Err(Refused::Replay), "sequence 0 is never valid");
        assert_eq!(w.admit(5, 1), Ok(()));
        assert_eq!(w.admit(5, 1), Err(Refused::Duplicate));
        assert_eq!(w.admit(5, 100), Ok(()));
        assert_eq!(w.admit(5, 37), Ok(()), "inside the window, once");
        assert_eq!(w.admit(5, 37), Err(Refused::Replay));
        assert_eq!(w.admit(5, 36), Err(Refused::Replay), "older than the window");
        assert_eq!(w.admit(4, 1000), Err(Refused::Stale));
        assert_eq!(w.admit(6, 1), Ok(()), "a restart starts a new window");
        let before = w;
        assert_eq!(w.admit(6, 0), Err(Refused::Replay));
        assert_eq!(w, before, "a refusal changes nothing");
    }

    proptest! {
        #[test]
        fn each_sequence_is_admitted_at_most_once(seqs in proptest::collection::vec(1u64..300, 1..200)) {
            let mut w = ReplayWindow::default();
            let mut admitted = std::collections::BTreeSet::new();
            for s in seqs {
                if w.admit(1, s).is_ok() {
                    prop_assert!(admitted.insert(s), "sequence {} admitted twice", s);
                }
            }
        }
    }
}
