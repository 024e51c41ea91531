//! Heartbeat timing histograms: how late heartbeats leave and arrive, so an operator can
//! see how close the dead interval is to the jitter.
//!
//! * **send jitter**: the moment a scheduled heartbeat was handed to the kernel minus its
//!   deadline (the core's drift-free schedule: deadline `n + 1` = deadline `n` + interval);
//! * **receive lateness**: for each accepted heartbeat from a peer, its arrival minus the
//!   arrival expected from the previous one of the same run (`previous arrival +
//!   (sequence gap) × the interval the peer announces`), zero when it came early. A lost
//!   heartbeat therefore does not count as an interval of lateness; the first heartbeat of
//!   a peer (or of its new incarnation) only sets the reference.
//!
//! Both are recorded on the heartbeat thread, so a record is a few relaxed atomic
//! operations on fixed buckets: no lock, no allocation. Readers (the `/metrics` scrape,
//! `GET /v1/stats`) take a [`Snapshot`]; concurrent records may make its count and sum
//! disagree by one heartbeat, which a rate over a scrape interval does not notice.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::core::heartbeat::Heartbeat;
use crate::time::Instant;

/// Upper bounds of the buckets (`le`), 10 µs to 1 s in 1-2-5 steps; one more bucket takes
/// everything above.
pub const BOUNDS: [Duration; 16] = {
    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    let ns = [
        10 * US,
        20 * US,
        50 * US,
        100 * US,
        200 * US,
        500 * US,
        MS,
        2 * MS,
        5 * MS,
        10 * MS,
        20 * MS,
        50 * MS,
        100 * MS,
        200 * MS,
        500 * MS,
        1000 * MS,
    ];
    let mut out = [Duration::ZERO; 16];
    let mut i = 0;
    while i < ns.len() {
        out[i] = Duration::from_nanos(ns[i]);
        i += 1;
    }
    out
};

const BUCKETS: usize = BOUNDS.len() + 1;

/// A latency histogram of atomics (see the module docs).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Histogram {
    /// Counts one value.
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS.iter().position(|b| d <= *b).unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut buckets = [0u64; BUCKETS];
        for (b, a) in buckets.iter_mut().zip(&self.buckets) {
            *b = a.load(Ordering::Relaxed);
        }
        Snapshot {
            buckets,
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            max_ns: self.max_ns.load(Ordering::Relaxed),
        }
    }
}

/// The values of a [`Histogram`] at one moment; encodes as a Prometheus histogram in
/// seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Per bucket (not cumulative), the last one above [`BOUNDS`]' end.
    pub buckets: [u64; BUCKETS],
    pub sum_ns: u64,
    pub max_ns: u64,
}

impl Snapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns)
    }

    /// The `q` quantile (0..=1), as the upper bound of the bucket it falls in (never above
    /// the maximum seen): a bound that at least a fraction `q` of the values stay under.
    /// `None` while empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let bound = BOUNDS.get(i).copied().unwrap_or(Duration::MAX);
                return Some(bound.min(self.max()));
            }
        }
        Some(self.max())
    }
}

