//! A host's IPv6 neighbour cache: Linux's neighbour unreachability detection (NUD) for the
//! simulated LAN, pure and clocked by the caller (`now` in ms), so it is unit-tested here and
//! deterministic in a run.
//!
//! The rules, from Linux `net/core/neighbour.c` (`neigh_timer_handler`, `__neigh_event_send`,
//! `__neigh_update`) and `net/ipv6/ndisc.c` (`ndisc_recv_na`), with the `nd_tbl` defaults:
//!
//! * **Resolution**: the first packet for an unknown address creates an INCOMPLETE entry and
//!   sends a multicast Neighbor Solicitation (to the solicited-node group), again every
//!   `retrans_time` (1 s) up to `mcast_solicit` (3); then the entry FAILS and is removed
//!   (the next packet starts over). Packets meanwhile are dropped (Linux queues a few).
//! * **REACHABLE** for `reachable_time` after the last confirmation: a solicited Neighbor
//!   Advertisement, or forward progress of a connection (TCP's `dst_confirm`; the simulated
//!   clients confirm on every answered request). `reachable_time` is the interface's
//!   `base_reachable_time` (30 s) randomised to 15–45 s (`neigh_rand_reach_time`), drawn
//!   again every 300 s (`neigh_periodic_work`); drawn here from the seeded per-host RNG.
//! * Past it the entry is **STALE** (or straight DELAY if it was used within the last
//!   `delay_first_probe_time`): still used. The first use of a STALE entry makes it
//!   **DELAY** for `delay_first_probe_time` (5 s); if a confirmation arrived meanwhile it is
//!   REACHABLE again, else **PROBE**: unicast solicitations to the cached address every
//!   `retrans_time`, `ucast_solicit` (3) of them, then FAILED (removed; the next packet
//!   resolves again by multicast).
//! * **Advertisements** (`ndisc_recv_na`): one for an address without an entry is ignored
//!   (an unsolicited NA never creates one: `accept_untracked_na` is 0). For an entry: the
//!   new state is REACHABLE if Solicited, else STALE. With Override (or from an INCOMPLETE
//!   entry) a different link-layer address replaces the cached one; without Override a
//!   different address only turns a REACHABLE entry STALE and is not taken; the same
//!   address with an unsolicited NA leaves the state as it is.
//!
//! Simplification: timers run when the entry is next used or advertised, not on their own
//! (the simulated hosts use their entries every few ms), so a due solicitation leaves with
//! the next packet that uses the entry.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use crate::rng::SplitMix64;

/// `base_reachable_time` (Linux default, ms).
pub const BASE_REACHABLE_MS: u64 = 30_000;
/// `delay_first_probe_time`.
pub const DELAY_FIRST_PROBE_MS: u64 = 5_000;
/// `retrans_time`.
pub const RETRANS_MS: u64 = 1_000;
/// `ucast_solicit` and `mcast_solicit`.
pub const UCAST_SOLICIT: u32 = 3;
pub const MCAST_SOLICIT: u32 = 3;
/// How often `reachable_time` is drawn again.
pub const REDRAW_MS: u64 = 300_000;

/// A NUD state (Linux's `NUD_*`), with the timer data each needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Resolving by multicast: solicitations sent, when the next is due.
    Incomplete {
        sent: u32,
        next_ms: u64,
    },
    Reachable,
    Stale,
    Delay {
        until_ms: u64,
    },
    /// Unicast probes sent, when the next is due (or the entry fails).
    Probe {
        sent: u32,
        next_ms: u64,
    },
}

/// One neighbour entry: the cached link-layer address (the owner host's LAN address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub lladdr: Option<IpAddr>,
    pub state: State,
    pub confirmed_ms: u64,
    pub used_ms: u64,
}

/// What a packet for an address should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Send to this link-layer address.
    Send(IpAddr),
    /// Send it, and a unicast solicitation to the same address (PROBE).
    SendAndProbe(IpAddr),
    /// No address: drop it, and multicast a solicitation.
    Solicit,
    /// No address, a solicitation is already out: drop it.
    Wait,
}

/// What an advertisement did to the cache (for the trace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// No entry for the target: ignored.
    Ignored,
    /// The entry now points at a new address.
    Changed { from: Option<IpAddr> },
    /// Same address (or not overridden): state only.
    Kept,
}

/// Flags of a Neighbor Advertisement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NaFlags {
    pub solicited: bool,
    pub override_: bool,
}

/// A host's IPv6 neighbour table (one interface).
#[derive(Clone, Debug)]
pub struct Table {
    entries: BTreeMap<Ipv6Addr, Entry>,
    rng: SplitMix64,
    reachable_ms: u64,
    drawn_ms: u64,
}

/// Failures seen while advancing timers (for the trace): the entry and its last address.
pub type Failed = Option<Option<IpAddr>>;

impl Table {
    /// A fresh table (a booting kernel) with its own generator.
    pub fn new(mut rng: SplitMix64) -> Table {
        let reachable_ms = rand_reach(&mut rng);
        Table { entries: BTreeMap::new(), rng, reachable_ms, drawn_ms: 0 }
    }

    /// The current `reachable_time`.
    pub fn reachable_ms(&self) -> u64 {
        self.reachable_ms
    }

    pub fn get(&self, ip: &Ipv6Addr) -> Option<&Entry> {
        self.entries.get(ip)
    }

