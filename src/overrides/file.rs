//! The server state file's format: the operators' overrides by name and address, so they
//! outlive a daemon restart (HAProxy's `server-state-file`).
//!
//! Pure functions over bytes: the daemon writes them atomically under its state directory
//! (`daemon::server_state`), the simulator keeps them on its hosts' simulated `/run` (kept
//! when the daemon is killed, lost when the machine goes down).
//!
//! Servers are named by service and server name **and** address and port: an override
//! never lands on a server that was moved to another address while the daemon was down.
//! A file that cannot be parsed, or that belongs to another cluster or ATM, is refused with
//! the reason (the caller reports it and starts from the config, never fails on it).
//!
//! ```json
//! {"version":1,"cluster_id":7,"atm":"atm1","servers":[
//!   {"service":"http","server":"web1","address":"192.168.10.11","port":8080,"state":"drained","weight":null}]}
//! ```

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{AdminState, Override, Overrides};
use crate::config::Config;

const VERSION: u32 = 1;

/// One server's saved override.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub service: String,
    pub server: String,
    pub address: IpAddr,
    pub port: u16,
    pub state: AdminState,
    pub weight: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    version: u32,
    cluster_id: u32,
    atm: String,
    servers: Vec<Saved>,
}

/// The file's name for ATM `me` of `cfg` (in the state directory).
pub fn name(cfg: &Config, me: usize) -> String {
    format!("servers-{}-{}.json", cfg.cluster.id, cfg.atms[me].name)
}

/// The overrides of `overrides` (by index into `cfg`) by name and address.
pub fn by_name(cfg: &Config, overrides: &[((usize, usize), Override)]) -> Vec<Saved> {
    overrides
        .iter()
        .filter_map(|&((si, ri), o)| {
            let svc = cfg.services.get(si)?;
            let srv = svc.servers.get(ri)?;
            Some(Saved {
                service: svc.name.clone(),
                server: srv.name.clone(),
                address: srv.address,
                port: srv.port,
                state: o.state,
                weight: o.weight,
            })
        })
        .collect()
}

/// Saved overrides mapped onto `cfg`'s indices; those naming no server of `cfg` (or one
/// at another address) are dropped, counted in the second value.
pub fn by_index(cfg: &Config, saved: &[Saved]) -> (Overrides, usize) {
    let mut out = Vec::new();
    let mut dropped = 0;
    for s in saved {
        let found = cfg.services.iter().position(|x| x.name == s.service).and_then(|si| {
            let ri = cfg.services[si]
                .servers
                .iter()
                .position(|x| x.name == s.server && x.address == s.address && x.port == s.port)?;
            Some((si, ri))
        });
        match found {
            Some(k) => out.push((k, Override { state: s.state, weight: s.weight })),
            None => dropped += 1,
        }
    }
    (out, dropped)
}

/// The file's bytes for ATM `me`.
pub fn encode(cfg: &Config, me: usize, servers: Vec<Saved>) -> Vec<u8> {
    let file = File { version: VERSION, cluster_id: cfg.cluster.id, atm: cfg.atms[me].name.clone(), servers };
    // Serialising plain structs of strings and numbers cannot fail.
    serde_json::to_vec_pretty(&file).unwrap_or_default()
}

/// The overrides in `bytes`, or why they cannot be used by ATM `me` of `cfg`.
pub fn decode(bytes: &[u8], cfg: &Config, me: usize) -> Result<Vec<Saved>, String> {
    let f: File = serde_json::from_slice(bytes).map_err(|e| format!("not a server state file: {e}"))?;
    if f.version != VERSION {
        return Err(format!("version {} (this daemon reads {VERSION})", f.version));
    }
    if f.cluster_id != cfg.cluster.id || f.atm != cfg.atms[me].name {
        return Err(format!(
            "it belongs to cluster {} ATM {} (this is cluster {} ATM {})",
            f.cluster_id, f.atm, cfg.cluster.id, cfg.atms[me].name
        ));
    }
    Ok(f.servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let opts = crate::config::LoadOptions { check_files: false, base_dir: "/etc/clusterserver".into() };
        crate::config::parse_str("nat-2atm.json5", include_str!("../../config/nat-2atm.json5"), &opts)
            .expect("cfg")
    }

    #[test]
    fn round_trip_and_every_bad_file_is_refused_with_a_reason() {
        let c = cfg();
        let o = [((0, 1), Override { state: AdminState::Drained, weight: Some(7) })];
        let bytes = encode(&c, 0, by_name(&c, &o));
        let saved = decode(&bytes, &c, 0).expect("decode");
        assert_eq!(by_index(&c, &saved), (o.to_vec(), 0));
        // A server moved to another address does not inherit the override.
        let mut moved = c.clone();
        moved.services[0].servers[1].address = "192.0.2.99".parse().expect("ip");
        assert_eq!(by_index(&moved, &saved).1, 1);
        // Another ATM's file, a corrupt one, another version.
        assert!(decode(&bytes, &c, 1).expect_err("foreign").contains("belongs to"));
        assert!(decode(b"{not json", &c, 0).expect_err("corrupt").contains("not a server state file"));
        let v9 = br#"{"version":9,"cluster_id":7,"atm":"atm1","servers":[]}"#;
        assert!(decode(v9, &c, 0).expect_err("version").contains("version 9"));
    }
}
