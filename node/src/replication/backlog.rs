//! The replication stream's memory: every byte propagated, kept while someone may still need
//! it.
//!
//! Positions count bytes since the replication id began: `end()` is `master_repl_offset`.
//! The stream is held as a queue of immutable chunks, so a replica sender takes `Bytes`
//! clones (no copy) and writes them outside the lock. Two things keep a byte:
//! - the backlog proper: the last `repl-backlog-size` bytes, for partial resyncs;
//! - consumers (replicas being fed, the AOF writer): a byte is kept until every consumer has
//!   taken it, so a replica that is busy receiving a snapshot does not lose the writes made
//!   meanwhile. A consumer further behind than `hard_limit` is dropped (Valkey's
//!   `client-output-buffer-limit replica`), which bounds the memory one slow replica can pin.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Chunks are sealed at least this large when there is a choice, so a busy stream is not
/// split into one chunk per command.
const MIN_SEAL: usize = 16 * 1024;

#[derive(Debug)]
pub struct Backlog {
    /// Position of the first byte held.
    start: u64,
    /// Sealed chunks, oldest first, each with its start position.
    chunks: VecDeque<(u64, Bytes)>,
    /// Bytes appended since the last seal; they start at `tail_start`.
    tail: BytesMut,
    tail_start: u64,
    size_limit: usize,
    hard_limit: u64,
    consumers: Vec<Consumer>,
    next_consumer: u64,
}

#[derive(Debug)]
struct Consumer {
    id: u64,
    /// Position of the next byte it will take.
    pos: u64,
    dropped: bool,
    /// The AOF: never dropped, however far behind (its bytes are the durable record).
    unbounded: bool,
}

/// What a consumer gets when it asks for more.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// Stream bytes, in order, continuing exactly where the last read ended.
    Data(Vec<Bytes>),
    /// Nothing new yet.
    Empty,
    /// It fell too far behind and was dropped; its bytes are gone.
    Dropped,
}

impl Backlog {
    /// An empty backlog whose next byte is at position `end`.
    pub fn new(end: u64, size_limit: usize, hard_limit: u64) -> Backlog {
        Backlog {
            start: end,
            chunks: VecDeque::new(),
            tail: BytesMut::new(),
            tail_start: end,
            size_limit: size_limit.max(1),
            hard_limit,
            consumers: Vec::new(),
            next_consumer: 1,
        }
    }

    /// `master_repl_offset`: the position after the last byte.
    pub fn end(&self) -> u64 {
        self.tail_start + self.tail.len() as u64
    }

    /// Position of the first byte held (Valkey's `repl_backlog_first_byte_offset` is this
    /// plus one).
    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn histlen(&self) -> u64 {
        self.end() - self.start
    }

    pub fn size_limit(&self) -> usize {
        self.size_limit
    }

    pub fn set_limits(&mut self, size_limit: usize, hard_limit: u64) {
        self.size_limit = size_limit.max(1);
        self.hard_limit = hard_limit;
        self.trim();
    }

    /// Whether a consumer could start at `pos` (a partial resync from there).
    pub fn holds(&self, pos: u64) -> bool {
        pos >= self.start && pos <= self.end()
    }

    pub fn append(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.tail.extend_from_slice(bytes);
        if self.hard_limit > 0 {
            let end = self.end();
            for c in self.consumers.iter_mut() {
                if !c.dropped && !c.unbounded && end - c.pos > self.hard_limit {
                    c.dropped = true;
                }
            }
        }
        self.trim();
    }

    /// Registers a consumer that will read from `pos`, which must be held.
    pub fn add_consumer(&mut self, pos: u64) -> Option<u64> {
        self.add(pos, false)
    }

    /// A consumer that is never dropped for falling behind (the AOF writer).
    pub fn add_unbounded_consumer(&mut self, pos: u64) -> Option<u64> {
        self.add(pos, true)
    }

    fn add(&mut self, pos: u64, unbounded: bool) -> Option<u64> {
        if !self.holds(pos) {
            return None;
        }
        let id = self.next_consumer;
        self.next_consumer += 1;
        self.consumers.push(Consumer {
            id,
            pos,
            dropped: false,
            unbounded,
        });
        Some(id)
    }

    pub fn remove_consumer(&mut self, id: u64) {
        self.consumers.retain(|c| c.id != id);
        self.trim();
    }

