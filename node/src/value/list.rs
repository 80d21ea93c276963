//! The list type: a sequence of byte strings, pushed and popped at both ends.
//!
//! Representation: one `VecDeque<CompactBytes>` for both encodings. An element of up to 23
//! bytes lives inline in its 24-byte slot (no allocation of its own); pushes and pops at either
//! end are O(1), and LINDEX/LSET are O(1) where Valkey walks its listpack nodes.
//!
//! Encodings, as `OBJECT ENCODING` reports them (Valkey 7.2+/8 rules, from `t_list.c`):
//!
//! - The list keeps a running count of the bytes it would take as one listpack (`lp_bytes`:
//!   the 6-byte header, the end byte, and per element Valkey's entry size: integer or string
//!   encoding, payload, back-length).
//! - `list-max-listpack-size` (`fill`): a negative value is a byte limit per node
//!   (-1..-5 → 4/8/16/32/64 KiB, smaller values act as -5); a positive value is a maximum
//!   number of entries (0 acts as 1), with the 8 KiB safety limit on bytes as well.
//! - listpack → quicklist ("growing", `listTypeTryConvertListpack`): before elements are added
//!   (LPUSH/RPUSH/…X, LINSERT, LSET, the push half of LMOVE), the check is made with the
//!   current `lp_bytes` plus the raw lengths of the new arguments and the current length plus
//!   their number, exactly Valkey's estimate. LINSERT and LSET convert even when the pivot is
//!   missing or the index is out of range, as Valkey does.
//! - quicklist → listpack ("shrinking", `listTypeTryConvertQuicklist`): after elements are
//!   removed (pops, LMPOP, LMOVE's source, LREM, LTRIM, LSET), when the quicklist is a single
//!   node and the whole list is within half the limit (bytes ≤ limit/2 and entries ≤ count/2,
//!   with the limits of the current `list-max-listpack-size`).
//! - To know when a quicklist is a single node, the list models Valkey's node layout (entry
//!   count and listpack bytes per node; no elements are stored twice): the converted listpack
//!   becomes the first node; pushes go into the end node if `_quicklistNodeAllowInsert` lets
//!   them (with the fill the quicklist was created with, as Valkey keeps it), else into a new
//!   node; pops, LTRIM and LREM shrink nodes and drop emptied ones; LINSERT follows
//!   `_quicklistInsert` (pivot's node, the neighbour at an edge, a new node, or a split followed
//!   by `_quicklistMergeNodes`); LSET follows `quicklistReplaceEntry`. Node sizes are exact
//!   listpack sizes, except that a replacement's size check uses the entry-size difference
//!   (Valkey's `lpEstimateReplacementBytes` is as precise). Elements larger than a node's
//!   limit become one-element nodes here as in Valkey (where they are "plain" nodes).
//! - Loading (RESTORE, RDB): the nodes RPUSHes would build, then Valkey's load-time check: one
//!   node within the full limits is a listpack, anything else a quicklist.

use std::collections::VecDeque;

use compact_bytes::CompactBytes;

use crate::rdb::RdbValue;
use crate::value::{parse_i64_strict, EncodingLimits};

/// A listpack's header (total bytes + count) and end byte.
const LP_EMPTY_BYTES: usize = 7;
/// Valkey's `optimization_level`: byte limits for fill -1..-5.
const NODE_SIZES: [usize; 5] = [4096, 8192, 16384, 32768, 65536];
/// Valkey's `SIZE_SAFETY_LIMIT`, applied when the fill is a count.
const SIZE_SAFETY_LIMIT: usize = 8192;

#[derive(Debug, Clone, PartialEq)]
pub struct ListValue {
    items: VecDeque<CompactBytes>,
    /// Bytes as one listpack, header included (Valkey's `lpBytes`).
    lp_bytes: usize,
    /// In the quicklist encoding, the node layout Valkey would have; None for listpack.
    ql: Option<Box<Quicklist>>,
}

/// One quicklist node as Valkey would hold it: its entries and its listpack's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Node {
    count: usize,
    bytes: usize,
}

/// The quicklist encoding's node layout, with the fill the quicklist was created with (a
/// quicklist keeps its fill: CONFIG SET affects the nodes of new quicklists only).
#[derive(Debug, Clone, PartialEq)]
struct Quicklist {
    fill: i64,
    nodes: VecDeque<Node>,
}

/// Valkey's `SIZE_ESTIMATE_OVERHEAD`: what a new entry is assumed to add besides its bytes.
const SIZE_ESTIMATE_OVERHEAD: usize = 8;

