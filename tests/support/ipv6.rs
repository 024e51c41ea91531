//! What the IPv6 namespace tests share: the skip rule, addresses without duplicate-address
//! detection, neighbour entries and MACs, and the lab's secret files.
//!
//! Why here: three tests (`ipv6_ns`, `ipv6_control_ns`, `node6_ns`) read the neighbour
//! table the same way to tell who answered NDP for a VIP; one copy keeps "answered" the
//! same in all of them.

use std::path::Path;

use super::{in_ns, is_root, ns_output};

/// Whether an IPv6 namespace test runs here: not when this process is one of its helpers
/// (`helper_env` set), and not without root, `/dev/net/tun` and IPv6 (said loudly: skipped,
/// never passed).
pub fn can_run(helper_env: &str) -> bool {
    if std::env::var(helper_env).is_ok() {
        return false;
    }
    let ok = is_root() && Path::new("/dev/net/tun").exists() && Path::new("/proc/net/if_inet6").exists();
    if !ok {
        println!("SKIPPED: needs root, /dev/net/tun and IPv6");
        eprintln!("SKIPPED: needs root, /dev/net/tun and IPv6");
    }
    ok
}

/// Adds `cidr` to `dev` in `ns` without duplicate-address detection (usable at once).
pub fn addr6(ns: &str, cidr: &str, dev: &str) {
    in_ns(ns, &["ip", "addr", "add", cidr, "dev", dev, "nodad"]);
}

/// The MAC of `ns`'s neighbour entry for `ip`, if it has a usable one (not FAILED).
pub fn neigh_mac(ns: &str, ip: &str) -> Option<String> {
    let out = ns_output(ns, &["ip", "neigh", "show", ip]);
    let f: Vec<&str> = out.split_whitespace().collect();
    let i = f.iter().position(|w| *w == "lladdr")?;
    (!out.contains("FAILED")).then(|| f.get(i + 1).map(|m| m.to_string())).flatten()
}

/// The MAC of `dev` in `ns`.
pub fn mac_of(ns: &str, dev: &str) -> String {
    ns_output(ns, &["cat", &format!("/sys/class/net/{dev}/address")]).trim().to_string()
}

/// Writes the lab's files (secret, token, config) into `dir`, mode 0600.
pub fn write_private(dir: &Path, files: &[(&str, &str)]) {
    use std::os::unix::fs::PermissionsExt;
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("lab file");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
}
