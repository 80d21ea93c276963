//! An order-statistic B+tree of element ids: the ordered half of the big ("skiplist") zset
//! encoding.
//!
//! The tree stores only `u32` ids of elements that live in the zset's arena; every comparison
//! goes through a caller-supplied `less(a, b)` on ids, so the tree itself knows nothing of
//! scores or members. Nodes live in an arena `Vec` and refer to each other by index (no
//! `unsafe`, no per-element allocation).
//!
//! Inner nodes keep, per child, the child's subtree size (for rank queries) and the id of the
//! greatest element below it (for routing a search). Routing by the maximum, rather than by
//! separator keys, means a separator never refers to an element that was deleted: removal
//! recomputes the maxima along its path. Nodes hold between `MIN` and `CAP` entries (the root
//! may hold fewer), so the height is O(log n) and every operation — insert, remove, rank,
//! select, partition point — costs O(CAP · log n).

/// Most entries in a node (ids in a leaf, children in an inner node).
const CAP: usize = 64;
/// Fewest entries in a non-root node; below this a node borrows from or merges with a sibling.
const MIN: usize = CAP / 4;

#[derive(Debug, Clone, Copy)]
struct Child {
    node: u32,
    count: u32,
    max: u32,
}

#[derive(Debug, Clone)]
enum Node {
    Leaf(Vec<u32>),
    Inner(Vec<Child>),
    Free,
}

#[derive(Debug, Clone)]
pub struct Tree {
    nodes: Vec<Node>,
    free: Vec<u32>,
    root: u32,
    len: usize,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl Tree {
    pub fn new() -> Tree {
        Tree {
            nodes: vec![Node::Leaf(Vec::new())],
            free: Vec::new(),
            root: 0,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn alloc(&mut self, n: Node) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = n;
                i
            }
            None => {
                self.nodes.push(n);
                (self.nodes.len() - 1) as u32
            }
        }
    }

    fn release(&mut self, i: u32) {
        self.nodes[i as usize] = Node::Free;
        self.free.push(i);
    }

    /// (size, greatest id) of the subtree at `node`; the id is meaningless when empty.
    fn summary(&self, node: u32) -> (u32, u32) {
        match &self.nodes[node as usize] {
            Node::Leaf(v) => (v.len() as u32, v.last().copied().unwrap_or(u32::MAX)),
            Node::Inner(c) => (
                c.iter().map(|c| c.count).sum(),
                c.last().map(|c| c.max).unwrap_or(u32::MAX),
            ),
            Node::Free => (0, u32::MAX),
        }
    }

    fn entries(&self, node: u32) -> usize {
        match &self.nodes[node as usize] {
            Node::Leaf(v) => v.len(),
            Node::Inner(c) => c.len(),
            Node::Free => 0,
        }
    }

    /// Inserts `x` (not present) in order.
    pub fn insert(&mut self, x: u32, less: &impl Fn(u32, u32) -> bool) {
        self.len += 1;
        if let Some(right) = self.insert_rec(self.root, x, less) {
            let (count, max) = self.summary(self.root);
            let left = Child {
                node: self.root,
                count,
                max,
            };
            self.root = self.alloc(Node::Inner(vec![left, right]));
        }
    }

    fn insert_rec(&mut self, node: u32, x: u32, less: &impl Fn(u32, u32) -> bool) -> Option<Child> {
        let (ci, child) = match &mut self.nodes[node as usize] {
            Node::Leaf(v) => {
                let pos = v.partition_point(|&y| less(y, x));
                v.insert(pos, x);
                if v.len() <= CAP {
                    return None;
                }
                let right = v.split_off(v.len() / 2);
                let (count, max) = (right.len() as u32, right[right.len() - 1]);
                let id = self.alloc(Node::Leaf(right));
                return Some(Child {
                    node: id,
                    count,
                    max,
                });
            }
            Node::Inner(c) => {
                let i = c.partition_point(|ch| less(ch.max, x)).min(c.len() - 1);
                (i, c[i].node)
            }
            Node::Free => return None,
        };
        let split = self.insert_rec(child, x, less);
        let (lcount, lmax) = if split.is_some() {
            self.summary(child)
        } else {
            (0, 0)
        };
        let Node::Inner(c) = &mut self.nodes[node as usize] else {
            return None;
        };
        c[ci].count += 1;
        if less(c[ci].max, x) {
            c[ci].max = x;
        }
        if let Some(right) = split {
            c[ci].count = lcount;
            c[ci].max = lmax;
            c.insert(ci + 1, right);
        }
        if c.len() <= CAP {
            return None;
        }
        let right = c.split_off(c.len() / 2);
        let count = right.iter().map(|c| c.count).sum();
        let max = right[right.len() - 1].max;
        let id = self.alloc(Node::Inner(right));
        Some(Child {
            node: id,
            count,
            max,
        })
    }