impl EncodeMetric for Snapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0u64); BUCKETS];
        for (i, (b, n)) in buckets.iter_mut().zip(self.buckets).enumerate() {
            let bound = BOUNDS.get(i).map_or(f64::INFINITY, Duration::as_secs_f64);
            *b = (bound, n);
        }
        let sum = self.sum_ns as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, self.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Most ATMs whose receive lateness is tracked (heartbeats of later positions are not
/// measured; a config lists far fewer).
pub const MAX_PEERS: usize = 64;

/// What the last heartbeat of one peer said, for its successor's expected arrival.
#[derive(Clone, Copy, Debug, Default)]
struct LastHeard {
    incarnation: u64,
    seq: u64,
    at: Instant,
}

/// The two heartbeat histograms and the per-peer state receive lateness needs.
#[derive(Debug)]
pub struct HeartbeatTiming {
    pub send_jitter: Histogram,
    pub receive_lateness: Histogram,
    /// Only the heartbeat thread takes it (never contended); fixed size, no allocation.
    last: Mutex<[Option<LastHeard>; MAX_PEERS]>,
}

impl Default for HeartbeatTiming {
    fn default() -> Self {
        HeartbeatTiming {
            send_jitter: Histogram::default(),
            receive_lateness: Histogram::default(),
            last: Mutex::new([None; MAX_PEERS]),
        }
    }
}

impl HeartbeatTiming {
    /// A scheduled heartbeat due at `scheduled` left at `sent`.
    pub fn sent(&self, scheduled: Instant, sent: Instant) {
        self.send_jitter.record(sent.saturating_since(scheduled));
    }

    /// An accepted heartbeat `hb` arrived at `now` (see the module docs).
    pub fn received(&self, now: Instant, hb: &Heartbeat) {
        let slot = usize::from(hb.sender);
        if slot >= MAX_PEERS {
            return;
        }
        let Ok(mut last) = self.last.lock() else { return };
        let prev = last[slot].replace(LastHeard { incarnation: hb.incarnation, seq: hb.seq, at: now });
        let Some(prev) = prev.filter(|p| p.incarnation == hb.incarnation && hb.seq > p.seq) else { return };
        if hb.interval_ms == 0 {
            return;
        }
        let gap = u32::try_from(hb.seq - prev.seq).unwrap_or(u32::MAX);
        let expected = prev.at + Duration::from_millis(u64::from(hb.interval_ms)).saturating_mul(gap);
        self.receive_lateness.record(now.saturating_since(expected));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn values_land_in_the_bucket_of_their_upper_bound() {
        let h = Histogram::default();
        h.record(Duration::ZERO);
        h.record(us(10));
        h.record(us(11));
        h.record(Duration::from_millis(5));
        h.record(Duration::from_secs(3));
        let s = h.snapshot();
        assert_eq!(s.buckets[0], 2, "0 and exactly 10 µs are <= 10 µs");
        assert_eq!(s.buckets[1], 1, "11 µs in le=20µs");
        assert_eq!(s.buckets[8], 1, "5 ms in le=5ms");
        assert_eq!(s.buckets[BUCKETS - 1], 1, "above 1 s");
        assert_eq!(s.count(), 5);
        assert_eq!(s.max(), Duration::from_secs(3));
        assert_eq!(s.sum_ns, (us(21) + Duration::from_millis(5) + Duration::from_secs(3)).as_nanos() as u64);
    }

    #[test]
    fn quantiles_are_bucket_bounds_capped_by_the_maximum() {
        let h = Histogram::default();
        assert_eq!(h.snapshot().quantile(0.5), None);
        for _ in 0..98 {
            h.record(us(30));
        }
        h.record(us(700));
        h.record(us(900));
        let s = h.snapshot();
        assert_eq!(s.quantile(0.5), Some(us(50)));
        assert_eq!(s.quantile(0.98), Some(us(50)));
        assert_eq!(s.quantile(0.99), Some(us(900)), "le=1ms, capped by the max");
        assert_eq!(s.quantile(1.0), Some(us(900)));
    }

    #[test]
    fn encodes_as_a_cumulative_histogram_in_seconds() {
        let h = Histogram::default();
        h.record(us(15));
        h.record(Duration::from_millis(2));
        let mut reg = prometheus_client::registry::Registry::with_prefix("clusterserver");
        reg.register("heartbeat_send_jitter_seconds", "jitter", h.snapshot());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(out.contains("# TYPE clusterserver_heartbeat_send_jitter_seconds histogram"), "{out}");
        assert!(out.contains("clusterserver_heartbeat_send_jitter_seconds_count 2"), "{out}");
        assert!(
            out.contains("clusterserver_heartbeat_send_jitter_seconds_bucket{le=\"0.00001\"} 0"),
            "{out}"
        );
        assert!(
            out.contains("clusterserver_heartbeat_send_jitter_seconds_bucket{le=\"0.00002\"} 1"),
            "{out}"
        );
        assert!(out.contains("clusterserver_heartbeat_send_jitter_seconds_bucket{le=\"0.002\"} 2"), "{out}");
        assert!(out.contains("clusterserver_heartbeat_send_jitter_seconds_bucket{le=\"+Inf\"} 2"), "{out}");
    }

    fn hb(sender: u16, incarnation: u64, seq: u64) -> Heartbeat {
        Heartbeat {
            cluster_id: 7,
            sender,
            interval_ms: 5,
            incarnation,
            seq,
            epoch: 1,
            role: crate::core::heartbeat::WireRole::Primary,
            flags: 0,
            reach_ok: 0,
            reach_total: 0,
            peers_up: 2,
            handover_to: 0,
            holding: 0,
            digest: [0; 16],
        }
    }

    #[test]
    fn lateness_is_measured_against_the_previous_arrival_and_the_sequence_gap() {
        let t = HeartbeatTiming::default();
        let at = |ms: u64, extra_us: u64| Instant::from_nanos(ms * 1_000_000 + extra_us * 1_000);
        t.received(at(0, 0), &hb(1, 9, 1)); // reference only
        t.received(at(5, 300), &hb(1, 9, 2)); // 300 µs late
        t.received(at(10, 0), &hb(1, 9, 3)); // early against 10.3 ms: 0
        t.received(at(25, 40), &hb(1, 9, 6)); // two lost: expected 25 ms, 40 µs late
        t.received(at(26, 0), &hb(1, 10, 1)); // a new incarnation: reference only
        let s = t.receive_lateness.snapshot();
        assert_eq!(s.count(), 3);
        assert_eq!(s.max(), us(300));
        assert_eq!(s.buckets[0], 1, "the early one as 0");
        assert_eq!(s.buckets[2], 1, "40 µs in le=50µs");
        assert_eq!(s.buckets[5], 1, "300 µs in le=500µs");
    }

    #[test]
    fn send_jitter_is_the_delay_past_the_deadline() {
        let t = HeartbeatTiming::default();
        t.sent(Instant::from_nanos(5_000_000), Instant::from_nanos(5_120_000));
        assert_eq!(t.send_jitter.snapshot().max(), us(120));
    }
}
