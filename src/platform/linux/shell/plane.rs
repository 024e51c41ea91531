//! Either backend of the data-plane shell behind one type, so the daemon holds one value
//! whatever `dataplane.backend` chose.

use super::tun::{Control, Shell, ShellControl};
use super::xdp::program::MatchSet;
use super::xdp::{XdpShell, XdpStatsSnapshot};
use super::{PacketProcessor, ShellError, StatsSnapshot};

/// A running data plane.
#[derive(Debug)]
pub enum DataPlane<P: PacketProcessor + 'static> {
    Tun(Shell<P>),
    Xdp(XdpShell<P>),
}

/// The final counters of either backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlaneStats {
    Tun(StatsSnapshot),
    Xdp(XdpStatsSnapshot),
}

impl<P: PacketProcessor + 'static> DataPlane<P> {
    /// `tun` or `af_xdp`.
    pub fn backend(&self) -> &'static str {
        match self {
            DataPlane::Tun(_) => "tun",
            DataPlane::Xdp(_) => "af_xdp",
        }
    }

    pub fn apply(&self, f: Control<P>) -> Result<(), ShellError> {
        match self {
            DataPlane::Tun(s) => s.apply(f),
            DataPlane::Xdp(s) => s.apply(f),
        }
    }

    pub fn controller(&self) -> ShellControl<P> {
        match self {
            DataPlane::Tun(s) => s.controller(),
            DataPlane::Xdp(s) => s.controller(),
        }
    }

    pub fn stats(&self) -> PlaneStats {
        match self {
            DataPlane::Tun(s) => PlaneStats::Tun(s.stats()),
            DataPlane::Xdp(s) => PlaneStats::Xdp(s.stats()),
        }
    }

    /// AF_XDP: replaces the classifier's match set. TUN: nothing (its steering is rules).
    pub fn set_matches(&self, set: &MatchSet) -> Result<(), ShellError> {
        match self {
            DataPlane::Tun(_) => Ok(()),
            DataPlane::Xdp(s) => s.set_matches(set),
        }
    }

    pub fn stop(self) -> Result<(PlaneStats, Vec<P>), ShellError> {
        match self {
            DataPlane::Tun(s) => s.stop().map(|(st, p)| (PlaneStats::Tun(st), p)),
            DataPlane::Xdp(s) => s.stop().map(|(st, p)| (PlaneStats::Xdp(st), p)),
        }
    }
}
