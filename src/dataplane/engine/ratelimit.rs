//! Rate limits on the packets the engine makes itself: TCP resets (`on_down: reset`, a
//! connection whose server failed) and ICMP/ICMPv6 errors (fragmentation needed, Packet Too
//! Big). Either can be provoked by anyone who can send to a VIP (a flood of segments to a
//! dead server's connections, of oversized DF packets to a tunnel service), and each answer
//! costs a TUN write and goes out from the VIP or the ATM's address: without a limit the
//! balancer amplifies the flood back at forged sources. The kernel limits its own ICMP errors
//! the same way (`net.ipv4.icmp_ratelimit`, `icmp_msgs_per_sec` 1000, burst 50).
//!
//! One token bucket per kind (resets, ICMP errors of both families), refilled from the `now`
//! the engine is given (never a clock, so the simulator and tests are deterministic). A
//! packet that finds its bucket empty is dropped without an answer, under its usual drop
//! reason (`ServerDown`, `TooBig`), and counted in [`Limited`]. (A connection whose reset was
//! held back has lost its entry all the same: its next segments are dropped as
//! `NoConnection`, and its client times out instead of failing fast.) The defaults are generous
//! ([`RATE_PER_S`], [`BURST`]): legitimate answers (a few per failed connection, one per
//! path-MTU discovery) stay far below them.
//!
//! A bucket is per engine: an ATM with several queues allows that much per queue.

use crate::time::Instant;

/// Answers per second each kind may send, on average.
pub const RATE_PER_S: u32 = 1000;
/// Answers a kind may send at once after a quiet period.
pub const BURST: u32 = 100;

/// Kinds of packets the engine makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A TCP RST to a client.
    Reset,
    /// An ICMP or ICMPv6 error (fragmentation needed, Packet Too Big).
    IcmpError,
}

/// Answers dropped by a limit (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limited {
    pub resets: u64,
    pub icmp_errors: u64,
}

/// A token bucket in fixed point: `tokens` counts nanosecond-tokens (one answer is
/// `1e9 / rate` of them), so refills need no division per packet beyond one multiply.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    /// Cost of one answer in nanoseconds (1e9 / rate); 0: unlimited.
    cost_ns: u64,
    /// Most the bucket holds (`burst * cost_ns`).
    cap_ns: u64,
    /// Credit held at `at`.
    credit_ns: u64,
    at: Instant,
}

impl Bucket {
    /// `rate_per_s` answers per second, `burst` at once; a rate of 0 means unlimited. The
    /// bucket starts full.
    pub fn new(rate_per_s: u32, burst: u32) -> Bucket {
        let cost_ns = if rate_per_s == 0 { 0 } else { 1_000_000_000 / u64::from(rate_per_s) };
        let cap_ns = cost_ns.saturating_mul(u64::from(burst.max(1)));
        Bucket { cost_ns, cap_ns, credit_ns: cap_ns, at: Instant::ZERO }
    }

    /// Whether one answer may go at `now` (and takes its token if so). Time that runs
    /// backwards (it does not, but the caller's `now` is an input) refills nothing.
    pub fn allow(&mut self, now: Instant) -> bool {
        if self.cost_ns == 0 {
            return true;
        }
        let elapsed = u64::try_from(now.saturating_since(self.at).as_nanos()).unwrap_or(u64::MAX);
        if now > self.at {
            self.at = now;
        }
        self.credit_ns = self.credit_ns.saturating_add(elapsed).min(self.cap_ns);
        if self.credit_ns >= self.cost_ns {
            self.credit_ns -= self.cost_ns;
            true
        } else {
            false
        }
    }
}

/// The engine's limits: a bucket per [`Kind`], the `now` of the packet being processed, and
/// what was dropped.
#[derive(Clone, Copy, Debug)]
pub struct RateLimits {
    reset: Bucket,
    icmp: Bucket,
    now: Instant,
    limited: Limited,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits::new(RATE_PER_S, BURST)
    }
}

impl RateLimits {
    /// Both kinds at `rate_per_s` with `burst`.
    pub fn new(rate_per_s: u32, burst: u32) -> RateLimits {
        RateLimits {
            reset: Bucket::new(rate_per_s, burst),
            icmp: Bucket::new(rate_per_s, burst),
            now: Instant::ZERO,
            limited: Limited::default(),
        }
    }

    /// The time of the packet being processed (set by the engine per packet, so that deep
    /// call sites need no `now` parameter).
    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    /// Whether an answer of `kind` may be sent now; counts it in [`Limited`] if not.
    pub fn allow(&mut self, kind: Kind) -> bool {
        let (bucket, count) = match kind {
            Kind::Reset => (&mut self.reset, &mut self.limited.resets),
            Kind::IcmpError => (&mut self.icmp, &mut self.limited.icmp_errors),
        };
        let ok = bucket.allow(self.now);
        if !ok {
            *count += 1;
        }
        ok
    }

    /// Answers dropped so far.
    pub fn limited(&self) -> Limited {
        self.limited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    #[test]
    fn burst_then_rate() {
        let mut b = Bucket::new(1000, 100);
        // A full bucket: the burst goes at once, then nothing.
        assert_eq!((0..150).filter(|_| b.allow(ms(0))).count(), 100);
        // One millisecond buys one answer at 1000/s.
        assert!(b.allow(ms(1)));
        assert!(!b.allow(ms(1)));
        // Ten milliseconds, ten answers.
        assert_eq!((0..50).filter(|_| b.allow(ms(11))).count(), 10);
    }

    #[test]
    fn refill_is_capped_at_the_burst() {
        let mut b = Bucket::new(1000, 100);
        assert_eq!((0..100).filter(|_| b.allow(ms(0))).count(), 100);
        // An hour of quiet still buys only the burst.
        assert_eq!((0..1000).filter(|_| b.allow(ms(3_600_000))).count(), 100);
    }

    #[test]
    fn steady_rate_over_a_second() {
        let mut b = Bucket::new(1000, 100);
        // 10 attempts every millisecond for a second: the burst plus one per millisecond.
        let sent = (0..1000u64).map(|t| (0..10).filter(|_| b.allow(ms(t))).count()).sum::<usize>();
        assert_eq!(sent, 100 + 999);
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let mut b = Bucket::new(1000, 1);
        assert!(b.allow(ms(100)));
        assert!(!b.allow(ms(50)));
        assert!(!b.allow(ms(100)));
        assert!(b.allow(ms(101)));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let mut b = Bucket::new(0, 0);
        assert!((0..10_000).all(|_| b.allow(ms(0))));
    }

    #[test]
    fn kinds_are_separate_and_counted() {
        let mut l = RateLimits::new(1000, 2);
        l.set_now(ms(5));
        assert!(l.allow(Kind::Reset) && l.allow(Kind::Reset));
        assert!(!l.allow(Kind::Reset));
        assert!(l.allow(Kind::IcmpError));
        assert_eq!(l.limited(), Limited { resets: 1, icmp_errors: 0 });
    }
}
