//! The sorted set type.
//!
//! Two encodings, as in Valkey, with its names and thresholds:
//! - `listpack`: while the set has at most `zset-max-listpack-entries` members and every
//!   member is at most `zset-max-listpack-value` bytes: one `Vec` of (member, score) kept
//!   sorted by (score, member). Lookups by member are linear, as in Valkey's listpack.
//! - `skiplist`: everything bigger (the conversion is one-way, as in Valkey). Not a skiplist,
//!   but the name is what `OBJECT ENCODING` reports. Three parts:
//!   - an arena `Vec<Slot>` holding each element once (member inline up to 15 bytes, score);
//!     an element keeps its arena index for as long as it exists; freed slots are chained in
//!     a free list (a vacant slot's score is a NaN whose payload is the next free index);
//!   - a hash index (`hashbrown::HashTable<u32>` of arena indices) for member → score;
//!   - an order-statistic B+tree of arena indices ([`tree`]) for the (score, member) order:
//!     rank, select and range bounds in O(log n).
//!
//!   About 24 (arena) + ~10 (hash index) + ~6 (tree) bytes per element, against about 110
//!   for Valkey's dict + skiplist.
//!
//! ZSCAN on the big encoding walks the arena by index: the cursor is the next arena index to
//! visit. An element keeps its index for its whole life (ZINCRBY and re-adds update it in
//! place; only a deleted element's slot is reused), so an element present for the whole
//! iteration is returned exactly once, and each call visits a bounded number of slots.

mod tree;

use compact_bytes::CompactBytesSlice;
use hashbrown::HashTable;
use std::cmp::Ordering;
use std::hash::BuildHasher;

use crate::rdb::RdbValue;
use crate::value::EncodingLimits;

use tree::Tree;

/// A member and its score.
#[derive(Clone)]
struct Slot {
    member: CompactBytesSlice,
    score: f64,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "({:?}, {})",
            String::from_utf8_lossy(self.member.as_slice()),
            self.score
        )
    }
}

const NO_FREE: u32 = u32::MAX;
const VACANT_BITS: u64 = 0x7ff8_0000_0000_0000;

fn vacant_score(next: u32) -> f64 {
    f64::from_bits(VACANT_BITS | (1u64 << 40) | next as u64)
}

fn vacant_next(score: f64) -> Option<u32> {
    score
        .is_nan()
        .then_some((score.to_bits() & 0xffff_ffff) as u32)
}

/// The (score, member) order of sorted sets. Scores are never NaN; -0 equals 0.
pub fn cmp_entry(s1: f64, m1: &[u8], s2: f64, m2: &[u8]) -> Ordering {
    match s1.partial_cmp(&s2) {
        Some(Ordering::Equal) | None => m1.cmp(m2),
        Some(o) => o,
    }
}

fn less(slots: &[Slot], a: u32, b: u32) -> bool {
    let (x, y) = (&slots[a as usize], &slots[b as usize]);
    cmp_entry(x.score, x.member.as_slice(), y.score, y.member.as_slice()) == Ordering::Less
}

#[derive(Debug, Clone)]
struct Big {
    slots: Vec<Slot>,
    free: u32,
    index: HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    tree: Tree,
}

