//! UDP header view (RFC 768). A zero checksum means "none" and stays zero across rewrites.

use super::checksum;
use super::{Error, Result, be16, put16};

/// UDP header length.
pub const HEADER_LEN: usize = 8;
const CHECKSUM: usize = 6;

/// A view of a UDP datagram (or the first fragment of one).
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Checks that the header fits and that the length field covers it. The length may
    /// exceed the buffer (first fragments), so it is not checked against it.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let p = UdpPacket { buffer };
        if usize::from(p.len()) < HEADER_LEN {
            return Err(Error::Malformed);
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

    /// The length field (header and payload).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        be16(self.b(), 4)
    }

    pub fn checksum(&self) -> u16 {
        be16(self.b(), CHECKSUM)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    fn patch_port(&mut self, at: usize, new: u16) {
        let old = be16(self.b(), at);
        let c = checksum::update16_udp(self.checksum(), old, new);
        let b = self.buffer.as_mut();
        put16(b, at, new);
        put16(b, CHECKSUM, c);
    }

    pub fn set_src_port(&mut self, p: u16) {
        self.patch_port(0, p);
    }

    pub fn set_dst_port(&mut self, p: u16) {
        self.patch_port(2, p);
    }

    /// Patches the checksum (if any) for a pseudo-header address change.
    pub fn patch_pseudo_addr(&mut self, old: &[u8], new: &[u8]) {
        let c = self.checksum();
        if c == 0 {
            return;
        }
        let c = match checksum::update_bytes(c, old, new) {
            0 => 0xFFFF,
            c => c,
        };
        put16(self.buffer.as_mut(), CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_checksum_stays_zero() {
        let mut b = [0u8, 1, 0, 2, 0, 8, 0, 0];
        let mut u = UdpPacket::new_checked(&mut b[..]).unwrap();
        u.set_dst_port(80);
        u.patch_pseudo_addr(&[1, 2, 3, 4], &[5, 6, 7, 8]);
        assert_eq!(u.checksum(), 0);
        assert_eq!(u.dst_port(), 80);
    }

    #[test]
    fn bad_length_field() {
        let b = [0u8, 1, 0, 2, 0, 7, 0, 0];
        assert_eq!(UdpPacket::new_checked(&b[..]).unwrap_err(), Error::Malformed);
    }
}
