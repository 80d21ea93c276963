//! The RDB file: a header, AUX fields, then databases of keys, each value in the codec of
//! [`object`](super::object), and an EOF marker followed by a CRC64 of everything before it.
//!
//! ```text
//! "REDIS0010"  AUX name value ...  SELECTDB n  RESIZEDB keys volatile
//!     [EXPIRETIME_MS t] <type> <key> <payload>  ...  EOF <crc64 LE>
//! ```
//!
//! [`RdbEncoder`] writes what Redis 7.0 loads (version 10), in chunks, so a snapshot can be
//! streamed to a replica while the keyspace keeps changing underneath it. [`read_rdb`] reads
//! what Redis 2.x to 7.2 and Valkey 7.2/8 write (versions 1 to 11), from a peer we do not
//! trust, so every length is checked against the bytes actually present.

use std::fmt;

use super::crc64::crc64;
use super::cursor::Cursor;
use super::encoding::{read_len, read_string, write_len, write_string};
use super::object::{
    self, decode_object, encode_object, value_type, TYPE_MODULE_2, TYPE_MODULE_PRE_GA,
    TYPE_STREAM_LISTPACKS, TYPE_STREAM_LISTPACKS_2, TYPE_STREAM_LISTPACKS_3, TYPE_STRING,
};
use super::{RdbError, RdbValue};

#[cfg(test)]
#[path = "file_tests.rs"]
mod file_tests;

/// The version [`RdbEncoder`] writes: Redis 7.0's, the oldest server we expect to load our
/// files. Every type we write was loadable long before it.
pub const RDB_FILE_VERSION: u16 = 10;

/// The newest version [`read_rdb`] reads: Redis 7.2 and Valkey 7.2/8. Redis 7.4 wrote 12 with
/// types we cannot hold, and Valkey 9 writes 80 under a "VALKEY" magic.
pub const MAX_READ_VERSION: u16 = 11;

const MAGIC: &[u8] = b"REDIS";
const VALKEY_MAGIC: &[u8] = b"VALKEY";
/// "REDIS" and four ASCII digits, or "VALKEY" and three.
const HEADER_SIZE: usize = 9;
/// Files before this version end at the EOF opcode, with no checksum.
const FIRST_CHECKSUM_VERSION: u16 = 5;
const CRC_SIZE: usize = 8;

const OPCODE_SLOT_INFO: u8 = 0xf4;
const OPCODE_FUNCTION2: u8 = 0xf5;
const OPCODE_FUNCTION_PRE_GA: u8 = 0xf6;
const OPCODE_MODULE_AUX: u8 = 0xf7;
const OPCODE_IDLE: u8 = 0xf8;
const OPCODE_FREQ: u8 = 0xf9;
const OPCODE_AUX: u8 = 0xfa;
const OPCODE_RESIZEDB: u8 = 0xfb;
const OPCODE_EXPIRETIME_MS: u8 = 0xfc;
const OPCODE_EXPIRETIME: u8 = 0xfd;
const OPCODE_SELECTDB: u8 = 0xfe;
const OPCODE_EOF: u8 = 0xff;

/// Once handed out, a chunk's allocation is gone; the next buffer starts this large at most,
/// so one huge value does not make every later chunk reserve as much.
const MAX_REUSED_CAPACITY: usize = 1024 * 1024;

/// How much of a key an error message shows.
const KEY_IN_ERROR_MAX: usize = 128;

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

/// AUX fields written at the top of a file, as Redis 7 writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aux<'a> {
    pub redis_ver: &'a str,
    pub ctime_secs: u64,
    pub used_mem: u64,
    pub repl_stream_db: Option<i64>,
    pub repl_id: Option<&'a str>,
    pub repl_offset: Option<i64>,
    pub aof_base: bool,
}

/// Builds an RDB v10 file (what Redis 7.0 loads) in chunks, tracking the CRC64 of every byte.
///
/// Records go into a buffer; [`take`](Self::take) hands the buffer out whenever the caller
/// wants to send it (typically once [`pending`](Self::pending) passes a chunk size), and
/// [`finish`](Self::finish) returns the last chunk with the EOF marker and checksum. Strings
/// and keys use Redis's encodings (integers, LZF), so a file matches Redis's byte for byte as
/// long as the values do.
#[derive(Debug)]
pub struct RdbEncoder {
    buf: Vec<u8>,
    /// CRC of every byte already handed out by `take`; bytes still in `buf` are folded in
    /// when they leave, in one pass over contiguous memory.
    crc: u64,
}