    /// The cached address, whatever the state (what a sender that does not run the state
    /// machine, such as a flow reading the owner, would use).
    pub fn lladdr(&self, ip: &Ipv6Addr) -> Option<IpAddr> {
        self.entries.get(ip).and_then(|e| e.lladdr)
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    fn redraw(&mut self, now: u64) {
        while now >= self.drawn_ms + REDRAW_MS {
            self.drawn_ms += REDRAW_MS;
            self.reachable_ms = rand_reach(&mut self.rng);
        }
    }

    /// A packet for `ip` at `now`: runs the due timers, then the use. The second value is
    /// set when the entry failed on the way (it was removed).
    pub fn use_at(&mut self, now: u64, ip: Ipv6Addr) -> (Use, Failed) {
        self.redraw(now);
        let failed = self.advance(now, ip);
        let e = self.entries.entry(ip).or_insert(Entry {
            lladdr: None,
            state: State::Incomplete { sent: 0, next_ms: now },
            confirmed_ms: 0,
            used_ms: now,
        });
        e.used_ms = now;
        let u = match e.state {
            State::Incomplete { sent, next_ms } => {
                if now >= next_ms && sent < MCAST_SOLICIT {
                    e.state = State::Incomplete { sent: sent + 1, next_ms: now + RETRANS_MS };
                    Use::Solicit
                } else {
                    Use::Wait
                }
            }
            State::Stale => {
                e.state = State::Delay { until_ms: now + DELAY_FIRST_PROBE_MS };
                Use::Send(e.lladdr.expect("a stale entry has an address"))
            }
            State::Probe { sent, next_ms } if now >= next_ms && sent < UCAST_SOLICIT => {
                e.state = State::Probe { sent: sent + 1, next_ms: now + RETRANS_MS };
                Use::SendAndProbe(e.lladdr.expect("a probed entry has an address"))
            }
            _ => Use::Send(e.lladdr.expect("a resolved entry has an address")),
        };
        (u, failed)
    }

    /// Runs the timers of `ip`'s entry due by `now` (in order); a failed entry is removed.
    fn advance(&mut self, now: u64, ip: Ipv6Addr) -> Failed {
        let reach = self.reachable_ms;
        let e = self.entries.get_mut(&ip)?;
        // Bounded: each pass moves the entry one state on, and the chain ends in a state
        // whose timer is in the future (or the entry fails).
        for _ in 0..8 {
            match e.state {
                State::Reachable => {
                    let at = e.confirmed_ms + reach;
                    if now < at {
                        return None;
                    }
                    e.state = if e.used_ms + DELAY_FIRST_PROBE_MS > at {
                        State::Delay { until_ms: at + DELAY_FIRST_PROBE_MS }
                    } else {
                        State::Stale
                    };
                }
                State::Delay { until_ms } => {
                    if now < until_ms {
                        return None;
                    }
                    e.state = if e.confirmed_ms + DELAY_FIRST_PROBE_MS > until_ms {
                        State::Reachable
                    } else {
                        // The first probe leaves at once (`neigh_probe` in the handler).
                        State::Probe { sent: 0, next_ms: until_ms }
                    };
                }
                State::Probe { sent, next_ms } | State::Incomplete { sent, next_ms } => {
                    let limit =
                        if matches!(e.state, State::Probe { .. }) { UCAST_SOLICIT } else { MCAST_SOLICIT };
                    if sent < limit || now < next_ms {
                        return None;
                    }
                    let last = e.lladdr;
                    self.entries.remove(&ip);
                    return Some(last);
                }
                State::Stale => return None,
            }
        }
        None
    }

    /// Forward progress from `lladdr` for `ip` (an answered request): confirms the entry if
    /// it points there (Linux `neigh_confirm`: the state follows at the next timer).
    pub fn confirm(&mut self, now: u64, ip: Ipv6Addr, lladdr: IpAddr) {
        if let Some(e) = self.entries.get_mut(&ip).filter(|e| e.lladdr == Some(lladdr)) {
            e.confirmed_ms = now;
        }
    }

    /// A Neighbor Advertisement for `target` at `lladdr` (`ndisc_recv_na` → `__neigh_update`).
    pub fn on_advertisement(&mut self, now: u64, target: Ipv6Addr, lladdr: IpAddr, f: NaFlags) -> Update {
        self.redraw(now);
        let _ = self.advance(now, target);
        let Some(e) = self.entries.get_mut(&target) else { return Update::Ignored };
        let new = if f.solicited { State::Reachable } else { State::Stale };
        let confirm = |e: &mut Entry| {
            if f.solicited {
                e.confirmed_ms = now;
            }
        };
        match e.lladdr {
            None => {
                // INCOMPLETE: the address is taken whatever the flags.
                e.lladdr = Some(lladdr);
                e.state = new;
                confirm(e);
                Update::Changed { from: None }
            }
            Some(old) if old != lladdr => {
                if f.override_ {
                    e.lladdr = Some(lladdr);
                    e.state = new;
                    confirm(e);
                    Update::Changed { from: Some(old) }
                } else {
                    // Weak override: a REACHABLE entry only becomes STALE.
                    if e.state == State::Reachable {
                        e.state = State::Stale;
                    }
                    Update::Kept
                }
            }
            Some(_) => {
                if f.solicited {
                    e.state = State::Reachable;
                    confirm(e);
                }
                Update::Kept
            }
        }
    }
}

/// `neigh_rand_reach_time`: uniform in [base/2, 3·base/2).
fn rand_reach(rng: &mut SplitMix64) -> u64 {
    BASE_REACHABLE_MS / 2 + rng.next_u64() % BASE_REACHABLE_MS
}

#[cfg(test)]
mod tests;