/// `_quicklistNodeAllowInsert`.
fn node_allows_insert(fill: i64, n: &Node, raw_len: usize) -> bool {
    !exceeds_limit(
        fill,
        n.bytes + raw_len + SIZE_ESTIMATE_OVERHEAD,
        n.count + 1,
    )
}

/// `_quicklistNodeAllowMerge`: the merged listpack drops one header and end byte.
fn nodes_allow_merge(fill: i64, a: &Node, b: &Node) -> bool {
    !exceeds_limit(fill, a.bytes + b.bytes - LP_EMPTY_BYTES, a.count + b.count)
}

impl Quicklist {
    /// `quicklistPushHead` / `quicklistPushTail`.
    fn push(&mut self, front: bool, raw_len: usize, sz: usize) {
        let fill = self.fill;
        let end = if front {
            self.nodes.front_mut()
        } else {
            self.nodes.back_mut()
        };
        match end {
            Some(n) if node_allows_insert(fill, n, raw_len) => {
                n.count += 1;
                n.bytes += sz;
            }
            _ => {
                let node = Node {
                    count: 1,
                    bytes: LP_EMPTY_BYTES + sz,
                };
                if front {
                    self.nodes.push_front(node);
                } else {
                    self.nodes.push_back(node);
                }
            }
        }
    }

    /// Removes `sz` bytes (one entry) from node `i`, dropping the node when it empties.
    fn remove_from(&mut self, i: usize, sz: usize) {
        let Some(n) = self.nodes.get_mut(i) else {
            return;
        };
        n.count = n.count.saturating_sub(1);
        n.bytes = n.bytes.saturating_sub(sz);
        if n.count == 0 {
            self.nodes.remove(i);
        }
    }

    /// The node holding element `index`, and the index of that node's first element.
    fn locate(&self, index: usize) -> Option<(usize, usize)> {
        let mut start = 0;
        for (i, n) in self.nodes.iter().enumerate() {
            if index < start + n.count {
                return Some((i, start));
            }
            start += n.count;
        }
        None
    }

    /// Merges nodes `a` and `a + 1` if Valkey would; true if it did.
    fn try_merge(&mut self, a: usize) -> bool {
        let (Some(x), Some(y)) = (self.nodes.get(a).copied(), self.nodes.get(a + 1).copied())
        else {
            return false;
        };
        if !nodes_allow_merge(self.fill, &x, &y) {
            return false;
        }
        self.nodes[a] = Node {
            count: x.count + y.count,
            bytes: x.bytes + y.bytes - LP_EMPTY_BYTES,
        };
        self.nodes.remove(a + 1);
        true
    }

    /// `_quicklistMergeNodes` around node `c`.
    fn merge_around(&mut self, mut c: usize) {
        if c >= 2 && self.try_merge(c - 2) {
            c -= 1;
        }
        if c + 2 < self.nodes.len() {
            self.try_merge(c + 1);
        }
        let target = if c >= 1 && self.try_merge(c - 1) {
            c - 1
        } else {
            c
        };
        self.try_merge(target);
    }
}

/// The byte and entry limits of one quicklist node for a `list-max-listpack-size` value
/// (`quicklistNodeLimit`): `(Some(bytes), None)` or `(None, Some(entries))`.
fn node_limit(fill: i64) -> (Option<usize>, Option<usize>) {
    if fill >= 0 {
        (None, Some(if fill == 0 { 1 } else { fill as usize }))
    } else {
        let offset = ((-(fill + 1)) as u64).min(NODE_SIZES.len() as u64 - 1) as usize;
        (Some(NODE_SIZES[offset]), None)
    }
}

/// `quicklistNodeExceedsLimit`.
fn exceeds_limit(fill: i64, bytes: usize, count: usize) -> bool {
    match node_limit(fill) {
        (Some(sz), _) => bytes > sz,
        (None, Some(n)) => bytes > SIZE_SAFETY_LIMIT || count > n,
        (None, None) => false,
    }
}

/// The bytes one element takes in a listpack: encoding header and payload, plus back-length.
pub fn lp_entry_size(e: &[u8]) -> usize {
    let enc = match parse_i64_strict(e) {
        Some(v) => match v {
            0..=127 => 1,
            -4096..=4095 => 2,
            -32768..=32767 => 3,
            -8_388_608..=8_388_607 => 4,
            -2_147_483_648..=2_147_483_647 => 5,
            _ => 9,
        },
        None => {
            let n = e.len();
            if n < 64 {
                1 + n
            } else if n < 4096 {
                2 + n
            } else {
                5 + n
            }
        }
    };
    let backlen = if enc <= 127 {
        1
    } else if enc < 16383 {
        2
    } else if enc < 2_097_151 {
        3
    } else if enc < 268_435_455 {
        4
    } else {
        5
    };
    enc + backlen
}