impl Big {
    fn new() -> Big {
        Big {
            slots: Vec::new(),
            free: NO_FREE,
            index: HashTable::new(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            tree: Tree::new(),
        }
    }

    fn len(&self) -> usize {
        self.tree.len()
    }

    fn find(&self, member: &[u8]) -> Option<u32> {
        let h = self.hasher.hash_one(member);
        let slots = &self.slots;
        self.index
            .find(h, |&i| slots[i as usize].member.as_slice() == member)
            .copied()
    }

    fn slot(&self, i: u32) -> (&[u8], f64) {
        let s = &self.slots[i as usize];
        (s.member.as_slice(), s.score)
    }

    /// Inserts a member that is not present.
    fn insert_new(&mut self, member: &[u8], score: f64) {
        let slot = Slot {
            member: CompactBytesSlice::new(member),
            score,
        };
        let i = if self.free != NO_FREE {
            let i = self.free;
            self.free = vacant_next(self.slots[i as usize].score).unwrap_or(NO_FREE);
            self.slots[i as usize] = slot;
            i
        } else {
            self.slots.push(slot);
            (self.slots.len() - 1) as u32
        };
        let h = self.hasher.hash_one(member);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(h, i, |&j| {
            hasher.hash_one(slots[j as usize].member.as_slice())
        });
        let slots = &self.slots;
        self.tree.insert(i, &|a, b| less(slots, a, b));
    }

    fn set_score(&mut self, i: u32, score: f64) {
        let slots = &self.slots;
        self.tree.remove(i, &|a, b| less(slots, a, b));
        self.slots[i as usize].score = score;
        let slots = &self.slots;
        self.tree.insert(i, &|a, b| less(slots, a, b));
    }

    fn remove_id(&mut self, i: u32) -> f64 {
        let slots = &self.slots;
        self.tree.remove(i, &|a, b| less(slots, a, b));
        let member = self.slots[i as usize].member.as_slice();
        let h = self.hasher.hash_one(member);
        if let Ok(e) = self.index.find_entry(h, |&j| j == i) {
            e.remove();
        }
        let old = std::mem::replace(
            &mut self.slots[i as usize],
            Slot {
                member: CompactBytesSlice::new(b""),
                score: vacant_score(self.free),
            },
        );
        self.free = i;
        old.score
    }
}

/// Valkey's listpack stores an integral score as an integer entry, which turns -0 into 0;
/// the skiplist keeps the sign.
fn listpack_score(s: f64) -> f64 {
    if s == 0.0 {
        0.0
    } else {
        s
    }
}

#[derive(Debug, Clone)]
enum Repr {
    /// Sorted by (score, member). Scores are never -0 (see [`listpack_score`]).
    Listpack(Vec<(CompactBytesSlice, f64)>),
    Skiplist(Box<Big>),
}

#[derive(Debug, Clone)]
pub struct ZSetValue {
    repr: Repr,
}

impl Default for ZSetValue {
    fn default() -> Self {
        ZSetValue {
            repr: Repr::Listpack(Vec::new()),
        }
    }
}

impl PartialEq for ZSetValue {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .range(0, self.len())
                .into_iter()
                .zip(other.range(0, other.len()))
                .all(|((m1, s1), (m2, s2))| m1 == m2 && (s1 == s2 || (s1.is_nan() && s2.is_nan())))
    }
}

impl ZSetValue {
    /// An empty sorted set in the encoding Valkey creates for `size_hint` elements the longest
    /// of which is `len_hint` bytes.
    pub fn with_hint(size_hint: usize, len_hint: usize, limits: &EncodingLimits) -> ZSetValue {
        if (size_hint as u64) <= limits.zset_max_listpack_entries
            && (len_hint as u64) <= limits.zset_max_listpack_value
        {
            ZSetValue::default()
        } else {
            ZSetValue {
                repr: Repr::Skiplist(Box::new(Big::new())),
            }
        }
    }

    /// A sorted set of `items` (distinct members, in any order), in the encoding its size
    /// calls for (as Valkey picks for the results of ZUNIONSTORE and friends).
    pub fn from_items(items: Vec<(Vec<u8>, f64)>, limits: &EncodingLimits) -> ZSetValue {
        let maxlen = items.iter().map(|(m, _)| m.len()).max().unwrap_or(0);
        let mut z = ZSetValue::with_hint(items.len(), maxlen, limits);
        match &mut z.repr {
            Repr::Listpack(v) => {
                let mut seen = std::collections::HashSet::with_capacity(items.len());
                let mut items: Vec<(Vec<u8>, f64)> = items
                    .into_iter()
                    .filter(|(m, _)| seen.insert(m.clone()))
                    .collect();
                items.sort_by(|a, b| cmp_entry(a.1, &a.0, b.1, &b.0));
                v.extend(
                    items
                        .into_iter()
                        .map(|(m, s)| (CompactBytesSlice::new(&m), listpack_score(s))),
                );
            }
            Repr::Skiplist(b) => {
                b.slots.reserve_exact(items.len());
                for (m, s) in items {
                    if b.find(&m).is_none() {
                        b.insert_new(&m, s);
                    }
                }
            }
        }
        z
    }

