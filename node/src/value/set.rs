//! The set type, in Valkey 8's three encodings.
//!
//! - `intset`: every member is a canonical integer (`string2ll`) and there are at most
//!   `set-max-intset-entries` of them: a sorted `Vec<i64>` (SMEMBERS lists it ascending, as
//!   Valkey's intset does).
//! - `listpack`: at most `set-max-listpack-entries` members of at most `set-max-listpack-value`
//!   bytes: a `Vec<CompactBytes>` in insertion order (members up to 23 bytes cost no allocation
//!   of their own). Membership is a linear scan, as in Valkey.
//! - `hashtable`: everything bigger. An insertion-ordered, densely packed member vector plus a
//!   hashbrown table of `u32` positions into it (the layout of `indexmap`): 24 bytes a member
//!   plus about 5 bytes of index per bucket, no per-member allocation for short members, O(1)
//!   membership, O(1) removal (`swap_remove`) and O(1) uniform random picks (SPOP,
//!   SRANDMEMBER) by position.
//!
//! Conversions follow Valkey's `setTypeAddAux`, `setTypeCreate` and `setTypeMaybeConvert`, and
//! are one-way except where Valkey rebuilds a set (SPOP with a large count,
//! SINTERSTORE's `maybeConvertToIntset`).
//!
//! SSCAN on the hashtable walks positions downwards: the cursor is the number of positions
//! still to visit, `[0, cursor)`. Members are only ever appended at the end, and a removal
//! moves the last member into the freed position, i.e. members only move downwards. So a
//! member present for the whole scan stays below the cursor until it is returned: every such
//! member is returned at least once (a moved member may be returned twice, which SCAN allows),
//! and a call does COUNT positions of work. The compact encodings return everything in one
//! call with cursor 0, as Valkey does.

use compact_bytes::CompactBytes;
use hashbrown::HashTable;
use rand::Rng;
use std::hash::BuildHasher;

use crate::rdb::RdbValue;
use crate::value::{parse_i64_strict, EncodingLimits};

/// One member as stored: an integer (intset) or bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member<'a> {
    Int(i64),
    Bytes(&'a [u8]),
}

impl Member<'_> {
    /// Calls `f` with the member's bytes (integers are formatted on the stack).
    pub fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match *self {
            Member::Int(n) => {
                let mut b = itoa::Buffer::new();
                f(b.format(n).as_bytes())
            }
            Member::Bytes(b) => f(b),
        }
    }

    pub fn to_vec(self) -> Vec<u8> {
        self.with_bytes(|b| b.to_vec())
    }

    /// As an integer, if the member is a canonical one.
    pub fn as_int(self) -> Option<i64> {
        match self {
            Member::Int(n) => Some(n),
            Member::Bytes(b) => parse_i64_strict(b),
        }
    }
}

/// The large encoding (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Table {
    members: Vec<CompactBytes>,
    index: HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl Table {
    fn with_capacity(n: usize) -> Table {
        Table {
            members: Vec::with_capacity(n),
            index: HashTable::with_capacity(n),
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }

    fn len(&self) -> usize {
        self.members.len()
    }

    fn find(&self, m: &[u8]) -> Option<usize> {
        let h = self.hasher.hash_one(m);
        let members = &self.members;
        self.index
            .find(h, |&i| members[i as usize].as_slice() == m)
            .map(|&i| i as usize)
    }

    fn insert(&mut self, m: &[u8]) -> bool {
        let h = self.hasher.hash_one(m);
        let Table {
            members,
            index,
            hasher,
        } = self;
        match index.entry(
            h,
            |&i| members[i as usize].as_slice() == m,
            |&i| hasher.hash_one(members[i as usize].as_slice()),
        ) {
            hashbrown::hash_table::Entry::Occupied(_) => false,
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(members.len() as u32);
                members.push(CompactBytes::new(m));
                true
            }
        }
    }

    /// Removes the member at position `pos`; the last member takes its place.
    fn remove_at(&mut self, pos: usize) -> CompactBytes {
        let h = self.hasher.hash_one(self.members[pos].as_slice());
        if let Ok(e) = self.index.find_entry(h, |&i| i as usize == pos) {
            e.remove();
        }
        let last = self.members.len() - 1;
        if pos != last {
            let hl = self.hasher.hash_one(self.members[last].as_slice());
            if let Some(slot) = self.index.find_mut(hl, |&i| i as usize == last) {
                *slot = pos as u32;
            }
        }
        self.members.swap_remove(pos)
    }

    fn remove(&mut self, m: &[u8]) -> bool {
        match self.find(m) {
            Some(pos) => {
                self.remove_at(pos);
                true
            }
            None => false,
        }
    }
}

