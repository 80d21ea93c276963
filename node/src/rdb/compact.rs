//! The packed containers that RDB stores as one string: listpack (Redis 7+, Valkey),
//! ziplist (Redis 3.2 to 6.2), intset and zipmap (Redis before 2.6).
//!
//! Each parser walks the whole blob and checks every header against what it found (total
//! size, element count, end marker, back-links), because these bytes come straight from a
//! RESTORE argument or a file and a mismatch means the rest cannot be trusted either.

use super::cursor::{bounded_capacity, Cursor};
use super::encoding::{int_to_bytes, parse_double};
use super::RdbError;

/// One element of a listpack or ziplist: both store small integers as integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element<'a> {
    Bytes(&'a [u8]),
    Int(i64),
}

impl Element<'_> {
    /// The element as a string, integers in decimal as Redis returns them.
    pub fn to_bytes(self) -> Vec<u8> {
        match self {
            Element::Bytes(b) => b.to_vec(),
            Element::Int(n) => int_to_bytes(n),
        }
    }

    /// The element read as a sorted-set score.
    pub fn to_score(self) -> Result<f64, RdbError> {
        match self {
            Element::Bytes(b) => parse_double(b),
            // Redis converts the same way (a plain cast), rounding beyond 2^53.
            Element::Int(n) => Ok(n as f64),
        }
    }
}

/// Every element encoding takes at least this many bytes (encoding byte plus back-link or
/// previous-length byte), which bounds how many elements a blob can hold.
const MIN_ENTRY_SIZE: usize = 2;

/// The element count both headers use for "too many to count here".
const UNKNOWN_COUNT: u16 = u16::MAX;

const LISTPACK_HEADER_SIZE: usize = 6;
const LISTPACK_END: u8 = 0xff;

/// Reads a listpack: a 4-byte total size and 2-byte count (little-endian), the entries, and
/// an end byte. Each entry is an encoding byte that gives its type and length, the data, and
/// a "back-length" (the entry's size, 7 bits a byte) for walking backwards.
pub fn listpack(blob: &[u8]) -> Result<Vec<Element<'_>>, RdbError> {
    let mut cur = Cursor::new(blob);
    let total = u32::from_le_bytes(cur.array()?);
    let count = u16::from_le_bytes(cur.array()?);
    if usize::try_from(total).ok() != Some(blob.len()) {
        return Err(RdbError::Corrupt(
            "listpack size header does not match its length",
        ));
    }
    let mut elements = Vec::with_capacity(bounded_capacity(
        usize::from(count),
        blob.len().saturating_sub(LISTPACK_HEADER_SIZE),
        MIN_ENTRY_SIZE,
    ));
    loop {
        let start = cur.position();
        let encoding = cur.u8()?;
        if encoding == LISTPACK_END {
            break;
        }
        elements.push(listpack_entry(encoding, &mut cur)?);
        let entry_len = cur.position() - start;
        check_backlen(&mut cur, entry_len)?;
    }
    if !cur.is_at_end() {
        return Err(RdbError::Corrupt("listpack has bytes after its end marker"));
    }
    check_count(
        count,
        elements.len(),
        "listpack element count does not match",
    )?;
    Ok(elements)
}

fn listpack_entry<'a>(encoding: u8, cur: &mut Cursor<'a>) -> Result<Element<'a>, RdbError> {
    Ok(match encoding {
        // 0xxxxxxx: 7-bit unsigned integer.
        0x00..=0x7f => Element::Int(i64::from(encoding)),
        // 10xxxxxx: string of up to 63 bytes.
        0x80..=0xbf => Element::Bytes(cur.take(usize::from(encoding & 0x3f))?),
        // 110xxxxx yyyyyyyy: 13-bit signed integer.
        0xc0..=0xdf => {
            let low = cur.u8()?;
            Element::Int(sign_extend(
                i64::from(encoding & 0x1f) << 8 | i64::from(low),
                13,
            ))
        }
        // 1110xxxx yyyyyyyy: string of up to 4095 bytes.
        0xe0..=0xef => {
            let low = cur.u8()?;
            let len = usize::from(encoding & 0x0f) << 8 | usize::from(low);
            Element::Bytes(cur.take(len)?)
        }
        0xf0 => {
            let len = usize::try_from(u32::from_le_bytes(cur.array()?))
                .map_err(|_| RdbError::Truncated)?;
            Element::Bytes(cur.take(len)?)
        }
        0xf1 => Element::Int(i64::from(i16::from_le_bytes(cur.array()?))),
        0xf2 => {
            let [a, b, c] = cur.array()?;
            Element::Int(sign_extend(i64::from(u32::from_le_bytes([a, b, c, 0])), 24))
        }
        0xf3 => Element::Int(i64::from(i32::from_le_bytes(cur.array()?))),
        0xf4 => Element::Int(i64::from_le_bytes(cur.array()?)),
        _ => return Err(RdbError::Corrupt("listpack entry has an unknown encoding")),
    })
}