    /// The consumer's next bytes, at most about `max` of them.
    pub fn read(&mut self, id: u64, max: usize) -> Read {
        let Some(idx) = self.consumers.iter().position(|c| c.id == id) else {
            return Read::Dropped;
        };
        if self.consumers[idx].dropped {
            self.consumers.swap_remove(idx);
            self.trim();
            return Read::Dropped;
        }
        let mut pos = self.consumers[idx].pos;
        if pos >= self.end() {
            return Read::Empty;
        }
        if pos >= self.tail_start {
            self.seal();
        }
        let mut out = Vec::new();
        let mut taken = 0usize;
        // Chunks are sorted by start: find the one holding `pos`.
        let first = self
            .chunks
            .partition_point(|(s, b)| s + b.len() as u64 <= pos);
        for (s, b) in self.chunks.iter().skip(first) {
            if taken >= max {
                break;
            }
            let from = (pos - s) as usize;
            let piece = b.slice(from..);
            taken += piece.len();
            pos += piece.len() as u64;
            out.push(piece);
        }
        self.consumers[idx].pos = pos;
        self.trim();
        Read::Data(out)
    }

    fn seal(&mut self) {
        if self.tail.is_empty() {
            return;
        }
        let start = self.tail_start;
        let bytes = self.tail.split().freeze();
        self.tail_start += bytes.len() as u64;
        self.chunks.push_back((start, bytes));
        // The next tail starts in a fresh allocation; reserve enough that small appends do
        // not reallocate often.
        self.tail.reserve(MIN_SEAL);
    }

    /// Drops the oldest chunks that neither the backlog size nor any consumer needs.
    fn trim(&mut self) {
        let oldest_needed = self
            .consumers
            .iter()
            .filter(|c| !c.dropped)
            .map(|c| c.pos)
            .min()
            .unwrap_or(u64::MAX);
        // Seal a large tail so it can be trimmed too.
        if self.tail.len() > self.size_limit && self.tail.len() >= MIN_SEAL {
            self.seal();
        }
        while let Some((s, b)) = self.chunks.front() {
            let chunk_end = s + b.len() as u64;
            let kept_without = self.end() - chunk_end;
            if kept_without < self.size_limit as u64 || chunk_end > oldest_needed {
                break;
            }
            self.start = chunk_end;
            self.chunks.pop_front();
        }
        if self.chunks.is_empty() && self.start < self.tail_start {
            self.start = self.tail_start;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn concat(r: Read) -> Vec<u8> {
        match r {
            Read::Data(v) => v.iter().flat_map(|b| b.iter().copied()).collect(),
            other => panic!("expected data, got {other:?}"),
        }
    }

    #[test]
    fn offsets_count_every_byte() {
        let mut b = Backlog::new(100, 1024, 0);
        b.append(b"hello");
        b.append(b" world");
        assert_eq!(b.end(), 111);
        assert_eq!(b.start(), 100);
        let c = b.add_consumer(103).expect("held");
        assert_eq!(concat(b.read(c, 1 << 20)), b"lo world");
        assert_eq!(b.read(c, 1 << 20), Read::Empty);
        b.append(b"!");
        assert_eq!(concat(b.read(c, 1 << 20)), b"!");
    }

    #[test]
    fn keeps_the_last_backlog_size_bytes() {
        let mut b = Backlog::new(0, 20 * 1024, 0);
        let chunk = vec![b'x'; 17 * 1024];
        for _ in 0..10 {
            b.append(&chunk);
        }
        assert_eq!(b.end(), 170 * 1024);
        assert!(b.histlen() >= 20 * 1024, "{}", b.histlen());
        assert!(b.histlen() < 60 * 1024, "{}", b.histlen());
        assert!(!b.holds(0));
        assert!(b.holds(b.end() - 20 * 1024));
    }

    #[test]
    fn a_consumer_pins_what_it_has_not_read() {
        let mut b = Backlog::new(0, 16 * 1024, 0);
        let c = b.add_consumer(0).expect("held");
        let chunk = vec![b'y'; 32 * 1024];
        for _ in 0..8 {
            b.append(&chunk);
        }
        assert_eq!(b.start(), 0);
        let got = concat(b.read(c, usize::MAX));
        assert_eq!(got.len(), 256 * 1024);
        b.append(b"z");
        assert!(b.start() > 0);
    }

    #[test]
    fn a_consumer_past_the_hard_limit_is_dropped() {
        let mut b = Backlog::new(0, 1024, 64 * 1024);
        let c = b.add_consumer(0).expect("held");
        b.append(&vec![0u8; 100 * 1024]);
        assert_eq!(b.read(c, 1), Read::Dropped);
        // Nothing pins the old bytes any more: the next append lets them go.
        b.append(&vec![0u8; 100 * 1024]);
        assert!(b.start() > 0);
        assert!(b.histlen() <= 100 * 1024);
    }

    #[test]
    fn reads_resume_mid_chunk() {
        let mut b = Backlog::new(0, 1 << 20, 0);
        let c = b.add_consumer(0).expect("held");
        b.append(b"abc");
        let d = b.add_consumer(1).expect("held");
        b.append(b"def");
        assert_eq!(concat(b.read(c, 1)), b"abcdef");
        assert_eq!(concat(b.read(d, 100)), b"bcdef");
        assert_eq!(b.add_consumer(7), None);
    }
}
