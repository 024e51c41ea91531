//! IPv4 header view (RFC 791).

use core::net::Ipv4Addr;

use super::checksum;
use super::{Error, Result, be16, put16};

/// Minimum (option-less) IPv4 header length.
pub const HEADER_LEN: usize = 20;

mod field {
    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1FFF;

/// A view of an IPv4 packet. The packet is `buffer[..total_len()]`; bytes past it are ignored
/// (a caller's transmit buffer is usually larger than the packet it holds).
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps bytes without checking; accessors may panic on short buffers. Use for buffers
    /// this crate has just written.
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps untrusted bytes: checks the version, that the header length is at least 20 and
    /// fits, and that the total length covers the header and fits in the buffer.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let p = Ipv4Packet { buffer };
        if p.version() != 4 || p.header_len() < HEADER_LEN {
            return Err(Error::Malformed);
        }
        let total = usize::from(p.total_len());
        if total < p.header_len() {
            return Err(Error::Malformed);
        }
        if total > p.buffer.as_ref().len() {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn version(&self) -> u8 {
        self.b()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[field::VER_IHL] & 0x0F) * 4
    }

    pub fn total_len(&self) -> u16 {
        be16(self.b(), field::TOTAL_LEN)
    }

    pub fn ident(&self) -> u16 {
        be16(self.b(), field::IDENT)
    }

    /// Don't-fragment flag.
    pub fn dont_frag(&self) -> bool {
        be16(self.b(), field::FLAGS_FRAG) & FLAG_DF != 0
    }

    /// More-fragments flag.
    pub fn more_frags(&self) -> bool {
        be16(self.b(), field::FLAGS_FRAG) & FLAG_MF != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (be16(self.b(), field::FLAGS_FRAG) & FRAG_OFFSET_MASK) << 3
    }

    pub fn ttl(&self) -> u8 {
        self.b()[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.b()[field::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        be16(self.b(), field::CHECKSUM)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.src_bytes())
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.dst_bytes())
    }

    pub fn src_bytes(&self) -> [u8; 4] {
        let b = self.b();
        [b[12], b[13], b[14], b[15]]
    }

    pub fn dst_bytes(&self) -> [u8; 4] {
        let b = self.b();
        [b[16], b[17], b[18], b[19]]
    }

    /// Whether the header checksum is valid.
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(&self.b()[..self.header_len()]) == 0
    }

    /// The packet bytes: `buffer[..total_len]`.
    pub fn packet(&self) -> &[u8] {
        &self.b()[..usize::from(self.total_len())]
    }

    /// The header bytes (with options).
    pub fn header(&self) -> &[u8] {
        &self.b()[..self.header_len()]
    }

    /// The payload: from the end of the header to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    fn patch16(&mut self, at: usize, new: u16) {
        let old = be16(self.b(), at);
        let c = checksum::update16(self.checksum(), old, new);
        put16(self.bm(), at, new);
        put16(self.bm(), field::CHECKSUM, c);
    }

    fn patch_addr(&mut self, at: usize, new: Ipv4Addr) {
        let new = new.octets();
        let mut old = [0u8; 4];
        old.copy_from_slice(&self.b()[at..at + 4]);
        let c = checksum::update_bytes(self.checksum(), &old, &new);
        self.bm()[at..at + 4].copy_from_slice(&new);
        put16(self.bm(), field::CHECKSUM, c);
    }

    /// Sets the source address, patching the header checksum.
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.patch_addr(field::SRC, a);
    }

    /// Sets the destination address, patching the header checksum.
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.patch_addr(field::DST, a);
    }

    /// Sets the TTL, patching the header checksum.
    pub fn set_ttl(&mut self, ttl: u8) {
        let w = u16::from_be_bytes([ttl, self.protocol()]);
        self.patch16(field::TTL, w);
    }

    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (h, t) = (self.header_len(), usize::from(self.total_len()));
        &mut self.bm()[h..t]
    }

    /// Writes a fresh option-less header (checksum filled) for a packet of `total_len` bytes.
    pub fn emit_header(&mut self, repr: &Ipv4Repr) {
        let b = &mut self.bm()[..HEADER_LEN];
        b[field::VER_IHL] = 0x45;
        b[1] = 0;
        put16(b, field::TOTAL_LEN, repr.total_len);
        put16(b, field::IDENT, repr.ident);
        put16(b, field::FLAGS_FRAG, if repr.dont_frag { FLAG_DF } else { 0 });
        b[field::TTL] = repr.ttl;
        b[field::PROTOCOL] = repr.protocol;
        put16(b, field::CHECKSUM, 0);
        b[field::SRC..field::SRC + 4].copy_from_slice(&repr.src.octets());
        b[field::DST..field::DST + 4].copy_from_slice(&repr.dst.octets());
        let c = checksum::checksum(b);
        put16(b, field::CHECKSUM, c);
    }
}

/// The fields of a header this crate writes (no options, not a fragment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub total_len: u16,
    pub ident: u16,
    pub ttl: u8,
    pub dont_frag: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = vec![0u8; 28];
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.emit_header(&Ipv4Repr {
            src: Ipv4Addr::new(192, 0, 2, 1),
            dst: Ipv4Addr::new(198, 51, 100, 7),
            protocol: super::super::proto::UDP,
            total_len: 28,
            ident: 0x1234,
            ttl: 64,
            dont_frag: true,
        });
        b
    }

    #[test]
    fn emit_then_parse() {
        let b = sample();
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum());
        assert!(p.dont_frag() && !p.more_frags() && p.frag_offset() == 0);
        assert_eq!(p.dst_addr(), Ipv4Addr::new(198, 51, 100, 7));
        assert_eq!(p.payload().len(), 8);
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut b = sample();
        assert_eq!(Ipv4Packet::new_checked(&b[..10]).unwrap_err(), Error::Truncated);
        assert_eq!(Ipv4Packet::new_checked(&b[..27]).unwrap_err(), Error::Truncated);
        b[0] = 0x44;
        assert_eq!(Ipv4Packet::new_checked(&b[..]).unwrap_err(), Error::Malformed);
        b[0] = 0x65;
        assert_eq!(Ipv4Packet::new_checked(&b[..]).unwrap_err(), Error::Malformed);
        b[0] = 0x4F; // 60-byte header in a 28-byte packet
        assert!(Ipv4Packet::new_checked(&b[..]).is_err());
    }

    #[test]
    fn setters_keep_checksum_valid() {
        let mut b = sample();
        let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
        p.set_dst_addr(Ipv4Addr::new(10, 0, 0, 3));
        p.set_src_addr(Ipv4Addr::new(10, 9, 8, 7));
        p.set_ttl(3);
        assert!(p.verify_checksum());
        assert_eq!(p.ttl(), 3);
    }
}
