//! Tests of the RDB value codec against bytes real servers wrote or accepted.
//!
//! Three sources of truth:
//! - payloads captured from redis-server 7.0.15 with DUMP (hex literals below);
//! - the Valkey 8.0.1 DUMP payloads and RDB file in shared/testdata;
//! - payloads for the older encodings Redis 7 and Valkey only read (ziplist, zipmap, intset,
//!   quicklist, string-encoded doubles), built here and pinned by their CRC to bytes that
//!   redis-server 7.0.15 RESTOREd with `sanitize-dump-payload yes` and read back as expected.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use serde_json::Value;

use super::compact::{self, Element};
use super::crc64::crc64;
use super::cursor::Cursor;
use super::encoding::{read_len, read_string, write_len, write_raw_string};
use super::object::{decode_object, encode_object, value_type};
use super::{decode_value, dump_payload, encode_value, parse_dump_payload, RdbError, RdbValue};

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn list(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| b(s)).collect()
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

fn assert_same(got: RdbValue, want: RdbValue, what: &str) {
    assert_eq!(normalized(got), normalized(want), "{what}");
}

// ---------------------------------------------------------------------------------------
// CRC64
// ---------------------------------------------------------------------------------------

#[test]
fn rdb_crc64_check_value() {
    assert_eq!(crc64(0, b"123456789"), 0xe9c6_d914_c4b8_d9ca);
    assert_eq!(crc64(0, b""), 0);
    // Incremental use gives the same answer as one call.
    assert_eq!(crc64(crc64(0, b"1234"), b"56789"), 0xe9c6_d914_c4b8_d9ca);
}

// ---------------------------------------------------------------------------------------
// Payloads captured from redis-server 7.0.15 (DUMP, RDB version 10)
// ---------------------------------------------------------------------------------------

/// Strings whose DUMP bytes we must reproduce exactly: raw, every integer width and its
/// limits, non-canonical numbers (stored raw), binary, empty, and LZF-compressed ones.
const REDIS7_STRINGS: &[(&str, &str)] = &[
    ("68656c6c6f", "000568656c6c6f0a006372df766534200a"),
    ("3132333435", "00c139300a009d94ea2793fc08b9"),
    ("2d31", "00c0ff0a000c937e2485089dc5"),
    ("3132333435363738393031", "000b31323334353637383930310a00304e52d727176510"),
    ("313237", "00c07f0a000db5eb315254c514"),
    ("2d313239", "00c17fff0a001760822854808480"),
    ("32313437343833363437", "00c2ffffff7f0a002c74e59ee02eada1"),
    ("2d32313437343833363438", "00c2000000800a00c74f873e33558187"),
    ("32313437343833363438", "000a323134373438333634380a00e7b129a34c1d76ee"),
    ("30313233", "0004303132330a000ae40c929e3b6422"),
    ("2d30", "00022d300a00d5411fd9d6d050cc"),
    ("2b35", "00022b350a0087d1480711b44cc2"),
    ("", "00000a005d9b5c400f7fa2da"),
    (
        // 50 'a' then 50 'b': LZF.
        "61616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262626262",
        "00c30e4064016161e027000062e026000162620a003d84c7c84d98ed18",
    ),
    (
        // "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog again."
        "54686520717569636b2062726f776e20666f78206a756d7073206f76657220746865206c617a7920646f672e2054686520717569636b2062726f776e20666f78206a756d7073206f76657220746865206c617a7920646f6720616761696e2e",
        "00c33c405f1f54686520717569636b2062726f776e20666f78206a756d7073206f7665722074201e0a6c617a7920646f672e2054200de01e2c0620616761696e2e0a0091379eff641960ee",
    ),
];

#[test]
fn rdb_redis7_strings_parse_and_dump_identically() {
    let mut binary: Vec<u8> = (0..=255u8).collect();
    let binary_payload = "004100000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff0a00a2fe30a40f146abf";
    let mut cases: Vec<(Vec<u8>, Vec<u8>)> = REDIS7_STRINGS
        .iter()
        .map(|(value, payload)| (unhex(value), unhex(payload)))
        .collect();
    cases.push((std::mem::take(&mut binary), unhex(binary_payload)));
    for (value, payload) in cases {
        let want = RdbValue::String(value);
        assert_eq!(
            parse_dump_payload(&payload),
            Ok(want.clone()),
            "{payload:02x?}"
        );
        assert_eq!(dump_payload(&want), payload, "{want:?}");
    }
}

#[test]
fn rdb_lzf_output_can_differ_from_redis_but_reads_back() {
    // 21 'x': Redis's liblzf extends the first match to the end of the input; the lzf crate
    // stops two bytes short and adds a literal run. Both decompress to the same bytes, and
    // redis-server 7.0 RESTOREs our form (checked by hand).
    let value = RdbValue::String(vec![b'x'; 21]);
    let redis = unhex("00c30615017878e00a000a00941a83676017192f");
    let ours = unhex("00c30915017878e008000178780a00dae871e80d47f4f9");
    assert_eq!(parse_dump_payload(&redis), Ok(value.clone()));
    assert_eq!(dump_payload(&value), ours);
    assert_eq!(parse_dump_payload(&ours), Ok(value));
}