    /// Removes `x`; false if it was not there. `less` must still order `x` correctly.
    pub fn remove(&mut self, x: u32, less: &impl Fn(u32, u32) -> bool) -> bool {
        if !self.remove_rec(self.root, x, less) {
            return false;
        }
        self.len -= 1;
        // Shrink the root while it is an inner node with one child.
        loop {
            let only = match &self.nodes[self.root as usize] {
                Node::Inner(c) if c.len() == 1 => c[0].node,
                _ => break,
            };
            let old = self.root;
            self.root = only;
            self.release(old);
        }
        true
    }

    fn remove_rec(&mut self, node: u32, x: u32, less: &impl Fn(u32, u32) -> bool) -> bool {
        let (ci, child) = match &mut self.nodes[node as usize] {
            Node::Leaf(v) => {
                let pos = v.partition_point(|&y| less(y, x));
                if v.get(pos) == Some(&x) {
                    v.remove(pos);
                    return true;
                }
                return false;
            }
            Node::Inner(c) => {
                let i = c.partition_point(|ch| less(ch.max, x));
                if i == c.len() {
                    return false;
                }
                (i, c[i].node)
            }
            Node::Free => return false,
        };
        if !self.remove_rec(child, x, less) {
            return false;
        }
        let (count, max) = self.summary(child);
        let size = self.entries(child);
        let Node::Inner(c) = &mut self.nodes[node as usize] else {
            return true;
        };
        c[ci].count = count;
        c[ci].max = max;
        if size < MIN && c.len() > 1 {
            let (a, b) = if ci + 1 < c.len() {
                (ci, ci + 1)
            } else {
                (ci - 1, ci)
            };
            self.rebalance(node, a, b);
        }
        true
    }

    /// Evens out children `a` and `b` (adjacent) of inner node `parent`: merges them when they
    /// fit in one node, otherwise splits their entries in half.
    fn rebalance(&mut self, parent: u32, a: usize, b: usize) {
        let Node::Inner(c) = &self.nodes[parent as usize] else {
            return;
        };
        let (na, nb) = (c[a].node, c[b].node);
        let taken_a = std::mem::replace(&mut self.nodes[na as usize], Node::Free);
        let taken_b = std::mem::replace(&mut self.nodes[nb as usize], Node::Free);
        let (new_a, new_b) = match (taken_a, taken_b) {
            (Node::Leaf(mut x), Node::Leaf(y)) => {
                x.extend(y);
                if x.len() <= CAP {
                    (Node::Leaf(x), None)
                } else {
                    let y = x.split_off(x.len() / 2);
                    (Node::Leaf(x), Some(Node::Leaf(y)))
                }
            }
            (Node::Inner(mut x), Node::Inner(y)) => {
                x.extend(y);
                if x.len() <= CAP {
                    (Node::Inner(x), None)
                } else {
                    let y = x.split_off(x.len() / 2);
                    (Node::Inner(x), Some(Node::Inner(y)))
                }
            }
            (x, y) => (x, Some(y)), // unreachable: siblings are at the same height
        };
        self.nodes[na as usize] = new_a;
        let (ca, ma) = self.summary(na);
        let second = match new_b {
            Some(n) => {
                self.nodes[nb as usize] = n;
                Some(self.summary(nb))
            }
            None => {
                self.free.push(nb);
                None
            }
        };
        let Node::Inner(c) = &mut self.nodes[parent as usize] else {
            return;
        };
        c[a].count = ca;
        c[a].max = ma;
        match second {
            Some((cb, mb)) => {
                c[b].count = cb;
                c[b].max = mb;
            }
            None => {
                c.remove(b);
            }
        }
    }

