//! TCP header view (RFC 9293): ports, flags and the checksum, which is all a layer-4
//! balancer reads or writes.

use super::checksum;
use super::{Error, Result, be16, put16};

/// Minimum TCP header length.
pub const HEADER_LEN: usize = 20;
const CHECKSUM: usize = 16;

/// TCP flag bits (low byte of the flags word).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// A view of a TCP segment (header and whatever payload the buffer holds: a first fragment
/// may hold only part of the segment, which is fine for port and checksum patches).
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Checks that the fixed header and the header length from the data offset fit.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let len = buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let p = TcpPacket { buffer };
        let hl = p.header_len();
        if hl < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if hl > len {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn src_port(&self) -> u16 {
        be16(self.b(), 0)
    }

    pub fn dst_port(&self) -> u16 {
        be16(self.b(), 2)
    }

    pub fn seq_number(&self) -> u32 {
        let b = self.b();
        u32::from_be_bytes([b[4], b[5], b[6], b[7]])
    }

    pub fn ack_number(&self) -> u32 {
        let b = self.b();
        u32::from_be_bytes([b[8], b[9], b[10], b[11]])
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.b()[12] >> 4) * 4
    }

    /// The flag byte (see [`flags`]).
    pub fn flags(&self) -> u8 {
        self.b()[13]
    }

    pub fn checksum(&self) -> u16 {
        be16(self.b(), CHECKSUM)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    fn patch_port(&mut self, at: usize, new: u16) {
        let old = be16(self.b(), at);
        let c = checksum::update16(self.checksum(), old, new);
        let b = self.buffer.as_mut();
        put16(b, at, new);
        put16(b, CHECKSUM, c);
    }

    /// Sets the source port, patching the checksum.
    pub fn set_src_port(&mut self, p: u16) {
        self.patch_port(0, p);
    }

    /// Sets the destination port, patching the checksum.
    pub fn set_dst_port(&mut self, p: u16) {
        self.patch_port(2, p);
    }

    /// Patches the checksum for a pseudo-header address that went from `old` to `new`.
    pub fn patch_pseudo_addr(&mut self, old: &[u8], new: &[u8]) {
        let c = checksum::update_bytes(self.checksum(), old, new);
        put16(self.buffer.as_mut(), CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_lengths() {
        let mut b = [0u8; 24];
        b[12] = 0x50;
        assert!(TcpPacket::new_checked(&b[..]).is_ok());
        assert_eq!(TcpPacket::new_checked(&b[..19]).unwrap_err(), Error::Truncated);
        b[12] = 0x40;
        assert_eq!(TcpPacket::new_checked(&b[..]).unwrap_err(), Error::Malformed);
        b[12] = 0x70;
        assert_eq!(TcpPacket::new_checked(&b[..]).unwrap_err(), Error::Truncated);
    }
}
