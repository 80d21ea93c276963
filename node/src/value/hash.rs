//! The hash type: fields mapped to values.
//!
//! Two encodings, as in Valkey, with the same names for `OBJECT ENCODING`:
//!
//! - `listpack`: a vector of (field, value) pairs in insertion order, searched linearly. Used
//!   while the hash has at most `hash-max-listpack-entries` fields and every field and value is
//!   at most `hash-max-listpack-value` bytes. HGETALL, HSCAN, ... return fields in the same
//!   order Valkey's listpack does (insertion order, deletions closing the gap).
//! - `hashtable`: a chained hash table of our own ([`Table`]): the pairs live densely in one
//!   vector (no allocation per pair), and a power-of-two array of bucket heads links them into
//!   chains through `u32` indices. Each pair is 40 bytes plus 4 bytes of bucket: fields and
//!   values are [`CompactBytesSlice`]s, inline up to 15 bytes and exactly sized on the heap
//!   beyond that. Deleting moves the last pair into the hole, so the vector stays dense and a
//!   uniformly random pair (HRANDFIELD) is one index away.
//!
//! Conversion from listpack to hashtable is one-way, as in Valkey.
//!
//! HSCAN: a listpack hash is returned whole in one call with cursor 0, as Valkey does. A
//! hashtable is scanned like Valkey's `dictScan`: a pair lives exactly in bucket
//! `hash & mask` (chaining, no probing), and the cursor is a bucket index walked in
//! reverse-binary order. That order visits, after a table doubles or halves between calls,
//! exactly the buckets the not-yet-visited buckets of the old size became, so a pair present
//! for the whole iteration is returned at least once (perhaps twice after a resize). Each call
//! visits buckets until it has gathered about COUNT pairs (at most 10×COUNT empty buckets), so
//! the work per call is bounded. The table is resized all at once (rehashing needs only the
//! stored 32-bit hashes, no hashing of fields), doubling when it holds more pairs than buckets
//! and halving below 1/8 full.

use compact_bytes::CompactBytesSlice;
use std::hash::BuildHasher;

use crate::rdb::RdbValue;
use crate::value::EncodingLimits;

type Bytes = CompactBytesSlice;

/// End of a chain.
const NIL: u32 = u32::MAX;
/// Fewest buckets a table has.
const MIN_BUCKETS: usize = 4;

#[derive(Debug, Clone)]
struct Slot {
    field: Bytes,
    value: Bytes,
    /// The low 32 bits of the field's hash: its bucket under any table size.
    hash: u32,
    /// The next slot in the same bucket, or NIL.
    next: u32,
}

/// The `hashtable` encoding (see the module docs).
#[derive(Clone)]
struct Table {
    slots: Vec<Slot>,
    buckets: Vec<u32>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("len", &self.slots.len())
            .field("buckets", &self.buckets.len())
            .finish()
    }
}

fn buckets_for(n: usize) -> usize {
    n.next_power_of_two().max(MIN_BUCKETS)
}

/// Where a chain link is stored: a bucket head or a slot's `next`.
#[derive(Clone, Copy)]
enum Link {
    Bucket(usize),
    Slot(usize),
}