/// Checks an entry's back-length. Its size follows from the entry size by the thresholds
/// Redis uses when writing it; the bytes hold 7 bits each, most significant first, with the
/// high bit set on every byte but the first.
fn check_backlen(cur: &mut Cursor<'_>, entry_len: usize) -> Result<(), RdbError> {
    let size = match entry_len {
        0..=127 => 1,
        128..=16382 => 2,
        16383..=2_097_150 => 3,
        2_097_151..=268_435_454 => 4,
        _ => 5,
    };
    let bytes = cur.take(size)?;
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let continues = b & 0x80 != 0;
        if continues != (i > 0) {
            return Err(RdbError::Corrupt(
                "listpack entry has a malformed back-length",
            ));
        }
        value = value << 7 | u64::from(b & 0x7f);
    }
    if usize::try_from(value).ok() != Some(entry_len) {
        return Err(RdbError::Corrupt(
            "listpack entry's back-length does not match its size",
        ));
    }
    Ok(())
}

const ZIPLIST_HEADER_SIZE: usize = 10;
const ZIPLIST_END: u8 = 0xff;
/// A previous-entry length of 254 or more takes this marker plus 4 bytes.
const ZIPLIST_BIG_PREVLEN: u8 = 254;

/// Reads a ziplist: 4-byte total size, 4-byte offset of the last entry and 2-byte count
/// (little-endian), the entries, and an end byte. Each entry starts with the previous entry's
/// size (1 or 5 bytes), then an encoding byte for its type and length, then the data.
pub fn ziplist(blob: &[u8]) -> Result<Vec<Element<'_>>, RdbError> {
    let mut cur = Cursor::new(blob);
    let total = u32::from_le_bytes(cur.array()?);
    let tail = u32::from_le_bytes(cur.array()?);
    let count = u16::from_le_bytes(cur.array()?);
    if usize::try_from(total).ok() != Some(blob.len()) {
        return Err(RdbError::Corrupt(
            "ziplist size header does not match its length",
        ));
    }
    let mut elements = Vec::with_capacity(bounded_capacity(
        usize::from(count),
        blob.len().saturating_sub(ZIPLIST_HEADER_SIZE),
        MIN_ENTRY_SIZE,
    ));
    let mut prev_entry_len = 0;
    let mut last_entry = ZIPLIST_HEADER_SIZE;
    loop {
        let start = cur.position();
        let first = cur.u8()?;
        if first == ZIPLIST_END {
            break;
        }
        // Redis does not shrink this field when the previous entry shrinks, so a 5-byte
        // form holding a small value is valid.
        let prev_len = if first == ZIPLIST_BIG_PREVLEN {
            usize::try_from(u32::from_le_bytes(cur.array()?)).map_err(|_| RdbError::Truncated)?
        } else {
            usize::from(first)
        };
        if prev_len != prev_entry_len {
            return Err(RdbError::Corrupt(
                "ziplist entry's previous-length does not match",
            ));
        }
        elements.push(ziplist_entry(&mut cur)?);
        prev_entry_len = cur.position() - start;
        last_entry = start;
    }
    if !cur.is_at_end() {
        return Err(RdbError::Corrupt("ziplist has bytes after its end marker"));
    }
    if usize::try_from(tail).ok() != Some(last_entry) {
        return Err(RdbError::Corrupt(
            "ziplist tail offset does not point at its last entry",
        ));
    }
    check_count(
        count,
        elements.len(),
        "ziplist element count does not match",
    )?;
    Ok(elements)
}

fn ziplist_entry<'a>(cur: &mut Cursor<'a>) -> Result<Element<'a>, RdbError> {
    let encoding = cur.u8()?;
    Ok(match encoding >> 6 {
        // 00xxxxxx: string of up to 63 bytes.
        0 => Element::Bytes(cur.take(usize::from(encoding & 0x3f))?),
        // 01xxxxxx yyyyyyyy: string of up to 16383 bytes, length big-endian.
        1 => {
            let low = cur.u8()?;
            let len = usize::from(encoding & 0x3f) << 8 | usize::from(low);
            Element::Bytes(cur.take(len)?)
        }
        // 10______ + 4 bytes: longer string, length big-endian; Redis ignores the low bits.
        2 => {
            let len = usize::try_from(u32::from_be_bytes(cur.array()?))
                .map_err(|_| RdbError::Truncated)?;
            Element::Bytes(cur.take(len)?)
        }
        // 11xxxxxx: integers, little-endian.
        _ => match encoding {
            0xc0 => Element::Int(i64::from(i16::from_le_bytes(cur.array()?))),
            0xd0 => Element::Int(i64::from(i32::from_le_bytes(cur.array()?))),
            0xe0 => Element::Int(i64::from_le_bytes(cur.array()?)),
            0xf0 => {
                let [a, b, c] = cur.array()?;
                Element::Int(sign_extend(i64::from(u32::from_le_bytes([a, b, c, 0])), 24))
            }
            0xfe => Element::Int(i64::from(i8::from_le_bytes(cur.array()?))),
            // 1111xxxx: the value xxxx - 1 (0 to 12) held in the encoding byte itself.
            0xf1..=0xfd => Element::Int(i64::from(encoding & 0x0f) - 1),
            _ => return Err(RdbError::Corrupt("ziplist entry has an unknown encoding")),
        },
    })
}

