//! The DUMP/RESTORE envelope: `<type byte><payload><RDB version: u16 LE><CRC64: u64 LE>`,
//! the CRC covering everything before it, version included.

use super::crc64::crc64;
use super::object::{decode_value, encode_value};
use super::{RdbError, RdbValue};

/// The version our payloads claim: Redis 7.0's, the oldest server we want to RESTORE them.
/// Every encoding we write was readable long before it.
pub const DUMP_RDB_VERSION: u16 = 10;

/// The newest version we read: Valkey 7.2 and 8 write 11 (Redis 7.2 does too). Redis 7.4
/// moved to 12 with types we do not read, so refusing it up front gives the clearer error.
pub const MAX_RDB_VERSION: u16 = 11;

const FOOTER_SIZE: usize = 10;
const CRC_SIZE: usize = 8;

/// Serializes `value` as DUMP returns it.
pub fn dump_payload(value: &RdbValue) -> Vec<u8> {
    let mut out = Vec::new();
    encode_value(value, &mut out);
    out.extend_from_slice(&DUMP_RDB_VERSION.to_le_bytes());
    let crc = crc64(0, &out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads a payload as RESTORE receives it, checking it the way Redis does: the version, then
/// the checksum (always: Redis has no "CRC of zero means unchecked" rule for DUMP payloads),
/// then the value. Two checks are stricter than Redis 7.0, which lets a value run on into the
/// footer and ignores bytes left after it: here exactly one value must fill the space before
/// the footer. An empty collection is refused, as RESTORE refuses it.
///
/// [`RdbError::Truncated`], [`RdbError::BadVersion`] and [`RdbError::BadChecksum`] mean the
/// envelope is wrong (Redis replies "DUMP payload version or checksum are wrong"); any other
/// error means the value inside is ("Bad data format").
pub fn parse_dump_payload(payload: &[u8]) -> Result<RdbValue, RdbError> {
    let body_len = payload
        .len()
        .checked_sub(FOOTER_SIZE)
        .ok_or(RdbError::Truncated)?;
    let (covered, crc) = payload
        .split_at_checked(payload.len() - CRC_SIZE)
        .ok_or(RdbError::Truncated)?;
    let (body, version) = covered
        .split_at_checked(body_len)
        .ok_or(RdbError::Truncated)?;
    let version = u16::from_le_bytes(version.try_into().map_err(|_| RdbError::Truncated)?);
    if version > MAX_RDB_VERSION {
        return Err(RdbError::BadVersion(version));
    }
    let crc = u64::from_le_bytes(crc.try_into().map_err(|_| RdbError::Truncated)?);
    if crc64(0, covered) != crc {
        return Err(RdbError::BadChecksum);
    }
    // Past the checks above, a value that ends early is bad data, not a bad envelope.
    let (value, used) = decode_value(body).map_err(|e| match e {
        RdbError::Truncated => RdbError::Corrupt("value ends before the payload footer"),
        other => other,
    })?;
    if used != body.len() {
        return Err(RdbError::Corrupt("bytes left over after the value"));
    }
    if value.is_empty_collection() {
        return Err(RdbError::Corrupt("empty collection"));
    }
    Ok(value)
}