impl Table {
    fn with_capacity(n: usize) -> Table {
        Table {
            slots: Vec::with_capacity(n),
            buckets: vec![NIL; buckets_for(n)],
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }

    fn hash(&self, field: &[u8]) -> u32 {
        self.hasher.hash_one(field) as u32
    }

    fn mask(&self) -> usize {
        self.buckets.len() - 1
    }

    fn find(&self, field: &[u8]) -> Option<usize> {
        let h = self.hash(field);
        let mut i = self.buckets[h as usize & self.mask()];
        while i != NIL {
            let s = &self.slots[i as usize];
            if s.hash == h && s.field.as_slice() == field {
                return Some(i as usize);
            }
            i = s.next;
        }
        None
    }

    fn get_link(&self, l: Link) -> u32 {
        match l {
            Link::Bucket(b) => self.buckets[b],
            Link::Slot(i) => self.slots[i].next,
        }
    }

    fn set_link(&mut self, l: Link, to: u32) {
        match l {
            Link::Bucket(b) => self.buckets[b] = to,
            Link::Slot(i) => self.slots[i].next = to,
        }
    }

    /// The link that points at slot `i` (which must be in the table).
    fn link_to(&self, i: usize) -> Link {
        let mut l = Link::Bucket(self.slots[i].hash as usize & self.mask());
        loop {
            let at = self.get_link(l);
            if at as usize == i || at == NIL {
                return l;
            }
            l = Link::Slot(at as usize);
        }
    }

    /// Rebuilds the chains for `n` buckets (a power of two).
    fn rehash(&mut self, n: usize) {
        self.buckets.clear();
        self.buckets.resize(n, NIL);
        self.buckets.shrink_to_fit();
        let mask = n - 1;
        for (i, s) in self.slots.iter_mut().enumerate() {
            let b = s.hash as usize & mask;
            s.next = self.buckets[b];
            self.buckets[b] = i as u32;
        }
    }

    /// Adds a field known to be absent.
    fn push(&mut self, field: Bytes, value: Bytes) {
        let hash = self.hash(&field);
        self.push_hashed(field, value, hash);
    }

    fn push_hashed(&mut self, field: Bytes, value: Bytes, hash: u32) {
        if self.slots.len() >= self.buckets.len() {
            self.rehash(self.buckets.len() * 2);
        }
        let b = hash as usize & self.mask();
        let i = self.slots.len() as u32;
        self.slots.push(Slot {
            field,
            value,
            hash,
            next: self.buckets[b],
        });
        self.buckets[b] = i;
    }

    fn set(&mut self, field: &[u8], value: &[u8]) -> bool {
        match self.find(field) {
            Some(i) => {
                self.slots[i].value = Bytes::new(value);
                false
            }
            None => {
                let hash = self.hash(field);
                self.push_hashed(Bytes::new(field), Bytes::new(value), hash);
                true
            }
        }
    }

    fn remove(&mut self, field: &[u8]) -> bool {
        let Some(i) = self.find(field) else {
            return false;
        };
        // Unlink `i`, then move the last slot into its place and repoint its link.
        let l = self.link_to(i);
        let next = self.slots[i].next;
        self.set_link(l, next);
        let last = self.slots.len() - 1;
        if i != last {
            let l = self.link_to(last);
            self.set_link(l, i as u32);
        }
        self.slots.swap_remove(i);
        let n = self.slots.len();
        if self.buckets.len() > MIN_BUCKETS && n * 8 < self.buckets.len() {
            self.rehash(buckets_for(n));
        }
        if self.slots.capacity() > 64 && n * 4 < self.slots.capacity() {
            self.slots.shrink_to(n * 2);
        }
        true
    }

    /// One step of HSCAN (see the module docs). Returns the next cursor, 0 when done.
    fn scan<'a>(
        &'a self,
        cursor: u64,
        count: usize,
        emit: &mut impl FnMut(&'a [u8], &'a [u8]),
    ) -> u64 {
        if self.slots.is_empty() {
            return 0;
        }
        let mask = self.mask() as u64;
        let mut v = cursor;
        let mut gathered = 0;
        let mut budget = count.saturating_mul(10);
        loop {
            let mut i = self.buckets[(v & mask) as usize];
            while i != NIL {
                let s = &self.slots[i as usize];
                emit(s.field.as_slice(), s.value.as_slice());
                gathered += 1;
                i = s.next;
            }
            // The next bucket in reverse-binary order.
            v |= !mask;
            v = v.reverse_bits().wrapping_add(1).reverse_bits();
            if v == 0 || gathered >= count || budget == 0 {
                return v;
            }
            budget -= 1;
        }
    }
}

#[derive(Debug, Clone)]
enum Repr {
    Listpack(Vec<(Bytes, Bytes)>),
    Table(Table),
}

/// A hash value (see the module docs).
#[derive(Debug, Clone)]
pub struct HashValue {
    repr: Repr,
}

impl Default for HashValue {
    fn default() -> Self {
        HashValue {
            repr: Repr::Listpack(Vec::new()),
        }
    }
}

impl PartialEq for HashValue {
    /// The same fields with the same values, whatever the order or encoding.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(f, v)| other.get(f) == Some(v))
    }
}

