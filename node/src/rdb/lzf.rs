//! LZF compression, the format RDB stores long strings in, with a hash table kept from one
//! input to the next.
//!
//! The `lzf` crate allocates and zeroes a 512 KiB table for every input: for a snapshot of
//! many small values that is most of the time spent writing it. This compressor keeps its
//! table and tells stale slots from fresh ones by an offset instead of clearing it, and
//! produces exactly the crate's bytes (liblzf's algorithm, `HLOG` 16, "very fast" mode), so
//! DUMP payloads and RDB files stay as they were. Decompression still uses the crate.
//!
//! The format, one token after another:
//!
//! ```text
//! 000LLLLL <L+1 bytes>             a run of L+1 literal bytes (1 to 32)
//! LLLooooo oooooooo                copy L+2 bytes from o+1 bytes back (L = 1 to 6)
//! 111ooooo LLLLLLLL oooooooo       copy L+9 bytes from o+1 bytes back
//! ```

use std::cell::RefCell;

const HLOG: u32 = 16;
const HSIZE: usize = 1 << HLOG;
/// How far back a reference reaches.
const MAX_OFF: usize = 1 << 13;
/// The longest reference, in bytes copied.
const MAX_REF: usize = (1 << 8) + (1 << 3);
/// The longest literal run.
const MAX_LIT: usize = 1 << 5;
/// The scratch output kept between calls is trimmed back to this after a larger input.
const KEPT_OUTPUT: usize = 64 * 1024;

/// An LZF compressor that keeps its hash table between inputs.
pub struct Compressor {
    /// For each hash of three bytes, `base + position` of their last occurrence in the current
    /// input. A value at or below `base` was stored for an earlier input and reads as empty,
    /// as does position 0 itself, which liblzf never refers back to either.
    table: Box<[u32]>,
    base: u32,
    out: Vec<u8>,
}

impl Default for Compressor {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("base", &self.base)
            .finish()
    }
}

fn first(p: &[u8], i: usize) -> u32 {
    (u32::from(p[i]) << 8) | u32::from(p[i + 1])
}

fn next(v: u32, p: &[u8], i: usize) -> u32 {
    (v << 8) | u32::from(p[i + 2])
}

fn idx(h: u32) -> usize {
    ((h >> (3 * 8 - HLOG)).wrapping_sub(h.wrapping_mul(5)) as usize) & (HSIZE - 1)
}

/// Appends one literal byte to the open run; a full run is closed (its length byte written)
/// and the next one opened.
fn push_literal(out: &mut Vec<u8>, lit: &mut usize, byte: u8) {
    *lit += 1;
    out.push(byte);
    if *lit == MAX_LIT {
        let at = out.len() - *lit - 1;
        out[at] = (*lit - 1) as u8;
        *lit = 0;
        out.push(0);
    }
}

impl Compressor {
    pub fn new() -> Compressor {
        Compressor {
            table: vec![0; HSIZE].into_boxed_slice(),
            base: 0,
            out: Vec::new(),
        }
    }

    /// The compressed form of `input`, or None if it would not be shorter than `input` (the
    /// cases where liblzf, given an output buffer as long as the input, gives up).
    pub fn compress(&mut self, input: &[u8]) -> Option<&[u8]> {
        let n = input.len();
        if n < 2 {
            return None;
        }
        // Positions are stored as `base + position` in 32 bits: start afresh when the next
        // input would not fit above the current base.
        let len = u32::try_from(n).ok().filter(|&l| l < u32::MAX)?;
        if self.base.checked_add(len).is_none() {
            self.table.fill(0);
            self.base = 0;
        }
        let base = self.base;
        // Every position stored below is at most `base + n - 1`: the next input starts above.
        self.base += len;
        if self.out.capacity() > KEPT_OUTPUT.max(n) {
            self.out = Vec::new();
        }
        let (table, out) = (&mut self.table, &mut self.out);
        out.clear();
        let store = |table: &mut [u32], h: u32, i: usize| -> usize {
            let slot = &mut table[idx(h)];
            let prev = *slot;
            // `i < n`, which fits in u32.
            *slot = base + i as u32;
            if prev > base {
                (prev - base) as usize
            } else {
                0
            }
        };

        // A literal run starts with a placeholder for its length byte.
        out.push(0);
        let mut lit = 0usize;
        let mut i = 0usize;
        let mut hval = first(input, 0);
        while i + 2 < n {
            hval = next(hval, input, i);
            let r = store(table, hval, i);
            let off = i.wrapping_sub(r).wrapping_sub(1);
            if off < MAX_OFF
                && i + 4 < n
                && r > 0
                && r < n - 2
                && input[r..r + 3] == input[i..i + 3]
            {
                let maxlen = (n - i - 2).min(MAX_REF);
                // Close the literal run, or drop its placeholder if it is empty.
                let at = out.len() - lit - 1;
                out[at] = (lit as u8).wrapping_sub(1);
                if lit == 0 {
                    out.pop();
                }
                if out.len() + 3 + 1 >= n {
                    return None;
                }
                let mut len = 3;
                while len < maxlen && input[r + len] == input[i + len] {
                    len += 1;
                }
                // From here, the number of bytes copied minus 2.
                len -= 2;
                i += 1;
                if len < 7 {
                    out.push((off >> 8) as u8 + ((len as u8) << 5));
                } else {
                    out.push((off >> 8) as u8 + (7 << 5));
                    out.push((len - 7) as u8);
                }
                out.push(off as u8);
                out.push(0);
                lit = 0;
                i += len - 1;
                if i >= n {
                    break;
                }
                // The last two positions of the match go into the table too.
                hval = first(input, i);
                hval = next(hval, input, i);
                store(table, hval, i);
                i += 1;
                hval = next(hval, input, i);
                store(table, hval, i);
                i += 1;
            } else {
                if out.len() >= n {
                    return None;
                }
                push_literal(out, &mut lit, input[i]);
                i += 1;
            }
        }
        // At most three bytes are left.
        if out.len() + 3 > n {
            return None;
        }
        while i < n {
            push_literal(out, &mut lit, input[i]);
            i += 1;
        }
        let at = out.len() - lit - 1;
        out[at] = (lit as u8).wrapping_sub(1);
        if lit == 0 {
            out.pop();
        }
        Some(out)
    }
}

