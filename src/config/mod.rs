//! Configuration: the JSON5 file of SPEC.md, parsed, validated as a whole, typed.
//!
//! An operator who runs `clusterserverd --check` wants every mistake of the file at once,
//! each pointing at what to edit; the daemon wants a [`Config`] it can trust without
//! re-checking. So loading is three passes that never stop at the first error:
//!
//! 1. [`json5`] parses the text into a tree that keeps the line and column of every key and
//!    value (a syntax error is the one error that stops everything: past it, nothing is
//!    reliable);
//! 2. the walk (`sections`, `services`, `decode`) turns the tree into typed sections, reporting
//!    unknown keys (with the list of known ones), duplicate keys, missing required keys,
//!    wrong types, bad enum values (with the allowed ones), bad addresses and out-of-range
//!    numbers; absent optional keys take the defaults of [`types`];
//! 3. `validate` checks relations: unique names and addresses, ports that differ,
//!    timeouts shorter than intervals, NAT's `gateway_vip`, and (with
//!    [`LoadOptions::check_files`]) that the secret and token files exist, are regular,
//!    non-empty and not open to group or others (`mode & 0o077 == 0`).
//!
//! Errors print as `FILE:LINE:COL: PATH: MESSAGE`, sorted by position ([`ConfigErrors`]).
//!
//! ## Required keys
//!
//! `cluster.{name, id, secret_file}`, `atms[].{name, address, interface}` (at least one ATM),
//! `services[].{name, vip, port, forwarding, servers}` (at least one service and one server),
//! `checks[].kind`, `command` for exec checks, `gateway_vip` for NAT services.
//!
//! ## Bounds (inclusive) and why
//!
//! | key | range | why |
//! | --- | --- | --- |
//! | ports | 1..=65535 | 0 is not a port; heartbeat, admin and sync ports must differ |
//! | `cluster.id` | any u32 | |
//! | names (cluster, ATM, service, server) | 1..=63 of `[A-Za-z0-9._-]` | typed on the command line, used as metric labels |
//! | `atms[].interface` | 1..=15 bytes, no `/`, `:`, space | Linux IFNAMSIZ |
//! | `atms` / `services` / `servers` / `checks` | 1..=32 / 1..=256 / 1..=1024 / 0..=16 | bound everything |
//! | `timers.heartbeat_ms` | 5..=60000 | 5 ms holds on the daemon's own heartbeat thread (measured: `clusterlab failover-bench`); below that timer and scheduling jitter approach the dead interval; above a minute is no HA |
//! | `timers.realtime_priority` | 0..=99 | SCHED_FIFO priority of the heartbeat thread, 0 off (needs `CAP_SYS_NICE`) |
//! | `timers.dead_after` | 2..=100 | one lost datagram must not cause a failover |
//! | `arp.gratuitous_count` | 1..=100 | |
//! | `arp.gratuitous_interval_ms` | 10..=10000 | |
//! | `arp.refresh_s` | 0..=86400 | 0 disables |
//! | `arbitration.reachlist` | 0..=64 unique host addresses | |
//! | `arbitration.min_reachable` | 0..=length of `reachlist` | more could never be met |
//! | `arbitration.probe_interval_ms` / `probe_timeout_ms` | 10..=60000 / 1..=60000, timeout < interval | |
//! | `table.max_connections` | 1..=16777216 | the table is allocated at start-up |
//! | `table.tcp_timeout_s` | 1..=604800 | a week |
//! | `table.tcp_fin_timeout_s`, `tcp_syn_timeout_s`, `icmp_timeout_s` | 1..=3600 | |
//! | `table.udp_timeout_s` | 1..=86400 | |
//! | `sync.max_datagrams_per_s` | 1..=1000000 | |
//! | `security.admin_allow` / `admin_deny` | 0..=256 CIDRs without host bits; a bare address is a host | |
//! | `services[].persistence_s` | 0..=86400 | 0 disables |
//! | `servers[].weight` | 0..=65535, default 1 | 0 drains |
//! | `servers[].port` | default: the service's; must equal it for `dr` and `tunnel` | those do not rewrite ports |
//! | `checks[].interval_ms` | 100..=3600000, default 2000 | |
//! | `checks[].timeout_ms` | 10..=3600000, default 1000, < interval | |
//! | `checks[].rise` / `fall` | 1..=100, defaults 2 / 3 | |
//! | `checks[].expect_status` | 100..=599, default 200 (http/https only) | |
//! | `checks[].path` | starts with `/`, default `/` (http/https only) | |
//! | `checks[].command` | 1..=64 non-empty strings (exec only) | |
//! | `failover.takeover_delay_ms` | 0..=600000, default 2000 | time for an isolated home ATM to stop its services |
//! | `failover.retry_ms` / `start_attempts` | 100..=3600000 / 1..=100, defaults 5000 / 3 | a failed start is retried, then reported failed |
//! | `failover.groups` | 0..=16, one per home ATM (among the first 16 ATMs), `backup` another ATM | the heartbeat carries a 16-bit map of held groups |
//! | `groups[].services` | 1..=64, unique names | |
//! | `services[].start_order` / `stop_order` | 0..=99 (the S and K numbers), stop default `99 - start_order` | |
//! | `services[].start` / `stop` | 1..=64 non-empty strings (argv, no shell) | |
//! | `services[].timeout_ms` | 10..=3600000, default 30000 | |
//! | `groups[].mirrors` | 0..=64, names unique across groups; needs `failover.ssh` | `cmc sync content SET` names them |
//! | `mirrors[].paths` | 1..=256 unique absolute paths, trailing `/` = directory | |
//! | `mirrors[].interval_s` | 0..=604800, default 3600; 0: only on hand-back | the seed's hourly crontab |
//! | `failover.ssh` | `identity_file`, `known_hosts` required; `user` root, `port` 22 | keys only, host keys checked |
//! | `failover.ssh.node_reload` | optional non-empty shell command | run on every real server by `cmc sync config --apply` |
//!
//! | `cluster.mode` | `"primary-backup"` (default) or `"active-active"` | the latter needs `bgp` |
//! | `bgp.local_as`, `neighbors[].peer_as` | 1..=4294967295 | 0 is reserved |
//! | `bgp.neighbors` | 1..=16 unique host addresses | |
//! | `bgp.hold_s` / `keepalive_s` | 0 or 3..=65535, default 3 / 1..=21845, default 1, keepalive < hold | RFC 4271 |
//! | `bgp.bfd_interval_ms` / `bfd_multiplier` | 10..=10000, default 100 / 1..=255, default 3 | |
//! | `bgp.drain_ms` | 0..=600000, default 2000 | withdraw-to-stop time of a graceful stop |
//! | `bgp.join_sync_ms` | 0..=600000, default 3000 | longest wait for the peers' tables before announcing |
//!
//! Addresses (ATMs, VIPs, servers, reachlist) must be host addresses (not unspecified or
//! multicast); a service's servers and gateway share the VIP's family; a VIP or gateway VIP
//! cannot be an ATM's own address; `broadcast` heartbeats need IPv4 ATMs.
//!
//! Relative `secret_file` and `token_file` names are resolved against
//! [`LoadOptions::base_dir`] (the config file's directory for [`load_file`]) in the returned
//! [`Config`].