impl RdbEncoder {
    /// Starts a file: header, AUX fields in Redis 7.0's order, then SELECTDB 0.
    pub fn new(aux: &Aux<'_>) -> RdbEncoder {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(format!("{RDB_FILE_VERSION:04}").as_bytes());
        let mut enc = RdbEncoder { buf, crc: 0 };
        let mut num = itoa::Buffer::new();
        enc.aux_field("redis-ver", aux.redis_ver.as_bytes());
        // The writer's pointer width, as Redis reports it.
        enc.aux_field("redis-bits", num.format(usize::BITS).as_bytes());
        enc.aux_field("ctime", num.format(aux.ctime_secs).as_bytes());
        enc.aux_field("used-mem", num.format(aux.used_mem).as_bytes());
        if let Some(db) = aux.repl_stream_db {
            enc.aux_field("repl-stream-db", num.format(db).as_bytes());
        }
        if let Some(id) = aux.repl_id {
            enc.aux_field("repl-id", id.as_bytes());
        }
        if let Some(offset) = aux.repl_offset {
            enc.aux_field("repl-offset", num.format(offset).as_bytes());
        }
        enc.aux_field("aof-base", if aux.aof_base { b"1" } else { b"0" });
        enc.select_db(0);
        enc
    }

    /// Redis writes AUX values that look like integers int-encoded, which `write_string`
    /// does by itself.
    fn aux_field(&mut self, name: &str, value: &[u8]) {
        self.buf.push(OPCODE_AUX);
        write_string(&mut self.buf, name.as_bytes());
        write_string(&mut self.buf, value);
    }

    /// Starts database `db`: the entries after this belong to it. [`new`](Self::new) has
    /// already selected 0.
    pub fn select_db(&mut self, db: u64) {
        self.buf.push(OPCODE_SELECTDB);
        write_len(&mut self.buf, db);
    }

    /// A sizing hint for the current database: how many keys follow, and how many of them
    /// have an expiry. Loaders use it to presize their tables; it need not be exact.
    pub fn resize_db(&mut self, keys: u64, volatile: u64) {
        self.buf.push(OPCODE_RESIZEDB);
        write_len(&mut self.buf, keys);
        write_len(&mut self.buf, volatile);
    }

    /// One key. Redis skips empty collections when loading, so there is no point passing one.
    pub fn entry(&mut self, key: &[u8], expire_at_ms: Option<u64>, value: &RdbValue) {
        self.entry_head(key, expire_at_ms, value_type(value));
        encode_object(value, &mut self.buf);
    }

    /// The same bytes as [`entry`](Self::entry) with an [`RdbValue::String`], without
    /// building one.
    pub fn string_entry(&mut self, key: &[u8], expire_at_ms: Option<u64>, value: &[u8]) {
        self.entry_head(key, expire_at_ms, TYPE_STRING);
        write_string(&mut self.buf, value);
    }

    fn entry_head(&mut self, key: &[u8], expire_at_ms: Option<u64>, ty: u8) {
        if let Some(at) = expire_at_ms {
            // Loaders read the time as a signed 64-bit number: anything larger would come
            // back negative, an expiry in the past.
            let at = at.min(i64::MAX as u64);
            self.buf.push(OPCODE_EXPIRETIME_MS);
            self.buf.extend_from_slice(&at.to_le_bytes());
        }
        self.buf.push(ty);
        write_string(&mut self.buf, key);
    }

    /// Bytes buffered and not yet taken.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Hands out the buffered bytes, the next part of the file.
    pub fn take(&mut self) -> Vec<u8> {
        let capacity = self.buf.len().min(MAX_REUSED_CAPACITY);
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(capacity));
        self.crc = crc64(self.crc, &chunk);
        chunk
    }

    /// The last part of the file: whatever is buffered, the EOF marker and the checksum of
    /// every byte from "REDIS" through that marker.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.push(OPCODE_EOF);
        let crc = crc64(self.crc, &self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

/// One key as a file holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct RdbEntry {
    pub db: u64,
    pub key: Vec<u8>,
    /// Unix time in milliseconds. An expiry the file stores as negative (before 1970) comes
    /// back as 0: already past, as Redis treats it.
    pub expire_at_ms: Option<u64>,
    pub value: RdbValue,
}