thread_local! {
    static COMPRESSOR: RefCell<Compressor> = RefCell::new(Compressor::new());
}

/// Runs `f` with this thread's compressor (each thread that compresses keeps one table).
pub fn with_compressor<R>(f: impl FnOnce(&mut Compressor) -> R) -> R {
    COMPRESSOR.with(|c| f(&mut c.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator: the tests need varied inputs, not good randomness.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Inputs of every shape that matters: random, repetitive, runs, text-like, short.
    fn input(rng: &mut Lcg) -> Vec<u8> {
        let len = match rng.below(4) {
            0 => rng.below(40) as usize,
            1 => rng.below(300) as usize,
            2 => rng.below(5000) as usize,
            _ => rng.below(70_000) as usize,
        };
        let alphabet = 1 + rng.below(256);
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            match rng.below(3) {
                0 => v.push(rng.below(alphabet) as u8),
                1 if v.len() > 2 => {
                    // Repeat an earlier piece, near or far.
                    let from = rng.below(v.len() as u64) as usize;
                    let n = (1 + rng.below(300) as usize).min(v.len() - from);
                    for k in 0..n {
                        v.push(v[from + k]);
                    }
                }
                _ => {
                    let b = rng.below(alphabet) as u8;
                    let n = rng.below(100) as usize;
                    v.extend(std::iter::repeat_n(b, n));
                }
            }
        }
        v.truncate(len);
        v
    }

    #[test]
    fn same_bytes_as_the_lzf_crate() {
        let mut rng = Lcg(7);
        let mut c = Compressor::new();
        let (mut compressed, mut gave_up) = (0, 0);
        for round in 0..3000 {
            let data = input(&mut rng);
            let ours = c.compress(&data).map(<[u8]>::to_vec);
            let theirs = ::lzf::compress(&data).ok();
            assert_eq!(ours, theirs, "round {round}, {} bytes", data.len());
            match ours {
                Some(a) => {
                    compressed += 1;
                    let back = ::lzf::decompress(&a, data.len()).expect("decompresses");
                    assert_eq!(back, data, "round {round}");
                }
                None => gave_up += 1,
            }
        }
        assert!(
            compressed > 1000 && gave_up > 100,
            "{compressed} compressed, {gave_up} not"
        );
    }

    #[test]
    fn stale_table_entries_are_never_used() {
        // The same input after many others compresses as it does on a fresh table.
        let data = b"abcabcabcabc-xyzxyzxyz-abcabcabc-0123456789012345678901234567890".to_vec();
        let fresh = Compressor::new().compress(&data).map(<[u8]>::to_vec);
        let mut c = Compressor::new();
        let mut rng = Lcg(3);
        for _ in 0..200 {
            c.compress(&input(&mut rng));
        }
        assert_eq!(c.compress(&data).map(<[u8]>::to_vec), fresh);
    }

    #[test]
    fn the_base_wraps_without_harm() {
        let data = vec![b'v'; 128];
        let fresh = Compressor::new().compress(&data).map(<[u8]>::to_vec);
        let mut c = Compressor::new();
        c.compress(&data);
        c.base = u32::MAX - 100;
        assert_eq!(c.compress(&data).map(<[u8]>::to_vec), fresh);
        assert_eq!(c.base, 128);
        assert_eq!(c.compress(&data).map(<[u8]>::to_vec), fresh);
    }

    #[test]
    fn too_short_or_incompressible() {
        let mut c = Compressor::new();
        assert_eq!(c.compress(b""), None);
        assert_eq!(c.compress(b"a"), None);
        let mut rng = Lcg(11);
        let noise: Vec<u8> = (0..1000).map(|_| rng.below(256) as u8).collect();
        assert_eq!(c.compress(&noise), None);
    }
}
