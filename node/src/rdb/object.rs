//! One value as RDB stores it: a type byte, then a payload whose layout the type decides.
//!
//! Reading accepts every value encoding Redis 7 and Valkey 8 write, and the older ones they
//! still load. Writing uses the plain, non-compact types (Redis 7.0 and Valkey 8 load them and
//! re-pack small values themselves) and Redis's string encodings, so that our strings come
//! out byte-for-byte as Redis 7.0 writes them.

use std::collections::HashSet;

use super::compact::{self, Element};
use super::cursor::{bounded_capacity, Cursor};
use super::encoding::{
    int_to_bytes, read_binary_double, read_count, read_len, read_string, read_string_double,
    write_binary_double, write_len, write_string,
};
use super::{RdbError, RdbValue};

pub const TYPE_STRING: u8 = 0;
pub const TYPE_LIST: u8 = 1;
pub const TYPE_SET: u8 = 2;
pub const TYPE_ZSET: u8 = 3;
pub const TYPE_HASH: u8 = 4;
pub const TYPE_ZSET_2: u8 = 5;
pub const TYPE_MODULE_PRE_GA: u8 = 6;
pub const TYPE_MODULE_2: u8 = 7;
pub const TYPE_HASH_ZIPMAP: u8 = 9;
pub const TYPE_LIST_ZIPLIST: u8 = 10;
pub const TYPE_SET_INTSET: u8 = 11;
pub const TYPE_ZSET_ZIPLIST: u8 = 12;
pub const TYPE_HASH_ZIPLIST: u8 = 13;
pub const TYPE_LIST_QUICKLIST: u8 = 14;
pub const TYPE_STREAM_LISTPACKS: u8 = 15;
pub const TYPE_HASH_LISTPACK: u8 = 16;
pub const TYPE_ZSET_LISTPACK: u8 = 17;
pub const TYPE_LIST_QUICKLIST_2: u8 = 18;
pub const TYPE_STREAM_LISTPACKS_2: u8 = 19;
pub const TYPE_SET_LISTPACK: u8 = 20;
pub const TYPE_STREAM_LISTPACKS_3: u8 = 21;

/// A hash field and its value, as [`RdbValue::Hash`] holds them.
type FieldValue = (Vec<u8>, Vec<u8>);

/// Node kinds in a LIST_QUICKLIST_2 value.
const QUICKLIST_NODE_PLAIN: u64 = 1;
const QUICKLIST_NODE_PACKED: u64 = 2;

/// The smallest encoded string: a one-byte length.
const MIN_STRING_SIZE: usize = 1;

/// A name for a type byte, for error messages.
pub fn type_name(ty: u8) -> &'static str {
    match ty {
        TYPE_STRING => "string",
        TYPE_LIST | TYPE_LIST_ZIPLIST | TYPE_LIST_QUICKLIST | TYPE_LIST_QUICKLIST_2 => "list",
        TYPE_SET | TYPE_SET_INTSET | TYPE_SET_LISTPACK => "set",
        TYPE_ZSET | TYPE_ZSET_2 | TYPE_ZSET_ZIPLIST | TYPE_ZSET_LISTPACK => "sorted set",
        TYPE_HASH | TYPE_HASH_ZIPMAP | TYPE_HASH_ZIPLIST | TYPE_HASH_LISTPACK => "hash",
        TYPE_MODULE_PRE_GA | TYPE_MODULE_2 => "module value, not supported",
        TYPE_STREAM_LISTPACKS | TYPE_STREAM_LISTPACKS_2 | TYPE_STREAM_LISTPACKS_3 => {
            "stream, not supported"
        }
        _ => "unknown type",
    }
}

/// The type byte [`encode_object`] writes for `value`.
pub fn value_type(value: &RdbValue) -> u8 {
    match value {
        RdbValue::String(_) => TYPE_STRING,
        RdbValue::List(_) => TYPE_LIST,
        RdbValue::Set(_) => TYPE_SET,
        RdbValue::ZSet(_) => TYPE_ZSET_2,
        RdbValue::Hash(_) => TYPE_HASH,
    }
}

/// Writes `<type byte><payload>`, as DUMP wants it.
pub fn encode_value(value: &RdbValue, out: &mut Vec<u8>) {
    out.push(value_type(value));
    encode_object(value, out);
}