/// What a file says about itself, once it has been read to the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdbInfo {
    pub version: u16,
    /// The replication ID of the writer's history, when it wrote one that looks like an ID
    /// (40 hex digits): a replica continues from it with PSYNC.
    pub repl_id: Option<String>,
    /// The replication offset the snapshot corresponds to.
    pub repl_offset: Option<i64>,
    /// Every AUX field, in file order, repl-id and repl-offset included.
    pub aux: Vec<(Vec<u8>, Vec<u8>)>,
    /// Entries passed to `on_entry`.
    pub keys: u64,
    /// False when the file has no checksum (version 4 and older) or a zero one (written with
    /// `rdbchecksum no`).
    pub checksum_checked: bool,
}

/// Why an RDB file could not be loaded. Each message is meant to stand alone in a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RdbLoadError {
    #[error("not an RDB file: it starts with \"{}\"", escape(.0))]
    BadMagic(Vec<u8>),
    #[error("unsupported RDB version {0}: this node reads versions 1 to {MAX_READ_VERSION}")]
    UnsupportedVersion(u16),
    /// The input ends before the file does; `at` is its length.
    #[error("RDB truncated at byte {at}")]
    Truncated { at: usize },
    #[error("corrupt RDB at byte {offset}: {reason}")]
    Corrupt { offset: usize, reason: &'static str },
    /// A value of a type the keyspace cannot hold. Skipping it would lose data silently.
    #[error("unsupported value type {type_name} ({ty}) for key '{key}' at byte {offset}")]
    UnsupportedType {
        key: String,
        ty: u8,
        type_name: &'static str,
        offset: usize,
    },
    /// A value that does not decode; `offset` is where its record starts.
    #[error("cannot read {type_name} value for key '{key}' at byte {offset}: {reason}")]
    BadValue {
        key: String,
        type_name: &'static str,
        offset: usize,
        reason: RdbError,
    },
    /// Module data or functions, which this node has nowhere to put.
    #[error("RDB holds {what} (opcode {opcode:#04x} at byte {offset}), which this node does not support")]
    UnsupportedOpcode {
        what: &'static str,
        opcode: u8,
        offset: usize,
    },
    #[error("RDB checksum mismatch: file says {expected:#018x}, computed {computed:#018x}")]
    ChecksumMismatch { expected: u64, computed: u64 },
    /// Bytes after the checksum: the framing around the file is wrong, or the file was
    /// damaged in a way that made an EOF appear early.
    #[error("RDB has {count} bytes after its end at byte {offset}")]
    TrailingBytes { offset: usize, count: usize },
    /// The `on_entry` callback refused an entry; reading stopped there.
    #[error("{0}")]
    Rejected(String),
}

/// Reads a whole RDB file (versions 1..=11), calling `on_entry` for each key in file order.
///
/// Entries are passed on before the checksum at the end can be verified, so on any error
/// the caller must throw away what it loaded. Nothing is filtered: expired keys are passed on
/// (a primary drops them, a replica keeps them), and so are empty collections, which Redis
/// never writes and skips on load (see [`RdbValue::is_empty_collection`]). The first error
/// stops the read, including one returned by `on_entry`. Bytes after the checksum are an
/// error rather than ignored, because in a stream from a peer they mean the framing is off.
pub fn read_rdb(
    input: &[u8],
    on_entry: impl FnMut(RdbEntry) -> Result<(), RdbLoadError>,
) -> Result<RdbInfo, RdbLoadError> {
    let (info, used) = read_rdb_prefix(input, on_entry)?;
    if used < input.len() {
        return Err(RdbLoadError::TrailingBytes {
            offset: used,
            count: input.len() - used,
        });
    }
    Ok(info)
}

