//! ICMPv4 header view (RFC 792): type, code, checksum, the 4 "rest of header" bytes (the
//! next-hop MTU of fragmentation-needed, RFC 1191) and the payload (for errors, the quoted
//! datagram: its IP header and at least 8 bytes of its transport header).

use super::checksum;
use super::{Error, Result, be16, put16};

/// ICMP header length.
pub const HEADER_LEN: usize = 8;
const CHECKSUM: usize = 2;

/// ICMP types the engine distinguishes.
pub mod kind {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const SOURCE_QUENCH: u8 = 4;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
    /// Destination unreachable code: fragmentation needed and DF set.
    pub const CODE_FRAG_NEEDED: u8 = 4;
}

/// Whether an ICMP type is an error that quotes the datagram that caused it.
pub fn is_error(t: u8) -> bool {
    matches!(t, kind::DEST_UNREACHABLE | kind::SOURCE_QUENCH | kind::TIME_EXCEEDED | kind::PARAMETER_PROBLEM)
}

/// A view of an ICMP message.
#[derive(Debug, Clone)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        IcmpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(IcmpPacket { buffer })
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn msg_type(&self) -> u8 {
        self.b()[0]
    }

    pub fn code(&self) -> u8 {
        self.b()[1]
    }

    pub fn checksum(&self) -> u16 {
        be16(self.b(), CHECKSUM)
    }

    /// Next-hop MTU of a fragmentation-needed message (RFC 1191).
    pub fn next_hop_mtu(&self) -> u16 {
        be16(self.b(), 6)
    }

    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(self.b()) == 0
    }

    pub fn payload(&self) -> &[u8] {
        &self.b()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    /// The payload, mutable. Callers that change it patch the checksum with
    /// [`IcmpPacket::patch_checksum`] (the checksum covers the whole message).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }

    /// Patches the checksum for covered bytes that went from `old` to `new` at an even
    /// offset of the message.
    pub fn patch_checksum(&mut self, old: &[u8], new: &[u8]) {
        let c = checksum::update_bytes(self.checksum(), old, new);
        put16(self.buffer.as_mut(), CHECKSUM, c);
    }

    /// Writes the 8-byte header of an error message and fills the checksum over the whole
    /// buffer (header and the payload already in place).
    pub fn emit_error(&mut self, msg_type: u8, code: u8, rest: [u8; 4]) {
        let b = self.buffer.as_mut();
        b[0] = msg_type;
        b[1] = code;
        put16(b, CHECKSUM, 0);
        b[4..8].copy_from_slice(&rest);
        let c = checksum::checksum(b);
        put16(b, CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_error_checksums() {
        let mut b = [0u8; 36];
        b[8] = 0x45;
        let mut p = IcmpPacket::new_checked(&mut b[..]).unwrap();
        p.emit_error(kind::DEST_UNREACHABLE, kind::CODE_FRAG_NEEDED, [0, 0, 0x05, 0xc8]);
        assert!(p.verify_checksum());
        assert_eq!(p.next_hop_mtu(), 1480);
        assert!(is_error(p.msg_type()));
        assert_eq!(IcmpPacket::new_checked(&b[..7]).unwrap_err(), Error::Truncated);
    }
}
