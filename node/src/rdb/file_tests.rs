//! Tests of the RDB file layer against files real servers wrote or loaded.
//!
//! Sources of truth:
//! - `testdata/redis7-mixed.rdb`, written by redis-server 7.0.15 with a replica attached (so
//!   it carries repl-id and repl-offset); `testdata/redis7-mixed.py` regenerates it and the
//!   contents are spelled out in [`redis7_fixture_contents`];
//! - the Valkey 8.0.1 file and its JSON description in shared/testdata;
//! - two small files saved by redis-server 7.0.15, as hex, which our writer must reproduce
//!   byte for byte;
//! - the `redis-check-rdb` and `redis-server` binaries, when installed, which must accept
//!   and load what we write.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{read_rdb, Aux, RdbEncoder, RdbEntry, RdbInfo, RdbLoadError};
use crate::rdb::crc64::crc64;
use crate::rdb::encoding::{write_len, write_string};
use crate::rdb::{RdbError, RdbValue};

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn read_all(input: &[u8]) -> Result<(RdbInfo, Vec<RdbEntry>), RdbLoadError> {
    let mut entries = Vec::new();
    let info = read_rdb(input, |e| {
        entries.push(e);
        Ok(())
    })?;
    Ok((info, entries))
}

/// Orders the members of sets, hashes and sorted sets, whose order RDB does not fix.
fn normalized(value: RdbValue) -> RdbValue {
    match value {
        RdbValue::Set(mut v) => {
            v.sort();
            RdbValue::Set(v)
        }
        RdbValue::ZSet(mut v) => {
            v.sort_by(|a, b| a.0.cmp(&b.0));
            RdbValue::ZSet(v)
        }
        RdbValue::Hash(mut v) => {
            v.sort();
            RdbValue::Hash(v)
        }
        other => other,
    }
}

type Keyspace = BTreeMap<(u64, Vec<u8>), (Option<u64>, RdbValue)>;

fn keyspace(entries: impl IntoIterator<Item = RdbEntry>) -> Keyspace {
    let mut map = Keyspace::new();
    for e in entries {
        let old = map.insert((e.db, e.key), (e.expire_at_ms, normalized(e.value)));
        assert!(old.is_none(), "key read twice");
    }
    map
}

fn aux() -> Aux<'static> {
    Aux {
        redis_ver: "7.0.15",
        ctime_secs: 1_795_628_684,
        used_mem: 939_408,
        repl_stream_db: None,
        repl_id: None,
        repl_offset: None,
        aof_base: false,
    }
}