/// Writes the payload alone; an RDB file puts the key between the type byte and this.
pub fn encode_object(value: &RdbValue, out: &mut Vec<u8>) {
    match value {
        RdbValue::String(s) => write_string(out, s),
        RdbValue::List(items) | RdbValue::Set(items) => {
            write_len(out, items.len() as u64);
            for item in items {
                write_string(out, item);
            }
        }
        RdbValue::ZSet(entries) => {
            write_len(out, entries.len() as u64);
            for (member, score) in entries {
                write_string(out, member);
                write_binary_double(out, *score);
            }
        }
        RdbValue::Hash(pairs) => {
            write_len(out, pairs.len() as u64);
            for (field, value) in pairs {
                write_string(out, field);
                write_string(out, value);
            }
        }
    }
}

/// Reads one `<type byte><payload>` from the front of `input`, returning the value and the
/// number of bytes it took.
///
/// Empty collections are returned as they are: an RDB loader skips them and RESTORE refuses
/// them, which is the caller's decision (see [`RdbValue::is_empty_collection`]).
pub fn decode_value(input: &[u8]) -> Result<(RdbValue, usize), RdbError> {
    let mut cur = Cursor::new(input);
    let ty = cur.u8()?;
    let value = decode_object(ty, &mut cur)?;
    Ok((value, cur.position()))
}

/// Reads the payload of a value of type `ty` (already read, as an RDB file reader must to
/// tell values from opcodes).
pub fn decode_object(ty: u8, cur: &mut Cursor<'_>) -> Result<RdbValue, RdbError> {
    match ty {
        TYPE_STRING => Ok(RdbValue::String(read_string(cur)?.into_owned())),
        TYPE_LIST => Ok(RdbValue::List(read_strings(cur)?)),
        TYPE_SET => set(read_strings(cur)?),
        TYPE_ZSET => zset(read_scored(cur, read_string_double)?),
        TYPE_ZSET_2 => zset(read_scored(cur, read_binary_double)?),
        TYPE_HASH => {
            let count = read_count(cur)?;
            let mut pairs = Vec::with_capacity(bounded_capacity(
                count,
                cur.remaining(),
                2 * MIN_STRING_SIZE,
            ));
            for _ in 0..count {
                let field = read_string(cur)?.into_owned();
                let value = read_string(cur)?.into_owned();
                pairs.push((field, value));
            }
            hash(pairs)
        }
        TYPE_HASH_ZIPMAP => {
            let blob = read_string(cur)?;
            let pairs = compact::zipmap(&blob)?;
            hash(
                pairs
                    .into_iter()
                    .map(|(f, v)| (f.to_vec(), v.to_vec()))
                    .collect(),
            )
        }
        TYPE_LIST_ZIPLIST => {
            let blob = read_string(cur)?;
            Ok(RdbValue::List(to_strings(compact::ziplist(&blob)?)))
        }
        TYPE_SET_INTSET => {
            let blob = read_string(cur)?;
            // The intset parser already rejects repeats.
            let members = compact::intset(&blob)?
                .into_iter()
                .map(int_to_bytes)
                .collect();
            Ok(RdbValue::Set(members))
        }
        TYPE_SET_LISTPACK => {
            let blob = read_string(cur)?;
            set(to_strings(compact::listpack(&blob)?))
        }
        TYPE_ZSET_ZIPLIST => {
            let blob = read_string(cur)?;
            zset(to_scored(compact::ziplist(&blob)?)?)
        }
        TYPE_ZSET_LISTPACK => {
            let blob = read_string(cur)?;
            zset(to_scored(compact::listpack(&blob)?)?)
        }
        TYPE_HASH_ZIPLIST => {
            let blob = read_string(cur)?;
            hash(to_pairs(compact::ziplist(&blob)?)?)
        }
        TYPE_HASH_LISTPACK => {
            let blob = read_string(cur)?;
            hash(to_pairs(compact::listpack(&blob)?)?)
        }
        TYPE_LIST_QUICKLIST => {
            let nodes = read_count(cur)?;
            let mut items = Vec::new();
            for _ in 0..nodes {
                let blob = read_string(cur)?;
                items.extend(compact::ziplist(&blob)?.into_iter().map(Element::to_bytes));
            }
            Ok(RdbValue::List(items))
        }
        TYPE_LIST_QUICKLIST_2 => {
            let nodes = read_count(cur)?;
            let mut items = Vec::new();
            for _ in 0..nodes {
                match read_len(cur)? {
                    // A plain node is one element too large to pack, stored as it is.
                    QUICKLIST_NODE_PLAIN => items.push(read_string(cur)?.into_owned()),
                    QUICKLIST_NODE_PACKED => {
                        let blob = read_string(cur)?;
                        items.extend(compact::listpack(&blob)?.into_iter().map(Element::to_bytes));
                    }
                    _ => return Err(RdbError::Corrupt("unknown quicklist node kind")),
                }
            }
            Ok(RdbValue::List(items))
        }
        _ => Err(RdbError::UnsupportedType(ty)),
    }
}

