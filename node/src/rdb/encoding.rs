//! The RDB primitives every object is built from: lengths, strings and doubles.
//!
//! A length is 1, 2, 5 or 9 bytes, chosen by its size; its first two bits say which, and the
//! value `11` marks a string stored in a special encoding instead (an 8/16/32-bit integer or an
//! LZF-compressed blob). Multi-byte lengths are big-endian, the integers little-endian.

use std::borrow::Cow;

use super::cursor::Cursor;
use super::RdbError;

const LEN_6BIT: u8 = 0;
const LEN_14BIT: u8 = 1;
const LEN_32BIT: u8 = 0x80;
const LEN_64BIT: u8 = 0x81;
const LEN_SPECIAL: u8 = 3;

const ENC_INT8: u8 = 0;
const ENC_INT16: u8 = 1;
const ENC_INT32: u8 = 2;
const ENC_LZF: u8 = 3;

/// Redis only tries the integer encoding on strings this short ("-2147483648" is 11 bytes).
const INT_ENCODING_MAX_LEN: usize = 11;
/// Redis only tries LZF on strings longer than this.
const LZF_MIN_LEN: usize = 20;
/// Redis keeps an LZF form only if it saves at least this many bytes.
const LZF_MIN_SAVING: usize = 4;
/// The most one LZF token can expand to: a 3-byte back-reference copies up to 264 bytes.
/// No valid blob decompresses to more than this many times its size.
const LZF_MAX_EXPANSION: usize = 88;
/// The `lzf` crate does its back-reference arithmetic in `i32`, so longer outputs would be
/// mis-decoded; Redis's own limit on a string (proto-max-bulk-len) is far below this.
const LZF_MAX_OUTPUT: usize = i32::MAX as usize;

/// What follows a length prefix: a plain length, or the number of a special string encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    Plain(u64),
    Special(u8),
}

pub fn read_length_or_special(cur: &mut Cursor<'_>) -> Result<Length, RdbError> {
    let first = cur.u8()?;
    match first >> 6 {
        LEN_6BIT => Ok(Length::Plain(u64::from(first & 0x3f))),
        LEN_14BIT => {
            let low = cur.u8()?;
            Ok(Length::Plain(u64::from(first & 0x3f) << 8 | u64::from(low)))
        }
        LEN_SPECIAL => Ok(Length::Special(first & 0x3f)),
        _ => match first {
            LEN_32BIT => Ok(Length::Plain(u64::from(u32::from_be_bytes(cur.array()?)))),
            LEN_64BIT => Ok(Length::Plain(u64::from_be_bytes(cur.array()?))),
            _ => Err(RdbError::Corrupt("unknown length encoding")),
        },
    }
}

pub fn read_len(cur: &mut Cursor<'_>) -> Result<u64, RdbError> {
    match read_length_or_special(cur)? {
        Length::Plain(len) => Ok(len),
        Length::Special(_) => Err(RdbError::Corrupt("special encoding where a length belongs")),
    }
}

/// A length used as an element count or byte count in memory.
pub fn read_count(cur: &mut Cursor<'_>) -> Result<usize, RdbError> {
    usize::try_from(read_len(cur)?).map_err(|_| RdbError::Corrupt("length does not fit in memory"))
}

pub fn write_len(out: &mut Vec<u8>, len: u64) {
    if len < 1 << 6 {
        out.push(len as u8);
    } else if len < 1 << 14 {
        out.push((LEN_14BIT << 6) | (len >> 8) as u8);
        out.push(len as u8);
    } else if let Ok(len) = u32::try_from(len) {
        out.push(LEN_32BIT);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(LEN_64BIT);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

fn write_usize_len(out: &mut Vec<u8>, len: usize) {
    // usize is at most 64 bits on every platform Rust supports.
    write_len(out, len as u64);
}

/// Reads a string in any encoding. Raw strings borrow from the input; integer-encoded and
/// compressed ones have to be materialized.
pub fn read_string<'a>(cur: &mut Cursor<'a>) -> Result<Cow<'a, [u8]>, RdbError> {
    match read_length_or_special(cur)? {
        Length::Plain(len) => {
            let len = usize::try_from(len).map_err(|_| RdbError::Truncated)?;
            Ok(Cow::Borrowed(cur.take(len)?))
        }
        Length::Special(ENC_INT8) => Ok(Cow::Owned(int_to_bytes(i64::from(i8::from_le_bytes(
            cur.array()?,
        ))))),
        Length::Special(ENC_INT16) => Ok(Cow::Owned(int_to_bytes(i64::from(i16::from_le_bytes(
            cur.array()?,
        ))))),
        Length::Special(ENC_INT32) => Ok(Cow::Owned(int_to_bytes(i64::from(i32::from_le_bytes(
            cur.array()?,
        ))))),
        Length::Special(ENC_LZF) => read_lzf(cur).map(Cow::Owned),
        Length::Special(_) => Err(RdbError::Corrupt("unknown string encoding")),
    }
}