/// Like [`read_rdb`], for an RDB followed by something else (an AOF's RDB preamble): reads
/// one RDB from the start of `input` and returns how many bytes it took.
pub fn read_rdb_prefix(
    input: &[u8],
    mut on_entry: impl FnMut(RdbEntry) -> Result<(), RdbLoadError>,
) -> Result<(RdbInfo, usize), RdbLoadError> {
    let mut reader = Reader {
        cur: Cursor::new(input),
        input_len: input.len(),
        record: 0,
    };
    let version = reader.header()?;
    let mut info = RdbInfo {
        version,
        repl_id: None,
        repl_offset: None,
        aux: Vec::new(),
        keys: 0,
        checksum_checked: false,
    };
    let mut db = 0;
    // Applies to the next key, as in Redis: the opcode comes first and only a key clears it.
    let mut expire_at_ms = None;
    loop {
        reader.record = reader.cur.position();
        match reader.u8()? {
            OPCODE_EOF => break,
            OPCODE_SELECTDB => db = reader.len()?,
            OPCODE_RESIZEDB => {
                reader.len()?;
                reader.len()?;
            }
            OPCODE_EXPIRETIME_MS => {
                let ms = i64::from_le_bytes(reader.array()?);
                expire_at_ms = Some(u64::try_from(ms).unwrap_or(0));
            }
            OPCODE_EXPIRETIME => {
                let secs = i32::from_le_bytes(reader.array()?);
                let ms = i64::from(secs) * 1000;
                expire_at_ms = Some(u64::try_from(ms).unwrap_or(0));
            }
            OPCODE_AUX => reader.aux(&mut info)?,
            // Eviction hints (LRU idle time, LFU counter) and cluster slot sizes: we evict
            // and size tables our own way.
            OPCODE_IDLE => {
                reader.len()?;
            }
            OPCODE_FREQ => {
                reader.u8()?;
            }
            OPCODE_SLOT_INFO => {
                for _ in 0..3 {
                    reader.len()?;
                }
            }
            OPCODE_MODULE_AUX => return Err(reader.unsupported("module data", OPCODE_MODULE_AUX)),
            opcode @ (OPCODE_FUNCTION2 | OPCODE_FUNCTION_PRE_GA) => {
                return Err(reader.unsupported("functions", opcode))
            }
            ty => {
                let entry = reader.entry(ty, db, expire_at_ms.take())?;
                on_entry(entry)?;
                info.keys += 1;
            }
        }
    }
    reader.checksum(input, version, &mut info)?;
    Ok((info, reader.cur.position()))
}

struct Reader<'a> {
    cur: Cursor<'a>,
    input_len: usize,
    /// Where the record being read starts, for error messages.
    record: usize,
}

impl<'a> Reader<'a> {
    fn error(&self, e: RdbError) -> RdbLoadError {
        match e {
            RdbError::Truncated => RdbLoadError::Truncated { at: self.input_len },
            RdbError::Corrupt(reason) => RdbLoadError::Corrupt {
                offset: self.record,
                reason,
            },
            // The primitives used outside values report nothing else.
            RdbError::BadChecksum | RdbError::BadVersion(_) | RdbError::UnsupportedType(_) => {
                RdbLoadError::Corrupt {
                    offset: self.record,
                    reason: "unexpected data",
                }
            }
        }
    }

    fn u8(&mut self) -> Result<u8, RdbLoadError> {
        self.cur.u8().map_err(|e| self.error(e))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RdbLoadError> {
        self.cur.array().map_err(|e| self.error(e))
    }

    fn len(&mut self) -> Result<u64, RdbLoadError> {
        read_len(&mut self.cur).map_err(|e| self.error(e))
    }

    fn string(&mut self) -> Result<Vec<u8>, RdbLoadError> {
        match read_string(&mut self.cur) {
            Ok(s) => Ok(s.into_owned()),
            Err(e) => Err(self.error(e)),
        }
    }

    fn unsupported(&self, what: &'static str, opcode: u8) -> RdbLoadError {
        RdbLoadError::UnsupportedOpcode {
            what,
            opcode,
            offset: self.record,
        }
    }

    /// Reads "REDIS" and four digits (or "VALKEY" and three, which only newer versions use)
    /// and returns the version if we read it.
    fn header(&mut self) -> Result<u16, RdbLoadError> {
        let header = self.cur.take(HEADER_SIZE).map_err(|e| self.error(e))?;
        let digits = if let Some(digits) = header.strip_prefix(MAGIC) {
            digits
        } else if let Some(digits) = header.strip_prefix(VALKEY_MAGIC) {
            digits
        } else {
            return Err(RdbLoadError::BadMagic(header.to_vec()));
        };
        let version = std::str::from_utf8(digits)
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| RdbLoadError::BadMagic(header.to_vec()))?;
        if version == 0 || version > MAX_READ_VERSION {
            return Err(RdbLoadError::UnsupportedVersion(version));
        }
        Ok(version)
    }