/// Pairs in storage order.
pub struct Iter<'a> {
    inner: IterInner<'a>,
}

enum IterInner<'a> {
    Listpack(std::slice::Iter<'a, (Bytes, Bytes)>),
    Table(std::slice::Iter<'a, Slot>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            IterInner::Listpack(it) => it.next().map(|(f, v)| (f.as_slice(), v.as_slice())),
            IterInner::Table(it) => it.next().map(|s| (s.field.as_slice(), s.value.as_slice())),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.inner {
            IterInner::Listpack(it) => it.size_hint(),
            IterInner::Table(it) => it.size_hint(),
        }
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl HashValue {
    pub fn new() -> HashValue {
        HashValue::default()
    }

    /// The name `OBJECT ENCODING` reports.
    pub fn encoding_name(&self) -> &'static str {
        match self.repr {
            Repr::Listpack(_) => "listpack",
            Repr::Table(_) => "hashtable",
        }
    }

    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Listpack(v) => v.len(),
            Repr::Table(t) => t.slots.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> Iter<'_> {
        Iter {
            inner: match &self.repr {
                Repr::Listpack(v) => IterInner::Listpack(v.iter()),
                Repr::Table(t) => IterInner::Table(t.slots.iter()),
            },
        }
    }

    /// The pair at position `i` of the storage order (`i < len()`): with a uniform `i`, a
    /// uniformly random pair.
    pub fn pair_at(&self, i: usize) -> (&[u8], &[u8]) {
        match &self.repr {
            Repr::Listpack(v) => (v[i].0.as_slice(), v[i].1.as_slice()),
            Repr::Table(t) => (t.slots[i].field.as_slice(), t.slots[i].value.as_slice()),
        }
    }

    pub fn get(&self, field: &[u8]) -> Option<&[u8]> {
        match &self.repr {
            Repr::Listpack(v) => v
                .iter()
                .find(|(f, _)| f.as_slice() == field)
                .map(|(_, v)| v.as_slice()),
            Repr::Table(t) => t.find(field).map(|i| t.slots[i].value.as_slice()),
        }
    }

    pub fn contains(&self, field: &[u8]) -> bool {
        self.get(field).is_some()
    }

    /// Converts to `hashtable` (no-op if it already is).
    pub fn convert_to_table(&mut self) {
        if let Repr::Listpack(v) = &mut self.repr {
            let pairs = std::mem::take(v);
            let mut t = Table::with_capacity(pairs.len());
            for (f, v) in pairs {
                t.push(f, v);
            }
            self.repr = Repr::Table(t);
        }
    }

    /// Converts to `hashtable` if any of `items` is too long for a listpack, as Valkey's
    /// `hashTypeTryConversion` does before a write (whether or not the write then happens).
    pub fn convert_for<'a>(
        &mut self,
        items: impl IntoIterator<Item = &'a [u8]>,
        limits: &EncodingLimits,
    ) {
        if matches!(self.repr, Repr::Listpack(_))
            && items
                .into_iter()
                .any(|b| b.len() as u64 > limits.hash_max_listpack_value)
        {
            self.convert_to_table();
        }
    }

    /// Sets `field` to `value`; true if the field is new. Converts to `hashtable` when the
    /// pair is too long or the hash grows past the listpack limits.
    pub fn set(&mut self, field: &[u8], value: &[u8], limits: &EncodingLimits) -> bool {
        self.convert_for([field, value], limits);
        match &mut self.repr {
            Repr::Listpack(v) => {
                if let Some((_, old)) = v.iter_mut().find(|(f, _)| f.as_slice() == field) {
                    *old = Bytes::new(value);
                    return false;
                }
                v.push((Bytes::new(field), Bytes::new(value)));
                if v.len() as u64 > limits.hash_max_listpack_entries {
                    self.convert_to_table();
                }
                true
            }
            Repr::Table(t) => t.set(field, value),
        }
    }

    /// Removes `field`; true if it was there.
    pub fn remove(&mut self, field: &[u8]) -> bool {
        match &mut self.repr {
            Repr::Listpack(v) => match v.iter().position(|(f, _)| f.as_slice() == field) {
                Some(i) => {
                    v.remove(i);
                    true
                }
                None => false,
            },
            Repr::Table(t) => t.remove(field),
        }
    }

    /// One step of HSCAN: calls `emit` for the pairs of this step and returns the next cursor
    /// (0 when the iteration is complete). A listpack is returned whole.
    pub fn scan<'a>(
        &'a self,
        cursor: u64,
        count: usize,
        mut emit: impl FnMut(&'a [u8], &'a [u8]),
    ) -> u64 {
        match &self.repr {
            Repr::Listpack(v) => {
                for (f, val) in v {
                    emit(f.as_slice(), val.as_slice());
                }
                0
            }
            Repr::Table(t) => t.scan(cursor, count, &mut emit),
        }
    }

    /// The type-neutral form, for DUMP and RDB files.
    pub fn to_rdb(&self) -> RdbValue {
        RdbValue::Hash(self.iter().map(|(f, v)| (f.to_vec(), v.to_vec())).collect())
    }

    /// From DUMP or an RDB file, choosing the encoding by `limits` as Valkey does on load.
    /// None if the content is invalid for this type (empty, or a field twice).
    pub fn from_rdb(value: RdbValue, limits: &EncodingLimits) -> Option<HashValue> {
        let RdbValue::Hash(pairs) = value else {
            return None;
        };
        if pairs.is_empty() {
            return None;
        }
        let small = pairs.len() as u64 <= limits.hash_max_listpack_entries
            && pairs.iter().all(|(f, v)| {
                f.len() as u64 <= limits.hash_max_listpack_value
                    && v.len() as u64 <= limits.hash_max_listpack_value
            });
        let mut h = HashValue::new();
        if small {
            let mut v: Vec<(Bytes, Bytes)> = Vec::with_capacity(pairs.len());
            for (f, val) in pairs {
                if v.iter().any(|(g, _)| g.as_slice() == f.as_slice()) {
                    return None;
                }
                v.push((Bytes::new(&f), Bytes::new(&val)));
            }
            h.repr = Repr::Listpack(v);
        } else {
            let mut t = Table::with_capacity(pairs.len());
            for (f, val) in pairs {
                if t.find(&f).is_some() {
                    return None;
                }
                t.push(Bytes::new(&f), Bytes::new(&val));
            }
            h.repr = Repr::Table(t);
        }
        Some(h)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// A limit of 128 entries, so the tests do not depend on the default (512).
    fn limits() -> EncodingLimits {
        EncodingLimits {
            hash_max_listpack_entries: 128,
            ..EncodingLimits::default()
        }
    }

    fn big(n: usize) -> HashValue {
        let mut h = HashValue::new();
        for i in 0..n {
            h.set(
                format!("field:{i}").as_bytes(),
                format!("v{i}").as_bytes(),
                &limits(),
            );
        }
        h
    }

    #[test]
    fn slot_is_compact() {
        assert_eq!(std::mem::size_of::<Slot>(), 40);
    }

    #[test]
    fn listpack_keeps_insertion_order_and_converts_by_count() {
        let l = limits();
        let mut h = HashValue::new();
        assert!(h.set(b"b", b"1", &l));
        assert!(h.set(b"a", b"2", &l));
        assert!(!h.set(b"b", b"3", &l));
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            vec![(&b"b"[..], &b"3"[..]), (&b"a"[..], &b"2"[..])]
        );
        assert_eq!(h.encoding_name(), "listpack");
        let h = big(128);
        assert_eq!(h.encoding_name(), "listpack");
        let h = big(129);
        assert_eq!(h.encoding_name(), "hashtable");
        assert_eq!(h.len(), 129);
    }

    #[test]
    fn long_items_convert_and_conversion_is_one_way() {
        let l = limits();
        let mut h = HashValue::new();
        h.set(b"f", &[b'x'; 64], &l);
        assert_eq!(h.encoding_name(), "listpack");
        h.set(b"g", &[b'x'; 65], &l);
        assert_eq!(h.encoding_name(), "hashtable");
        h.remove(b"g");
        assert_eq!(h.encoding_name(), "hashtable");
        assert_eq!(h.get(b"f"), Some(&[b'x'; 64][..]));
        let mut h = HashValue::new();
        h.set(&[b'k'; 65], b"v", &l);
        assert_eq!(h.encoding_name(), "hashtable");
    }

    #[test]
    fn table_matches_a_model_through_inserts_and_deletes() {
        let l = limits();
        let mut h = HashValue::new();
        let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut x: u64 = 12345;
        for step in 0..50_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = format!("k{}", (x >> 33) % 3000).into_bytes();
            if (x >> 20).is_multiple_of(3) {
                assert_eq!(h.remove(&k), model.remove(&k).is_some());
            } else {
                let v = format!("value-{step}-long-enough-to-spill").into_bytes();
                assert_eq!(h.set(&k, &v, &l), model.insert(k, v).is_none());
            }
            assert_eq!(h.len(), model.len());
        }
        for (k, v) in &model {
            assert_eq!(h.get(k), Some(v.as_slice()));
        }
        assert_eq!(h.iter().count(), model.len());
        // Delete nearly everything: the table shrinks and stays consistent.
        let keys: Vec<_> = model.keys().cloned().collect();
        for k in keys.iter().skip(3) {
            assert!(h.remove(k));
        }
        assert_eq!(h.len(), 3);
        for k in keys.iter().take(3) {
            assert!(h.contains(k));
        }
    }

    fn scan_all(h: &HashValue, count: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut cursor = 0;
        loop {
            cursor = h.scan(cursor, count, |f, _| out.push(f.to_vec()));
            if cursor == 0 {
                return out;
            }
        }
    }

    #[test]
    fn scan_returns_everything_and_is_bounded() {
        let h = big(10_000);
        let seen: HashSet<_> = scan_all(&h, 10).into_iter().collect();
        assert_eq!(seen.len(), 10_000);
        let mut n = 0;
        let next = h.scan(0, 10, |_, _| n += 1);
        assert!(next != 0 && n < 100, "one call gathered {n}");
        // Small hashes come back whole.
        let small = big(5);
        let mut n = 0;
        assert_eq!(small.scan(0, 1, |_, _| n += 1), 0);
        assert_eq!(n, 5);
    }

    #[test]
    fn scan_survives_growth_and_shrinking_between_calls() {
        let l = limits();
        let mut h = big(2000);
        let mut seen = HashSet::new();
        let mut cursor = 0;
        let mut round = 0;
        loop {
            cursor = h.scan(cursor, 20, |f, _| {
                seen.insert(f.to_vec());
            });
            round += 1;
            // Grow a lot, then delete the extras: the original fields must all be seen.
            if round == 5 {
                for i in 0..20_000 {
                    h.set(format!("extra:{i}").as_bytes(), b"x", &l);
                }
            }
            if round == 30 {
                for i in 0..20_000 {
                    h.remove(format!("extra:{i}").as_bytes());
                }
            }
            if cursor == 0 {
                break;
            }
        }
        for i in 0..2000 {
            assert!(seen.contains(format!("field:{i}").as_bytes()), "missed {i}");
        }
    }

    #[test]
    fn rdb_round_trip_picks_the_encoding() {
        let l = limits();
        let h = big(10);
        let back = HashValue::from_rdb(h.to_rdb(), &l).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.encoding_name(), "listpack");
        assert_eq!(back.to_rdb(), h.to_rdb());
        let h = big(500);
        let back = HashValue::from_rdb(h.to_rdb(), &l).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.encoding_name(), "hashtable");
        assert!(HashValue::from_rdb(RdbValue::Hash(Vec::new()), &l).is_none());
        let dup = RdbValue::Hash(vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"a".to_vec(), b"2".to_vec()),
        ]);
        assert!(HashValue::from_rdb(dup, &l).is_none());
        assert!(HashValue::from_rdb(RdbValue::Set(vec![b"a".to_vec()]), &l).is_none());
    }

    #[test]
    fn equality_ignores_order_and_encoding() {
        let l = limits();
        let mut a = HashValue::new();
        a.set(b"x", b"1", &l);
        a.set(b"y", b"2", &l);
        let mut b = HashValue::new();
        b.set(b"y", b"2", &l);
        b.set(b"x", b"1", &l);
        assert_eq!(a, b);
        b.convert_to_table();
        assert_eq!(a, b);
        b.set(b"x", b"3", &l);
        assert_ne!(a, b);
    }
}
