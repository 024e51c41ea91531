//! The operators' server overrides on disk, so they outlive a daemon restart.
//!
//! Every change an operator makes (`cmc drain`, `disable`, `weight`, `enable`) and every
//! reload rewrites `servers-CLUSTERID-ATM.json` ([`crate::overrides::file`] has the format)
//! in the state directory (`$CLUSTERSERVERD_RUN_DIR`, default `/run/clusterserverd`,
//! systemd's `RuntimeDirectory=` with `RuntimeDirectoryPreserve=yes`), atomically: a
//! temporary file in the same directory, fsync, rename. At start-up the daemon reads it
//! back before it says `ready`. A file that cannot be read or used is reported (one `warn`
//! line naming the file and why) and ignored: the daemon starts from the config.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::overrides::file::{self, Saved};

/// Where ATM `me` of `cfg` keeps its overrides.
pub fn path(state_dir: &Path, cfg: &Config, me: usize) -> PathBuf {
    state_dir.join(file::name(cfg, me))
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
    let text = file::encode(cfg, me, servers);
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
    file::decode(&text, cfg, me).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overrides::{AdminState, Override};

    #[test]
    fn saved_atomically_read_back_and_removed_with_the_last_override() {
        let opts = crate::config::LoadOptions { check_files: false, base_dir: "/etc/clusterserver".into() };
        let c =
            crate::config::parse_str("nat-2atm.json5", include_str!("../../config/nat-2atm.json5"), &opts)
                .expect("cfg");
        let dir = std::env::temp_dir().join(format!("cs-server-state-{}", std::process::id()));
        let p = path(&dir, &c, 0);
        assert_eq!(load(&p, &c, 0), Ok(None), "no file yet");
        let o = [((0, 1), Override { state: AdminState::Drained, weight: None })];
        save(&p, &c, 0, file::by_name(&c, &o)).expect("save");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777, 0o600);
        assert_eq!(load(&p, &c, 0).expect("load").map(|s| file::by_index(&c, &s).0), Some(o.to_vec()));
        std::fs::write(&p, b"{not json").expect("write");
        assert!(load(&p, &c, 0).expect_err("corrupt").contains("not a server state file"));
        save(&p, &c, 0, Vec::new()).expect("clear");
        assert!(!p.exists(), "no override left: no file");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