#[test]
fn rdb_redis7_collections_parse() {
    let cases = [
        // RPUSH lst a b 123 (quicklist of one listpack node)
        (
            "1201020f0f00000003008161028162027b01ff0a00d4e76d43ba90550b",
            RdbValue::List(list(&["a", "b", "123"])),
        ),
        // Quicklist with a plain node (DEBUG QUICKLIST-PACKED-THRESHOLD 100), LZF inside.
        (
            "1203020e0e00000001008573686f727406ff01c3094096017070e08900017070020c0c000000010083656e6404ff0a007903e52c2bd46a93",
            RdbValue::List(vec![b("short"), vec![b'p'; 150], b("end")]),
        ),
        // SADD st 1 2 3 (intset)
        (
            "0b0e02000000030000000100020003000a00a5025ce26d6e4d1b",
            RdbValue::Set(list(&["1", "2", "3"])),
        ),
        // ZADD z 1.5 a -inf b (listpack, scores as text)
        (
            "1118180000000400816202842d696e660581610283312e3504ff0a006283bc627bc94781",
            RdbValue::ZSet(vec![(b("b"), f64::NEG_INFINITY), (b("a"), 1.5)]),
        ),
        // HSET h f v n 7 (listpack)
        (
            "1012120000000400816602817602816e020701ff0a00b82adea8407ffaa8",
            RdbValue::Hash(vec![(b("f"), b("v")), (b("n"), b("7"))]),
        ),
    ];
    for (payload, want) in cases {
        assert_eq!(parse_dump_payload(&unhex(payload)), Ok(want), "{payload}");
    }
}