impl Default for ListValue {
    fn default() -> Self {
        ListValue::new()
    }
}

impl ListValue {
    /// An empty list in the listpack encoding.
    pub fn new() -> ListValue {
        ListValue {
            items: VecDeque::new(),
            lp_bytes: LP_EMPTY_BYTES,
            ql: None,
        }
    }

    /// The name `OBJECT ENCODING` reports.
    pub fn encoding_name(&self) -> &'static str {
        if self.ql.is_some() {
            "quicklist"
        } else {
            "listpack"
        }
    }

    pub fn is_quicklist(&self) -> bool {
        self.ql.is_some()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn bytes(&self) -> usize {
        self.lp_bytes
    }

    /// Turns the listpack into a quicklist of one node (`quicklistAppendListpack`).
    fn convert_to_quicklist(&mut self, fill: i64) {
        let mut nodes = VecDeque::new();
        if !self.items.is_empty() {
            nodes.push_back(Node {
                count: self.items.len(),
                bytes: self.lp_bytes,
            });
        }
        self.ql = Some(Box::new(Quicklist { fill, nodes }));
    }

    /// Valkey's growing check, made before `add` are inserted: listpack → quicklist when the
    /// current size plus the raw lengths of `add` exceed a node.
    pub fn grow_check<'a>(
        &mut self,
        add: impl IntoIterator<Item = &'a [u8]>,
        limits: &EncodingLimits,
    ) {
        if self.ql.is_some() {
            return;
        }
        let (mut bytes, mut count) = (0usize, 0usize);
        for a in add {
            bytes += a.len();
            count += 1;
        }
        let fill = limits.list_max_listpack_size;
        if exceeds_limit(fill, self.bytes() + bytes, self.items.len() + count) {
            self.convert_to_quicklist(fill);
        }
    }

    /// Valkey's shrinking check, made after elements were removed: quicklist → listpack when
    /// the quicklist is one node within half a node's limits.
    pub fn shrink_check(&mut self, limits: &EncodingLimits) {
        self.quicklist_to_listpack(limits, true);
    }

    /// `listTypeTryConvertQuicklist`.
    fn quicklist_to_listpack(&mut self, limits: &EncodingLimits, shrinking: bool) {
        let Some(ql) = &self.ql else {
            return;
        };
        if ql.nodes.len() != 1 {
            return;
        }
        let (sz, n) = node_limit(limits.list_max_listpack_size);
        let (mut sz, mut n) = (sz.unwrap_or(usize::MAX), n.unwrap_or(u32::MAX as usize));
        if shrinking {
            sz /= 2;
            n /= 2;
        }
        if self.bytes() <= sz && self.items.len() <= n {
            self.ql = None;
        }
    }

    fn track_push(&mut self, v: &[u8], front: bool) {
        let sz = lp_entry_size(v);
        self.lp_bytes += sz;
        if let Some(ql) = &mut self.ql {
            ql.push(front, v.len(), sz);
        }
    }

    pub fn push_front(&mut self, v: &[u8]) {
        self.track_push(v, true);
        self.items.push_front(CompactBytes::new(v));
    }

    pub fn push_back(&mut self, v: &[u8]) {
        self.track_push(v, false);
        self.items.push_back(CompactBytes::new(v));
    }

    /// Pushes an element already owned (LMOVE).
    pub fn push_front_owned(&mut self, v: CompactBytes) {
        self.track_push(v.as_slice(), true);
        self.items.push_front(v);
    }

    pub fn push_back_owned(&mut self, v: CompactBytes) {
        self.track_push(v.as_slice(), false);
        self.items.push_back(v);
    }

    /// Accounts for a removed element that was in node `node` (quicklist).
    fn forget(&mut self, v: &CompactBytes, node: usize) {
        let sz = lp_entry_size(v.as_slice());
        self.lp_bytes -= sz;
        if let Some(ql) = &mut self.ql {
            ql.remove_from(node, sz);
        }
        self.release_spare();
    }

    /// Gives memory back once a list has shrunk to a quarter of its slots (a `VecDeque` never
    /// shrinks by itself); amortized O(1) per removal.
    fn release_spare(&mut self) {
        let (len, cap) = (self.items.len(), self.items.capacity());
        if cap > 64 && len * 4 < cap {
            self.items.shrink_to(len * 2);
        }
    }

    pub fn pop_front(&mut self) -> Option<CompactBytes> {
        let v = self.items.pop_front()?;
        self.forget(&v, 0);
        Some(v)
    }

    pub fn pop_back(&mut self) -> Option<CompactBytes> {
        let v = self.items.pop_back()?;
        let last = self
            .ql
            .as_ref()
            .map_or(0, |q| q.nodes.len().saturating_sub(1));
        self.forget(&v, last);
        Some(v)
    }

    pub fn get(&self, index: usize) -> Option<&[u8]> {
        self.items.get(index).map(|v| v.as_slice())
    }

    /// Replaces the element at `index`; false if out of range. In a quicklist, as
    /// `quicklistReplaceEntry`: in place if the node stays within its limit, else the node is
    /// split after the element, the new value gets a node of its own and the old one is
    /// deleted (followed by merges unless that emptied the node).
    pub fn set(&mut self, index: usize, v: &[u8]) -> bool {
        if index >= self.items.len() {
            return false;
        }
        let (old_sz, new_sz) = (
            lp_entry_size(self.items[index].as_slice()),
            lp_entry_size(v),
        );
        if let Some(ql) = self.ql.as_deref_mut() {
            if let Some((i, start)) = ql.locate(index) {
                let node = ql.nodes[i];
                let projected = node.bytes.saturating_sub(old_sz) + new_sz;
                if !exceeds_limit(ql.fill, projected, node.count) {
                    ql.nodes[i].bytes = projected;
                } else {
                    let end = start + node.count;
                    let bytes_of = |r: std::ops::Range<usize>| -> usize {
                        LP_EMPTY_BYTES
                            + r.map(|k| lp_entry_size(self.items[k].as_slice()))
                                .sum::<usize>()
                    };
                    let single = Node {
                        count: 1,
                        bytes: LP_EMPTY_BYTES + new_sz,
                    };
                    if index + 1 < end {
                        let split = Node {
                            count: end - index - 1,
                            bytes: bytes_of(index + 1..end),
                        };
                        ql.nodes[i] = Node {
                            count: index + 1 - start,
                            bytes: bytes_of(start..index + 1),
                        };
                        ql.nodes.insert(i + 1, split);
                    }
                    ql.nodes.insert(i + 1, single);
                    if ql.nodes[i].count == 1 {
                        ql.nodes.remove(i);
                    } else {
                        ql.nodes[i].count -= 1;
                        ql.nodes[i].bytes = ql.nodes[i].bytes.saturating_sub(old_sz);
                        ql.merge_around(i + 1);
                    }
                }
            }
        }
        self.items[index] = CompactBytes::new(v);
        self.lp_bytes = self.lp_bytes - old_sz + new_sz;
        true
    }

    /// LINSERT: inserts `v` before or after the element at `pivot`, with Valkey's quicklist
    /// placement (`_quicklistInsert`: into the pivot's node if it has room, else into the
    /// neighbouring node at an edge, else a new node or a split followed by merges).
    pub fn insert(&mut self, pivot: usize, after: bool, v: &[u8]) {
        let sz = lp_entry_size(v);
        let at = if after { pivot + 1 } else { pivot };
        if let Some(ql) = self.ql.as_deref_mut() {
            if let Some((i, start)) = ql.locate(pivot) {
                let fill = ql.fill;
                let node = ql.nodes[i];
                let offset = pivot - start;
                let full = !node_allows_insert(fill, &node, v.len());
                let at_tail = after && offset == node.count - 1;
                let at_head = !after && offset == 0;
                let avail_next = at_tail
                    && ql
                        .nodes
                        .get(i + 1)
                        .is_some_and(|n| node_allows_insert(fill, n, v.len()));
                let avail_prev =
                    at_head && i > 0 && node_allows_insert(fill, &ql.nodes[i - 1], v.len());
                let grow = |n: &mut Node| {
                    n.count += 1;
                    n.bytes += sz;
                };
                let single = Node {
                    count: 1,
                    bytes: LP_EMPTY_BYTES + sz,
                };
                if !full {
                    grow(&mut ql.nodes[i]);
                } else if at_tail && avail_next {
                    grow(&mut ql.nodes[i + 1]);
                } else if at_head && avail_prev {
                    grow(&mut ql.nodes[i - 1]);
                } else if at_tail || at_head {
                    ql.nodes.insert(if after { i + 1 } else { i }, single);
                } else {
                    // Split: the original node keeps the part with the pivot on its side
                    // (`_quicklistSplitNode`), the new node the rest plus the new element.
                    let bytes_of = |r: std::ops::Range<usize>| -> usize {
                        LP_EMPTY_BYTES
                            + r.map(|k| lp_entry_size(self.items[k].as_slice()))
                                .sum::<usize>()
                    };
                    let (keep, moved) = if after {
                        (start..pivot + 1, pivot + 1..start + node.count)
                    } else {
                        (pivot..start + node.count, start..pivot)
                    };
                    let kept = Node {
                        count: keep.len(),
                        bytes: bytes_of(keep),
                    };
                    let new = Node {
                        count: moved.len() + 1,
                        bytes: bytes_of(moved) + sz,
                    };
                    ql.nodes[i] = kept;
                    let center = if after {
                        ql.nodes.insert(i + 1, new);
                        i
                    } else {
                        ql.nodes.insert(i, new);
                        i + 1
                    };
                    ql.merge_around(center);
                }
            }
        }
        self.lp_bytes += sz;
        self.items.insert(at, CompactBytes::new(v));
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &[u8]> + ExactSizeIterator + '_ {
        self.items.iter().map(|v| v.as_slice())
    }

    /// The elements at `start..=end` (both in range, start ≤ end).
    pub fn range(
        &self,
        start: usize,
        end: usize,
    ) -> impl DoubleEndedIterator<Item = &[u8]> + ExactSizeIterator + '_ {
        self.items.range(start..=end).map(|v| v.as_slice())
    }

    /// The first index holding `v`.
    pub fn position(&self, v: &[u8]) -> Option<usize> {
        self.items.iter().position(|e| e.as_slice() == v)
    }

    /// LREM: removes up to `limit` (0 = all) elements equal to `v`, scanning from the head or,
    /// with `from_tail`, from the tail. Returns how many were removed.
    pub fn remove_matching(&mut self, v: &[u8], limit: usize, from_tail: bool) -> usize {
        let n = self.items.len();
        let mut doomed = vec![false; n];
        let mut removed = 0;
        let mut freed = 0;
        let order: Box<dyn Iterator<Item = usize>> = if from_tail {
            Box::new((0..n).rev())
        } else {
            Box::new(0..n)
        };
        for i in order {
            if self.items[i].as_slice() == v {
                doomed[i] = true;
                removed += 1;
                freed += lp_entry_size(v);
                if limit != 0 && removed == limit {
                    break;
                }
            }
        }
        if removed > 0 {
            if let Some(ql) = self.ql.as_deref_mut() {
                let mut start = 0;
                for node in ql.nodes.iter_mut() {
                    let gone = doomed
                        .get(start..start + node.count)
                        .map_or(0, |d| d.iter().filter(|d| **d).count());
                    start += node.count;
                    node.count -= gone;
                    node.bytes = node.bytes.saturating_sub(gone * lp_entry_size(v));
                }
                ql.nodes.retain(|n| n.count > 0);
            }
            let mut i = 0;
            self.items.retain(|_| {
                let keep = !doomed[i];
                i += 1;
                keep
            });
            self.lp_bytes = self.bytes() - freed;
            self.release_spare();
        }
        removed
    }

    /// Removes `front` elements from the head and `back` from the tail (clamped).
    pub fn trim(&mut self, front: usize, back: usize) {
        for _ in 0..front.min(self.items.len()) {
            self.pop_front();
        }
        for _ in 0..back.min(self.items.len()) {
            self.pop_back();
        }
    }

    /// A list of `items` in the encoding Valkey gives a freshly loaded one.
    pub fn from_items<I, T>(items: I, limits: &EncodingLimits) -> ListValue
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        // Built as RPUSHes into a quicklist would build it, then converted as Valkey converts
        // a loaded quicklist (one node within the full limits: listpack).
        let mut l = ListValue::new();
        l.convert_to_quicklist(limits.list_max_listpack_size);
        for i in items {
            l.push_back(i.as_ref());
        }
        l.quicklist_to_listpack(limits, false);
        if l.is_empty() {
            l.ql = None;
        }
        l
    }

    /// The type-neutral form, for DUMP and RDB files.
    pub fn to_rdb(&self) -> RdbValue {
        RdbValue::List(self.iter().map(<[u8]>::to_vec).collect())
    }

    /// From DUMP or an RDB file, choosing the encoding by `limits` as Valkey does on load.
    /// None if the content is invalid for this type (an empty list: Valkey never stores one).
    pub fn from_rdb(value: RdbValue, limits: &EncodingLimits) -> Option<ListValue> {
        match value {
            RdbValue::List(items) if !items.is_empty() => {
                Some(ListValue::from_items(items, limits))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits(fill: i64) -> EncodingLimits {
        EncodingLimits {
            list_max_listpack_size: fill,
            ..EncodingLimits::default()
        }
    }

    fn items(l: &ListValue) -> Vec<Vec<u8>> {
        l.iter().map(|v| v.to_vec()).collect()
    }

    #[test]
    fn entry_sizes_follow_listpack() {
        assert_eq!(lp_entry_size(b"0"), 2);
        assert_eq!(lp_entry_size(b"127"), 2);
        assert_eq!(lp_entry_size(b"128"), 3);
        assert_eq!(lp_entry_size(b"-4096"), 3);
        assert_eq!(lp_entry_size(b"4096"), 4);
        assert_eq!(lp_entry_size(b"100000"), 5);
        assert_eq!(lp_entry_size(b"10000000"), 6);
        assert_eq!(lp_entry_size(b"10000000000"), 10);
        assert_eq!(lp_entry_size(b"007"), 5);
        assert_eq!(lp_entry_size(b""), 2);
        assert_eq!(lp_entry_size(&[b'a'; 63]), 65);
        assert_eq!(lp_entry_size(&[b'a'; 64]), 66 + 1);
        assert_eq!(lp_entry_size(&[b'a'; 5000]), 5005 + 2);
    }

    #[test]
    fn push_pop_both_ends() {
        let mut l = ListValue::new();
        l.push_back(b"b");
        l.push_front(b"a");
        l.push_back(b"c");
        assert_eq!(items(&l), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(l.pop_front().unwrap().as_slice(), b"a");
        assert_eq!(l.pop_back().unwrap().as_slice(), b"c");
        assert_eq!(l.len(), 1);
        assert_eq!(l.bytes(), LP_EMPTY_BYTES + 3);
        l.pop_back();
        assert_eq!(l.bytes(), LP_EMPTY_BYTES);
        assert!(l.pop_back().is_none());
    }

    #[test]
    fn count_limit_converts_both_ways() {
        let lim = limits(4);
        let mut l = ListValue::new();
        for v in [b"a", b"b", b"c", b"d"] {
            l.grow_check([v.as_slice()], &lim);
            l.push_back(v);
        }
        assert_eq!(l.encoding_name(), "listpack");
        l.grow_check([b"e".as_slice()], &lim);
        l.push_back(b"e");
        assert_eq!(l.encoding_name(), "quicklist");
        l.pop_back();
        l.pop_back();
        l.shrink_check(&lim);
        assert_eq!(l.encoding_name(), "quicklist", "3 entries > 4/2");
        l.pop_back();
        l.shrink_check(&lim);
        assert_eq!(l.encoding_name(), "listpack");
    }

    #[test]
    fn byte_limit_converts_both_ways() {
        let lim = limits(-1); // 4096 bytes
        let mut l = ListValue::new();
        let big = vec![b'x'; 1000];
        for _ in 0..4 {
            l.grow_check([big.as_slice()], &lim);
            l.push_back(&big);
        }
        assert_eq!(l.encoding_name(), "listpack");
        l.grow_check([big.as_slice()], &lim);
        assert_eq!(l.encoding_name(), "quicklist");
        l.push_back(&big);
        assert_eq!(node_counts(&l), vec![4, 1]);
        l.trim(3, 0);
        l.shrink_check(&lim);
        assert_eq!(l.encoding_name(), "quicklist", "two nodes");
        l.pop_front();
        l.shrink_check(&lim);
        assert_eq!(l.encoding_name(), "listpack");
    }

    #[test]
    fn default_fill_is_8k() {
        let lim = limits(-2);
        let mut l = ListValue::new();
        l.grow_check([vec![b'x'; 8185].as_slice()], &lim);
        assert_eq!(l.encoding_name(), "listpack");
        l.grow_check([vec![b'x'; 8186].as_slice()], &lim);
        assert_eq!(l.encoding_name(), "quicklist");
        assert_eq!(node_limit(-100), (Some(65536), None));
        assert_eq!(node_limit(0), (None, Some(1)));
    }

    fn node_counts(l: &ListValue) -> Vec<usize> {
        l.ql.as_ref()
            .map(|q| q.nodes.iter().map(|n| n.count).collect())
            .unwrap_or_default()
    }

    fn node_bytes_match(l: &ListValue) -> bool {
        let Some(q) = &l.ql else { return true };
        let mut start = 0;
        q.nodes.iter().all(|n| {
            let b: usize = (start..start + n.count)
                .map(|k| lp_entry_size(l.items[k].as_slice()))
                .sum();
            start += n.count;
            n.bytes == LP_EMPTY_BYTES + b
        }) && start == l.len()
    }

    #[test]
    fn quicklist_nodes_follow_pushes_and_pops() {
        let lim = limits(4);
        let mut l = ListValue::new();
        for v in ["a", "b", "c", "d", "e"] {
            l.grow_check([v.as_bytes()], &lim);
            l.push_back(v.as_bytes());
        }
        assert_eq!(node_counts(&l), vec![4, 1]);
        l.push_front(b"z");
        assert_eq!(node_counts(&l), vec![1, 4, 1]);
        assert!(node_bytes_match(&l));
        // Two nodes left: no conversion even though the count is within half the limit.
        l.pop_front();
        l.pop_front();
        l.pop_front();
        l.pop_front();
        assert_eq!(node_counts(&l), vec![1, 1]);
        l.shrink_check(&lim);
        assert_eq!(l.encoding_name(), "quicklist");
        l.pop_front();
        l.shrink_check(&lim);
        assert_eq!(l.encoding_name(), "listpack");
        assert_eq!(items(&l), vec![b"e".to_vec()]);
    }

    #[test]
    fn byte_fill_pops_from_the_head_keep_two_nodes() {
        let lim = limits(-2);
        let mut l = ListValue::new();
        // Push until the second node holds 50 elements.
        let mut i = 0;
        while node_counts(&l).len() < 2 || node_counts(&l)[1] < 50 {
            let v = format!("element:{i:05}");
            l.grow_check([v.as_bytes()], &lim);
            l.push_back(v.as_bytes());
            i += 1;
        }
        assert_eq!(l.encoding_name(), "quicklist");
        let nodes = node_counts(&l);
        assert!(nodes.len() >= 2, "{nodes:?}");
        assert!(node_bytes_match(&l));
        // Pop from the head until the whole list is below 4 KiB: the tail node's remainder
        // and part of the one before it are still two nodes.
        let tail = *nodes.last().unwrap();
        while l.len() > tail + 10 {
            l.pop_front();
        }
        l.shrink_check(&lim);
        assert!(l.bytes() <= 4096);
        assert_eq!(l.encoding_name(), "quicklist");
        while l.len() > tail {
            l.pop_front();
            l.shrink_check(&lim);
        }
        assert_eq!(l.encoding_name(), "listpack");
    }

    #[test]
    fn quicklist_insert_splits_and_merges() {
        let lim = limits(4);
        let mut l = ListValue::new();
        for v in ["a", "b", "c", "d", "e"] {
            l.grow_check([v.as_bytes()], &lim);
            l.push_back(v.as_bytes());
        }
        l.insert(1, true, b"x");
        let got: Vec<&[u8]> = l.iter().collect();
        assert_eq!(got, vec![&b"a"[..], b"b", b"x", b"c", b"d", b"e"]);
        assert_eq!(node_counts(&l), vec![2, 4]);
        assert!(node_bytes_match(&l));
        // Into a node with room; at the head of a full node with a full neighbour: a new node.
        l.insert(0, false, b"y");
        assert_eq!(node_counts(&l), vec![3, 4]);
        l.insert(3, false, b"w");
        assert_eq!(node_counts(&l), vec![4, 4]);
        l.insert(4, false, b"v");
        assert_eq!(node_counts(&l), vec![4, 1, 4]);
        assert!(node_bytes_match(&l));
        // LREM drops emptied nodes.
        assert_eq!(l.remove_matching(b"v", 0, false), 1);
        assert_eq!(node_counts(&l), vec![4, 4]);
        assert!(node_bytes_match(&l));
        assert!(l.set(0, b"longer value"));
        assert!(node_bytes_match(&l));
    }

    #[test]
    fn quicklist_set_that_overflows_a_node_splits_it() {
        let lim = limits(-1); // 4 KiB nodes
        let mut l = ListValue::new();
        let v = vec![b'v'; 1000];
        for _ in 0..5 {
            l.grow_check([v.as_slice()], &lim);
            l.push_back(&v);
        }
        assert_eq!(node_counts(&l), vec![4, 1]);
        // Growing element 1 past the node's limit: [v v] [new] [v v] [v], the old element
        // deleted, then merges: [v] + [w], [v v] + [v].
        assert!(l.set(1, &vec![b'w'; 2000]));
        assert!(node_bytes_match(&l));
        assert_eq!(node_counts(&l), vec![2, 3]);
        assert_eq!(l.get(1), Some(vec![b'w'; 2000].as_slice()));
        // In place when it fits.
        assert!(l.set(0, b"x"));
        assert_eq!(node_counts(&l), vec![2, 3]);
        assert!(node_bytes_match(&l));
    }

    /// Random operations keep the node model consistent with the elements (counts and exact
    /// listpack bytes per node, no empty nodes) under every kind of fill.
    #[test]
    fn node_model_stays_consistent() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for fill in [1, 2, 4, 16, -1, -2] {
            let lim = limits(fill);
            let mut l = ListValue::new();
            for _ in 0..4000 {
                let v: Vec<u8> = match next(10) {
                    0 => vec![b'b'; 300 + next(2500) as usize],
                    1..=3 => next(200).to_string().into_bytes(),
                    _ => format!("e{}", next(20)).into_bytes(),
                };
                match next(12) {
                    0..=2 => {
                        l.grow_check([v.as_slice()], &lim);
                        l.push_back(&v);
                    }
                    3..=4 => {
                        l.grow_check([v.as_slice()], &lim);
                        l.push_front(&v);
                    }
                    5 => {
                        l.pop_front();
                    }
                    6 => {
                        l.pop_back();
                    }
                    7 if !l.is_empty() => {
                        let i = next(l.len() as u64) as usize;
                        l.grow_check([v.as_slice()], &lim);
                        l.insert(i, next(2) == 0, &v);
                    }
                    8 if !l.is_empty() => {
                        let i = next(l.len() as u64) as usize;
                        l.grow_check([v.as_slice()], &lim);
                        l.set(i, &v);
                    }
                    9 => {
                        l.remove_matching(&v, next(3) as usize, next(2) == 0);
                    }
                    10 => {
                        let n = l.len();
                        l.trim(next(3) as usize, next(3) as usize);
                        assert!(l.len() + 6 >= n);
                    }
                    _ => {}
                }
                l.shrink_check(&lim);
                assert!(node_bytes_match(&l), "fill {fill}: {:?}", node_counts(&l));
                assert!(node_counts(&l).iter().all(|&c| c > 0));
                let lp: usize = l.iter().map(lp_entry_size).sum::<usize>() + LP_EMPTY_BYTES;
                assert_eq!(l.bytes(), lp);
                if l.is_empty() {
                    assert!(node_counts(&l).is_empty());
                }
            }
        }
    }

    #[test]
    fn shrinking_releases_slots() {
        let mut l = ListValue::new();
        for i in 0..10_000 {
            l.push_back(i.to_string().as_bytes());
        }
        l.trim(9_990, 0);
        assert!(l.items.capacity() < 1000, "{}", l.items.capacity());
        assert_eq!(l.get(0), Some(b"9990".as_slice()));
        assert_eq!(l.len(), 10);
    }

    #[test]
    fn lrem_from_both_ends() {
        let mut l = ListValue::new();
        for v in ["a", "b", "a", "c", "a"] {
            l.push_back(v.as_bytes());
        }
        assert_eq!(l.remove_matching(b"a", 1, true), 1);
        assert_eq!(
            items(&l),
            vec![b"a".to_vec(), b"b".to_vec(), b"a".to_vec(), b"c".to_vec()]
        );
        assert_eq!(l.remove_matching(b"a", 1, false), 1);
        assert_eq!(items(&l), vec![b"b".to_vec(), b"a".to_vec(), b"c".to_vec()]);
        assert_eq!(l.remove_matching(b"zz", 0, false), 0);
        assert_eq!(l.remove_matching(b"a", 0, false), 1);
        assert_eq!(l.bytes(), LP_EMPTY_BYTES + 3 + 3);
    }

    #[test]
    fn set_insert_and_position() {
        let mut l = ListValue::new();
        l.push_back(b"a");
        l.push_back(b"c");
        l.insert(0, true, b"b");
        assert_eq!(l.position(b"c"), Some(2));
        assert!(l.set(0, b"1000"));
        assert!(!l.set(3, b"x"));
        assert_eq!(l.get(0), Some(b"1000".as_slice()));
        assert_eq!(l.bytes(), LP_EMPTY_BYTES + 3 + 3 + 3);
        let r: Vec<&[u8]> = l.range(1, 2).collect();
        assert_eq!(r, vec![b"b".as_slice(), b"c".as_slice()]);
    }

    #[test]
    fn rdb_round_trip_picks_encoding() {
        let mut l = ListValue::new();
        l.push_back(b"x");
        l.push_back(b"42");
        let back = ListValue::from_rdb(l.to_rdb(), &limits(-2)).unwrap();
        assert_eq!(back, l);
        let many = RdbValue::List((0..200).map(|i| i.to_string().into_bytes()).collect());
        assert_eq!(
            ListValue::from_rdb(many.clone(), &limits(128))
                .unwrap()
                .encoding_name(),
            "quicklist"
        );
        assert_eq!(
            ListValue::from_rdb(many, &limits(-2))
                .unwrap()
                .encoding_name(),
            "listpack"
        );
        assert!(ListValue::from_rdb(RdbValue::List(Vec::new()), &limits(-2)).is_none());
        assert!(ListValue::from_rdb(RdbValue::Set(vec![b"a".to_vec()]), &limits(-2)).is_none());
    }
}