fn read_lzf(cur: &mut Cursor<'_>) -> Result<Vec<u8>, RdbError> {
    let compressed_len = read_count(cur)?;
    let len = read_count(cur)?;
    let compressed = cur.take(compressed_len)?;
    // Checked before decompressing because the lzf crate allocates the claimed length up front.
    if len == 0 || len > compressed_len.saturating_mul(LZF_MAX_EXPANSION) {
        return Err(RdbError::Corrupt(
            "LZF string length does not match its data",
        ));
    }
    if len > LZF_MAX_OUTPUT {
        return Err(RdbError::Corrupt("LZF string longer than 2 GiB"));
    }
    let bytes = lzf::decompress(compressed, len)
        .map_err(|_| RdbError::Corrupt("LZF string does not decompress"))?;
    if bytes.len() != len {
        return Err(RdbError::Corrupt(
            "LZF string length does not match its data",
        ));
    }
    Ok(bytes)
}

/// Writes a string the way Redis 7.0 does, so that our DUMP payloads match its bytes: a
/// canonical decimal that fits 32 bits as an integer, a long string LZF-compressed when that
/// saves enough, anything else raw.
pub fn write_string(out: &mut Vec<u8>, s: &[u8]) {
    if let Some(n) = int_encodable(s) {
        write_int_encoded(out, n);
        return;
    }
    if s.len() > LZF_MIN_LEN {
        let written = super::lzf::with_compressor(|c| match c.compress(s) {
            // Redis gives its compressor an output buffer of len - 4 bytes and keeps the result
            // only if it fit; ours allows len bytes, so the limit is applied here.
            Some(compressed) if compressed.len() <= s.len() - LZF_MIN_SAVING => {
                out.push((LEN_SPECIAL << 6) | ENC_LZF);
                write_usize_len(out, compressed.len());
                write_usize_len(out, s.len());
                out.extend_from_slice(compressed);
                true
            }
            _ => false,
        });
        if written {
            return;
        }
    }
    write_raw_string(out, s);
}

/// Writes a string as length and bytes, with no encoding attempted.
pub fn write_raw_string(out: &mut Vec<u8>, s: &[u8]) {
    write_usize_len(out, s.len());
    out.extend_from_slice(s);
}

/// The value of `s` if Redis would store it as an integer: it must read back as exactly the
/// same bytes (no sign on positives, no leading zeros, no "-0") and fit 32 bits.
fn int_encodable(s: &[u8]) -> Option<i32> {
    if s.is_empty() || s.len() > INT_ENCODING_MAX_LEN {
        return None;
    }
    let n: i64 = std::str::from_utf8(s).ok()?.parse().ok()?;
    if itoa::Buffer::new().format(n).as_bytes() != s {
        return None;
    }
    i32::try_from(n).ok()
}

fn write_int_encoded(out: &mut Vec<u8>, n: i32) {
    let special = LEN_SPECIAL << 6;
    if let Ok(n) = i8::try_from(n) {
        out.push(special | ENC_INT8);
        out.extend_from_slice(&n.to_le_bytes());
    } else if let Ok(n) = i16::try_from(n) {
        out.push(special | ENC_INT16);
        out.extend_from_slice(&n.to_le_bytes());
    } else {
        out.push(special | ENC_INT32);
        out.extend_from_slice(&n.to_le_bytes());
    }
}

pub fn int_to_bytes(n: i64) -> Vec<u8> {
    itoa::Buffer::new().format(n).as_bytes().to_vec()
}

/// A double as 8 little-endian bytes (ZSET_2 scores, since RDB version 8).
pub fn read_binary_double(cur: &mut Cursor<'_>) -> Result<f64, RdbError> {
    Ok(f64::from_le_bytes(cur.array()?))
}

pub fn write_binary_double(out: &mut Vec<u8>, value: f64) {
    out.extend_from_slice(&value.to_le_bytes());
}

const DOUBLE_NAN: u8 = 253;
const DOUBLE_POS_INF: u8 = 254;
const DOUBLE_NEG_INF: u8 = 255;

/// A double as a length byte and decimal text (the old ZSET type 3); three length values
/// stand for NaN and the infinities instead.
pub fn read_string_double(cur: &mut Cursor<'_>) -> Result<f64, RdbError> {
    match cur.u8()? {
        DOUBLE_NAN => Ok(f64::NAN),
        DOUBLE_POS_INF => Ok(f64::INFINITY),
        DOUBLE_NEG_INF => Ok(f64::NEG_INFINITY),
        len => parse_double(cur.take(usize::from(len))?),
    }
}

/// Parses a double written as text, as zset scores inside ziplists and listpacks are, and
/// as the old ZSET type writes them ("1.5", "-inf", "1e+20").
pub fn parse_double(text: &[u8]) -> Result<f64, RdbError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or(RdbError::Corrupt("score is not a number"))
}