#[derive(Debug, Clone)]
pub enum SetValue {
    Intset(Vec<i64>),
    Listpack(Vec<CompactBytes>),
    Hashtable(Box<Table>),
}

impl Default for SetValue {
    fn default() -> Self {
        SetValue::Intset(Vec::new())
    }
}

impl PartialEq for SetValue {
    fn eq(&self, other: &Self) -> bool {
        self.encoding_name() == other.encoding_name()
            && self.len() == other.len()
            && self.iter().all(|m| m.with_bytes(|b| other.contains(b)))
    }
}

/// Digits of `n` as Valkey's `sdigits10` counts them (with the sign).
fn sdigits10(n: i64) -> u64 {
    let mut b = itoa::Buffer::new();
    b.format(n).len() as u64
}

impl SetValue {
    /// An empty intset, the start of SUNIONSTORE/SDIFFSTORE results.
    pub fn new_intset() -> SetValue {
        SetValue::Intset(Vec::new())
    }

    pub fn new_listpack() -> SetValue {
        SetValue::Listpack(Vec::new())
    }

    /// Valkey's `setTypeCreate`: the encoding a new key starts with, by its first member and
    /// how many members are about to be added.
    pub fn create(first: &[u8], size_hint: usize, limits: &EncodingLimits) -> SetValue {
        let hint = size_hint as u64;
        if parse_i64_strict(first).is_some() && hint <= limits.set_max_intset_entries {
            SetValue::Intset(Vec::new())
        } else if hint <= limits.set_max_listpack_entries {
            SetValue::Listpack(Vec::new())
        } else {
            SetValue::Hashtable(Box::new(Table::with_capacity(size_hint)))
        }
    }

    /// Whether `maybe_convert(size_hint)` would change the encoding.
    pub fn would_convert(&self, size_hint: usize, limits: &EncodingLimits) -> bool {
        let hint = size_hint as u64;
        match self {
            SetValue::Listpack(_) => hint > limits.set_max_listpack_entries,
            SetValue::Intset(_) => hint > limits.set_max_intset_entries,
            SetValue::Hashtable(_) => false,
        }
    }

    /// Valkey's `setTypeMaybeConvert`: go to a hashtable at once if `size_hint` members would
    /// not fit the current encoding.
    pub fn maybe_convert(&mut self, size_hint: usize, limits: &EncodingLimits) {
        if self.would_convert(size_hint, limits) {
            self.convert_to_hashtable(size_hint);
        }
    }