    /// The name `OBJECT ENCODING` reports.
    pub fn encoding_name(&self) -> &'static str {
        match self.repr {
            Repr::Listpack(_) => "listpack",
            Repr::Skiplist(_) => "skiplist",
        }
    }

    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Listpack(v) => v.len(),
            Repr::Skiplist(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn score(&self, member: &[u8]) -> Option<f64> {
        match &self.repr {
            Repr::Listpack(v) => v.iter().find(|(m, _)| m.as_slice() == member).map(|e| e.1),
            Repr::Skiplist(b) => b.find(member).map(|i| b.slots[i as usize].score),
        }
    }

    /// Converts to the big encoding ahead of a write of `size_hint` elements the longest of
    /// which is `len_hint` bytes, when those exceed the listpack limits (Valkey's
    /// `zsetTypeMaybeConvert`).
    pub fn maybe_convert(&mut self, size_hint: usize, len_hint: usize, limits: &EncodingLimits) {
        if matches!(self.repr, Repr::Listpack(_))
            && ((size_hint as u64) > limits.zset_max_listpack_entries
                || (len_hint as u64) > limits.zset_max_listpack_value)
        {
            self.convert();
        }
    }

    fn convert(&mut self) {
        if let Repr::Listpack(v) = &mut self.repr {
            let mut big = Big::new();
            big.slots.reserve(v.len() * 2);
            for (m, s) in v.drain(..) {
                big.insert_new(m.as_slice(), s);
            }
            self.repr = Repr::Skiplist(Box::new(big));
        }
    }

    /// Sets `member`'s score, adding it if absent (converting the encoding when `limits`
    /// say so). Returns the previous score.
    pub fn insert(&mut self, member: &[u8], score: f64, limits: &EncodingLimits) -> Option<f64> {
        if let Repr::Listpack(v) = &mut self.repr {
            let score = listpack_score(score);
            if let Some(pos) = v.iter().position(|(m, _)| m.as_slice() == member) {
                let old = v[pos].1;
                if old != score || old.to_bits() != score.to_bits() {
                    let entry = v.remove(pos);
                    let at = v.partition_point(|(m, s)| {
                        cmp_entry(*s, m.as_slice(), score, member) == Ordering::Less
                    });
                    v.insert(at, (entry.0, score));
                }
                return Some(old);
            }
            if (v.len() as u64) < limits.zset_max_listpack_entries
                && (member.len() as u64) <= limits.zset_max_listpack_value
            {
                let at = v.partition_point(|(m, s)| {
                    cmp_entry(*s, m.as_slice(), score, member) == Ordering::Less
                });
                v.insert(at, (CompactBytesSlice::new(member), score));
                return None;
            }
            self.convert();
        }
        let Repr::Skiplist(b) = &mut self.repr else {
            return None;
        };
        match b.find(member) {
            Some(i) => {
                let old = b.slots[i as usize].score;
                if old.to_bits() != score.to_bits() {
                    b.set_score(i, score);
                }
                Some(old)
            }
            None => {
                b.insert_new(member, score);
                None
            }
        }
    }

    /// Removes `member`; returns its score.
    pub fn remove(&mut self, member: &[u8]) -> Option<f64> {
        match &mut self.repr {
            Repr::Listpack(v) => {
                let pos = v.iter().position(|(m, _)| m.as_slice() == member)?;
                Some(v.remove(pos).1)
            }
            Repr::Skiplist(b) => {
                let i = b.find(member)?;
                Some(b.remove_id(i))
            }
        }
    }

    /// The 0-based rank of `member` in ascending order, with its score.
    pub fn rank(&self, member: &[u8]) -> Option<(usize, f64)> {
        match &self.repr {
            Repr::Listpack(v) => v
                .iter()
                .position(|(m, _)| m.as_slice() == member)
                .map(|p| (p, v[p].1)),
            Repr::Skiplist(b) => {
                let i = b.find(member)?;
                let slots = &b.slots;
                Some((
                    b.tree.rank(i, &|x, y| less(slots, x, y)),
                    slots[i as usize].score,
                ))
            }
        }
    }

    /// The element at ascending rank `r`.
    pub fn get(&self, r: usize) -> Option<(&[u8], f64)> {
        match &self.repr {
            Repr::Listpack(v) => v.get(r).map(|(m, s)| (m.as_slice(), *s)),
            Repr::Skiplist(b) => b.tree.select(r).map(|i| b.slot(i)),
        }
    }

    /// The elements with ascending ranks in `start..end`, in ascending order.
    pub fn range(&self, start: usize, end: usize) -> Vec<(&[u8], f64)> {
        let end = end.min(self.len());
        if start >= end {
            return Vec::new();
        }
        match &self.repr {
            Repr::Listpack(v) => v[start..end]
                .iter()
                .map(|(m, s)| (m.as_slice(), *s))
                .collect(),
            Repr::Skiplist(b) => b
                .tree
                .range(start, end)
                .into_iter()
                .map(|i| b.slot(i))
                .collect(),
        }
    }

    /// How many elements satisfy `pred(score, member)`, for a predicate that holds on a
    /// prefix of the order: the rank where it starts failing.
    pub fn partition_point(&self, pred: impl Fn(f64, &[u8]) -> bool) -> usize {
        match &self.repr {
            Repr::Listpack(v) => v.partition_point(|(m, s)| pred(*s, m.as_slice())),
            Repr::Skiplist(b) => b.tree.partition_point(|i| {
                let (m, s) = b.slot(i);
                pred(s, m)
            }),
        }
    }

    /// Removes the elements with ranks in `start..end`; returns how many.
    pub fn remove_range(&mut self, start: usize, end: usize) -> usize {
        let end = end.min(self.len());
        if start >= end {
            return 0;
        }
        match &mut self.repr {
            Repr::Listpack(v) => {
                v.drain(start..end);
            }
            Repr::Skiplist(b) => {
                for i in b.tree.range(start, end) {
                    b.remove_id(i);
                }
            }
        }
        end - start
    }

    /// Removes and returns up to `count` elements from the low (`max` false) or high end,
    /// in the order popped.
    pub fn pop(&mut self, count: usize, max: bool) -> Vec<(Vec<u8>, f64)> {
        let n = count.min(self.len());
        let (start, end) = if max {
            (self.len() - n, self.len())
        } else {
            (0, n)
        };
        let mut out: Vec<(Vec<u8>, f64)> = self
            .range(start, end)
            .into_iter()
            .map(|(m, s)| (m.to_vec(), s))
            .collect();
        if max {
            out.reverse();
        }
        self.remove_range(start, end);
        out
    }

    /// One ZSCAN step: the elements from `cursor` on, about `count` of them, and the next
    /// cursor (0 when done). The listpack encoding returns everything at once.
    pub fn scan(&self, cursor: u64, count: usize) -> (u64, Vec<(&[u8], f64)>) {
        match &self.repr {
            Repr::Listpack(v) => (0, v.iter().map(|(m, s)| (m.as_slice(), *s)).collect()),
            Repr::Skiplist(b) => {
                let mut out = Vec::new();
                let mut i = usize::try_from(cursor).unwrap_or(usize::MAX);
                // Visit at most 10 slots per requested element, so a sparse arena costs
                // bounded work per call too.
                let budget = count.saturating_mul(10);
                let mut visited = 0;
                while i < b.slots.len() && out.len() < count && visited < budget {
                    let s = &b.slots[i];
                    if !s.score.is_nan() {
                        out.push((s.member.as_slice(), s.score));
                    }
                    i += 1;
                    visited += 1;
                }
                let next = if i >= b.slots.len() { 0 } else { i as u64 };
                (next, out)
            }
        }
    }

    /// The type-neutral form, for DUMP and RDB files.
    pub fn to_rdb(&self) -> RdbValue {
        RdbValue::ZSet(
            self.range(0, self.len())
                .into_iter()
                .map(|(m, s)| (m.to_vec(), s))
                .collect(),
        )
    }

    /// From DUMP or an RDB file, choosing the encoding by `limits` as Valkey does on load.
    /// None if the content is invalid for this type.
    pub fn from_rdb(value: RdbValue, limits: &EncodingLimits) -> Option<ZSetValue> {
        let RdbValue::ZSet(items) = value else {
            return None;
        };
        if items.is_empty() || items.iter().any(|(_, s)| s.is_nan()) {
            return None;
        }
        let n = items.len();
        let z = ZSetValue::from_items(items, limits);
        (z.len() == n).then_some(z)
    }
}

