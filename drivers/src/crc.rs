//! The E2E-CRC that CGM and newer Bluetooth health profiles append to each record.

/// CRC-16/MCRF4XX: the CCITT polynomial 0x1021, seed 0xFFFF, bit-reflected, no final XOR.
/// That is what the CGM specification's "CRC-CCITT, seed 0xFFFF" works out to on the air.
const E2E: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_MCRF4XX);

/// Computes the E2E-CRC over `bytes`.
pub fn e2e_crc(bytes: &[u8]) -> u16 {
    E2E.checksum(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    // drivers/docs/test-vectors.md, "Encodings" vector 10.
    #[test]
    fn crc_vectors() {
        assert_eq!(e2e_crc(b"123456789"), 0x6F91);
        assert_eq!(e2e_crc(b"A"), 0x5C0A);
        assert_eq!(e2e_crc(&[0x58, 0x25, 0x1F, 0x98]), 0x07F1);
        assert_eq!(
            e2e_crc(&[0x3E, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09]),
            0x2F01
        );
    }
}