pub mod advice;
pub mod diff;
pub mod error;
pub mod json5;
#[doc(hidden)]
pub mod testkit;
pub mod types;

mod bgp;
mod decode;
mod failover;
mod sections;
mod services;
mod validate;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigErrors};
pub use types::*;

/// How [`parse_str`] treats the world outside the text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Check that `secret_file` and `token_file` exist with safe permissions.
    pub check_files: bool,
    /// Directory that relative file names are taken from.
    pub base_dir: PathBuf,
}

/// Reads, parses and validates a config file, including the secret and token files
/// (relative to the file's directory).
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    load_file_with(path, true)
}

/// As [`load_file`]; `check_files: false` checks the shape only (the secret and token files
/// need not exist yet: `clusterserverd --check --no-files`).
pub fn load_file_with(path: &Path, check_files: bool) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::new(vec![ConfigError {
            file: origin.clone(),
            line: 1,
            column: 1,
            path: "(root)".to_string(),
            message: format!("cannot read the config file: {e}"),
        }])
    })?;
    let base_dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let opts = LoadOptions { check_files, base_dir };
    parse_str(&origin, &text, &opts)
}

/// Parses and validates config text; `origin` names it in errors.
pub fn parse_str(origin: &str, text: &str, opts: &LoadOptions) -> Result<Config, ConfigErrors> {
    let root = json5::parse(text).map_err(|e| {
        ConfigErrors::new(vec![ConfigError {
            file: origin.to_string(),
            line: e.pos.line,
            column: e.pos.column,
            path: e.path,
            message: format!("syntax error: {}", e.message),
        }])
    })?;
    let mut cx = decode::Cx::new(origin);
    let draft = sections::draft(&mut cx, &root);
    validate::whole(&mut cx, &draft);
    if opts.check_files {
        validate::files(&mut cx, &draft, &opts.base_dir);
    }
    match draft.finish() {
        Some(config) if cx.errors.is_empty() => Ok(resolve(config, &opts.base_dir)),
        _ => {
            assert!(!cx.errors.is_empty(), "a section failed without an error");
            Err(ConfigErrors::new(cx.errors))
        }
    }
}

/// Takes relative file names from `base_dir`.
fn resolve(mut config: Config, base_dir: &Path) -> Config {
    config.base_dir = base_dir.to_path_buf();
    config.relative_paths = RelativePaths {
        secret_file: config.cluster.secret_file.is_relative(),
        token_file: config.security.token_file.as_ref().is_some_and(|t| t.is_relative()),
        identity_file: config.failover.ssh.as_ref().is_some_and(|s| s.identity_file.is_relative()),
        known_hosts: config.failover.ssh.as_ref().is_some_and(|s| s.known_hosts.is_relative()),
    };
    config.cluster.secret_file = base_dir.join(&config.cluster.secret_file);
    if let Some(t) = &mut config.security.token_file {
        *t = base_dir.join(&*t);
    }
    if let Some(ssh) = &mut config.failover.ssh {
        ssh.identity_file = base_dir.join(&ssh.identity_file);
        ssh.known_hosts = base_dir.join(&ssh.known_hosts);
    }
    config
}

#[cfg(test)]
mod tests;