fn read_strings(cur: &mut Cursor<'_>) -> Result<Vec<Vec<u8>>, RdbError> {
    let count = read_count(cur)?;
    let mut items = Vec::with_capacity(bounded_capacity(count, cur.remaining(), MIN_STRING_SIZE));
    for _ in 0..count {
        items.push(read_string(cur)?.into_owned());
    }
    Ok(items)
}

fn read_scored(
    cur: &mut Cursor<'_>,
    read_score: fn(&mut Cursor<'_>) -> Result<f64, RdbError>,
) -> Result<Vec<(Vec<u8>, f64)>, RdbError> {
    let count = read_count(cur)?;
    // A score takes at least one byte (the text form's length byte).
    let mut entries = Vec::with_capacity(bounded_capacity(
        count,
        cur.remaining(),
        MIN_STRING_SIZE + 1,
    ));
    for _ in 0..count {
        let member = read_string(cur)?.into_owned();
        let score = read_score(cur)?;
        entries.push((member, score));
    }
    Ok(entries)
}

fn to_strings(elements: Vec<Element<'_>>) -> Vec<Vec<u8>> {
    elements.into_iter().map(Element::to_bytes).collect()
}

fn to_pairs(elements: Vec<Element<'_>>) -> Result<Vec<FieldValue>, RdbError> {
    let mut pairs = Vec::with_capacity(elements.len() / 2);
    let mut elements = elements.into_iter();
    while let Some(field) = elements.next() {
        let value = elements
            .next()
            .ok_or(RdbError::Corrupt("hash has a field without a value"))?;
        pairs.push((field.to_bytes(), value.to_bytes()));
    }
    Ok(pairs)
}

fn to_scored(elements: Vec<Element<'_>>) -> Result<Vec<(Vec<u8>, f64)>, RdbError> {
    let mut entries = Vec::with_capacity(elements.len() / 2);
    let mut elements = elements.into_iter();
    while let Some(member) = elements.next() {
        let score = elements
            .next()
            .ok_or(RdbError::Corrupt("sorted set has a member without a score"))?;
        entries.push((member.to_bytes(), score.to_score()?));
    }
    Ok(entries)
}

fn set(members: Vec<Vec<u8>>) -> Result<RdbValue, RdbError> {
    ensure_unique(
        members.iter().map(Vec::as_slice),
        "set has a duplicate member",
    )?;
    Ok(RdbValue::Set(members))
}

fn zset(entries: Vec<(Vec<u8>, f64)>) -> Result<RdbValue, RdbError> {
    // Redis refuses NaN scores on load too: nothing could order them.
    if entries.iter().any(|(_, score)| score.is_nan()) {
        return Err(RdbError::Corrupt("sorted set score is NaN"));
    }
    ensure_unique(
        entries.iter().map(|(m, _)| m.as_slice()),
        "sorted set has a duplicate member",
    )?;
    Ok(RdbValue::ZSet(entries))
}

fn hash(pairs: Vec<FieldValue>) -> Result<RdbValue, RdbError> {
    ensure_unique(
        pairs.iter().map(|(f, _)| f.as_slice()),
        "hash has a duplicate field",
    )?;
    Ok(RdbValue::Hash(pairs))
}

/// A repeated member would silently collapse when the keyspace builds its set, hiding a
/// corrupt payload; Redis reports the same as corruption.
fn ensure_unique<'a>(
    keys: impl ExactSizeIterator<Item = &'a [u8]>,
    what: &'static str,
) -> Result<(), RdbError> {
    let mut seen = HashSet::with_capacity(keys.len());
    for key in keys {
        if !seen.insert(key) {
            return Err(RdbError::Corrupt(what));
        }
    }
    Ok(())
}