/// Reads an intset: 4-byte element width (2, 4 or 8) and 4-byte count, then the integers,
/// all little-endian and strictly ascending.
pub fn intset(blob: &[u8]) -> Result<Vec<i64>, RdbError> {
    let mut cur = Cursor::new(blob);
    let width = u32::from_le_bytes(cur.array()?);
    let count = u32::from_le_bytes(cur.array()?);
    let width: usize = match width {
        2 => 2,
        4 => 4,
        8 => 8,
        _ => return Err(RdbError::Corrupt("intset has an unknown element width")),
    };
    let body = cur.rest();
    let expected = usize::try_from(count)
        .ok()
        .and_then(|n| n.checked_mul(width));
    if expected != Some(body.len()) {
        return Err(RdbError::Corrupt("intset length does not match its count"));
    }
    let mut values = Vec::with_capacity(body.len() / width);
    for chunk in body.chunks_exact(width) {
        let value = match *chunk {
            [a, b] => i64::from(i16::from_le_bytes([a, b])),
            [a, b, c, d] => i64::from(i32::from_le_bytes([a, b, c, d])),
            [a, b, c, d, e, f, g, h] => i64::from_le_bytes([a, b, c, d, e, f, g, h]),
            _ => return Err(RdbError::Corrupt("intset has an unknown element width")),
        };
        // Ascending order is what makes an intset a set: a repeat would be a duplicate member.
        if values.last().is_some_and(|&last| last >= value) {
            return Err(RdbError::Corrupt("intset is not strictly ascending"));
        }
        values.push(value);
    }
    Ok(values)
}

/// A hash field and its value, borrowed from the blob.
pub type FieldValue<'a> = (&'a [u8], &'a [u8]);

const ZIPMAP_END: u8 = 0xff;
/// A length of 254 or more takes this marker plus 4 bytes; a count this high means "count
/// them".
const ZIPMAP_BIGLEN: u8 = 254;

/// Reads a zipmap (hashes in RDB files from before Redis 2.6): a 1-byte count, then per pair
/// the field's length and bytes, the value's length, a count of unused bytes, the value's
/// bytes and the unused bytes; then an end byte.
pub fn zipmap(blob: &[u8]) -> Result<Vec<FieldValue<'_>>, RdbError> {
    let mut cur = Cursor::new(blob);
    let count = cur.u8()?;
    // A pair takes at least 4 bytes: two lengths, the free count and an (empty) field.
    let mut pairs = Vec::with_capacity(bounded_capacity(usize::from(count), blob.len(), 4));
    loop {
        let first = cur.u8()?;
        if first == ZIPMAP_END {
            break;
        }
        let field_len = zipmap_len(first, &mut cur)?;
        let field = cur.take(field_len)?;
        let first = cur.u8()?;
        if first == ZIPMAP_END {
            return Err(RdbError::Corrupt(
                "zipmap ends between a field and its value",
            ));
        }
        let value_len = zipmap_len(first, &mut cur)?;
        let free = cur.u8()?;
        let value = cur.take(value_len)?;
        cur.take(usize::from(free))?;
        pairs.push((field, value));
    }
    if !cur.is_at_end() {
        return Err(RdbError::Corrupt("zipmap has bytes after its end marker"));
    }
    if count < ZIPMAP_BIGLEN && usize::from(count) != pairs.len() {
        return Err(RdbError::Corrupt("zipmap pair count does not match"));
    }
    Ok(pairs)
}

fn zipmap_len(first: u8, cur: &mut Cursor<'_>) -> Result<usize, RdbError> {
    if first < ZIPMAP_BIGLEN {
        Ok(usize::from(first))
    } else {
        usize::try_from(u32::from_le_bytes(cur.array()?)).map_err(|_| RdbError::Truncated)
    }
}

fn check_count(header: u16, found: usize, what: &'static str) -> Result<(), RdbError> {
    if header != UNKNOWN_COUNT && usize::from(header) != found {
        return Err(RdbError::Corrupt(what));
    }
    Ok(())
}

/// Reads the low `bits` bits of `value` as a two's-complement number.
fn sign_extend(value: i64, bits: u32) -> i64 {
    let shift = 64 - bits;
    (value << shift) >> shift
}
