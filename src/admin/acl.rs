//! Who may talk to the admin port: the `security.admin_allow` / `admin_deny` CIDR lists,
//! checked on the peer address of every accepted connection before a byte is read.
//!
//! The allow list is consulted first, then the deny list; the first match wins, and an
//! address in neither is refused. With the defaults (allow `127.0.0.1/32` and `::1/128`,
//! deny everything) only loopback gets in. An IPv4-mapped IPv6 peer (`::ffff:a.b.c.d`) is
//! judged as its IPv4 address, so a dual-stack socket cannot be used to slip past an IPv4
//! rule.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::Security;

/// The admin channel's allow/deny lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl Acl {
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        Acl { allow, deny }
    }

    pub fn from_config(sec: &Security) -> Self {
        Acl::new(sec.admin_allow.clone(), sec.admin_deny.clone())
    }

    /// Whether `peer` may connect.
    pub fn allows(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        if self.allow.iter().any(|n| n.contains(&peer)) {
            return true;
        }
        // Listed in deny, or in neither: refused.
        false
    }

    /// Whether `peer` is explicitly denied (for the log line: "denied" vs "not allowed").
    pub fn explicitly_denied(&self, peer: IpAddr) -> bool {
        !self.allows(peer) && self.deny.iter().any(|n| n.contains(&peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn defaults_allow_loopback_only() {
        let acl = Acl::from_config(&Security::default());
        assert!(acl.allows(ip("127.0.0.1")));
        assert!(acl.allows(ip("::1")));
        assert!(acl.allows(ip("::ffff:127.0.0.1")), "mapped loopback is loopback");
        assert!(!acl.allows(ip("127.0.0.2")));
        assert!(!acl.allows(ip("10.0.0.1")));
        assert!(!acl.allows(ip("::ffff:10.0.0.1")));
        assert!(acl.explicitly_denied(ip("10.0.0.1")));
    }

    #[test]
    fn allow_list_is_checked_first_and_unlisted_is_refused() {
        let n = |s: &str| s.parse::<IpNet>().expect("net");
        let acl = Acl::new(vec![n("10.0.0.0/24")], vec![n("10.0.0.5/32")]);
        assert!(acl.allows(ip("10.0.0.5")), "allow matched first");
        assert!(!acl.allows(ip("10.0.1.1")), "in neither list");
        assert!(!acl.explicitly_denied(ip("10.0.1.1")));
    }
}
