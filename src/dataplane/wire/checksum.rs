//! The Internet checksum: full computation (RFC 1071) and incremental update (RFC 1624).
//!
//! The incremental form is equation 3 of RFC 1624, `HC' = ~(~HC + ~m + m')`, which (unlike
//! equation 2 of RFC 1141) never turns a valid checksum into the `0xFFFF` "negative zero":
//! for any header that is not all zeros it yields exactly what a full recomputation yields.
//! The property tests in this module check that claim.

/// Adds `data` (big-endian 16-bit words, an odd byte padded with zero) to a running sum.
#[inline]
pub fn sum(mut acc: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a running sum into 16 bits with end-around carries (not complemented).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xFFFF {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    acc as u16
}

/// The checksum of `data`: the complement of its folded sum.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

/// The running sum of an IPv4 pseudo-header (RFC 793/768) for `len` bytes of `protocol`.
#[inline]
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], protocol: u8, len: u16) -> u64 {
    let acc = sum(0, &src);
    let acc = sum(acc, &dst);
    acc + u64::from(protocol) + u64::from(len)
}

/// The running sum of an IPv6 pseudo-header (RFC 8200 section 8.1) for `len` bytes of
/// upper-layer `protocol`.
#[inline]
pub fn pseudo_header_v6(src: [u8; 16], dst: [u8; 16], protocol: u8, len: u32) -> u64 {
    let acc = sum(0, &src);
    let acc = sum(acc, &dst);
    acc + u64::from(protocol) + u64::from(len >> 16) + u64::from(len & 0xFFFF)
}

/// RFC 1624 eq. 3: the checksum after one 16-bit word of the covered data went from `old`
/// to `new`.
#[inline]
pub fn update16(hc: u16, old: u16, new: u16) -> u16 {
    let acc = u64::from(!hc) + u64::from(!old) + u64::from(new);
    !fold(acc)
}

/// The checksum after `old` bytes of the covered data became `new` (same even length, e.g.
/// an address of either family).
#[inline]
pub fn update_bytes(hc: u16, old: &[u8], new: &[u8]) -> u16 {
    debug_assert_eq!(old.len(), new.len());
    let mut acc = u64::from(!hc);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        acc += u64::from(!u16::from_be_bytes([o[0], o[1]]));
        acc += u64::from(u16::from_be_bytes([n[0], n[1]]));
    }
    !fold(acc)
}

/// The *partial* checksum (the folded, uncomplemented pseudo-header sum that a packet with
/// checksum offload carries until the device finishes it) after pseudo-header bytes went
/// from `old` to `new`.
#[inline]
pub fn update_partial(partial: u16, old: &[u8], new: &[u8]) -> u16 {
    !update_bytes(!partial, old, new)
}

/// Like [`update16`] for a UDP checksum, where `0` means "no checksum" and must stay `0`,
/// and a computed `0` is sent as `0xFFFF` (RFC 768).
#[inline]
pub fn update16_udp(hc: u16, old: u16, new: u16) -> u16 {
    if hc == 0 {
        return 0;
    }
    match update16(hc, old, new) {
        0 => 0xFFFF,
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example() {
        // The example of RFC 1071 section 3: sum 0xddf2, checksum 0x220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), 0x220d);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(checksum(&[0x12, 0x34, 0x56]), checksum(&[0x12, 0x34, 0x56, 0x00]));
    }

    proptest! {
        /// Patching a partial (pseudo-header) checksum then finishing it over the segment
        /// equals the full checksum of the rewritten packet.
        #[test]
        fn partial_update_then_finish(
            seg in proptest::collection::vec(any::<u8>(), 8..64),
            a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), n in any::<[u8; 4]>(),
        ) {
            let len = seg.len() as u16;
            let partial = fold(pseudo_header_v4(a, b, 6, len));
            let patched = update_partial(partial, &b, &n);
            prop_assert_eq!(patched, fold(pseudo_header_v4(a, n, 6, len)));
        }

        /// Changing any word and patching the checksum incrementally equals recomputing it.
        #[test]
        fn incremental_equals_full(
            mut data in proptest::collection::vec(any::<u8>(), 4..64),
            at in any::<prop::sample::Index>(),
            new in any::<u16>(),
        ) {
            if data.len() % 2 == 1 { data.pop(); }
            // Keep the data away from all-zeros, as any real header is (version nibble).
            data[0] |= 0x40;
            let words = data.len() / 2;
            // Word 1 holds the checksum; change some other word.
            let i = at.index(words - 1);
            let i = if i >= 1 { i + 1 } else { i };
            data[2] = 0; data[3] = 0;
            let c = checksum(&data);
            data[2..4].copy_from_slice(&c.to_be_bytes());
            prop_assert_eq!(checksum(&data), 0);
            let old = u16::from_be_bytes([data[2 * i], data[2 * i + 1]]);
            if i == 0 && new & 0xF000 == 0 { return Ok(()); }
            data[2 * i..2 * i + 2].copy_from_slice(&new.to_be_bytes());
            let inc = update16(c, old, new);
            data[2] = 0; data[3] = 0;
            prop_assert_eq!(inc, checksum(&data));
        }

        /// Multi-word (address) updates equal recomputation.
        #[test]
        fn update_bytes_equals_full(
            mut data in proptest::collection::vec(any::<u8>(), 12..40),
            new in any::<[u8; 4]>(),
        ) {
            if data.len() % 2 == 1 { data.pop(); }
            data[0] |= 0x40;
            data[2] = 0; data[3] = 0;
            let c = checksum(&data);
            let old: [u8; 4] = data[4..8].try_into().unwrap();
            data[4..8].copy_from_slice(&new);
            prop_assert_eq!(update_bytes(c, &old, &new), checksum(&data));
        }
    }
}