    /// How many elements `e` satisfy `pred(e)`, for a `pred` that holds for a prefix of the
    /// order (so the result is the rank of the first element that fails it).
    pub fn partition_point(&self, pred: impl Fn(u32) -> bool) -> usize {
        let mut node = self.root;
        let mut rank = 0usize;
        loop {
            match &self.nodes[node as usize] {
                Node::Leaf(v) => return rank + v.partition_point(|&y| pred(y)),
                Node::Inner(c) => {
                    let i = c.partition_point(|ch| pred(ch.max));
                    rank += c[..i].iter().map(|c| c.count as usize).sum::<usize>();
                    if i == c.len() {
                        return rank;
                    }
                    node = c[i].node;
                }
                Node::Free => return rank,
            }
        }
    }

    /// The rank of `x` (which must be present), by the order `less` defines.
    pub fn rank(&self, x: u32, less: &impl Fn(u32, u32) -> bool) -> usize {
        self.partition_point(|y| less(y, x))
    }

    /// The id at `rank`.
    pub fn select(&self, mut rank: usize) -> Option<u32> {
        if rank >= self.len {
            return None;
        }
        let mut node = self.root;
        loop {
            match &self.nodes[node as usize] {
                Node::Leaf(v) => return v.get(rank).copied(),
                Node::Inner(c) => {
                    let mut next = None;
                    for ch in c {
                        if rank < ch.count as usize {
                            next = Some(ch.node);
                            break;
                        }
                        rank -= ch.count as usize;
                    }
                    node = next?;
                }
                Node::Free => return None,
            }
        }
    }

    /// The ids with ranks in `start..end`, in order.
    pub fn range(&self, start: usize, end: usize) -> Vec<u32> {
        let end = end.min(self.len);
        let mut out = Vec::with_capacity(end.saturating_sub(start));
        if start < end {
            self.range_rec(self.root, start, end, &mut out);
        }
        out
    }

    fn range_rec(&self, node: u32, start: usize, end: usize, out: &mut Vec<u32>) {
        match &self.nodes[node as usize] {
            Node::Leaf(v) => out.extend_from_slice(&v[start.min(v.len())..end.min(v.len())]),
            Node::Inner(c) => {
                let mut base = 0usize;
                for ch in c {
                    let n = ch.count as usize;
                    if base >= end {
                        break;
                    }
                    if base + n > start {
                        self.range_rec(
                            ch.node,
                            start.saturating_sub(base),
                            (end - base).min(n),
                            out,
                        );
                    }
                    base += n;
                }
            }
            Node::Free => {}
        }
    }

    /// Bytes held by the tree's nodes (for tests and estimates).
    #[cfg(test)]
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self
                .nodes
                .iter()
                .map(|n| match n {
                    Node::Leaf(v) => v.capacity() * 4,
                    Node::Inner(c) => c.capacity() * std::mem::size_of::<Child>(),
                    Node::Free => 0,
                })
                .sum::<usize>()
    }

    /// Checks the invariants: counts, maxima, order, fill. For tests.
    #[cfg(test)]
    pub fn check(&self, less: &impl Fn(u32, u32) -> bool) {
        let all = self.range(0, self.len);
        assert_eq!(all.len(), self.len);
        for w in all.windows(2) {
            assert!(less(w[0], w[1]), "out of order");
        }
        self.check_rec(self.root, true);
    }

    #[cfg(test)]
    fn check_rec(&self, node: u32, root: bool) -> (u32, u32, usize) {
        match &self.nodes[node as usize] {
            Node::Leaf(v) => {
                assert!(v.len() <= CAP);
                assert!(root || v.len() >= MIN.min(1));
                (v.len() as u32, v.last().copied().unwrap_or(u32::MAX), 0)
            }
            Node::Inner(c) => {
                assert!(c.len() <= CAP && (root && c.len() >= 2 || !root && !c.is_empty()));
                let mut total = 0;
                let mut height = None;
                for ch in c {
                    let (n, m, h) = self.check_rec(ch.node, false);
                    assert_eq!(n, ch.count);
                    assert_eq!(m, ch.max);
                    assert!(height.is_none() || height == Some(h), "uneven height");
                    height = Some(h);
                    total += n;
                }
                (total, c[c.len() - 1].max, height.unwrap_or(0) + 1)
            }
            Node::Free => panic!("free node reachable"),
        }
    }
}
