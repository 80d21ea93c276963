//! The values the keyspace holds.
//!
//! Every type lives behind one enum so that a key's type check is a match, and so that the
//! data-types work (hashes, lists, sets, sorted sets) adds variants rather than new maps.
//! Small values are stored inline: a string of up to 23 bytes costs no allocation of its own.

use compact_bytes::CompactBytes;

use crate::config::Config;
use crate::rdb::RdbValue;

pub mod hash;
pub mod list;
pub mod set;
pub mod zset;

pub use hash::HashValue;
pub use list::ListValue;
pub use set::SetValue;
pub use zset::ZSetValue;

/// Valkey's thresholds for keeping a collection in its compact encoding (`hash-max-listpack-*`,
/// `set-max-intset-entries`, ...). Read from the configuration at start and on CONFIG SET; kept
/// in the keyspace so that commands read them without another lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodingLimits {
    pub hash_max_listpack_entries: u64,
    pub hash_max_listpack_value: u64,
    pub list_max_listpack_size: i64,
    pub set_max_intset_entries: u64,
    pub set_max_listpack_entries: u64,
    pub set_max_listpack_value: u64,
    pub zset_max_listpack_entries: u64,
    pub zset_max_listpack_value: u64,
}

impl Default for EncodingLimits {
    fn default() -> Self {
        EncodingLimits::from_config(&Config::default())
    }
}

impl EncodingLimits {
    pub fn from_config(c: &Config) -> EncodingLimits {
        EncodingLimits {
            hash_max_listpack_entries: c.get_u64("hash-max-listpack-entries"),
            hash_max_listpack_value: c.get_u64("hash-max-listpack-value"),
            list_max_listpack_size: c.get_int("list-max-listpack-size"),
            set_max_intset_entries: c.get_u64("set-max-intset-entries"),
            set_max_listpack_entries: c.get_u64("set-max-listpack-entries"),
            set_max_listpack_value: c.get_u64("set-max-listpack-value"),
            zset_max_listpack_entries: c.get_u64("zset-max-listpack-entries"),
            zset_max_listpack_value: c.get_u64("zset-max-listpack-value"),
        }
    }
}

/// How a string is encoded, as `OBJECT ENCODING` reports it. Valkey decides this when the
/// value is written, and a few commands (APPEND, SETRANGE) force `raw`; we record the decision
/// so the report matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrEncoding {
    Int,
    Embstr,
    Raw,
}

impl StrEncoding {
    /// Valkey's choice for a freshly written string (SET, GETSET, MSET, ...).
    pub fn for_new(bytes: &[u8]) -> StrEncoding {
        if bytes.len() <= 20 && parse_i64_strict(bytes).is_some() {
            StrEncoding::Int
        } else if bytes.len() <= 44 {
            StrEncoding::Embstr
        } else {
            StrEncoding::Raw
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StrEncoding::Int => "int",
            StrEncoding::Embstr => "embstr",
            StrEncoding::Raw => "raw",
        }
    }
}

/// A string value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrValue {
    pub bytes: CompactBytes,
    pub encoding: StrEncoding,
}

impl StrValue {
    pub fn new(bytes: &[u8]) -> StrValue {
        StrValue {
            bytes: CompactBytes::new(bytes),
            encoding: StrEncoding::for_new(bytes),
        }
    }

    pub fn from_int(n: i64) -> StrValue {
        let mut b = itoa::Buffer::new();
        StrValue {
            bytes: CompactBytes::new(b.format(n).as_bytes()),
            encoding: StrEncoding::Int,
        }
    }

    pub fn with_encoding(bytes: &[u8], encoding: StrEncoding) -> StrValue {
        StrValue {
            bytes: CompactBytes::new(bytes),
            encoding,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }
}

/// A value of any type. Collections are boxed so that every value is 32 bytes and a string
/// entry stays one 64-byte allocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(StrValue),
    Hash(Box<HashValue>),
    List(Box<ListValue>),
    Set(Box<SetValue>),
    ZSet(Box<ZSetValue>),
}

impl Value {
    /// The type-neutral form of a value, for DUMP and RDB files.
    pub fn to_rdb(&self) -> RdbValue {
        match self {
            Value::Str(s) => RdbValue::String(s.as_bytes().to_vec()),
            Value::Hash(h) => h.to_rdb(),
            Value::List(l) => l.to_rdb(),
            Value::Set(s) => s.to_rdb(),
            Value::ZSet(z) => z.to_rdb(),
        }
    }

    /// A value read from DUMP or an RDB file, in the encoding `limits` call for. None if its
    /// content is invalid for its type.
    pub fn from_rdb(value: RdbValue, limits: &EncodingLimits) -> Option<Value> {
        Some(match value {
            RdbValue::String(b) => Value::Str(StrValue::new(&b)),
            v @ RdbValue::Hash(_) => Value::Hash(Box::new(HashValue::from_rdb(v, limits)?)),
            v @ RdbValue::List(_) => Value::List(Box::new(ListValue::from_rdb(v, limits)?)),
            v @ RdbValue::Set(_) => Value::Set(Box::new(SetValue::from_rdb(v, limits)?)),
            v @ RdbValue::ZSet(_) => Value::ZSet(Box::new(ZSetValue::from_rdb(v, limits)?)),
        })
    }

    /// The name `TYPE` reports.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Hash(_) => "hash",
            Value::List(_) => "list",
            Value::Set(_) => "set",
            Value::ZSet(_) => "zset",
        }
    }

    /// The name `OBJECT ENCODING` reports.
    pub fn encoding_name(&self) -> &'static str {
        match self {
            Value::Str(s) => s.encoding.name(),
            Value::Hash(h) => h.encoding_name(),
            Value::List(l) => l.encoding_name(),
            Value::Set(s) => s.encoding_name(),
            Value::ZSet(z) => z.encoding_name(),
        }
    }
}

/// Parses a whole byte string as an i64 the way Valkey's `string2ll` does: optional '-', no
/// '+', no leading zeros (except "0" itself), no spaces, no overflow.
pub fn parse_i64_strict(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (neg, digits) = match s[0] {
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || digits[0] == b'0' {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add((d - b'0') as u64)?;
    }
    if neg {
        if n <= i64::MAX as u64 + 1 {
            Some((n as i64).wrapping_neg())
        } else {
            None
        }
    } else {
        i64::try_from(n).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_stays_compact() {
        // An entry is key + value + expiry in one 64-byte allocation; keep the value at 32.
        assert_eq!(std::mem::size_of::<Value>(), 32);
    }

    #[test]
    fn strict_integers() {
        assert_eq!(parse_i64_strict(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64_strict(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64_strict(b"9223372036854775808"), None);
        assert_eq!(parse_i64_strict(b"007"), None);
        assert_eq!(parse_i64_strict(b"+7"), None);
        assert_eq!(parse_i64_strict(b"-0"), None);
        assert_eq!(parse_i64_strict(b" 7"), None);
    }

    #[test]
    fn encodings_follow_valkey() {
        assert_eq!(StrEncoding::for_new(b"12345"), StrEncoding::Int);
        assert_eq!(StrEncoding::for_new(b"hello"), StrEncoding::Embstr);
        assert_eq!(StrEncoding::for_new(&[b'a'; 45]), StrEncoding::Raw);
    }
}