    /// The name `OBJECT ENCODING` reports.
    pub fn encoding_name(&self) -> &'static str {
        match self {
            SetValue::Intset(_) => "intset",
            SetValue::Listpack(_) => "listpack",
            SetValue::Hashtable(_) => "hashtable",
        }
    }

    pub fn len(&self) -> usize {
        match self {
            SetValue::Intset(v) => v.len(),
            SetValue::Listpack(v) => v.len(),
            SetValue::Hashtable(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The member at position `i` (`i < len`), in iteration order.
    pub fn get(&self, i: usize) -> Member<'_> {
        match self {
            SetValue::Intset(v) => Member::Int(v[i]),
            SetValue::Listpack(v) => Member::Bytes(v[i].as_slice()),
            SetValue::Hashtable(t) => Member::Bytes(t.members[i].as_slice()),
        }
    }

    /// Every member, in the encoding's order (ascending for an intset, insertion order for a
    /// listpack).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Member<'_>> + '_ {
        (0..self.len()).map(move |i| self.get(i))
    }

    pub fn contains(&self, m: &[u8]) -> bool {
        match self {
            SetValue::Intset(v) => parse_i64_strict(m).is_some_and(|n| v.binary_search(&n).is_ok()),
            SetValue::Listpack(v) => v.iter().any(|e| e.as_slice() == m),
            SetValue::Hashtable(t) => t.find(m).is_some(),
        }
    }

    fn convert_to_hashtable(&mut self, capacity: usize) {
        let mut t = Table::with_capacity(capacity.max(self.len()));
        for m in self.iter() {
            m.with_bytes(|b| t.insert(b));
        }
        *self = SetValue::Hashtable(Box::new(t));
    }

    fn convert_to_listpack(&mut self) {
        let v: Vec<CompactBytes> = self
            .iter()
            .map(|m| m.with_bytes(CompactBytes::new))
            .collect();
        *self = SetValue::Listpack(v);
    }

    /// Adds `m`; false if it was already a member. Converts as Valkey's `setTypeAddAux` does.
    pub fn add(&mut self, m: &[u8], limits: &EncodingLimits) -> bool {
        match self {
            SetValue::Hashtable(t) => t.insert(m),
            SetValue::Listpack(v) => {
                if v.iter().any(|e| e.as_slice() == m) {
                    return false;
                }
                if (v.len() as u64) < limits.set_max_listpack_entries
                    && m.len() as u64 <= limits.set_max_listpack_value
                {
                    v.push(CompactBytes::new(m));
                } else {
                    self.convert_to_hashtable(self.len() + 1);
                    if let SetValue::Hashtable(t) = self {
                        t.insert(m);
                    }
                }
                true
            }
            SetValue::Intset(v) => {
                if let Some(n) = parse_i64_strict(m) {
                    let Err(pos) = v.binary_search(&n) else {
                        return false;
                    };
                    v.insert(pos, n);
                    if v.len() as u64 > limits.set_max_intset_entries.min(1 << 30) {
                        self.convert_to_hashtable(self.len());
                    }
                    return true;
                }
                let maxelelen = match (v.first(), v.last()) {
                    (Some(&lo), Some(&hi)) => sdigits10(lo).max(sdigits10(hi)),
                    _ => 0,
                };
                if (v.len() as u64) < limits.set_max_listpack_entries
                    && m.len() as u64 <= limits.set_max_listpack_value
                    && maxelelen <= limits.set_max_listpack_value
                {
                    self.convert_to_listpack();
                    if let SetValue::Listpack(v) = self {
                        v.push(CompactBytes::new(m));
                    }
                } else {
                    self.convert_to_hashtable(self.len() + 1);
                    if let SetValue::Hashtable(t) = self {
                        t.insert(m);
                    }
                }
                true
            }
        }
    }

    /// Removes `m`; false if it was not a member. Never changes the encoding.
    pub fn remove(&mut self, m: &[u8]) -> bool {
        match self {
            SetValue::Intset(v) => match parse_i64_strict(m).map(|n| v.binary_search(&n)) {
                Some(Ok(pos)) => {
                    v.remove(pos);
                    true
                }
                _ => false,
            },
            SetValue::Listpack(v) => match v.iter().position(|e| e.as_slice() == m) {
                Some(pos) => {
                    v.remove(pos);
                    true
                }
                None => false,
            },
            SetValue::Hashtable(t) => t.remove(m),
        }
    }

    /// Removes and returns the member at position `i`.
    pub fn remove_at(&mut self, i: usize) -> Vec<u8> {
        match self {
            SetValue::Intset(v) => {
                let mut b = itoa::Buffer::new();
                b.format(v.remove(i)).as_bytes().to_vec()
            }
            SetValue::Listpack(v) => v.remove(i).as_slice().to_vec(),
            SetValue::Hashtable(t) => t.remove_at(i).as_slice().to_vec(),
        }
    }

    /// A uniformly random member of a non-empty set.
    pub fn random(&self, rng: &mut impl Rng) -> Member<'_> {
        self.get(rng.random_range(0..self.len()))
    }

    /// `count` distinct members chosen uniformly (`count <= len`), in random order.
    pub fn random_distinct(&self, count: usize, rng: &mut impl Rng) -> Vec<Member<'_>> {
        rand::seq::index::sample(rng, self.len(), count)
            .into_iter()
            .map(|i| self.get(i))
            .collect()
    }

    /// Removes and returns one random member of a non-empty set.
    pub fn pop_random(&mut self, rng: &mut impl Rng) -> Vec<u8> {
        let i = rng.random_range(0..self.len());
        self.remove_at(i)
    }

    /// SPOP with a count below the size: removes and returns `count` random members. When
    /// few members remain, Valkey rebuilds the set from them (`SPOP_MOVE_STRATEGY_MUL`), which
    /// turns a small enough hashtable back into a listpack; the same happens here.
    pub fn pop_many(
        &mut self,
        count: usize,
        limits: &EncodingLimits,
        rng: &mut impl Rng,
    ) -> Vec<Vec<u8>> {
        let remaining = self.len() - count;
        let out = (0..count).map(|_| self.pop_random(rng)).collect();
        if remaining * 5 <= count {
            if let SetValue::Hashtable(t) = self {
                let fits = remaining as u64 <= limits.set_max_listpack_entries
                    && t.members
                        .iter()
                        .all(|m| m.len() as u64 <= limits.set_max_listpack_value);
                if fits {
                    self.convert_to_listpack();
                }
            }
        }
        out
    }

    /// Valkey's `maybeConvertToIntset`, for a set whose members are all integers.
    pub fn maybe_convert_to_intset(&mut self, limits: &EncodingLimits) {
        if matches!(self, SetValue::Intset(_))
            || self.len() as u64 > limits.set_max_intset_entries.min(1 << 30)
        {
            return;
        }
        let mut v: Vec<i64> = self.iter().filter_map(|m| m.as_int()).collect();
        if v.len() != self.len() {
            return;
        }
        v.sort_unstable();
        *self = SetValue::Intset(v);
    }

    /// One SSCAN step: calls `f` for the members visited and returns the next cursor (see the
    /// module docs). Compact encodings are returned whole.
    pub fn scan(&self, cursor: u64, count: usize, mut f: impl FnMut(Member<'_>)) -> u64 {
        match self {
            SetValue::Hashtable(t) => {
                let len = t.len() as u64;
                let start = if cursor == 0 { len } else { cursor.min(len) };
                let end = start.saturating_sub(count.max(1) as u64);
                for i in (end..start).rev() {
                    f(Member::Bytes(t.members[i as usize].as_slice()));
                }
                end
            }
            _ => {
                self.iter().for_each(f);
                0
            }
        }
    }

    /// Heap bytes held by the set's own structures (for memory estimates in tests).
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        match self {
            SetValue::Intset(v) => v.capacity() * 8,
            SetValue::Listpack(v) => v.capacity() * 24,
            SetValue::Hashtable(t) => t.members.capacity() * 24 + t.index.allocation_size(),
        }
    }

    /// The type-neutral form, for DUMP and RDB files.
    pub fn to_rdb(&self) -> RdbValue {
        RdbValue::Set(self.iter().map(|m| m.to_vec()).collect())
    }

    /// A set built from `members` as Valkey builds one on load: intset if all are integers and
    /// few enough, listpack if small, else hashtable. None for duplicates or no members.
    pub fn from_members(members: &[Vec<u8>], limits: &EncodingLimits) -> Option<SetValue> {
        if members.is_empty() {
            return None;
        }
        let n = members.len() as u64;
        let ints: Option<Vec<i64>> = members.iter().map(|m| parse_i64_strict(m)).collect();
        let mut set = match ints {
            Some(mut v) if n <= limits.set_max_intset_entries.min(1 << 30) => {
                v.sort_unstable();
                if v.windows(2).any(|w| w[0] == w[1]) {
                    return None;
                }
                return Some(SetValue::Intset(v));
            }
            _ if n <= limits.set_max_listpack_entries
                && members
                    .iter()
                    .all(|m| m.len() as u64 <= limits.set_max_listpack_value) =>
            {
                SetValue::Listpack(Vec::with_capacity(members.len()))
            }
            _ => SetValue::Hashtable(Box::new(Table::with_capacity(members.len()))),
        };
        if let SetValue::Listpack(v) = &mut set {
            // Duplicates are found through a temporary table for big inputs.
            let mut seen = Table::with_capacity(members.len());
            for m in members {
                if !seen.insert(m) {
                    return None;
                }
                v.push(CompactBytes::new(m));
            }
            return Some(set);
        }
        if let SetValue::Hashtable(t) = &mut set {
            for m in members {
                if !t.insert(m) {
                    return None;
                }
            }
        }
        Some(set)
    }

    /// From DUMP or an RDB file, choosing the encoding by `limits` as Valkey does on load.
    /// None if the content is invalid for this type.
    pub fn from_rdb(value: RdbValue, limits: &EncodingLimits) -> Option<SetValue> {
        match value {
            RdbValue::Set(members) => SetValue::from_members(&members, limits),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashSet;

    fn limits() -> EncodingLimits {
        EncodingLimits::default()
    }

    fn members(s: &SetValue) -> HashSet<Vec<u8>> {
        s.iter().map(|m| m.to_vec()).collect()
    }

    #[test]
    fn intset_stays_sorted_and_converts() {
        let l = limits();
        let mut s = SetValue::create(b"5", 3, &l);
        assert_eq!(s.encoding_name(), "intset");
        for m in ["5", "-3", "10", "5"] {
            s.add(m.as_bytes(), &l);
        }
        assert_eq!(s.len(), 3);
        let got: Vec<Vec<u8>> = s.iter().map(|m| m.to_vec()).collect();
        assert_eq!(got, vec![b"-3".to_vec(), b"5".to_vec(), b"10".to_vec()]);
        // Non-canonical integers are strings.
        assert!(!s.contains(b"05"));
        assert!(s.add(b"05", &l));
        assert_eq!(s.encoding_name(), "listpack");
        assert!(s.contains(b"05") && s.contains(b"-3"));
        assert!(s.add(&[b'x'; 65], &l));
        assert_eq!(s.encoding_name(), "hashtable");
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn intset_over_its_limit_becomes_a_hashtable() {
        let l = limits();
        let mut s = SetValue::new_intset();
        for i in 0..512 {
            s.add(i.to_string().as_bytes(), &l);
        }
        assert_eq!(s.encoding_name(), "intset");
        s.add(b"512", &l);
        assert_eq!(s.encoding_name(), "hashtable");
        assert_eq!(s.len(), 513);
        // A string added to a big intset skips the listpack.
        let mut s = SetValue::new_intset();
        for i in 0..128 {
            s.add(i.to_string().as_bytes(), &l);
        }
        s.add(b"a", &l);
        assert_eq!(s.encoding_name(), "hashtable");
    }

    #[test]
    fn listpack_limits() {
        let l = limits();
        let mut s = SetValue::new_listpack();
        for i in 0..128 {
            s.add(format!("m{i}").as_bytes(), &l);
        }
        assert_eq!(s.encoding_name(), "listpack");
        s.add(b"m0", &l);
        assert_eq!(s.encoding_name(), "listpack");
        s.add(b"one more", &l);
        assert_eq!(s.encoding_name(), "hashtable");
        // Shrinking does not convert back.
        for i in 0..128 {
            assert!(s.remove(format!("m{i}").as_bytes()));
        }
        assert_eq!(s.encoding_name(), "hashtable");
        assert_eq!(members(&s), HashSet::from([b"one more".to_vec()]));
        let mut s = SetValue::create(b"a", 1, &l);
        s.add(&[b'y'; 64], &l);
        assert_eq!(s.encoding_name(), "listpack");
        s.add(&[b'y'; 65], &l);
        assert_eq!(s.encoding_name(), "hashtable");
    }

    #[test]
    fn create_and_maybe_convert_use_the_size_hint() {
        let l = limits();
        assert_eq!(SetValue::create(b"1", 512, &l).encoding_name(), "intset");
        assert_eq!(SetValue::create(b"1", 513, &l).encoding_name(), "hashtable");
        assert_eq!(SetValue::create(b"a", 128, &l).encoding_name(), "listpack");
        assert_eq!(SetValue::create(b"a", 129, &l).encoding_name(), "hashtable");
        let mut s = SetValue::new_listpack();
        s.add(b"a", &l);
        s.maybe_convert(129, &l);
        assert_eq!(s.encoding_name(), "hashtable");
        assert!(s.contains(b"a"));
    }

    #[test]
    fn hashtable_add_remove_and_positions() {
        let l = limits();
        let mut s = SetValue::create(b"x", 1000, &l);
        for i in 0..1000 {
            assert!(s.add(format!("e{i}").as_bytes(), &l));
        }
        assert!(!s.add(b"e5", &l));
        for i in (0..1000).step_by(3) {
            assert!(s.remove(format!("e{i}").as_bytes()));
        }
        assert!(!s.remove(b"e0"));
        for i in 0..1000 {
            assert_eq!(s.contains(format!("e{i}").as_bytes()), i % 3 != 0, "e{i}");
        }
        assert_eq!(s.len(), 666);
        let mut rng = rand::rng();
        while !s.is_empty() {
            let m = s.pop_random(&mut rng);
            assert!(!s.contains(&m));
        }
    }

    #[test]
    fn scan_returns_survivors_despite_changes() {
        let l = limits();
        let mut s = SetValue::create(b"x", 2000, &l);
        for i in 0..2000 {
            s.add(format!("e{i}").as_bytes(), &l);
        }
        let mut seen = HashSet::new();
        let mut cursor = 0;
        let mut round = 0;
        loop {
            let mut got = 0;
            cursor = s.scan(cursor, 10, |m| {
                got += 1;
                seen.insert(m.to_vec());
            });
            assert!(got <= 10);
            // Churn: remove odd members from the front, add new ones.
            round += 1;
            s.remove(format!("e{}", round * 2 + 1).as_bytes());
            s.add(format!("new{round}").as_bytes(), &l);
            if cursor == 0 {
                break;
            }
        }
        for i in 0..2000 {
            let survived = i % 2 == 0 || i > round * 2 + 1;
            if survived {
                assert!(seen.contains(format!("e{i}").as_bytes()), "e{i} missed");
            }
        }
    }

    #[test]
    fn pop_many_rebuilds_small_remainders() {
        let l = limits();
        let mut rng = rand::rng();
        let mut s = SetValue::create(b"x", 200, &l);
        for i in 0..200 {
            s.add(format!("e{i}").as_bytes(), &l);
        }
        let popped = s.pop_many(190, &l, &mut rng);
        assert_eq!(popped.len(), 190);
        assert_eq!(s.len(), 10);
        assert_eq!(s.encoding_name(), "listpack");
        let all: HashSet<Vec<u8>> = popped.into_iter().chain(members(&s)).collect();
        assert_eq!(all.len(), 200);
    }

    #[test]
    fn random_distinct_is_distinct_and_covers() {
        let l = limits();
        let mut rng = rand::rng();
        let s = SetValue::from_members(
            &(0..50)
                .map(|i| format!("m{i}").into_bytes())
                .collect::<Vec<_>>(),
            &l,
        )
        .unwrap();
        let mut hits = HashSet::new();
        for _ in 0..200 {
            let pick = s.random_distinct(5, &mut rng);
            let uniq: HashSet<Vec<u8>> = pick.iter().map(|m| m.to_vec()).collect();
            assert_eq!(uniq.len(), 5);
            hits.extend(uniq);
        }
        assert_eq!(hits.len(), 50);
    }

    #[test]
    fn rdb_round_trip_and_encodings() {
        let l = limits();
        let ints: Vec<Vec<u8>> = (0..10).map(|i| i.to_string().into_bytes()).collect();
        let s = SetValue::from_members(&ints, &l).unwrap();
        assert_eq!(s.encoding_name(), "intset");
        assert_eq!(SetValue::from_rdb(s.to_rdb(), &l).unwrap(), s);
        let strs: Vec<Vec<u8>> = (0..10).map(|i| format!("s{i}").into_bytes()).collect();
        assert_eq!(
            SetValue::from_members(&strs, &l).unwrap().encoding_name(),
            "listpack"
        );
        let big: Vec<Vec<u8>> = (0..600).map(|i| format!("s{i}").into_bytes()).collect();
        let s = SetValue::from_members(&big, &l).unwrap();
        assert_eq!(s.encoding_name(), "hashtable");
        assert_eq!(SetValue::from_rdb(s.to_rdb(), &l).unwrap(), s);
        assert!(SetValue::from_members(&[b"a".to_vec(), b"a".to_vec()], &l).is_none());
        assert!(SetValue::from_members(&[b"1".to_vec(), b"1".to_vec()], &l).is_none());
        assert!(SetValue::from_members(&[], &l).is_none());
    }

    #[test]
    fn maybe_convert_to_intset() {
        let l = limits();
        let mut s = SetValue::new_listpack();
        s.add(b"3", &l);
        s.add(b"1", &l);
        s.maybe_convert_to_intset(&l);
        assert_eq!(s.encoding_name(), "intset");
        assert_eq!(s.get(0), Member::Int(1));
    }

    #[test]
    fn hashtable_memory_is_compact() {
        let l = limits();
        let mut s = SetValue::create(b"x", 0, &l);
        s.maybe_convert(1000, &l);
        for i in 0..100_000 {
            s.add(format!("element:{i}").as_bytes(), &l);
        }
        let per = s.heap_bytes() / 100_000;
        assert!(per <= 48, "{per} bytes per member");
    }
}
