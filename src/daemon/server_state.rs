//! The operators' server overrides, saved so they outlive a daemon restart.
//!
//! HAProxy keeps runtime server state across reloads with a `server-state-file`; so do we.
//! Every change an operator makes (`cmc drain`, `disable`, `weight`, `enable`) and every
//! reload rewrites `servers-CLUSTERID-ATM.json` in the state directory
//! (`$CLUSTERSERVERD_RUN_DIR`, default `/run/clusterserverd`, systemd's
//! `RuntimeDirectory=` with `RuntimeDirectoryPreserve=yes`), atomically: a temporary file in
//! the same directory, fsync, rename. At start-up the daemon reads it back before it says
//! `ready`.
//!
//! Servers are named by service and server name **and** address and port: an override
//! never lands on a server that was moved to another address while the daemon was down.
//! A file that cannot be read or parsed, or that belongs to another cluster or ATM, is
//! reported (one `warn` line naming the file and why) and ignored: the daemon starts from
//! the config, never fails on it.
//!
//! ```json
//! {"version":1,"cluster_id":7,"atm":"atm1","servers":[
//!   {"service":"http","server":"web1","address":"192.168.10.11","port":8080,"state":"drained","weight":null}]}
//! ```

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::servers::{AdminState, Override, Overrides};
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

/// Where ATM `me` of `cfg` keeps its overrides.
pub fn path(state_dir: &Path, cfg: &Config, me: usize) -> PathBuf {
    state_dir.join(format!("servers-{}-{}.json", cfg.cluster.id, cfg.atms[me].name))
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

/// Writes the file atomically (mode 0600); with no override left, removes it.
pub fn save(path: &Path, cfg: &Config, me: usize, servers: Vec<Saved>) -> std::io::Result<()> {
    if servers.is_empty() {
        // No override left (`cmc enable` on the last one): no file, as before any override.
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let file = File { version: VERSION, cluster_id: cfg.cluster.id, atm: cfg.atms[me].name.clone(), servers };
    let text = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Reads the file: `Ok(None)` when there is none; `Err` says why it is unusable (the
/// caller logs it and starts from the config).
pub fn load(path: &Path, cfg: &Config, me: usize) -> Result<Option<Vec<Saved>>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let f: File = serde_json::from_slice(&text).map_err(|e| format!("not a server state file: {e}"))?;
    if f.version != VERSION {
        return Err(format!("version {} (this daemon reads {VERSION})", f.version));
    }
    if f.cluster_id != cfg.cluster.id || f.atm != cfg.atms[me].name {
        return Err(format!(
            "it belongs to cluster {} ATM {} (this is cluster {} ATM {})",
            f.cluster_id, f.atm, cfg.cluster.id, cfg.atms[me].name
        ));
    }
    Ok(Some(f.servers))
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
        let dir = std::env::temp_dir().join(format!("cs-server-state-{}", std::process::id()));
        let c = cfg();
        let p = path(&dir, &c, 0);
        assert_eq!(load(&p, &c, 0), Ok(None), "no file yet");
        let o = [((0, 1), Override { state: AdminState::Drained, weight: Some(7) })];
        save(&p, &c, 0, by_name(&c, &o)).expect("save");
        let saved = load(&p, &c, 0).expect("load").expect("some");
        assert_eq!(by_index(&c, &saved), (o.to_vec(), 0));
        // A server moved to another address does not inherit the override.
        let mut moved = c.clone();
        moved.services[0].servers[1].address = "192.0.2.99".parse().expect("ip");
        assert_eq!(by_index(&moved, &saved).1, 1);
        // Another ATM's file, a corrupt one, another version.
        assert!(load(&p, &c, 1).expect_err("foreign").contains("belongs to"));
        std::fs::write(&p, b"{not json").expect("write");
        assert!(load(&p, &c, 0).expect_err("corrupt").contains("not a server state file"));
        std::fs::write(&p, br#"{"version":9,"cluster_id":7,"atm":"atm1","servers":[]}"#).expect("write");
        assert!(load(&p, &c, 0).expect_err("version").contains("version 9"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