/// Formats a score as Valkey replies it: the shortest text that reads back as the same
/// double, `inf`/`-inf`, and `%.17g`'s choice between plain and exponent notation.
pub fn format_score(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if v.is_nan() {
        return "nan".into();
    }
    if v == 0.0 {
        return if v.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    // Shortest digits and decimal exponent from ryu's exponent form.
    let s = format!("{v:e}");
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let neg = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if !(-4..17).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", exp.abs()));
    } else if exp < 0 {
        out.push_str("0.");
        for _ in 0..(-exp - 1) {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        let point = exp as usize + 1;
        if digits.len() <= point {
            out.push_str(&digits);
            for _ in digits.len()..point {
                out.push('0');
            }
        } else {
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        }
    }
    out
}

/// Formats a score as Valkey's `d2string` does (ZSCAN, and scores stored as text): integral
/// values within ±2^62 as integers, everything else as [`format_score`].
pub fn format_score_text(v: f64) -> String {
    const LIMIT: f64 = (i64::MAX / 2) as f64;
    if v != 0.0 && (-LIMIT..=LIMIT).contains(&v) && v == (v as i64) as f64 {
        return (v as i64).to_string();
    }
    format_score(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    fn limits(entries: u64, value: u64) -> EncodingLimits {
        EncodingLimits {
            zset_max_listpack_entries: entries,
            zset_max_listpack_value: value,
            ..EncodingLimits::default()
        }
    }

    #[test]
    fn scores_print_like_valkey() {
        assert_eq!(format_score(1.1), "1.1");
        assert_eq!(format_score(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(format_score(1.0), "1");
        assert_eq!(format_score(-2.5), "-2.5");
        assert_eq!(format_score(1e16), "10000000000000000");
        assert_eq!(format_score(1e17), "1e+17");
        assert_eq!(format_score(1e20), "1e+20");
        assert_eq!(format_score(0.0001), "0.0001");
        assert_eq!(format_score(0.00001), "1e-05");
        assert_eq!(format_score(1.5e-300), "1.5e-300");
        assert_eq!(format_score(f64::INFINITY), "inf");
        assert_eq!(format_score(f64::NEG_INFINITY), "-inf");
        assert_eq!(format_score(-0.0), "-0");
        assert_eq!(format_score(123456.75), "123456.75");
        assert_eq!(format_score_text(1e17), "100000000000000000");
        assert_eq!(format_score_text(-0.0), "-0");
        assert_eq!(format_score_text(2.5), "2.5");
        assert_eq!(format_score_text(1e19), "1e+19");
    }

    #[test]
    fn vacant_marker_is_nan_and_keeps_the_link() {
        for n in [0u32, 1, 12345, u32::MAX] {
            assert!(vacant_score(n).is_nan());
            assert_eq!(vacant_next(vacant_score(n)), Some(n));
        }
    }

    #[test]
    fn slot_is_compact() {
        assert_eq!(std::mem::size_of::<Slot>(), 24);
    }

    #[test]
    fn encodings_convert_one_way() {
        let l = limits(4, 8);
        let mut z = ZSetValue::default();
        for i in 0..4 {
            z.insert(format!("m{i}").as_bytes(), i as f64, &l);
        }
        assert_eq!(z.encoding_name(), "listpack");
        z.insert(b"m4", 4.0, &l);
        assert_eq!(z.encoding_name(), "skiplist");
        for i in 0..5 {
            z.remove(format!("m{i}").as_bytes());
        }
        assert!(z.is_empty());
        assert_eq!(z.encoding_name(), "skiplist");
        let mut z = ZSetValue::default();
        z.insert(b"123456789", 1.0, &l);
        assert_eq!(z.encoding_name(), "skiplist");
    }

    #[test]
    fn rdb_round_trip_picks_encoding() {
        let l = limits(3, 64);
        let items: Vec<(Vec<u8>, f64)> = (0..5)
            .map(|i| (format!("m{i}").into_bytes(), (5 - i) as f64))
            .collect();
        let z = ZSetValue::from_rdb(RdbValue::ZSet(items.clone()), &l).unwrap();
        assert_eq!(z.encoding_name(), "skiplist");
        let small = ZSetValue::from_rdb(z.to_rdb(), &limits(128, 64)).unwrap();
        assert_eq!(small.encoding_name(), "listpack");
        assert_eq!(small, z);
        assert_eq!(z.get(0), Some((&b"m4"[..], 1.0)));
        let dup = vec![(b"a".to_vec(), 1.0), (b"a".to_vec(), 2.0)];
        assert!(ZSetValue::from_rdb(RdbValue::ZSet(dup.clone()), &l).is_none());
        assert!(ZSetValue::from_rdb(RdbValue::ZSet(dup), &limits(128, 64)).is_none());
        assert!(ZSetValue::from_rdb(RdbValue::ZSet(vec![(b"a".to_vec(), f64::NAN)]), &l).is_none());
        assert!(ZSetValue::from_rdb(RdbValue::Set(vec![]), &l).is_none());
    }

    /// The naive model: a map and a sorted list rebuilt on demand.
    fn model_sorted(m: &HashMap<Vec<u8>, f64>) -> Vec<(Vec<u8>, f64)> {
        let mut v: Vec<(Vec<u8>, f64)> = m.iter().map(|(k, s)| (k.clone(), *s)).collect();
        v.sort_by(|a, b| cmp_entry(a.1, &a.0, b.1, &b.0));
        v
    }

    fn run_random(seed: u64, ops: usize, keyspace: u64, l: EncodingLimits) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut z = ZSetValue::default();
        let mut model: HashMap<Vec<u8>, f64> = HashMap::new();
        for step in 0..ops {
            let member = format!("member-{}", rng.random_range(0..keyspace)).into_bytes();
            let score = rng.random_range(0..50) as f64 / 2.0;
            match rng.random_range(0..10) {
                0..=4 => {
                    assert_eq!(z.insert(&member, score, &l), model.insert(member, score));
                }
                5..=6 => assert_eq!(z.remove(&member), model.remove(&member)),
                7 => {
                    let popped = z.pop(rng.random_range(1..4), rng.random_bool(0.5));
                    for (m, s) in popped {
                        assert_eq!(model.remove(&m), Some(s));
                    }
                }
                8 => {
                    let n = z.len();
                    let a = rng.random_range(0..=n);
                    let b = rng.random_range(a..=n.min(a + 5));
                    let expect = model_sorted(&model);
                    for (m, _) in &expect[a..b] {
                        model.remove(m);
                    }
                    assert_eq!(z.remove_range(a, b), b - a);
                }
                _ => {
                    let bound = rng.random_range(0..50) as f64 / 2.0;
                    let expect = model_sorted(&model);
                    let want = expect.iter().filter(|(_, s)| *s < bound).count();
                    assert_eq!(z.partition_point(|s, _| s < bound), want);
                }
            }
            assert_eq!(z.len(), model.len());
            if step % 97 == 0 || z.len() < 5 {
                let expect = model_sorted(&model);
                let got = z.range(0, z.len());
                assert_eq!(got.len(), expect.len());
                for (r, ((gm, gs), (em, es))) in got.iter().zip(expect.iter()).enumerate() {
                    assert_eq!((*gm, *gs), (em.as_slice(), *es));
                    assert_eq!(z.rank(em), Some((r, *es)));
                    assert_eq!(z.get(r), Some((em.as_slice(), *es)));
                    assert_eq!(z.score(em), Some(*es));
                }
                if let Repr::Skiplist(b) = &z.repr {
                    let slots = &b.slots;
                    b.tree.check(&|x, y| less(slots, x, y));
                    assert_eq!(b.index.len(), b.len());
                }
                // A full scan returns every element exactly once.
                let mut seen = Vec::new();
                let mut cursor = 0;
                loop {
                    let (next, items) = z.scan(cursor, 7);
                    seen.extend(items.into_iter().map(|(m, _)| m.to_vec()));
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
                seen.sort();
                let mut want: Vec<Vec<u8>> = model.keys().cloned().collect();
                want.sort();
                assert_eq!(seen, want);
            }
        }
    }

    #[test]
    fn random_ops_match_a_model_small() {
        for seed in 0..20 {
            run_random(seed, 2000, 40, limits(16, 64));
        }
    }

    #[test]
    fn random_ops_match_a_model_big() {
        for seed in 100..104 {
            run_random(seed, 30_000, 3000, limits(0, 64));
        }
    }

    #[test]
    fn big_tree_ranks_and_selects() {
        let l = limits(0, 64);
        let mut z = ZSetValue::default();
        let n = 200_000;
        for i in 0..n {
            // Insert in a scrambled order.
            let k = (i * 7919) % n;
            z.insert(format!("m{k:07}").as_bytes(), k as f64, &l);
        }
        assert_eq!(z.len(), n);
        for r in [0, 1, 63, 64, 65, 4095, 100_000, n - 1] {
            let (m, s) = z.get(r).unwrap();
            assert_eq!(s, r as f64);
            assert_eq!(z.rank(m), Some((r, s)));
        }
        assert_eq!(z.partition_point(|s, _| s < 150_000.0), 150_000);
        assert_eq!(z.range(99_998, 100_001).len(), 3);
        // Remove every other element, then check again.
        for k in (0..n).step_by(2) {
            assert!(z.remove(format!("m{k:07}").as_bytes()).is_some());
        }
        assert_eq!(z.len(), n / 2);
        assert_eq!(z.get(0).unwrap().1, 1.0);
        assert_eq!(z.get(n / 2 - 1).unwrap().1, (n - 1) as f64);
        if let Repr::Skiplist(b) = &z.repr {
            let slots = &b.slots;
            b.tree.check(&|x, y| less(slots, x, y));
            // Bytes of the tree per element stays small after mass deletion.
            assert!(
                b.tree.heap_bytes() / z.len() < 16,
                "{}",
                b.tree.heap_bytes()
            );
        }
    }

    #[test]
    fn scan_is_stable_under_changes() {
        let l = limits(0, 64);
        let mut z = ZSetValue::default();
        for i in 0..1000 {
            z.insert(format!("keep{i}").as_bytes(), i as f64, &l);
        }
        let mut seen = std::collections::HashSet::new();
        let mut cursor = 0;
        let mut round = 0;
        loop {
            let (next, items) = z.scan(cursor, 10);
            assert!(items.len() <= 10);
            seen.extend(items.into_iter().map(|(m, _)| m.to_vec()));
            // Churn: new elements, removed ones, changed scores.
            z.insert(format!("new{round}").as_bytes(), -1.0, &l);
            z.remove(format!("new{}", round / 2).as_bytes());
            z.insert(
                format!("keep{}", round % 1000).as_bytes(),
                1e6 + round as f64,
                &l,
            );
            round += 1;
            if next == 0 {
                break;
            }
            cursor = next;
        }
        for i in 0..1000 {
            assert!(seen.contains(format!("keep{i}").as_bytes()));
        }
    }

    #[test]
    fn equal_scores_order_by_member_and_negative_zero() {
        let l = limits(128, 64);
        let mut z = ZSetValue::default();
        z.insert(b"b", 0.0, &l);
        z.insert(b"a", -0.0, &l);
        z.insert(b"c", -1.0, &l);
        let got: Vec<&[u8]> = z.range(0, 3).into_iter().map(|e| e.0).collect();
        assert_eq!(got, vec![&b"c"[..], b"a", b"b"]);
    }
}
