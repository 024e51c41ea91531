//! Applying connection-sync records to a (shadow) engine.
//!
//! Records name addresses, not indices: the receiver resolves the service from the VIP,
//! port and protocol and the server from its address and port in its own config, so a
//! record for a service or server it does not know is refused rather than misapplied. The
//! entry's idle clock is set so that it expires `remaining_ms` after `now`, as it would on
//! the sender. (A shadow entry sits in its idle list by arrival order, so under a full
//! table eviction order among shadow entries is by sync arrival.)

use core::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::{Engine, EngineError};
use crate::config::Forwarding;
use crate::dataplane::conntrack::{Entry, FLAG_NAT, FwdKey, State};
use crate::dataplane::sync::SyncRecord;
use crate::dataplane::wire::proto;
use crate::time::Instant;

fn v4(a: SocketAddr) -> Result<(Ipv4Addr, u16), EngineError> {
    match a {
        SocketAddr::V4(a) => Ok((*a.ip(), a.port())),
        SocketAddr::V6(_) => Err(EngineError::Sync("IPv6 flow")),
    }
}

impl Engine {
    /// Inserts or refreshes the entry a sync record describes. Works whether or not the
    /// engine is active (a primary ignores nothing it is given).
    pub fn apply_sync(&mut self, now: Instant, rec: &SyncRecord) -> Result<(), EngineError> {
        let (client, cport) = v4(rec.client)?;
        let (vip, vport) = v4(rec.vip)?;
        let (server, sport) = v4(rec.server)?;
        let ok_state = match rec.proto {
            proto::TCP => rec.state != State::Udp && rec.state != State::Free,
            proto::UDP => rec.state == State::Udp,
            _ => false,
        };
        if !ok_state {
            return Err(EngineError::Sync("state does not fit protocol"));
        }
        let svc_idx = self
            .find_service(vip, vport, rec.proto)
            .ok_or(EngineError::Sync("unknown service"))?;
        let svc = &self.svcs[svc_idx];
        let server_idx = svc
            .servers
            .iter()
            .position(|s| s.address == IpAddr::V4(server) && s.port == sport)
            .ok_or(EngineError::Sync("unknown server"))?;
        let nat = svc.forwarding == Forwarding::Nat;
        let key = FwdKey {
            proto: rec.proto,
            client,
            client_port: cport,
            vip,
            vip_port: vport,
        };
        let slot = match self.table.find_fwd(&key) {
            Some(slot) if usize::from(self.table.get(slot).server_idx) == server_idx => {
                self.table.set_state(slot, rec.state, now);
                slot
            }
            found => {
                if let Some(slot) = found {
                    self.remove_slot(slot);
                }
                let rk = crate::dataplane::conntrack::RevKey {
                    proto: rec.proto,
                    server,
                    server_port: sport,
                    client,
                    client_port: cport,
                };
                if nat && let Some(other) = self.table.find_rev(&rk) {
                    self.remove_slot(other);
                }
                let entry = Entry::new(
                    rec.proto,
                    (client, cport),
                    (vip, vport),
                    (server, sport),
                    svc_idx as u16,
                    server_idx as u16,
                    rec.state,
                    if nat { FLAG_NAT } else { 0 },
                );
                self.insert(entry, now)
            }
        };
        let timeout = self.table.timeout_ns(rec.state);
        let remaining = (u64::from(rec.remaining_ms) * 1_000_000).min(timeout);
        let last_seen = now
            .as_nanos()
            .saturating_add(remaining)
            .saturating_sub(timeout);
        self.table.set_last_seen(slot, last_seen);
        self.table.get_mut(slot).synced_s = super::secs(now) as u16;
        self.stats.sync_applied += 1;
        Ok(())
    }
}
