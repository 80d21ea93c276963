//! The RDB value codec: how Valkey and Redis serialize one value.
//!
//! It serves DUMP/RESTORE now and the RDB file reader/writer later, so the object-level
//! functions (one value as `<type byte><payload>`) are kept apart from the DUMP envelope.
//!
//! Layout:
//! - [`cursor`]: a bounds-checked reader; everything here reads untrusted bytes through it.
//! - [`encoding`]: the RDB primitives objects are built from: lengths, strings (integer, LZF,
//!   raw) and doubles.
//! - [`compact`]: the packed containers stored inside strings: listpack, ziplist, intset and
//!   zipmap.
//! - [`object`]: one value, in every encoding Redis 7 and Valkey 8 write.
//! - [`dump`]: the DUMP/RESTORE envelope: value, RDB version, CRC64.
//! - [`crc64`]: the CRC64 variant used by DUMP payloads and RDB files.
//! - [`lzf`]: the LZF compressor for long strings, its hash table kept between strings.
//! - [`file`]: the RDB file around the values: header, AUX fields, databases, expiries and
//!   checksum, written in chunks and read from untrusted bytes.
//!
//! Values cross this boundary as [`RdbValue`], a type-level form that knows nothing of the
//! keyspace's in-memory encodings: the keyspace converts to and from it.

// Not every item here has a caller outside the tests yet: DUMP/RESTORE use part of the codec
// and the file layer is still being wired into the server. The tests use all of it, so a test
// build still reports anything truly dead.
#![cfg_attr(not(test), allow(dead_code, unused_imports))]

pub mod compact;
pub mod crc64;
pub mod cursor;
pub mod dump;
pub mod encoding;
pub mod file;
pub mod lzf;
pub mod object;

#[cfg(test)]
mod tests;

pub use dump::{dump_payload, parse_dump_payload};
pub use object::{decode_value, encode_value};

/// One value as RDB describes it: its type and contents, with no in-memory encoding.
///
/// Collections keep the order the encoding stored them in. Sets, hashes and sorted sets
/// decoded from RDB never hold duplicate members or fields (the decoder rejects them), and
/// sorted-set scores are never NaN.
#[derive(Debug, Clone, PartialEq)]
pub enum RdbValue {
    String(Vec<u8>),
    List(Vec<Vec<u8>>),
    Set(Vec<Vec<u8>>),
    /// Members with their scores.
    ZSet(Vec<(Vec<u8>, f64)>),
    /// Fields with their values.
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
}

impl RdbValue {
    /// True for a collection with no elements. Redis never writes one: its RDB loader skips
    /// such keys and RESTORE refuses them, so callers reading RDB must decide the same.
    pub fn is_empty_collection(&self) -> bool {
        match self {
            RdbValue::String(_) => false,
            RdbValue::List(v) | RdbValue::Set(v) => v.is_empty(),
            RdbValue::ZSet(v) => v.is_empty(),
            RdbValue::Hash(v) => v.is_empty(),
        }
    }
}

/// Why RDB bytes could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RdbError {
    #[error("RDB data ends in the middle of a value")]
    Truncated,
    #[error("DUMP payload checksum does not match")]
    BadChecksum,
    #[error("unsupported RDB version {0}")]
    BadVersion(u16),
    #[error("unsupported RDB value type {0} ({name})", name = object::type_name(*.0))]
    UnsupportedType(u8),
    #[error("corrupt RDB data: {0}")]
    Corrupt(&'static str),
}