/// The plain types we write for sets, sorted sets and hashes are the ones Redis 7.0 writes
/// for its hashtable/skiplist encodings, so given the same order the bytes are the same.
#[test]
fn rdb_redis7_plain_types_dump_identically() {
    let cases = [
        // SADD ss a b c, as a hashtable set
        (
            "02030163016101620a00d51bc2f0968e69c3",
            RdbValue::Set(list(&["c", "a", "b"])),
        ),
        // ZADD 1.5 a -inf b inf c 3 d, as a skiplist (written highest score first)
        (
            "05040163000000000000f07f016400000000000008400161000000000000f83f0162000000000000f0ff0a002bec610e6791b6bc",
            RdbValue::ZSet(vec![
                (b("c"), f64::INFINITY),
                (b("d"), 3.0),
                (b("a"), 1.5),
                (b("b"), f64::NEG_INFINITY),
            ]),
        ),
        // HSET hh f v n 7, as a hashtable
        (
            "0402016ec007016601760a006a53c19c3ecda34e",
            RdbValue::Hash(vec![(b("n"), b("7")), (b("f"), b("v"))]),
        ),
    ];
    for (payload, value) in cases {
        let payload = unhex(payload);
        assert_eq!(parse_dump_payload(&payload), Ok(value.clone()));
        assert_eq!(dump_payload(&value), payload, "{value:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Valkey 8.0.1 test data
// ---------------------------------------------------------------------------------------

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/valkey-8.0.1")
        .join(name)
}

fn valkey_json() -> Value {
    let path = testdata("valkey8-mixed.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn hex_str(v: &Value) -> Vec<u8> {
    unhex(v.as_str().unwrap())
}

/// The value the JSON describes: strings, list items, set members and hash values as hex;
/// hash fields and sorted-set members as text, scores as Python `repr`.
fn json_value(key: &Value) -> RdbValue {
    let value = &key["value"];
    match key["type"].as_str().unwrap() {
        "string" => RdbValue::String(hex_str(value)),
        "list" => RdbValue::List(value.as_array().unwrap().iter().map(hex_str).collect()),
        "set" => RdbValue::Set(value.as_array().unwrap().iter().map(hex_str).collect()),
        "hash" => RdbValue::Hash(
            value
                .as_object()
                .unwrap()
                .iter()
                .map(|(field, v)| (b(field), hex_str(v)))
                .collect(),
        ),
        "zset" => RdbValue::ZSet(
            value
                .as_array()
                .unwrap()
                .iter()
                .map(|pair| {
                    let member = b(pair[0].as_str().unwrap());
                    let score: f64 = pair[1].as_str().unwrap().parse().unwrap();
                    (member, score)
                })
                .collect(),
        ),
        other => panic!("unexpected type {other}"),
    }
}

#[test]
fn rdb_valkey8_dump_payloads_parse() {
    let json = valkey_json();
    let payloads = json["dump_payloads_hex"].as_object().unwrap();
    assert_eq!(payloads.len(), 10);
    for (key, hex) in payloads {
        let payload = hex_str(hex);
        assert_eq!(
            payload[payload.len() - 10..payload.len() - 8],
            [11, 0],
            "{key}: version"
        );
        let value = parse_dump_payload(&payload).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_same(value, json_value(&json["keys"][key]), key);
    }
}

/// A minimal walk over an RDB file, enough to reach every value in the Valkey test file:
/// the file reader proper is not written yet, but the values in it are ours to decode.
fn rdb_file_values(file: &[u8]) -> Vec<(Vec<u8>, RdbValue, bool)> {
    let mut cur = Cursor::new(file);
    assert_eq!(cur.take(9).unwrap(), b"REDIS0011");
    let mut values = Vec::new();
    let mut expires = false;
    loop {
        match cur.u8().unwrap() {
            0xff => break,
            // AUX: name and value
            0xfa => {
                read_string(&mut cur).unwrap();
                read_string(&mut cur).unwrap();
            }
            // SELECTDB
            0xfe => {
                read_len(&mut cur).unwrap();
            }
            // RESIZEDB
            0xfb => {
                read_len(&mut cur).unwrap();
                read_len(&mut cur).unwrap();
            }
            // EXPIRETIME_MS
            0xfc => {
                cur.take(8).unwrap();
                expires = true;
            }
            ty => {
                let key = read_string(&mut cur).unwrap().into_owned();
                let value = decode_object(ty, &mut cur).unwrap();
                values.push((key, value, std::mem::take(&mut expires)));
            }
        }
    }
    let covered = cur.position();
    let crc = u64::from_le_bytes(cur.array().unwrap());
    assert_eq!(crc, crc64(0, &file[..covered]), "file checksum");
    assert!(cur.is_at_end());
    values
}

#[test]
fn rdb_valkey8_file_values_decode() {
    let json = valkey_json();
    let file = std::fs::read(testdata("valkey8-mixed.rdb")).unwrap();
    let values = rdb_file_values(&file);
    let keys = json["keys"].as_object().unwrap();
    assert_eq!(values.len(), keys.len());
    for (key, value, expires) in values {
        let name = String::from_utf8(key).unwrap();
        let want = &keys[&name];
        assert_eq!(
            expires,
            want["pttl_set"].as_bool().unwrap(),
            "{name}: expiry"
        );
        // Everything Valkey wrote must also survive our encoder.
        let mut ours = Vec::new();
        encode_value(&value, &mut ours);
        assert_eq!(
            decode_value(&ours),
            Ok((value.clone(), ours.len())),
            "{name}"
        );
        assert_same(value, json_value(want), &name);
    }
}

// ---------------------------------------------------------------------------------------
// Older encodings, validated with redis-server 7.0
// ---------------------------------------------------------------------------------------

fn zl_entry(body: &mut Vec<u8>, prev: usize, item: Element<'_>) {
    if prev < 254 {
        body.push(prev as u8);
    } else {
        body.push(254);
        body.extend_from_slice(&(prev as u32).to_le_bytes());
    }
    match item {
        Element::Int(v @ 0..=12) => body.push(0xf1 + v as u8),
        Element::Int(v @ -128..=127) => body.extend_from_slice(&[0xfe, v as u8]),
        Element::Int(v) if i16::try_from(v).is_ok() => {
            body.push(0xc0);
            body.extend_from_slice(&(v as i16).to_le_bytes());
        }
        Element::Int(v) if (-(1 << 23)..1 << 23).contains(&v) => {
            body.push(0xf0);
            body.extend_from_slice(&(v as i32).to_le_bytes()[..3]);
        }
        Element::Int(v) if i32::try_from(v).is_ok() => {
            body.push(0xd0);
            body.extend_from_slice(&(v as i32).to_le_bytes());
        }
        Element::Int(v) => {
            body.push(0xe0);
            body.extend_from_slice(&v.to_le_bytes());
        }
        Element::Bytes(s) => {
            let n = s.len();
            if n < 64 {
                body.push(n as u8);
            } else if n < 16384 {
                body.extend_from_slice(&[0x40 | (n >> 8) as u8, n as u8]);
            } else {
                body.push(0x80);
                body.extend_from_slice(&(n as u32).to_be_bytes());
            }
            body.extend_from_slice(s);
        }
    }
}

fn ziplist(items: &[Element<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    let (mut prev, mut tail) = (0, 10);
    for &item in items {
        let start = body.len();
        zl_entry(&mut body, prev, item);
        tail = 10 + start;
        prev = body.len() - start;
    }
    let mut out = Vec::new();
    out.extend_from_slice(&((10 + body.len() + 1) as u32).to_le_bytes());
    out.extend_from_slice(&(tail as u32).to_le_bytes());
    out.extend_from_slice(&(items.len().min(65535) as u16).to_le_bytes());
    out.extend_from_slice(&body);
    out.push(0xff);
    out
}

fn lp_backlen(l: usize) -> Vec<u8> {
    if l <= 127 {
        vec![l as u8]
    } else if l < 16383 {
        vec![(l >> 7) as u8, (l & 127) as u8 | 128]
    } else {
        vec![
            (l >> 14) as u8,
            ((l >> 7) & 127) as u8 | 128,
            (l & 127) as u8 | 128,
        ]
    }
}

fn lp_entry(item: Element<'_>) -> Vec<u8> {
    let mut enc = Vec::new();
    match item {
        Element::Int(v @ 0..=127) => enc.push(v as u8),
        Element::Int(v @ -4096..=4095) => {
            let u = (v & 0x1fff) as u16;
            enc.extend_from_slice(&[0xc0 | (u >> 8) as u8, u as u8]);
        }
        Element::Int(v) if i16::try_from(v).is_ok() => {
            enc.push(0xf1);
            enc.extend_from_slice(&(v as i16).to_le_bytes());
        }
        Element::Int(v) if (-(1 << 23)..1 << 23).contains(&v) => {
            enc.push(0xf2);
            enc.extend_from_slice(&(v as i32).to_le_bytes()[..3]);
        }
        Element::Int(v) if i32::try_from(v).is_ok() => {
            enc.push(0xf3);
            enc.extend_from_slice(&(v as i32).to_le_bytes());
        }
        Element::Int(v) => {
            enc.push(0xf4);
            enc.extend_from_slice(&v.to_le_bytes());
        }
        Element::Bytes(s) => {
            let n = s.len();
            if n < 64 {
                enc.push(0x80 | n as u8);
            } else if n < 4096 {
                enc.extend_from_slice(&[0xe0 | (n >> 8) as u8, n as u8]);
            } else {
                enc.push(0xf0);
                enc.extend_from_slice(&(n as u32).to_le_bytes());
            }
            enc.extend_from_slice(s);
        }
    }
    let backlen = lp_backlen(enc.len());
    enc.extend_from_slice(&backlen);
    enc
}

fn listpack(items: &[Element<'_>]) -> Vec<u8> {
    let body: Vec<u8> = items.iter().flat_map(|&item| lp_entry(item)).collect();
    let mut out = Vec::new();
    out.extend_from_slice(&((6 + body.len() + 1) as u32).to_le_bytes());
    out.extend_from_slice(&(items.len().min(65535) as u16).to_le_bytes());
    out.extend_from_slice(&body);
    out.push(0xff);
    out
}

fn intset(width: u32, values: &[i64]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    for &v in values {
        match width {
            2 => out.extend_from_slice(&(v as i16).to_le_bytes()),
            4 => out.extend_from_slice(&(v as i32).to_le_bytes()),
            _ => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
    out
}

fn zipmap(pairs: &[(&[u8], &[u8])], free: u8) -> Vec<u8> {
    fn len(out: &mut Vec<u8>, n: usize) {
        if n < 254 {
            out.push(n as u8);
        } else {
            out.push(254);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
    }
    let mut out = vec![pairs.len() as u8];
    for (field, value) in pairs {
        len(&mut out, field.len());
        out.extend_from_slice(field);
        len(&mut out, value.len());
        out.push(free);
        out.extend_from_slice(value);
        out.extend(std::iter::repeat_n(0, usize::from(free)));
    }
    out.push(0xff);
    out
}

/// `<type><blob as a raw string>`
fn blob_value(ty: u8, blob: &[u8]) -> Vec<u8> {
    let mut out = vec![ty];
    write_raw_string(&mut out, blob);
    out
}

/// Wraps a value in a version-10 DUMP envelope and checks it is the payload redis-server
/// 7.0 accepted: the envelope CRC covers every byte of it.
fn validated_payload(mut body: Vec<u8>, crc: u64) -> Vec<u8> {
    body.extend_from_slice(&10u16.to_le_bytes());
    let got = crc64(0, &body);
    assert_eq!(
        got, crc,
        "payload differs from the one redis-server accepted"
    );
    body.extend_from_slice(&got.to_le_bytes());
    body
}

const INTS: &[i64] = &[
    0,
    12,
    13,
    -1,
    127,
    -128,
    128,
    -129,
    4095,
    -4096,
    4096,
    -4097,
    32767,
    -32768,
    32768,
    -32769,
    8_388_607,
    -8_388_608,
    8_388_608,
    -8_388_609,
    2_147_483_647,
    -2_147_483_648,
    2_147_483_648,
    -2_147_483_649,
    i64::MAX,
    i64::MIN,
];

fn strs() -> Vec<Vec<u8>> {
    vec![
        b(""),
        b("a"),
        vec![b'x'; 63],
        vec![b'y'; 64],
        vec![b'z'; 300],
        vec![b'w'; 4095],
    ]
}

/// Every integer width and string length class, as elements and as the strings they read as.
fn mixed_elements(strs: &[Vec<u8>]) -> (Vec<Element<'_>>, Vec<Vec<u8>>) {
    let mut elements: Vec<Element<'_>> = INTS.iter().map(|&v| Element::Int(v)).collect();
    elements.extend(strs.iter().map(|s| Element::Bytes(s)));
    let mut expected: Vec<Vec<u8>> = INTS.iter().map(|v| v.to_string().into_bytes()).collect();
    expected.extend(strs.iter().cloned());
    (elements, expected)
}

#[test]
fn rdb_ziplist_list() {
    let strs = strs();
    let (elements, expected) = mixed_elements(&strs);
    let payload = validated_payload(blob_value(10, &ziplist(&elements)), 0x0c2d_d913_a0d3_b70c);
    assert_eq!(parse_dump_payload(&payload), Ok(RdbValue::List(expected)));
}

#[test]
fn rdb_quicklist_of_ziplists() {
    let mut body = vec![14];
    write_len(&mut body, 2);
    write_raw_string(
        &mut body,
        &ziplist(&[Element::Bytes(b"a"), Element::Int(1)]),
    );
    let long = vec![b'b'; 70];
    write_raw_string(
        &mut body,
        &ziplist(&[Element::Bytes(&long), Element::Int(-70000)]),
    );
    let payload = validated_payload(body, 0x4e67_3927_3006_e401);
    assert_eq!(
        parse_dump_payload(&payload),
        Ok(RdbValue::List(vec![b("a"), b("1"), long, b("-70000")]))
    );
}

#[test]
fn rdb_quicklist_2_packed_and_plain_nodes() {
    let strs = strs();
    let (elements, mut expected) = mixed_elements(&strs);
    let mut body = vec![18];
    write_len(&mut body, 3);
    write_len(&mut body, 2);
    write_raw_string(&mut body, &listpack(&elements));
    write_len(&mut body, 1);
    write_raw_string(&mut body, b"plain element");
    write_len(&mut body, 2);
    write_raw_string(&mut body, &listpack(&[Element::Bytes(b"tail")]));
    let payload = validated_payload(body, 0xaaf1_bf5e_c920_af2c);
    expected.extend([b("plain element"), b("tail")]);
    assert_eq!(parse_dump_payload(&payload), Ok(RdbValue::List(expected)));
}

#[test]
fn rdb_intsets_of_every_width() {
    let cases: [(u32, &[i64], u64); 3] = [
        (2, &[-3, 0, 5, 32767], 0x22b2_8ed1_e3da_577f),
        (4, &[-100_000, 1, 100_000], 0xf4ad_00c7_0e68_11a2),
        (8, &[i64::MIN, 0, i64::MAX], 0x4f2c_242a_a9a2_7b7c),
    ];
    for (width, values, crc) in cases {
        let payload = validated_payload(blob_value(11, &intset(width, values)), crc);
        let members = values.iter().map(|v| v.to_string().into_bytes()).collect();
        assert_eq!(parse_dump_payload(&payload), Ok(RdbValue::Set(members)));
    }
}

#[test]
fn rdb_zset_ziplist_with_text_and_integer_scores() {
    let elements = [
        Element::Bytes(b"a"),
        Element::Bytes(b"-inf"),
        Element::Bytes(b"b"),
        Element::Int(1),
        Element::Bytes(b"c"),
        Element::Bytes(b"1.5"),
        Element::Bytes(b"d"),
        Element::Bytes(b"inf"),
    ];
    let payload = validated_payload(blob_value(12, &ziplist(&elements)), 0x6f87_e932_4a40_d11f);
    assert_eq!(
        parse_dump_payload(&payload),
        Ok(RdbValue::ZSet(vec![
            (b("a"), f64::NEG_INFINITY),
            (b("b"), 1.0),
            (b("c"), 1.5),
            (b("d"), f64::INFINITY),
        ]))
    );
}

#[test]
fn rdb_hash_ziplist() {
    let elements = [
        Element::Bytes(b"f"),
        Element::Bytes(b"v"),
        Element::Bytes(b"n"),
        Element::Int(42),
        Element::Int(7),
        Element::Bytes(b"seven"),
    ];
    let payload = validated_payload(blob_value(13, &ziplist(&elements)), 0x3ca1_b707_63eb_aa81);
    assert_eq!(
        parse_dump_payload(&payload),
        Ok(RdbValue::Hash(vec![
            (b("f"), b("v")),
            (b("n"), b("42")),
            (b("7"), b("seven")),
        ]))
    );
}

#[test]
fn rdb_hash_zipmap_with_long_field_and_free_bytes() {
    let long_field = vec![b'k'; 300];
    let value = vec![b'v'; 5];
    let blob = zipmap(&[(b"a", b"1"), (&long_field, &value)], 2);
    let payload = validated_payload(blob_value(9, &blob), 0x1fbb_7144_9874_4865);
    assert_eq!(
        parse_dump_payload(&payload),
        Ok(RdbValue::Hash(vec![(b("a"), b("1")), (long_field, value)]))
    );
}

#[test]
fn rdb_zset_with_text_doubles() {
    let mut body = vec![3];
    write_len(&mut body, 4);
    write_raw_string(&mut body, b"a");
    write_raw_string(&mut body, b"1.5");
    write_raw_string(&mut body, b"b");
    body.push(254);
    write_raw_string(&mut body, b"c");
    body.push(255);
    write_raw_string(&mut body, b"d");
    write_raw_string(&mut body, b"-3.25e+20");
    let payload = validated_payload(body, 0xc39c_748b_6c60_2e66);
    assert_eq!(
        parse_dump_payload(&payload),
        Ok(RdbValue::ZSet(vec![
            (b("a"), 1.5),
            (b("b"), f64::INFINITY),
            (b("c"), f64::NEG_INFINITY),
            (b("d"), -3.25e20),
        ]))
    );
}

#[test]
fn rdb_hash_and_zset_listpacks() {
    let long = vec![b'x'; 70];
    let hash = [
        Element::Bytes(b"f"),
        Element::Int(1),
        Element::Bytes(b"g"),
        Element::Int(-5000),
        Element::Bytes(b"h"),
        Element::Bytes(&long),
    ];
    let payload = validated_payload(blob_value(16, &listpack(&hash)), 0x8fb7_f343_9ffc_38e0);
    assert_eq!(
        parse_dump_payload(&payload),
        Ok(RdbValue::Hash(vec![
            (b("f"), b("1")),
            (b("g"), b("-5000")),
            (b("h"), long.clone()),
        ]))
    );
    let zset = [
        Element::Bytes(b"a"),
        Element::Int(-(1 << 40)),
        Element::Bytes(b"b"),
        Element::Bytes(b"2.5"),
    ];
    let payload = validated_payload(blob_value(17, &listpack(&zset)), 0x8e48_bffa_1c7e_0fe0);
    assert_eq!(
        parse_dump_payload(&payload),
        Ok(RdbValue::ZSet(vec![
            (b("a"), -(2f64.powi(40))),
            (b("b"), 2.5)
        ]))
    );
}

#[test]
fn rdb_long_strings_in_ziplist_and_listpack() {
    // A ziplist string of 16384+ bytes has a 4-byte big-endian length, and the entry after it
    // a 5-byte previous-length.
    let s = vec![b's'; 20000];
    let blob = ziplist(&[Element::Bytes(&s), Element::Bytes(b"t")]);
    let payload = validated_payload(blob_value(10, &blob), 0xd5de_a593_b349_04b6);
    assert_eq!(
        parse_dump_payload(&payload),
        Ok(RdbValue::List(vec![s, b("t")]))
    );

    // A listpack string of 4096+ bytes has a 4-byte length, and one of 16383+ bytes a
    // 3-byte back-length.
    let q = vec![b'q'; 5000];
    let r = vec![b'r'; 20000];
    let mut body = vec![18];
    write_len(&mut body, 1);
    write_len(&mut body, 2);
    write_raw_string(
        &mut body,
        &listpack(&[Element::Bytes(&q), Element::Bytes(&r), Element::Int(1)]),
    );
    let payload = validated_payload(body, 0x9a2c_8efd_ec79_0a90);
    assert_eq!(
        parse_dump_payload(&payload),
        Ok(RdbValue::List(vec![q, r, b("1")]))
    );
}

// ---------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------

fn sample_values() -> Vec<RdbValue> {
    let many: Vec<Vec<u8>> = (0..20_000).map(|i| format!("m{i}").into_bytes()).collect();
    vec![
        RdbValue::String(Vec::new()),
        RdbValue::String(b("0")),
        RdbValue::String(b("-2147483648")),
        RdbValue::String(b("2147483648")),
        RdbValue::String(b("9223372036854775807")),
        RdbValue::String(b("007")),
        RdbValue::String(vec![b'z'; 21]),
        RdbValue::String(vec![b'z'; 70_000]),
        RdbValue::String((0..=255u8).cycle().take(1000).collect()),
        RdbValue::List(list(&["a", "", "1", "-5", "hello world"])),
        RdbValue::List(many.clone()),
        RdbValue::Set(list(&["1", "2", "x"])),
        RdbValue::Set(many.clone()),
        RdbValue::ZSet(vec![
            (b("a"), 0.0),
            (b("b"), -0.0),
            (b("c"), f64::INFINITY),
            (b("d"), f64::NEG_INFINITY),
            (b("e"), 0.1),
            (b("f"), f64::MAX),
            (b("g"), f64::MIN_POSITIVE),
        ]),
        RdbValue::Hash(vec![
            (b("f"), b("v")),
            (b("n"), b("12")),
            (b(""), b("")),
            (vec![b'k'; 100], vec![b'v'; 100]),
        ]),
        RdbValue::List(Vec::new()),
        RdbValue::Set(Vec::new()),
        RdbValue::ZSet(Vec::new()),
        RdbValue::Hash(Vec::new()),
    ]
}

fn same_bits(a: &RdbValue, b: &RdbValue) -> bool {
    match (a, b) {
        // Compare scores by bits so that -0.0 must come back as -0.0.
        (RdbValue::ZSet(x), RdbValue::ZSet(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(p, q)| p.0 == q.0 && p.1.to_bits() == q.1.to_bits())
        }
        _ => a == b,
    }
}

#[test]
fn rdb_round_trips() {
    for value in sample_values() {
        let mut encoded = Vec::new();
        encode_value(&value, &mut encoded);
        let (decoded, used) = decode_value(&encoded).unwrap();
        assert_eq!(used, encoded.len());
        assert!(same_bits(&decoded, &value), "{value:?}");

        // The object form the file writer will use is the same bytes without the type.
        let mut object = Vec::new();
        encode_object(&value, &mut object);
        assert_eq!(encoded[0], value_type(&value));
        assert_eq!(&encoded[1..], &object[..]);

        let payload = dump_payload(&value);
        if value.is_empty_collection() {
            // RESTORE refuses empty collections, as Redis does.
            assert_eq!(
                parse_dump_payload(&payload),
                Err(RdbError::Corrupt("empty collection"))
            );
        } else {
            assert!(same_bits(&parse_dump_payload(&payload).unwrap(), &value));
        }
    }
}

#[test]
fn rdb_decode_value_reports_bytes_used() {
    let mut encoded = Vec::new();
    encode_value(&RdbValue::String(b("abc")), &mut encoded);
    encode_value(&RdbValue::List(list(&["x"])), &mut encoded);
    let (first, used) = decode_value(&encoded).unwrap();
    assert_eq!(first, RdbValue::String(b("abc")));
    assert_eq!(used, 5);
    let (second, used2) = decode_value(&encoded[used..]).unwrap();
    assert_eq!(second, RdbValue::List(list(&["x"])));
    assert_eq!(used + used2, encoded.len());
}

// ---------------------------------------------------------------------------------------
// The envelope
// ---------------------------------------------------------------------------------------

fn hello_payload() -> Vec<u8> {
    dump_payload(&RdbValue::String(b("hello")))
}

#[test]
fn rdb_dump_envelope_checks() {
    let payload = hello_payload();
    assert_eq!(payload.len(), 7 + 10);
    assert_eq!(payload[7..9], [10, 0]);

    // Any changed byte before the CRC, or in it, fails the checksum, except in the version
    // field where a too-new version is reported first.
    for i in 0..payload.len() {
        for bit in 0..8 {
            let mut bad = payload.clone();
            bad[i] ^= 1 << bit;
            let err = parse_dump_payload(&bad).unwrap_err();
            if (7..9).contains(&i) && u16::from_le_bytes([bad[7], bad[8]]) > 11 {
                assert!(matches!(err, RdbError::BadVersion(_)), "byte {i}: {err}");
            } else {
                assert_eq!(err, RdbError::BadChecksum, "byte {i} bit {bit}");
            }
        }
    }

    // Redis 7.0 refuses an all-zero CRC too: there is no "unchecked" marker.
    let mut zero = payload.clone();
    zero[9..].fill(0);
    assert_eq!(parse_dump_payload(&zero), Err(RdbError::BadChecksum));

    assert_eq!(parse_dump_payload(&payload[..9]), Err(RdbError::Truncated));
    assert_eq!(parse_dump_payload(&[]), Err(RdbError::Truncated));
}

fn with_envelope(body: &[u8], version: u16) -> Vec<u8> {
    let mut out = body.to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    let crc = crc64(0, &out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

#[test]
fn rdb_dump_versions() {
    let body = [0u8, 1, b'v'];
    for version in [1, 9, 10, 11] {
        assert_eq!(
            parse_dump_payload(&with_envelope(&body, version)),
            Ok(RdbValue::String(b("v")))
        );
    }
    assert_eq!(
        parse_dump_payload(&with_envelope(&body, 12)),
        Err(RdbError::BadVersion(12))
    );
}

#[test]
fn rdb_dump_requires_exactly_one_value() {
    // Redis 7.0 ignores bytes after the value; we refuse them, as they mean a corrupt payload.
    assert_eq!(
        parse_dump_payload(&with_envelope(&[0, 1, b'v', 0], 10)),
        Err(RdbError::Corrupt("bytes left over after the value"))
    );
    // Redis 7.0 would read this string's missing bytes from the footer; to us the value is
    // cut short, which is bad data rather than a bad envelope.
    assert_eq!(
        parse_dump_payload(&with_envelope(&[0, 5, b'h', b'e', b'l'], 10)),
        Err(RdbError::Corrupt("value ends before the payload footer"))
    );
    assert_eq!(
        parse_dump_payload(&with_envelope(&[], 10)),
        Err(RdbError::Corrupt("value ends before the payload footer"))
    );
}

// ---------------------------------------------------------------------------------------
// Corrupt and hostile input
// ---------------------------------------------------------------------------------------

/// Every value encoding we read, as `<type><payload>` without the envelope.
fn all_encodings() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = REDIS7_STRINGS
        .iter()
        .map(|(_, payload)| {
            let p = unhex(payload);
            p[..p.len() - 10].to_vec()
        })
        .collect();
    let strs = strs();
    let (elements, _) = mixed_elements(&strs);
    bodies.push(blob_value(10, &ziplist(&elements)));
    let mut quicklist = vec![18];
    write_len(&mut quicklist, 2);
    write_len(&mut quicklist, 2);
    write_raw_string(&mut quicklist, &listpack(&elements));
    write_len(&mut quicklist, 1);
    write_raw_string(&mut quicklist, b"plain");
    bodies.push(quicklist);
    bodies.push(blob_value(11, &intset(4, &[-1, 5, 70000])));
    bodies.push(blob_value(9, &zipmap(&[(b"a", b"1"), (b"bb", b"22")], 1)));
    bodies.push(blob_value(
        13,
        &ziplist(&[Element::Bytes(b"f"), Element::Int(300)]),
    ));
    bodies.push(blob_value(
        20,
        &listpack(&[Element::Bytes(b"m"), Element::Int(-1)]),
    ));
    for value in sample_values()
        .into_iter()
        .filter(|v| !v.is_empty_collection())
    {
        let mut out = Vec::new();
        encode_value(&value, &mut out);
        if out.len() < 2000 {
            bodies.push(out);
        }
    }
    for body in &bodies {
        assert!(decode_value(body).is_ok(), "{body:02x?}");
    }
    bodies
}

#[test]
fn rdb_every_truncation_is_an_error() {
    for body in all_encodings() {
        for len in 0..body.len() {
            assert!(
                decode_value(&body[..len]).is_err(),
                "prefix {len} of {body:02x?} decoded"
            );
        }
    }
    let payload = hello_payload();
    for len in 0..payload.len() {
        assert!(parse_dump_payload(&payload[..len]).is_err());
    }
}

/// Deterministic byte mutations of every encoding: any result is fine except a panic.
#[test]
fn rdb_mutated_input_never_panics() {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for body in all_encodings() {
        for _ in 0..400 {
            let mut bad = body.clone();
            for _ in 0..1 + next() % 3 {
                let i = (next() % bad.len() as u64) as usize;
                bad[i] = next() as u8;
            }
            let _ = decode_value(&bad);
            let _ = parse_dump_payload(&with_envelope(&bad, 10));
        }
    }
}

#[test]
fn rdb_huge_claimed_lengths_are_refused_without_allocating() {
    let huge_len = {
        let mut out = Vec::new();
        write_len(&mut out, u64::MAX);
        out
    };
    // A list, set, hash and zset claiming 2^64-1 elements, then nothing.
    for ty in [1u8, 2, 3, 4, 5, 14, 18] {
        let mut body = vec![ty];
        body.extend_from_slice(&huge_len);
        assert!(decode_value(&body).is_err(), "type {ty}");
    }
    // A string claiming 2^64-1 bytes, and one claiming 2^32-1.
    let mut body = vec![0];
    body.extend_from_slice(&huge_len);
    assert_eq!(decode_value(&body), Err(RdbError::Truncated));
    let mut body = vec![0];
    write_len(&mut body, u64::from(u32::MAX));
    assert_eq!(decode_value(&body), Err(RdbError::Truncated));

    // LZF claiming to expand 4 bytes to 4 GiB.
    let mut body = vec![0, 0xc3];
    write_len(&mut body, 4);
    write_len(&mut body, u64::from(u32::MAX));
    body.extend_from_slice(&[0, b'a', 0, 0]);
    assert!(matches!(decode_value(&body), Err(RdbError::Corrupt(_))));

    // Listpack and ziplist entries claiming 4 GiB strings; an intset claiming 2^32-1 members.
    let mut lp = vec![0, 0, 0, 0, 1, 0, 0xf0, 0xff, 0xff, 0xff, 0xff, 0xff];
    let n = lp.len() as u32;
    lp[..4].copy_from_slice(&n.to_le_bytes());
    assert!(compact::listpack(&lp).is_err());
    let mut zl = vec![
        0, 0, 0, 0, 10, 0, 0, 0, 1, 0, 0, 0x80, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    let n = zl.len() as u32;
    zl[..4].copy_from_slice(&n.to_le_bytes());
    assert!(compact::ziplist(&zl).is_err());
    assert!(compact::intset(&[8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
}

#[test]
fn rdb_inconsistent_containers_are_refused() {
    let good = listpack(&[Element::Bytes(b"a"), Element::Int(5)]);
    assert!(compact::listpack(&good).is_ok());

    let mut bad = good.clone();
    bad[4] = 3; // count says 3
    assert!(compact::listpack(&bad).is_err());
    let mut bad = good.clone();
    bad[0] += 1; // total size too big
    assert!(compact::listpack(&bad).is_err());
    let mut bad = good.clone();
    bad[8] = 9; // back-length of the first entry
    assert!(compact::listpack(&bad).is_err());
    let mut bad = good.clone();
    bad.insert(bad.len() - 1, 0xf5); // unknown encoding
    let n = bad.len() as u32;
    bad[..4].copy_from_slice(&n.to_le_bytes());
    assert!(compact::listpack(&bad).is_err());

    let good = ziplist(&[Element::Bytes(b"a"), Element::Int(5)]);
    assert!(compact::ziplist(&good).is_ok());
    let mut bad = good.clone();
    bad[4] = 10; // tail offset at the first entry
    assert!(compact::ziplist(&bad).is_err());
    let mut bad = good.clone();
    bad[13] = 7; // previous-length of the second entry
    assert!(compact::ziplist(&bad).is_err());

    assert!(compact::intset(&intset(2, &[1, 1])).is_err());
    assert!(compact::intset(&intset(2, &[2, 1])).is_err());
    assert!(compact::intset(&[3, 0, 0, 0, 0, 0, 0, 0]).is_err());

    // A hash listpack with an odd element count; a quicklist node of an unknown kind.
    let odd = listpack(&[Element::Bytes(b"f")]);
    assert!(decode_value(&blob_value(16, &odd)).is_err());
    let mut body = vec![18, 1, 3];
    write_raw_string(&mut body, &listpack(&[Element::Bytes(b"x")]));
    assert_eq!(
        decode_value(&body),
        Err(RdbError::Corrupt("unknown quicklist node kind"))
    );
}

#[test]
fn rdb_duplicates_and_nan_are_refused() {
    let dup_set = blob_value(20, &listpack(&[Element::Bytes(b"1"), Element::Int(1)]));
    assert_eq!(
        decode_value(&dup_set),
        Err(RdbError::Corrupt("set has a duplicate member"))
    );
    let mut plain_set = vec![2, 2];
    write_raw_string(&mut plain_set, b"a");
    write_raw_string(&mut plain_set, b"a");
    assert!(decode_value(&plain_set).is_err());
    let dup_hash = blob_value(
        13,
        &ziplist(&[
            Element::Bytes(b"f"),
            Element::Int(1),
            Element::Bytes(b"f"),
            Element::Int(2),
        ]),
    );
    assert_eq!(
        decode_value(&dup_hash),
        Err(RdbError::Corrupt("hash has a duplicate field"))
    );
    let dup_zset = blob_value(
        17,
        &listpack(&[
            Element::Bytes(b"m"),
            Element::Int(1),
            Element::Bytes(b"m"),
            Element::Int(2),
        ]),
    );
    assert!(decode_value(&dup_zset).is_err());

    // NaN scores: the text form's marker (253), the binary form, and the word in a listpack.
    let mut zset3 = vec![3, 1];
    write_raw_string(&mut zset3, b"m");
    zset3.push(253);
    assert_eq!(
        decode_value(&zset3),
        Err(RdbError::Corrupt("sorted set score is NaN"))
    );
    let mut zset5 = vec![5, 1];
    write_raw_string(&mut zset5, b"m");
    zset5.extend_from_slice(&f64::NAN.to_le_bytes());
    assert!(decode_value(&zset5).is_err());
    let zset17 = blob_value(
        17,
        &listpack(&[Element::Bytes(b"m"), Element::Bytes(b"nan")]),
    );
    assert!(decode_value(&zset17).is_err());
    let not_a_number = blob_value(17, &listpack(&[Element::Bytes(b"m"), Element::Bytes(b"x")]));
    assert_eq!(
        decode_value(&not_a_number),
        Err(RdbError::Corrupt("score is not a number"))
    );
}

#[test]
fn rdb_streams_and_modules_are_unsupported() {
    for ty in [6u8, 7, 15, 19, 21, 8, 22, 200] {
        assert_eq!(
            decode_value(&[ty, 0, 0, 0]),
            Err(RdbError::UnsupportedType(ty))
        );
    }
    assert_eq!(
        RdbError::UnsupportedType(15).to_string(),
        "unsupported RDB value type 15 (stream, not supported)"
    );
    assert_eq!(
        RdbError::UnsupportedType(7).to_string(),
        "unsupported RDB value type 7 (module value, not supported)"
    );
}

#[test]
fn rdb_bad_length_and_string_encodings() {
    // 0x82..0xbf are not length encodings; special encoding 4+ is not a string encoding.
    assert_eq!(
        decode_value(&[0, 0x82]),
        Err(RdbError::Corrupt("unknown length encoding"))
    );
    assert_eq!(
        decode_value(&[0, 0xc4]),
        Err(RdbError::Corrupt("unknown string encoding"))
    );
    // An element count given in a string's special encoding.
    assert!(decode_value(&[1, 0xc0, 1]).is_err());
    // LZF data that is not LZF, and LZF that decompresses short of its claimed length.
    assert!(decode_value(&[0, 0xc3, 2, 5, 0xe0, 0]).is_err());
    assert!(decode_value(&[0, 0xc3, 2, 5, 0, b'a']).is_err());
}