    fn aux(&mut self, info: &mut RdbInfo) -> Result<(), RdbLoadError> {
        let name = self.string()?;
        let value = self.string()?;
        match name.as_slice() {
            // Redis takes the ID only if it has the right length, and otherwise goes on
            // without one (a replica then does a full sync): the same here.
            b"repl-id" if value.len() == 40 && value.iter().all(u8::is_ascii_hexdigit) => {
                info.repl_id = Some(String::from_utf8_lossy(&value).into_owned());
            }
            b"repl-offset" => {
                let offset = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(RdbLoadError::Corrupt {
                        offset: self.record,
                        reason: "repl-offset AUX field is not a number",
                    })?;
                info.repl_offset = Some(offset);
            }
            _ => {}
        }
        info.aux.push((name, value));
        Ok(())
    }

    fn entry(
        &mut self,
        ty: u8,
        db: u64,
        expire_at_ms: Option<u64>,
    ) -> Result<RdbEntry, RdbLoadError> {
        let key = self.string()?;
        let value = match decode_object(ty, &mut self.cur) {
            Ok(value) => value,
            Err(RdbError::UnsupportedType(ty)) => {
                return Err(RdbLoadError::UnsupportedType {
                    key: key_for_log(&key),
                    ty,
                    type_name: unsupported_type_name(ty),
                    offset: self.record,
                })
            }
            Err(reason) => {
                return Err(RdbLoadError::BadValue {
                    key: key_for_log(&key),
                    type_name: object::type_name(ty),
                    offset: self.record,
                    reason,
                })
            }
        };
        Ok(RdbEntry {
            db,
            key,
            expire_at_ms,
            value,
        })
    }

    /// Checks the CRC after the EOF opcode, which covers everything before it.
    fn checksum(
        &mut self,
        input: &[u8],
        version: u16,
        info: &mut RdbInfo,
    ) -> Result<(), RdbLoadError> {
        if version < FIRST_CHECKSUM_VERSION {
            return Ok(());
        }
        let covered = input.get(..self.cur.position()).unwrap_or_default();
        self.record = self.cur.position();
        let expected = u64::from_le_bytes(self.array::<CRC_SIZE>()?);
        // A writer with `rdbchecksum no` stores zero.
        if expected == 0 {
            return Ok(());
        }
        let computed = crc64(0, covered);
        if computed != expected {
            return Err(RdbLoadError::ChecksumMismatch { expected, computed });
        }
        info.checksum_checked = true;
        Ok(())
    }
}

/// The name an error gives a type byte we hold no values for.
fn unsupported_type_name(ty: u8) -> &'static str {
    match ty {
        TYPE_STREAM_LISTPACKS | TYPE_STREAM_LISTPACKS_2 | TYPE_STREAM_LISTPACKS_3 => "stream",
        TYPE_MODULE_PRE_GA | TYPE_MODULE_2 => "module",
        // Redis 7.4's hashes with per-field expiry. They come in version 12 files, which are
        // refused before any value, but a lenient writer could put one in an older version.
        22..=25 => "hash with field expiry",
        _ => "unknown",
    }
}

/// A key as an error message shows it: lossy UTF-8, escaped so it stays on one log line, and
/// cut short if long.
fn key_for_log(key: &[u8]) -> String {
    let shown = key.get(..KEY_IN_ERROR_MAX).unwrap_or(key);
    let mut out = escape(shown).to_string();
    if shown.len() < key.len() {
        out.push_str("...");
    }
    out
}

fn escape(bytes: &[u8]) -> impl fmt::Display + '_ {
    struct Escaped<'a>(&'a [u8]);
    impl fmt::Display for Escaped<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}", String::from_utf8_lossy(self.0).escape_debug())
        }
    }
    Escaped(bytes)
}