/// A file of `body` records under a `REDIS<version>` header, with EOF and, from version 5,
/// the checksum.
fn file(version: u16, body: &[u8]) -> Vec<u8> {
    let mut out = format!("REDIS{version:04}").into_bytes();
    out.extend_from_slice(body);
    out.push(0xff);
    if version >= 5 {
        let crc = crc64(0, &out);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    out
}

fn string_record(ty: u8, key: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![ty];
    write_string(&mut out, key.as_bytes());
    out.extend_from_slice(payload);
    out
}

fn is_truncation(e: &RdbLoadError) -> bool {
    matches!(
        e,
        RdbLoadError::Truncated { .. }
            | RdbLoadError::BadValue {
                reason: RdbError::Truncated,
                ..
            }
    )
}

// ---------------------------------------------------------------------------------------
// Writing: byte-exact against Redis 7.0
// ---------------------------------------------------------------------------------------

#[test]
fn rdb_file_writer_matches_redis7_bytes() {
    // redis-server 7.0.15: SET a b; SAVE
    let redis = unhex(concat!(
        "524544495330303130fa0972656469732d76657206372e302e3135fa0a72656469732d62697473c040",
        "fa056374696d65c28c1e076bfa08757365642d6d656dc290550e00fa08616f662d62617365c000fe00",
        "fb01000001610162ffb36baf3e59fc8fe4",
    ));
    let mut enc = RdbEncoder::new(&aux());
    enc.resize_db(1, 0);
    enc.string_entry(b"a", None, b"b");
    assert_eq!(enc.finish(), redis);

    // redis-server 7.0.15: SET e v PXAT 4102444800000; SET 42 <60 z>; SET a -2147483648;
    // SAVE. An expiry, an integer key, an LZF value and an int32 value.
    let redis = unhex(concat!(
        "524544495330303130fa0972656469732d76657206372e302e3135fa0a72656469732d62697473c040",
        "fa056374696d65c2751f076bfa08757365642d6d656dc258560e00fa08616f662d62617365c000fe00",
        "fb0301fc00d8c32cbb030000000165017600c02ac3093c017a7ae02f00017a7a000161c200000080ff",
        "bd19e28f2c42c215",
    ));
    let mut enc = RdbEncoder::new(&Aux {
        ctime_secs: 1_795_628_917,
        used_mem: 939_608,
        ..aux()
    });
    enc.resize_db(3, 1);
    enc.entry(b"e", Some(4_102_444_800_000), &RdbValue::String(b("v")));
    enc.string_entry(b"42", None, &[b'z'; 60]);
    enc.entry(b"a", None, &RdbValue::String(b("-2147483648")));
    assert_eq!(enc.finish(), redis);
}

#[test]
fn rdb_file_writer_header_matches_redis7_with_replication_aux() {
    let fixture = redis7_fixture();
    let (info, _) = read_all(&fixture).unwrap();
    let aux_num = |name: &str| -> u64 {
        let (_, v) = info.aux.iter().find(|(n, _)| n == name.as_bytes()).unwrap();
        std::str::from_utf8(v).unwrap().parse().unwrap()
    };
    let repl_id = info.repl_id.clone().unwrap();
    let mut enc = RdbEncoder::new(&Aux {
        redis_ver: "7.0.15",
        ctime_secs: aux_num("ctime"),
        used_mem: aux_num("used-mem"),
        repl_stream_db: Some(0),
        repl_id: Some(&repl_id),
        repl_offset: info.repl_offset,
        aof_base: false,
    });
    let header = enc.take();
    // Everything up to and including "SELECTDB 0", which Redis writes before the first key.
    assert_eq!(header, fixture[..header.len()]);
    assert_eq!(header[header.len() - 2..], [0xfe, 0x00]);
}

#[test]
fn rdb_file_string_entry_matches_entry() {
    let values: Vec<Vec<u8>> = vec![
        Vec::new(),
        b("0"),
        b("-2147483648"),
        b("2147483648"),
        b("007"),
        vec![b'q'; 500],
        (0..=255u8).collect(),
    ];
    for value in values {
        for expiry in [None, Some(0), Some(1_700_000_000_000)] {
            let mut via_entry = RdbEncoder::new(&aux());
            via_entry.entry(b"k", expiry, &RdbValue::String(value.clone()));
            let mut via_string = RdbEncoder::new(&aux());
            via_string.string_entry(b"k", expiry, &value);
            assert_eq!(via_entry.finish(), via_string.finish(), "{value:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Round trips through our writer and reader
// ---------------------------------------------------------------------------------------

/// Entries of every type, with and without expiry, binary keys, empty values and values big
/// enough for LZF, in two databases. No empty collections: Redis skips them on load, which
/// the redis-server test below would see as a difference.
fn sample_entries() -> Vec<RdbEntry> {
    let many: Vec<Vec<u8>> = (0..5_000)
        .map(|i| format!("member-{i}").into_bytes())
        .collect();
    let entry = |db, key: &[u8], expire_at_ms, value| RdbEntry {
        db,
        key: key.to_vec(),
        expire_at_ms,
        value,
    };
    vec![
        entry(0, b"s:plain", None, RdbValue::String(b("hello"))),
        entry(0, b"s:empty", None, RdbValue::String(Vec::new())),
        entry(
            0,
            b"s:int",
            Some(4_102_444_800_000),
            RdbValue::String(b("-12345")),
        ),
        entry(0, b"12345", None, RdbValue::String(b("integer key"))),
        entry(0, b"", None, RdbValue::String(b("empty key"))),
        entry(
            0,
            &[0, 0xff, b'\r', b'\n', 0x80],
            None,
            RdbValue::String((0..=255u8).collect()),
        ),
        entry(0, &[b'K'; 300], None, RdbValue::String(vec![b'x'; 100_000])),
        entry(
            0,
            b"l",
            Some(4_102_444_800_001),
            RdbValue::List(vec![b("a"), Vec::new(), b("7")]),
        ),
        entry(0, b"l:big", None, RdbValue::List(many.clone())),
        entry(
            0,
            b"set",
            None,
            RdbValue::Set(vec![b("1"), b("x"), b("-3")]),
        ),
        entry(
            0,
            b"set:big",
            Some(4_102_444_800_002),
            RdbValue::Set(many.clone()),
        ),
        entry(
            0,
            b"z",
            None,
            RdbValue::ZSet(vec![
                (b("a"), 1.5),
                (b("b"), f64::NEG_INFINITY),
                (b("c"), f64::INFINITY),
                (b("d"), 0.1),
            ]),
        ),
        entry(
            0,
            b"z:big",
            None,
            RdbValue::ZSet(
                many.iter()
                    .enumerate()
                    .map(|(i, m)| (m.clone(), i as f64 / 3.0))
                    .collect(),
            ),
        ),
        entry(
            0,
            b"h",
            Some(4_102_444_800_003),
            RdbValue::Hash(vec![
                (b("f"), b("v")),
                (b("n"), b("12")),
                (b("e"), Vec::new()),
            ]),
        ),
        entry(
            0,
            b"h:big",
            None,
            RdbValue::Hash(many.iter().map(|m| (m.clone(), vec![b'v'; 100])).collect()),
        ),
        entry(
            3,
            b"s:plain",
            None,
            RdbValue::String(b("same key, other database")),
        ),
        entry(3, b"h", None, RdbValue::Hash(vec![(b("only"), b("field"))])),
    ]
}

/// Writes `entries` (grouped by database, in order), taking a chunk whenever more than
/// `chunk` bytes are pending, and returns the chunks.
fn write_chunks(entries: &[RdbEntry], chunk: usize) -> Vec<Vec<u8>> {
    let mut enc = RdbEncoder::new(&aux());
    let mut chunks = Vec::new();
    let mut db = 0;
    let mut first = true;
    for e in entries {
        if e.db != db || first {
            if e.db != db {
                enc.select_db(e.db);
                db = e.db;
            }
            let in_db = entries.iter().filter(|x| x.db == db);
            let volatile = in_db.clone().filter(|x| x.expire_at_ms.is_some()).count();
            enc.resize_db(in_db.count() as u64, volatile as u64);
            first = false;
        }
        enc.entry(&e.key, e.expire_at_ms, &e.value);
        if enc.pending() > chunk {
            chunks.push(enc.take());
            assert_eq!(enc.pending(), 0);
        }
    }
    chunks.push(enc.finish());
    chunks
}

fn write_file(entries: &[RdbEntry]) -> Vec<u8> {
    write_chunks(entries, usize::MAX).concat()
}

#[test]
fn rdb_file_round_trip_in_chunks() {
    let entries = sample_entries();
    let whole = write_file(&entries);
    for chunk in [0, 100, 4096, 1 << 20] {
        let chunks = write_chunks(&entries, chunk);
        if chunk == 0 {
            assert_eq!(chunks.len(), entries.len() + 1);
        }
        let file = chunks.concat();
        assert_eq!(file, whole, "chunk size {chunk}");
        let (info, read) = read_all(&file).unwrap();
        assert_eq!(read, entries, "chunk size {chunk}");
        assert_eq!(info.version, 10);
        assert_eq!(info.keys, entries.len() as u64);
        assert!(info.checksum_checked);
        assert_eq!(info.repl_id, None);
        let names: Vec<&[u8]> = info.aux.iter().map(|(n, _)| n.as_slice()).collect();
        assert_eq!(
            names,
            [
                &b"redis-ver"[..],
                b"redis-bits",
                b"ctime",
                b"used-mem",
                b"aof-base"
            ]
        );
    }
    // LZF kicked in on the 100 KB of 'x'.
    let big = entries.iter().find(|e| e.key == [b'K'; 300]).unwrap();
    let alone = write_file(std::slice::from_ref(big));
    assert!(alone.len() < 5_000, "{}", alone.len());
}

#[test]
fn rdb_file_round_trip_with_replication_aux() {
    let id = "0123456789abcdef0123456789abcdef01234567";
    let mut enc = RdbEncoder::new(&Aux {
        repl_stream_db: Some(0),
        repl_id: Some(id),
        repl_offset: Some(5_000_000_000),
        aof_base: true,
        ..aux()
    });
    enc.string_entry(b"k", None, b"v");
    let (info, entries) = read_all(&enc.finish()).unwrap();
    assert_eq!(info.repl_id.as_deref(), Some(id));
    assert_eq!(info.repl_offset, Some(5_000_000_000));
    assert!(info.aux.contains(&(b("aof-base"), b("1"))));
    assert!(info.aux.contains(&(b("repl-stream-db"), b("0"))));
    assert_eq!(entries.len(), 1);
}

#[test]
fn rdb_file_empty_database_and_far_expiry() {
    let (info, entries) = read_all(&RdbEncoder::new(&aux()).finish()).unwrap();
    assert_eq!((info.keys, entries.len()), (0, 0));

    // A time past i64::MAX would read back negative, so it is capped.
    let mut enc = RdbEncoder::new(&aux());
    enc.string_entry(b"k", Some(u64::MAX), b"v");
    let (_, entries) = read_all(&enc.finish()).unwrap();
    assert_eq!(entries[0].expire_at_ms, Some(i64::MAX as u64));
}

#[test]
fn rdb_file_take_reuses_a_bounded_buffer() {
    let mut enc = RdbEncoder::new(&aux());
    assert!(enc.pending() > 0);
    let header = enc.take();
    assert_eq!(enc.pending(), 0);
    assert!(enc.take().is_empty());
    enc.string_entry(
        b"big",
        None,
        &(0..1_000_000u32)
            .flat_map(u32::to_le_bytes)
            .collect::<Vec<_>>(),
    );
    let chunk = enc.take();
    assert!(chunk.len() > 1_000_000);
    let tail = enc.finish();
    let (_, entries) = read_all(&[header, chunk, tail].concat()).unwrap();
    assert_eq!(entries.len(), 1);
}

// ---------------------------------------------------------------------------------------
// Files written by real servers
// ---------------------------------------------------------------------------------------

fn redis7_fixture() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/rdb/testdata/redis7-mixed.rdb");
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// What `testdata/redis7-mixed.py` put in the file.
fn redis7_fixture_contents() -> Keyspace {
    let strs = |items: &[&str]| items.iter().map(|s| b(s)).collect::<Vec<_>>();
    let mut lzf = vec![b'a'; 50];
    lzf.extend_from_slice(&[b'b'; 50]);
    let entries = vec![
        (0, b("s:str"), None, RdbValue::String(b("hello"))),
        (0, b("s:int"), None, RdbValue::String(b("12345"))),
        (0, b("s:neg"), None, RdbValue::String(b("-7"))),
        (0, b("s:lzf"), None, RdbValue::String(lzf)),
        (0, b("s:empty"), None, RdbValue::String(Vec::new())),
        (
            0,
            vec![0, 0xff, b'b', b'i', b'n'],
            None,
            RdbValue::String(vec![1, 2, b'\r', b'\n']),
        ),
        (
            0,
            b("s:exp"),
            Some(4_102_444_800_000),
            RdbValue::String(b("v")),
        ),
        (
            0,
            b("l:small"),
            None,
            RdbValue::List(strs(&["a", "b", "123"])),
        ),
        (
            0,
            b("l:big"),
            None,
            RdbValue::List(
                (0..1000)
                    .map(|i| format!("item-{i:04}-xxxxxxxxxx").into_bytes())
                    .collect(),
            ),
        ),
        (
            0,
            b("set:ints"),
            None,
            RdbValue::Set(strs(&["1", "2", "3", "-5"])),
        ),
        (
            0,
            b("set:strs"),
            None,
            RdbValue::Set(strs(&["a", "b", "c"])),
        ),
        (
            0,
            b("z:small"),
            None,
            RdbValue::ZSet(vec![
                (b("a"), 1.5),
                (b("b"), f64::NEG_INFINITY),
                (b("c"), 3.0),
            ]),
        ),
        (
            0,
            b("z:big"),
            None,
            RdbValue::ZSet(
                (0..130)
                    .map(|i| (format!("m{i}").into_bytes(), f64::from(i) * 0.5))
                    .collect(),
            ),
        ),
        (
            0,
            b("h:small"),
            Some(4_102_444_800_123),
            RdbValue::Hash(vec![(b("f"), b("v")), (b("n"), b("7"))]),
        ),
        (
            0,
            b("h:big"),
            None,
            RdbValue::Hash(
                (0..130)
                    .map(|i| {
                        (
                            format!("field{i}").into_bytes(),
                            format!("value{i}").into_bytes(),
                        )
                    })
                    .collect(),
            ),
        ),
        (
            0,
            b("s:after-sync"),
            None,
            RdbValue::String(b("written after the replica connected")),
        ),
        (2, b("k2"), None, RdbValue::String(b("in-db-2"))),
    ];
    keyspace(
        entries
            .into_iter()
            .map(|(db, key, expire_at_ms, value)| RdbEntry {
                db,
                key,
                expire_at_ms,
                value,
            }),
    )
}

#[test]
fn rdb_file_reads_redis7_fixture() {
    let (info, entries) = read_all(&redis7_fixture()).unwrap();
    assert_eq!(info.version, 10);
    assert!(info.checksum_checked);
    assert_eq!(
        info.repl_id.as_deref(),
        Some("e76f705581bd00d87f4054625344675c36b9c0e6")
    );
    assert_eq!(info.repl_offset, Some(97));
    let names: Vec<String> = info
        .aux
        .iter()
        .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "redis-ver",
            "redis-bits",
            "ctime",
            "used-mem",
            "repl-stream-db",
            "repl-id",
            "repl-offset",
            "aof-base"
        ]
    );
    assert!(info.aux.contains(&(b("redis-ver"), b("7.0.15"))));
    assert_eq!(info.keys, 17);
    // Database 2 comes after all of database 0.
    assert!(entries.windows(2).all(|w| w[0].db <= w[1].db));
    assert_eq!(keyspace(entries), redis7_fixture_contents());
}

fn valkey_testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/valkey-8.0.1")
        .join(name)
}

/// The value `valkey8-mixed.json` describes (see its `values_hex` note): strings, list items,
/// set members and hash values as hex; hash fields and sorted-set members as text, scores as
/// Python `repr`.
fn json_value(key: &Value) -> RdbValue {
    let hex = |v: &Value| unhex(v.as_str().unwrap());
    let value = &key["value"];
    let items = || value.as_array().unwrap().iter();
    match key["type"].as_str().unwrap() {
        "string" => RdbValue::String(hex(value)),
        "list" => RdbValue::List(items().map(hex).collect()),
        "set" => RdbValue::Set(items().map(hex).collect()),
        "hash" => RdbValue::Hash(
            value
                .as_object()
                .unwrap()
                .iter()
                .map(|(field, v)| (b(field), hex(v)))
                .collect(),
        ),
        "zset" => RdbValue::ZSet(
            items()
                .map(|pair| {
                    (
                        b(pair[0].as_str().unwrap()),
                        pair[1].as_str().unwrap().parse().unwrap(),
                    )
                })
                .collect(),
        ),
        other => panic!("unexpected type {other}"),
    }
}

#[test]
fn rdb_file_reads_valkey8_file() {
    let text = std::fs::read_to_string(valkey_testdata("valkey8-mixed.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let want = json["keys"].as_object().unwrap();
    let file = std::fs::read(valkey_testdata("valkey8-mixed.rdb")).unwrap();

    let (info, entries) = read_all(&file).unwrap();
    assert_eq!(info.version, 11);
    assert!(info.checksum_checked);
    assert!(info.aux.contains(&(b("valkey-ver"), b("8.0.1"))));
    assert_eq!(info.keys, want.len() as u64);
    assert_eq!(entries.len(), want.len());
    for entry in entries {
        let name = String::from_utf8(entry.key).unwrap();
        let want = &want[&name];
        assert_eq!(entry.db, 0, "{name}");
        assert_eq!(
            entry.expire_at_ms.is_some(),
            want["pttl_set"].as_bool().unwrap(),
            "{name}: expiry"
        );
        assert_eq!(
            normalized(entry.value),
            normalized(json_value(want)),
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Damaged and unsupported input
// ---------------------------------------------------------------------------------------

#[test]
fn rdb_file_every_truncation_is_an_error() {
    let ours = write_file(&sample_entries()[..6]);
    for file in [redis7_fixture(), ours] {
        for len in 0..file.len() {
            match read_all(&file[..len]) {
                Err(e) => assert!(is_truncation(&e), "cut at {len}: {e}"),
                Ok(_) => panic!("cut at {len} was accepted"),
            }
        }
        read_all(&file).unwrap();
    }
}

#[test]
fn rdb_file_valkey8_truncations_are_errors() {
    // 56 KB: every offset would be slow in a debug build, so the header, the end, and a
    // stride through the middle.
    let file = std::fs::read(valkey_testdata("valkey8-mixed.rdb")).unwrap();
    let n = file.len();
    let cuts = (0..300)
        .chain((300..n - 300).step_by(211))
        .chain(n - 300..n);
    for len in cuts {
        let e = read_all(&file[..len]).unwrap_err();
        assert!(is_truncation(&e), "cut at {len}: {e}");
    }
}

#[test]
fn rdb_file_any_changed_byte_is_an_error() {
    let file = write_file(&sample_entries()[..6]);
    for i in 0..file.len() {
        for mask in [0x01, 0x80, 0xff] {
            let mut bad = file.clone();
            bad[i] ^= mask;
            assert!(read_all(&bad).is_err(), "byte {i} ^ {mask:#x} was accepted");
        }
    }
}

#[test]
fn rdb_file_checksum_mismatch_and_disabled_checksum() {
    let mut file = redis7_fixture();
    let at = file.windows(5).position(|w| w == b"hello").unwrap();
    let stored = u64::from_le_bytes(file[file.len() - 8..].try_into().unwrap());
    file[at] = b'j';
    let e = read_all(&file).unwrap_err();
    let RdbLoadError::ChecksumMismatch { expected, computed } = e else {
        panic!("{e}");
    };
    assert_eq!(expected, stored);
    assert_eq!(computed, crc64(0, &file[..file.len() - 8]));
    assert_eq!(
        RdbLoadError::ChecksumMismatch {
            expected: 0x1234,
            computed: 0xabcd_0000_0000_0000
        }
        .to_string(),
        "RDB checksum mismatch: file says 0x0000000000001234, computed 0xabcd000000000000"
    );

    // A zero checksum is what `rdbchecksum no` writes: nothing to check against.
    let n = file.len();
    file[n - 8..].fill(0);
    let (info, entries) = read_all(&file).unwrap();
    assert!(!info.checksum_checked);
    assert!(entries
        .iter()
        .any(|e| e.value == RdbValue::String(b("jello"))));
}

#[test]
fn rdb_file_bytes_after_the_end_are_an_error() {
    let mut file = write_file(&sample_entries()[..2]);
    file.extend_from_slice(b"xy");
    let e = read_all(&file).unwrap_err();
    assert!(
        matches!(e, RdbLoadError::TrailingBytes { count: 2, offset } if offset == file.len() - 2),
        "{e}"
    );
}

#[test]
fn rdb_file_versions_and_magic() {
    let body = string_record(0, "k", &[1, b'v']);
    for (version, ok) in [
        (0, false),
        (1, true),
        (4, true),
        (9, true),
        (11, true),
        (12, false),
    ] {
        let result = read_all(&file(version, &body));
        assert_eq!(result.is_ok(), ok, "version {version}");
        if !ok {
            let e = result.unwrap_err();
            assert!(matches!(e, RdbLoadError::UnsupportedVersion(v) if v == version));
            assert!(e.to_string().contains(&format!("version {version}")), "{e}");
        }
    }
    assert_eq!(
        RdbLoadError::UnsupportedVersion(12).to_string(),
        "unsupported RDB version 12: this node reads versions 1 to 11"
    );

    // Valkey 9 moved to its own magic with version 80.
    let mut valkey9 = file(11, &body);
    valkey9.splice(..9, b"VALKEY080".iter().copied());
    assert!(matches!(
        read_all(&valkey9),
        Err(RdbLoadError::UnsupportedVersion(80))
    ));

    for header in [
        &b"REDIX0010"[..],
        b"REDIS00a1",
        b"REDIS+010",
        b"\x00\x01REDIS00",
    ] {
        let mut bad = file(10, &body);
        bad.splice(..9, header.iter().copied());
        let e = read_all(&bad).unwrap_err();
        assert!(matches!(e, RdbLoadError::BadMagic(_)), "{e}");
    }
    let e = read_all(b"GET / HTTP/1.1\r\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "not an RDB file: it starts with \"GET / HTT\""
    );
    let e = read_all(b"").unwrap_err();
    assert_eq!(e.to_string(), "RDB truncated at byte 0");
}

#[test]
fn rdb_file_before_version_5_has_no_checksum() {
    // SELECTDB 1, EXPIRETIME (seconds), a string, EOF: nothing after it.
    let mut body = vec![0xfe, 1, 0xfd];
    body.extend_from_slice(&1_700_000_000i32.to_le_bytes());
    body.extend(string_record(0, "old", &[3, b'a', b'b', b'c']));
    let mut old = b"REDIS0004".to_vec();
    old.extend_from_slice(&body);
    old.push(0xff);
    let (info, entries) = read_all(&old).unwrap();
    assert!(!info.checksum_checked);
    assert_eq!(
        entries,
        [RdbEntry {
            db: 1,
            key: b("old"),
            expire_at_ms: Some(1_700_000_000_000),
            value: RdbValue::String(b("abc")),
        }]
    );
}

#[test]
fn rdb_file_skips_hints_and_slot_info() {
    let mut body = Vec::new();
    // AUX with an integer value, SELECTDB 5, RESIZEDB, Valkey 8's SLOT_INFO.
    body.push(0xfa);
    write_string(&mut body, b"valkey-ver");
    write_string(&mut body, b"8.0.1");
    body.extend_from_slice(&[0xfe, 5, 0xfb, 2, 1, 0xf4]);
    write_len(&mut body, 16_383);
    write_len(&mut body, 2);
    write_len(&mut body, 1);
    // Expiry, LRU idle time, then the key it all belongs to.
    body.push(0xfc);
    body.extend_from_slice(&1_700_000_000_123u64.to_le_bytes());
    body.push(0xf8);
    write_len(&mut body, 100_000);
    body.extend(string_record(0, "a", &[1, b'1']));
    // A negative expiry is in the past, LFU counter, a key.
    body.push(0xfc);
    body.extend_from_slice(&(-5i64).to_le_bytes());
    body.extend_from_slice(&[0xf9, 3]);
    body.extend(string_record(0, "b", &[1, b'2']));
    // The expiry does not carry over to the next key.
    body.extend(string_record(0, "c", &[1, b'3']));

    let (info, entries) = read_all(&file(11, &body)).unwrap();
    assert_eq!(info.keys, 3);
    let got: Vec<_> = entries
        .iter()
        .map(|e| (e.db, e.key.as_slice(), e.expire_at_ms))
        .collect();
    assert_eq!(
        got,
        [
            (5, &b"a"[..], Some(1_700_000_000_123)),
            (5, b"b", Some(0)),
            (5, b"c", None)
        ]
    );
}

#[test]
fn rdb_file_unsupported_types_name_the_key() {
    // A stream (type 15) called "mystream": refused before its payload is read.
    let body = string_record(15, "mystream", &[0x00, 0x01, 0x02]);
    let e = read_all(&file(11, &body)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unsupported value type stream (15) for key 'mystream' at byte 9"
    );
    for (ty, name) in [
        (7, "module"),
        (19, "stream"),
        (21, "stream"),
        (24, "hash with field expiry"),
        (200, "unknown"),
    ] {
        let body = string_record(ty, "k\n1", &[0]);
        let e = read_all(&file(11, &body)).unwrap_err();
        let RdbLoadError::UnsupportedType {
            ref key,
            ty: got,
            type_name,
            ..
        } = e
        else {
            panic!("{e}");
        };
        assert_eq!((key.as_str(), got, type_name), ("k\\n1", ty, name));
    }

    // Keys already passed on stay passed on; the error stops the read.
    let mut body = string_record(0, "first", &[1, b'x']);
    body.extend(string_record(21, "s", &[]));
    let mut seen = 0;
    let e = read_rdb(&file(11, &body), |_| {
        seen += 1;
        Ok(())
    })
    .unwrap_err();
    assert!(matches!(e, RdbLoadError::UnsupportedType { ty: 21, .. }));
    assert_eq!(seen, 1);
}

#[test]
fn rdb_file_module_data_and_functions_are_refused() {
    for (opcode, what) in [
        (0xf7, "module data"),
        (0xf5, "functions"),
        (0xf6, "functions"),
    ] {
        let e = read_all(&file(10, &[opcode, 0, 0, 0])).unwrap_err();
        assert!(
            matches!(e, RdbLoadError::UnsupportedOpcode { what: w, opcode: o, offset: 9 } if w == what && o == opcode),
            "{e}"
        );
    }
    assert_eq!(
        read_all(&file(10, &[0xf5, 0])).unwrap_err().to_string(),
        "RDB holds functions (opcode 0xf5 at byte 9), which this node does not support"
    );
}

#[test]
fn rdb_file_bad_values_name_the_key() {
    // A hash (type 4) with the field "f" twice.
    let body = string_record(4, "dup", &[2, 1, b'f', 1, b'1', 1, b'f', 1, b'2']);
    let e = read_all(&file(10, &body)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot read hash value for key 'dup' at byte 9: corrupt RDB data: hash has a duplicate field"
    );

    // A hash whose input ends after its first field, under a long key.
    let long_key = "k".repeat(1000);
    let mut cut = b"REDIS0010".to_vec();
    cut.extend(string_record(4, &long_key, &[1, 1, b'f']));
    let e = read_all(&cut).unwrap_err();
    let RdbLoadError::BadValue {
        ref key, reason, ..
    } = e
    else {
        panic!("{e}");
    };
    assert_eq!(key, &format!("{}...", "k".repeat(128)));
    assert_eq!(reason, RdbError::Truncated);
}

#[test]
fn rdb_file_bad_structure_outside_values() {
    // An unknown length encoding (0x82) where SELECTDB's number belongs.
    let e = read_all(&file(10, &[0xfe, 0x82])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "corrupt RDB at byte 9: unknown length encoding"
    );
    // A repl-offset that is not a number.
    let mut body = vec![0xfa];
    write_string(&mut body, b"repl-offset");
    write_string(&mut body, b"soon");
    let e = read_all(&file(10, &body)).unwrap_err();
    assert!(matches!(e, RdbLoadError::Corrupt { offset: 9, .. }), "{e}");
    // A repl-id of the wrong length is kept as an AUX field but not taken as the ID.
    let mut body = vec![0xfa];
    write_string(&mut body, b"repl-id");
    write_string(&mut body, b"abc");
    let (info, _) = read_all(&file(10, &body)).unwrap();
    assert_eq!(info.repl_id, None);
    assert_eq!(info.aux, [(b("repl-id"), b("abc"))]);
}

#[test]
fn rdb_file_callback_can_stop_the_read() {
    let file = write_file(&sample_entries());
    let mut seen = Vec::new();
    let e = read_rdb(&file, |entry| {
        if entry.db == 3 {
            return Err(RdbLoadError::Rejected(format!(
                "database {} is out of range",
                entry.db
            )));
        }
        seen.push(entry.key);
        Ok(())
    })
    .unwrap_err();
    assert_eq!(e.to_string(), "database 3 is out of range");
    assert_eq!(
        seen.len(),
        sample_entries().iter().filter(|e| e.db == 0).count()
    );
}

// ---------------------------------------------------------------------------------------
// What redis-server 7.0 makes of our files
// ---------------------------------------------------------------------------------------

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("lagwise-rdb-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn installed(binary: &str) -> bool {
    let found = Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!("note: {binary} is not installed; skipping this check");
    }
    found
}

#[test]
fn rdb_file_redis_check_rdb_accepts_our_file() {
    if !installed("redis-check-rdb") {
        return;
    }
    let dir = TempDir::new("check");
    let path = dir.0.join("ours.rdb");
    std::fs::write(&path, write_file(&sample_entries())).unwrap();
    let out = Command::new("redis-check-rdb").arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("RDB looks OK"), "{stdout}");
    assert!(
        stdout.contains(&format!("{} keys read", sample_entries().len())),
        "{stdout}"
    );
}

/// A redis-server on a Unix socket in its own directory (no TCP port to collide on), stopped
/// on drop: SHUTDOWN NOSAVE, then a kill if it lingers.
struct RedisServer {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl RedisServer {
    fn start(dir: &Path, dbfilename: &str) -> RedisServer {
        let socket = dir.join("redis.sock");
        let log = dir.join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(dir)
            .args(["--dbfilename", dbfilename])
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = RedisServer { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Until the file is loaded the server answers -LOADING.
            if let Ok(reply) = server.try_command(&[b"PING"]) {
                if reply == "+PONG" {
                    return server;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends one command on a new connection and returns the reply's first line (plus the
    /// payload of a bulk string), enough for the simple replies used here.
    fn try_command(&self, args: &[&[u8]]) -> std::io::Result<String> {
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        stream.write_all(&request)?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end().to_string();
        if let Some(len) = line.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            let mut payload = vec![0; len + 2];
            reader.read_exact(&mut payload)?;
            payload.truncate(len);
            return Ok(String::from_utf8_lossy(&payload).into_owned());
        }
        Ok(line)
    }

    fn command(&self, args: &[&[u8]]) -> String {
        self.try_command(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}\n{}", self.log_text()))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.try_command(&[b"SHUTDOWN", b"NOSAVE"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn rdb_file_redis_server_loads_our_file() {
    if !installed("redis-server") {
        return;
    }
    let dir = TempDir::new("load");
    let entries = sample_entries();
    let ours = write_file(&entries);
    std::fs::write(dir.0.join("ours.rdb"), &ours).unwrap();
    let server = RedisServer::start(&dir.0, "ours.rdb");

    let in_db0 = entries.iter().filter(|e| e.db == 0).count();
    assert_eq!(server.command(&[b"DBSIZE"]), format!(":{in_db0}"));
    assert_eq!(server.command(&[b"GET", b"s:plain"]), "hello");
    assert_eq!(server.command(&[b"PEXPIRETIME", b"h"]), ":4102444800003");

    // Everything else, through Redis's own writer: it must save back what we wrote (over
    // our file; dbfilename cannot be changed at run time).
    assert_eq!(server.command(&[b"SAVE"]), "+OK");
    let resaved = std::fs::read(dir.0.join("ours.rdb")).unwrap();
    assert_ne!(resaved, ours);
    let (info, read) = read_all(&resaved).unwrap();
    assert!(info.checksum_checked);
    assert_eq!(keyspace(read), keyspace(entries));
}
