//! CRC-64 as Redis and Valkey compute it for DUMP payloads and RDB files: the Jones
//! polynomial, reflected input and output, initial value 0 and no final xor.

/// The Jones polynomial 0xad93d23594c935a9, bit-reversed because the CRC is reflected.
const POLY_REFLECTED: u64 = 0x95ac_9329_ac4b_c9b5;

const TABLE: [u64; 256] = build_table();

const fn build_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY_REFLECTED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// Extends `crc` over `data`. Start from 0; feeding the data in pieces gives the same result
/// as one call, which the RDB file writer needs to checksum as it streams.
pub fn crc64(mut crc: u64, data: &[u8]) -> u64 {
    for &byte in data {
        crc = TABLE[usize::from((crc as u8) ^ byte)] ^ (crc >> 8);
    }
    crc
}
